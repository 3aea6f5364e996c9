"""Delivery of one device's data packets: in-flight window, OverTime resends, the unacked store.

A packet with the ack bit is delivered only when a 9014 with its QN arrives (HJ 212-2017 §9.1).
Until then it is resent after OverTime, up to ReCount times, with the same QN. A packet that is
still unacknowledged after that, or that was in flight or queued when the link dropped, moves
to the bounded unacked store and is re-uploaded after the next connect (a new QN; the device
marks it RF=1 on 2025). History answers go through a separate stop-and-wait lane (C.48: the
DAS waits for each 9014 before the next part). Pure: times are passed in, nothing is sent here.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hj212gw.simulator.stats import Counters


@dataclass(slots=True)
class Outgoing:
    """One data packet to deliver. `key` is (CN, DataTime, PNO) for accounting."""

    cn: str
    data_time: str | None
    cp: str
    ack: bool = True
    part: tuple[int, int] | None = None  # (PNUM, PNO)
    keep: bool = True  # goes to the unacked store on failure (False for real-time data)
    backfill: bool = False  # sent from the store: RF=1 on 2025
    sent_live: bool = False  # sent at least once before it went to the store
    history: bool = False
    qn: str = ""
    frame: bytes = b""
    attempts: int = 0
    first_sent_s: float = 0.0
    last_sent_s: float = 0.0
    not_before_s: float = 0.0

    @property
    def key(self) -> tuple[str, str | None, int]:
        return self.cn, self.data_time, self.part[1] if self.part else 0


Encoder = Callable[[Outgoing], None]  # assigns qn and frame


@dataclass(slots=True)
class Delivery:
    encode: Encoder
    counters: Counters
    window: int = 8
    over_time_s: float = 10.0
    re_count: int = 3
    max_unacked: int = 5000
    retry_store_after_s: float = 60.0
    fresh: deque[Outgoing] = field(default_factory=deque)
    store: deque[Outgoing] = field(default_factory=deque)
    lane: deque[Outgoing | bytes] = field(default_factory=deque)
    in_flight: dict[str, Outgoing] = field(default_factory=dict)
    lane_waiting: Outgoing | None = None
    connected: bool = False
    on_ack: Callable[[Outgoing], None] | None = None  # told of every acknowledged packet

    # -- input ----------------------------------------------------------------------------------

    def enqueue(self, item: Outgoing) -> None:
        """A new live packet: sent when the window allows, or stored while the link is down."""
        if self.connected:
            self.fresh.append(item)
        elif item.keep:
            self._store(item, 0.0)
        else:
            self.counters.rtd_expired += 1

    def push_lane(self, item: Outgoing | bytes) -> None:
        """A reply (bytes) or a history packet, sent in order on the stop-and-wait lane."""
        self.lane.append(item)

    def acknowledge(self, qn: str, now_s: float) -> bool:
        item = self.in_flight.pop(qn, None)
        if item is None and self.lane_waiting is not None and self.lane_waiting.qn == qn:
            item, self.lane_waiting = self.lane_waiting, None
        if item is None:
            return False
        self.counters.acked += 1
        self.counters.add_latency((now_s - item.first_sent_s) * 1000)
        if self.on_ack is not None:
            self.on_ack(item)
        return True

    def link_up(self) -> None:
        self.connected = True
        self.retry_store_now()

    def retry_store_now(self) -> None:
        """Re-upload the whole store as soon as the window allows (on connect, and when a run drains)."""
        for item in self.store:
            item.not_before_s = 0.0

    def link_down(self) -> None:
        """In-flight and queued packets go back to the store; replies in the lane are dropped."""
        self.connected = False
        for item in [*self.in_flight.values(), *self.fresh]:
            if item.keep:
                self._store(item, 0.0)
            else:
                self.counters.rtd_expired += 1
        self.in_flight.clear()
        self.fresh.clear()
        self.lane.clear()
        self.lane_waiting = None

    def _store(self, item: Outgoing, not_before_s: float) -> None:
        item.not_before_s = not_before_s
        item.attempts = 0
        self.store.append(item)
        while len(self.store) > self.max_unacked:
            self.store.popleft()
            self.counters.dropped += 1

    # -- output ---------------------------------------------------------------------------------

    def frames_due(self, now_s: float) -> list[bytes]:
        """Every frame to write now: lane first, then resends, then fresh data, then the store."""
        if not self.connected:
            return []
        out: list[bytes] = []
        self._drain_lane(now_s, out)
        self._resend_expired(now_s, out)
        while len(self.in_flight) < self.window and self.fresh:
            self._send(self.fresh.popleft(), now_s, out)
        while len(self.in_flight) < self.window and self.store and self.store[0].not_before_s <= now_s:
            item = self.store.popleft()
            item.backfill = True
            self.counters.reuploaded += 1
            self._send(item, now_s, out)
        return out

    def _send(self, item: Outgoing, now_s: float, out: list[bytes]) -> None:
        self.encode(item)
        item.attempts = 1
        item.first_sent_s = item.last_sent_s = now_s
        out.append(item.frame)
        if not item.backfill:
            item.sent_live = True
            self.counters.sent += 1
        if item.ack:
            self.in_flight[item.qn] = item

    def _drain_lane(self, now_s: float, out: list[bytes]) -> None:
        waiting = self.lane_waiting
        if waiting is not None:
            retried = self._retry(waiting, now_s, out)
            if retried is not False:
                return  # not due yet, or resent
            self.lane_waiting = None  # given up: history is fetched again by the platform if needed
        while self.lane:
            head = self.lane.popleft()
            if isinstance(head, bytes):
                out.append(head)
                continue
            self.encode(head)
            head.attempts = 1
            head.first_sent_s = head.last_sent_s = now_s
            out.append(head.frame)
            self.counters.history_packets += 1
            if head.ack:
                self.lane_waiting = head
                return

    def _retry(self, item: Outgoing, now_s: float, out: list[bytes]) -> bool | None:
        """Resend `item` once its OverTime passed: None not due yet, True resent, False out of retries."""
        if now_s - item.last_sent_s < self.over_time_s:
            return None
        if item.attempts > self.re_count:
            return False
        item.attempts += 1
        item.last_sent_s = now_s
        self.counters.resent += 1
        out.append(item.frame)
        return True

    def _resend_expired(self, now_s: float, out: list[bytes]) -> None:
        for qn, item in list(self.in_flight.items()):
            if self._retry(item, now_s, out) is not False:
                continue  # not due yet, or resent
            del self.in_flight[qn]
            if item.keep:
                self._store(item, now_s + self.retry_store_after_s)
            else:
                self.counters.rtd_expired += 1

    def next_deadline_s(self) -> float | None:
        """The network time of the next resend or store retry, if any."""
        times = [item.last_sent_s + self.over_time_s for item in self.in_flight.values()]
        if self.lane_waiting is not None:
            times.append(self.lane_waiting.last_sent_s + self.over_time_s)
        if self.store and len(self.in_flight) < self.window:
            times.append(self.store[0].not_before_s)
        return min(times) if times else None

    def has_work(self) -> bool:
        """Something could be sent right now without waiting for a timer."""
        if self.lane and self.lane_waiting is None:
            return True
        return bool(self.fresh) and len(self.in_flight) < self.window

    @property
    def unacked(self) -> int:
        lane = sum(1 for x in self.lane if isinstance(x, Outgoing))
        return len(self.in_flight) + len(self.fresh) + len(self.store) + lane + (self.lane_waiting is not None)

    def undelivered(self) -> list[Outgoing]:
        return [*self.in_flight.values(), *self.fresh, *self.store]
