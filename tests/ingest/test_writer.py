"""BatchWriter: ack only after commit, outage without loss, backpressure, flush on close."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.ingest.items import IngestItem, NullObserver, QueueShare, WriterClosed, encoded_bytes
from hj212gw.ingest.writer import BatchWriter
from hj212gw.storage import pgcopy
from hj212gw.storage.db import Database
from hj212gw.storage.rows import DataBlock, DataRow, FrameRow, month_of
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration

T0 = datetime(2024, 6, 1, tzinfo=UTC)


def item(n: int, mn: str = "MN0001") -> IngestItem:
    """One packet: two factors at minute n and its frame."""
    at = T0 + timedelta(minutes=n)
    now = datetime.now(UTC)
    rows = [DataRow(mn=mn, cn="2051", data_time=at, factor=f, received_at=now, avg=n) for f in ("w01018", "w21003")]
    data = DataBlock(b"".join(pgcopy.data_row(r) for r in rows), len(rows), month_of(at))
    frame = FrameRow(received_at=now, raw=f"frame {n}".encode(), mn=mn, cn="2051")
    return IngestItem([frame], data)


async def count_rows(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM data"))


async def test_futures_resolve_only_after_rows_are_visible_to_others(db: Database, conn: asyncpg.Connection) -> None:
    writer = BatchWriter(db, linger_s=0.01, max_batch_rows=50)
    writer.start()
    seen_at_ack: list[int] = []
    committed = asyncio.Event()

    async def check() -> None:
        seen_at_ack.append(await count_rows(conn))
        committed.set()

    futures = [writer.submit_future(item(n)) for n in range(100)]
    futures[-1].add_done_callback(lambda _: asyncio.ensure_future(check()))
    await asyncio.gather(*futures)
    await committed.wait()
    assert seen_at_ack == [200]
    await writer.close()


async def test_on_done_runs_after_commit_and_close_flushes(db: Database, conn: asyncpg.Connection) -> None:
    writer = BatchWriter(db, linger_s=0.05)
    writer.start()
    acked: list[tuple[int, BaseException | None]] = []
    for n in range(30):
        writer.submit(item(n), lambda error, n=n: acked.append((n, error)))
    await writer.close()
    assert sorted(acked, key=lambda a: a[0]) == [(n, None) for n in range(30)]
    assert await count_rows(conn) == 60
    assert writer.pending == 0


async def test_outage_holds_acks_then_commits_everything_after_restore(
    pg_dsn: str, schema: str, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    db = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=2, connect_timeout_s=2.0)
    await db.connect()
    with capture_logs() as logs:
        writer = BatchWriter(db, linger_s=0.005, retry_initial_s=0.05, retry_max_s=0.2)
        writer.start()
        await asyncio.gather(*(writer.submit_future(item(n)) for n in range(5)))
        proxy.cut()
        during = [writer.submit_future(item(n)) for n in range(5, 25)]
        await asyncio.sleep(1.0)
        assert not any(f.done() for f in during)
        assert writer.ready is False and writer.pending == 20
        proxy.restore()
        await asyncio.wait_for(asyncio.gather(*during), timeout=20)
        assert writer.ready is True
        await writer.close()
    await db.close()
    assert await count_rows(conn) == 50
    events = [e["event"] for e in logs]
    assert events.count("database_down") == 1 and events.count("database_up") == 1
    (down,) = [e for e in logs if e["event"] == "database_down"]
    assert down["log_level"] == "warning"


async def test_full_queue_signals_backpressure_and_drops_nothing(
    pg_dsn: str, schema: str, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    db = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=2, connect_timeout_s=2.0)
    await db.connect()
    with capture_logs():
        writer = BatchWriter(db, linger_s=0.005, max_pending_items=10, retry_initial_s=0.05, retry_max_s=0.2)
        writer.start()
        proxy.cut()
        futures = [writer.submit_future(item(n)) for n in range(10)]
        assert writer.full
        waiter = asyncio.create_task(writer.wait_for_room())
        await asyncio.sleep(0.3)
        assert not waiter.done()
        proxy.restore()
        await asyncio.wait_for(waiter, timeout=20)
        await asyncio.wait_for(asyncio.gather(*futures), timeout=20)
        await writer.close()
    await db.close()
    assert await count_rows(conn) == 20


async def test_close_during_an_outage_mid_bisection_answers_each_item_once(
    pg_dsn: str, schema: str, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    # A factor code too long for the key index (54000) makes the batch bisect. The first half
    # committed, then PostgreSQL went away: close() gives up on the rest. The committed half keeps
    # its one confirmation; only the rest hears WriterClosed.
    db = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=2, connect_timeout_s=1.0)
    await db.connect()

    class CutAfterFirstCommit(NullObserver):
        def batch_committed(self, *, items: int, rows: int, values: int, latency_s: float) -> None:
            proxy.cut()

    calls: dict[int, list[BaseException | None]] = {}
    writer = BatchWriter(db, linger_s=0.05, retry_initial_s=0.05, retry_max_s=0.1, observer=CutAfterFirstCommit())
    writer.start()
    refused = DataRow(
        mn="MN0001", cn="2051", data_time=T0, factor=random.Random(1).randbytes(1500).hex(), received_at=T0, avg=1.0
    )
    poisoned = IngestItem([], DataBlock(pgcopy.data_row(refused), 1, month_of(T0)))
    with capture_logs():
        for n in range(4):
            writer.submit(item(n + 1) if n < 3 else poisoned, lambda error, n=n: calls.setdefault(n, []).append(error))
        await asyncio.sleep(1.0)
        await writer.close(timeout_s=0.2)
    proxy.restore()
    await db.close()
    assert calls[0] == calls[1] == [None]
    assert [type(e) for n in (2, 3) for e in calls[n]] == [WriterClosed, WriterClosed]
    assert writer.pending == 0 and writer.pending_bytes == 0
    assert await count_rows(conn) == 4


class BatchMarks(NullObserver):
    """Writes `|` into `order` after each committed batch's items confirmed themselves there."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def batch_committed(self, *, items: int, rows: int, values: int, latency_s: float) -> None:
        self.order.append("|")  # called before the batch's items are confirmed


