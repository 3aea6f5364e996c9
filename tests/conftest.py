"""Fixtures for every test that needs services: one PostgreSQL per session, a fresh schema per test.

`HJ212GW_TEST_DATABASE_URL` names a server to use (CI sets it to the local service); unset, an
embedded PostgreSQL is started once per session in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from hj212gw.storage.db import Database
from hj212gw.storage.embedded import start_embedded, stop_embedded
from tests.integration.das import DasClient, settings_for
from tests.integration.proxy import TcpProxy


@contextlib.contextmanager
def reachable_tmp_dir() -> Iterator[Path]:
    """A fresh folder under the system temp dir that every user may traverse (mode 0711).

    pytest's own tmp_path lies below a 0700 folder; as root, the embedded PostgreSQL runs as
    another user and must reach its data directory (hj212gw never changes folders above it).
    """
    base = Path(tempfile.mkdtemp(prefix="hj212gw-test-"))
    base.chmod(0o711)  # our own new folder
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def embedded_base() -> Iterator[Path]:
    """A folder for embedded PostgreSQL data directories (see reachable_tmp_dir)."""
    with reachable_tmp_dir() as base:
        yield base


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of the session's PostgreSQL server."""
    url = os.environ.get("HJ212GW_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with reachable_tmp_dir() as base:
        data_dir = base / "data"
        server = start_embedded(data_dir)
        try:
            yield server.dsn
        finally:
            stop_embedded(data_dir)


@pytest.fixture
async def schema(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty schema name for this test; dropped with everything in it afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def db(pg_dsn: str, schema: str) -> AsyncIterator[Database]:
    """A connected, migrated Database on the test's schema."""
    database = Database(pg_dsn, schema=schema, min_size=1, max_size=4)
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def conn(pg_dsn: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A separate plain connection to the test's schema, to look at what others committed."""
    connection = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of PostgreSQL that a test can cut and restore (outages)."""
    server = TcpProxy.for_dsn(pg_dsn)
    await server.start()
    yield server
    await server.stop()


StartGateway = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_gateway(pg_dsn: str, schema: str) -> AsyncIterator[StartGateway]:
    """Start gateways on port 0 against the test's schema; whatever is still running is stopped after."""
    started: list[Running] = []

    async def start(**overrides: Any) -> Running:
        running = await serve.start(settings_for(pg_dsn, schema, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        if running.gateway.server is not None and not running.gateway._stopping:
            await running.stop()


Dial = Callable[[Running], Awaitable[DasClient]]


@pytest.fixture
async def dial(start_gateway: StartGateway) -> AsyncIterator[Dial]:
    """Open DAS connections to a gateway; all are closed before the gateways stop."""
    clients: list[DasClient] = []

    async def connect(running: Running) -> DasClient:
        assert running.gateway.port is not None
        client = await DasClient.connect(running.gateway.port)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


@pytest.fixture
async def gateways(pg_dsn: str, schema: str) -> AsyncIterator[list[Running]]:
    """Gateways a test starts on its schema (replicas, with tests.integration.serving.start); stopped after it."""
    started: list[Running] = []
    yield started
    for running in started:
        await running.stop()
