"""`Backfill`: asks the devices this replica holds for the periods their gaps are missing (补传).

The regulation wants data lost to network faults backfilled after recovery (shanxi-rules.md Art.
20(7)); this is the automatic part. For every device held here that has open or requested gaps
(`GapSource`, the gap tracker), it sends history fetches (2051/2061/2031 with BeginTime/EndTime,
through the command channel: `FetchSender`, persisted like any command with `purpose` backfill and
the gap's id), one chunk at a time (`backfill_plan.next_fetch`), oldest gap first:

- **when**: `settle_s` after a device is bound here (many DAS re-upload what they kept on their
  own after a reconnect; the fetch only asks for what is still missing then), again right after
  each answer while the device has more to fetch, and for every device with gaps each `sweep_s`;
- **how much**: one outstanding fetch per device, and a global `TokenBucket` of `rate_per_s`
  (bursts of `burst`), so a reconnect storm of thousands of devices floods neither them nor the
  database: a device waits its turn;
- **after each answer** (the command channel reports a fetch only once its rows are committed)
  the gap is re-checked against `data`; a partial answer leaves the rest open. A pass walks a
  gap's chunks from its start; once a pass is through and periods are still missing, the gap
  waits `RetryPolicy.delay_s` and is walked again, up to `max_attempts` passes. No answer, a
  refusal or a failure counts as a pass too.
- **ends**: a gap the device answered with ExeRtn 100 (no data) for every chunk of a pass, or
  whose passes are exhausted, becomes `given_up` with the reason (`no_data`, `no_answer`,
  `refused`, `still_missing`); nothing is silently forgotten. A device that goes offline stops
  its backfill until it is back (`device_offline` is no attempt).

Only the replica holding a device asks it (the command channel sends on this replica's own
connection); a device that moves takes its backfill with it, from its gaps' stored state.
Attempt counts are this process's: a restart starts them again (the gaps' `requests` column
keeps the total).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol

import structlog

from hj212gw.monitor.backfill_plan import Fetch, MissingRun, RetryPolicy, TokenBucket, next_fetch
from hj212gw.monitor.commands import CommandOutcome
from hj212gw.monitor.hub import NOTHING, StoredData
from hj212gw.waiting import wait_set

_LOG = structlog.get_logger("hj212gw.monitor")

FETCH_COMMANDS = {"2051": "2051", "2061": "2061", "2031": "2031"}
"""The history fetch for each kind of grid data (the same CN as its upload)."""


class GapView(Protocol):
    """A gap as the gap tracker shows it (start and end: inclusive period starts, UTC)."""

    @property
    def id(self) -> int: ...
    @property
    def cn(self) -> str: ...
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...
    @property
    def periods(self) -> int: ...


class GapSource(Protocol):
    """What the backfill needs of the gap tracker."""

    def requestable_gaps(self, mn: str) -> Sequence[GapView]:
        """The open and requested gaps of `mn`, oldest first."""
        ...

    def mns_with_requestable_gaps(self) -> Iterable[str]: ...
    def period_of(self, mn: str, cn: str) -> timedelta | None: ...
    def missing_in(self, mn: str, cn: str, start: datetime, end: datetime) -> int:
        """Periods of the series missing between two period starts (inclusive)."""
        ...

    def mark_requested(self, gap_id: int, now: datetime) -> bool: ...
    def give_up(self, gap_id: int, reason: str) -> bool: ...
    async def recheck(self, gap_id: int) -> GapView | None:
        """What is still missing of the gap, or None once it is filled."""
        ...


class Ticket(Protocol):
    @property
    def outcome(self) -> asyncio.Future[CommandOutcome]: ...


class FetchSender(Protocol):
    """The command channel's in-process entry (server.commands.CommandRunner.submit)."""

    async def submit(
        self,
        mn: str,
        command: str,
        params: Mapping[str, Any],
        *,
        purpose: str | None = None,
        gap_id: int | None = None,
        requested_by: str | None = None,
        over_time_s: float | None = None,
        re_count: int | None = None,
    ) -> Ticket: ...


