"""A minimal reference receiver for simulator tests: frames, decodes, records, acks on request.

Not the gateway: it stores nothing but a list, acks (9014) every upload that asks, answers
heartbeats with 9013, can stop acking (an outage), drop connections, and send a history
request to a connected MN. Built on the protocol core only.
"""

import asyncio
from dataclasses import dataclass, field

from hj212gw.protocol.builders import Target, build_data_ack, build_history_request, build_notification_reply
from hj212gw.protocol.constants import UPLOAD_CNS
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.framing import FrameBuffer
from hj212gw.protocol.models import Packet


@dataclass
class Received:
    packet: Packet
    acked: bool

    @property
    def key(self) -> tuple[str | None, str, str | None]:
        return self.packet.mn, self.packet.cn, getattr(self.packet.data, "data_time", None)


@dataclass
class ReferenceReceiver:
    acking: bool = True
    received: list[Received] = field(default_factory=list)
    rejected: int = 0
    links: dict[str, asyncio.Transport] = field(default_factory=dict)
    connections: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for transport in list(self.links.values()):
            transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def drop(self, mn: str | None = None) -> None:
        """Abort the connection of `mn`, or of every device."""
        for key, transport in list(self.links.items()):
            if mn is None or key == mn:
                transport.abort()

    def request_history(self, packet: Packet, cn: str, qn: str, begin: str, end: str) -> None:
        """Send a history fetch to the DAS that sent `packet`, in its version."""
        assert packet.mn is not None
        target = Target(packet.mn, packet.pw or "", packet.st or "", packet.version)
        self.links[packet.mn].write(build_history_request(target, cn, qn, begin, end))

    def packets(self, mn: str | None = None, cn: str | None = None) -> list[Packet]:
        return [
            r.packet for r in self.received if (mn is None or r.packet.mn == mn) and (cn is None or r.packet.cn == cn)
        ]

    def received_packets(self) -> list[Packet]:
        return [r.packet for r in self.received]

    def acked_keys(self) -> list[tuple[str | None, str, str | None, int]]:
        return [(*r.key, r.packet.pno or 0) for r in self.received if r.acked]


class _Conn(asyncio.Protocol):
    def __init__(self, owner: ReferenceReceiver) -> None:
        self.owner = owner
        self.frames = FrameBuffer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.owner.connections += 1

    def data_received(self, data: bytes) -> None:
        self.frames.feed(data)
        while True:
            try:
                frame = self.frames.next_frame()
                if frame is None:
                    return
                packet = decode_frame(frame)
            except Hj212Error:
                self.owner.rejected += 1
                continue
            self._on_packet(packet)

    def _on_packet(self, packet: Packet) -> None:
        owner = self.owner
        if packet.mn:
            owner.links[packet.mn] = self.transport
        acked = False
        if packet.ack_requested and packet.cn in UPLOAD_CNS and owner.acking:
            self.transport.write(build_data_ack(packet))
            acked = True
        elif packet.ack_requested and packet.cn == "9015":
            self.transport.write(build_notification_reply(packet))
        owner.received.append(Received(packet, acked))
