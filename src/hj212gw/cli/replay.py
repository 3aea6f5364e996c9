"""`hj212gw replay FILE --target HOST:PORT`: re-send a capture to a gateway as its data loggers
would, and report per MN what was sent, acknowledged and rejected.

The capture holds one frame per line, optionally preceded by the time it was captured (ISO 8601,
then a space or tab): `2024-03-15T10:00:00.120+08:00 ##0101QN=…`. Lines without CR LF get it
back; empty lines and lines starting with a single `#` are skipped. Each MN gets one connection
(at most `--connections` open at once), which writes its frames while it reads the replies, then
half-closes and reads until the gateway closes: it never resets a connection, so the gateway
reads every frame sent. A reply acknowledges a frame when it echoes its QN from the header (2017,
2025) or from CP (2005: `CP=&&QN=…&&`); a QN-less 2005 upload is matched to a QN-less 9014 in
order. Owns no protocol rules: frames are read and replies matched with `hj212gw.protocol`.
"""

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from hj212gw.protocol.builders import answered_qn
from hj212gw.protocol.constants import REPLY_CNS, Cn, QnRtn
from hj212gw.protocol.cp import RequestReplyCp
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.framing import FrameBuffer
from hj212gw.protocol.models import Packet, wants_answer
from hj212gw.protocol.packets import parse_packet
from hj212gw.settings import split_host_port

Pace = Literal["fast", "captured"]
_MN = re.compile(rb"MN=([^;&]*)[;&]")  # the MN of a frame that does not parse, to send it on its MN's connection
_UNKNOWN_MN = "?"
_READ_BYTES = 65536


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One line of a capture: the wire bytes, when they were captured, and the packet if valid."""

    wire: bytes
    captured_at: datetime | None
    packet: Packet | None
    mn: str


@dataclass
class Tally:
    """What happened to the frames of one MN (or of all: `ReplayReport.total`).

    `rejected` counts frames the protocol core refuses (the gateway stores none of them) and
    requests the gateway refused with a 9011 (QnRtn other than 1).
    """

    sent: int = 0
    ack_requested: int = 0
    acked: int = 0
    rejected: int = 0
    unacked: int = 0
    unacked_qns: list[str] = field(default_factory=list)
    connection_error: str | None = None

    def add(self, other: "Tally") -> None:
        for name in ("sent", "ack_requested", "acked", "rejected", "unacked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unacked_qns.extend(other.unacked_qns)


@dataclass
class ReplayReport:
    lines: int = 0
    connections: int = 0
    elapsed_s: float = 0.0
    per_mn: dict[str, Tally] = field(default_factory=dict)

    @property
    def total(self) -> Tally:
        total = Tally()
        for tally in self.per_mn.values():
            total.add(tally)
        return total

    @property
    def ok(self) -> bool:
        """Every frame that asked for an ack got one, and no connection failed."""
        return all(t.unacked == 0 and t.connection_error is None for t in self.per_mn.values())


# ---- the capture file ---------------------------------------------------------------------------


def read_capture(path: Path) -> list[CapturedFrame]:
    """Every frame line of a capture file, in file order."""
    frames = []
    for line in path.read_bytes().split(b"\n"):
        line = line.strip()
        if not line or (line.startswith(b"#") and not line.startswith(b"##")):
            continue
        captured_at, wire = _split_time(line)
        frames.append(_captured(wire + b"\r\n", captured_at))
    return frames


def _split_time(line: bytes) -> tuple[datetime | None, bytes]:
    """(capture time, frame) of a line; a line whose prefix is no ISO time is all frame."""
    start = line.find(b"##")
    if start <= 0:
        return None, line
    try:
        captured_at = datetime.fromisoformat(line[:start].strip().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, line
    # A naive time is taken as UTC: only differences between lines matter.
    return captured_at if captured_at.tzinfo else captured_at.replace(tzinfo=UTC), line[start:]


def _captured(wire: bytes, captured_at: datetime | None) -> CapturedFrame:
    try:
        packet: Packet | None = parse_packet(wire)
    except Hj212Error:
        packet = None
    if packet is not None and packet.mn is not None:
        mn = packet.mn
    else:
        found = _MN.search(wire)
        mn = found.group(1).decode("ascii", "replace") if found else _UNKNOWN_MN
    return CapturedFrame(wire, captured_at, packet, mn)


# ---- one connection -----------------------------------------------------------------------------


class _Acks:
    """The acks one connection still awaits, matched as replies arrive."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.by_qn: Counter[str] = Counter()
        self.without_qn = 0
        self.replies = FrameBuffer()

    def expect(self, packet: Packet) -> None:
        self.tally.ack_requested += 1
        qn = answered_qn(packet)
        if qn is None:
            self.without_qn += 1
        else:
            self.by_qn[qn] += 1

    def take(self, data: bytes) -> None:
        self.replies.feed(data)
        while True:
            try:
                frame = self.replies.next_frame()
                if frame is None:
                    return
                reply = decode_frame(frame)
            except Hj212Error:
                continue  # a broken reply acknowledges nothing; the frame it answers stays unacked
            if reply.cn in REPLY_CNS:
                self._match(reply)

    def _match(self, reply: Packet) -> None:
        qn = answered_qn(reply)
        if qn is not None and self.by_qn[qn] > 0:
            self.by_qn[qn] -= 1
        elif qn is None and self.without_qn > 0:
            self.without_qn -= 1
        else:
            return  # a request of the gateway's own, or a reply to something not sent here
        data = reply.data
        if reply.cn == Cn.REQUEST_REPLY and isinstance(data, RequestReplyCp) and data.qn_rtn != QnRtn.READY:
            self.tally.rejected += 1
        else:
            self.tally.acked += 1

    def finish(self) -> None:
        """Whatever is still awaited is unacked."""
        self.tally.unacked = sum(self.by_qn.values()) + self.without_qn
        self.tally.unacked_qns = sorted((+self.by_qn).elements())


