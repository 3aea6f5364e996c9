"""A plain asyncio DAS for the end-to-end tests: writes HJ 212 bytes, reads the gateway's reply frames.

Nothing here knows the gateway's internals; replies are framed and decoded with the protocol
library (tested on its own in tests/protocol), everything else is sockets. `settings_for` gives
the Settings of an in-process gateway on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import Any

from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.framing import FrameBuffer, encode_frame
from hj212gw.protocol.models import Packet
from hj212gw.settings import Settings

MN = "010000A8900016F000169DC0"
PW = "123456"


def settings_for(dsn: str, schema: str, **overrides: Any) -> Settings:
    """An in-process gateway on free loopback ports, committing quickly (2 ms linger)."""
    fields: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "http": "127.0.0.1:0",
        "database_url": dsn,
        "database_schema": schema,
        "gateway_id": "test",
        "use_uvloop": False,
        "writer": {"linger_ms": 2},
    }
    fields.update(overrides)
    return Settings(**fields)


def data_packet(
    qn: str,
    *,
    mn: str = MN,
    pw: str = PW,
    cn: str = "2051",
    flag: int = 5,
    data_time: str = "20240315100000",
    values: dict[str, str] | None = None,
    rf: bool = False,
) -> bytes:
    """One framed upload: `code-Avg=value,code-Flag=N` per factor (default one w01018 value)."""
    values = {"w01018": "40.1"} if values is None else values
    items = ";".join(f"{code}-Avg={value},{code}-Flag=N" for code, value in values.items())
    header = f"QN={qn};ST=32;CN={cn};PW={pw};MN={mn};Flag={flag};" + ("RF=1;" if rf else "")
    return encode_frame(f"{header}CP=&&DataTime={data_time};{items}&&".encode())


def empty_packet(qn: str, cn: str, *, flag: int, mn: str = MN, pw: str = PW, cp: str = "") -> bytes:
    """A framed packet with a header and the given CP content (heartbeat, 1013, 9011, ...)."""
    return encode_frame(f"QN={qn};ST=32;CN={cn};PW={pw};MN={mn};Flag={flag};CP=&&{cp}&&".encode())


@dataclass(frozen=True, slots=True)
class Reply:
    raw: bytes
    packet: Packet


class DasClient:
    """One TCP connection to the gateway, as a data logger would hold it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = FrameBuffer()
        self.eof = False

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> DasClient:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # byte-by-byte tests want one segment per write
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_slowly(self, data: bytes, *, chunk: int = 1, delay_s: float = 0.0) -> None:
        """`data` in writes of `chunk` bytes, `delay_s` apart (0: just yield between writes)."""
        for start in range(0, len(data), chunk):
            await self.send(data[start : start + chunk])
            await asyncio.sleep(delay_s)

    async def reply(self, timeout_s: float = 5.0) -> Reply:
        """The next frame the gateway sent.

        Raises:
            TimeoutError: nothing complete arrived within timeout_s.
            ConnectionError: the gateway closed the connection first.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                frame = self.frames.next_frame()
                if frame is not None:
                    return Reply(frame.raw, decode_frame(frame))
                if self.eof:
                    raise ConnectionError("gateway closed the connection")
                await self._read()

    async def replies(self, count: int, timeout_s: float = 5.0) -> list[Reply]:
        return [await self.reply(timeout_s) for _ in range(count)]

    async def nothing_within(self, seconds: float) -> bool:
        """True if no complete frame arrives within `seconds` (the connection may close)."""
        try:
            await self.reply(seconds)
        except (TimeoutError, ConnectionError):
            return True
        return False

    async def closed_by_gateway(self, timeout_s: float = 5.0) -> bool:
        """Read (and drop) until EOF or reset; True if that happened within timeout_s."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.eof:
                    await self._read()
        except TimeoutError:
            return False
        return True

    async def _read(self) -> None:
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
        self.frames.feed(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
