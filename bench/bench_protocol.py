"""Protocol-core benchmark: frame + CRC + parse to the typed model, per packet, and CRC throughput.

Run: `.venv/bin/python -m bench.bench_protocol` (add `--json` for machine output). Each figure is
the median of several runs; the baselines (a plain table-driven CRC and a naive frame+CRC+parse)
run in the same process so ratios hold on a noisy machine.
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

from bench.packets import hour_packet, minute_packet, realtime_packet
from hj212gw.protocol.crc import crc16
from hj212gw.protocol.packets import parse_packet

_TABLE = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0xA001 if _crc & 1 else _crc >> 1
    _TABLE.append(_crc)


def plain_table_crc(segment: bytes) -> int:
    """Baseline: the HJ 212 CRC with one table lookup per byte."""
    crc = 0xFFFF
    table = _TABLE
    for byte in segment:
        crc = table[(crc >> 8) ^ byte]
    return crc


def naive_decode(wire: bytes) -> dict[str, object]:
    """Baseline: the obvious frame + CRC + parse, as public implementations do it."""
    length = int(wire[2:6])
    segment = wire[6 : 6 + length]
    if plain_table_crc(segment) != int(wire[6 + length : 10 + length], 16):
        raise ValueError("crc")
    text = segment.decode()
    header, _, cp = text.partition("CP=&&")
    fields = dict(item.split("=", 1) for item in header.split(";") if item)
    readings: dict[str, dict[str, str]] = {}
    for item in cp[:-2].replace(",", ";").split(";"):
        name, _, value = item.partition("=")
        code, _, suffix = name.partition("-")
        if suffix:
            readings.setdefault(code, {})[suffix] = value
    return {"fields": fields, "readings": readings}


def decode_with_core(wire: bytes) -> object:
    return parse_packet(wire)


def per_call_us(func: Callable[[bytes], object], arg: bytes, *, runs: int, loops: int) -> float:
    """Median over `runs` of the mean µs per call over `loops` calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(loops):
            func(arg)
        samples.append((time.perf_counter() - start) / loops * 1e6)
    return statistics.median(samples)


def run(runs: int, loops: int) -> dict[str, object]:
    packets = {"2011": realtime_packet(), "2051": minute_packet(), "2061": hour_packet()}
    results: dict[str, object] = {"python": platform.python_version(), "machine": platform.machine(), "packets": {}}
    for cn, wire in packets.items():
        segment = wire[6:-6]
        core = per_call_us(decode_with_core, wire, runs=runs, loops=loops)
        naive = per_call_us(naive_decode, wire, runs=runs, loops=loops)
        crc_fast = per_call_us(crc16, segment, runs=runs, loops=loops)
        crc_plain = per_call_us(plain_table_crc, segment, runs=runs, loops=loops)
        results["packets"][cn] = {  # type: ignore[index]
            "bytes": len(wire),
            "decode_us": round(core, 2),
            "decode_packets_per_s": round(1e6 / core),
            "naive_decode_us": round(naive, 2),
            "decode_speedup": round(naive / core, 2),
            "crc_us": round(crc_fast, 2),
            "crc_mb_per_s": round(len(segment) / crc_fast, 1),
            "plain_crc_us": round(crc_plain, 2),
            "plain_crc_mb_per_s": round(len(segment) / crc_plain, 1),
            "crc_speedup": round(crc_plain / crc_fast, 2),
        }
    big = bytes(range(256)) * 256  # 64 KiB
    fast_big = per_call_us(crc16, big, runs=runs, loops=max(1, loops // 50))
    plain_big = per_call_us(plain_table_crc, big, runs=runs, loops=max(1, loops // 500))
    results["crc_64k"] = {
        "crc_mb_per_s": round(len(big) / fast_big, 1),
        "plain_crc_mb_per_s": round(len(big) / plain_big, 1),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.runs, args.loops)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"Python {results['python']} on {results['machine']}; median of {args.runs} runs x {args.loops} loops\n")
    print("| CN | bytes | frame+CRC+parse µs | packets/s | naive µs | speed-up | CRC µs | CRC MB/s | plain CRC MB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cn, r in results["packets"].items():  # type: ignore[union-attr]
        print(
            f"| {cn} | {r['bytes']} | {r['decode_us']} | {r['decode_packets_per_s']:,} | {r['naive_decode_us']} | "
            f"{r['decode_speedup']}× | {r['crc_us']} | {r['crc_mb_per_s']} | {r['plain_crc_mb_per_s']} |"
        )
    big = results["crc_64k"]
    print(f"\nCRC over 64 KiB: {big['crc_mb_per_s']} MB/s (plain table: {big['plain_crc_mb_per_s']} MB/s)")  # type: ignore[index]


if __name__ == "__main__":
    main()
