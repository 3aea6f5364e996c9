"""Alert delivery under load (issue #13, "Measured"): the real `hj212gw serve` as a subprocess with
MQTT on the local Mosquitto (127.0.0.1:1883, a topic root of its own), two measurements:

- **latency**: bench/loadgen.py offers `--rate` packets/s in total over `--devices` connections
  (at most `--window` packets in flight each, 8 as in bench_gateway's fixed rates; minute packets
  whose values never flag), and this process sends `--alert-rate` offending packets/s among them
  from devices of its own: each flags one more factor D than its previous packet, so each raises
  a new `flag_episode` alert. Per alert, the
  time from the offending packet's 9014 (sent after its COMMIT) to a subscriber of the broker
  receiving the `firing` CloudEvent (QoS 1; the broker forwards it once the gateway's PUBLISH
  arrived, so the figure bounds commit → PUBACK from above, plus the rules' batching and the
  outbox's wake-up): p50, p99, max, and the same split at the engine's transaction start (the
  outbox entry's `created_at`).
- **outage**: the same load with the gateway connected through a TCP proxy in this process, cut
  for `--outage-s` (60) while alerts keep being raised, then restored: alerts raised (the
  database's `alerts` and `alert_outbox`), event ids received, lost (in the outbox, never
  received: must be 0), duplicates, and the time after the restore until every entry committed
  before it was received (the gateway's reconnect backoff, `mqtt.reconnect_max_s`, is part of it).

A thresholds file keeps the background load silent whatever it sends (no flatline or dilution
alerts: the generator's values once never changed and its O₂ read 24 %), and the backfill is
off (the generator's DataTimes start 30 days back, so the gateway would otherwise fetch a month
of "missing" data from devices that never answer). Each measurement gets a fresh gateway
on a fresh schema (dropped afterwards); the subscriber connects to the broker directly.

    HJ212GW_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m bench.bench_alerts [--quick] [--repeat 3] [--phases latency,outage]

Writes bench/results/alerts-<label>-<time>.json (each run and the medians).
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import asyncpg

from bench.harness import ROOT, GatewayProcess, _drop_schema, log, machine
from bench.idle import raise_fd_limit
from bench.packets import AIR_FACTORS, segment
from hj212gw.protocol.framing import encode_frame

RESULTS = ROOT / "bench" / "results"
BROKER = ("127.0.0.1", 1883)
SHANGHAI = ZoneInfo("Asia/Shanghai")
# Whatever the load generator sends, it raises no alert of its own: only the offending packets do.
THRESHOLDS = "[defaults]\nflatline_points = 1000000\ndilution_o2_pct = 99\n"
OFFENCES_PER_DEVICE = len(AIR_FACTORS)  # one more factor flagged D per packet


class BrokerProxy:
    """127.0.0.1:<port> → Mosquitto; `cut()` resets every link and refuses new ones until `restore()`."""

    def __init__(self) -> None:
        self.port = 0
        self.cut_now = False
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    def cut(self) -> None:
        self.cut_now = True
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self.cut_now = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_now:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*BROKER)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:  # the reset a cut causes
            pass
        writer.transport.abort()
        self._links.discard(writer)


@dataclass
class Received:
    """What a subscriber of `{root}/v1/alerts/#` got: arrival per event id and per flagged factor."""

    messages: int = 0
    event_ids: dict[str, float] = field(default_factory=dict)
    flagged: dict[tuple[str, str], float] = field(default_factory=dict)
    flagged_wall: dict[tuple[str, str], float] = field(default_factory=dict)  # time.time(), as PostgreSQL's

    async def follow(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            now = time.monotonic()
            event = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            self.messages += 1
            self.event_ids.setdefault(event["id"], now)
            labels = event["data"]["labels"]
            if event["type"] == "hj212gw.alert.firing" and labels["alertname"] == "flag_episode":
                self.flagged.setdefault((labels["mn"], labels["factor"]), now)
                self.flagged_wall.setdefault((labels["mn"], labels["factor"]), time.time())


class Offender:
    """One device of this process: packets one at a time; packet k flags factors 0..k-1 D."""

    def __init__(self, mn: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: datetime) -> None:
        self.mn, self.reader, self.writer, self.start = mn, reader, writer, start
        self.k = 0
        self.buffer = b""

    @property
    def exhausted(self) -> bool:
        return self.k > OFFENCES_PER_DEVICE

    async def send(self) -> tuple[str | None, float, float]:
        """The next packet: (the factor it newly flags or None, sent at, 9014 received at)."""
        flagged = self.k
        data_time = (self.start + timedelta(minutes=self.k)).strftime("%Y%m%d%H%M%S")
        groups = [
            f"{code}-Min=1{i}.0,{code}-Avg={20 + i + random.uniform(-0.5, 0.5):.3f},{code}-Max=3{i}.0,"
            f"{code}-Flag={'D' if i < flagged else 'N'}"
            for i, code in enumerate(AIR_FACTORS)
        ]
        qn = f"{data_time}{self.k:03d}"
        self.k += 1
        sent = time.monotonic()
        self.writer.write(encode_frame(segment("2051", qn, data_time, groups, mn=self.mn)))
        while not self._acked(qn.encode()):
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError(f"{self.mn}: gateway closed")
            self.buffer += data
        return (AIR_FACTORS[flagged - 1] if flagged else None), sent, time.monotonic()

    def _acked(self, qn: bytes) -> bool:
        """Whether the buffer holds the 9014 of `qn` (the lines before it are dropped)."""
        lines = self.buffer.split(b"\r\n")
        self.buffer = lines.pop()
        return any(b"QN=%s;" % qn in line and b"CN=9014" in line for line in lines)


async def connect_offenders(port: int, count: int, run_id: str) -> list[Offender]:
    start = datetime.now(SHANGHAI).replace(tzinfo=None, second=0, microsecond=0) - timedelta(minutes=30)
    devices = []
    for n in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        devices.append(Offender(f"AL{run_id}{n:014d}", reader, writer, start))
    await asyncio.gather(*(d.send() for d in devices))  # an unflagged first packet: the MN is known
    return devices


@dataclass
class Offences:
    """Offending packets sent: 9014 time per (mn, factor), and the 9014 latencies."""

    acked: dict[tuple[str, str], float] = field(default_factory=dict)
    acked_wall: dict[tuple[str, str], float] = field(default_factory=dict)
    ack_latencies: list[float] = field(default_factory=list)


async def offend(devices: list[Offender], rate: float, until: float, out: Offences) -> None:
    """`rate` offending packets/s, each from a device with nothing in flight, until `until`."""
    idle = [d for d in devices if not d.exhausted]
    pending: set[asyncio.Task[None]] = set()

    async def one(device: Offender) -> None:
        factor, sent, acked = await device.send()
        if factor is not None:
            out.acked[(device.mn, factor)] = acked
            out.acked_wall[(device.mn, factor)] = time.time()
            out.ack_latencies.append(acked - sent)
        if not device.exhausted:
            idle.append(device)

    next_at = time.monotonic()
    while time.monotonic() < until:
        if idle:
            task = asyncio.create_task(one(idle.pop(0)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        next_at += 1.0 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*pending)


def start_loadgen(port: int, args: argparse.Namespace, duration_s: float) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{port}", "--connections",
           str(args.devices - args.offenders), "--duration", str(duration_s), "--window", str(args.window), "--rate",
           str(args.rate - args.alert_rate), "--warmup", str(args.warmup)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def loadgen_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=300)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def ms(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None


async def latency_run(port: int, dsn: str, schema: str, root: str, args: argparse.Namespace) -> dict[str, Any]:
    received = Received()
    async with aiomqtt.Client(*BROKER) as client:
        await client.subscribe(f"{root}/v1/alerts/#", qos=1)
        follower = asyncio.create_task(received.follow(client))
        devices = await connect_offenders(port, args.offenders, uuid.uuid4().hex[:8].upper())
        loadgen = start_loadgen(port, args, args.duration)
        await asyncio.sleep((args.devices - args.offenders) / 2000 + 1.0 + args.warmup)  # connect + warm-up
        offences = Offences()
        await offend(devices, args.alert_rate, time.monotonic() + args.duration, offences)
        background = await asyncio.to_thread(loadgen_result, loadgen)
        deadline = time.monotonic() + args.grace_s
        while not offences.acked.keys() <= received.flagged.keys() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        follower.cancel()
    delays = [received.flagged[key] - at for key, at in offences.acked.items() if key in received.flagged]
    stored = await count_alerts(dsn, schema)
    written = await firing_written(dsn, schema)  # the engine's transaction start, per flagged factor
    before = [written[k] - at for k, at in offences.acked_wall.items() if k in written]
    after = [at - written[k] for k, at in received.flagged_wall.items() if k in written and k in offences.acked]
    return {
        "alerts_offended": len(offences.acked),
        "alerts_received": len(delays),
        "alerts_in_database": stored["alerts"],
        "delay_p50_ms": ms(delays, 0.5),
        "delay_p99_ms": ms(delays, 0.99),
        "delay_max_ms": ms(delays, 1.0),
        "within_1s_pct": round(100 * sum(d <= 1.0 for d in delays) / max(1, len(delays)), 2),
        # Where the time goes: 9014 -> the engine's transaction began (queue, rules every 0.2 s, a
        # pooled connection), then -> received (commit, outbox visibility, NOTIFY, PUBLISH, broker).
        "ack_to_engine_p50_ms": ms(before, 0.5),
        "ack_to_engine_p99_ms": ms(before, 0.99),
        "engine_to_received_p50_ms": ms(after, 0.5),
        "engine_to_received_p99_ms": ms(after, 0.99),
        "offender_ack_p99_ms": ms(offences.ack_latencies, 0.99),
        **flat_background(background),
    }


def flat_background(background: dict[str, Any]) -> dict[str, Any]:
    """The load generator's figures as top-level fields (medians are taken of those)."""
    keep = ("offered_rate", "acked_per_s", "ack_p50_ms", "ack_p99_ms")
    return {f"background_{key}": background.get(key) for key in keep}


