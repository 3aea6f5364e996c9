"""Memory bounded in bytes, per connection (issue #9, item 4): the outgoing buffer of a peer that
does not read, the framing buffer of a peer that drips a frame that never ends, and the two
reasons a socket is not read (write queue full, peer not reading) kept apart.

Real gateway on port 0, real PostgreSQL, real sockets. The hostile client shrinks its receive
buffer so that the kernel's socket buffers fill after a few hundred kilobytes of replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from hj212gw.server.connection import DasConnection
from tests.conftest import StartGateway
from tests.integration.das import MN, DasClient, data_packet, empty_packet, settings_for
from tests.integration.proxy import TcpProxy
from tests.integration.waiting import until

pytestmark = pytest.mark.integration

HOSTILE_MN = "HOSTILE00000000000000001"


def sample(running: Running, name: str, **labels: str) -> float:
    return running.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def non_reader(port: int) -> socket.socket:
    """A client socket that will never read: a 4 KB receive window, so our replies back up fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def flood(sock: socket.socket, packet: bytes, *, max_bytes: int, seconds: float) -> int:
    """Send `packet` over and over without reading, while the socket takes it; bytes sent."""
    burst = packet * (65536 // len(packet))
    sent = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while sent < max_bytes and loop.time() < deadline:
        try:
            sent += sock.send(burst)
        except BlockingIOError:
            await asyncio.sleep(0.005)  # the gateway does not read us now
        except ConnectionError:
            break
        else:
            await asyncio.sleep(0)
    return sent


def connection_of(running: Running, mn: str) -> DasConnection:
    return next(c for c in running.gateway.connections if c.session.mn == mn)


async def watch_buffers(running: Running, peaks: list[int]) -> None:
    """Record the largest outgoing buffer of any connection, every few milliseconds."""
    while True:
        for conn in list(running.gateway.connections):
            if conn.transport is not None:
                peaks[0] = max(peaks[0], conn.transport.get_write_buffer_size())
        await asyncio.sleep(0.002)


async def test_a_peer_that_never_reads_stays_bounded_is_closed_and_others_are_served(
    start_gateway: StartGateway,
) -> None:
    limits = {"write_buffer_high_bytes": 16384, "max_write_buffer_bytes": 32768, "write_stall_timeout_s": 1.0}
    running = await start_gateway(connections=limits)
    assert running.gateway.port is not None
    good = await DasClient.connect(running.gateway.port)
    peaks = [0]
    watcher = asyncio.create_task(watch_buffers(running, peaks))
    hostile = await non_reader(running.gateway.port)
    heartbeat = empty_packet("20240315101000001", "9015", flag=5, mn=HOSTILE_MN)
    try:
        with capture_logs() as logs:
            sent = await flood(hostile, heartbeat, max_bytes=64 << 20, seconds=8.0)
            await until(lambda: sample(running, "hj212gw_connections_closed_total", reason="not_reading") == 1, 8.0)
            await good.send(data_packet("20240315101000002"))
            ack = await good.reply()
    finally:
        watcher.cancel()
        hostile.close()
        await good.close()

    # Without flow control the gateway kept reading and buffered every reply (tens of MB).
    assert sent < 16 << 20
    assert peaks[0] <= limits["max_write_buffer_bytes"] + 2 * len(heartbeat)
    assert ack.packet.cn == "9014"
    warnings = [e for e in logs if e["event"] == "das_not_reading"]
    assert len(warnings) == 1
    assert warnings[0]["mn"] == HOSTILE_MN and "unsent_bytes" in warnings[0]
    assert sample(running, "hj212gw_write_paused_connections") == 0


async def test_writer_backpressure_does_not_resume_a_socket_whose_peer_does_not_read(
    start_gateway: StartGateway,
) -> None:
    # Limits that never close it: this test is about who may resume reading.
    limits = {"write_buffer_high_bytes": 16384, "max_write_buffer_bytes": 64 << 20, "write_stall_timeout_s": 60.0}
    running = await start_gateway(connections=limits)
    assert running.gateway.port is not None
    hostile = await non_reader(running.gateway.port)
    heartbeat = empty_packet("20240315101000001", "9015", flag=5, mn=HOSTILE_MN)
    reader: asyncio.Task[None] | None = None
    try:
        await flood(hostile, heartbeat, max_bytes=64 << 20, seconds=3.0)
        await until(lambda: sample(running, "hj212gw_write_paused_connections") == 1)
        conn = connection_of(running, HOSTILE_MN)
        assert conn.transport is not None and not conn.transport.is_reading()

        running.gateway.pause(conn)  # the write queue was full: then it has room at once
        await until(lambda: not running.gateway.paused)
        assert not conn.transport.is_reading()  # still held: its peer has not read

        running.gateway.pause(conn)  # full again, and now the peer reads everything, from now on
        # (a reader that stops after a quiet spell would let the rest of the flood, read once the
        # socket resumes, back its replies up again: that raced under load)
        reader = asyncio.create_task(drain(hostile, until_quiet_s=3600.0))
        await until(lambda: sample(running, "hj212gw_write_paused_connections") == 0, timeout_s=30.0)
        await until(lambda: not running.gateway.paused, timeout_s=30.0)
        await until(conn.transport.is_reading, timeout_s=30.0)
    finally:
        if reader is not None:
            reader.cancel()
        hostile.close()


async def test_a_full_write_queue_stops_every_socket_not_only_the_one_that_filled_it(
    pg_dsn: str, schema: str, proxy: TcpProxy
) -> None:
    """Before, each socket paused only after its own next read: with the database away, every
    busy connection still added a whole read of packets to the queue (in bench.attack, 50
    connections flooding heartbeats took the 50,000-item queue to 136,000 items)."""
    settings = settings_for(proxy.dsn_via(pg_dsn), schema, writer={"max_pending_items": 20})
    running = await serve.start(settings)
    assert running.gateway.port is not None
    first, second = await DasClient.connect(running.gateway.port), await DasClient.connect(running.gateway.port)
    mns = ["FLOOD000000000000000000A", "FLOOD000000000000000000B"]
    try:
        for das, mn in zip((first, second), mns, strict=True):  # bound and pinned while PostgreSQL is there
            await das.send(data_packet("20240315101000001", mn=mn))
            assert (await das.reply()).packet.cn == "9014"
        proxy.cut()
        beats = [empty_packet(f"20240315101{n:06d}", "9015", flag=4, mn=mns[0]) for n in range(100)]
        await first.send(b"".join(beats))  # one read: the queue is full after it
        await until(lambda: running.gateway.writer.full)
        queued = running.gateway.writer.pending
        await second.send(b"".join(beats).replace(mns[0].encode(), mns[1].encode()))
        await asyncio.sleep(0.3)

        assert running.gateway.writer.pending == queued  # the second socket was not read
        assert sample(running, "hj212gw_paused_connections") == 2
    finally:
        proxy.restore()
        await first.close()
        await second.close()
        await running.stop()


def test_a_connection_accepted_while_the_queue_is_full_is_not_read_under_uvloop(pg_dsn: str) -> None:
    """uvloop starts reading once connection_made returns, whatever it paused: before, a DAS
    that connected while the write queue was full was read at once (flooding clients that
    reconnect took the queue to several times its bound)."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_accepted_while_full(pg_dsn))


async def _accepted_while_full(pg_dsn: str) -> None:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    proxy = TcpProxy.for_dsn(pg_dsn)
    await proxy.start()
    running = await serve.start(settings_for(proxy.dsn_via(pg_dsn), schema, writer={"max_pending_items": 2}))
    assert running.gateway.port is not None
    first = await DasClient.connect(running.gateway.port)
    second: DasClient | None = None
    try:
        await first.send(data_packet("20240315101000001"))
        assert (await first.reply()).packet.cn == "9014"
        proxy.cut()
        with capture_logs():  # the garbage's WARNINGs
            await first.send(b"".join(b"garbage %d\n" % n for n in range(3)) + data_packet("20240315101000002"))
            await until(lambda: running.gateway.writer.full)
            queued = running.gateway.writer.pending
            second = await DasClient.connect(running.gateway.port)
            await second.send(b"garbage from a newcomer\n")  # archived as a raw frame if it were read
            await asyncio.sleep(0.3)
            assert running.gateway.writer.pending == queued
    finally:
        proxy.restore()
        for das in (first, second):
            if das is not None:
                await das.close()
        await running.stop()
        await proxy.stop()
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def drain(sock: socket.socket, *, until_quiet_s: float) -> None:
    """Read and drop until nothing arrives for `until_quiet_s`."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError, ConnectionError):
        while True:
            async with asyncio.timeout(until_quiet_s):
                if not await loop.sock_recv(sock, 1 << 20):
                    return


@pytest.mark.parametrize(
    "head", [b"##4096QN=1;", b"##0000QN=1;", b"##0100QN=1;CP=&&\n"], ids=["declared-max", "declared-0", "newlines"]
)
async def test_a_frame_that_never_ends_is_bounded_after_a_valid_first_packet(
    start_gateway: StartGateway, head: bytes
) -> None:
    """Slowloris after a valid packet: a frame dripped forever never buffers more than the
    longest segment allowed (plus the tail slack), whatever its header declares."""
    running = await start_gateway(connections={"max_consecutive_rejects": 1000})
    assert running.gateway.port is not None
    das = await DasClient.connect(running.gateway.port)
    try:
        await das.send(data_packet("20240315101000001"))
        assert (await das.reply()).packet.cn == "9014"
        conn = connection_of(running, MN)
        bound = running.settings.protocol.max_segment_bytes + 6 + 6 + 64
        peak = 0
        with capture_logs():  # the rejects' WARNINGs are the expected policy here
            await das.send(head)
            for _ in range(150):  # 150 x 100 bytes: several times any frame the gateway accepts
                await das.send(b"x" * 99 + (b"\n" if b"\n" in head else b"y"))
                await asyncio.sleep(0.002)
                peak = max(peak, conn.session.frames.buffered)
            await until(lambda: conn.frames_rejected >= 1)
    finally:
        await das.close()
    assert peak <= bound
