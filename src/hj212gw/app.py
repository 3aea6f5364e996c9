"""`hj212gw serve`: wires settings into the database, the gateway and the admin HTTP server, and
runs them until SIGTERM/SIGINT, then shuts down in order.

Order on start: embedded PostgreSQL (when no URL; its start blocks, so in a thread), migrations,
gateway, HTTP. Order on stop: stop accepting, flush and ack what committed, close connections,
HTTP, database pool, embedded PostgreSQL.
"""

import asyncio
import contextlib
import gc
import signal
from dataclasses import dataclass

import structlog
from aiohttp import web

from hj212gw.api import build_app, start_http, stop_http
from hj212gw.gateway import Gateway
from hj212gw.metrics import Metrics
from hj212gw.settings import Settings, split_host_port
from hj212gw.storage.db import Database
from hj212gw.storage.embedded import start_embedded, stop_embedded

log = structlog.get_logger("hj212gw.app")

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


@dataclass(slots=True)
class Running:
    """A started gateway process: what `stop()` has to take down."""

    settings: Settings
    db: Database
    gateway: Gateway
    http_runner: web.AppRunner
    embedded: bool

    async def stop(self) -> None:
        await self.gateway.stop()
        await stop_http(self.http_runner)
        await self.db.close()
        if self.embedded:
            await asyncio.to_thread(stop_embedded, self.settings.data_dir / "postgres")
            log.info("embedded_postgres_stopped")


async def resolve_database_url(settings: Settings) -> tuple[str, bool]:
    """The DSN to use, and whether it is an embedded server this process started."""
    if settings.database_url:
        return settings.database_url, False
    data_dir = settings.data_dir / "postgres"
    log.info("embedded_postgres_starting", data_dir=str(data_dir))
    embedded = await asyncio.to_thread(start_embedded, data_dir)
    return embedded.dsn, True


async def start(settings: Settings) -> Running:
    dsn, embedded = await resolve_database_url(settings)
    db = Database(dsn, schema=settings.database_schema, max_size=settings.writer.pool_size)
    await db.connect()
    metrics = Metrics()
    gateway = Gateway(settings, db, metrics)
    await gateway.start()
    app = build_app(db=db, live=gateway, metrics_registry=metrics.registry, ready=gateway.ready)
    host, port = split_host_port(settings.http)
    runner = await start_http(app, host, port)
    return Running(settings, db, gateway, runner, embedded)


async def serve(settings: Settings) -> int:
    """Run until a signal; exit code 0 after an orderly stop."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # signal handlers exist only on Unix loops
            loop.add_signal_handler(sig, stop_requested.set)
    running = await start(settings)
    tune_gc()
    log.info("gateway_started", listen=settings.listen, http=settings.http)
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
