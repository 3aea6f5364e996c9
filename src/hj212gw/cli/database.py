"""The database a command uses: `database_url`, or the embedded PostgreSQL in `data_dir`.

Shared by serve, migrate, devices, gaps, command and alerts; starting the embedded server blocks,
so it runs in a thread. `run_with_connection` is the whole database part of a tool beside `serve`.
"""

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import structlog

from hj212gw.settings import Settings
from hj212gw.storage.db import OUTAGE_ERRORS
from hj212gw.storage.embedded import (
    EmbeddedInUse,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    start_embedded,
    stop_embedded,
)
from hj212gw.storage.migrate import MigrationError, migrate

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


async def run_with_connection(
    settings: Settings, tool: str, work: Callable[[asyncpg.Connection], Awaitable[int]]
) -> int:
    """`work`'s exit code, run on a connection to the tool's database (`tool_database`) with the
    schema on the search path and the migrations applied. What an operator must fix (the embedded
    server cannot start, PostgreSQL unreachable or lost, a migration refused) is one line on stderr,
    `hj212gw TOOL: …`, and exit code 1."""
    schema = settings.database_schema
    try:
        async with tool_database(settings) as dsn:
            try:
                conn = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
            except OUTAGE_ERRORS as err:
                return _failed(tool, f"cannot reach PostgreSQL: {type(err).__name__}")
            try:
                await migrate(conn, schema)
                return await work(conn)
            except MigrationError as err:
                return _failed(tool, str(err))
            except OUTAGE_ERRORS as err:
                return _failed(tool, f"lost PostgreSQL: {type(err).__name__}")
            finally:
                await conn.close()
    except EmbeddedPostgresError as err:
        return _failed(tool, str(err))


def _failed(tool: str, message: str) -> int:
    print(f"hj212gw {tool}: {message}", file=sys.stderr)
    return 1
