"""`PacketRuleRunner`: the per-packet rules of one replica, after commit and off the ack path.

A `DeviceListener` of the monitor hub: `stored` (called once a batch's rows committed and its acks
went out) only queues the packet, bounded by `max_pending` (beyond it a packet is not judged: one
WARNING per round, `hj212gw_rule_samples_dropped_total`); the supervised task `run` judges the
queue every `batch_s` (giving the event loop a turn every `SLICE_S` of judging) and hands the changes
to the `AlertEngine` in one transaction. While PostgreSQL is unreachable the changes wait (bounded,
in order) and are applied once it answers; packets queued meanwhile are judged as usual.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

import structlog

from hj212gw.alerts.engine import AlertEngine
from hj212gw.monitor.hub import EVERYTHING, StoredData
from hj212gw.monitor.state import MOVED_TO_CONNECTION
from hj212gw.rules.model import AlertChange, Sample
from hj212gw.rules.packet import PacketRules
from hj212gw.storage.db import DATABASE_ERRORS, is_retryable

_LOG = structlog.get_logger("hj212gw.alerts")
_new = tuple.__new__
# The judge gives the event loop a turn once it has run this long (looked at every CHECK_EVERY
# packets): reads, acks and commits wait behind it. 500 packets at a time held the loop for 25-37 ms
# at 5,000 packets/s (a warm packet costs 10-60 µs to judge, a cold one up to 250).
SLICE_S = 0.002
CHECK_EVERY = 16
MAX_WAITING_CHANGES = 100_000  # changes kept while the database is down: the newest (a lost Clear
# leaves its alert firing until the rule judges that key again; the scans resolve theirs each round)


class PacketRuleRunner:
    """Queues committed packets for `PacketRules` and applies their changes (module docstring)."""

    stored_kinds = EVERYTHING

    def __init__(
        self,
        rules: PacketRules,
        engine: AlertEngine,
        *,
        max_pending: int = 200_000,
        batch_s: float = 0.2,
        on_dropped: Callable[[int], object] = lambda n: None,
        forget_after_s: float = 3600.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = rules
        self.engine = engine
        self.max_pending = max_pending
        self.batch_s = batch_s
        self.on_dropped = on_dropped
        self.forget_after_s = forget_after_s
        self.monotonic = monotonic
        self._released: dict[str, float] = {}  # MN -> when it left this replica, oldest first
        self._queue: deque[StoredData] = deque()
        self._wake = asyncio.Event()
        self._dropped = 0
        self._waiting: list[AlertChange] = []  # judged, not applied yet (a database outage)
        self._failing = False

    # -- DeviceListener: on the event loop, no I/O ------------------------------------------------

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None:
        self._released.pop(mn, None)

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None:
        """The rules keep a device's state (flatline counts, open episodes) through a reconnect, and
        drop it `forget_after_s` after the device left this replica without coming back: their
        memory follows the devices held here, not every MN ever seen."""
        if cause != MOVED_TO_CONNECTION:
            self._released.pop(mn, None)  # re-inserted: the dict stays in the order of departure
            self._released[mn] = self.monotonic()

    def stored(self, data: StoredData) -> None:
        if data.fields is None or data.time_suspect:
            return
        queue = self._queue
        if len(queue) >= self.max_pending:
            self._dropped += 1
            return
        if not queue:  # a non-empty queue has woken the task already: `judge` drains it all
            self._wake.set()
        queue.append(data)

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- the task -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Judge what was queued every `batch_s` (supervised by the gateway)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.batch_s)
            await self.judge()

    async def judge(self) -> int:
        """Judge every queued packet and apply the changes; returns how many packets were judged."""
        self._forget_departed()
        if self._dropped:
            _LOG.warning("rule_samples_dropped", count=self._dropped, pending=len(self._queue))
            self.on_dropped(self._dropped)
            self._dropped = 0
        changes = self._waiting
        judged = 0
        queue, on_sample, popleft, clock = self._queue, self.rules.on_sample, self._queue.popleft, time.perf_counter
        turn_ends = clock() + SLICE_S
        while queue:
            count = min(len(queue), CHECK_EVERY)
            # tuple.__new__: a Sample without the named tuple's Python-level __new__ (fields not None: `stored`)
            for data in [popleft() for _ in range(count)]:
                found = on_sample(_new(Sample, (data.mn, data.cn, data.data_time, data.received_at, data.backfill,
                                                data.fields)))  # fmt: skip
                if found:
                    changes.extend(found)
            judged += count
            if queue and clock() >= turn_ends:
                await asyncio.sleep(0)
                turn_ends = clock() + SLICE_S
        await self._apply(changes)
        return judged

    def _forget_departed(self) -> None:
        released = self._released
        if not released:
            return
        cutoff = self.monotonic() - self.forget_after_s
        while released:
            mn, at = next(iter(released.items()))  # the oldest departure
            if at > cutoff:
                return
            del released[mn]
            self.rules.forget(mn)

    async def _apply(self, changes: list[AlertChange]) -> None:
        if not changes:
            return
        try:
            await self.engine.apply(changes)
        except DATABASE_ERRORS as err:
            if not is_retryable(err):
                self._waiting = []
                raise
            if not self._failing:
                _LOG.warning("rule_changes_waiting", error=type(err).__name__, changes=len(changes))
            self._failing = True
            self._waiting = changes[-MAX_WAITING_CHANGES:]
            self._wake.set()  # try again next round
            return
        if self._failing:
            _LOG.info("rule_changes_applied", changes=len(changes))
        self._failing = False
        self._waiting = []