class _Clock:
    """When each frame is due: at its captured offset from the first frame (`captured`), or now."""

    def __init__(self, frames: list[CapturedFrame], pace: Pace, speed: float) -> None:
        times = [f.captured_at for f in frames if f.captured_at is not None]
        self.first = min(times) if times and pace == "captured" else None
        self.speed = speed
        self.start = time.monotonic()

    async def wait_for(self, frame: CapturedFrame) -> None:
        if self.first is None or frame.captured_at is None:
            return
        due = self.start + (frame.captured_at - self.first).total_seconds() / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _read_replies(reader: asyncio.StreamReader, acks: _Acks, half_closed: asyncio.Event, idle_s: float) -> None:
    """Read until the gateway closes, or until it stays silent `idle_s` after the half-close."""
    while True:
        try:
            async with asyncio.timeout(idle_s):  # not wait_for: hj212gw.waiting says why
                data = await reader.read(_READ_BYTES)
        except TimeoutError:
            if half_closed.is_set():
                return
            continue  # still sending (a paced capture may pause for long): keep reading
        if not data:
            return
        acks.take(data)


async def _send_all(writer: asyncio.StreamWriter, frames: list[CapturedFrame], acks: _Acks, clock: _Clock) -> None:
    for frame in frames:
        await clock.wait_for(frame)
        if frame.packet is None:
            acks.tally.rejected += 1
        elif wants_answer(frame.packet):
            acks.expect(frame.packet)
        writer.write(frame.wire)
        await writer.drain()
        acks.tally.sent += 1


async def replay_connection(host: str, port: int, frames: list[CapturedFrame], clock: _Clock, idle_s: float) -> Tally:
    """One MN's frames over one connection: sent while replies are read, then half-closed."""
    tally = Tally()
    acks = _Acks(tally)
    half_closed = asyncio.Event()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as error:
        tally.connection_error = f"connect: {error}"
        tally.ack_requested = tally.unacked = sum(1 for f in frames if f.packet is not None and wants_answer(f.packet))
        return tally
    replies = asyncio.create_task(_read_replies(reader, acks, half_closed, idle_s))
    try:
        await _send_all(writer, frames, acks, clock)
        if writer.can_write_eof():
            writer.write_eof()
        half_closed.set()
        await replies
    except OSError as error:  # reset by the gateway (a policy close): what was not acked stays unacked
        tally.connection_error = str(error) or type(error).__name__
    finally:
        replies.cancel()
        writer.close()
        await asyncio.gather(writer.wait_closed(), replies, return_exceptions=True)
        acks.finish()
    return tally


