"""server/listener.py: the policies that span connections (limits per IP, idle and first-packet
timers, shutdown with packets in flight, quarantine) and secrets kept out of logs."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.cli.serve import Running
from hj212gw.protocol.framing import encode_frame
from tests.conftest import Dial, StartGateway
from tests.integration.das import MN, PW, DasClient, data_packet
from tests.integration.serving import E1, E1_ACK, connect, minute, sample, start
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration


async def pump(das: DasClient, mn: str, acked: set[str], sent: list[str]) -> None:
    """Send uploads back to back (never waiting for an ack) until the gateway goes away."""
    reader = asyncio.create_task(collect_acks(das, acked))
    try:
        for n in range(100_000):
            qn = f"2024031510{n:07d}"
            sent.append(qn)
            await das.send(data_packet(qn, mn=mn, data_time=minute(n), values={"w01018": str(n)}))
            await asyncio.sleep(0)
    except ConnectionError:
        pass
    await reader


async def collect_acks(das: DasClient, acked: set[str]) -> None:
    with contextlib.suppress(ConnectionError, TimeoutError):
        while True:
            reply = await das.reply(timeout_s=30.0)
            assert reply.packet.cn == "9014" and reply.packet.qn is not None
            acked.add(reply.packet.qn)


async def test_quarantine_registers_the_device_archives_and_acks_but_stores_no_data(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, devices={"unknown_mn": "quarantine"})
    das = await connect(running)
    await das.send(data_packet("20240315101000001"))
    reply = await das.reply()
    assert (reply.packet.cn, reply.packet.qn) == ("9014", "20240315101000001")  # the raw frame is stored

    async def registered() -> bool:  # sightings are written within about a second, not with the batch
        return await conn.fetchval("SELECT status FROM devices WHERE mn = $1", MN) == "quarantined"

    await eventually(registered)
    assert await conn.fetchval("SELECT count(*) FROM raw_frames WHERE mn = $1 AND verdict = 'ok'", MN) == 1
    assert await conn.fetchval("SELECT count(*) FROM data") == 0
    await das.close()
    # After the registry refresh the device stays quarantined: its status is not overwritten.
    await running.gateway.registry.refresh(running.db)
    assert running.gateway.registry.admit(MN, PW).action == "archive"  # with its pinned PW


async def test_the_access_password_never_reaches_a_log_line(gateways: list[Running], pg_dsn: str, schema: str) -> None:
    running = await start(gateways, pg_dsn, schema)
    das = await connect(running)
    bad_crc = encode_frame(b"QN=20240315101000001;ST=32;CN=2051;PW=S3cr3t;MN=M1;Flag=5;CP=&&DataTime=20240315100000&&")
    bad_crc = bad_crc[:-6] + b"0000\r\n"
    with capture_logs() as logs:
        await das.send(bad_crc)
        assert await das.nothing_within(0.3)
    rejected = [entry for entry in logs if entry["event"] == "frame_rejected"]
    assert rejected and "PW=***" in rejected[0]["raw"]
    assert all("S3cr3t" not in repr(entry) for entry in logs)
    await das.close()


@pytest.mark.slow
async def test_a_slow_sender_is_served_and_not_taken_for_idle(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway(connections={"idle_timeout_s": 1.5})
    das = await dial(running)
    wire = encode_frame(
        b"QN=20240315101000001;ST=32;CN=2051;PW=1;MN=M1;Flag=5;CP=&&DataTime=20240315100000;w01018-Avg=1&&"
    )
    await das.send_slowly(wire, delay_s=0.05)  # about 5 s for the frame, 50 ms between bytes

    ack = await das.reply()

    assert (ack.packet.cn, ack.packet.qn) == ("9014", "20240315101000001")
    assert await conn.fetchval("SELECT avg FROM data WHERE mn = 'M1'") == 1.0


async def test_an_idle_connection_is_closed(start_gateway: StartGateway, dial: Dial) -> None:
    running = await start_gateway(connections={"idle_timeout_s": 1.0})
    das = await dial(running)
    await das.send(E1.read_bytes())
    assert (await das.reply()).raw == E1_ACK

    assert await das.closed_by_gateway(timeout_s=4.0)
    await until(lambda: sample(running, "hj212gw_connections_closed_total", reason="idle_timeout") == 1)


async def test_a_connection_without_a_valid_packet_is_closed_after_the_first_packet_timeout(
    start_gateway: StartGateway, dial: Dial
) -> None:
    running = await start_gateway(connections={"first_packet_timeout_s": 1.0, "idle_timeout_s": 30.0})
    das = await dial(running)
    # Busy but never complete: E1 at 10 bytes a second keeps the idle timer fresh for 40 s.
    trickle = asyncio.create_task(das.send_slowly(E1.read_bytes(), delay_s=0.1))
    try:
        assert await das.closed_by_gateway(timeout_s=4.0)
    finally:
        trickle.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await trickle
    await until(lambda: sample(running, "hj212gw_connections_closed_total", reason="no_valid_packet") == 1)


async def test_connections_beyond_max_per_ip_are_refused(start_gateway: StartGateway, dial: Dial) -> None:
    running = await start_gateway(connections={"max_connections_per_ip": 2})
    first, second = await dial(running), await dial(running)
    third = await dial(running)

    assert await third.closed_by_gateway()
    for n, das in enumerate((first, second), start=1):
        await das.send(data_packet(f"2024031510100000{n}", mn=f"MN{n}"))
        assert (await das.reply()).packet.qn == f"2024031510100000{n}"
    assert sample(running, "hj212gw_connections_total", outcome="max_connections_per_ip") == 1

    await first.close()
    await until(lambda: sample(running, "hj212gw_connections_open") == 1)
    fourth = await dial(running)
    await fourth.send(data_packet("20240315101000004", mn="MN4"))
    assert (await fourth.reply()).packet.qn == "20240315101000004"


async def test_stop_with_packets_in_flight_acks_only_what_was_committed(
    start_gateway: StartGateway, dial: Dial, pg_dsn: str, schema: str
) -> None:
    running = await start_gateway()
    acked: dict[str, set[str]] = {f"MN{n}": set() for n in range(4)}
    sent: dict[str, list[str]] = {mn: [] for mn in acked}
    clients = [await dial(running) for _ in acked]
    pumps = [asyncio.create_task(pump(das, mn, acked[mn], sent[mn])) for das, mn in zip(clients, acked, strict=True)]
    await asyncio.sleep(0.5)

    await running.stop()
    await asyncio.wait_for(asyncio.gather(*pumps), 10)

    check = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    try:
        for mn, qns_acked in acked.items():
            stored = {r["qn"] for r in await check.fetch("SELECT qn FROM data WHERE mn = $1", mn)}
            assert qns_acked, f"{mn}: nothing acked before the stop"
            assert qns_acked <= stored, f"{mn}: acked but not stored: {sorted(qns_acked - stored)[:5]}"
        closed = await check.fetch("SELECT mn, close_reason FROM connections ORDER BY mn")
        assert [tuple(c) for c in closed] == [(mn, "shutdown") for mn in acked]
    finally:
        await check.close()
    assert sum(len(s) for s in sent.values()) > sum(len(a) for a in acked.values())  # the stop cut real traffic
