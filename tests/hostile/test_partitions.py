"""Partitions only where data belongs (issue 9, item 5): a DataTime outside the tolerance window is
stored, acked and shown as time_suspect without creating a month partition; months are created ahead
by housekeeping and attached without locking writers out; the DEFAULT partition's rows move along."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest

from hj212gw.api import bound_port
from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from hj212gw.storage.batch import PartitionCache
from hj212gw.storage.db import Database
from hj212gw.storage.rows import DataRow
from tests.integration.das import MN, DasClient, data_packet, settings_for
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
SUSPECT_TIMES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(2, 1, 1, tzinfo=UTC),
    datetime(2016, 2, 29, 23, 59, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 0, tzinfo=UTC),
]


def suspect(at: datetime, **changes: object) -> DataRow:
    base = DataRow(
        mn=MN, cn="2051", data_time=at, factor="w01018", received_at=NOW, qn="20240501080005123",
        avg=12.3, flag="N", time_suspect=True,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent IN ('data'::regclass, 'raw_frames'::regclass)"
    )
    return {r["relname"] for r in rows}


@pytest.mark.parametrize("at", SUSPECT_TIMES, ids=lambda at: f"{at:%Y}")
async def test_a_suspect_data_time_is_stored_in_the_default_partition_and_creates_none(
    db: Database, conn: asyncpg.Connection, at: datetime
) -> None:
    before = await partitions(conn)
    assert await db.save_batch([suspect(at)]) == 1
    assert await partitions(conn) == before
    got = await conn.fetchrow("SELECT tableoid::regclass::text AS part, * FROM data")
    assert (got["part"], got["data_time"], got["time_suspect"]) == ("data_default", at, True)
    # Resends of it are merged like any other: same key, same row.
    assert await db.save_batch([suspect(at, received_at=NOW + timedelta(seconds=1))]) == 0
    assert await db.save_batch([suspect(at, avg=13.0, received_at=NOW + timedelta(seconds=2))]) == 1
    rows = await conn.fetch("SELECT avg, revisions FROM data")
    assert [(r["avg"], r["revisions"]) for r in rows] == [(13.0, 1)]
    assert await partitions(conn) == before


async def test_a_month_created_later_takes_over_its_rows_from_the_default_partition(
    db: Database, conn: asyncpg.Connection
) -> None:
    at = datetime(2099, 3, 10, tzinfo=UTC)
    await db.save_batch([suspect(at), suspect(at + timedelta(days=30))])
    async with db.pool.acquire() as pooled:
        await db.partitions.ensure(pooled, {("data", (2099, 3))})
    placed = await conn.fetch("SELECT tableoid::regclass::text AS part, data_time FROM data ORDER BY data_time")
    assert [(r["part"], r["data_time"]) for r in placed] == [
        ("data_p2099_03", at),
        ("data_default", at + timedelta(days=30)),
    ]
    await db.save_batch([suspect(at, avg=1.0, received_at=NOW + timedelta(seconds=1))])
    assert await conn.fetchval("SELECT count(*) FROM data") == 2
    assert await conn.fetchval("SELECT avg FROM data_p2099_03") == 1.0


async def test_creating_a_month_does_not_wait_for_writers_of_other_months(
    db: Database, conn: asyncpg.Connection
) -> None:
    # A writer's open transaction in this month's partition; the next year's month is created
    # meanwhile. CREATE TABLE ... PARTITION OF needed ACCESS EXCLUSIVE on `data` and waited.
    writer = conn.transaction()
    await writer.start()
    await conn.execute(
        "INSERT INTO data (mn, cn, data_time, factor, received_at, first_received_at)"
        " VALUES ('x', '2051', $1, 'w01018', $1, $1)",
        NOW,
    )
    try:
        async with db.pool.acquire() as pooled:
            await pooled.execute("SET lock_timeout = '2s'")
            try:
                await pooled.fetchval("SELECT ensure_month_partition('data', $1)", NOW + timedelta(days=400))
            finally:
                await pooled.execute("RESET lock_timeout")
    finally:
        await writer.rollback()


async def test_a_suspect_row_written_while_its_month_is_attached_moves_with_it(
    db: Database, conn: asyncpg.Connection
) -> None:
    at = datetime(2099, 5, 10, tzinfo=UTC)
    writer = conn.transaction()
    await writer.start()
    await conn.execute(
        "INSERT INTO data (mn, cn, data_time, factor, received_at, first_received_at, time_suspect)"
        " VALUES ('x', '2051', $1, 'w01018', $1, $1, true)",
        at,
    )

    async def attach() -> None:
        async with db.pool.acquire() as pooled:
            await db.partitions.ensure(pooled, {("data", (2099, 5))})

    attaching = asyncio.create_task(attach())
    await asyncio.sleep(0.3)
    assert not attaching.done()  # waits for the writer instead of failing after it
    await writer.commit()
    await attaching
    assert await conn.fetchval("SELECT tableoid::regclass::text FROM data") == "data_p2099_05"


@pytest.fixture
async def running(pg_dsn: str, schema: str) -> AsyncIterator[Running]:
    started = await serve.start(settings_for(pg_dsn, schema))
    yield started
    await started.stop()


async def test_far_future_and_year_two_data_times_are_acked_shown_and_create_no_partition(
    running: Running, conn: asyncpg.Connection
) -> None:
    before = await partitions(conn)
    assert running.gateway.port is not None
    das = await DasClient.connect(running.gateway.port)
    for qn, data_time in (("20240315101000001", "99991231230000"), ("20240315101000002", "00020101000000")):
        await das.send(data_packet(qn, data_time=data_time))
        assert (await das.reply()).packet.cn == "9014"
    await das.send(data_packet("20240315101000003", data_time="99991231230000", values={"w01018": "41.5"}))
    assert (await das.reply()).packet.cn == "9014"  # a resend of the far-future key: merged, acked
    await das.close()
    assert await partitions(conn) == before
    assert running.gateway.metrics.registry.get_sample_value("hj212gw_data_time_suspect_total") == 3
    params = {
        "mn": MN, "cn": "2051", "start": "0001-01-01T00:00:00Z", "end": "9999-12-31T23:59:59Z",
        "time_suspect": "true",
    }  # fmt: skip
    url = f"http://127.0.0.1:{bound_port(running.http_runner)}/api/v1/data"
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    shown = [(r["data_time"], r["avg"], r["time_suspect"], r["revisions"]) for r in body["rows"]]
    # Year 2 in Asia/Shanghai is local mean time, +08:05:43.
    assert shown == [("0001-12-31T15:54:17Z", 40.1, True, 0), ("9999-12-31T15:00:00Z", 41.5, True, 1)]
    async with aiohttp.ClientSession() as http, http.get(url, params={**params, "time_suspect": "false"}) as resp:
        assert (await resp.json())["rows"] == []
    async with aiohttp.ClientSession() as http, http.get(url, params={**params, "time_suspect": "yes"}) as resp:
        assert resp.status == 400


async def test_housekeeping_creates_the_months_ahead(running: Running, conn: asyncpg.Connection) -> None:
    # As if the process had been running when a new month began: the month two ahead is missing.
    ahead = (NOW.replace(day=1) + timedelta(days=62)).replace(day=1)
    name = f"data_p{ahead:%Y_%m}"
    await conn.execute(f"DROP TABLE {name}")
    running.db.partitions = PartitionCache()  # this process had known it

    async def recreated() -> bool:
        return name in await partitions(conn)

    await eventually(recreated)
