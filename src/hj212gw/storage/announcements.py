"""The channel on which gateway replicas announce the MNs they bind (PostgreSQL LISTEN/NOTIFY).

One channel per schema, so replicas of one installation hear each other and nothing else. The
payload is the caller's (JSON text); PostgreSQL caps one at about 8,000 bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

NOTIFY_SQL = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"

Listener = Callable[[asyncpg.Connection, int, str, str], None]


def channel_of(schema: str) -> str:
    return f"hj212gw_mn_bound:{schema}"


async def announce(conn: asyncpg.Connection, channel: str, payloads: Sequence[str]) -> None:
    """Send every payload on `channel`, in one statement."""
    await conn.execute(NOTIFY_SQL, channel, list(payloads))


async def listen(dsn: str, channel: str, callback: Listener, *, timeout_s: float, schema: str) -> asyncpg.Connection:
    """A dedicated connection that calls `callback(conn, pid, channel, payload)` for each
    announcement; the caller closes it (and opens a new one when it was lost)."""
    conn = await asyncpg.connect(dsn, timeout=timeout_s, server_settings={"search_path": f'"{schema}"'})
    try:
        await conn.add_listener(channel, callback)
    except BaseException:
        await conn.close()
        raise
    return conn