# ---- the whole capture --------------------------------------------------------------------------


async def replay(
    frames: list[CapturedFrame],
    host: str,
    port: int,
    *,
    idle_s: float = 10.0,
    connections: int = 50,
    pace: Pace = "fast",
    speed: float = 1.0,
) -> ReplayReport:
    """Replay `frames`, one concurrent connection per MN, at most `connections` open at once.

    Args:
        idle_s: after the half-close, how long the gateway may stay silent before we give up.
        pace: `captured` keeps the captured spacing (divided by `speed`), `fast` sends at once.
    """
    by_mn: dict[str, list[CapturedFrame]] = defaultdict(list)
    for frame in frames:
        by_mn[frame.mn].append(frame)
    report = ReplayReport(lines=len(frames), connections=len(by_mn))
    clock = _Clock(frames, pace, speed)
    slots = asyncio.Semaphore(connections)

    async def one(mn: str, group: list[CapturedFrame]) -> None:
        await clock.wait_for(group[0])  # a device connects when it has something to send
        async with slots:
            report.per_mn[mn] = await replay_connection(host, port, group, clock, idle_s)

    await asyncio.gather(*(one(mn, group) for mn, group in by_mn.items()))
    report.elapsed_s = round(time.monotonic() - clock.start, 3)
    return report


def report_json(report: ReplayReport) -> dict[str, Any]:
    return {
        "lines": report.lines,
        "connections": report.connections,
        "elapsed_s": report.elapsed_s,
        "total": asdict(report.total),
        "per_mn": {mn: asdict(tally) for mn, tally in sorted(report.per_mn.items())},
    }


def print_report(report: ReplayReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report_json(report)))
        return
    width = max([len("total"), *(len(mn) for mn in report.per_mn)])
    print(f"{'MN':<{width}}  {'sent':>7}  {'acks':>7}  {'acked':>7}  {'rejected':>8}  {'unacked':>7}")
    rows = [*sorted(report.per_mn.items()), ("total", report.total)]
    for mn, t in rows:
        print(f"{mn:<{width}}  {t.sent:>7}  {t.ack_requested:>7}  {t.acked:>7}  {t.rejected:>8}  {t.unacked:>7}")
    print(f"{report.lines} lines, {report.connections} connections, {report.elapsed_s:.1f} s")
    for mn, tally in sorted(report.per_mn.items()):
        if tally.connection_error:
            print(f"  {mn}: connection failed: {tally.connection_error}", file=sys.stderr)
        for qn in tally.unacked_qns[:20]:
            print(f"  {mn}: unacked QN {qn}", file=sys.stderr)


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    replay = commands.add_parser("replay", help="re-send a capture file (one frame per line) to a gateway")
    replay.add_argument("file", type=Path, help="one frame per line, optionally after its ISO 8601 capture time")
    replay.add_argument("--target", required=True, help="HOST:PORT of the gateway")
    replay.add_argument(
        "--pace",
        choices=("fast", "captured"),
        default="fast",
        help="as fast as possible (default) or with the captured spacing",
    )
    replay.add_argument(
        "--speed", type=float, default=1.0, help="with --pace captured: this many times faster than captured"
    )
    replay.add_argument("--connections", type=int, default=50, help="connections open at once (one per MN)")
    replay.add_argument(
        "--timeout", type=float, default=10.0, help="seconds the gateway may stay silent after the half-close"
    )
    replay.add_argument("--json", action="store_true", help="machine-readable report")


def run(args: argparse.Namespace) -> int:
    """Replay `args.file` to `args.target`; exit code 1 when any frame that asked for an ack got none."""
    host, port = split_host_port(args.target)
    if args.speed <= 0 or args.connections < 1:
        print("--speed must be > 0 and --connections >= 1", file=sys.stderr)
        return 2
    frames = read_capture(args.file)
    report = asyncio.run(
        replay(frames, host, port, idle_s=args.timeout, connections=args.connections, pace=args.pace, speed=args.speed)
    )
    print_report(report, args.json)
    return 0 if report.ok else 1
