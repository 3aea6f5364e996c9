"""Per-packet rules benchmark: what `rules.packet.PacketRules.on_sample` costs per stored packet.

    .venv/bin/python -m bench.bench_rules [--devices 200] [--minutes 60] [--factors 10] [--runs 5] [--json]

`--devices` devices each send one minute packet (2051) a simulated minute for `--minutes`, with
`--factors` flue-gas factors (Avg, Min, Max, Flag=N, as a DAS sends them), values drifting
realistically (a random walk within ±2 % a minute, three decimals) under the default thresholds:
nothing fires, which is the common case the budget is for (< 4 µs per 10-factor packet). The
packets are built before the clock starts; the first minute (plans, first-seen Clears) is warm-up
and not timed. Reported: µs of CPU time (`time.process_time`) per sample, median (and min) of
`--runs` fresh runs, the same without the fast path (`PacketRules(fast_path=False)`, every value
through the full rules), and the time of an empty call, to compare machines.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from hj212gw.rules.model import Sample
from hj212gw.rules.packet import PacketRules
from hj212gw.rules.thresholds import Thresholds

T0 = datetime(2026, 12, 1, tzinfo=UTC)
FACTORS = ("a21026", "a21002", "a34013", "a21005", "a19001", "a01012", "a01013", "a01014", "a01011", "a00000")
BASE = (35.0, 80.0, 8.0, 20.0, 9.5, 120.0, 101.0, 8.0, 12.0, 150.0)


def packets(devices: int, minutes: int, factors: int, seed: int = 1) -> list[Sample]:
    rng = random.Random(seed)
    codes = [FACTORS[i % len(FACTORS)] + ("" if i < len(FACTORS) else f"{i}") for i in range(factors)]
    level = {(d, c): BASE[i % len(BASE)] for d in range(devices) for i, c in enumerate(codes)}
    out = []
    for minute in range(minutes):
        at = T0 + timedelta(minutes=minute)
        for d in range(devices):
            fields = {"DataTime": at.strftime("%Y%m%d%H%M%S")}
            for code in codes:
                value = level[(d, code)] = level[(d, code)] * (1 + rng.uniform(-0.02, 0.02))
                fields |= {
                    f"{code}-Min": f"{value * 0.97:.3f}",
                    f"{code}-Avg": f"{value:.3f}",
                    f"{code}-Max": f"{value * 1.03:.3f}",
                    f"{code}-Flag": "N",
                }
            out.append(Sample(f"MN{d:06d}", "2051", at, at, False, fields))
    return out


def reference_ns() -> float:
    """ns of one empty call on this machine (to compare figures across machines: ~12 on a fast desktop)."""
    noop = lambda: None  # noqa: E731
    start = time.process_time()
    for _ in range(200_000):
        noop()
    return (time.process_time() - start) / 200_000 * 1e9


def run_once(samples: list[Sample], devices: int, *, fast_path: bool = True) -> tuple[float, int]:
    rules = PacketRules(Thresholds.default(), fast_path=fast_path)
    warm, timed = samples[:devices], samples[devices:]
    for sample in warm:
        rules.on_sample(sample)
    fired = 0
    on_sample = rules.on_sample
    start = time.process_time()  # CPU time: other processes on a shared host do not count
    for sample in timed:
        if on_sample(sample):
            fired += 1
    elapsed = time.process_time() - start
    return elapsed / len(timed) * 1e6, fired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--factors", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    samples = packets(args.devices, args.minutes, args.factors)
    results = [run_once(samples, args.devices) for _ in range(args.runs)]
    per_sample = statistics.median(us for us, _ in results)
    report = {
        "us_per_sample": round(per_sample, 3),
        "us_per_sample_min": round(min(us for us, _ in results), 3),
        "us_per_sample_full_rules": round(run_once(samples, args.devices, fast_path=False)[0], 3),
        "reference_ns": round(reference_ns(), 1),
        "factors": args.factors,
        "samples": len(samples) - args.devices,
        "samples_with_changes": results[0][1],
        "runs": args.runs,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"on_sample: {per_sample:.2f} µs per {args.factors}-factor minute packet (median of {args.runs} runs)")
        print(f"  min {report['us_per_sample_min']} µs; without the fast path {report['us_per_sample_full_rules']} µs")
        print(f"  samples {report['samples']}, samples with changes {report['samples_with_changes']}")
        print(f"  reference: an empty call takes {report['reference_ns']} ns here")


if __name__ == "__main__":
    main()
