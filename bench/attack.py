"""Attack benchmark: hostile traffic against a real `hj212gw serve` while normal devices keep sending.

    .venv/bin/python -m bench.attack [--json] [--normal 200] [--rate 400] [--mix-seconds 15]
                                     [--hostile 50] [--budget-connections 1000] [--database-url DSN]

Each phase starts its own gateway subprocess on a fresh schema (bench.bench_gateway.GatewayProcess,
default settings apart from the benchmark's connection limits), so no phase inherits another's
backlog, heap or partitions. In each, `--normal` simulated DAS units (bench.loadgen.Device: one
packet in flight each, one MN and one PW each) send at `--rate` packets/s in total: a baseline
without attack, one phase per hostile mix, then the memory-budget phase (`--budget-connections`
hostile connections, every behaviour at once). The
hostile traffic comes from a worker subprocess (`--worker MIX`, this module), so its CPU does
not delay the normal devices' reads. All traffic goes to 127.0.0.1; every hostile loop is
bounded in time (the phase) and in count (bytes or packets per connection).

Mixes: long_fields (MN, PW, QN, factor codes of about 3,000 characters), split_flood (split
parts that never complete), data_flood (valid data packets sent without waiting for acks),
not_reading (requests that make replies, never read), slowloris (one byte every few seconds,
with and without a valid first packet), wrong_pw (packets for pinned MNs with wrong PWs),
far_future (DataTimes in random months up to year 9999), garbage (random bytes). Reported per
phase: the normal devices' ack p50/p99 and acks, the gateway's RSS peak (the gateway process
and its children), and the connections closed and frames rejected by reason (from /metrics);
at the end, acked vs. stored (PostgreSQL) for the normal devices.
Prints a summary on stderr, and with --json one JSON object on stdout.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness import GatewayProcess, children_of, log, machine, rss_kb
from bench.idle import raise_fd_limit
from bench.loadgen import BASE_TIME, Device, Stats, _pace, _pct, mn_for
from hj212gw.protocol.framing import encode_frame

ROOT = Path(__file__).resolve().parent.parent
MIXES = ("long_fields", "split_flood", "data_flood", "not_reading", "slowloris", "wrong_pw", "far_future", "garbage")
VICTIM_PW = "765432"
PER_CONNECTION_BYTES = 64 << 20  # every hostile connection stops after sending this much


# ---- the gateway side: RSS and /metrics -----------------------------------------------------


def rss_tree_kb(pid: int) -> int:
    """RSS of the gateway process and its children (workers), in KB; 0 once it is gone."""
    total = 0
    for each in (pid, *children_of(pid)):
        try:
            total += rss_kb(each)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def scrape(gw: GatewayProcess, prefixes: tuple[str, ...]) -> dict[str, float]:
    """Samples whose name starts with one of `prefixes`, summed over the gateway's HTTP ports."""
    found: dict[str, float] = {}
    for port in gw.http_ports():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(prefixes):
                    name, _, value = line.rpartition(" ")
                    found[name] = found.get(name, 0.0) + float(value)
    return found


def by_label(before: dict[str, float], after: dict[str, float], metric: str) -> dict[str, int]:
    """`{label value: increase}` of a counter with one label between two scrapes."""
    out = {}
    for name, value in after.items():
        if name.startswith(metric + "{"):
            delta = value - before.get(name, 0.0)
            if delta:
                out[name.split('"')[1]] = int(delta)
    return out


