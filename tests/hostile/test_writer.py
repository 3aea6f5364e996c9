"""Hostile review, the write path: rows PostgreSQL refuses (54000 from a 3,000-character factor code
or MN) are isolated and archived, a writer task that dies is restarted, and the write queue is
bounded in bytes. Through a running gateway: tests/hostile/test_writer_gateway.py; exactly-once
confirmation under faults: tests/hostile/test_exactly_once.py.

Real PostgreSQL throughout; refused rows are real refusals by PostgreSQL.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.cli.serve import Running
from hj212gw.ingest.items import IngestItem, ItemRejected, encoded_bytes
from hj212gw.ingest.writer import BatchWriter
from hj212gw.storage.db import Database
from tests.hostile.writer_items import Done, Faulty, item, long_text, readyz
from tests.integration.das import DasClient, data_packet
from tests.integration.waiting import until

# -- 54000: a refused item is isolated, archived, answered; the rest commits -------------------


async def test_a_3000_character_factor_code_is_refused_alone_archived_and_the_rest_commits(
    db: Database, conn: asyncpg.Connection
) -> None:
    done = Done()
    writer = BatchWriter(db, linger_s=0.05)
    writer.start()
    with capture_logs() as logs:
        for n in range(10):
            writer.submit(item(n, factor=long_text() if n in (3, 7) else "w01018"), done.callback(n))
        await writer.close()
    assert {n: len(calls) for n, calls in done.calls.items()} == {n: 1 for n in range(10)}
    assert all(done.calls[n] == [None] for n in range(10) if n not in (3, 7))
    for n in (3, 7):
        (error,) = done.calls[n]
        assert isinstance(error, ItemRejected) and error.sqlstate == "54000" and error.archived
    assert await conn.fetchval("SELECT count(*) FROM data") == 16
    verdicts = await conn.fetch("SELECT verdict, count(*) AS n FROM raw_frames GROUP BY verdict ORDER BY verdict")
    assert [tuple(r) for r in verdicts] == [("ok", 8), ("refused_by_database:54000", 2)]
    refused = [e for e in logs if e["event"] == "item_rejected_by_database"]
    assert len(refused) == 2 and all(e["log_level"] == "warning" and e["sqlstate"] == "54000" for e in refused)
    assert writer.pending == 0 and writer.pending_bytes == 0


async def test_a_3000_character_mn_is_archived_without_its_mn_and_nothing_else_is_lost(
    db: Database, conn: asyncpg.Connection
) -> None:
    # The MN is in the key of `data` and in an index of raw_frames: the packet's data and even its
    # frame row are refused; the raw bytes are kept with mn NULL (the MN is inside them).
    done = Done()
    writer = BatchWriter(db, linger_s=0.05)
    writer.start()
    long_mn = long_text(seed=2)
    with capture_logs() as logs:
        writer.submit(item(0), done.callback(0))
        writer.submit(item(1, mn=long_mn), done.callback(1))
        writer.submit(item(2), done.callback(2))
        await writer.close()
    assert done.calls[0] == done.calls[2] == [None]
    (error,) = done.calls[1]
    assert isinstance(error, ItemRejected) and error.archived
    rows = await conn.fetch("SELECT mn, verdict, raw FROM raw_frames ORDER BY raw")
    assert [(r["mn"], r["verdict"], r["raw"]) for r in rows] == [
        ("MN0001", "ok", b"frame 0"),
        (None, "refused_by_database:54000", b"frame 1"),
        ("MN0001", "ok", b"frame 2"),
    ]
    (warning,) = [e for e in logs if e["event"] == "item_rejected_by_database"]
    assert len(warning["mn"]) == 64  # never the whole MN in a log line


async def test_an_item_with_nothing_to_archive_is_refused_unarchived(db: Database, conn: asyncpg.Connection) -> None:
    # A reassembled split packet carries data only: nothing is left to archive, so no ack.
    writer = BatchWriter(db, linger_s=0.01)
    writer.start()
    with capture_logs():
        future = writer.submit_future(IngestItem(data=item(0, factor=long_text()).data))
        with pytest.raises(ItemRejected) as refused:
            await future
        await writer.close()
    assert not refused.value.archived
    assert await conn.fetchval("SELECT count(*) FROM raw_frames") == 0


# -- a writer task that dies is restarted, and readiness says so meanwhile -----------------------


async def test_a_writer_task_that_crashes_is_logged_restarted_and_reported_by_readyz(
    running: Running, conn: asyncpg.Connection
) -> None:
    gateway = running.gateway
    gateway.supervisor.backoff_initial_s = 1.0  # long enough to see it down
    gateway.writer.db = Faulty(gateway.db, [("before", RuntimeError("a bug in the write path"))])  # type: ignore[assignment]
    assert gateway.port is not None
    das = await DasClient.connect(gateway.port)
    with capture_logs() as logs:
        await das.send(data_packet("20240315101000001"))
        await until(lambda: bool(gateway.supervisor.down()))
        status, body = await readyz(running)
        assert status == 503 and body["error"] == "not_ready"
        assert any(r.startswith("task batch-writer-") for r in body["reasons"]), body
        assert not gateway.ready()
        await until(lambda: not gateway.supervisor.down(), timeout_s=5)
        await das.send(data_packet("20240315101000002", data_time="20240315100100"))
        reply = await das.reply()
    await das.close()
    assert reply.packet.qn == "20240315101000002"  # the first got no ack: the DAS sends it again
    (crash,) = [e for e in logs if e["event"] == "task_crashed"]
    assert crash["log_level"] == "error" and isinstance(crash["exc_info"], RuntimeError)
    restarts = gateway.metrics.registry.get_sample_value("hj212gw_task_restarts_total", {"task": crash["task"]})
    assert restarts == 1
    assert gateway.writer.pending == 0
    assert (await readyz(running))[0] == 200


# -- the write queue is bounded in bytes ---------------------------------------------------------


async def test_the_queue_is_full_by_bytes_before_it_is_full_by_items(db: Database, conn: asyncpg.Connection) -> None:
    # One packet with a long MN encodes to hundreds of kB (the MN is in every data row): counting
    # items alone let a few such packets hold far more memory than the item bound suggests.
    size = encoded_bytes(item(0))
    writer = BatchWriter(db, linger_s=0.01, max_pending_items=1000, max_pending_bytes=3 * size)
    for n in range(2):
        writer.submit(item(n))
    assert not writer.full
    writer.submit(item(2))
    assert writer.pending == 3 and writer.pending_bytes == 3 * size
    assert writer.full
    waiter = asyncio.create_task(writer.wait_for_room())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    writer.start()
    with capture_logs():
        await asyncio.wait_for(waiter, 10)
        await writer.close()
    assert writer.pending_bytes == 0
    assert await conn.fetchval("SELECT count(*) FROM raw_frames") == 3


async def test_the_byte_depth_is_a_gauge_and_a_setting(running: Running) -> None:
    gateway = running.gateway
    assert gateway.writer.max_pending_bytes == gateway.settings.writer.max_pending_bytes == 64 * 1024 * 1024
    gateway.writer.submit(item(0))
    await until(lambda: gateway.writer.pending == 0)
    assert gateway.metrics.registry.get_sample_value("hj212gw_write_queue_bytes") == 0
