"""server/admission.py: reads wait unparsed while the writers have a batch each queued, are parsed
oldest first as the writers take rows, and every packet read that way is still stored and acked."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.server.admission import ReadAdmission
from hj212gw.server.flow import ReadHold
from tests.integration.das import DasClient, data_packet
from tests.integration.serving import connect, minute, sample, start
from tests.integration.waiting import until


class Queue:
    """The writers' queue as admission sees it."""

    def __init__(self, queued_rows: int = 0) -> None:
        self.queued_rows = queued_rows


class Read:
    """A connection's kept read: records when it was parsed."""

    def __init__(self, name: str, parsed: list[str], queue: Queue, adds: int) -> None:
        self.name, self.parsed, self.queue, self.adds = name, parsed, queue, adds

    def parse_deferred(self) -> None:
        self.parsed.append(self.name)
        self.queue.queued_rows += self.adds  # parsing queues this read's rows for the writers


def test_nothing_is_deferred_while_the_writers_queue_is_below_the_mark() -> None:
    rows = Queue()
    admission = ReadAdmission(rows, ahead_rows=100)
    assert not admission.behind
    rows.queued_rows = 99
    assert not admission.behind
    rows.queued_rows = 100
    assert admission.behind


def test_a_mark_of_zero_never_defers() -> None:
    admission = ReadAdmission(Queue(10**9), ahead_rows=0)
    assert not admission.behind


def test_reads_wait_behind_those_already_waiting_and_are_parsed_oldest_first_as_rows_are_taken() -> None:
    rows, parsed = Queue(), []
    admission = ReadAdmission(rows, ahead_rows=20)
    for name in "abcde":
        admission.defer(Read(name, parsed, rows, adds=11))
    assert admission.behind  # the queue is empty but reads wait: a new one goes behind them
    assert (admission.backlog, admission.deferred) == (5, 5)
    assert admission.parse_some() == 2  # 0 -> 11 -> 22 rows: the mark is reached
    assert parsed == ["a", "b"]
    assert admission.parse_some() == 0  # nothing taken yet
    rows.queued_rows = 0  # a writer took a batch
    assert admission.parse_some() == 2
    rows.queued_rows = 0
    assert admission.parse_some() == 1
    assert parsed == ["a", "b", "c", "d", "e"]
    assert admission.backlog == 0 and not admission.behind


def test_one_turn_parses_a_bounded_number_of_reads() -> None:
    rows, parsed = Queue(), []
    admission = ReadAdmission(rows, ahead_rows=10)
    for n in range(1000):
        admission.defer(Read(str(n), parsed, rows, adds=0))
    first = admission.parse_some()
    assert 0 < first < 1000  # the event loop gets a turn between slices
    assert parsed == [str(n) for n in range(first)]


async def test_the_run_task_parses_the_backlog_as_the_writers_take_rows() -> None:
    rows, parsed = Queue(30), []
    admission = ReadAdmission(rows, ahead_rows=20, poll_s=0.001)
    task = asyncio.create_task(admission.run())
    try:
        admission.defer(Read("a", parsed, rows, adds=11))
        await asyncio.sleep(0.02)
        assert parsed == []  # the writers' queue is over the mark
        rows.queued_rows = 0
        await until(lambda: parsed == ["a"], timeout_s=2)
    finally:
        task.cancel()


class CountingQueue(Queue):
    """A queue that counts how often admission looks at it."""

    def __init__(self, queued_rows: int) -> None:
        self.looks = 0
        self._rows = queued_rows

    @property  # type: ignore[override]
    def queued_rows(self) -> int:
        self.looks += 1
        return self._rows

    @queued_rows.setter
    def queued_rows(self, rows: int) -> None:
        self._rows = rows


async def test_while_the_writers_take_nothing_the_run_task_looks_less_and_less_often() -> None:
    """PostgreSQL down: the writers' queue stays full for as long as the outage lasts; the task
    backs off to `max_poll_s` instead of waking every millisecond, and still parses within that
    once rows are taken."""
    queue, parsed = CountingQueue(30), []
    admission = ReadAdmission(queue, ahead_rows=20, poll_s=0.001, max_poll_s=0.05)
    task = asyncio.create_task(admission.run())
    try:
        admission.defer(Read("a", parsed, queue, adds=0))
        await asyncio.sleep(0.5)
        assert parsed == [] and queue.looks < 30  # 1, 2, 4 ... 50 ms: about 15 looks, not 500
        queue.queued_rows = 0
        await until(lambda: parsed == ["a"], timeout_s=0.2)
    finally:
        task.cancel()


