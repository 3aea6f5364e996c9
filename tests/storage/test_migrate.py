"""Migrations: apply once, idempotent, safe under concurrency, refuse edited files."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from hj212gw.storage.migrate import ChecksumMismatch, load_migrations, migrate

pytestmark = pytest.mark.integration


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def test_migrations_apply_once_and_rerun_is_a_no_op(pg_dsn: str, schema: str) -> None:
    conn = await _connect(pg_dsn)
    try:
        versions = [m.version for m in load_migrations()]
        assert await migrate(conn, schema) == versions
        assert await migrate(conn, schema) == []
        rows = await conn.fetch(f'SELECT version, checksum FROM "{schema}".schema_migrations ORDER BY 1')
        assert [r["version"] for r in rows] == versions
        tables = {r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')", schema)}  # fmt: skip
        assert {"devices", "connections", "raw_frames", "data", "schema_migrations"} <= tables
    finally:
        await conn.close()


async def test_concurrent_migrate_from_several_connections_applies_each_file_once(pg_dsn: str, schema: str) -> None:
    conns = [await _connect(pg_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, schema) for c in conns))
        applied = sorted(v for result in results for v in result)
        assert applied == [m.version for m in load_migrations()]
        count = await conns[0].fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations')
        assert count == len(applied)
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_applied_migration_is_refused(pg_dsn: str, schema: str) -> None:
    conn = await _connect(pg_dsn)
    try:
        await migrate(conn, schema)
        edited = [dataclasses.replace(m, sql=m.sql + "\n-- edited", checksum="0" * 64) for m in load_migrations()]
        with pytest.raises(ChecksumMismatch) as info:
            await migrate(conn, schema, edited)
        assert info.value.version == 1
        # the lock was released despite the error: a later run still works
        assert await migrate(conn, schema) == []
    finally:
        await conn.close()
