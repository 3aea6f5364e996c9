"""Our own small migration runner: numbered SQL files in storage/migrations, applied in order.

Owns the `schema_migrations` table and the migration advisory lock. Each file runs in its own
transaction with `search_path` set to the gateway's schema (created if missing). An applied file
whose text changed is refused with `ChecksumMismatch`; replicas starting together serialise on
`pg_advisory_lock(MIGRATION_LOCK_KEY)`. Imports asyncpg only; no settings, no logging setup.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# "hj212mig" as a big-endian int64: fixed so every replica and the CLI use the same lock.
MIGRATION_LOCK_KEY = int.from_bytes(b"hj212mig", "big")
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(Exception):
    """The database schema cannot be brought to the version this code expects."""


class ChecksumMismatch(MigrationError):
    """An already applied migration file was edited afterwards."""

    def __init__(self, *, version: int, name: str, applied: str, current: str) -> None:
        super().__init__(
            f"migration {version:04d}_{name} was applied with checksum {applied[:12]}, "
            f"the file now has {current[:12]}; add a new migration instead of editing it"
        )
        self.version = version
        self.applied = applied
        self.current = current


class BadSchemaName(MigrationError):
    """The configured schema name is not a plain lowercase SQL identifier."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str
    checksum: str


def check_schema_name(schema: str) -> str:
    """Return `schema` if it is a plain lowercase identifier, else raise BadSchemaName."""
    if not _SCHEMA_NAME.match(schema):
        raise BadSchemaName(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
    return schema


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read `NNNN_name.sql` files in version order; checksum is sha256 of the file bytes."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_name.sql")
        data = path.read_bytes()
        found.append(Migration(int(match[1]), match[2], data.decode("utf-8"), hashlib.sha256(data).hexdigest()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


async def migrate(conn: asyncpg.Connection, schema: str, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations to `schema` over `conn`; return the versions applied now.

    Raises:
        ChecksumMismatch: an applied file changed.
        BadSchemaName: `schema` is not a plain identifier.
    """
    check_schema_name(schema)
    todo = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await _prepare(conn, schema)
        applied = await _applied_checksums(conn)
        _verify(todo, applied)
        done: list[int] = []
        for migration in todo:
            if migration.version not in applied:
                await _apply(conn, migration)
                done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def migrate_dsn(dsn: str, schema: str) -> list[int]:
    """Open one connection to `dsn`, migrate `schema`, close it."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, schema)
    finally:
        await conn.close()


async def _prepare(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute("SELECT set_config('search_path', $1, false)", f'"{schema}"')
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    integer PRIMARY KEY,
               name       text NOT NULL,
               checksum   text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )


async def _applied_checksums(conn: asyncpg.Connection) -> dict[int, tuple[str, str]]:
    records = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {r["version"]: (r["name"], r["checksum"]) for r in records}


def _verify(todo: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    by_version = {m.version: m for m in todo}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(f"database has migration {version:04d}_{name}, unknown to this code")
        if migration.checksum != checksum:
            raise ChecksumMismatch(version=version, name=name, applied=checksum, current=migration.checksum)


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    async with conn.transaction():
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.checksum,
        )
