"""`hj212gw replay FILE --target HOST:PORT`: re-send captured frames to a gateway, one connection
per MN, and report which were acknowledged.

A frame that asks for an ack (Flag bit 0) is sent, then its 9014 (matching QN) awaited before the
next frame of that MN goes out; others are sent back to back. Lines without CR LF get it back.
"""

import argparse
import asyncio
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hj212gw.protocol.constants import Cn
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.framing import FrameBuffer
from hj212gw.protocol.models import Packet
from hj212gw.protocol.packets import parse_packet
from hj212gw.settings import split_host_port


@dataclass
class ReplayReport:
    lines: int = 0
    unparseable: int = 0
    sent: int = 0
    ack_requested: int = 0
    acked: int = 0
    unacked_qns: list[str] = field(default_factory=list)
    connections: int = 0


def read_frames(path: Path) -> list[tuple[bytes, Packet | None]]:
    """Every non-empty line as wire bytes (CR LF restored) with its packet, or None if unparseable."""
    found = []
    for line in path.read_bytes().splitlines():
        line = line.strip()
        if not line:
            continue
        wire = line + b"\r\n"
        try:
            packet: Packet | None = parse_packet(wire)
        except Hj212Error:
            packet = None
        found.append((wire, packet))
    return found


async def _replay_one(
    host: str, port: int, frames: list[tuple[bytes, Packet | None]], timeout_s: float, report: ReplayReport
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    report.connections += 1
    acks = FrameBuffer()
    try:
        for wire, packet in frames:
            writer.write(wire)
            await writer.drain()
            report.sent += 1
            if packet is None or not packet.ack_requested or packet.qn is None:
                continue
            report.ack_requested += 1
            if await _await_ack(reader, acks, packet.qn, timeout_s):
                report.acked += 1
            else:
                report.unacked_qns.append(packet.qn)
    finally:
        writer.close()
        await writer.wait_closed()


async def _await_ack(reader: asyncio.StreamReader, acks: FrameBuffer, qn: str, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        while True:
            try:
                frame = acks.next_frame()
            except Hj212Error:
                continue
            if frame is None:
                break
            try:
                reply = decode_frame(frame)
            except Hj212Error:
                continue
            if reply.cn == Cn.DATA_REPLY and reply.qn == qn:
                return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            data = await asyncio.wait_for(reader.read(65536), remaining)
        except TimeoutError:
            return False
        if not data:
            return False
        acks.feed(data)


async def replay(path: Path, host: str, port: int, *, timeout_s: float = 10.0, parallel: int = 50) -> ReplayReport:
    frames = read_frames(path)
    report = ReplayReport(lines=len(frames), unparseable=sum(1 for _, p in frames if p is None))
    by_mn: dict[str, list[tuple[bytes, Packet | None]]] = defaultdict(list)
    for wire, packet in frames:
        by_mn[(packet.mn if packet else None) or "?"].append((wire, packet))
    limit = asyncio.Semaphore(parallel)

    async def one(group: list[tuple[bytes, Packet | None]]) -> None:
        async with limit:
            await _replay_one(host, port, group, timeout_s, report)

    await asyncio.gather(*(one(group) for group in by_mn.values()))
    return report


def print_report(report: ReplayReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(report)))
        return
    print(
        f"lines {report.lines}  unparseable {report.unparseable}  sent {report.sent}  connections {report.connections}"
    )
    print(f"ack requested {report.ack_requested}  acked {report.acked}  unacked {len(report.unacked_qns)}")
    for qn in report.unacked_qns[:20]:
        print(f"  unacked QN {qn}", file=sys.stderr)


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    replay = commands.add_parser("replay", help="re-send a capture file (one frame per line) to a gateway")
    replay.add_argument("file", type=Path)
    replay.add_argument("--target", required=True, help="HOST:PORT of the gateway")
    replay.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each 9014")
    replay.add_argument("--json", action="store_true", help="machine-readable report")


def run(args: argparse.Namespace) -> int:
    """Replay `args.file` to `args.target`; exit code 1 when any frame that asked for an ack got none."""
    host, port = split_host_port(args.target)
    report = asyncio.run(replay(args.file, host, port, timeout_s=args.timeout))
    print_report(report, args.json)
    return 0 if not report.unacked_qns else 1
