"""Trust on first use: PostgreSQL decides the PW of an MN the registry has none for.

`Pinner.pin(mn, pw)` returns a future that every connection presenting that MN waits on (the first
presented PW is the one offered). Every MN waiting for a pin goes into one statement
(storage.devices.save_pins): at most `MAX_BATCHES` statements in flight, `MAX_BATCH_MNS` MNs in
each, so a fleet of new MNs costs a few round trips and a flood of them cannot take the writers'
pool. If PostgreSQL refuses a row, the batch is halved until that MN is alone: only it fails.
First writer wins across replicas; the registry learns whatever PW holds. While PostgreSQL is
unreachable a batch is retried (taking in MNs queued meanwhile) and an MN fails `PIN_TIMEOUT_S`
after it was first presented. Rare and off the per-packet path: a known MN never comes here.
Never logs a PW.
"""

import asyncio
import hmac
import itertools
from dataclasses import dataclass
from typing import cast

import asyncpg
import structlog
from asyncpg.exceptions._base import DataError as ClientDataError

from hj212gw.metrics import Metrics
from hj212gw.server.registry import DeviceRegistry, Status
from hj212gw.storage.db import DATABASE_ERRORS, RETRYABLE_ERRORS, Database, is_retryable
from hj212gw.storage.devices import save_pins

MAX_BATCHES = 2
MAX_BATCH_MNS = 1000
# While PostgreSQL is down a new MN's connection waits (unread, unacked) this long for its pin,
# then is closed; the DAS keeps its data and connects again.
PIN_TIMEOUT_S = 30.0
_RETRY_INITIAL_S = 0.2
_RETRY_MAX_S = 5.0

_LOG = structlog.get_logger("hj212gw.pinning")


class PinFailed(Exception):
    """The PW of a new MN could not be pinned (PostgreSQL unreachable or refusing the row)."""


@dataclass(slots=True)
class _Wanted:
    """One MN waiting for its pin."""

    pw: str  # the first PW presented: the one offered
    future: asyncio.Future[None]  # every connection presenting the MN waits on it
    deadline: float  # loop time: an outage still going on then fails the pin


def _secret(pw: str) -> bytes:
    return pw.encode("utf-8", "surrogateescape")


