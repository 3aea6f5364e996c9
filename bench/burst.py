"""Top-of-the-hour burst generator for the gateway benchmark: a fleet of DAS units that each send
their real-time (CN 2011), minute (2051) and hour (2061) packets of the same hour at one common
start instant, one packet in flight per DAS, as real data loggers do (each waits for the 9014
of the previous packet; a real one resends after OverTime, here only counted).

    python -m bench.burst --target 127.0.0.1:9212 --devices 5000 --first-index 0 --run-id 42

Setup: opens --devices connections and binds each by one acked minute packet (bench/idle.py does
the same), then prints `{"ready": n, ...}`. Then it reads one line from stdin, the common start
instant as a wall-clock epoch (seconds, float), so that several generator processes start
together; at that instant every DAS sends its 2011, on its 9014 its 2051, then its 2061. When
every packet is acked, or 60 s after the start, it prints `{"done": ...}` and then one JSON line:
ack latency per acked packet from the start instant and from its own send (ms), the packets not
acked, and the resends a DAS with OverTime 5 s and ReCount 3 would have made.

Lean on purpose (asyncio.Protocol, frames built before the start, uvloop when installed): it
shares the machine's cores with the gateway and PostgreSQL.
"""

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from datetime import timedelta

from bench.idle import raise_fd_limit
from bench.loadgen import BASE_TIME, frame_of, minute_segment, mn_for
from bench.packets import AIR_FACTORS, segment, statistics_groups

OVERTIME_S = 5.0  # a DAS resends a packet after OverTime seconds without its answer...
RECOUNT = 3  # ...at most ReCount times (the parameters HJ 212-2017 names for this)
DEADLINE_S = 60.0  # packets not acked this long after the start are counted as not acked


# Each hour's values differ from the hour before, as real readings do (an unchanging value is a
# flatline to the rules, which would send every packet down their slow path).
def realtime_groups(hour: int) -> list[str]:
    return [f"{code}-Rtd=2{i}.{hour % 10}45,{code}-Flag=N" for i, code in enumerate(AIR_FACTORS)]


def hour_frames(mn: str, hour: int) -> list[bytes]:
    """The three packets a DAS sends at `hour`:00:00 of the generator's first day (loadgen.BASE_TIME):
    the real-time values of that instant, the minute before it and the hour before it."""
    at = BASE_TIME + timedelta(hours=hour)
    text = at.strftime("%Y%m%d%H%M%S")
    minute_before = (at - timedelta(minutes=1)).strftime("%Y%m%d%H%M%S")
    hour_before = (at - timedelta(hours=1)).strftime("%Y%m%d%H%M%S")
    return [
        frame_of(segment("2011", f"{text}001", text, realtime_groups(hour), mn=mn)),
        frame_of(segment("2051", f"{text}002", minute_before, statistics_groups("14.5{i}0", hour), mn=mn)),
        frame_of(segment("2061", f"{text}003", hour_before, statistics_groups("45.{i}", hour + 5), mn=mn)),
    ]


def burst_frames(mn: str, *, cold: bool) -> tuple[list[bytes], int]:
    """The frames of one DAS and how many of them bind it before the burst. Warm (the gateway
    already knows the device's three series, as at every hour but the first after a start): the
    burst of 00:00 binds it, the measured burst is 01:00. Cold: one minute packet binds it, so the
    burst meets every (device, CN) for the first time."""
    if cold:
        return [frame_of(minute_segment(mn, 0)), *hour_frames(mn, 1)], 1
    return [*hour_frames(mn, 0), *hour_frames(mn, 1)], 3


class Fleet:
    """What the devices share: packets still to be acked, and the event set when none are."""

    def __init__(self, packets: int) -> None:
        self.unacked = packets
        self.all_acked = asyncio.Event()

    def acked(self) -> None:
        self.unacked -= 1
        if self.unacked == 0:
            self.all_acked.set()


