"""split.py: parts tracked per transfer, fragments joined in PNO order, bounded memory, expiry."""

from datetime import timedelta

from hj212gw.protocol.segment import parse_segment
from hj212gw.protocol.split import SplitTracker
from tests.protocol.conftest import T0

HEAD = "QN=2024060108585722{n};ST=31;CN=2051;PW=123456;MN=M1;Flag={flag};PNUM={pnum};PNO={n};CP=&&{cp}&&"


def part(n: int, cp: str, pnum: int = 2, flag: int = 11):  # type: ignore[no-untyped-def]
    return parse_segment(HEAD.format(n=n, flag=flag, pnum=pnum, cp=cp).encode(), parse_data=False)


def tracker(**kw: float) -> SplitTracker:
    return SplitTracker(timeout_s=kw.get("timeout_s", 60), max_groups=int(kw.get("max_groups", 4)), max_bytes=1000)


def test_joined_packet_keeps_the_version_bits_and_drops_split() -> None:
    splits = tracker()
    assert splits.add(part(2, "10.5,a-Flag=N"), T0, fragment=True) is None
    joined = splits.add(part(1, "DataTime=20240601080000;a-Avg="), T0, fragment=False)
    assert joined is not None
    assert joined.flag == 9 and joined.version.label == "2025" and not joined.split
    assert joined.cp == "DataTime=20240601080000;a-Avg=10.5,a-Flag=N"
    assert ("PNUM", "2") not in joined.fields and ("Flag", "9") in joined.fields


def test_standalone_parts_are_not_joined_and_missing_ones_are_reported() -> None:
    splits = tracker()
    standalone = parse_segment(HEAD.format(n=1, flag=7, pnum=3, cp="DataTime=20240601080000;a-Avg=1").encode())
    assert splits.add(standalone, T0, fragment=False) is None
    assert splits.expire(T0 + timedelta(seconds=59)) == []
    assert splits.expire(T0 + timedelta(seconds=60)) == [("M1", "2051", "20240601080000", (2, 3))]


def test_group_count_is_bounded() -> None:
    splits = tracker(max_groups=2)
    for minute in range(3):
        cp = f"DataTime=2024060108{minute:02d}00;a-Avg=1"
        splits.add(parse_segment(HEAD.format(n=1, flag=7, pnum=2, cp=cp).encode()), T0, fragment=False)
    assert splits.expire(T0) == [("M1", "2051", "20240601080000", (2,))]