class Pinner:
    """Pins first-use PWs, all MNs waiting in one statement, one future per MN."""

    def __init__(self, db: Database, registry: DeviceRegistry, metrics: Metrics) -> None:
        self.db = db
        self.registry = registry
        self.metrics = metrics
        self.timeout_s = PIN_TIMEOUT_S
        self._pending: dict[str, _Wanted] = {}  # every MN not decided yet
        self._queue: dict[str, _Wanted] = {}  # those not in a batch yet, oldest first
        self._batches: set[asyncio.Task[None]] = set()
        self._start_scheduled = False
        self._stopping = False

    def pin(self, mn: str, pw: str | None) -> asyncio.Future[None]:
        """Done once the registry knows `mn`'s PW; fails with PinFailed."""
        wanted = self._pending.get(mn)
        if wanted is None:
            loop = asyncio.get_running_loop()
            wanted = _Wanted(pw or "", loop.create_future(), loop.time() + self.timeout_s)
            self._pending[mn] = self._queue[mn] = wanted
            if not self._start_scheduled:  # at the end of this loop pass: MNs read together share a batch
                self._start_scheduled = True
                loop.call_soon(self._start_batches)
        return wanted.future

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._batches):
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        for wanted in self._queue.values():
            wanted.future.cancel()
        self._queue.clear()
        self._pending.clear()

    def _start_batches(self) -> None:
        self._start_scheduled = False
        while self._queue and len(self._batches) < MAX_BATCHES and not self._stopping:
            task = asyncio.get_running_loop().create_task(self._run(self._take({})), name="pin")
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._start_batches()

    def _take(self, batch: dict[str, _Wanted]) -> dict[str, _Wanted]:
        """Move the oldest queued MNs into `batch`, up to MAX_BATCH_MNS in all."""
        for mn, wanted in list(itertools.islice(self._queue.items(), MAX_BATCH_MNS - len(batch))):
            batch[mn] = wanted
            del self._queue[mn]
        return batch

    async def _run(self, batch: dict[str, _Wanted]) -> None:
        try:
            await self._save(batch)
        except asyncio.CancelledError:
            for mn, wanted in batch.items():
                self._pending.pop(mn, None)
                wanted.future.cancel()
            raise
        except Exception as err:  # a bug: once at ERROR; the waiting connections are closed
            _LOG.exception("pin_bug", mns=len(batch))
            for mn, wanted in list(batch.items()):
                self._settle(mn, wanted, PinFailed(type(err).__name__))

    async def _save(self, batch: dict[str, _Wanted]) -> None:
        """Decide every MN of `batch` (emptied as they are), retried with backoff while PostgreSQL is
        unreachable; each retry takes in MNs queued meanwhile, an MN still undecided at its deadline
        fails."""
        loop = asyncio.get_running_loop()
        delay = _RETRY_INITIAL_S
        while True:
            failure: BaseException = PinFailed("the device row vanished while pinning")
            try:
                async with self.db.pool.acquire(timeout=self.db.connect_timeout_s) as conn:
                    await self._save_isolating(conn, batch)
            except RETRYABLE_ERRORS as err:  # row errors were isolated: an outage or a conflict
                failure = err
            now = loop.time()
            for mn in [mn for mn, wanted in batch.items() if wanted.deadline <= now]:
                self._failed(mn, batch.pop(mn), failure)
            if not batch:
                return
            await asyncio.sleep(min(delay, min(wanted.deadline for wanted in batch.values()) - now))
            delay = min(delay * 2, _RETRY_MAX_S)
            self._take(batch)

    async def _save_isolating(self, conn: asyncpg.Connection, batch: dict[str, _Wanted]) -> None:
        """One statement for the whole batch; a group PostgreSQL refuses is halved until the refused
        MN is alone, and fails. Decided MNs leave `batch`; any left (a row vanished) are tried again.

        Raises what `is_retryable` accepts: the MNs still in `batch` are tried again.
        """
        status = self.registry.new_device_status()
        groups = [list(batch)]
        while groups:
            group = groups.pop()
            self.metrics.device_pin_batch.observe(len(group))
            try:
                held = await save_pins(conn, {mn: batch[mn].pw for mn in group}, status)
            except DATABASE_ERRORS as err:
                if is_retryable(err):
                    raise
                if len(group) > 1:
                    half = len(group) // 2
                    groups += [group[half:], group[:half]]
                else:
                    self._failed(group[0], batch.pop(group[0]), err)
                continue
            for mn, (pw, status_now) in held.items():
                self._pinned(mn, batch.pop(mn), pw, cast(Status, status_now))

    def _pinned(self, mn: str, wanted: _Wanted, pw: str, status: Status) -> None:
        won = hmac.compare_digest(_secret(pw), _secret(wanted.pw))
        self.metrics.device_pins.labels(outcome="pinned" if won else "already_set").inc()
        self.registry.learn_pin(mn, pw, status)
        if won:
            _LOG.info("device_pw_pinned", mn=mn, status=status)
        self._settle(mn, wanted, None)

    def _failed(self, mn: str, wanted: _Wanted, err: BaseException) -> None:
        self.metrics.device_pins.labels(outcome="failed").inc()
        # asyncpg quotes a value it could not encode in its message: that value may be a PW.
        detail = None if isinstance(err, ClientDataError) else str(err)[:200]
        sqlstate = getattr(err, "sqlstate", None)
        _LOG.warning("pin_failed", mn=mn, error=type(err).__name__, sqlstate=sqlstate, detail=detail)
        self._settle(mn, wanted, PinFailed(type(err).__name__))

    def _settle(self, mn: str, wanted: _Wanted, error: PinFailed | None) -> None:
        if self._pending.get(mn) is wanted:
            del self._pending[mn]
        if wanted.future.done():
            return
        if error is None:
            wanted.future.set_result(None)
        else:
            wanted.future.set_exception(error)
            wanted.future.exception()  # retrieved here: a pin nobody waits for any more is no error
