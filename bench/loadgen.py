"""A lean HJ 212 load generator for the gateway benchmarks: many connections, 10-factor minute
packets (862 bytes, A bit set), each waiting for its 9014; ack latency recorded per packet.

Lean on purpose (pre-built templates, one CRC per packet, no parsing beyond finding the QN in
the ack) so that on a 2-core machine the generator costs the gateway as little CPU as possible.
`hj212gw simulate` is the realistic fleet; this is the measuring stick.

    python -m bench.loadgen --target 127.0.0.1:9212 --connections 1000 --duration 20 [--rate 5000]

Without --rate it runs closed-loop (each connection keeps --window packets in flight) and finds
the sustained maximum; with --rate it offers that many packets/s in total and reports latency,
measured after --warmup seconds at that rate (each device's first packet, a new MN, falls there;
its p99 is reported apart).
Prints one JSON object.
"""

import argparse
import asyncio
import functools
import json
import statistics
import time
from datetime import UTC, datetime, timedelta

from bench.packets import AIR_FACTORS, MINUTE_VARIANTS, segment
from hj212gw.protocol.framing import encode_frame

BASE_DAYS_BACK = 30
BASE_TIME = datetime.combine(datetime.now(UTC).date() - timedelta(days=BASE_DAYS_BACK), datetime.min.time())
"""Every device's first DataTime (naive, as sent): midnight BASE_DAYS_BACK days before the run's
day (UTC); its k-th minute packet is k minutes later. Relative to the run, not a fixed date: the
data must stay inside the gateway's DataTime window (`past_tolerance`, 400 days) whatever the
calendar says, or every packet would become `time_suspect` and take another path. Thirty days
leave room for the longest closed loop (100 connections advance each device by a few days of
minutes) and keep the data in the past, where a real DAS's are."""


def mn_for(index: int, run_id: int) -> str:
    return f"BE{run_id:06X}{index:016X}"[:24]


def minute_segment(mn: str, k: int) -> bytes:
    """The k-th minute packet of device `mn`: unique (MN, DataTime), unique QN.

    Byte for byte what bench.packets.segment() builds, from parts prepared once: every device
    sends the same k-th DataTime and the k-th of ten variants of the factor groups.
    """
    data_time = _data_time(k)
    groups = _GROUPS[k % len(_GROUPS)]
    return b"QN=%s%03d;%s%s%s%s;%s" % (data_time, k % 1000, _HEAD, mn.encode(), _CP_OPEN, data_time, groups)


_HEAD = b"ST=31;CN=2051;PW=123456;MN="
_CP_OPEN = b";Flag=5;CP=&&DataTime="
_GROUPS = [(";".join(groups) + "&&").encode() for groups in MINUTE_VARIANTS]
_TIMES: dict[int, bytes] = {}


def _data_time(k: int) -> bytes:
    text = _TIMES.get(k)
    if text is None:
        text = _TIMES[k] = (BASE_TIME + timedelta(minutes=k)).strftime("%Y%m%d%H%M%S").encode()
    return text


def _reference(mn: str, k: int) -> bytes:
    data_time = (BASE_TIME + timedelta(minutes=k)).strftime("%Y%m%d%H%M%S")
    return segment("2051", f"{data_time}{k % 1000:03d}", data_time, MINUTE_VARIANTS[k % len(MINUTE_VARIANTS)], mn=mn)


_CHECK_MN = "BE0000010000000000000001"
assert all(minute_segment(_CHECK_MN, k) == _reference(_CHECK_MN, k) for k in (0, 7, 1001))


frame_of = encode_frame


class Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.latencies: list[float] = []
        self.errors = 0


