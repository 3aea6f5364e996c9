"""split.py: assembly in PNO order, one transfer only; the tracker's reports and its byte bound."""

import gc
import itertools
import tracemalloc
from datetime import timedelta

import pytest

from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.models import Packet
from hj212gw.protocol.segment import parse_segment
from hj212gw.protocol.session import DasSession, FrameRejected, PacketReceived, SessionConfig
from hj212gw.protocol.split import (
    BadSplitPart,
    SplitBudgetExceeded,
    SplitIncomplete,
    SplitTooLarge,
    SplitTracker,
    assemble_parts,
    check_part,
)
from tests.protocol.conftest import T0, frame

HEAD = "QN={qn};ST=31;CN=2051;PW=123456;MN=M1;Flag={flag};PNUM={pnum};PNO={n};CP=&&{cp}&&"
QN = "20240601085857220"
CUT = "DataTime=20240601080000;a-Avg=10.5,a-Flag=N;b-Avg=3"


def part(n: int, cp: str, pnum: int = 2, flag: int = 11, qn: str = QN, data: bool = False) -> Packet:
    return parse_segment(HEAD.format(qn=qn, n=n, flag=flag, pnum=pnum, cp=cp).encode(), parse_data=data)


def cut(text: str, pnum: int) -> list[Packet]:
    size = -(-len(text) // pnum)
    return [part(n, text[(n - 1) * size : n * size], pnum) for n in range(1, pnum + 1)]


def tracker(**kw: int) -> SplitTracker:
    return SplitTracker(
        timeout_s=kw.get("timeout_s", 60),
        max_transfers=kw.get("max_transfers", 4),
        max_parts=kw.get("max_parts", 256),
        max_bytes=kw.get("max_bytes", 65536),
    )


# ---- assembly ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pnum", [2, 3, 7])
def test_parts_assemble_in_pno_order_whatever_their_order(pnum: int) -> None:
    parts = cut(CUT, pnum)
    for order in itertools.islice(itertools.permutations(parts), 24):
        joined = assemble_parts(order)
        assert joined.cp == CUT
        assert [r.code for r in joined.data.readings] == ["a", "b"]  # type: ignore[union-attr]


def test_assembled_packet_keeps_the_version_bits_and_drops_split() -> None:
    joined = assemble_parts([part(2, "10.5,a-Flag=N"), part(1, "DataTime=20240601080000;a-Avg=")])
    assert joined.flag == 9 and joined.version.label == "2025" and not joined.split
    assert joined.cp == "DataTime=20240601080000;a-Avg=10.5,a-Flag=N" and joined.qn == QN
    assert ("PNUM", "2") not in joined.fields and ("Flag", "9") in joined.fields
    assert joined.pnum is None and joined.pno is None


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([], id="none"),
        pytest.param([part(1, "DataTime=20240601080000;a-Avg=")], id="missing-pno-2"),
        pytest.param([part(1, "DataTime=20240601080000;a-Avg="), part(1, "x")], id="pno-twice"),
        pytest.param([part(1, "DataTime=20240601080000;a-Avg="), part(2, "1", qn="20240601085857221")], id="other-qn"),
        pytest.param([part(1, "DataTime=20240601080000;a-Avg="), part(2, "1", pnum=3)], id="other-pnum"),
    ],
)
def test_only_the_parts_of_one_whole_transfer_assemble(parts: list[Packet]) -> None:
    with pytest.raises(SplitIncomplete):
        assemble_parts(parts)


def test_assembled_text_that_does_not_parse_is_a_typed_error() -> None:
    with pytest.raises(Hj212Error):
        assemble_parts([part(1, "DataTime=20240601080000;a-Avg=1;junk"), part(2, "without-equals")])


@pytest.mark.parametrize(
    ("packet", "fragment", "error"),
    [
        (part(3, "x", pnum=2), False, BadSplitPart),
        (part(0, "x", pnum=2), True, BadSplitPart),
        (part(1, "x", pnum=257), True, SplitTooLarge),
        (parse_segment(b"ST=31;CN=2051;MN=M1;Flag=7;PNUM=2;PNO=2;CP=&&1&&", parse_data=False), True, BadSplitPart),
        (part(2, "1")._replace(qn="9" * 3000), True, BadSplitPart),  # the parser refuses such a QN first
    ],
    ids=["pno-above-pnum", "pno-zero", "pnum-too-large", "fragment-without-qn", "qn-of-3000-chars"],
)
def test_check_part_refuses_parts_that_name_no_transfer(packet: Packet, fragment: bool, error: type) -> None:
    with pytest.raises(error):
        check_part(packet, fragment=fragment, max_parts=256)


# ---- the tracker -------------------------------------------------------------------------------


def standalone(n: int, pnum: int = 3, minute: int = 0, qn: str = QN) -> Packet:
    return part(n, f"DataTime=2024060108{minute:02d}00;a-Avg=1", pnum=pnum, flag=7, qn=qn, data=True)


