"""The field's shapes in one picture, from `bench.bench_gateway` result files of a before/after round.

    .venv/bin/python -m bench.plot_field --before base --after head [--prefix r10] [--burst-prefix r10c]
                                         [--out docs/bench_field.png]

Reads bench/results/gateway-<prefix>-<side>-w<workers>-*.json (the labels `<prefix>-<side>-w<N>`
that round 10's script gives its runs) and draws three panels: the burst (time until the last
ack and the median ack against the number of DAS), fixed offered rates with one packet in flight
(ack p99), and the closed loop with one packet in flight (packets/s per run, 1 and 2 workers).
"""

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def load(prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Result files by label (`<prefix>-<side>-w<N>`), oldest first."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(RESULTS.glob(f"gateway-{prefix}-*.json")):
        result = json.loads(path.read_text())
        by_label[result["label"]].append(result)
    return by_label


def burst_points(results: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    points: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        for point in result.get("burst", []):
            points[point["devices"]].append(point)
    return points


def plot(
    by_label: dict[str, list[dict[str, Any]]], prefix: str, burst_prefix: str, before: str, after: str, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (burst_ax, open_ax, closed_ax) = plt.subplots(1, 3, figsize=(15, 4.4))
    for side, style, color in ((before, "--", "tab:blue"), (after, "-", "tab:orange")):
        points = burst_points(by_label.get(f"{burst_prefix}-{side}-w2", []))
        devices = sorted(points)
        if devices:
            last = [statistics.median(p["last_ack_s"] for p in points[n]) for n in devices]
            p50 = [statistics.median(p["from_start_p50_ms"] for p in points[n]) / 1000 for n in devices]
            burst_ax.plot(devices, last, style, color=color, marker="o", label=f"last ack ({side})")
            burst_ax.plot(devices, p50, style, color=color, marker=".", alpha=0.5, label=f"median ack ({side})")
        rates: dict[float, list[float]] = defaultdict(list)
        for result in by_label.get(f"{prefix}-{side}-w2", []):
            for point in result.get("open_loop", []):
                rates[point["offered_rate"]].append(point["ack_p99_ms"])
        if rates:
            offered = sorted(rates)
            open_ax.plot(offered, [statistics.median(rates[r]) for r in offered], style, color=color, marker="o",
                         label=f"p99 ({side})")  # fmt: skip
        for workers, x in ((1, 0), (2, 1)):
            runs = [p["acked_per_s"] for r in by_label.get(f"{prefix}-{side}-w{workers}", [])
                    for p in r.get("closed_loop", []) if p["connections"] == 1000]  # fmt: skip
            if runs:
                offset = -0.12 if side == before else 0.12
                closed_ax.scatter([x + offset] * len(runs), runs, color=color, marker="o" if side == after else "x",
                                  label=f"{side}" if workers == 1 else None)  # fmt: skip
    burst_ax.axhline(5, color="red", linewidth=0.8, label="OverTime 5 s")
    burst_ax.set(xlabel="DAS sending 2011 + 2051 + 2061 at once (2 workers)", ylabel="seconds from the instant",
                 title="Top-of-hour burst")  # fmt: skip
    open_ax.axhline(30, color="red", linewidth=0.8, label="target p99 30 ms")
    open_ax.set(xlabel="offered packets/s, 1,000 DAS, 1 in flight (2 workers)", ylabel="ack p99, ms",
                title="Fixed rate")  # fmt: skip
    closed_ax.set(xticks=[0, 1], xticklabels=["1 worker", "2 workers"], xlim=(-0.6, 1.6), ylabel="packets/s",
                  title="Closed loop, 1,000 DAS x 1 in flight")  # fmt: skip
    for ax in (burst_ax, open_ax, closed_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"hj212gw in the field's shape ({before} vs {after}, same session, 2-core host)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="r10")
    parser.add_argument("--burst-prefix", help="the burst panel from another round's files (default: --prefix)")
    parser.add_argument("--before", default="base")
    parser.add_argument("--after", default="head")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_field.png")
    args = parser.parse_args()
    burst_prefix = args.burst_prefix or args.prefix
    by_label = load(args.prefix) | load(burst_prefix)
    plot(by_label, args.prefix, burst_prefix, args.before, args.after, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
