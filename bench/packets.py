"""Representative packets for the benchmarks: a 10-factor minute packet of about 862 bytes, and
real-time and hour packets of the same site. Built with the protocol core's own encoder."""

from hj212gw.protocol.framing import encode_frame

MN = "010000A8900016F000169DC0"
EMITTED = frozenset({"a00000", "a34013", "a21026", "a21002", "a21005"})  # factors with a Cou
AIR_FACTORS = ("a00000", "a34013", "a21026", "a21002", "a19001", "a01011", "a01012", "a01013", "a01014", "a21005")


def segment(cn: str, qn: str, data_time: str, groups: list[str], mn: str = MN) -> bytes:
    """The data segment of an upload with A=1 (Flag 5) from an air site (ST 31)."""
    cp = ";".join([f"DataTime={data_time}", *groups])
    return f"QN={qn};ST=31;CN={cn};PW=123456;MN={mn};Flag=5;CP=&&{cp}&&".encode()


def statistics_groups(cou: str, variant: int = 0) -> list[str]:
    """Min/Avg/Max/Flag per factor, plus Cou (formatted from `cou` with the factor's index `i`)
    for the emitted ones. `variant` (0-9) moves every value without changing a byte count, so
    consecutive packets of a device differ as real readings do (an unchanging value is a flatline
    to the rules of issue #13); O2 (a19001) stays at 14 %, normal for flue gas."""
    v = variant % 10
    return [
        f"{code}-Min=1{i}.{v}3,{code}-Avg=1{i}.{v}4,{code}-Max=1{i}.{v}5,"
        + (f"{code}-Cou={cou.format(i=i)}," if code in EMITTED else "")
        + f"{code}-Flag=N"
        for i, code in enumerate(AIR_FACTORS)
    ]


MINUTE_VARIANTS = [statistics_groups("14.5{i}0", v) for v in range(10)]
"""Ten minute packets' groups: the k-th packet of a device sends MINUTE_VARIANTS[k % 10]."""
MINUTE_GROUPS = MINUTE_VARIANTS[0]
HOUR_GROUPS = statistics_groups("45.{i}")


def minute_packet() -> bytes:
    """CN 2051, ten factors with Min/Avg/Max/Cou/Flag: the issue's 862-byte reference packet."""
    return encode_frame(segment("2051", "20240315101000001", "20240315100000", MINUTE_GROUPS))


def realtime_packet() -> bytes:
    """CN 2011, ten factors with Rtd/ZsRtd/Flag."""
    groups = [f"{code}-Rtd=2{i}.345,{code}-ZsRtd=2{i}.789,{code}-Flag=N" for i, code in enumerate(AIR_FACTORS)]
    return encode_frame(segment("2011", "20240315101000002", "20240315101000", groups))


def hour_packet() -> bytes:
    """CN 2061, ten factors with Cou/Min/Avg/Max/Flag."""
    return encode_frame(segment("2061", "20240315110000001", "20240315100000", HOUR_GROUPS))
