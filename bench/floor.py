"""The floor: the least an ack-after-commit gateway does per packet in Python, to put issue #14's
targets beside what Python, asyncpg and PostgreSQL's ten rows per packet allow on a host.

    .venv/bin/python -m bench.bench_gateway --phases closed --window 1 --gateway-module bench.floor

Takes the arguments and environment `hj212gw serve` gets from bench/harness.py (`serve --listen
--http --database-url --database-schema`, HJ212GW_WORKERS) and answers the same /readyz and the
/metrics lines the harness reads. Per packet it does what no HJ 212 gateway can skip: frame on
CR LF, check the length and the CRC, split the header and the CP, turn each factor's Min/Avg/Max/Cou
into floats and its Flag into text, COPY one row per factor into a table keyed like `data` (MN,
DataTime, CN, factor; a plain table, not partitioned), and write the 9014 once its batch committed.

Everything else the gateway does is left out on purpose: the raw archive, device registration,
sessions and passwords, tolerances of odd firmware, typed errors, resends and their history, the
device state, gaps, rules and alerts, logs and most metrics. Bad frames are dropped without a
word. It is a measuring stick, not a gateway: never point a DAS at it.
"""

import argparse
import asyncio
import contextlib
import os
import signal
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import cast

import asyncpg
import uvloop
from aiohttp import web

from hj212gw.protocol.crc import crc16
from hj212gw.protocol.framing import encode_frame

