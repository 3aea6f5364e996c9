"""A lean HJ 212 load generator for the gateway benchmarks: many connections, 10-factor minute
packets (862 bytes, A bit set), each waiting for its 9014; ack latency recorded per packet.

Lean on purpose (pre-built templates, one CRC per packet, no parsing beyond finding the QN in
the ack) so that on a 2-core machine the generator costs the gateway as little CPU as possible.
`hj212gw simulate` is the realistic fleet; this is the measuring stick.

    python -m bench.loadgen --target 127.0.0.1:9212 --connections 1000 --duration 20 [--rate 5000]

Without --rate it runs closed-loop (each connection keeps --window packets in flight) and finds
the sustained maximum; with --rate it offers that many packets/s in total and reports latency.
Prints one JSON object.
"""

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from datetime import datetime, timedelta

from bench.packets import AIR_FACTORS, MINUTE_GROUPS, segment
from hj212gw.protocol.framing import encode_frame

BASE_TIME = datetime(2026, 1, 1)


def mn_for(index: int, run_id: int) -> str:
    return f"BE{run_id:06X}{index:016X}"[:24]


def minute_segment(mn: str, k: int) -> bytes:
    """The k-th minute packet of device `mn`: unique (MN, DataTime), unique QN."""
    moment = BASE_TIME + timedelta(minutes=k)
    data_time = moment.strftime("%Y%m%d%H%M%S")
    return segment("2051", f"{data_time}{k % 1000:03d}", data_time, MINUTE_GROUPS, mn=mn)


frame_of = encode_frame


class Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.latencies: list[float] = []
        self.errors = 0


class Device:
    """One connection: sends packets, matches acks by QN."""

    def __init__(self, index: int, run_id: int, stats: Stats, window: int) -> None:
        self.mn = mn_for(index, run_id)
        self.stats = stats
        self.window = window
        self.k = 0
        self.in_flight: dict[bytes, float] = {}
        self.room = asyncio.Event()
        self.room.set()
        self.buffer = b""

    def next_frame(self) -> tuple[bytes, bytes]:
        segment = minute_segment(self.mn, self.k)
        self.k += 1
        return segment[3:20], frame_of(segment)

    async def run(self, host: str, port: int, stop_at: float, tokens: "asyncio.Queue[None] | None") -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            self.stats.errors += 1
            return
        reading = asyncio.create_task(self._read(reader))
        loop = asyncio.get_running_loop()
        try:
            while loop.time() < stop_at:
                if tokens is not None:
                    try:  # the pacer stops at stop_at: do not wait for a token that never comes
                        await asyncio.wait_for(tokens.get(), max(0.01, stop_at - loop.time()))
                    except TimeoutError:
                        break
                while len(self.in_flight) >= self.window and loop.time() < stop_at:
                    self.room.clear()
                    # An ack may never come (connection lost, gateway stopped): look at the clock.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.room.wait(), max(0.01, stop_at - loop.time()))
                if loop.time() >= stop_at:
                    break
                qn, frame = self.next_frame()
                self.in_flight[qn] = time.perf_counter()
                writer.write(frame)
                self.stats.sent += 1
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            await asyncio.sleep(0.5)  # let the last acks arrive
            reading.cancel()
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        stats = self.stats
        while True:
            data = await reader.read(65536)
            if not data:
                return
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                start = line.find(b"QN=")
                if start < 0 or b"CN=9014" not in line:
                    continue
                sent = self.in_flight.pop(line[start + 3 : start + 20], None)
                if sent is not None:
                    stats.acked += 1
                    stats.latencies.append(time.perf_counter() - sent)
            self.room.set()


async def _pace(tokens: "asyncio.Queue[None]", rate: float, stop_at: float) -> None:
    loop = asyncio.get_running_loop()
    interval = 0.005
    per_tick = rate * interval
    carry = 0.0
    next_tick = loop.time()
    while loop.time() < stop_at:
        carry += per_tick
        for _ in range(int(carry)):
            tokens.put_nowait(None)
        carry -= int(carry)
        next_tick += interval
        await asyncio.sleep(max(0.0, next_tick - loop.time()))


async def run(args: argparse.Namespace) -> dict[str, object]:
    host, _, port = args.target.rpartition(":")
    stats = Stats()
    run_id = int(time.time()) & 0xFFFFFF
    devices = [Device(i, run_id, stats, args.window) for i in range(args.connections)]
    loop = asyncio.get_running_loop()
    connect_for = args.connections / args.connect_rate
    start = loop.time() + connect_for
    stop_at = start + args.duration
    tokens: asyncio.Queue[None] | None = asyncio.Queue() if args.rate else None
    tasks = []
    for i, device in enumerate(devices):
        tasks.append(asyncio.create_task(device.run(host, int(port), stop_at, tokens)))
        if i % 100 == 99:
            await asyncio.sleep(100 / args.connect_rate)
    await asyncio.sleep(max(0.0, start - loop.time()))
    sent0, acked0 = stats.sent, stats.acked
    stats.latencies.clear()
    t0 = time.perf_counter()
    pacer = asyncio.create_task(_pace(tokens, args.rate, stop_at)) if tokens is not None else None
    await asyncio.sleep(max(0.0, stop_at - loop.time()))
    elapsed = time.perf_counter() - t0
    acked = stats.acked - acked0
    sent = stats.sent - sent0
    lat = sorted(stats.latencies)
    await asyncio.gather(*tasks, return_exceptions=True)
    if pacer is not None:
        pacer.cancel()

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

    return {
        "connections": args.connections,
        "offered_rate": args.rate,
        "duration_s": round(elapsed, 2),
        "sent": sent,
        "acked": acked,
        "acked_per_s": round(acked / elapsed, 1),
        "values_per_s": round(acked * len(AIR_FACTORS) / elapsed, 1),
        "ack_p50_ms": pct(0.50),
        "ack_p99_ms": pct(0.99),
        "ack_max_ms": round(lat[-1] * 1000, 2) if lat else None,
        "ack_mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
        "connect_errors": stats.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:9212")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=0.0, help="offered packets/s in total (0: closed loop)")
    parser.add_argument("--window", type=int, default=1, help="packets in flight per connection")
    parser.add_argument("--connect-rate", type=float, default=2000.0, help="new connections per second")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
