"""Split packets (HJ 212-2017 §9.3, Flag bit D, PNUM/PNO): the session's view and the assembly.

A part that stands alone (whole factor groups, its own DataTime: the standard's case) is data on
its own. A part that does not (a factor group cut mid-way, no DataTime: a *fragment*) belongs to
a transfer identified by (MN, CN, QN, PNUM); the shell stores every part in `split_parts` before
its ack and joins the parts with `assemble_parts` once all PNO 1..PNUM are there. A reused QN
with another PNUM is another transfer. The `SplitTracker` keeps no part's bytes: per transfer a
bit per PNO, so it can report parts missing from standalone transfers (keyed by DataTime, their
QNs differ per part) and refuse fragments beyond its caps (parts per transfer, transfers and
bytes per session) with a typed error. Pure: no clock is read, nothing is stored.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from hj212gw.protocol.constants import PacketFlag, QnRtn
from hj212gw.protocol.cp import parse_cp
from hj212gw.protocol.errors import SegmentError
from hj212gw.protocol.models import Packet

Missing = tuple[str | None, str, str | None, tuple[int, ...]]
"""(MN, CN, DataTime, missing PNOs) of a standalone transfer given up on."""

# What one tracked transfer costs besides its PNO bits and key text: the dataclass, the key
# tuple, the OrderedDict entry (measured with tracemalloc: about 340 bytes on CPython 3.11, the key strings apart).
TRANSFER_OVERHEAD_BYTES = 400
# MN and QN of a fragment name its transfer in the `split_parts` key (a B-tree row is limited to
# about 2.7 kB). The standard's widths are 24 and 20; real units send longer MNs (14-char 2005
# forms, vendor formats), never anything near this.
MAX_KEY_CHARS = 128


class SplitError(SegmentError):
    """A split part the gateway cannot take as one."""

    reason = "split_invalid"
    qn_rtn: ClassVar[QnRtn] = QnRtn.FLAG_ERROR


class BadSplitPart(SplitError):
    """PNUM/PNO missing or out of range, or a fragment without the MN and QN naming its transfer."""

    reason = "split_part_invalid"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class SplitTooLarge(SplitError):
    """A transfer declares more parts than `max_parts`."""

    reason = "split_too_large"

    def __init__(self, *, pnum: int, limit: int) -> None:
        super().__init__(f"PNUM={pnum} exceeds the limit of {limit} parts per transfer")
        self.pnum = pnum
        self.limit = limit


class SplitBudgetExceeded(SplitError):
    """This connection already has as many open fragment transfers, or bytes, as allowed."""

    reason = "split_budget_exceeded"

    def __init__(self, *, transfers: int, size: int, limit_transfers: int, limit_bytes: int) -> None:
        super().__init__(f"{transfers} open split transfers, {size} bytes (limits {limit_transfers}, {limit_bytes})")
        self.transfers = transfers
        self.size = size


class SplitIncomplete(SplitError):
    """`assemble_parts` was given parts that are not exactly PNO 1..PNUM of one transfer."""

    reason = "split_incomplete"


def assemble_parts(parts: Sequence[Packet]) -> Packet:
    """One packet from the parts of a transfer: CP texts joined in PNO order, CP parsed, the D bit,
    PNUM and PNO dropped, every other header field as the first part has it.

    Raises:
        SplitIncomplete: not the parts PNO 1..PNUM of one (MN, CN, QN, PNUM), each once.
        SegmentError: the joined CP does not parse.
    """
    if not parts:
        raise SplitIncomplete("no parts")
    ordered = sorted(parts, key=lambda p: p.pno or 0)
    first = ordered[0]
    key = (first.mn, first.cn, first.qn, first.pnum)
    if any((p.mn, p.cn, p.qn, p.pnum) != key for p in ordered):
        raise SplitIncomplete("parts of different transfers")
    if [p.pno for p in ordered] != list(range(1, (first.pnum or 0) + 1)):
        raise SplitIncomplete(f"PNO {[p.pno for p in ordered]} of PNUM={first.pnum}")
    text = "".join(part.cp for part in ordered)
    data = parse_cp(first.cn, text)
    # int(): `~PacketFlag.SPLIT` stays inside the enum's two bits and would drop the version bits.
    flag = None if first.flag is None else first.flag & ~int(PacketFlag.SPLIT)
    fields = tuple((k, str(flag) if k == "Flag" else v) for k, v in first.fields if k not in ("PNUM", "PNO"))
    return first._replace(fields=fields, cp=text, flag=flag, pnum=None, pno=None, data=data)


def check_part(packet: Packet, *, fragment: bool, max_parts: int) -> tuple[int, int]:
    """(PNUM, PNO) of a split part.

    Raises:
        BadSplitPart: PNUM/PNO absent or PNO outside 1..PNUM; a fragment without MN or QN, or
            with one longer than MAX_KEY_CHARS.
        SplitTooLarge: PNUM above `max_parts`.
    """
    pnum, pno = packet.pnum, packet.pno
    if not pnum or not pno or pno > pnum:
        raise BadSplitPart(f"PNUM={pnum} PNO={pno}: PNO must be 1..PNUM")
    if pnum > max_parts:
        raise SplitTooLarge(pnum=pnum, limit=max_parts)
    if fragment and not (packet.mn and packet.qn):
        raise BadSplitPart("a part that does not stand alone needs the MN and QN of its transfer")
    if fragment and max(len(packet.mn or ""), len(packet.qn or "")) > MAX_KEY_CHARS:
        raise BadSplitPart(f"a part's MN or QN is longer than {MAX_KEY_CHARS} characters")
    return pnum, pno


@dataclass(slots=True)
class _Transfer:
    first_seen: datetime
    pnum: int
    seen: bytearray  # one bit per PNO
    size: int  # what this transfer counts against the session's byte budget
    fragments: bool
    first_qn: str | None = None  # standalone: the QN of PNO 1 (a cut first part parses alone)
    count: int = 0

    def has(self, pno: int) -> bool:
        return bool(self.seen[(pno - 1) // 8] & (1 << ((pno - 1) % 8)))

    def add(self, pno: int) -> None:
        self.seen[(pno - 1) // 8] |= 1 << ((pno - 1) % 8)
        self.count += 1

    def missing(self) -> tuple[int, ...]:
        return tuple(p for p in range(1, self.pnum + 1) if not self.has(p))


class SplitTracker:
    """Which PNOs of which split transfers this connection has seen; a few hundred bytes each."""

    def __init__(self, *, timeout_s: float, max_transfers: int, max_parts: int, max_bytes: int) -> None:
        self.timeout = timedelta(seconds=timeout_s)
        self.max_transfers = max_transfers
        self.max_parts = max_parts
        self.max_bytes = max_bytes
        self.size = 0  # bytes accounted: per transfer overhead + PNO bits + key text (+ fragment bytes)
        self._open: OrderedDict[tuple[object, ...], _Transfer] = OrderedDict()
        self._evicted: list[Missing] = []
        # Hashes of the last transfers completed here: a part resent after its ack got lost must
        # not open a new transfer that would be reported missing. A hash: a fixed few bytes each.
        self._done: OrderedDict[int, None] = OrderedDict()

    def add(self, packet: Packet, now: datetime, *, fragment: bool) -> None:
        """Record a part that passed `check_part`.

        A fragment also counts its CP bytes until its transfer is complete here or expires: that
        bounds what one connection parks in `split_parts`. Standalone transfers make room by
        evicting the oldest standalone one (reported as missing); fragments never evict.

        Raises:
            SplitBudgetExceeded: a fragment that would go over `max_transfers` or `max_bytes`.
        """
        pnum, pno = packet.pnum or 0, packet.pno or 0
        key, cut_first = self._key_of(packet, fragment)
        transfer = self._open.get(key)
        if (transfer is not None and transfer.has(pno)) or hash(key) in self._done:
            return  # a resend of a part seen already
        cost = len(packet.cp) if fragment else 0
        if transfer is None:
            cost += TRANSFER_OVERHEAD_BYTES + (pnum + 7) // 8 + sum(len(str(k)) for k in key)
        if not self._room(key, cost, fragment=fragment):
            return
        if transfer is None:
            transfer = self._open[key] = _Transfer(now, pnum, bytearray((pnum + 7) // 8), 0, fragment)
        transfer.add(pno)
        if cut_first and not transfer.has(1):
            transfer.add(1)
        transfer.size += cost
        self.size += cost
        if pno == 1 and not fragment:
            transfer.first_qn = packet.qn
        if transfer.count == pnum:
            self._forget(key)
            self._done[hash(key)] = None
            if len(self._done) > self.max_transfers:
                self._done.popitem(last=False)

    def _key_of(self, packet: Packet, fragment: bool) -> tuple[tuple[object, ...], bool]:
        """The transfer a part belongs to, and whether a cut first part of it was tracked apart."""
        mn, cn, qn, pnum = packet.mn, packet.cn, packet.qn, packet.pnum or 0
        by_qn: tuple[object, ...] = ("qn", mn, cn, qn, pnum)
        if fragment:
            return by_qn, self._drop_cut_first_part(mn, cn, qn, pnum)
        if packet.pno == 1 and by_qn in self._open:
            return by_qn, False  # the cut first part of a fragment transfer seen already
        return ("dt", mn, cn, getattr(packet.data, "data_time", None), pnum), False

    def _room(self, key: tuple[object, ...], cost: int, *, fragment: bool) -> bool:
        new = key not in self._open

        def over() -> bool:
            return self.size + cost > self.max_bytes or (new and len(self._open) >= self.max_transfers)

        while over():
            victim = next((k for k, t in self._open.items() if not t.fragments and k != key), None)
            if victim is None:
                break
            self._evicted.append(self._as_missing(victim, self._forget(victim)))
        if not over():
            return True
        if fragment:
            raise SplitBudgetExceeded(
                transfers=len(self._open),
                size=self.size,
                limit_transfers=self.max_transfers,
                limit_bytes=self.max_bytes,
            )
        return False  # a standalone part's data is stored anyway: it just goes untracked

    def _drop_cut_first_part(self, mn: str | None, cn: str, qn: str | None, pnum: int) -> bool:
        """A standalone PNO 1 whose QN a fragment carries was a cut first part: its transfer is a
        fragment transfer, tracked by QN (and reported by the sweep), not by DataTime."""
        for key, transfer in self._open.items():
            if key[0] == "dt" and key[1:3] == (mn, cn) and transfer.pnum == pnum and transfer.first_qn == qn:
                self._forget(key)
                return True
        return False

    def _forget(self, key: tuple[object, ...]) -> _Transfer:
        transfer = self._open.pop(key)
        self.size -= transfer.size
        return transfer

    @staticmethod
    def _as_missing(key: tuple[object, ...], transfer: _Transfer) -> Missing:
        _, mn, cn, data_time, _ = key
        return mn, str(cn), data_time, transfer.missing()  # type: ignore[return-value]

    def take_evicted(self) -> list[Missing]:
        """Standalone transfers evicted to make room since the last call (report them now)."""
        gone, self._evicted = self._evicted, []
        return gone

    def expire(self, now: datetime) -> list[Missing]:
        """Standalone transfers still incomplete after the timeout (and any evicted), with their
        missing PNOs. Fragment transfers are dropped silently: the sweep of `split_parts`, which
        sees every connection's parts, reports those."""
        gone, self._evicted = self._evicted, []
        for key, transfer in list(self._open.items()):
            if now - transfer.first_seen >= self.timeout:
                self._forget(key)
                if not transfer.fragments:
                    gone.append(self._as_missing(key, transfer))
        return gone

    @property
    def open_transfers(self) -> int:
        return len(self._open)