async def outage_run(
    port: int, dsn: str, schema: str, root: str, proxy: BrokerProxy, args: argparse.Namespace
) -> dict[str, Any]:
    received = Received()
    total_s = args.before_s + args.outage_s + args.after_s
    async with aiomqtt.Client(*BROKER) as client:
        await client.subscribe(f"{root}/v1/alerts/#", qos=1)
        follower = asyncio.create_task(received.follow(client))
        devices = await connect_offenders(port, args.offenders, uuid.uuid4().hex[:8].upper())
        loadgen = start_loadgen(port, args, total_s)
        await asyncio.sleep((args.devices - args.offenders) / 2000 + 1.0 + args.warmup)
        offences = Offences()
        offending = asyncio.create_task(offend(devices, args.alert_rate, time.monotonic() + total_s, offences))
        await asyncio.sleep(args.before_s)
        proxy.cut()
        cut_at = time.monotonic()
        await asyncio.sleep(args.outage_s)
        backlog = await outbox_ids(dsn, schema)  # committed while the broker was away (and before)
        proxy.restore()
        restored_at = time.monotonic()
        await offending
        background = await asyncio.to_thread(loadgen_result, loadgen)
        deadline = time.monotonic() + args.drain_timeout_s
        while time.monotonic() < deadline:
            everything = await outbox_ids(dsn, schema)
            if everything <= received.event_ids.keys():
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # duplicates still on their way
        follower.cancel()
    stored = await count_alerts(dsn, schema)
    lost = everything - received.event_ids.keys()
    drained = [received.event_ids[e] for e in backlog if e in received.event_ids]
    during = sum(cut_at <= at < restored_at for at in received.event_ids.values())
    return {
        "outage_s": args.outage_s,
        "alerts_raised": stored["alerts"],
        "outbox_entries": len(everything),
        "backlog_at_restore": len(backlog - {e for e, at in received.event_ids.items() if at < cut_at}),
        "received_during_outage": during,
        "received_unique": len(received.event_ids),
        "messages": received.messages,
        "lost": len(lost),
        "duplicates": received.messages - len(received.event_ids),
        "drain_s": round(max(drained) - restored_at, 2) if drained and not lost else None,
        **flat_background(background),
    }


