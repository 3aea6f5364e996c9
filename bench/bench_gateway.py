"""End-to-end gateway benchmark: the real `hj212gw serve` as a subprocess on a fresh schema, driven
by bench/loadgen.py (closed loop and fixed offered rates), bench/idle.py (idle connections) and
bench/burst.py (the top-of-the-hour burst).

    .venv/bin/python -m bench.bench_gateway [--quick] [--database-url DSN] [--repeat 3]
    .venv/bin/python -m bench.bench_gateway --phases burst [--burst-devices 5000,10000,20000]

The database is `--database-url`, else HJ212GW_BENCH_DATABASE_URL, else HJ212GW_TEST_DATABASE_URL,
else an embedded PostgreSQL in a temporary directory, started with the gateway's own
SERVER_SETTINGS (--pg-setting NAME=VALUE adds or overrides one, e.g. wal_init_zero=on for a server
that zero-fills each new WAL segment). The schema is dropped afterwards.
Reports sustained packets/s and values/s (closed loop) at 100 / 1,000 / 10,000 connections, ack
latency p50/p99 at fixed offered rates over 1,000 connections, gateway and PostgreSQL CPU µs per
packet over each steady window (gateway: /proc/<pid>/stat; PostgreSQL: the postmaster and all its
children, so other clients of the same server count too), and gateway RSS per idle connection.
--window sets the packets in flight per connection for both loops (default: --in-flight divided by
the connections closed, 8 at fixed rates; 1 is how a real DAS sends).
The burst phase (not in the default --phases: it binds tens of thousands of devices) has N bound
DAS units, on a fresh gateway per N, send their 2011, 2051 and 2061 packets of one hour from a
common instant, one in flight each; it reports the time to the last ack, ack time from that
instant p50/p99/max, packets not acked within 60 s, the resends a DAS with OverTime 5 s and
ReCount 3 would have made (counted, never sent), and CPU µs per packet from the instant to the
last ack. N is capped below RLIMIT_NOFILE, which the gateway needs for its sockets.
Each point is the median of --repeat runs. Writes bench/results/gateway-<label>-<time>.json and
docs/bench_gateway.png (throughput and p99 against offered load; --compare overlays an earlier
result file). The generator shares the machine's cores with the gateway and PostgreSQL.
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench.burst_phase import burst
from bench.harness import (
    ROOT,
    GatewayProcess,
    Postgres,
    _drop_schema,
    cpu_s,
    log,
    machine,
    median_of,
    pg_cpu_delta,
    rss_kb,
)
from bench.idle import raise_fd_limit

RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "bench_gateway.png"
IDLE_PER_PROCESS = 5000


def run_loadgen(gw: GatewayProcess, pg: Postgres, *, connections: int, duration_s: float, window: int,
                rate: float = 0.0, warmup_s: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """One loadgen run, with CPU per packet measured over the middle of its steady window (after
    the connections are up and, at a fixed rate, after `warmup_s` at that rate)."""
    connect_rate = 2000.0 if connections <= 2000 else 800.0  # the gateway accepts while it works
    cmd = [sys.executable, "-m", "bench.loadgen", "--target", f"127.0.0.1:{gw.port}", "--connections",
           str(connections), "--duration", str(duration_s), "--window", str(window), "--rate", str(rate),
           "--connect-rate", str(connect_rate), "--warmup", str(warmup_s)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    connect_s = connections / connect_rate + (1.0 + warmup_s if rate else 0.0)
    margin = min(2.0, duration_s / 5)
    time.sleep(connect_s + margin)
    backends = pg.gateway_backends()
    gw0, pg0, m0, t0, lg0 = gw.cpu_s(), pg.cpu(), gw.counters(), time.monotonic(), cpu_s(proc.pid)
    time.sleep(max(1.0, duration_s - 2 * margin))
    gw1, pg1, m1, t1, lg1 = gw.cpu_s(), pg.cpu(), gw.counters(), time.monotonic(), cpu_s(proc.pid)
    out, _ = proc.communicate(timeout=duration_s + connect_s + 120)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    packets = max(1.0, m1["acks"] - m0["acks"])
    batches = max(1.0, m1["batches"] - m0["batches"])
    own = sum(pg1.get(pid, 0.0) - pg0.get(pid, 0.0) for pid in backends)
    result.update(
        window=window,
        cpu_window_s=round(t1 - t0, 2),
        cpu_window_acks_per_s=round(packets / (t1 - t0), 1),
        gateway_cpu_us_per_packet=round((gw1 - gw0) / packets * 1e6, 1),
        postgres_cpu_us_per_packet=round(own / packets * 1e6, 1),
        postgres_all_cpu_us_per_packet=round(pg_cpu_delta(pg0, pg1) / packets * 1e6, 1),
        generator_cpu_us_per_packet=round((lg1 - lg0) / packets * 1e6, 1),
        gateway_cpu_util=round((gw1 - gw0) / (t1 - t0), 2),
        postgres_cpu_util=round(own / (t1 - t0), 2),
        postgres_all_cpu_util=round(pg_cpu_delta(pg0, pg1) / (t1 - t0), 2),
        batch_rows_mean=round((m1["batch_rows"] - m0["batch_rows"]) / batches, 1),
        batch_commit_ms_mean=round((m1["commit_s"] - m0["commit_s"]) / batches * 1000, 2),
        # The gateway's own view (arrival of the packet to its 9014 written), over the CPU window.
        gateway_acks_within_30ms_pct=round(
            100 * (m1["acks_within_30ms"] - m0["acks_within_30ms"]) / max(1.0, m1["acks_timed"] - m0["acks_timed"]), 2
        ),
    )
    return result


def closed_loop(gw: GatewayProcess, pg: Postgres, args: argparse.Namespace) -> list[dict[str, Any]]:
    points = []
    for connections in args.closed_connections:
        window = args.window or max(1, args.in_flight // connections)
        runs = [
            run_loadgen(gw, pg, connections=connections, duration_s=args.duration, window=window)
            for _ in range(args.repeat)
        ]
        points.append(median_of(runs))
        log(f"closed loop {connections} conns x window {window}: {points[-1]['acked_per_s']} packets/s, "
            f"p99 {points[-1]['ack_p99_ms']} ms, gateway {points[-1]['gateway_cpu_us_per_packet']} µs/packet, "
            f"postgres {points[-1]['postgres_cpu_us_per_packet']} µs/packet "
            f"(server-wide {points[-1]['postgres_all_cpu_us_per_packet']}), "
            f"generator {points[-1]['generator_cpu_us_per_packet']} µs/packet, "
            f"batch {points[-1]['batch_rows_mean']} rows in {points[-1]['batch_commit_ms_mean']} ms")  # fmt: skip
    return points


def open_loop(gw: GatewayProcess, pg: Postgres, args: argparse.Namespace) -> list[dict[str, Any]]:
    points = []
    for rate in args.rates:
        runs = [
            run_loadgen(
                gw,
                pg,
                connections=args.open_connections,
                duration_s=args.duration,
                window=args.window or 8,
                rate=rate,
                warmup_s=args.warmup,
            )
            for _ in range(args.repeat)
        ]
        points.append(median_of(runs))
        p = points[-1]
        log(f"offered {rate:.0f}/s over {args.open_connections} conns x window {p['window']}: "
            f"{p['acked_per_s']} acked/s, "
            f"p50 {p['ack_p50_ms']} ms, p99 {p['ack_p99_ms']} ms, max {p['ack_max_ms']} ms, "
            f"gateway-side acks within 30 ms {p['gateway_acks_within_30ms_pct']} % "
            f"(warm-up {p['warmup_s']} s: p99 {p['warmup_ack_p99_ms']} ms)")  # fmt: skip
    return points


FLEET_VERSIONS = "2017=0.8,2025=0.15,2005=0.05"


def run_fleet(gw: GatewayProcess, pg: Postgres, *, devices: int, speed: float, duration_s: float) -> dict[str, Any]:
    """`hj212gw simulate`: a realistic mixed fleet (air and water sites, 2017/2025/2005, real-time,
    minute, hour and day data, status and heartbeats) on a sped-up clock; CPU per stored frame."""
    ramp = 1000
    cmd = [sys.executable, "-m", "hj212gw.simulator", "--target", f"127.0.0.1:{gw.port}", "--count", str(devices),
           "--speed", str(speed), "--duration", str(duration_s), "--versions", FLEET_VERSIONS, "--ramp", str(ramp),
           "--start", "2026-01-01T00:00:00+08:00", "--json", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    margin = min(3.0, duration_s / 5)
    time.sleep(devices / ramp + margin)
    backends = pg.gateway_backends()
    gw0, pg0, f0, t0 = gw.cpu_s(), pg.cpu(), gw.frames_ok(), time.monotonic()
    time.sleep(max(1.0, duration_s - devices / ramp - 2 * margin))
    gw1, pg1, f1, t1 = gw.cpu_s(), pg.cpu(), gw.frames_ok(), time.monotonic()
    out, _ = proc.communicate(timeout=duration_s + 120)
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    frames = max(1.0, f1 - f0)
    own = sum(pg1.get(pid, 0.0) - pg0.get(pid, 0.0) for pid in backends)
    return {
        "devices": devices,
        "speed": speed,
        "versions": FLEET_VERSIONS,
        "frames_per_s": round(frames / (t1 - t0), 1),
        "sent": summary["sent"],
        "acked": summary["acked"],
        "unacked": summary["unacked"],
        "ack_latency_ms": {k: None if v is None else round(v, 1) for k, v in summary["ack_latency_ms"].items()},
        "gateway_cpu_us_per_frame": round((gw1 - gw0) / frames * 1e6, 1),
        "postgres_cpu_us_per_frame": round(own / frames * 1e6, 1),
    }


def fleet(gw: GatewayProcess, pg: Postgres, args: argparse.Namespace) -> list[dict[str, Any]]:
    points = []
    for speed in args.fleet_speeds:
        points.append(run_fleet(gw, pg, devices=args.fleet_devices, speed=speed, duration_s=args.duration))
        p = points[-1]
        lat = p["ack_latency_ms"]
        log(f"fleet {p['devices']} devices at speed {speed:g}: {p['frames_per_s']} frames/s, acked {p['acked']} of "
            f"{p['sent']}, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, gateway {p['gateway_cpu_us_per_frame']} "
            f"µs/frame, postgres {p['postgres_cpu_us_per_frame']} µs/frame")  # fmt: skip
    return points


def idle_connections(gw: GatewayProcess, steps: list[int]) -> list[dict[str, Any]]:
    """Gateway RSS as idle connections (each bound to an MN by one acked packet) accumulate."""
    openers: list[subprocess.Popen[str]] = []
    points = [{"connections": 0, "acked": 0, "rss_mb": round(rss_kb(gw.pid) / 1024, 1)}]
    opened = acked = 0
    run_id = int(time.time()) & 0xFFFFFF
    try:
        for target in steps:
            while opened < target:
                count = min(IDLE_PER_PROCESS, target - opened)
                cmd = [sys.executable, "-m", "bench.idle", "--target", f"127.0.0.1:{gw.port}", "--connections",
                       str(count), "--first-index", str(opened), "--run-id", str(run_id)]  # fmt: skip
                opener = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                openers.append(opener)
                report = json.loads(opener.stdout.readline())  # type: ignore[union-attr]
                opened += count
                acked += report["acked"]
            time.sleep(3.0)  # let the writer settle
            rss = rss_kb(gw.pid) / 1024
            per_conn = (rss - points[0]["rss_mb"]) * 1024 / target if target else 0.0
            points.append({"connections": target, "acked": acked, "rss_mb": round(rss, 1),
                           "kb_per_connection": round(per_conn, 2)})  # fmt: skip
            log(f"idle {target}: {acked} acked, gateway RSS {rss:.1f} MB ({per_conn:.2f} KB per connection)")
    finally:
        for opener in openers:
            opener.stdin.close()  # type: ignore[union-attr]
        for opener in openers:
            opener.wait(60)
    return points


def plot(result: dict[str, Any], compare: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [(compare, "--", "before"), (result, "-", "after")] if compare else [(result, "-", result["label"])]
    top = 0.0
    for data, style, name in series:
        if data is None or not data.get("open_loop"):
            continue
        rates = [p["offered_rate"] for p in data["open_loop"]]
        top = max(top, *rates)
        ax1.plot(rates, [p["acked_per_s"] for p in data["open_loop"]], style, marker="o", label=f"acked/s ({name})")
        ax2.plot(rates, [p["ack_p99_ms"] for p in data["open_loop"]], style, marker="o", label=f"p99 ({name})")
        ax2.plot(rates, [p["ack_p50_ms"] for p in data["open_loop"]], style, marker=".", alpha=0.5,
                 label=f"p50 ({name})")  # fmt: skip
        closed = [p for p in data.get("closed_loop", []) if p["connections"] == 1000]
        if closed:
            ax1.axhline(closed[0]["acked_per_s"], linestyle=style, color="grey", label=f"closed-loop max ({name})")
    ax1.plot([0, top], [0, top], ":", color="black", linewidth=0.8, label="offered")
    ax1.set(xlabel="offered packets/s (1,000 connections)", ylabel="acked packets/s", title="Throughput")
    ax2.axhline(30, color="red", linewidth=0.8, label="target p99 30 ms")
    ax2.set(xlabel="offered packets/s (1,000 connections)", ylabel="ack latency, ms", title="Ack latency",
            yscale="log")  # fmt: skip
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"hj212gw, {result['machine']['nproc']} cores, {result['date'][:10]} (10 values per packet)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, fewer points, 3,000 idle connections")
    parser.add_argument("--database-url", default=os.environ.get("HJ212GW_BENCH_DATABASE_URL")
                        or os.environ.get("HJ212GW_TEST_DATABASE_URL"))  # fmt: skip
    parser.add_argument(
        "--phases",
        default="closed,open,fleet,idle",
        help="comma-separated subset of closed,open,fleet,idle,burst (burst is not in the default set)",
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs per point (median reported)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    parser.add_argument("--closed-connections", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--in-flight", type=int, default=2000, help="closed loop: window = in_flight / connections")
    parser.add_argument("--window", type=int, default=None,
                        help="packets in flight per connection, closed and open (default: in_flight / "
                        "connections closed, 8 open)")  # fmt: skip
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None)
    parser.add_argument("--open-connections", type=int, default=1000)
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="fixed rates: seconds at the rate before measuring (reported apart)"
    )
    parser.add_argument("--idle-steps", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--fleet-devices", type=int, default=1000, help="simulated DAS units in the fleet phase")
    parser.add_argument("--fleet-speeds", type=lambda s: [float(x) for x in s.split(",")], default=None,
                        help="virtual clock speeds (30: about 1,000 frames/s from 1,000 devices)")  # fmt: skip
    parser.add_argument("--burst-devices", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="burst phase: DAS units sending 2011, 2051 and 2061 at one instant")  # fmt: skip
    parser.add_argument("--burst-cold", action="store_true",
                        help="burst phase: devices bound by one minute packet, so the burst is the first hour "
                        "after a start (default: the hour before was sent too)")  # fmt: skip
    parser.add_argument("--gateway-src", type=Path, help="PYTHONPATH for the gateway (e.g. a baseline worktree)")
    parser.add_argument(
        "--gateway-module", default="hj212gw.cli",
        help="the program run as the gateway (`python -m MODULE serve …`); bench.floor: the least a gateway does",
    )  # fmt: skip
    parser.add_argument("--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway")
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        help="NAME=VALUE for the embedded PostgreSQL, over hj212gw.storage.embedded.SERVER_SETTINGS",
    )
    parser.add_argument("--label", default="current")
    parser.add_argument("--compare", type=Path, help="earlier result JSON to overlay in the plot")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--plot-only", type=Path, help="only render the plot of this result JSON")
    args = parser.parse_args()
    quick = args.quick
    args.repeat = args.repeat or (1 if quick else 3)
    args.duration = args.duration or (8.0 if quick else 15.0)
    args.closed_connections = args.closed_connections or ([100, 1000] if quick else [100, 1000, 10000])
    args.rates = args.rates or ([1000.0, 5000.0] if quick else [1000.0, 2000.0, 5000.0, 8000.0, 10000.0])
    args.idle_steps = args.idle_steps or ([1000, 3000] if quick else [1000, 5000, 10000, 19000])
    args.fleet_speeds = args.fleet_speeds or ([30.0] if quick else [15.0, 30.0, 60.0])
    args.burst_devices = args.burst_devices or ([5000] if quick else [5000, 10000, 20000])
    for option in ("gateway_env", "pg_setting"):
        pairs = getattr(args, option)
        if any("=" not in item for item in pairs):
            parser.error(f"--{option.replace('_', '-')} takes NAME=VALUE")
        setattr(args, option, dict(item.split("=", 1) for item in pairs))
    if args.pg_setting and args.database_url:
        parser.error("--pg-setting sets the embedded PostgreSQL: give no database URL with it")
    return args


def main() -> None:
    args = parse_args()
    if args.plot_only:
        compare = json.loads(args.compare.read_text()) if args.compare else None
        plot(json.loads(args.plot_only.read_text()), compare, PLOT)
        return
    phases = set(args.phases.split(","))
    fd_limit = raise_fd_limit()  # inherited by the gateway and the generators
    workdir = Path(tempfile.mkdtemp(prefix="hj212gw-bench-"))
    workdir.chmod(0o711)  # as root, the embedded PostgreSQL's own user must reach workdir/pg
    embedded = None
    dsn = args.database_url
    if not dsn:
        from hj212gw.storage.embedded import start_embedded

        embedded = workdir / "pg"
        dsn = start_embedded(embedded, settings=args.pg_setting).dsn
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    schemas = [schema]
    env = args.gateway_env
    result: dict[str, Any] = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "fd_limit": fd_limit,
        "gateway_env": env,
        "settings": {k: v for k, v in vars(args).items() if k not in ("compare", "gateway_src")},
    }
    gw = None
    try:
        app_name = f"hj212gw-{schema}"
        pg = Postgres(dsn, asyncio.run(Postgres.find_postmaster(dsn)), app_name)
        gw_dsn = f"{dsn}{'&' if '?' in dsn else '?'}application_name={app_name}"
        result["postgres"] = asyncio.run(_server_version(dsn))
        # A fresh gateway per phase: the 10,000-connection closed loop leaves a backlog that would
        # otherwise land in the first fixed-rate run's latencies.
        for phase, run in (("closed", closed_loop), ("open", open_loop), ("fleet", fleet)):
            if phase in phases:
                gw = GatewayProcess(gw_dsn, schema, args.gateway_src, env, workdir, args.gateway_module)
                gw.wait_ready()
                result[f"{phase}_loop" if phase != "fleet" else "fleet"] = run(gw, pg, args)
                gw.stop()
        if "burst" in phases:
            if args.burst_devices[-1] + 100 > fd_limit:
                log(f"RLIMIT_NOFILE is {fd_limit}: burst devices capped below it")
                args.burst_devices = [min(n, fd_limit - 100) for n in args.burst_devices]

            def start_gateway() -> GatewayProcess:
                fresh = GatewayProcess(gw_dsn, schema, args.gateway_src, env, workdir, args.gateway_module)
                try:
                    fresh.wait_ready()
                except RuntimeError:
                    fresh.stop()
                    raise
                return fresh

            result["burst"] = burst(start_gateway, pg, args)
        if "idle" in phases:
            if args.idle_steps[-1] + 100 > fd_limit:
                log(f"RLIMIT_NOFILE is {fd_limit}: idle connections capped below it")
                args.idle_steps = [s for s in args.idle_steps if s + 100 <= fd_limit] or [fd_limit - 100]
            # A fresh process on a fresh schema: RSS from zero load, and a registry holding only the
            # idle devices (the earlier phases register tens of thousands of MNs of their own).
            idle_schema = f"{schema}_idle"
            schemas.append(idle_schema)
            gw = GatewayProcess(gw_dsn, idle_schema, args.gateway_src, env, workdir, args.gateway_module)
            gw.wait_ready()
            result["idle"] = idle_connections(gw, args.idle_steps)
            gw.stop()
    finally:
        if gw is not None:
            gw.stop()
        for name in schemas:
            asyncio.run(_drop_schema(dsn, name))
        if embedded is not None:
            from hj212gw.storage.embedded import stop_embedded

            stop_embedded(embedded)
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gateway-{args.label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    log(f"results: {out.relative_to(ROOT)}")
    if not args.no_plot and result.get("open_loop"):
        compare = json.loads(args.compare.read_text()) if args.compare else None
        plot(result, compare, PLOT)
        log(f"plot: {PLOT.relative_to(ROOT)}")


async def _server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
