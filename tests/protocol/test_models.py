"""models.py: the packet's derived views (version, Flag bits, the answer rule) and HJ time text."""

from datetime import datetime

import pytest

from hj212gw.protocol.models import format_qn, parse_hj_time, wants_answer
from hj212gw.protocol.packets import parse_packet
from tests.protocol.conftest import FIRST

STANDARD = parse_packet(FIRST.read_bytes())  # CN 1062, Flag=5: asks for an answer


@pytest.mark.parametrize(
    ("cn", "flag", "wanted"),
    [
        ("1062", "5", True),  # a request with the A bit: 9011 (and 9012 later)
        ("2051", "5", True),  # data with the A bit: 9014 once stored
        ("2051", "4", False),  # no A bit: silence
        ("9014", "5", False),  # an answer is never answered, whatever its Flag says
        ("9011", "5", False),
        ("9015", "5", False),  # the heartbeat is 9xxx too: its reply is the session's choice
    ],
)
def test_wants_answer_needs_the_ack_bit_and_a_non_9xxx_cn(cn: str, flag: str, wanted: bool) -> None:
    fields = tuple((k, cn if k == "CN" else flag if k == "Flag" else v) for k, v in STANDARD.fields)
    packet = STANDARD._replace(cn=cn, flag=int(flag), fields=fields)
    assert wants_answer(packet) is wanted


def test_a_2005_packet_without_flag_never_wants_an_answer() -> None:
    assert not wants_answer(STANDARD._replace(flag=None))


def test_hj_time_text_round_trips_and_rejects_nonsense() -> None:
    moment = datetime(2024, 3, 15, 10, 0, 5)
    assert parse_hj_time("20240315100005") == moment
    assert parse_hj_time("20240315100005123") == moment.replace(microsecond=123000)
    assert parse_hj_time("2024031510") is None
    assert format_qn(moment) == "20240315100005000"
