"""The burst phase of bench_gateway: the top-of-the-hour burst (bench/burst.py generators) against
a fresh gateway per fleet size, and its report."""

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.harness import ROOT, GatewayProcess, Postgres, cpu_s, log, median_of, pg_cpu_delta

BURST_PER_PROCESS = 5000


def run_burst(gw: GatewayProcess, pg: Postgres, *, devices: int, cold: bool = False) -> dict[str, Any]:
    """The top-of-the-hour burst (bench/burst.py): `devices` bound DAS units, BURST_PER_PROCESS per
    generator process, send 2011, 2051 and 2061 one at a time from a common start instant; CPU per
    packet from that instant until the last ack."""
    run_id = (int(time.time()) + devices) & 0xFFFFFF
    procs = []
    for first in range(0, devices, BURST_PER_PROCESS):
        count = min(BURST_PER_PROCESS, devices - first)
        cmd = [sys.executable, "-m", "bench.burst", "--target", f"127.0.0.1:{gw.port}", "--devices", str(count),
               "--first-index", str(first), "--run-id", str(run_id), *(["--cold"] if cold else [])]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        ready = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        log(f"burst: {sum(r['ready'] for r in ready)} DAS bound in {max(r['setup_s'] for r in ready)} s")
        settle_s = wait_quiet(gw)
        log(f"burst: gateway quiet {settle_s} s after the binding")
        backends = pg.gateway_backends()
        start = time.time() + 0.5
        for p in procs:
            p.stdin.write(f"{start!r}\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        gw0, pg0, gen0 = gw.cpu_s(), pg.cpu(), sum(cpu_s(p.pid) for p in procs)  # idle until the start
        for p in procs:
            p.stdout.readline()  # type: ignore[union-attr]  # {"done": ...}: its last ack is in
        gw1, pg1, gen1 = gw.cpu_s(), pg.cpu(), sum(cpu_s(p.pid) for p in procs)
        reports = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(60)
    point = burst_point(devices, ready, reports, gw1 - gw0, pg0, pg1, backends)
    point["cold"] = cold
    point["settle_s"] = settle_s
    point["generator_cpu_us_per_packet"] = round((gen1 - gen0) / max(1, point["acked"]) * 1e6, 1)
    return point


def wait_quiet(gw: GatewayProcess, *, share: float = 0.05, interval_s: float = 0.5, timeout_s: float = 180.0) -> float:
    """Wait until the gateway has finished with the binding packets (their commits, device state,
    rules): its CPU over `interval_s` below `share` of a core per worker, at least one second (1.5 s
    after binding 19,900 DAS in round 15). Without it the burst would land on the end of that work,
    which a top-of-hour burst in the field, with its devices connected long before, never meets.
    Returns the seconds waited; `timeout_s` if the gateway never went quiet."""
    started = time.monotonic()
    time.sleep(1.0)
    while time.monotonic() - started < timeout_s:
        before = gw.cpu_s()
        time.sleep(interval_s)
        if gw.cpu_s() - before < share * interval_s * gw.workers:
            break
    return round(time.monotonic() - started, 1)


def burst_point(devices: int, ready: list[dict[str, Any]], reports: list[dict[str, Any]], gateway_cpu_s: float,
                pg0: dict[int, float], pg1: dict[int, float], backends: list[int]) -> dict[str, Any]:  # fmt: skip
    """One burst point from the generators' reports and the CPU measured over the burst."""
    from_start = sorted(x for r in reports for x in r["from_start_ms"])
    from_send = sorted(x for r in reports for x in r["from_send_ms"])
    acked = max(1, len(from_start))
    own = sum(pg1.get(pid, 0.0) - pg0.get(pid, 0.0) for pid in backends)
    last_ack_s = round(from_start[-1] / 1000, 3) if from_start else None
    return {
        "devices": devices,
        "bound": sum(r["ready"] for r in ready),
        "bind_errors": sum(r["bind_errors"] for r in ready),
        "setup_s": max(r["setup_s"] for r in ready),
        "packets": 3 * sum(r["ready"] for r in ready),
        "acked": len(from_start),
        "not_acked_within_60s": sum(r["unacked"] for r in reports),
        "resends": sum(r["resends"] for r in reports),
        "last_ack_s": last_ack_s,
        "acked_per_s": round(len(from_start) / last_ack_s, 1) if last_ack_s else None,
        "from_start_p50_ms": _quantile(from_start, 0.50),
        "from_start_p99_ms": _quantile(from_start, 0.99),
        "from_start_max_ms": _quantile(from_start, 1.0),
        "from_send_p50_ms": _quantile(from_send, 0.50),
        "from_send_p99_ms": _quantile(from_send, 0.99),
        "from_send_max_ms": _quantile(from_send, 1.0),
        "gateway_cpu_us_per_packet": round(gateway_cpu_s / acked * 1e6, 1),
        "postgres_cpu_us_per_packet": round(own / acked * 1e6, 1),
        "postgres_all_cpu_us_per_packet": round(pg_cpu_delta(pg0, pg1) / acked * 1e6, 1),
    }


def _quantile(ordered: list[float], p: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else None


def burst(start_gateway: Callable[[], GatewayProcess], pg: Postgres, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One burst point per --burst-devices, each on a fresh gateway."""
    points = []
    for devices in args.burst_devices:
        runs = []
        for _ in range(args.repeat):
            gw = start_gateway()
            try:
                runs.append(run_burst(gw, pg, devices=devices, cold=args.burst_cold))
            finally:
                gw.stop()
        points.append(median_of(runs))
        p = points[-1]
        shape = "cold" if args.burst_cold else "warm"
        log(f"burst {devices} DAS x 2011+2051+2061 ({shape}): {p['acked']} of {p['packets']} acked, last ack at "
            f"{p['last_ack_s']} s, from start p50 {p['from_start_p50_ms']} ms, p99 {p['from_start_p99_ms']} ms, "
            f"max {p['from_start_max_ms']} ms, from send p99 {p['from_send_p99_ms']} ms, "
            f"{p['not_acked_within_60s']} not acked within 60 s, {p['resends']} resends (OverTime 5 s), "
            f"gateway {p['gateway_cpu_us_per_packet']} µs/packet, postgres {p['postgres_cpu_us_per_packet']} "
            f"µs/packet (server-wide {p['postgres_all_cpu_us_per_packet']}), "
            f"generator {p['generator_cpu_us_per_packet']} µs/packet")  # fmt: skip
    return points
