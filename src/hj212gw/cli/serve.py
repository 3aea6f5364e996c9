"""`hj212gw serve`: wires settings into the database, the gateway and the admin HTTP server, and
runs them until SIGTERM/SIGINT, then shuts down in order.

Order on start: embedded PostgreSQL (when no URL; its start blocks, so in a thread) and its
watchdog, migrations, the writers' pool, the admin API's own small pool, gateway, HTTP; a start
that fails takes down what it had started and is one ERROR line (`gateway_start_failed`, exit 1).
Order on stop: stop accepting, flush and ack what committed, close connections, HTTP, database
pools, embedded PostgreSQL.
"""

import asyncio
import contextlib
import errno
import gc
import signal
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from aiohttp import web

from hj212gw import native
from hj212gw.alerts.acks import AlertAcks
from hj212gw.alerts.config import AlertConfigError
from hj212gw.api import build_app, start_http, stop_http
from hj212gw.api.auth import HttpAccessError, http_access_token
from hj212gw.cli.database import resolve_database_url, stop_started_embedded
from hj212gw.embedded_watchdog import EmbeddedWatchdog
from hj212gw.metrics import Metrics
from hj212gw.server.listener import Gateway
from hj212gw.settings import Settings, split_host_port
from hj212gw.storage.db import Database, DatabaseUnavailable
from hj212gw.storage.embedded import EmbeddedPostgres, EmbeddedPostgresError

log = structlog.get_logger("hj212gw.app")
T = TypeVar("T")

# The cyclic garbage collector's first-generation threshold while serving (CPython's default: 700).
# Every packet waiting for its commit holds a few dozen container objects; at the default a
# collection runs several hundred times a second and walks those again and again (8.5 % of the
# gateway's CPU at 1,000 × 2 in flight). Refcounting frees nearly everything; cycles are rare.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze what start-up allocated (never collected again) and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class PortUnavailable(Exception):
    """A listening address cannot be bound (in use, not local, privileged)."""


# Start-up failures an operator causes and can fix: one ERROR line, no traceback.
START_ERRORS: tuple[type[Exception], ...] = (
    AlertConfigError,
    HttpAccessError,
    EmbeddedPostgresError,
    DatabaseUnavailable,
    PermissionError,
    PortUnavailable,
)
_BIND_ERRNOS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


@dataclass(slots=True)
class Running:
    """A started gateway process: what `stop()` has to take down."""

    settings: Settings
    db: Database
    api_db: Database
    gateway: Gateway
    http_runner: web.AppRunner
    embedded: EmbeddedPostgres | None
    watchdog: EmbeddedWatchdog | None = None

    async def stop(self) -> None:
        await self.gateway.stop()
        await stop_http(self.http_runner)
        if self.watchdog is not None:
            await asyncio.to_thread(self.watchdog.close)  # no restart may race the stop below
        await self.api_db.close()
        await self.db.close()
        if self.embedded is not None:
            await stop_started_embedded(self.embedded)


async def _listening(what: str, address: str, starting: Awaitable[T]) -> T:
    """Await a listener's start; a bind error becomes PortUnavailable naming the setting."""
    try:
        return await starting
    except OSError as err:
        if err.errno not in _BIND_ERRNOS:
            raise
        raise PortUnavailable(f"cannot listen on {address} ({what}): {err.strerror or err}") from err


async def start(settings: Settings) -> Running:
    """Start everything; on failure, stop what had started and raise (START_ERRORS for an operator's)."""
    token = http_access_token(settings)
    async with contextlib.AsyncExitStack() as started:
        dsn, embedded = await resolve_database_url(settings)
        if embedded is not None:
            started.push_async_callback(stop_started_embedded, embedded)
        db = Database(dsn, schema=settings.database_schema, max_size=settings.writer.pool_size)
        started.push_async_callback(db.close)
        await db.connect()
        api_db = Database.for_reading(
            dsn,
            schema=settings.database_schema,
            pool_size=settings.http_pool_size,
            statement_timeout_s=settings.http_statement_timeout_s,
            acquire_timeout_s=settings.http_acquire_timeout_s,
        )
        started.push_async_callback(api_db.close)
        await api_db.connect()
        metrics = Metrics()
        gateway = Gateway(settings, db, metrics)
        started.push_async_callback(gateway.stop)  # safe on a half-started gateway: stops its writers
        await _listening("listen", settings.listen, gateway.start())
        watchdog = EmbeddedWatchdog(embedded) if embedded is not None else None
        app = build_app(
            db=api_db,
            live=gateway,
            metrics_registry=metrics.registry,
            ready=gateway.ready if watchdog is None else lambda: watchdog.up and gateway.ready(),
            token=token,
            not_ready_reasons=gateway.not_ready_reasons,
            device_timezone=settings.device_timezone,
            commands=gateway.commands.store,
            alert_acks=AlertAcks(db, metrics),
        )
        host, port = split_host_port(settings.http)
        runner = await _listening("http", settings.http, start_http(app, host, port))
        started.pop_all()
    if watchdog is not None:  # supervised: a watchdog that dies is logged, restarted, and readiness says so
        gateway.supervisor.start("embedded-postgres-watchdog", watchdog.run)
    return Running(settings, db, api_db, gateway, runner, embedded, watchdog)


async def serve(settings: Settings) -> int:
    """Run until a signal; exit code 0 after an orderly stop."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # signal handlers exist only on Unix loops
            loop.add_signal_handler(sig, stop_requested.set)
    try:
        running = await start(settings)
    except START_ERRORS as err:
        log.error("gateway_start_failed", reason=type(err).__name__, detail=str(err))
        return 1
    tune_gc()
    log.info("gateway_started", listen=settings.listen, http=settings.http, native=native.mode())
    await stop_requested.wait()
    log.info("gateway_stopping")
    await running.stop()
    return 0


def run(settings: Settings) -> int:
    """Run `serve` on uvloop when available and wanted, else on asyncio's own loop."""
    if settings.use_uvloop:
        try:
            import uvloop
        except ImportError:
            log.info("uvloop_unavailable")
        else:
            return uvloop.run(serve(settings))
    return asyncio.run(serve(settings))
