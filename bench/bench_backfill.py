"""The automatic backfill after a network outage, at the default limits (issue #12).

`--devices` DAS (default 1,000) that each lost 24 hours of hour data (2061) and minute data (2051,
MinInterval 10) connect to a gateway subprocess at once and send their latest packets; the
gateway's gaps open, and its backfill fetches the missing periods (default: 10 fetches/s, 30 s
settle, chunks of 24 hours and 120 minute periods). Each scripted DAS answers a fetch as a real
one does: 9011, one packet per period with its own QN, each waiting for its 9014 (one in flight),
then 9012. Meanwhile `--live` devices (default 200) send a real-time packet (2011) every second
and time their acks.

Reports the time from the outage devices' connect until every gap is filled, the fetches sent,
and the live devices' ack p50/p99 before the outage devices arrive and during the backfill (the
same run).

    HJ212GW_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m bench.bench_backfill --devices 1000 --live 200
"""

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from bench.harness import GatewayProcess, _drop_schema
from hj212gw.protocol.builders import build_execution_result, build_request_reply
from hj212gw.protocol.constants import ExeRtn, QnRtn
from hj212gw.protocol.cp import HistoryRequestCp
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.framing import FrameBuffer, encode_frame
from hj212gw.protocol.models import Packet, parse_hj_time

SHANGHAI = ZoneInfo("Asia/Shanghai")
GROUPS = "a34013-Avg=12.3,a34013-Flag=N;a21026-Avg=45.6,a21026-Flag=N;a21002-Avg=78.9,a21002-Flag=N"
STEP = {"2061": timedelta(hours=1), "2051": timedelta(minutes=10)}


def _packet(mn: str, qn: int, cn: str, data_time: datetime) -> bytes:
    text = data_time.strftime("%Y%m%d%H%M%S")
    cp = f"DataTime={text};{GROUPS}"
    return encode_frame(f"QN={text}{qn % 1000:03d};ST=31;CN={cn};PW=123456;MN={mn};Flag=5;CP=&&{cp}&&".encode())


