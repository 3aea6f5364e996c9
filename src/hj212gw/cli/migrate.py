"""`hj212gw migrate`: apply the database migrations and exit (serve applies them at every start too)."""

import argparse
import asyncio
import sys
from collections.abc import Callable

from hj212gw.cli.database import resolve_database_url
from hj212gw.settings import Settings
from hj212gw.storage.embedded import EmbeddedInUse, EmbeddedPostgresError, stop_embedded
from hj212gw.storage.migrate import migrate_dsn


def add_parser(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    settings_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    settings_flags(commands.add_parser("migrate", help="apply database migrations and exit"))


async def run(settings: Settings) -> int:
    """Migrate and exit; an embedded server in use by a running gateway is refused, not stopped."""
    try:
        dsn, embedded = await resolve_database_url(settings)
    except EmbeddedPostgresError as err:
        hint = (
            "; stop it first (serve applies migrations itself at every start)" if isinstance(err, EmbeddedInUse) else ""
        )
        print(f"hj212gw: {err}{hint}", file=sys.stderr)
        return 1
    try:
        applied = await migrate_dsn(dsn, settings.database_schema)
    finally:
        if embedded is not None:
            await asyncio.to_thread(stop_embedded, embedded.data_dir)
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0
