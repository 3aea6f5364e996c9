"""Split packets (HJ 212-2017 §9.3): track parts per (MN, CN, DataTime), reassemble fragments.

Each part normally carries whole factor groups and its own DataTime, so it is stored on its own;
the tracker only remembers which PNOs arrived, so a missing part can be reported. Parts that do
not stand alone (a factor group cut mid-way) are buffered by (MN, CN, PNUM) and joined in PNO
order once all arrived. Memory is bounded by group count and bytes; stale groups expire.
"""

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hj212gw.protocol.constants import PacketFlag
from hj212gw.protocol.cp import parse_cp
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.models import Packet

SplitKey = tuple[str | None, str, str | None, int]


@dataclass(slots=True)
class _Group:
    first_seen: datetime
    pnum: int
    parts: dict[int, Packet] = field(default_factory=dict)
    fragments: bool = False
    size: int = 0


class SplitTracker:
    """Which parts of which split transfers have arrived."""

    def __init__(self, *, timeout_s: float, max_groups: int, max_bytes: int) -> None:
        self.timeout = timedelta(seconds=timeout_s)
        self.max_groups = max_groups
        self.max_bytes = max_bytes
        self._groups: OrderedDict[SplitKey, _Group] = OrderedDict()
        self._evicted: list[tuple[str | None, str, str | None, tuple[int, ...]]] = []

    def add(self, packet: Packet, now: datetime, fragment: bool) -> Packet | None:
        """Record a part; returns the joined packet when the last fragment of a group arrives."""
        pnum, pno = packet.pnum or 0, packet.pno or 0
        data_time = None if fragment else getattr(packet.data, "data_time", None)
        key = self._key_for(packet.mn, packet.cn, data_time, pnum, pno)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(now, pnum)
            self._bound()
        group.parts[pno] = packet
        group.fragments = group.fragments or fragment
        group.size += len(packet.cp) if fragment else 0
        if len(group.parts) < pnum:
            if group.size > self.max_bytes:
                self._evict(key)
            return None
        del self._groups[key]
        return self._join(group) if group.fragments else None

    def _key_for(self, mn: str | None, cn: str, data_time: str | None, pnum: int, pno: int) -> SplitKey:
        """The open group a part belongs to: its own (MN, CN, DataTime, PNUM), or else one of the same
        transfer that lacks this PNO where either side has no DataTime. A first part cut mid-group
        still parses alone and carries DataTime, while the rest do not (a fragment), so both must
        land in one group whatever the arrival order."""
        key = (mn, cn, data_time, pnum)
        if key in self._groups and pno not in self._groups[key].parts:
            return key
        for other, group in self._groups.items():
            same_transfer = other[:2] == (mn, cn) and other[3] == pnum and pno not in group.parts
            if same_transfer and (other[2] is None or data_time is None):
                return other
        return key

    def _join(self, group: _Group) -> Packet | None:
        ordered = [group.parts[pno] for pno in sorted(group.parts)]
        text = "".join(part.cp for part in ordered)
        first = ordered[0]
        try:
            data = parse_cp(first.cn, text)
        except Hj212Error:
            return None
        fields = tuple((k, v) for k, v in first.fields if k not in ("PNUM", "PNO"))
        # int(): `~PacketFlag.SPLIT` stays inside the enum's two bits and would drop the version bits.
        flag = None if first.flag is None else first.flag & ~int(PacketFlag.SPLIT)
        fields = tuple((k, str(flag) if k == "Flag" else v) for k, v in fields)
        return first._replace(fields=fields, cp=text, flag=flag, pnum=None, pno=None, data=data)

    def _bound(self) -> None:
        while len(self._groups) > self.max_groups:
            self._evict(next(iter(self._groups)))

    def _evict(self, key: SplitKey) -> None:
        group = self._groups.pop(key)
        self._evicted.append(_missing(key, group))

    def expire(self, now: datetime) -> list[tuple[str | None, str, str | None, tuple[int, ...]]]:
        """Groups still incomplete after the timeout (and any evicted), with their missing PNOs."""
        gone, self._evicted = self._evicted, []
        for key, group in list(self._groups.items()):
            if now - group.first_seen >= self.timeout:
                del self._groups[key]
                gone.append(_missing(key, group))
        return gone


def _missing(key: SplitKey, group: _Group) -> tuple[str | None, str, str | None, tuple[int, ...]]:
    mn, cn, data_time, pnum = key
    return mn, cn, data_time, tuple(p for p in range(1, pnum + 1) if p not in group.parts)