class Das:
    """One scripted DAS on one connection: packets one at a time, each waiting for its reply."""

    def __init__(self, mn: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.mn, self.reader, self.writer = mn, reader, writer
        self.frames = FrameBuffer()
        self.qn = 0

    async def next_packet(self) -> Packet:
        while True:
            frame = self.frames.next_frame()
            if frame is not None:
                return decode_frame(frame)
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("gateway closed")
            self.frames.feed(data)

    async def upload(self, cn: str, data_time: datetime) -> float:
        """Send one packet; the seconds until its 9014."""
        self.qn += 1
        started = time.perf_counter()
        self.writer.write(_packet(self.mn, self.qn, cn, data_time))
        while (await self.next_packet()).cn != "9014":
            pass
        return time.perf_counter() - started

    async def answer_fetches(self) -> None:
        """Answer every history fetch with every period it asks for (a DAS that kept its data)."""
        while True:
            request = await self.next_packet()
            if not isinstance(request.data, HistoryRequestCp) or request.cn not in STEP:
                continue
            self.writer.write(build_request_reply(request, QnRtn.READY))
            begin = parse_hj_time(request.data.begin_time or "")
            end = parse_hj_time(request.data.end_time or "")
            moment = begin
            while moment is not None and end is not None and moment <= end:
                await self.upload(request.cn, moment)
                moment += STEP[request.cn]
            self.writer.write(build_execution_result(request, ExeRtn.SUCCESS))


async def _connect(port: int, mn: str) -> Das:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Das(mn, reader, writer)


async def _outage_device(port: int, mn: str, now: datetime) -> Das:
    """Connect and send what frames a 24-hour hole: hours and minutes before and after it."""
    das = await _connect(port, mn)
    last_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    for moment in (last_hour - timedelta(hours=25), last_hour):
        await das.upload("2061", moment)
    last_minute = now.replace(minute=now.minute - now.minute % 10, second=0, microsecond=0) - timedelta(minutes=10)
    before = last_minute - timedelta(hours=24, minutes=10)
    for moment in (before - timedelta(minutes=20), before - timedelta(minutes=10), before, last_minute):
        await das.upload("2051", moment)  # three steps of 10 minutes first: the MinInterval is learned
    return das


async def _live_device(port: int, mn: str, latencies: list[tuple[float, float]], stop: asyncio.Event) -> None:
    das = await _connect(port, mn)
    while not stop.is_set():
        latency = await das.upload("2011", datetime.now(SHANGHAI).replace(tzinfo=None, microsecond=0))
        latencies.append((time.monotonic(), latency))
        await asyncio.sleep(1.0)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else float("nan")


async def _run(args: argparse.Namespace, port: int, dsn: str, schema: str) -> dict[str, object]:
    latencies: list[tuple[float, float]] = []
    stop = asyncio.Event()
    live = [asyncio.create_task(_live_device(port, f"LIVE{n:020d}", latencies, stop)) for n in range(args.live)]
    await asyncio.sleep(args.baseline_s)
    started = time.monotonic()
    now = datetime.now(SHANGHAI).replace(tzinfo=None)
    devices = await asyncio.gather(*(_outage_device(port, f"GAP{n:021d}", now) for n in range(args.devices)))
    answering = [asyncio.create_task(das.answer_fetches()) for das in devices]
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        while True:
            await asyncio.sleep(2.0)
            left = await conn.fetchval("SELECT count(*) FROM gaps WHERE status IN ('open', 'requested')")
            opened = await conn.fetchval("SELECT count(*) FROM gaps")
            if opened and not left:
                break
            if time.monotonic() - started > args.timeout_s:
                raise TimeoutError(f"{left} of {opened} gaps still open after {args.timeout_s} s")
        completed = time.monotonic() - started
        fetches = await conn.fetchval("SELECT count(*) FROM commands WHERE purpose = 'backfill'")
        filled = await conn.fetchval("SELECT count(*) FROM gaps WHERE status = 'filled'")
        backfilled = await conn.fetchval("SELECT count(*) FROM data WHERE resend")
    finally:
        await conn.close()
        stop.set()
        for task in (*live, *answering):
            task.cancel()
        await asyncio.gather(*live, *answering, return_exceptions=True)
    before = [lat for at, lat in latencies if at < started]
    during = [lat for at, lat in latencies if started + 30 <= at <= started + completed]  # fetching
    return {
        "devices": args.devices,
        "completed_s": round(completed, 1),
        "fetches": fetches,
        "gaps_filled": filled,
        "backfilled_rows": backfilled,
        "live_before": {"acks": len(before), "p50_ms": _pct(before, 0.5), "p99_ms": _pct(before, 0.99)},
        "live_during": {"acks": len(during), "p50_ms": _pct(during, 0.5), "p99_ms": _pct(during, 0.99)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("HJ212GW_BENCH_DATABASE_URL"))
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--live", type=int, default=200)
    parser.add_argument("--baseline-s", type=float, default=30.0)
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("--database-url or HJ212GW_BENCH_DATABASE_URL is required")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    env = dict(item.split("=", 1) for item in args.gateway_env)
    with tempfile.TemporaryDirectory() as workdir:
        gateway = GatewayProcess(args.database_url, schema, None, env, Path(workdir))
        try:
            gateway.wait_ready()
            result = asyncio.run(_run(args, gateway.port, args.database_url, schema))
        finally:
            gateway.stop()
            asyncio.run(_drop_schema(args.database_url, schema))
    print(result)
    print(
        f"{args.devices} devices x 24 h: all gaps filled {result['completed_s']} s after they connected "
        f"({result['fetches']} fetches); live acks p50/p99 before "
        f"{result['live_before']['p50_ms']}/{result['live_before']['p99_ms']} ms, during "  # type: ignore[index]
        f"{result['live_during']['p50_ms']}/{result['live_during']['p99_ms']} ms"  # type: ignore[index]
    )


if __name__ == "__main__":
    main()