TABLE = "floor_data"
CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    mn text COLLATE "C" NOT NULL, cn text COLLATE "C" NOT NULL, data_time timestamptz NOT NULL,
    factor text COLLATE "C" NOT NULL, min double precision, avg double precision, max double precision,
    cou double precision, flag text, qn text, received_at timestamptz NOT NULL,
    PRIMARY KEY (mn, data_time, cn, factor))"""
COLUMNS = ("mn", "cn", "data_time", "factor", "min", "avg", "max", "cou", "flag", "qn", "received_at")
SLOTS = {"Min": 0, "Avg": 1, "Max": 2, "Cou": 3, "Rtd": 1}
DEVICE_TZ = timezone(timedelta(hours=8))
WRITERS = 2  # batches committing at once, per worker
MAX_BATCH_PACKETS = 1000


class Counters:
    def __init__(self) -> None:
        self.acks = 0
        self.frames_ok = 0
        self.batches = 0
        self.batch_rows = 0
        self.commit_s = 0.0
        self.within_30ms = 0

    def text(self) -> str:
        return "\n".join(
            [
                f'hj212gw_replies_total{{cn="9014"}} {self.acks}',
                f'hj212gw_frames_total{{result="ok"}} {self.frames_ok}',
                f"hj212gw_batch_rows_sum {self.batch_rows}",
                f"hj212gw_batch_rows_count {self.batches}",
                f"hj212gw_batch_commit_seconds_sum {self.commit_s}",
                f'hj212gw_ack_latency_seconds_bucket{{le="0.03"}} {self.within_30ms}',
                f"hj212gw_ack_latency_seconds_count {self.acks}",
                "",
            ]
        )


_TIMES: dict[str, datetime] = {}


def data_time(text: str) -> datetime:
    known = _TIMES.get(text)
    if known is None:
        if len(_TIMES) > 4096:
            _TIMES.clear()
        known = _TIMES[text] = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=DEVICE_TZ).astimezone(UTC)
    return known


def rows_of(segment: str, received_at: datetime) -> tuple[list[tuple[object, ...]], bytes] | None:
    """The rows of one data upload and its 9014; None if it is not one."""
    head, found, cp = segment.partition("CP=&&")
    if not found or not cp.endswith("&&"):
        return None
    fields = dict(item.split("=", 1) for item in head.split(";") if "=" in item)
    mn, cn, qn = fields.get("MN"), fields.get("CN"), fields.get("QN")
    if not mn or not cn or not qn:
        return None
    values: dict[str, list[object]] = {}
    when = None
    for item in cp[:-2].replace(",", ";").split(";"):
        name, _, text = item.partition("=")
        code, dash, suffix = name.partition("-")
        if not dash:
            if name == "DataTime":
                when = data_time(text)
            continue
        row = values.get(code)
        if row is None:
            row = values[code] = [None, None, None, None, None]
        slot = SLOTS.get(suffix)
        if slot is not None:
            row[slot] = float(text)
        elif suffix == "Flag":
            row[4] = text
    if when is None or not values:
        return None
    rows = [(mn, cn, when, code, *row, qn, received_at) for code, row in values.items()]
    ack = encode_frame(f"QN={qn};ST=91;CN=9014;PW={fields.get('PW', '')};MN={mn};Flag=4;CP=&&&&".encode())
    return rows, ack


class Writer:
    """Collects packets; WRITERS tasks each COPY what has come and write the acks after COMMIT."""

    def __init__(self, pool: asyncpg.Pool, counters: Counters) -> None:
        self.pool = pool
        self.counters = counters
        self.pending: list[tuple[asyncio.Transport, list[tuple[object, ...]], bytes, float]] = []
        self.wake = asyncio.Event()

    def submit(self, transport: asyncio.Transport, rows: list[tuple[object, ...]], ack: bytes, at: float) -> None:
        self.pending.append((transport, rows, ack, at))
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            batch, self.pending = self.pending[:MAX_BATCH_PACKETS], self.pending[MAX_BATCH_PACKETS:]
            if not self.pending:
                self.wake.clear()
            if not batch:
                continue
            records = [row for _t, rows, _a, _at in batch for row in rows]
            started = time.perf_counter()
            try:
                async with self.pool.acquire() as conn:
                    await conn.copy_records_to_table(TABLE, records=records, columns=COLUMNS)
            except asyncpg.PostgresError:
                continue  # a repeated key: the batch is not acked (its DAS would send it again)
            done = time.perf_counter()
            counters = self.counters
            counters.batches += 1
            counters.batch_rows += len(records)
            counters.commit_s += done - started
            for transport, _rows, ack, at in batch:
                if not transport.is_closing():
                    transport.write(ack)
                    counters.acks += 1
                    if done - at <= 0.03:
                        counters.within_30ms += 1


class Das(asyncio.Protocol):
    def __init__(self, writer: Writer, counters: Counters) -> None:
        self.writer = writer
        self.counters = counters
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        at = time.perf_counter()
        now = datetime.now(UTC)
        while (end := buffer.find(b"\r\n")) >= 0:
            frame, buffer = buffer[:end], buffer[end + 2 :]
            if len(frame) < 10 or frame[:2] != b"##" or not frame[2:6].isdigit():
                continue
            segment = frame[6:-4]
            if int(frame[2:6]) != len(segment):
                continue
            try:
                if crc16(segment) != int(frame[-4:], 16):
                    continue
                parsed = rows_of(segment.decode(), now)
            except ValueError:
                continue
            if parsed is not None and self.transport is not None:
                self.counters.frames_ok += 1
                self.writer.submit(self.transport, *parsed, at)
        self.buffer = buffer


async def serve(args: argparse.Namespace, worker: int) -> None:
    counters = Counters()
    settings = {"search_path": args.database_schema}
    pool = asyncpg.create_pool(args.database_url, min_size=WRITERS, max_size=WRITERS, server_settings=settings)
    async with pool:
        writer = Writer(pool, counters)
        tasks = [asyncio.create_task(writer.run()) for _ in range(WRITERS)]
        host, port = args.listen.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Das(writer, counters), host, int(port), reuse_port=True, backlog=4096)
        app = web.Application()
        app.router.add_get("/readyz", lambda _r: web.Response(text="ready"))
        app.router.add_get("/metrics", lambda _r: web.Response(text=counters.text()))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        http_host, http_port = args.http.rsplit(":", 1)
        await web.TCPSite(runner, http_host, int(http_port) + worker).start()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        server.close()
        for task in tasks:
            task.cancel()
        await runner.cleanup()
        for task in done - {stopping}:
            task.result()  # a writer died (it never returns): its error ends the floor, in its log


async def create_table(args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(args.database_url)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{args.database_schema}"')
        await conn.execute(f'SET search_path TO "{args.database_schema}"')
        await conn.execute(CREATE_SQL)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--http", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--database-schema", required=True)
    args = parser.parse_args()
    asyncio.run(create_table(args))  # before the workers start
    children = []
    worker = 0
    for index in range(1, int(os.environ.get("HJ212GW_WORKERS", "1"))):
        pid = os.fork()
        if pid == 0:
            children, worker = [], index
            break
        children.append(pid)
    try:
        uvloop.run(serve(args, worker))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
