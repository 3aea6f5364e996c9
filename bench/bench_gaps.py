"""In-process cost of gap tracking (monitor.gaps): per stored packet, and per scan of every series.

    .venv/bin/python -m bench.bench_gaps [--devices 20000] [--repeat 5]

No database and no sockets: the tracker's listener and scan only touch memory (its writes run in
its own task, once a second). Each device has minute (10-minute MinInterval), hour and day data,
so `--devices` 20,000 means 60,000 series. Reported (median of --repeat):
- stored: µs per `GapTracker.stored` call, in order (the next period) and late (inside a gap);
- scan idle: ms for one `scan(now)` when no series has work (most seconds);
- scan due: ms for one `scan(now)` when every series' tail grows (once per period at most);
- scan share: the idle scan's share of one core at one scan per second.
"""

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import cast

from hj212gw.monitor.gaps import GapTracker
from hj212gw.monitor.hub import StoredData
from hj212gw.settings import GapSettings
from hj212gw.storage.gaps import GapStore

T0 = datetime(2026, 12, 1, tzinfo=UTC) - timedelta(hours=8)  # a Shanghai midnight


def tracker(devices: int) -> tuple[GapTracker, list[str]]:
    gaps = GapTracker(cast(GapStore, None), GapSettings(), owner="bench", device_timezone="Asia/Shanghai")
    mns = [f"BENCH{n:08d}" for n in range(devices)]
    gaps._loaded.update(mns)  # as if each device's load had found nothing stored yet
    return gaps, mns


def feed(gaps: GapTracker, mns: list[str], hours: range, *, skip: int | None = None) -> int:
    calls = 0
    for hour in hours:
        start = T0 + timedelta(hours=hour)
        for mn in mns:
            if hour == skip:
                continue
            for minute in range(0, 60, 10):
                gaps.stored(StoredData(mn, "2051", start + timedelta(minutes=minute), start, False, False))
            gaps.stored(StoredData(mn, "2061", start, start, False, False))
            calls += 7
            if hour % 24 == 0:
                gaps.stored(StoredData(mn, "2031", start, start, False, False))
                calls += 1
    return calls


def once(devices: int) -> dict[str, float]:
    gaps, mns = tracker(devices)
    feed(gaps, mns, range(0, 2))  # the minute period is learned
    began = time.perf_counter()
    calls = feed(gaps, mns, range(2, 6), skip=3)
    in_order = (time.perf_counter() - began) / calls
    began = time.perf_counter()
    late = feed(gaps, mns, range(3, 4))  # each lands inside the gap the skipped hour left
    late_s = (time.perf_counter() - began) / late
    now = T0 + timedelta(hours=6, minutes=1)
    gaps.scan(now)  # settle every series' next check
    began = time.perf_counter()
    gaps.scan(now)
    idle = time.perf_counter() - began
    began = time.perf_counter()
    changed = gaps.scan(now + timedelta(days=2))
    due = time.perf_counter() - began
    assert changed == len(gaps.series), (changed, len(gaps.series))
    return {"stored_us": in_order * 1e6, "late_us": late_s * 1e6, "scan_idle_ms": idle * 1e3, "scan_due_ms": due * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [once(args.devices) for _ in range(args.repeat)]
    result = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"devices {args.devices} ({3 * args.devices} series), median of {args.repeat}:")
    print(f"  stored: {result['stored_us']:.2f} µs in order, {result['late_us']:.2f} µs late (inside a gap)")
    print(f"  scan idle: {result['scan_idle_ms']:.1f} ms ({result['scan_idle_ms'] / 10:.2f} % of a core at 1/s)")
    print(f"  scan due: {result['scan_due_ms']:.1f} ms (every tail grows; at most once per period)")


if __name__ == "__main__":
    main()