class RssWatch:
    """Samples the gateway's RSS every 100 ms; `peak()` since the last `reset()`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak = 0

    def reset(self) -> None:
        self._peak = rss_tree_kb(self.pid)

    def peak_mb(self) -> float:
        return round(self._peak / 1024, 1)

    async def run(self) -> None:
        while True:
            rss = rss_tree_kb(self.pid)
            self._peak = max(self._peak, rss)
            await asyncio.sleep(0.1)


# ---- hostile behaviours (the worker subprocess) ---------------------------------------------

HostileLoop = Callable[["Hostile"], Awaitable[None]]


class Hostile:
    """One hostile connection slot: reconnects when the gateway closes it, until the deadline."""

    def __init__(self, index: int, mix: int, target: tuple[str, int], deadline: float, victims: list[str],
                 run_id: int) -> None:  # fmt: skip
        self.index = index
        self.host, self.port = target
        self.deadline = deadline
        self.victims = victims
        self.mn = f"H{mix:X}{run_id:06X}{index:016X}"[:24]  # one MN per slot and mix: no replacing
        self.rng = random.Random(run_id * 100_003 + index)
        self.sent = 0
        self.connects = 0
        self.k = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def going(self) -> bool:
        return self.left() > 0 and self.sent < PER_CONNECTION_BYTES

    async def open(self, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        self.connects += 1
        return await asyncio.open_connection(sock=sock)

    def qn(self) -> str:
        self.k += 1
        return f"20260101000000{self.k % 1000:03d}"

    def packet(self, *, mn: str | None = None, pw: str = "123456", data_time: str = "20260101000000",
               items: str = "a34004-Avg=1.0,a34004-Flag=N", qn: str | None = None, flag: int = 5,
               extra: str = "") -> bytes:  # fmt: skip
        segment = (f"QN={qn or self.qn()};ST=22;CN=2051;PW={pw};MN={mn or self.mn};Flag={flag};{extra}"
                   f"CP=&&DataTime={data_time};{items}&&")  # fmt: skip
        return encode_frame(segment.encode())

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.sent += len(data)
        async with asyncio.timeout(max(0.01, self.left())):
            await writer.drain()


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def _open_draining(h: Hostile) -> tuple[asyncio.StreamWriter, asyncio.Task[None]] | None:
    """A new connection whose replies are read and dropped; None (after a pause) if it failed."""
    try:
        reader, writer = await h.open()
    except OSError:
        await asyncio.sleep(0.2)
        return None
    return writer, asyncio.create_task(_drain(reader))


async def _talk(h: Hostile, make: Callable[[], bytes], interval_s: float) -> None:
    """Connect, send `make()` every `interval_s` reading (and dropping) the replies; reconnect."""
    while h.going():
        opened = await _open_draining(h)
        if opened is None:
            continue
        writer, drain = opened
        try:
            while h.going() and not drain.done():
                await h.send(writer, make())
                await asyncio.sleep(interval_s)
        except (OSError, TimeoutError):
            pass
        finally:
            drain.cancel()
            writer.close()
        await asyncio.sleep(0.05)


def _long(h: Hostile, n: int = 3000) -> str:
    return "".join(h.rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=n))


async def long_fields(h: Hostile) -> None:
    """About 3,000 random characters in one of MN, PW, QN or a factor code (issue #9, finding 1)."""

    def make() -> bytes:
        field = h.rng.choice(("mn", "pw", "qn", "code"))
        long = _long(h)
        if field == "code":
            return h.packet(items=f"{long}-Avg=1.0,{long[:8]}-Flag=N")
        return h.packet(**{field: long})

    await _talk(h, make, 0.05)


async def split_flood(h: Hostile) -> None:
    """Split parts (Flag D bit, PNUM=250) of transfers that never complete, ~3 KB each."""
    items = ";".join(f"a{i:05d}-Avg=1.0,a{i:05d}-Flag=N" for i in range(120))

    def make() -> bytes:
        h.k += 1
        transfer = h.k // 249
        pno = h.k % 249 + 1  # never part 250: no transfer completes
        return h.packet(
            qn=f"20260101{transfer % 1_000_000:06d}000",
            flag=7,
            extra=f"PNUM=250;PNO={pno};",
            data_time=f"2026010{1 + transfer % 9}000000",
            items=items,
        )

    await _talk(h, make, 0.02)


async def data_flood(h: Hostile) -> None:
    """Valid data packets (10 factors) as fast as the gateway reads them, acks read but never waited for."""
    items = ";".join(f"a{i:05d}-Avg=1.0,a{i:05d}-Flag=N" for i in range(10))

    def make() -> bytes:
        h.k += 1
        minute = h.k % 1_000_000
        return h.packet(data_time=f"202601{1 + minute // 1440 % 28:02d}{minute // 60 % 24:02d}{minute % 60:02d}00",
                        items=items)  # fmt: skip

    await _talk(h, make, 0.0)


async def not_reading(h: Hostile) -> None:
    """Heartbeats that ask for a reply (9015, A=1), never reading the replies, 4 KB window."""
    beat = encode_frame(f"QN=20260101000000001;ST=22;CN=9015;PW=123456;MN={h.mn};Flag=5;CP=&&&&".encode())
    burst = beat * 64
    while h.going():
        try:
            _reader, writer = await h.open(rcvbuf=4096)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        try:
            while h.going():
                await h.send(writer, burst)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.transport.abort()
        await asyncio.sleep(0.05)


async def slowloris(h: Hostile, drip_s: float = 2.0) -> None:
    """One byte every `drip_s`: odd slots after a valid first packet (a frame that never ends),
    even slots without one (whitespace, never a frame)."""
    while h.going():
        opened = await _open_draining(h)
        if opened is None:
            continue
        writer, drain = opened
        try:
            if h.index % 2:
                await h.send(writer, h.packet())
                drip = b"##4096QN=" + b"1" * 4200
            else:
                drip = b" " * 100_000
            for byte in drip:
                if not h.going() or drain.done():
                    break
                await h.send(writer, bytes([byte]))
                await asyncio.sleep(drip_s)
        except (OSError, TimeoutError):
            pass
        finally:
            drain.cancel()
            writer.close()
        await asyncio.sleep(0.05)


async def wrong_pw(h: Hostile) -> None:
    """Packets for pinned MNs (the victims) with wrong PWs; the gateway closes, we come back."""

    def make() -> bytes:
        return h.packet(mn=h.rng.choice(h.victims), pw=f"{h.rng.randrange(10**6):06d}")

    await _talk(h, make, 0.05)


async def far_future(h: Hostile) -> None:
    """Valid packets whose DataTime is a random month between 2030 and 9999."""

    def make() -> bytes:
        return h.packet(data_time=f"{h.rng.randrange(2030, 10000):04d}{h.rng.randrange(1, 13):02d}01000000")

    await _talk(h, make, 0.05)


async def garbage(h: Hostile) -> None:
    """Random bytes with a `##` now and then; the gateway closes after its rejects, we come back."""

    def make() -> bytes:
        junk = bytearray(h.rng.randbytes(4096))
        for _ in range(4):
            at = h.rng.randrange(4090)
            junk[at : at + 6] = b"##%04d" % h.rng.randrange(10000)
        return bytes(junk)

    await _talk(h, make, 0.02)


BEHAVIOURS: dict[str, HostileLoop] = {
    "long_fields": long_fields,
    "split_flood": split_flood,
    "data_flood": data_flood,
    "not_reading": not_reading,
    "slowloris": slowloris,
    "wrong_pw": wrong_pw,
    "far_future": far_future,
    "garbage": garbage,
}


async def worker(args: argparse.Namespace) -> dict[str, Any]:
    """`--worker MIX`: run one mix (or `budget`: every behaviour in turn) for `--seconds`."""
    host, _, port = args.target.rpartition(":")
    deadline = time.monotonic() + args.seconds
    victims = args.victims.split(",") if args.victims else [mn_for(0, 0)]
    names = list(MIXES) if args.worker == "budget" else [args.worker]
    mix = len(MIXES) if args.worker == "budget" else MIXES.index(args.worker)
    target = (host, int(port))
    slots = [Hostile(i, mix, target, deadline, victims, args.run_id) for i in range(args.connections)]
    tasks = []
    for i, slot in enumerate(slots):
        tasks.append(asyncio.create_task(BEHAVIOURS[names[i % len(names)]](slot)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # about 2,000 connections a second
    await asyncio.wait(tasks, timeout=args.seconds + 5)
    for task in tasks:
        task.cancel()
    return {"sent_bytes": sum(s.sent for s in slots), "connects": sum(s.connects for s in slots)}


# ---- the run: normal devices through every phase --------------------------------------------


class Fleet:
    """The normal devices (bench.loadgen.Device at a fixed total rate) and the pinned victims."""

    def __init__(self, host: str, port: int, count: int, rate: float, run_id: int) -> None:
        self.host, self.port, self.rate, self.run_id = host, port, rate, run_id
        self.stats = Stats()
        self.devices = [Device(i, run_id, self.stats, 1, False) for i in range(count)]
        self.victims: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.victim_mns = [f"VI{run_id:06X}{i:016X}"[:24] for i in range(20)]

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for device in self.devices:
            await loop.create_connection(lambda device=device: device, self.host, self.port)  # type: ignore[misc]
            device.start()
        for mn in self.victim_mns:  # one acked packet each: their PW is now the one on record
            reader, writer = await asyncio.open_connection(self.host, self.port)
            seg = f"QN=20260101000000001;ST=22;CN=2051;PW={VICTIM_PW};MN={mn};Flag=5;CP=&&DataTime=20260101000000&&"
            writer.write(encode_frame(seg.encode()))
            await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
            self.victims.append((reader, writer))

    def victims_evicted(self) -> int:
        """Pinned devices whose connection the gateway closed (they send nothing after their packet)."""
        return sum(1 for reader, writer in self.victims if reader.at_eof() or writer.transport.is_closing())

    def disconnected(self) -> int:
        return sum(1 for d in self.devices if d.transport is None)

    async def phase(self, seconds: float) -> dict[str, Any]:
        """Offer the rate for `seconds`; the acks and their latency in that window."""
        mark, acked0 = len(self.stats.latencies), self.stats.acked
        await _pace(self.devices, self.rate, asyncio.get_running_loop().time() + seconds)
        lat = sorted(self.stats.latencies[mark:])
        return {
            "acked": self.stats.acked - acked0,
            "ack_p50_ms": _pct(lat, 0.5),
            "ack_p99_ms": _pct(lat, 0.99),
            "ack_max_ms": _pct(lat, 1.0),
            "normal_disconnected": self.disconnected(),
        }

    async def finish(self, timeout_s: float = 30.0) -> None:
        """Stop sending, wait for the acks in flight, close."""
        for device in self.devices:
            device.stop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(d.in_flight and d.transport for d in self.devices):
            await asyncio.sleep(0.1)
        for device in self.devices:
            if device.transport is not None:
                device.transport.close()
        for _reader, writer in self.victims:
            writer.close()


async def start_worker(
    gw: GatewayProcess, mix: str, connections: int, seconds: float, fleet: Fleet
) -> asyncio.subprocess.Process:
    cmd = [sys.executable, "-m", "bench.attack", "--worker", mix, "--target", f"127.0.0.1:{gw.port}",
           "--connections", str(connections), "--seconds", str(seconds), "--run-id", str(fleet.run_id),
           "--victims", ",".join(fleet.victim_mns)]  # fmt: skip
    return await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE)


async def phase(args: argparse.Namespace, mix: str | None, connections: int, seconds: float,
                workdir: Path) -> dict[str, Any]:  # fmt: skip
    """A fresh gateway on a fresh schema (so no phase inherits another's backlog, heap or
    partitions): the fleet connects and warms up, then sends for `seconds` while `mix` runs
    (None: the baseline); then the write queue drains, the fleet's last acks arrive, and what
    PostgreSQL stored is counted."""
    schema = f"attack_{uuid.uuid4().hex[:10]}"
    env = dict(item.split("=", 1) for item in args.gateway_env)
    gw = GatewayProcess(args.database_url, schema, args.gateway_src, env, workdir)
    result: dict[str, Any] = {"mix": mix or "baseline", "hostile_connections": connections if mix else 0}
    try:
        await asyncio.to_thread(gw.wait_ready)
        result.update(await drive(gw, args, mix, connections, seconds))
        result["normal_stored"] = await stored_packets(args.database_url, schema, result.pop("fleet"))
    finally:
        await asyncio.to_thread(gw.stop)
        result["gateway_exit_code"] = gw.proc.returncode
        await drop_schema(args.database_url, schema)
    log(f"{result['mix']:12s} x{connections if mix else 0}: normal p99 {result.get('ack_p99_ms')} ms "
        f"({result.get('acked')} acks, acked {result.get('normal_acked')} stored {result.get('normal_stored')}), "
        f"gateway RSS peak {result.get('gateway_rss_peak_mb')} MB, closed {result.get('closed')}")  # fmt: skip
    return result


async def drive(gw: GatewayProcess, args: argparse.Namespace, mix: str | None, connections: int,
                seconds: float) -> dict[str, Any]:  # fmt: skip
    rss = RssWatch(gw.pid)
    watcher = asyncio.create_task(rss.run())
    fleet = Fleet("127.0.0.1", gw.port, args.normal, args.rate, random.randrange(1 << 24))
    await fleet.connect()
    await fleet.phase(args.warmup)
    wanted = ("hj212gw_connections_closed_total", "hj212gw_frames_rejected_total")
    before = await asyncio.to_thread(scrape, gw, wanted)
    rss.reset()
    start_mb = rss.peak_mb()
    worker = await start_worker(gw, mix, connections, seconds, fleet) if mix else None
    result = await fleet.phase(seconds)
    out = (await asyncio.wait_for(worker.communicate(), seconds + 60))[0] if worker else b""
    drain_s = await queue_drained(gw, timeout_s=args.drain_seconds)
    after = await asyncio.to_thread(scrape, gw, wanted)
    evicted = fleet.victims_evicted()  # before finish() closes them
    await fleet.finish(timeout_s=args.drain_seconds)
    watcher.cancel()
    lines = out.decode().strip().splitlines()
    result.update(
        seconds=seconds,
        gateway_rss_start_mb=start_mb,
        gateway_rss_peak_mb=rss.peak_mb(),
        closed=by_label(before, after, "hj212gw_connections_closed_total"),
        rejected=by_label(before, after, "hj212gw_frames_rejected_total"),
        worker=json.loads(lines[-1]) if lines else None,
        victims_evicted=evicted,
        queue_drain_s=drain_s,
        normal_acked=fleet.stats.acked,
        fleet=fleet,
    )
    return result


async def queue_drained(gw: GatewayProcess, timeout_s: float) -> float | None:
    """Seconds until the write queue is empty (None: not within `timeout_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        depth = await asyncio.to_thread(scrape, gw, ("hj212gw_write_queue_items",))
        if not any(depth.values()):
            return round(time.monotonic() - started, 1)
        await asyncio.sleep(0.5)
    return None


async def stored_packets(dsn: str, schema: str, fleet: Fleet) -> int:
    """Distinct (MN, DataTime) of the fleet's devices in `data`: one per stored packet. The time
    range keeps PostgreSQL to the partitions they wrote (far_future creates thousands)."""
    last = BASE_TIME + timedelta(minutes=max(d.k for d in fleet.devices), days=2)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        sql = (
            "SELECT count(*) FROM (SELECT DISTINCT mn, data_time FROM data"
            " WHERE mn LIKE $1 AND data_time >= $2 AND data_time < $3) AS p"
        )
        start = (BASE_TIME - timedelta(days=2)).replace(tzinfo=UTC)
        return int(await conn.fetchval(sql, f"BE{fleet.run_id:06X}%", start, last.replace(tzinfo=UTC)))
    finally:
        await conn.close()


async def drop_schema(dsn: str, schema: str) -> None:
    """Drop a schema a hundred partitions at a time: at once, thousands of partitions need more
    locks than one transaction may hold (max_locks_per_transaction)."""
    sql = (
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
        " AND c.relkind IN ('r', 'p') LIMIT 100"  # not the partitions of partitioned indexes
    )
    conn = await asyncpg.connect(dsn)
    try:
        while names := [r["relname"] for r in await conn.fetch(sql, schema)]:
            async with conn.transaction():
                for name in names:
                    await conn.execute(f'DROP TABLE IF EXISTS "{schema}"."{name}" CASCADE')
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    baseline = await phase(args, None, 0, args.baseline_seconds, workdir)
    mixes = [await phase(args, mix, args.hostile, args.mix_seconds, workdir) for mix in args.mixes]
    budget = None
    if args.budget_connections:
        budget = await phase(args, "budget", args.budget_connections, args.budget_seconds, workdir)
    phases = [baseline, *mixes, *([budget] if budget else [])]
    return {
        "baseline": baseline,
        "mixes": mixes,
        "budget": budget,
        "gateway_rss_peak_mb": max(p["gateway_rss_peak_mb"] for p in phases),
        "normal_acked": sum(p["normal_acked"] for p in phases),
        "normal_stored": sum(p["normal_stored"] for p in phases),
        "acked_equals_stored": all(p["normal_acked"] == p["normal_stored"] for p in phases),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the report gives the median of each figure")
    parser.add_argument("--database-url", default=os.environ.get("HJ212GW_BENCH_DATABASE_URL")
                        or os.environ.get("HJ212GW_TEST_DATABASE_URL"))  # fmt: skip
    parser.add_argument("--normal", type=int, default=200, help="normal devices (one packet in flight each)")
    parser.add_argument("--rate", type=float, default=400.0, help="packets/s offered by the normal devices in all")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of normal traffic before each phase")
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--mix-seconds", type=float, default=15.0)
    parser.add_argument(
        "--drain-seconds", type=float, default=60.0, help="after a phase, wait this long for the queue and last acks"
    )
    parser.add_argument("--hostile", type=int, default=50, help="hostile connections per mix")
    parser.add_argument("--mixes", type=lambda s: s.split(","), default=list(MIXES), help=",".join(MIXES))
    parser.add_argument("--budget-connections", type=int, default=1000, help="0: no memory-budget phase")
    parser.add_argument("--budget-seconds", type=float, default=40.0)
    parser.add_argument("--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway")
    parser.add_argument("--gateway-src", type=Path, help="PYTHONPATH for the gateway (e.g. a baseline worktree)")
    # The hostile worker subprocess.
    parser.add_argument("--worker", choices=[*MIXES, "budget"], help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--victims", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.mixes) - set(MIXES)
    if unknown:
        parser.error(f"unknown mixes: {', '.join(sorted(unknown))}")
    return args


def _loop_run(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    raise_fd_limit()  # inherited by the gateway and the worker
    if args.worker:
        print(json.dumps(_loop_run(worker(args))), flush=True)
        return None
    if not args.database_url:
        raise SystemExit(
            "bench.attack needs --database-url (or HJ212GW_BENCH_DATABASE_URL / HJ212GW_TEST_DATABASE_URL)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="hj212gw-attack-"))
    settings = {k: v for k, v in vars(args).items() if k in _REPORTED}
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "settings": settings}
    runs = []
    try:
        for _ in range(args.repeat):
            runs.append(_loop_run(run(args, workdir)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.update(median_of(runs))
    report.update(
        normal_acked=sum(r["normal_acked"] for r in runs),
        normal_stored=sum(r["normal_stored"] for r in runs),
        acked_equals_stored=all(r["acked_equals_stored"] for r in runs),
        runs=runs,
    )
    log(summary(report))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    return report


def median_of(values: list[Any]) -> Any:
    """Field by field median of equally shaped reports (numbers; dicts per key, a missing count 0)."""
    first = values[0]
    if isinstance(first, dict):
        keys = dict.fromkeys(k for v in values for k in v)
        counts = all(isinstance(x, int | float) for v in values for x in v.values())
        return {k: median_of([v.get(k, 0 if counts else None) for v in values]) for k in keys}
    if isinstance(first, list):
        return [median_of(list(items)) for items in zip(*values, strict=True)]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers and len(numbers) == len([v for v in values if v is not None]):
        return round(statistics.median(numbers), 2)
    return first


def summary(report: dict[str, Any]) -> str:
    """The medians as a Markdown table (what docs/reliability.md quotes)."""
    rows = ["| phase | hostile | normal acks | ack p99 ms | RSS start MB | RSS peak MB | closed by reason |",
            "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for p in [report["baseline"], *report["mixes"], *([report["budget"]] if report["budget"] else [])]:
        closed = ", ".join(f"{k} {v:g}" for k, v in sorted(p["closed"].items())) or "-"
        rows.append(f"| {p['mix']} | {p['hostile_connections']:g} | {p['acked']:g} | {p['ack_p99_ms']} | "
                    f"{p['gateway_rss_start_mb']} | {p['gateway_rss_peak_mb']} | {closed} |")  # fmt: skip
    rows.append(f"\nacked {report['normal_acked']}, stored {report['normal_stored']} over {len(report['runs'])} run(s)")
    return "\n".join(rows)


_REPORTED = ("normal", "rate", "warmup", "baseline_seconds", "mix_seconds", "hostile", "mixes", "budget_connections",
             "budget_seconds", "gateway_env")  # fmt: skip


if __name__ == "__main__":
    main()