async def test_each_source_counts_its_share_and_few_items_go_ahead_of_backlogs(
    db: Database, conn: asyncpg.Connection
) -> None:
    order: list[str] = []
    writer = BatchWriter(db, linger_s=0.01, max_batch_rows=30, writers=1, observer=BatchMarks(order))
    flood = QueueShare(max_items=4, max_bytes=1 << 30)  # its second item on is a backlog
    flood_items = [item(n, "FLOOD") for n in range(60)]
    for each in flood_items:  # a source that does not wait for its acks: a backlog
        writer.submit(each, lambda _e: order.append("flood"), flood)
    shares = [QueueShare(max_items=32, max_bytes=1 << 20) for _ in range(10)]
    for n, share in enumerate(shares):  # DAS units with one packet in flight each, queued after it
        writer.submit(item(n, f"DAS{n}"), lambda _e: order.append("das"), share)
    assert (flood.items, flood.nbytes) == (60, sum(encoded_bytes(i) for i in flood_items))

    writer.start()
    await writer.close()

    batches = [batch.split() for batch in " ".join(order).split("|")[1:]]  # each batch's items
    assert sum(batch.count("das") for batch in batches[:3]) == 10  # before: all ten after the flood
    assert all(batch.count("flood") >= 5 for batch in batches if len(batch) == 10)  # half of a full batch
    assert (flood.items, flood.nbytes) == (0, 0) and all(s.items == 0 for s in shares)
    assert await count_rows(conn) == 140


async def test_queued_rows_count_the_first_queue_only_and_fall_as_batches_take_them(
    db: Database, conn: asyncpg.Connection
) -> None:
    """What the read admission compares with its mark: rows of the DAS that wait for their acks,
    not a flood's backlog (its share bounds it; counting it would hold every DAS's read behind it)."""
    writer = BatchWriter(db, linger_s=0.01, max_batch_rows=30, writers=1)
    flood = QueueShare(max_items=4, max_bytes=1 << 30)  # its first item is ahead, the rest a backlog
    for n in range(20):
        writer.submit(item(n, "FLOOD"), lambda _e: None, flood)
    assert writer.queued_rows == 3  # one item: two data rows and its frame
    for n in range(5):
        writer.submit(item(n, f"DAS{n}"), lambda _e: None, QueueShare(max_items=32, max_bytes=1 << 20))
    assert writer.queued_rows == 18
    writer.start()
    await writer.close()
    assert writer.queued_rows == 0 and await count_rows(conn) == 25 * 2  # two data rows each
