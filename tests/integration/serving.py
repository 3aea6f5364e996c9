"""What the end-to-end server tests share: the standard's example frame and its ack, metric samples,
DataTimes, a capture sent and half-closed, and gateways started on one schema (replicas)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from tests.conftest import Dial
from tests.integration.das import DasClient, Reply, settings_for

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "packets"
E1 = FIXTURES / "good/hj212-2017-std/2051-e1-minute-data.hj212"
E1_ACK = b"##0087QN=20240315101000001;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&5000\r\n"
T0 = datetime(2024, 3, 15, 10, 0)


def sample(running: Running, name: str, **labels: str) -> float:
    return running.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def minute(n: int) -> str:
    """DataTime of the n-th minute after 2024-03-15 10:00."""
    return (T0 + timedelta(minutes=n)).strftime("%Y%m%d%H%M%S")


async def send_and_half_close(dial: Dial, running: Running, wire: bytes) -> list[Reply]:
    """Send one capture, half-close like a DAS that is done, and collect every reply until the gateway closes."""
    das = await dial(running)
    await das.send(wire)
    das.writer.write_eof()
    replies = []
    while True:
        try:
            replies.append(await das.reply(timeout_s=5.0))
        except ConnectionError:
            break
    return replies


async def exists(conn: asyncpg.Connection, query: str, *args: object) -> bool:
    return await conn.fetchval(query, *args) is not None


async def start(started: list[Running], pg_dsn: str, schema: str, **overrides: object) -> Running:
    running = await serve.start(settings_for(pg_dsn, schema, **overrides))
    started.append(running)
    return running


async def connect(running: Running) -> DasClient:
    assert running.gateway.port is not None
    return await DasClient.connect(running.gateway.port)