def test_standalone_parts_missing_after_the_timeout_are_reported_once() -> None:
    splits = tracker()
    splits.add(standalone(1), T0, fragment=False)
    assert splits.expire(T0 + timedelta(seconds=59)) == []
    assert splits.expire(T0 + timedelta(seconds=60)) == [("M1", "2051", "20240601080000", (2, 3))]
    assert splits.expire(T0 + timedelta(seconds=120)) == [] and splits.size == 0


def test_a_complete_transfer_is_forgotten() -> None:
    splits = tracker()
    for n in (3, 1, 2, 2):
        splits.add(standalone(n), T0, fragment=False)
    assert splits.open_transfers == 0 and splits.size == 0


def test_standalone_transfers_beyond_the_count_evict_the_oldest_and_report_it() -> None:
    splits = tracker(max_transfers=2)
    for minute in range(3):
        splits.add(standalone(1, pnum=2, minute=minute), T0, fragment=False)
    assert splits.expire(T0) == [("M1", "2051", "20240601080000", (2,))]
    assert splits.open_transfers == 2


def test_fragments_are_never_evicted_they_are_refused() -> None:
    splits = tracker(max_transfers=2)
    for n in range(2):
        splits.add(part(1, "x", qn=f"2024060108585722{n}"), T0, fragment=True)
    with pytest.raises(SplitBudgetExceeded):
        splits.add(part(1, "x", qn="20240601085857229"), T0, fragment=True)
    splits.add(part(2, "y", qn="20240601085857220"), T0, fragment=True)  # completes one: room again
    splits.add(part(1, "x", qn="20240601085857229"), T0, fragment=True)


def test_fragment_transfers_expire_silently_the_database_sweep_reports_them() -> None:
    splits = tracker()
    splits.add(part(2, "x"), T0, fragment=True)
    assert splits.expire(T0 + timedelta(seconds=60)) == [] and splits.size == 0


def test_a_cut_first_part_is_not_reported_missing_when_its_fragments_arrive() -> None:
    splits = tracker()
    splits.add(standalone(1, pnum=2), T0, fragment=False)  # parses alone, cut mid-group
    splits.add(part(2, "0.5,a-Flag=N", pnum=2), T0, fragment=True)  # same QN: same transfer
    assert splits.open_transfers == 0
    assert splits.expire(T0 + timedelta(hours=1)) == []


def test_fragments_before_their_cut_first_part_complete_the_transfer() -> None:
    splits = tracker()
    splits.add(part(2, "0.5,a-Flag=N", pnum=2), T0, fragment=True)
    splits.add(standalone(1, pnum=2), T0, fragment=False)
    assert splits.open_transfers == 0 and splits.expire(T0 + timedelta(hours=1)) == []


def flood(kind: str) -> list[bytes]:
    """3,000 hostile split parts of about 1 KB each, on one connection."""
    cp = ";".join(f"a{i:03d}-Avg=9.999999" for i in range(64))  # values within protocol.limits
    heads = {
        "one-transfer": lambda n: f"QN={QN};Flag=7;PNUM=9999;PNO={n}",
        "many-transfers": lambda n: f"QN=2024060108{n:07d};Flag=7;PNUM=2;PNO=1",
        "standalone": lambda n: f"QN=2024060108{n:07d};Flag=7;PNUM=2;PNO=1",
    }
    body = (lambda n: f"DataTime=20240601{n // 60 % 24:02d}{n % 60:02d}00;{cp}") if kind == "standalone" else None
    return [
        frame(f"{heads[kind](n)};ST=31;CN=2051;PW=1;MN=M1;CP=&&{body(n) if body else cp}&&") for n in range(1, 3001)
    ]


@pytest.mark.parametrize("kind", ["one-transfer", "many-transfers", "standalone"])
def test_3000_split_parts_on_one_connection_stay_within_the_byte_bound(kind: str) -> None:
    config = SessionConfig(max_consecutive_rejects=10**6)
    session = DasSession(config)
    wires = flood(kind)
    rejected: set[str] = set()
    fragments = stored = 0
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for wire in wires:  # events are dropped as they come: what stays is the session's
            for event in session.receive_data(wire, now=T0):
                if isinstance(event, FrameRejected):
                    rejected.add(event.error.reason)
                elif isinstance(event, PacketReceived):
                    stored += 1
                    fragments += event.fragment
        gc.collect()  # a refused part's error holds its frame in a traceback cycle until collected
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert session.split_bytes <= config.max_split_bytes
    assert held < config.max_split_bytes + 64 * 1024  # today: the parts themselves, about 3 MB here
    if kind == "standalone":  # they stand alone: all stored, only the tracking is bounded
        assert not rejected and stored == 3000 and not fragments
    else:
        assert rejected and rejected <= {"split_too_large", "split_budget_exceeded"}
        assert fragments == stored < 3000