@pytest.mark.integration
async def test_a_burst_of_das_read_under_admission_is_stored_and_acked_in_full(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    """Admission at one packet (2 rows: a value and the raw frame) with a long linger: nearly every
    read of the burst waits unparsed; each DAS sends three packets, one in flight, as at the top of
    an hour; every packet is acked once and stored."""
    running = await start(gateways, pg_dsn, schema, writer={"admission_rows": 2, "linger_ms": 20})
    devices = 20
    mns = [f"ADMISSION{n:015d}" for n in range(devices)]
    clients = [await connect(running) for _ in mns]

    async def das(client: DasClient, mn: str) -> list[str]:
        acked = []
        for k in range(3):
            qn = f"20240315100000{k:03d}"
            await client.send(data_packet(qn, mn=mn, data_time=minute(k), values={"a21026": f"{k}.5"}))
            reply = await client.reply(timeout_s=20.0)
            assert reply.packet.cn == "9014"
            acked.append(reply.packet.qn or "")
        return acked

    acks = await asyncio.gather(*(das(client, mn) for client, mn in zip(clients, mns, strict=True)))
    assert all(a == [f"20240315100000{k:03d}" for k in range(3)] for a in acks)
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn LIKE 'ADMISSION%'") == devices * 3
    assert sample(running, "hj212gw_reads_deferred_total") > 0
    assert running.gateway.admission.backlog == 0
    for client in clients:
        await client.close()


@pytest.mark.integration
async def test_a_deferred_read_followed_by_a_half_close_is_still_acked(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    """The parse of a kept read comes before the end of the stream is handled: the DAS that sent
    its packet and shut down writing still gets its 9014. One writer, one packet per batch, and the
    raw archive locked, so the first batch waits, the second packet waits in the queue and the
    third read is kept unparsed."""
    settings = {"admission_rows": 2, "max_batch_rows": 2, "writers": 1}
    running = await start(gateways, pg_dsn, schema, writer=settings)
    writer, (a, b, c) = running.gateway.writer, [await connect(running) for _ in range(3)]
    lock = conn.transaction()
    await lock.start()
    await conn.execute("LOCK TABLE raw_frames IN SHARE MODE")  # the writer's COPY waits for it
    try:
        await a.send(data_packet("20240315100000001", mn="ADMISSION000000000000001"))
        await until(lambda: writer.pending == 1 and writer.queued_rows == 0)  # in the waiting batch
        await b.send(data_packet("20240315100000002", mn="ADMISSION000000000000002"))
        await until(lambda: writer.queued_rows == 2)
        await c.send(data_packet("20240315100000003", mn="ADMISSION000000000000003"))
        c.writer.write_eof()
        await until(lambda: sample(running, "hj212gw_reads_deferred_total") == 1)  # kept unparsed
    finally:
        await lock.rollback()
    replies = [await das.reply(timeout_s=10.0) for das in (a, b, c)]
    assert [(r.packet.cn, r.packet.qn) for r in replies] == [("9014", f"2024031510000000{n}") for n in (1, 2, 3)]
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn LIKE 'ADMISSION%'") == 3
    for das in (a, b, c):
        await das.close()


@pytest.mark.integration
async def test_a_flood_while_admission_is_behind_is_paused_and_bounded_then_stored_in_full(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    """A peer that sends far more than one packet while reads wait: past 16 KiB kept its socket is
    paused (the kernel holds the rest), so what it costs the gateway is bounded; once the writers
    catch up every packet of it is stored and acked."""
    settings = {"admission_rows": 2, "max_batch_rows": 2, "writers": 1}
    running = await start(gateways, pg_dsn, schema, writer=settings)
    writer, (a, b, flood) = running.gateway.writer, [await connect(running) for _ in range(3)]
    packets = [
        data_packet(f"20240315100{n:06d}", mn="ADMISSION000000000000009", data_time=minute(n)) for n in range(400)
    ]
    lock = conn.transaction()
    await lock.start()
    await conn.execute("LOCK TABLE raw_frames IN SHARE MODE")
    try:
        await a.send(data_packet("20240315100000001", mn="ADMISSION000000000000001"))
        await until(lambda: writer.pending == 1 and writer.queued_rows == 0)
        await b.send(data_packet("20240315100000002", mn="ADMISSION000000000000002"))
        await until(lambda: writer.queued_rows == 2)
        flood.writer.write(b"".join(packets))  # ~95 KB; not awaited: the gateway stops reading it
        await until(lambda: any(c._holds & ReadHold.BACKLOG for c in running.gateway.connections))
        kept = [c for c in running.gateway.connections if c._holds & ReadHold.BACKLOG]
        assert len(kept) == 1 and kept[0]._deferred is not None
        assert 16384 < len(kept[0]._deferred) <= 16384 + 262144  # one read past the mark at most
        assert writer.pending == 2  # nothing of the flood was parsed yet
    finally:
        await lock.rollback()
    replies = [await flood.reply(timeout_s=30.0) for _ in packets]
    assert [r.packet.qn for r in replies] == [f"20240315100{n:06d}" for n in range(400)]
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = 'ADMISSION000000000000009'") == 400
    for das in (a, b, flood):
        await das.close()
