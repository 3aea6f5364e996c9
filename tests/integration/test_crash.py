"""`kill -9` of a loaded `hj212gw serve`: every QN whose 9014 arrived is in `data`, and after a
restart the DAS's resends of the rest are stored too.

Runs the real console script as a subprocess; the DAS fleet is a few plain asyncio connections
that send back to back and record each QN the gateway acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from tests.integration.child import GatewayChild as Gateway
from tests.integration.das import DasClient, data_packet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HJ212GW = Path(sys.executable).parent / "hj212gw"
T0 = datetime(2024, 3, 15, 10, 0)
DEVICES = 5
WINDOW = 50  # unacked uploads a DAS keeps in flight


@pytest.fixture
async def gateway(pg_dsn: str, schema: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    child = Gateway(pg_dsn, schema, tmp_path / "gateway.log")
    yield child
    if child.process is not None and child.process.poll() is None:
        child.process.kill()
        child.process.wait(10)


def upload(device: int, n: int) -> tuple[str, bytes]:
    qn = f"20240315{device:02d}{n:07d}"
    data_time = (T0 + timedelta(minutes=n)).strftime("%Y%m%d%H%M%S")
    wire = data_packet(qn, mn=f"CRASH{device:02d}", data_time=data_time, values={"w01018": str(n), "w21003": "1.1"})
    return qn, wire


async def send_until_cut(port: int, device: int, acked: set[str], sent: list[str]) -> None:
    """Send uploads with up to WINDOW unacked in flight until the connection dies; record every 9014."""
    das = await DasClient.connect(port)
    window = asyncio.Semaphore(WINDOW)

    async def send() -> None:
        for n in range(1_000_000):
            await window.acquire()
            qn, wire = upload(device, n)
            sent.append(qn)
            await das.send(wire)

    sender = asyncio.create_task(send())
    with contextlib.suppress(ConnectionError, TimeoutError):
        while True:
            reply = await das.reply(timeout_s=30.0)
            assert reply.packet.cn == "9014"
            acked.add(str(reply.packet.qn))
            window.release()
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await sender
    await das.close()


async def resend_unacked(port: int, device: int, sent: list[str], acked: set[str]) -> None:
    """What a DAS does after reconnecting: send again everything that was never acknowledged."""
    unacked = {qn: n for n, qn in enumerate(sent) if qn not in acked}
    das = await DasClient.connect(port)
    try:
        await das.send(b"".join(upload(device, n)[1] for n in unacked.values()))
        for reply in await das.replies(len(unacked), timeout_s=10.0):
            assert reply.packet.cn == "9014" and reply.packet.qn in unacked
            acked.add(reply.packet.qn)
    finally:
        await das.close()


async def test_kill_9_under_load_loses_nothing_that_was_acked(gateway: Gateway, pg_dsn: str, schema: str) -> None:
    await gateway.start()
    acked: list[set[str]] = [set() for _ in range(DEVICES)]
    sent: list[list[str]] = [[] for _ in range(DEVICES)]
    fleet = [asyncio.create_task(send_until_cut(gateway.port, d, acked[d], sent[d])) for d in range(DEVICES)]
    async with asyncio.timeout(20):
        while sum(map(len, acked)) < 3000:
            await asyncio.sleep(0.05)

    gateway.kill()
    await asyncio.wait_for(asyncio.gather(*fleet), 30)
    acked_before = [set(a) for a in acked]

    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    try:
        for device in range(DEVICES):
            stored = {r["qn"] for r in await conn.fetch("SELECT qn FROM data WHERE mn = $1", f"CRASH{device:02d}")}
            lost = acked_before[device] - stored
            assert not lost, f"device {device}: {len(lost)} acked QNs not stored, e.g. {sorted(lost)[:3]}"
        assert sum(map(len, sent)) > sum(map(len, acked_before))  # the kill did cut traffic in flight

        await gateway.start()
        await asyncio.gather(*(resend_unacked(gateway.port, d, sent[d], acked[d]) for d in range(DEVICES)))
        assert gateway.terminate() == 0

        for device in range(DEVICES):
            rows = await conn.fetch(
                "SELECT qn, revisions FROM data WHERE mn = $1 AND factor = 'w01018'", f"CRASH{device:02d}"
            )
            assert {r["qn"] for r in rows} == set(sent[device])
            assert {r["revisions"] for r in rows} == {0}
    finally:
        await conn.close()