class Device(asyncio.Protocol):
    """One connection (asyncio Protocol: the generator shares the gateway's two cores, so it keeps
    its own cost per packet low): sends packets, matches each 9014 to its QN.

    Closed loop: keeps `window` packets in flight, sending the next one as an ack arrives.
    Fixed rate: the pacer calls `offer()`; a packet goes out if the window has room.
    """

    def __init__(self, index: int, run_id: int, stats: Stats, window: int, closed_loop: bool) -> None:
        self.mn = mn_for(index, run_id)
        self.stats = stats
        self.window = window
        self.closed_loop = closed_loop
        self.k = 0
        self.in_flight: dict[bytes, float] = {}
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.sending = False

    def next_frame(self) -> tuple[bytes, bytes]:
        segment = minute_segment(self.mn, self.k)
        self.k += 1
        return segment[3:20], frame_of(segment)

    def start(self) -> None:
        """Begin sending (closed loop: fill the window)."""
        self.sending = True
        if self.closed_loop:
            for _ in range(self.window - len(self.in_flight)):
                self._send()

    def stop(self) -> None:
        self.sending = False

    def offer(self) -> bool:
        """Send one packet if the window has room; False if it is full."""
        if not self.sending or self.transport is None or len(self.in_flight) >= self.window:
            return False
        self._send()
        return True

    def _send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        qn, frame = self.next_frame()
        self.in_flight[qn] = time.perf_counter()
        self.transport.write(frame)
        self.stats.sent += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        buffer = self.buffer + data
        acked = 0
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 2 :]
            start = line.find(b"QN=")
            if start < 0 or b"CN=9014" not in line:
                continue
            sent = self.in_flight.pop(line[start + 3 : start + 20], None)
            if sent is not None:
                stats.acked += 1
                stats.latencies.append(time.perf_counter() - sent)
                acked += 1
        self.buffer = buffer
        if self.closed_loop and self.sending:
            for _ in range(acked):
                self._send()


async def _pace(devices: list[Device], rate: float, stop_at: float) -> None:
    """Offer `rate` packets/s in total, round-robin over the connections with room."""
    loop = asyncio.get_running_loop()
    interval = 0.005
    per_tick = rate * interval
    carry = 0.0
    next_tick = loop.time()
    turn = 0
    count = len(devices)
    while loop.time() < stop_at:
        carry += per_tick
        due = int(carry)
        carry -= due
        tried = 0
        while due and tried < count:
            device = devices[turn % count]
            turn += 1
            if device.offer():
                due -= 1
                tried = 0
            else:
                tried += 1
        next_tick += interval
        await asyncio.sleep(max(0.0, next_tick - loop.time()))


async def run(args: argparse.Namespace) -> dict[str, object]:
    host, _, port = args.target.rpartition(":")
    stats = Stats()
    run_id = int(time.time()) & 0xFFFFFF
    closed_loop = not args.rate
    devices = [Device(i, run_id, stats, args.window, closed_loop) for i in range(args.connections)]
    loop = asyncio.get_running_loop()
    for i, device in enumerate(devices):
        try:
            await loop.create_connection(lambda device=device: device, host, int(port))  # type: ignore[misc]
        except OSError:
            stats.errors += 1
        if closed_loop:
            device.start()  # warm up while the rest connect
        if i % 100 == 99:
            await asyncio.sleep(100 / args.connect_rate)
    await asyncio.sleep(1.0)  # let the warm-up settle
    warmup: dict[str, object] = {}
    if not closed_loop:
        # Offer the rate for a while before measuring: every device's first packet (a new MN to
        # register) and the first partitions land here, not in the steady-state figures.
        for device in devices:
            device.start()
        stats.latencies.clear()
        warm_until = loop.time() + args.warmup
        await _pace(devices, args.rate, warm_until)
        warm = sorted(stats.latencies)
        warmup = {"warmup_s": args.warmup, "warmup_ack_p99_ms": _pct(warm, 0.99), "warmup_ack_max_ms": _pct(warm, 1.0)}
    sent0, acked0 = stats.sent, stats.acked
    stats.latencies.clear()
    t0 = time.perf_counter()
    stop_at = loop.time() + args.duration
    pacer = asyncio.create_task(_pace(devices, args.rate, stop_at)) if not closed_loop else None
    await asyncio.sleep(max(0.0, stop_at - loop.time()))
    elapsed = time.perf_counter() - t0
    acked = stats.acked - acked0
    sent = stats.sent - sent0
    lat = sorted(stats.latencies)
    for device in devices:
        device.stop()
    if pacer is not None:
        pacer.cancel()
    await asyncio.sleep(0.5)  # let the last acks arrive
    for device in devices:
        if device.transport is not None:
            device.transport.close()

    pct = functools.partial(_pct, lat)
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
        "ack_max_ms": pct(1.0),
        "ack_mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
        "connect_errors": stats.errors,
        **warmup,
    }


def _pct(ordered: list[float], p: float) -> float | None:
    """The p-quantile (0..1) of sorted latencies in ms; None without any."""
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2) if ordered else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:9212")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=0.0, help="offered packets/s in total (0: closed loop)")
    parser.add_argument("--window", type=int, default=1, help="packets in flight per connection")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="fixed rate: seconds offered before measuring (reported apart)"
    )
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
