"""Embedded PostgreSQL: starts in a fresh data dir (as root too), migrates, stops, restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from hj212gw.storage.embedded import SERVER_SETTINGS, start_embedded, stop_embedded
from hj212gw.storage.migrate import load_migrations, migrate_dsn

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_embedded_server_starts_migrates_stops_and_restarts(embedded_base: Path) -> None:
    data_dir = embedded_base / "pg"
    server = await asyncio.to_thread(start_embedded, data_dir, port=5439)
    try:
        assert await migrate_dsn(server.dsn, "hj212gw") == [m.version for m in load_migrations()]
        conn = await asyncpg.connect(server.dsn)
        try:
            for name, value in SERVER_SETTINGS.items():  # the write-path settings are in force
                assert await conn.fetchval(f"SHOW {name}") == value
        finally:
            await conn.close()
        await asyncio.to_thread(stop_embedded, data_dir)
        with pytest.raises(OSError):
            await asyncpg.connect(server.dsn, timeout=5)
        # A setting given at start goes over SERVER_SETTINGS for that start; the others stay.
        again = await asyncio.to_thread(start_embedded, data_dir, port=5439, settings={"work_mem": "8MB"})
        assert again.dsn == server.dsn
        assert await migrate_dsn(again.dsn, "hj212gw") == []
        conn = await asyncpg.connect(again.dsn)
        try:
            assert await conn.fetchval("SHOW work_mem") == "8MB"
            assert await conn.fetchval("SHOW wal_init_zero") == SERVER_SETTINGS["wal_init_zero"] == "off"
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(stop_embedded, data_dir)
    assert not (data_dir / "postmaster.pid").exists()