async def outbox_ids(dsn: str, schema: str) -> set[str]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        return {str(r[0]) for r in await conn.fetch("SELECT event_id FROM alert_outbox")}
    finally:
        await conn.close()


async def firing_written(dsn: str, schema: str) -> dict[tuple[str, str], float]:
    """(mn, factor) -> created_at (epoch s) of each flag_episode `firing` entry."""
    sql = """SELECT payload->'labels'->>'mn', payload->'labels'->>'factor', extract(epoch FROM created_at)
             FROM alert_outbox WHERE type = 'firing' AND payload->'labels'->>'alertname' = 'flag_episode'"""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        return {(r[0], r[1]): float(r[2]) for r in await conn.fetch(sql)}
    finally:
        await conn.close()


async def count_alerts(dsn: str, schema: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        return {"alerts": await conn.fetchval("SELECT count(*) FROM alerts")}
    finally:
        await conn.close()


async def clear_retained(root: str) -> int:
    """Remove the retained device states and statuses a run left under `root` on the broker."""
    topics: set[str] = set()
    async with aiomqtt.Client(*BROKER) as client:
        await client.subscribe(f"{root}/#", qos=1)
        try:
            async with asyncio.timeout(3.0):
                async for message in client.messages:
                    if message.retain and message.payload:
                        topics.add(message.topic.value)
        except TimeoutError:
            pass
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)
    return len(topics)


