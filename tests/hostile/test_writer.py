"""Hostile review, the write path: rows PostgreSQL refuses (54000 from a 3,000-character factor code
or MN), a refused item's evidence and answer, a writer task that dies, exactly-once confirmation
under any mix of refused rows and outages, and the write queue's byte bound.

Real PostgreSQL throughout. Faults are injected by a thin wrapper around the real `Database` (an
outage raised before or after the real `save_batch`) or by cutting the TCP proxy; refused rows are
real refusals by PostgreSQL.
"""

from __future__ import annotations

import asyncio
import random
import string
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hj212gw.api import bound_port
from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from hj212gw.ingest.items import IngestItem, ItemRejected, encoded_bytes
from hj212gw.ingest.writer import BatchWriter
from hj212gw.protocol.framing import encode_frame
from hj212gw.storage import pgcopy
from hj212gw.storage.db import Database
from hj212gw.storage.rows import DataBlock, DataRow, DeviceSeen, FrameRow, month_of
from tests.integration.das import MN, DasClient, data_packet, settings_for
from tests.integration.proxy import TcpProxy
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

T0 = datetime(2024, 6, 1, tzinfo=UTC)


def long_text(n: int = 3000, seed: int = 1) -> str:
    """Random characters: PostgreSQL cannot compress them below its index row limit (2,704 bytes)."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def item(
    n: int, *, mn: str = "MN0001", factor: str = "w01018", frame_mn: str | None = None, tag: int = 0
) -> IngestItem:
    """One packet: two factors at minute n (one of them `factor`) and its raw frame."""
    at = T0 + timedelta(minutes=n)
    now = datetime.now(UTC)
    rows = [DataRow(mn=mn, cn="2051", data_time=at, factor=f, received_at=now, avg=n) for f in (factor, "w21003")]
    data = DataBlock(b"".join(pgcopy.data_row(r) for r in rows), len(rows), month_of(at))
    frame = FrameRow(received_at=now, raw=f"frame {n}".encode(), mn=frame_mn or mn, cn="2051", connection_id=tag)
    return IngestItem([frame], data)


class Done:
    """on_done callbacks per item: every call is recorded, so a second one shows."""

    def __init__(self) -> None:
        self.calls: dict[int, list[BaseException | None]] = {}

    def callback(self, n: int) -> Any:
        return lambda error: self.calls.setdefault(n, []).append(error)


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


# -- the same through a running gateway: acks, other devices, readiness, sightings ---------------


@pytest.fixture
async def running(pg_dsn: str, schema: str) -> AsyncIterator[Running]:
    started = await serve.start(settings_for(pg_dsn, schema))
    yield started
    await started.stop()


async def readyz(running: Running) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{bound_port(running.http_runner)}/readyz"  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def test_long_codes_and_mns_sent_to_a_gateway_stop_no_writer_and_other_devices_are_acked(
    running: Running, conn: asyncpg.Connection
) -> None:
    # Two packets with a ~3,000-character factor code and two with such an MN (the attack),
    # then normal packets from another device. Before: both writers died, nothing was acked again,
    # /readyz said ready. Whether the protocol layer or PostgreSQL refuses the long fields, the
    # writer must survive and every other packet be stored and acked.
    gateway = running.gateway
    assert gateway.port is not None
    attacker = await DasClient.connect(gateway.port)
    victim = await DasClient.connect(gateway.port)
    with capture_logs() as logs:
        for n in range(2):
            await attacker.send(data_packet(f"2024031510100000{n}", values={long_text(seed=n): "1.0"}))
        await attacker.send(data_packet("20240315101000002", mn=long_text(seed=5)))
        await asyncio.sleep(0.3)
        for n in range(5):
            await victim.send(data_packet(f"2024031510200000{n}", data_time=f"202403151{n}0000"))
        acks = await victim.replies(5, timeout_s=10)
        await eventually(lambda: _device_stored(conn), timeout_s=10)
    await attacker.close()
    await victim.close()
    assert sorted(a.packet.qn for a in acks) == [f"2024031510200000{n}" for n in range(5)]
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", MN) == 5
    assert [e for e in logs if e["log_level"] == "error"] == []
    assert gateway.metrics.registry.get_sample_value("hj212gw_task_restarts_total", {"task": "batch-writer-0"}) is None
    assert gateway.ready() and (await readyz(running))[0] == 200
    # The attacker's frames are evidence either way (refused by the protocol or by the database).
    assert await conn.fetchval("SELECT count(*) FROM raw_frames WHERE verdict <> 'ok'") >= 3
    assert await conn.fetchval("SELECT count(*) FROM data") == 5


async def _device_stored(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM devices WHERE mn = $1", MN))


async def test_a_long_mn_sighting_is_dropped_alone_and_the_others_are_written(
    running: Running, conn: asyncpg.Connection
) -> None:
    # Before: the sightings upsert failed every second (54000), kept the batch for the next try,
    # and housekeeping never reached the registry refresh or the readiness check.
    gateway = running.gateway
    now = datetime.now(UTC)
    with capture_logs() as logs:
        gateway.side_writes.record_sighting(DeviceSeen(long_text(seed=3), 1, "32", "1.2.3.4:5", now))
        gateway.side_writes.record_sighting(DeviceSeen("MNGOOD", 1, "32", "1.2.3.4:6", now))
        await eventually(lambda: _mn_stored(conn, "MNGOOD"), timeout_s=10)
    dropped = [e for e in logs if e["event"] == "sighting_rejected_by_database"]
    assert len(dropped) == 1 and dropped[0]["sqlstate"] == "54000"
    assert gateway.side_writes._sightings == {}  # not kept for another doomed try


async def _mn_stored(conn: asyncpg.Connection, mn: str) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM devices WHERE mn = $1", mn))


async def test_a_packet_whose_data_is_refused_is_acked_because_its_raw_frame_is_kept(
    running: Running, conn: asyncpg.Connection
) -> None:
    # A constraint makes PostgreSQL refuse this device's data whatever the protocol layer lets
    # through (23514): its raw frame is archived on its own, so a resend could only fail again and
    # the DAS gets its 9014 (docs/protocol.md).
    await conn.execute("ALTER TABLE data ADD CONSTRAINT refuse_w01018 CHECK (factor <> 'w01018')")
    gateway = running.gateway
    assert gateway.port is not None
    das = await DasClient.connect(gateway.port)
    with capture_logs() as logs:
        await das.send(data_packet("20240315101000001"))
        reply = await das.reply()
    await das.close()
    assert (reply.packet.cn, reply.packet.qn) == ("9014", "20240315101000001")
    assert await conn.fetchval("SELECT count(*) FROM data") == 0
    assert await conn.fetchval("SELECT verdict FROM raw_frames") == "refused_by_database:23514"
    (refused,) = [e for e in logs if e["event"] == "item_rejected_by_database"]
    assert refused["log_level"] == "warning" and refused["sqlstate"] == "23514" and refused["mn"] == MN
    metric = gateway.metrics.registry.get_sample_value(
        "hj212gw_items_refused_total", {"sqlstate_class": "23", "outcome": "archived"}
    )
    assert metric == 1


async def test_a_packet_refused_even_as_a_raw_frame_gets_no_ack(running: Running, conn: asyncpg.Connection) -> None:
    # Nothing of it is stored, so nothing may be acked: the DAS keeps it and sends it again.
    await conn.execute("ALTER TABLE data ADD CONSTRAINT refuse_w01018 CHECK (factor <> 'w01018')")
    await conn.execute("ALTER TABLE raw_frames ADD CONSTRAINT refuse_evidence CHECK (verdict NOT LIKE 'refused%')")
    gateway = running.gateway
    assert gateway.port is not None
    das = await DasClient.connect(gateway.port)
    with capture_logs():
        await das.send(data_packet("20240315101000001"))
        assert await das.nothing_within(1.0)
    await das.close()
    assert await conn.fetchval("SELECT count(*) FROM raw_frames") == 0
    metric = gateway.metrics.registry.get_sample_value(
        "hj212gw_items_refused_total", {"sqlstate_class": "23", "outcome": "not_archived"}
    )
    assert metric == 1
    assert gateway.writer.pending == 0 and gateway.ready()


async def test_a_split_part_whose_row_is_refused_is_acked_because_its_raw_frame_is_kept(
    running: Running, conn: asyncpg.Connection
) -> None:
    # The same answer for a part of a split transfer: its split_parts row is refused (23514), its
    # raw frame is archived, its 9014 goes out; the other parts are stored as usual.
    await conn.execute("ALTER TABLE split_parts ADD CONSTRAINT refuse_part_2 CHECK (pno <> 2)")
    cp = "DataTime=20240315100000;w01018-Avg=40.1,w01018-Flag=N;w21003-Avg=7.25,w21003-Flag=N"
    texts = [cp[:30], cp[30:]]
    frames = [
        encode_frame(f"QN=20240315101000001;ST=32;CN=2051;PW=123456;MN={MN};Flag=7;PNUM=2;PNO={n};CP=&&{t}&&".encode())
        for n, t in enumerate(texts, 1)
    ]
    gateway = running.gateway
    assert gateway.port is not None
    das = await DasClient.connect(gateway.port)
    with capture_logs() as logs:
        for wire in frames:
            await das.send(wire)
            assert (await das.reply()).packet.cn == "9014"
    await das.close()
    verdicts = [r["verdict"] for r in await conn.fetch("SELECT verdict FROM raw_frames ORDER BY id")]
    assert verdicts == ["ok", "refused_by_database:23514"]
    assert await conn.fetchval("SELECT array_agg(pno) FROM split_parts") == [1]
    assert [e["sqlstate"] for e in logs if e["event"] == "item_rejected_by_database"] == ["23514"]


# -- a writer task that dies is restarted, and readiness says so meanwhile -----------------------


class Faulty:
    """The real Database underneath; `save_batch` raises the queued faults first.

    A fault is ("before", exc): raised instead of calling the real save_batch, or ("after", exc):
    raised after the real save_batch committed (an outage that hides a COMMIT)."""

    def __init__(self, real: Database, faults: Sequence[tuple[str, BaseException]] = ()) -> None:
        self.real = real
        self.faults = list(faults)
        self.committed_frames = 0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def save_batch(self, data_rows: Sequence[DataRow], frame_rows: Sequence[FrameRow] = (), **kw: Any) -> int:
        self.calls += 1
        when, error = self.faults.pop(0) if self.faults else ("", None)
        if when == "before" and error is not None:
            raise error
        changed = await self.real.save_batch(data_rows, frame_rows, **kw)
        self.committed_frames += len(frame_rows)
        if when == "after" and error is not None:
            raise error
        return changed


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


# -- exactly once under any mix of refused rows and outages --------------------------------------

OUTAGE = ConnectionResetError("injected outage")


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    poison=st.lists(st.sampled_from(["good", "long_factor", "nul", "long_mn"]), min_size=1, max_size=12),
    faults=st.lists(st.sampled_from(["ok", "before", "after"]), max_size=12),
    batch_rows=st.sampled_from([3, 8, 100]),
)
async def test_every_item_is_confirmed_exactly_once_under_refusals_and_outages(
    db: Database, conn: asyncpg.Connection, poison: list[str], faults: list[str], batch_rows: int
) -> None:
    tag = uuid.uuid4().int % 2**62  # this example's frames: connection_id = tag
    faulty = Faulty(db, [(f, OUTAGE) for f in faults])
    depths: list[tuple[int, int]] = []

    class Depth:
        def batch_committed(self, **_: object) -> None:
            pass

        def queue_depth(self, items: int, nbytes: int) -> None:
            depths.append((items, nbytes))

        def database_up(self, up: bool) -> None:
            pass

        def item_refused(self, **_: object) -> None:
            pass

    writer = BatchWriter(
        faulty,  # type: ignore[arg-type]
        linger_s=0.02,
        max_batch_rows=batch_rows,
        retry_initial_s=0.001,
        retry_max_s=0.005,
        observer=Depth(),
    )
    writer.start()
    done = Done()
    mn = f"P{tag}"
    for n, kind in enumerate(poison):
        factor = {"long_factor": long_text(seed=n), "nul": "w0\x001018"}.get(kind, "w01018")
        frame_mn = long_text(seed=n) if kind == "long_mn" else None
        writer.submit(item(n, mn=mn, factor=factor, frame_mn=frame_mn, tag=tag), done.callback(n))
    with capture_logs():
        async with asyncio.timeout(60):
            while writer.pending:
                await asyncio.sleep(0.005)
        await writer.close()

    assert {n: len(calls) for n, calls in done.calls.items()} == {n: 1 for n in range(len(poison))}
    for n, kind in enumerate(poison):
        (error,) = done.calls[n]
        assert (error is None) == (kind == "good"), (n, kind, error)
        assert error is None or (isinstance(error, ItemRejected) and error.archived)
    assert all(items >= 0 and nbytes >= 0 for items, nbytes in depths)
    assert writer.pending == 0 and writer.pending_bytes == 0
    frames = await conn.fetchval("SELECT count(*) FROM raw_frames WHERE connection_id = $1", tag)
    assert frames == faulty.committed_frames
    if "after" not in faults[: faulty.calls]:  # no COMMIT hidden by an outage: each frame once
        assert frames == len(poison)
    good = sum(kind == "good" for kind in poison)
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", mn) == 2 * good


async def test_a_cut_in_the_middle_of_a_bisection_confirms_each_item_once(
    pg_dsn: str, schema: str, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    # Before: the first half committed, the cut failed the second, and the retry wrote and
    # confirmed the whole batch again (two acks, raw frames twice, the pending count below zero).
    db = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=2, connect_timeout_s=2.0)
    await db.connect()

    class CutAfterFirstCommit:
        commits = 0

        def batch_committed(self, **_: object) -> None:
            self.commits += 1
            if self.commits == 1:  # the first half of the bisection just committed
                proxy.cut()
                asyncio.get_running_loop().call_later(0.5, proxy.restore)

        def queue_depth(self, items: int, nbytes: int) -> None:
            assert items >= 0 and nbytes >= 0

        def database_up(self, up: bool) -> None:
            pass

        def item_refused(self, **_: object) -> None:
            pass

    done = Done()
    writer = BatchWriter(db, linger_s=0.05, retry_initial_s=0.05, retry_max_s=0.2, observer=CutAfterFirstCommit())
    writer.start()
    with capture_logs() as logs:
        for n in range(8):
            writer.submit(item(n, factor=long_text() if n == 7 else "w01018"), done.callback(n))
        async with asyncio.timeout(30):
            while writer.pending:
                await asyncio.sleep(0.01)
        await writer.close()
    await db.close()
    assert {n: len(calls) for n, calls in done.calls.items()} == {n: 1 for n in range(8)}
    assert [done.calls[n] for n in range(7)] == [[None]] * 7
    assert isinstance(done.calls[7][0], ItemRejected)
    assert await conn.fetchval("SELECT count(*) FROM raw_frames") == 8
    assert await conn.fetchval("SELECT count(*) FROM data") == 14
    assert [e["event"] for e in logs if e["event"].startswith("database_")] == ["database_down", "database_up"]


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
