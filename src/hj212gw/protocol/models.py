"""Frozen, slotted models of a decoded packet: `Packet`, `Reading`, and helpers for HJ 212 times.

A `Packet` is lossless: header fields keep their order and text, the CP keeps its text, and each
value keeps the digits that were sent. Typed views (`packet.data`, `reading.avg`) are derived
from that text. Built once by the parser; nothing on the per-packet path validates twice.
"""

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from hj212gw.protocol.constants import PacketFlag, ProtocolVersion

if TYPE_CHECKING:
    from hj212gw.protocol.cp import CpData


class Reading(NamedTuple):
    """One factor's fields in one CP item group: `w01018-Avg=40.1,w01018-Flag=N`.

    `values` maps the field suffix (`Rtd`, `Avg`, `ZsAvg`, `Flag`, `Info`, `SampleRd`, …) to the
    text as sent. A tuple underneath: cheap to build ten times per packet.
    """

    code: str
    values: dict[str, str]
    code_2017: str | None = None

    def number(self, suffix: str) -> float | None:
        """The value of a numeric field, or None if absent or not a number."""
        text = self.values.get(suffix)
        if text is None:
            return None
        try:
            return float(text)
        except ValueError:
            return None

    @property
    def rtd(self) -> float | None:
        return self.number("Rtd")

    @property
    def min(self) -> float | None:
        return self.number("Min")

    @property
    def avg(self) -> float | None:
        return self.number("Avg")

    @property
    def max(self) -> float | None:
        return self.number("Max")

    @property
    def cou(self) -> float | None:
        return self.number("Cou")

    @property
    def flag(self) -> str | None:
        return self.values.get("Flag")

    @property
    def eflag(self) -> str | None:
        return self.values.get("EFlag")

    @property
    def sample_time(self) -> str | None:
        return self.values.get("SampleTime")

    @property
    def info(self) -> str | None:
        return self.values.get("Info")


_ACK_REQUESTED = int(PacketFlag.ACK_REQUESTED)
_SPLIT = int(PacketFlag.SPLIT)
_VERSION_OF_BITS = (ProtocolVersion.HJT212_2005, ProtocolVersion.HJ212_2017)  # 2 and above: 2025


class Packet(NamedTuple):
    """One data segment: `QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;[PNUM;PNO;][RF;]CP=&&…&&`.

    `fields` holds every header field in the order sent (unknown keys included); the named
    attributes are views of it. `cp` is the CP content between `CP=&&` and `&&`. Immutable; a
    named tuple because one is built per packet and that is several times cheaper than a frozen
    dataclass.
    """

    fields: tuple[tuple[str, str], ...]
    cp: str
    qn: str | None
    st: str | None
    cn: str
    pw: str | None
    mn: str | None
    flag: int | None
    pnum: int | None
    pno: int | None
    rf: bool
    cp_closed: bool = True
    fields_after_cp: tuple[tuple[str, str], ...] = ()
    tolerances: tuple[str, ...] = ()
    encrypted: bool = False
    data: "CpData | None" = None

    @property
    def version(self) -> ProtocolVersion:
        """2005 when Flag is absent; otherwise the six version bits (2025 §2.12)."""
        if self.flag is None:
            return ProtocolVersion.HJT212_2005
        bits = (self.flag >> 2) & 0x3F
        return _VERSION_OF_BITS[bits] if bits < len(_VERSION_OF_BITS) else ProtocolVersion.HJ212_2025

    # Plain ints, not the enum members: `int & IntFlag` builds a new IntFlag through the enum
    # machinery, about a microsecond, and these run several times per packet.
    @property
    def ack_requested(self) -> bool:
        return self.flag is not None and bool(self.flag & _ACK_REQUESTED)

    @property
    def split(self) -> bool:
        return self.flag is not None and bool(self.flag & _SPLIT)

    def header(self, key: str) -> str | None:
        for name, value in self.fields:
            if name == key:
                return value
        return None


def wants_answer(packet: Packet) -> bool:
    """The DAS asked for an answer (Flag bit A) and may get one: a 9xxx packet is itself an
    answer, and an answer is never answered (HJ 212-2017 §6.2: no 9011 or 9014 to a 9xxx)."""
    return packet.ack_requested and not packet.cn.startswith("9")


def parse_hj_time(text: str) -> datetime | None:
    """A naive datetime from `YYYYMMDDhhmmss` (N14); 15-17 digits carry milliseconds.

    Returns None if the text is not such a time. HJ 212 times have no zone: the caller attaches
    the device's.
    """
    if len(text) < 14 or not text.isdigit():
        if len(text) in (12, 13) and text.isdigit():
            text = text.ljust(14, "0")
        else:
            return None
    try:
        base = datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
        )
    except ValueError:
        return None
    extra = text[14:17]
    if extra:
        return base.replace(microsecond=int(extra.ljust(3, "0")) * 1000)
    return base


def format_hj_time(moment: datetime) -> str:
    """`YYYYMMDDhhmmss` of a naive or device-local datetime."""
    return moment.strftime("%Y%m%d%H%M%S")


def format_qn(moment: datetime) -> str:
    """A 17-digit QN (`YYYYMMDDhhmmsszzz`) for a device-local moment."""
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"