async def one_run(phase: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """A fresh gateway on a fresh schema and topic root, one measurement, then both dropped."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    root = f"bench-{uuid.uuid4().hex[:10]}"
    thresholds = workdir / "thresholds.toml"
    thresholds.write_text(THRESHOLDS)
    proxy = BrokerProxy()
    await proxy.start()
    broker_port = proxy.port if phase == "outage" else BROKER[1]
    env = {"HJ212GW_MQTT__URL": f"mqtt://127.0.0.1:{broker_port}", "HJ212GW_MQTT__ROOT_TOPIC": root,
           "HJ212GW_ALERTS__THRESHOLDS_FILE": str(thresholds), "HJ212GW_WORKERS": str(args.workers),
           "HJ212GW_BACKFILL__ENABLED": "false",
           **dict(item.split("=", 1) for item in args.gateway_env)}  # fmt: skip
    gateway = GatewayProcess(args.database_url, schema, None, env, workdir)
    try:
        await asyncio.to_thread(gateway.wait_ready)
        if phase == "latency":
            result = await latency_run(gateway.port, args.database_url, schema, root, args)
        else:
            result = await outage_run(gateway.port, args.database_url, schema, root, proxy, args)
        await asyncio.to_thread(gateway.stop)
        result["gateway_warnings"] = warnings_in(gateway.log_path)
        return result
    finally:
        await asyncio.to_thread(gateway.stop)
        await proxy.stop()
        await _drop_schema(args.database_url, schema)
        await clear_retained(root)


def warnings_in(log_path: Path) -> dict[str, int]:
    """The gateway's WARNING and ERROR log events (JSON lines) by name, with their counts."""
    found: Counter[str] = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("level") in ("warning", "error", "critical"):
                logger = str(entry.get("logger", ""))
                where = "" if logger.startswith("hj212gw") else f" [{logger}]"  # a library's own log line
                found[f"{entry['level']}:{entry.get('event')}{where}"] += 1
    return dict(found)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric field over the runs (None where a run has none)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        numbers = [r[key] for r in runs if isinstance(r.get(key), int | float) and not isinstance(r[key], bool)]
        out[key] = round(statistics.median(numbers), 2) if numbers and len(numbers) == len(runs) else value
    return out


def summary(phase: str, m: dict[str, Any]) -> str:
    if phase == "latency":
        return (f"latency: {m['alerts_received']} of {m['alerts_offended']} alerts received; 9014 -> CloudEvent "
                f"p50 {m['delay_p50_ms']} ms, p99 {m['delay_p99_ms']} ms, max {m['delay_max_ms']} ms "
                f"({m['within_1s_pct']} % within 1 s; 9014 -> engine p50/p99 {m['ack_to_engine_p50_ms']}/"
                f"{m['ack_to_engine_p99_ms']} ms, engine -> received {m['engine_to_received_p50_ms']}/"
                f"{m['engine_to_received_p99_ms']} ms); background acked {m['background_acked_per_s']}/s, "
                f"ack p99 {m['background_ack_p99_ms']} ms; warnings {m.get('gateway_warnings')}")  # fmt: skip
    return (f"outage {m['outage_s']} s: {m['alerts_raised']} alerts raised, {m['outbox_entries']} outbox entries, "
            f"{m['received_unique']} received ({m['received_during_outage']} during the outage), lost {m['lost']}, "
            f"duplicates {m['duplicates']}, backlog {m['backlog_at_restore']} drained {m['drain_s']} s after the "
            f"restore; background acked {m['background_acked_per_s']}/s; "
            f"gateway warnings {m.get('gateway_warnings')}")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs: 10 s of load, a 15 s outage, one run")
    parser.add_argument("--database-url", default=os.environ.get("HJ212GW_BENCH_DATABASE_URL")
                        or os.environ.get("HJ212GW_TEST_DATABASE_URL"))  # fmt: skip
    parser.add_argument("--phases", default="latency,outage", help="comma-separated subset of latency,outage")
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement (medians reported)")
    parser.add_argument("--rate", type=float, default=5000.0, help="packets/s offered in total")
    parser.add_argument("--alert-rate", type=float, default=10.0, help="of which offending packets/s (new alerts)")
    parser.add_argument("--devices", type=int, default=1000, help="connections in total (one packet in flight each)")
    parser.add_argument(
        "--window",
        type=int,
        default=8,
        help="background packets in flight per connection at most "
        "(bench_gateway's fixed rates: 8); the offending devices keep one",
    )
    parser.add_argument("--offenders", type=int, default=0, help="of which offending devices (0: as many as needed)")
    parser.add_argument("--duration", type=float, default=None, help="latency: seconds of offending load")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds at the rate before measuring")
    parser.add_argument("--outage-s", type=float, default=None, help="seconds the broker is cut off (default 60)")
    parser.add_argument("--before-s", type=float, default=10.0, help="outage: seconds of load before the cut")
    parser.add_argument("--after-s", type=float, default=10.0, help="outage: seconds of load after the restore")
    parser.add_argument("--grace-s", type=float, default=15.0, help="latency: wait this long for the last alerts")
    parser.add_argument("--drain-timeout-s", type=float, default=180.0, help="outage: wait this long for the rest")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes (HJ212GW_WORKERS)")
    parser.add_argument("--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway")
    parser.add_argument("--label", default="current")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("--database-url, HJ212GW_BENCH_DATABASE_URL or HJ212GW_TEST_DATABASE_URL is required")
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (10.0 if args.quick else 30.0)
    args.outage_s = args.outage_s if args.outage_s is not None else (15.0 if args.quick else 60.0)
    longest = max(args.duration, args.before_s + args.outage_s + args.after_s)
    needed = int(args.alert_rate * longest / OFFENCES_PER_DEVICE * 1.2) + 1
    args.offenders = args.offenders or needed
    if args.offenders < needed or args.offenders >= args.devices:
        parser.error(f"--offenders must be at least {needed} and fewer than --devices")
    return args


def main() -> None:
    args = parse_args()
    fd_limit = raise_fd_limit()
    phases = [p for p in ("latency", "outage") if p in args.phases.split(",")]
    result: dict[str, Any] = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "fd_limit": fd_limit,
        "settings": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="hj212gw-bench-alerts-") as tmp:
        for phase in phases:
            runs = []
            for n in range(args.repeat):
                runs.append(asyncio.run(one_run(phase, args, Path(tmp))))
                log(f"run {n + 1}/{args.repeat} " + summary(phase, runs[-1]))
            result[phase] = {**median_of(runs), "runs": runs}
            log("median " + summary(phase, result[phase]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"alerts-{args.label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    log(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
