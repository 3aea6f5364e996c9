"""Device state benchmark: what following 20,000 devices costs the gateway, in process.

    .venv/bin/python -m bench.bench_monitor [--devices 20000] [--minutes 30] [--runs 5] [--json]

A `monitor.devices.DeviceTracker` (the gateway's, with its metrics; its database is never
touched: only the in-memory path is measured) follows `--devices` bound devices over
`--minutes` of simulated time, one scan per simulated second, as the gateway runs it. Every
device sends real-time data (2011) every 30 s, minute data (2051) every minute and hour data
(2061) every hour, at phases spread over the period; 1 % stop sending after 5 minutes (they
turn silent) and come back 15 minutes later. Measured separately: the time of every `scan` (what
the issue bounds: < 1 % of one core, i.e. < 10 ms per second) and of every `stored` signal (the
per-packet cost). Each run is one fresh tracker; the figures are the median of `--runs`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from hj212gw.metrics import Metrics
from hj212gw.monitor.devices import DeviceTracker
from hj212gw.monitor.hub import StoredData
from hj212gw.settings import DeviceStateSettings
from hj212gw.storage.db import Database
from hj212gw.storage.device_state import DeviceStateStore

T0 = datetime(2026, 12, 1, tzinfo=UTC)
SCHEDULE = (("2011", 30), ("2051", 60), ("2061", 3600))  # CN, period in seconds
PERIODS = tuple(period for _, period in SCHEDULE)


def run_once(devices: int, minutes: int) -> dict[str, float]:
    clock = [T0]
    tracker = DeviceTracker(
        DeviceStateStore(Database("postgresql://unused/bench")),  # never connected: scan and signals only
        DeviceStateSettings(),
        "bench",
        Metrics(),
        clock=lambda: clock[0],
    )
    mns = [f"BENCH{n:010d}" for n in range(devices)]
    for n, mn in enumerate(mns):
        tracker.states.bound(mn, n, T0)  # as if each had been followed already (no row to read)
    quiet = set(mns[::100])  # 1 %: send nothing from minute 5 to minute 20
    due: dict[tuple[int, int], list[tuple[str, str]]] = {}  # (period, phase) -> (MN, CN) sent then
    for n, mn in enumerate(mns):
        for cn, period in SCHEDULE:
            due.setdefault((period, n % period), []).append((mn, cn))
    scan_s = stored_s = 0.0
    packets = 0
    for second in range(minutes * 60):
        now = T0 + timedelta(seconds=second)
        clock[0] = now
        silent_now = 300 <= second < 1200
        batch = [
            StoredData(mn, cn, now, now, False, False)
            for period in PERIODS
            for mn, cn in due.get((period, second % period), ())
            if not (silent_now and mn in quiet)
        ]
        started = time.perf_counter()
        for data in batch:
            tracker.stored(data)
        stored_s += time.perf_counter() - started
        packets += len(batch)
        started = time.perf_counter()
        tracker.scan()
        scan_s += time.perf_counter() - started
    seconds = minutes * 60
    return {
        "scan_ms_per_s": scan_s / seconds * 1000,
        "scan_core_pct": scan_s / seconds * 100,
        "stored_us_per_packet": stored_s / packets * 1e6,
        "packets_per_s": packets / seconds,
        "transitions": len(tracker._events),  # silent and back online: 2 per quiet device
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [run_once(args.devices, args.minutes) for _ in range(args.runs)]
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    summary.update(devices=args.devices, minutes=args.minutes, runs=args.runs)
    print(
        f"{args.devices} devices, {args.minutes} simulated min, median of {args.runs}: "
        f"scan {summary['scan_ms_per_s']:.3f} ms/s ({summary['scan_core_pct']:.3f} % of a core), "
        f"stored {summary['stored_us_per_packet']:.2f} µs/packet at {summary['packets_per_s']:.0f} packets/s, "
        f"{summary['transitions']:.0f} transitions",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