class BackfillObserver(Protocol):
    """Metrics hooks (metrics.py implements them)."""

    def backfill_request(self, outcome: str) -> None: ...
    def backfill_filled(self, cn: str, periods: int) -> None: ...


@dataclass(slots=True)
class _Walk:
    """This process's progress through one gap."""

    cursor: datetime | None = None  # the next chunk starts here (None: at the gap's start)
    passes: int = 0  # passes done that left periods missing
    answered: bool = False  # this pass: some chunk was answered with data (not ExeRtn 100)
    not_before: datetime | None = None  # waiting for its next pass until then


@dataclass(slots=True)
class BackfillConfig:
    rate_per_s: float = 10.0
    burst: int = 20
    settle_s: float = 30.0
    sweep_s: float = 300.0
    tick_s: float = 1.0
    horizon: timedelta = timedelta(days=7)  # the gap tracker's: nothing older is asked for
    policy: RetryPolicy = field(default_factory=RetryPolicy)


class Backfill:
    """Automatic history fetches for the gaps of the devices this replica holds."""

    stored_kinds = NOTHING  # it follows connections; gaps come from the gap tracker

    def __init__(
        self,
        gaps: GapSource,
        sender: FetchSender,
        config: BackfillConfig,
        *,
        device_tz: tzinfo,
        held: Callable[[str], bool],
        observer: BackfillObserver,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gaps = gaps
        self.sender = sender
        self.config = config
        self.device_tz = device_tz
        self.held = held
        self.observer = observer
        self.clock = clock
        self.monotonic = monotonic
        self.bucket = TokenBucket(config.rate_per_s, config.burst)
        self._due: list[tuple[float, str]] = []  # (monotonic time, MN): a heap of devices to look at
        self._queued: set[str] = set()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._walks: dict[int, _Walk] = {}
        self._next_sweep = 0.0
        self._wake = asyncio.Event()

    # -- DeviceListener: on the event loop, no I/O --------------------------------------------

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None:
        self._schedule(mn, self.monotonic() + self.config.settle_s)

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None:
        """Nothing: a fetch in flight ends `device_offline` or `failed` through the command channel."""

    def stored(self, data: StoredData) -> None:
        """Nothing: a gap that opens is found by the sweep (or the device's next bind)."""

    # -- the task -------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        """Start due fetches within the rate, for ever (supervised)."""
        while True:
            now_s = self.monotonic()
            if now_s >= self._next_sweep:
                self._next_sweep = now_s + self.config.sweep_s
                for mn in list(self.gaps.mns_with_requestable_gaps()):
                    self._schedule(mn, now_s)
            wait_s = self.config.tick_s
            while self._due:
                at_s, mn = self._due[0]
                if at_s > now_s:
                    wait_s = min(wait_s, at_s - now_s)
                    break
                if not self.bucket.take(now_s):
                    wait_s = min(wait_s, self.bucket.wait_s(now_s))  # the rest waits for the next token
                    break
                heapq.heappop(self._due)
                self._queued.discard(mn)
                if mn not in self._active and self.held(mn):
                    self._start(mn)
            self._wake.clear()
            await wait_set(self._wake, max(wait_s, 0.001))

    def _schedule(self, mn: str, at_s: float) -> None:
        if mn in self._queued:
            return
        self._queued.add(mn)
        heapq.heappush(self._due, (at_s, mn))
        self._wake.set()

    def _start(self, mn: str) -> None:
        now = self.clock()
        fetch = self._next(mn, now)
        if fetch is None:
            return
        task = asyncio.get_running_loop().create_task(self._fetch(mn, fetch), name=f"backfill-{mn}")
        self._active[mn] = task
        task.add_done_callback(lambda done: self._ended(mn, done))

    def _ended(self, mn: str, task: asyncio.Task[None]) -> None:
        self._active.pop(mn, None)
        if not task.cancelled() and task.exception() is not None:
            _LOG.error("backfill_failed", mn=mn, exc_info=task.exception())

    def _next(self, mn: str, now: datetime) -> Fetch | None:
        """The next chunk to ask `mn` for; schedules the device's next look when all wait."""
        runs = []
        waiting: list[datetime] = []
        for gap in self.gaps.requestable_gaps(mn):
            period = self.gaps.period_of(mn, gap.cn)
            if period is None or gap.cn not in FETCH_COMMANDS:
                continue
            walk = self._walks.get(gap.id)
            if walk is not None and walk.not_before is not None and walk.not_before > now:
                waiting.append(walk.not_before)
                continue
            start = gap.start if walk is None or walk.cursor is None else max(gap.start, walk.cursor)
            oldest = now - self.config.horizon  # a gap straddling the horizon: only its part inside
            if start < oldest:
                start += period * -((start - oldest) // period)  # the first period start inside
            if start <= gap.end:
                runs.append(MissingRun(gap.cn, start, gap.end, period, gap.id))
        fetch = next_fetch(runs, not_before={}, now=now)
        if fetch is None and waiting:
            delay_s = (min(waiting) - now).total_seconds()
            self._schedule(mn, self.monotonic() + max(delay_s, self.config.tick_s))
        return fetch

    async def _fetch(self, mn: str, fetch: Fetch) -> None:
        gap_id = int(fetch.key)  # type: ignore[call-overload]
        walk = self._walks.setdefault(gap_id, _Walk())
        params = {"BeginTime": self._device_time(fetch.begin), "EndTime": self._device_time(fetch.end)}
        ticket = await self.sender.submit(mn, FETCH_COMMANDS[fetch.cn], params, purpose="backfill", gap_id=gap_id)
        self.gaps.mark_requested(gap_id, self.clock())
        outcome = await ticket.outcome
        state = "no_data" if outcome.state == "succeeded" and outcome.no_data else outcome.state
        self.observer.backfill_request(state)
        if state == "device_offline":
            return  # no attempt: it is looked at again when it is back
        rest = await self.gaps.recheck(gap_id)
        still = self.gaps.missing_in(mn, fetch.cn, fetch.begin, fetch.end)
        self.observer.backfill_filled(fetch.cn, max(fetch.periods - still, 0))
        if rest is None:
            self._walks.pop(gap_id, None)  # filled
        elif state in ("succeeded", "no_data"):
            walk.answered |= state == "succeeded"
            walk.cursor = fetch.end + self._period(mn, fetch.cn)
            if walk.cursor > rest.end:  # the pass is through: periods are still missing
                self._pass_done(gap_id, walk, "still_missing" if walk.answered else "no_data")
        else:
            self._pass_done(gap_id, walk, "refused" if state == "refused" else "no_answer")
        self._schedule(mn, self.monotonic())  # the next chunk, or the next gap, within the rate

    def _period(self, mn: str, cn: str) -> timedelta:
        return self.gaps.period_of(mn, cn) or timedelta(hours=1)

    def _pass_done(self, gap_id: int, walk: _Walk, reason: str) -> None:
        walk.passes += 1
        walk.cursor = None
        walk.answered = False
        policy = self.config.policy
        if reason == "no_data" or policy.exhausted(walk.passes):
            if self.gaps.give_up(gap_id, reason):
                _LOG.info("backfill_given_up", gap_id=gap_id, reason=reason, passes=walk.passes)
            self._walks.pop(gap_id, None)
            return
        walk.not_before = self.clock() + timedelta(seconds=policy.delay_s(walk.passes))

    def _device_time(self, moment: datetime) -> str:
        return moment.astimezone(self.device_tz).strftime("%Y%m%d%H%M%S")
