"""The database a command uses: `database_url`, or the embedded PostgreSQL in `data_dir`.

Shared by serve, migrate, devices, gaps and command; starting the embedded server blocks, so it runs in a thread.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from hj212gw.settings import Settings
from hj212gw.storage.embedded import EmbeddedInUse, EmbeddedPostgres, start_embedded, stop_embedded

log = structlog.get_logger("hj212gw.app")


async def resolve_database_url(settings: Settings) -> tuple[str, EmbeddedPostgres | None]:
    """The DSN to use, and the embedded server this process started (None: `database_url`)."""
    if settings.database_url:
        return settings.database_url, None
    data_dir = (settings.data_dir / "postgres").expanduser().absolute()
    log.info("embedded_postgres_starting", data_dir=str(data_dir))
    embedded = await asyncio.to_thread(start_embedded, data_dir)
    return embedded.dsn, embedded


def embedded_socket_dsn(settings: Settings) -> str:
    """The DSN of the embedded server a running gateway started (start_embedded's defaults)."""
    data_dir = (settings.data_dir / "postgres").expanduser().resolve()
    return f"postgresql://postgres@/postgres?host={data_dir}&port=5432"


async def stop_started_embedded(server: EmbeddedPostgres) -> None:
    """Stop the embedded server this process started, and say so."""
    await asyncio.to_thread(stop_embedded, server.data_dir)
    log.info("embedded_postgres_stopped", data_dir=str(server.data_dir))


@contextlib.asynccontextmanager
async def tool_database(settings: Settings) -> AsyncIterator[str]:
    """The DSN for a command beside `serve` (devices, gaps, command): `database_url`; else the
    embedded server a running gateway holds (talked to, never stopped); else one started here and
    stopped when the block ends.

    Raises:
        EmbeddedPostgresError: the embedded server cannot be started.
    """
    try:
        dsn, embedded = await resolve_database_url(settings)
    except EmbeddedInUse:
        dsn, embedded = embedded_socket_dsn(settings), None
    try:
        yield dsn
    finally:
        if embedded is not None:
            await asyncio.to_thread(stop_embedded, embedded.data_dir)
