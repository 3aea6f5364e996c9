"""Database: batched upserts, resend semantics, partitions on demand, paging, devices, connections."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from hj212gw.storage.announcements import channel_of
from hj212gw.storage.batch import DirectInsertGuard
from hj212gw.storage.connections import ConnectionClosed, ConnectionOpened
from hj212gw.storage.db import SESSION_SETTINGS, Database
from hj212gw.storage.queries import BadCursor
from hj212gw.storage.rows import DataRow, DeviceSeen, FrameRow

pytestmark = pytest.mark.integration

MN = "010000A8900016F000169DC0"
RECEIVED = datetime(2024, 5, 1, 8, 0, 5, tzinfo=UTC)
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def row(factor: str = "w01018", at: datetime = T0, **changes: object) -> DataRow:
    base = DataRow(
        mn=MN, cn="2051", data_time=at, factor=factor,
        received_at=RECEIVED, qn="20240501080005123", avg=12.3, min=11.0, max=13.5, flag="N",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def stored(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM data ORDER BY mn, cn, data_time, factor")


async def test_save_batch_stores_every_field_and_flag(db: Database, conn: asyncpg.Connection) -> None:
    full = row(
        factor="011", factor_2017="w01018", rtd=1.0, cou=2.5, zs_rtd=3.0, zs_min=4.0, zs_avg=5.0, zs_max=6.0,
        flag="M", eflag="E1", sample_time=T0 - timedelta(minutes=3), extra={"Info": "abc", "SampleRd": "x"},
        resend=True, time_suspect=True,
    )  # fmt: skip
    frame = FrameRow(received_at=RECEIVED, raw=b"##0101QN=...\r\n", connection_id=7, peer="10.0.0.1:4000",
                     mn=MN, cn="2051", qn=full.qn, verdict="ok",
                     tolerances=("lowercase_crc", "missing_crlf"))  # fmt: skip
    seen = DeviceSeen(mn=MN, protocol_version=2017, st="32", peer="10.0.0.1:4000", seen_at=RECEIVED)
    assert await db.save_batch([full], [frame]) == 1
    await db.save_sightings([seen])

    (got,) = await stored(conn)
    names = ("factor", "factor_2017", "rtd", "cou", "zs_rtd", "zs_min", "zs_avg", "zs_max", "flag", "eflag",
             "sample_time", "qn", "received_at", "resend", "time_suspect", "avg", "min", "max")  # fmt: skip
    for name in names:
        assert got[name] == getattr(full, name), name
    assert got["extra"] == '{"Info": "abc", "SampleRd": "x"}'
    assert got["first_received_at"] == RECEIVED and got["revisions"] == 0
    (raw,) = await conn.fetch("SELECT * FROM raw_frames")
    assert (
        raw["raw"] == frame.raw and raw["tolerances"] == ["lowercase_crc", "missing_crlf"] and raw["connection_id"] == 7
    )
    device = await db.fetch_device(MN)
    assert device is not None and device["protocol_version"] == 2017 and device["last_seen"] == RECEIVED
    assert "pw" not in device


async def test_identical_resend_changes_nothing(db: Database, conn: asyncpg.Connection) -> None:
    await db.save_batch([row(), row(factor="a34004")])
    before = await stored(conn)
    later = RECEIVED + timedelta(hours=1)
    assert await db.save_batch([row(received_at=later, resend=True)]) == 0
    assert await stored(conn) == before


async def test_changed_resend_replaces_values_and_counts_a_revision(db: Database, conn: asyncpg.Connection) -> None:
    await db.save_batch([row()])
    later = RECEIVED + timedelta(hours=1)
    fixed = row(avg=99.0, received_at=later, resend=True)
    assert await db.save_batch([fixed]) == 1
    assert await db.save_batch([dataclasses.replace(fixed, avg=98.0, received_at=later + timedelta(seconds=1))]) == 1
    (got,) = await stored(conn)
    assert (got["avg"], got["revisions"], got["resend"]) == (98.0, 2, True)
    assert got["first_received_at"] == RECEIVED and got["received_at"] == later + timedelta(seconds=1)
    kept = await conn.fetch("SELECT avg, outcome FROM data_versions ORDER BY id")
    assert [(v["avg"], v["outcome"]) for v in kept] == [(12.3, "replaced"), (99.0, "replaced")]


async def test_same_key_twice_in_one_batch_keeps_the_last(db: Database, conn: asyncpg.Connection) -> None:
    await db.save_batch([row(), row(avg=1.0)])
    (got,) = await stored(conn)
    assert got["avg"] == 1.0


async def test_a_batch_of_copies_is_atomic_when_postgresql_refuses_its_last_copy(
    db: Database, conn: asyncpg.Connection
) -> None:
    """The common batch is one transaction in two round trips (`BEGIN; COPY data`, then
    `COPY raw_frames; COMMIT`): a raw frame PostgreSQL refuses (an MN too long for its index) takes
    the batch's data with it, the COMMIT after it never runs, and the pool's connection comes back
    out of any transaction, so the next batch commits."""
    too_long = random.Random(7).randbytes(3000).hex()  # incompressible: over a btree entry's limit
    refused = FrameRow(received_at=RECEIVED, raw=b"##refused", mn=too_long, cn="2051", verdict="ok")
    with pytest.raises(asyncpg.ProgramLimitExceededError):
        await db.save_batch([row()], [refused])
    assert await stored(conn) == [] and await conn.fetchval("SELECT count(*) FROM raw_frames") == 0
    async with db.pool.acquire() as pooled:
        assert not pooled.is_in_transaction()
    frame = FrameRow(received_at=RECEIVED, raw=b"##fine", mn=MN, cn="2051", verdict="ok")
    assert await db.save_batch([row(), row(factor="a34004")], [frame]) == 2
    assert len(await stored(conn)) == 2 and await conn.fetchval("SELECT count(*) FROM raw_frames") == 1


async def test_a_batch_of_one_copy_commits_without_a_transaction_block(db: Database, conn: asyncpg.Connection) -> None:
    """Raw frames alone (rejected frames: a flood of junk) or data alone is one COPY, a transaction
    of its own; a refused one leaves nothing behind either."""
    frames = [FrameRow(received_at=RECEIVED, raw=b"##junk%d" % n, verdict="crc_mismatch") for n in range(3)]
    assert await db.save_batch([], frames) == 0
    assert await db.save_batch([row()]) == 1
    with pytest.raises(asyncpg.ProgramLimitExceededError):
        await db.save_batch([row(factor=random.Random(8).randbytes(3000).hex())])
    assert await conn.fetchval("SELECT count(*) FROM raw_frames") == 3 and len(await stored(conn)) == 1
    async with db.pool.acquire() as pooled:
        assert not pooled.is_in_transaction()


async def test_new_keys_go_straight_in_and_a_plain_duplicate_falls_back_to_the_upsert(
    db: Database, conn: asyncpg.Connection
) -> None:
    assert await db.save_batch([row(), row(factor="a34004")]) == 2  # the direct COPY
    assert db.direct_guard.cooling == 0
    before = await stored(conn)
    # A DAS that got no ack sends the same packet again without RF: the direct COPY meets the key,
    # its transaction is rolled back, and the batch written again with the upsert, which leaves the
    # identical row untouched and stores the batch's frame once.
    frame = FrameRow(received_at=RECEIVED, raw=b"##again")
    assert await db.save_batch([row(received_at=RECEIVED + timedelta(minutes=1))], [frame]) == 0
    assert await stored(conn) == before
    assert await conn.fetchval("SELECT count(*) FROM raw_frames") == 1  # the rest of the batch committed
    assert db.direct_guard.cooling == DirectInsertGuard.COOL_DOWN
    # While cooling, batches take the upsert at once; afterwards the direct COPY is tried again.
    for n in range(DirectInsertGuard.COOL_DOWN):
        assert await db.save_batch([row(at=T0 + timedelta(minutes=n + 1))]) == 1
    assert db.direct_guard.cooling == 0
    assert await db.save_batch([row(at=T0 + timedelta(hours=1))]) == 1
    assert db.direct_guard.cooling == 0
    assert await db.save_batch([row(at=T0 + timedelta(hours=2), resend=True)]) == 1  # resends: upsert
    assert await conn.fetchval("SELECT count(*) FROM data") == 2 + DirectInsertGuard.COOL_DOWN + 2
    guard = db.direct_guard
    assert (guard.copied, guard.conflicted_batches, guard.upserted) == (2, 1, DirectInsertGuard.COOL_DOWN + 1)


async def test_concurrent_batches_with_the_same_new_keys_store_each_key_once(
    db: Database, conn: asyncpg.Connection
) -> None:
    # Two writers COPY overlapping new keys in opposite orders: one waits for the other, then meets
    # the keys (unique violation) or a deadlock; either way its transaction is rolled back and its
    # batch written again with the upsert. No error reaches the caller and every key is stored once.
    keys = [row(at=T0 + timedelta(minutes=m), factor=f) for m in range(50) for f in ("w01018", "a34004")]
    for attempt in range(3):
        db.direct_guard = DirectInsertGuard()  # both try the direct COPY
        shifted = [dataclasses.replace(r, data_time=r.data_time + timedelta(days=attempt)) for r in keys]
        results = await asyncio.gather(db.save_batch(shifted), db.save_batch(shifted[::-1]))
        assert sorted(results) == [0, len(shifted)]  # one inserted them all, the other changed nothing
        assert db.direct_guard.cooling == DirectInsertGuard.COOL_DOWN  # the other one fell back
    assert await conn.fetchval("SELECT count(*) FROM data") == 3 * len(keys)
    assert await conn.fetchval("SELECT max(revisions) FROM data") == 0


@pytest.mark.parametrize(
    "at", [datetime(2016, 2, 29, 23, 59, tzinfo=UTC), datetime(2099, 12, 31, 23, 0, tzinfo=UTC)], ids=str
)
async def test_rows_inside_the_tolerance_window_get_their_month_whatever_its_year(
    db: Database, conn: asyncpg.Connection, at: datetime
) -> None:
    await db.save_batch([row(at=at)], [FrameRow(received_at=at, raw=b"x")])
    data_part = await conn.fetchval("SELECT tableoid::regclass::text FROM data")
    frame_part = await conn.fetchval("SELECT tableoid::regclass::text FROM raw_frames")
    assert data_part == f"data_p{at:%Y_%m}" and frame_part == f"raw_frames_p{at:%Y_%m}"
    assert await conn.fetchval("SELECT count(*) FROM data_default") == 0


async def test_partitions_for_this_and_the_next_two_months_exist_after_connect(
    db: Database, conn: asyncpg.Connection
) -> None:
    names = {r[0] for r in await conn.fetch("SELECT relname FROM pg_class WHERE relname LIKE 'data_p%'")}
    now = datetime.now(UTC)
    assert f"data_p{now:%Y_%m}" in names
    assert len([n for n in names if n >= f"data_p{now:%Y_%m}"]) >= 3


async def test_fetch_data_pages_return_every_row_exactly_once(db: Database) -> None:
    factors = ["a01012", "a34004", "w01018"]
    rows = [row(factor=f, at=T0 + timedelta(minutes=m)) for m in range(40) for f in factors]
    await db.save_batch([*rows, row(at=T0, mn="OTHER")])
    seen: list[tuple[datetime, str]] = []
    cursor = None
    while True:
        page = await db.fetch_data(MN, "2051", T0, T0 + timedelta(days=1), limit=7, cursor=cursor)
        seen += [(r["data_time"], r["factor"]) for r in page.rows]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted((r.data_time, r.factor) for r in rows)
    one = await db.fetch_data(MN, "2051", T0, T0 + timedelta(days=1), code="a34004", limit=1000)
    assert len(one.rows) == 40 and one.next_cursor is None
    with pytest.raises(BadCursor):
        await db.fetch_data(MN, "2051", T0, T0, cursor="not a cursor")


async def test_devices_keep_first_seen_and_advance_last_seen(db: Database) -> None:
    early, late = RECEIVED, RECEIVED + timedelta(minutes=5)
    await db.save_sightings([DeviceSeen(MN, 2017, "32", "a:1", late), DeviceSeen(MN, 2017, "32", "b:2", early)])
    await db.save_sightings([DeviceSeen(MN, 2005, "31", "c:3", early - timedelta(days=1))])
    (device,) = await db.fetch_devices()
    assert device["first_seen"] == early - timedelta(days=1) and device["last_seen"] == late
    assert device["status"] == "accepted" and device["enabled"] is True and device["crc_variants"] == []
    one = await db.fetch_device(MN)
    assert one is not None and "pw" not in one and "pw" not in device  # a secret: never read for the API


async def test_connections_are_recorded_open_and_closed(db: Database, conn: asyncpg.Connection) -> None:
    first, second = await db.fetch_connection_ids(2)
    assert second > first
    opened = [ConnectionOpened(i, "gw-1", "10.0.0.1:4000", RECEIVED) for i in (first, second)]
    await db.save_connections_opened(opened)
    await db.save_connections_opened(opened[:1])  # a retry after an outage repeats rows: no error
    await db.save_connections_closed([ConnectionClosed(first, late(), "idle_timeout", MN, 3, 1)])
    got = await conn.fetch("SELECT * FROM connections ORDER BY id")
    assert [
        (r["id"], r["gateway_id"], r["mn"], r["close_reason"], r["frames_ok"], r["frames_rejected"]) for r in got
    ] == [
        (first, "gw-1", MN, "idle_timeout", 3, 1),
        (second, "gw-1", None, None, 0, 0),
    ]
    assert got[0]["disconnected_at"] == late() and got[1]["disconnected_at"] is None
    assert await db.ping()


async def test_announcements_reach_a_listener(db: Database) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await db.listen(channel_of(db.schema), lambda _c, _pid, _ch, payload: heard.put_nowait(payload))
    try:
        await db.announce(channel_of(db.schema), ["one", "two"])
        assert [await asyncio.wait_for(heard.get(), 5), await asyncio.wait_for(heard.get(), 5)] == ["one", "two"]
    finally:
        await listener.close()


def late() -> datetime:
    return RECEIVED + timedelta(minutes=10)


async def test_pooled_connections_carry_the_session_settings_and_keep_them_across_batches(db: Database) -> None:
    await db.save_batch([row()])
    async with db.pool.acquire() as conn:  # returned without a reset query: still set
        for name, value in SESSION_SETTINGS.items():
            assert await conn.fetchval(f"SHOW {name}") == value
        assert await conn.fetchval("SHOW search_path") == f'"{db.schema}"'
