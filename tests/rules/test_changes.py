from __future__ import annotations

from hj212gw.rules.changes import instrument_parameters, parse_range
from hj212gw.rules.model import Clear, Fire, Sample, ValueRevised
from hj212gw.rules.packet import PacketRules
from hj212gw.rules.thresholds import Thresholds, parse_thresholds
from tests.rules.helpers import MN, fires, minute, sample


def site_info(at_minute: int, **infos: str) -> Sample:
    fields = {"DataTime": "x", "PolId": "a21026", **{f"{k}-Info": v for k, v in infos.items()}}
    return Sample(MN, "3020", minute(at_minute), minute(at_minute), False, fields)


def test_parameter_change_is_fired_and_cleared_at_once() -> None:
    rules = PacketRules(Thresholds.default())
    assert rules.on_sample(site_info(0, i13001="0-500", i13007="0.1")) == []  # first upload: the reference
    assert rules.on_sample(site_info(5, i13001="0-500", i13007="0.1")) == []
    fire, clear = rules.on_sample(site_info(10, i13001="0-500", i13007="0.3"))
    assert isinstance(fire, Fire) and isinstance(clear, Clear)
    assert (fire.key.rule, fire.key.factor, fire.key.detail) == ("parameter_changed", "a21026", "i13007")
    assert fire.details == {"parameter": "i13007", "old": "0.1", "new": "0.3"}
    assert clear.key == fire.key


def test_uploaded_range_is_the_factor_range() -> None:
    rules = PacketRules(Thresholds.default())
    rules.on_sample(site_info(0, i13001="0-100"))
    out = []
    for i in range(1, 5):
        out += rules.on_sample(sample(minute(i), {"a21026": 150}))
    (fired,) = fires(out, "out_of_range")
    assert "[0.0, 100.0]" in fired.summary_en


def test_parse_range_and_vendor_forms() -> None:
    assert parse_range("500") == (0.0, 500.0)
    assert parse_range("0~200") == (0.0, 200.0)
    assert parse_range("abc") is None
    assert list(instrument_parameters({"w01018-i13001-Info": "0-1000", "i12001-Info": "0"})) == [
        ("w01018", "i13001", "0-1000")
    ]


def test_value_revised() -> None:
    event = ValueRevised(MN, "2051", "a21026", minute(0), 30.0, 45.0, minute(90))
    fire, clear = PacketRules(Thresholds.default()).on_revised(event)
    assert isinstance(fire, Fire) and isinstance(clear, Clear)
    assert (fire.key.rule, fire.key.detail, fire.value) == ("value_revised", "2051", 45.0)
    assert "30.0" in fire.summary_en and "45.0" in fire.summary_zh


def test_a_3020_as_ingest_hands_it_over_attaches_the_range_to_its_polid() -> None:
    """The fields the alerts layer passes for a 3020 (ingest.rows.data_block) name the PolId."""
    from zoneinfo import ZoneInfo

    from hj212gw.ingest.rows import TimePolicy, data_block
    from hj212gw.protocol.segment import parse_segment

    wire = b"QN=1;ST=31;CN=3020;PW=1;MN=MN0001;Flag=5;CP=&&DataTime=20261201080000;PolId=a21026;i13001-Info=0-100&&"
    block = data_block(parse_segment(wire), minute(0), TimePolicy(ZoneInfo("Asia/Shanghai")), resend=False)
    assert block is not None and block.fields is not None
    rules = PacketRules(Thresholds.default())
    rules.on_sample(Sample(MN, "3020", minute(0), minute(0), False, block.fields))
    out = [c for i in range(1, 5) for c in rules.on_sample(sample(minute(i), {"a21026": 150}))]
    (fired,) = fires(out, "out_of_range")
    assert fired.key.factor == "a21026" and "[0.0, 100.0]" in fired.summary_en


def test_a_new_range_applies_to_values_the_fast_path_was_taking() -> None:
    rules = PacketRules(parse_thresholds("[defaults]\nanomaly_points = 1\n"))

    def at(i: int, level: float) -> list:
        return rules.on_sample(
            sample(minute(i), {"a21026": f"{level + i * 0.01:.3f}", "a21002": f"{35 + i * 0.1:.2f}"})
        )

    rules.on_sample(site_info(0, i13001="0-1000"))
    out = [c for i in range(1, 20) for c in at(i, 101)]  # near 100: checked as numbers by the fast path
    rules.on_sample(site_info(20, i13001="0-150"))
    out += [c for i in range(21, 30) for c in at(i, 101)]
    assert not fires(out, "out_of_range")
    out = at(30, 160)  # inside the old range, outside the new one
    assert [f.key.factor for f in fires(out, "out_of_range")] == ["a21026"]
