"""Trust on first use: PostgreSQL decides the PW of an MN the registry has none for.

`Pinner.pin(mn, pw)` returns a future that every connection presenting that MN waits on; one
pin statement per MN is in flight at a time (the first presented PW is the one offered), and at
most `MAX_CONCURRENT` across MNs, so a flood of new MNs cannot take the writers' pool. First
writer wins across replicas (storage.devices.save_pin); the registry learns whatever PW holds.
Rare and off the per-packet path: a known MN never comes here. Never logs a PW.
"""

import asyncio
import hmac
from typing import cast

import asyncpg
import structlog

from hj212gw.metrics import Metrics
from hj212gw.registry import DeviceRegistry, Status
from hj212gw.storage.db import OUTAGE_ERRORS, Database
from hj212gw.storage.devices import save_pin

MAX_CONCURRENT = 2
# While PostgreSQL is down a new MN's connection waits (unread, unacked) this long for its pin,
# then is closed; the DAS keeps its data and connects again.
PIN_TIMEOUT_S = 30.0

_LOG = structlog.get_logger("hj212gw.pinning")


class PinFailed(Exception):
    """The PW of a new MN could not be pinned (PostgreSQL unreachable or refusing the row)."""


class Pinner:
    """Pins first-use PWs, one statement per MN, shared by every connection waiting for it."""

    def __init__(self, db: Database, registry: DeviceRegistry, metrics: Metrics) -> None:
        self.db = db
        self.registry = registry
        self.metrics = metrics
        self.timeout_s = PIN_TIMEOUT_S
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)

    def pin(self, mn: str, pw: str | None) -> asyncio.Future[None]:
        """Done once the registry knows `mn`'s PW; fails with PinFailed."""
        future = self._pending.get(mn)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._pending[mn] = loop.create_future()
            task = loop.create_task(self._run(mn, pw or "", future), name="pin")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, mn: str, pw: str, future: asyncio.Future[None]) -> None:
        try:
            decided = await self._save(mn, pw)
        except (*OUTAGE_ERRORS, asyncpg.PostgresError, PinFailed) as err:
            self.metrics.device_pins.labels(outcome="failed").inc()
            _LOG.warning("pin_failed", mn=mn, error=type(err).__name__, detail=str(err)[:200])
            future.set_exception(PinFailed(type(err).__name__))
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as err:  # a bug: once at ERROR; the waiting connections are closed
            _LOG.exception("pin_bug", mn=mn)
            future.set_exception(PinFailed(type(err).__name__))
        else:
            pinned, status = decided
            won = hmac.compare_digest(pinned.encode("utf-8", "surrogateescape"), pw.encode("utf-8", "surrogateescape"))
            self.metrics.device_pins.labels(outcome="pinned" if won else "already_set").inc()
            self.registry.learn_pin(mn, pinned, cast(Status, status))
            if won:
                _LOG.info("device_pw_pinned", mn=mn, status=status)
            future.set_result(None)
        finally:
            self._pending.pop(mn, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved here: a pin nobody waits for any more is no error

    async def _save(self, mn: str, pw: str) -> tuple[str, str]:
        """save_pin, retried with backoff while PostgreSQL is unreachable, up to `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        delay = 0.2
        while True:
            try:
                async with self._limit, self.db.pool.acquire(timeout=self.db.connect_timeout_s) as conn:
                    decided = await save_pin(conn, mn, pw, self.registry.new_device_status())
            except OUTAGE_ERRORS:
                if loop.time() + delay > deadline:
                    raise
                decided = None
            if decided is not None:
                return decided
            if loop.time() + delay > deadline:
                raise PinFailed("the device row vanished while pinning")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