class Das(asyncio.Protocol):
    """One DAS on one connection: the first `binding` frames bind it (one in flight); after
    start(), the rest go out one at a time, each on the 9014 of the one before. Times are
    time.perf_counter() seconds."""

    def __init__(self, frames: list[bytes], binding: int, bound: asyncio.Future[bool]) -> None:
        self.frames = frames
        self.binding = binding
        self.bound = bound
        self.fleet: Fleet | None = None
        self.step = 0  # index of the frame in flight
        self.sent_at = [0.0] * len(frames)
        self.acked_at = [0.0] * len(frames)
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.bound.done():
            self.bound.set_result(False)

    def start(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._send()

    def _send(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.sent_at[self.step] = time.perf_counter()
            self.transport.write(self.frames[self.step])

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        lines = (self.buffer + data).split(b"\r\n")
        self.buffer = lines.pop()
        for line in lines:
            if b"CN=9014" not in line or self.step >= len(self.frames):
                continue
            self.acked_at[self.step] = now
            self.step += 1
            if self.step < self.binding:
                self._send()
                continue
            if self.step == self.binding:
                self.bound.set_result(True)
                continue
            if self.fleet is not None:
                self.fleet.acked()
            if self.step < len(self.frames):
                self._send()


async def open_fleet(args: argparse.Namespace) -> tuple[list[Das], int]:
    """Connect and bind every device, --batch at a time; returns the bound ones and the failures."""
    loop = asyncio.get_running_loop()
    host, _, port = args.target.rpartition(":")
    bound: list[Das] = []
    errors = 0
    for chunk in range(args.first_index, args.first_index + args.devices, args.batch):
        batch = [
            Das(*burst_frames(mn_for(index, args.run_id), cold=args.cold), loop.create_future())
            for index in range(chunk, min(chunk + args.batch, args.first_index + args.devices))
        ]
        for das in batch:
            try:
                await loop.create_connection(lambda das=das: das, host, int(port))  # type: ignore[misc]
            except OSError:
                das.bound.set_result(False)
        await asyncio.wait([das.bound for das in batch], timeout=DEADLINE_S)
        with_ack = [das for das in batch if das.bound.done() and das.bound.result()]
        bound += with_ack
        errors += len(batch) - len(with_ack)
    return bound, errors


def summary(devices: list[Das], start: float, deadline: float) -> dict[str, object]:
    """Latencies of the burst's packets (ms, from the start instant and from their own send) and
    the resends an OverTime-5-s, ReCount-3 DAS would have made."""
    from_start: list[float] = []
    from_send: list[float] = []
    resends = unacked = 0
    for das in devices:
        for step in range(das.binding, len(das.frames)):
            sent, acked = das.sent_at[step], das.acked_at[step]
            if acked:
                from_start.append(round((acked - start) * 1000, 2))
                from_send.append(round((acked - sent) * 1000, 2))
                resends += min(RECOUNT, math.floor((acked - sent) / OVERTIME_S))
            else:
                unacked += 1
                if sent:
                    resends += min(RECOUNT, math.floor((deadline - sent) / OVERTIME_S))
    return {"from_start_ms": from_start, "from_send_ms": from_send, "unacked": unacked, "resends": resends}


async def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    devices, errors = await open_fleet(args)
    ready = {"ready": len(devices), "bind_errors": errors, "setup_s": round(time.monotonic() - started, 2)}
    print(json.dumps(ready), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    delay = float(line) - time.time()
    start = time.perf_counter() + delay  # the common instant on this process's clock
    fleet = Fleet(len(devices) * 3)
    await asyncio.sleep(max(0.0, delay))
    for das in devices:
        das.start(fleet)
    if devices:
        # Past the deadline the packets still waiting are reported as not acked.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fleet.all_acked.wait(), max(0.0, start + DEADLINE_S - time.perf_counter()))
    print(json.dumps({"done": round(time.perf_counter() - start, 3)}), flush=True)
    print(json.dumps({**ready, **summary(devices, start, min(time.perf_counter(), start + DEADLINE_S))}), flush=True)
    for das in devices:
        if das.transport is not None:
            das.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:9212")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument("--run-id", type=int, default=int(time.time()) & 0xFFFFFF)
    parser.add_argument("--batch", type=int, default=500, help="connections set up concurrently")
    parser.add_argument("--cold", action="store_true", help="bind by one minute packet: the burst is each "
                        "device's first 2011 and 2061 (the first hour after a gateway start)")  # fmt: skip
    args = parser.parse_args()
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
