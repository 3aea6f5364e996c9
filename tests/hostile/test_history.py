"""Resends keep history (issue 9, item 8): the stored value follows a precedence decided by data in
the rows (valid flag, then arrival time), never by commit order; every superseded value set is kept
in `data_versions`, counted in `revisions` and listed by GET /api/v1/data/versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from hj212gw.api import build_app
from hj212gw.server.live import LiveDevice
from hj212gw.storage.batch import DirectInsertGuard
from hj212gw.storage.db import Database
from hj212gw.storage.rows import DataRow, FrameRow

pytestmark = pytest.mark.integration

MN = "010000A8900016F000169DC0"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
ARRIVED = datetime(2024, 5, 1, 8, 0, 5, tzinfo=UTC)
A, B = 221.308701, 224.918015  # the replayed day's key: four times A, then once B


def arrival(n: int, value: float, *, flag: str = "N", factor: str = "w01018") -> DataRow:
    """The n-th arrival (n seconds after the first) of the key (MN, 2051, T0, factor)."""
    received = ARRIVED + timedelta(seconds=n)
    return DataRow(
        mn=MN, cn="2051", data_time=T0, factor=factor, received_at=received,
        qn=f"20240501080005{n:03d}", avg=value, flag=flag, resend=n > 0,
    )  # fmt: skip


def frame(r: DataRow, connection_id: int) -> FrameRow:
    return FrameRow(
        received_at=r.received_at, raw=f"##frame {r.qn}".encode(), connection_id=connection_id,
        peer=f"10.0.0.{connection_id}:4000", mn=r.mn, cn=r.cn, qn=r.qn,
    )  # fmt: skip


async def current(conn: asyncpg.Connection) -> asyncpg.Record:
    (row,) = await conn.fetch("SELECT * FROM data")
    return row


async def versions(conn: asyncpg.Connection) -> list[tuple[float, str | None, str]]:
    rows = await conn.fetch("SELECT avg, flag, outcome FROM data_versions ORDER BY id")
    return [(r["avg"], r["flag"], r["outcome"]) for r in rows]


async def second_writer(pg_dsn: str, schema: str) -> Database:
    other = Database(pg_dsn, schema=schema, min_size=1, max_size=2, migrate_on_connect=False)
    await other.connect()
    return other


@pytest.mark.parametrize("first", ["x", "y"], ids=["arrival_order", "reverse_commit_order"])
async def test_replayed_key_keeps_the_last_arrival_whichever_writer_commits_last(
    db: Database, conn: asyncpg.Connection, pg_dsn: str, schema: str, first: str
) -> None:
    # The real day's replay: the key came four times as A, then once as B. Writer x holds the first
    # two A, writer y the other two and B; they commit in either order (before: the last commit won).
    other = await second_writer(pg_dsn, schema)
    try:
        x = [arrival(0, A), arrival(1, A)]
        y = [arrival(2, A), arrival(3, A), arrival(4, B)]
        order = [(db, x), (other, y)] if first == "x" else [(other, y), (db, x)]
        for writer, rows in order:
            await writer.save_batch(rows)
    finally:
        await other.close()
    got = await current(conn)
    assert (got["avg"], got["received_at"], got["revisions"]) == (B, ARRIVED + timedelta(seconds=4), 1)
    assert got["first_received_at"] in (ARRIVED, ARRIVED + timedelta(seconds=2))
    assert [(v[0], v[1]) for v in await versions(conn)] == [(A, "N")]  # A kept once, as a version


async def test_two_writers_at_once_decide_by_arrival_not_by_commit(
    db: Database, conn: asyncpg.Connection, pg_dsn: str, schema: str
) -> None:
    other = await second_writer(pg_dsn, schema)
    try:
        for attempt in range(4):
            factor = f"w0101{attempt}"
            late = [arrival(n, A, factor=factor) for n in range(4)] + [arrival(4, B, factor=factor)]
            early, last = late[:2], late[2:]
            pairs = (early, last) if attempt % 2 else (last, early)
            db.direct_guard = DirectInsertGuard()  # both try the direct COPY first
            await asyncio.gather(db.save_batch(pairs[0]), other.save_batch(pairs[1]))
    finally:
        await other.close()
    rows = await conn.fetch("SELECT avg, revisions FROM data ORDER BY factor")
    assert [(r["avg"], r["revisions"]) for r in rows] == [(B, 1)] * 4
    assert await conn.fetchval("SELECT count(*) FROM data_versions WHERE avg = $1", A) == 4


async def test_a_valid_flag_beats_a_fault_and_equal_flags_go_to_the_later_arrival(
    db: Database, conn: asyncpg.Connection
) -> None:
    await db.save_batch([arrival(0, 10.0)])
    await db.save_batch([arrival(1, 0.0, flag="D")])  # later, but a fault: refused, kept
    got = await current(conn)
    assert (got["avg"], got["flag"], got["revisions"]) == (10.0, "N", 1)
    await db.save_batch([arrival(2, 11.0)])  # later and as valid: replaces
    await db.save_batch([arrival(3, 0.0, flag="M")])
    got = await current(conn)
    assert (got["avg"], got["flag"], got["revisions"]) == (11.0, "N", 3)
    assert await versions(conn) == [(0.0, "D", "refused"), (10.0, "N", "replaced"), (0.0, "M", "refused")]


async def test_a_valid_value_replaces_a_fault_even_if_it_arrived_earlier(
    db: Database, conn: asyncpg.Connection
) -> None:
    await db.save_batch([arrival(5, 0.0, flag="D")])
    await db.save_batch([arrival(1, 10.0)])  # a late backfill of the valid value
    got = await current(conn)
    assert (got["avg"], got["flag"], got["revisions"]) == (10.0, "N", 1)
    assert await versions(conn) == [(0.0, "D", "replaced")]


async def test_an_older_arrival_never_replaces_a_newer_one(db: Database, conn: asyncpg.Connection) -> None:
    await db.save_batch([arrival(5, 2.0)])
    assert await db.save_batch([arrival(1, 1.0)]) == 0
    got = await current(conn)
    assert (got["avg"], got["received_at"], got["revisions"]) == (2.0, ARRIVED + timedelta(seconds=5), 1)
    assert await versions(conn) == [(1.0, "N", "refused")]


async def test_identical_resends_change_nothing_and_repeated_losers_are_kept_once(
    db: Database, conn: asyncpg.Connection
) -> None:
    await db.save_batch([arrival(0, 10.0), arrival(1, 0.0, flag="D")])
    before = await conn.fetch("SELECT * FROM data")
    kept = await conn.fetch("SELECT * FROM data_versions")
    for n in range(2, 6):  # the same two value sets again, one batch each and all in one batch
        assert await db.save_batch([arrival(n, 10.0), arrival(n, 0.0, flag="D")]) == 0
    assert await db.save_batch([arrival(n, 10.0) for n in range(6, 9)]) == 0
    assert await conn.fetch("SELECT * FROM data") == before
    assert await conn.fetch("SELECT * FROM data_versions") == kept


async def test_every_change_is_counted_even_within_one_batch(db: Database, conn: asyncpg.Connection) -> None:
    await db.save_batch([arrival(n, float(n)) for n in range(5)])  # a new key, five value sets
    got = await current(conn)
    assert (got["avg"], got["revisions"]) == (4.0, 4)
    await db.save_batch([arrival(6, 6.0), arrival(7, 7.0)])
    got = await current(conn)
    assert (got["avg"], got["revisions"]) == (7.0, 6)
    assert await conn.fetchval("SELECT count(*) FROM data_versions") == 6


class _NoLive:
    def online(self) -> dict[str, LiveDevice]:
        return {}


@pytest.fixture
async def client(db: Database) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(db=db, live=_NoLive(), metrics_registry=CollectorRegistry(), ready=lambda: True)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def get(client: TestClient[Any, Any], path: str, **params: str) -> Any:
    resp = await client.get(path, params=params)
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def test_versions_are_listed_with_arrival_connection_and_raw_frame(
    db: Database, conn: asyncpg.Connection, client: TestClient[Any, Any]
) -> None:
    sent: Sequence[tuple[DataRow, int]] = [(arrival(0, A), 7), (arrival(1, 0.0, flag="D"), 8), (arrival(4, B), 9)]
    for r, connection_id in sent:
        await db.save_batch([r], [frame(r, connection_id)])
    params = {"mn": MN, "cn": "2051", "start": "2024-05-01T08:00:00Z", "end": "2024-05-01T09:00:00Z"}
    body = await get(client, "/api/v1/data/versions", **params)
    rows = body["rows"]
    assert [(v["avg"], v["flag"], v["outcome"]) for v in rows] == [(0.0, "D", "refused"), (A, "N", "replaced")]
    frames = {r["qn"]: r for r in await conn.fetch("SELECT id, qn, connection_id FROM raw_frames")}
    for version, (r, connection_id) in zip(rows, [sent[1], sent[0]], strict=True):
        assert version["received_at"] == r.received_at.isoformat().replace("+00:00", "Z")
        assert version["qn"] == r.qn and version["connection_id"] == connection_id
        assert version["raw_frame_id"] == frames[r.qn]["id"] and version["peer"] == f"10.0.0.{connection_id}:4000"
    (now,) = (await get(client, "/api/v1/data", **params))["rows"]
    assert (now["avg"], now["revisions"]) == (B, 2)
    # paged one at a time, every version exactly once
    page = await get(client, "/api/v1/data/versions", **params, limit="1")
    second = await get(client, "/api/v1/data/versions", **params, limit="1", cursor=page["next_cursor"])
    assert [page["rows"][0]["version_id"], second["rows"][0]["version_id"]] == [v["version_id"] for v in rows]
    assert second["next_cursor"] is None
    resp = await client.get("/api/v1/data/versions", params={**params, "cursor": "bm90IGEgY3Vyc29y"})
    assert resp.status == 400 and (await resp.json())["error"] == "bad_cursor"
