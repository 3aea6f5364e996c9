"""Attacks on the admin HTTP server (issue #9, item 10): real gateway, real PostgreSQL, real HTTP.

- API queries stuck behind a lock (or just slow) held the writers' pool connections: ten of them
  stopped every ack. Now they have their own pool and time out; acks go on.
- A statement timeout is a 504 JSON with a request id, never PostgreSQL's text.
- Beyond loopback the admin server needs a bearer token (it refuses to start without one);
  /healthz and /readyz stay open; /metrics is protected once a token is set.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from hj212gw.api import bound_port
from hj212gw.api.auth import HttpAccessError
from hj212gw.cli.serve import Running
from tests.conftest import StartGateway
from tests.integration.das import DasClient, data_packet

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-0123456789abcdef"
PG_TEXT = ("canceling statement", "due to statement timeout", "QueryCanceled", "SQLSTATE", "asyncpg")


def base_url(running: Running) -> str:
    return f"http://127.0.0.1:{bound_port(running.http_runner)}"


async def get(url: str, *, token: str | None = None, timeout_s: float = 15.0) -> tuple[int, dict[str, Any], str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.get(url, headers=headers) as resp,
    ):
        text = await resp.text()
        body = await resp.json() if resp.content_type == "application/json" else {}
        return resp.status, body, text


async def lock_devices(pg_dsn: str, schema: str) -> asyncpg.Connection:
    """A transaction holding ACCESS EXCLUSIVE on `devices`: every read of it waits."""
    holder = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    await holder.execute("BEGIN")
    await holder.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
    return holder


# --- the API cannot starve ingestion ------------------------------------------------------------


async def test_api_queries_stuck_on_a_lock_do_not_delay_ingestion_acks(
    start_gateway: StartGateway, pg_dsn: str, schema: str
) -> None:
    running = await start_gateway(http_statement_timeout_s=2.0, http_acquire_timeout_s=0.5)
    das = await DasClient.connect(running.gateway.port or 0)
    await das.send(data_packet("20240315100000001"))
    await das.reply()  # the device is known and the pools are warm
    holder = await lock_devices(pg_dsn, schema)
    try:
        url = base_url(running) + "/api/v1/devices"
        stuck = [asyncio.create_task(get(url)) for _ in range(12)]  # more than the writers' pool holds
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await das.send(data_packet("20240315100000002", data_time="20240315100100"))
        ack = await das.reply(timeout_s=5.0)
        assert ack.packet.cn == "9014" and ack.packet.qn == "20240315100000002"
        assert time.monotonic() - started < 1.5
        answers = await asyncio.gather(*stuck)
    finally:
        await holder.close()
        await das.close()
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) <= {503, 504} and 503 in statuses, statuses  # a full API pool answers at once
    for status, body, text in answers:
        assert body["error"] == ("busy" if status == 503 else "query_timeout") and body["request_id"]
        assert not any(word in text for word in PG_TEXT)


async def test_a_statement_timeout_is_a_504_json_without_postgresql_text(
    start_gateway: StartGateway, pg_dsn: str, schema: str
) -> None:
    running = await start_gateway(http_statement_timeout_s=0.3)
    holder = await lock_devices(pg_dsn, schema)
    try:
        started = time.monotonic()
        status, body, text = await get(base_url(running) + "/api/v1/devices", timeout_s=10.0)
        elapsed = time.monotonic() - started
    finally:
        await holder.close()
    assert status == 504 and body["error"] == "query_timeout", body
    assert elapsed < 3.0
    assert body["request_id"] and not any(word in text for word in PG_TEXT)
    status, body, _ = await get(base_url(running) + "/api/v1/devices")  # the pool recovered
    assert status == 200


async def test_api_connections_are_read_only(start_gateway: StartGateway) -> None:
    running = await start_gateway()
    async with running.api_db.pool.acquire() as conn:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("DELETE FROM devices")


# --- the bearer token ---------------------------------------------------------------------------


async def test_beyond_loopback_the_admin_server_does_not_start_without_a_token(
    start_gateway: StartGateway, pg_dsn: str, schema: str
) -> None:
    with pytest.raises(HttpAccessError, match="beyond loopback"):
        await start_gateway(http="0.0.0.0:0")


async def test_a_token_from_a_file_protects_everything_but_the_probes(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    running = await start_gateway(http="0.0.0.0:0", http_token_file=token_file)
    url = base_url(running)
    for path in ("/healthz", "/readyz"):
        assert (await get(url + path))[0] == 200
    for path in ("/metrics", "/api/v1/devices", "/api/v1/devices/X", "/api/v1/nothing"):
        for token in (None, "wrong", TOKEN[:-1], TOKEN + "x"):
            status, body, _ = await get(url + path, token=token)
            assert (status, body["error"]) == (401, "unauthorized"), (path, token)
    assert (await get(url + "/metrics", token=TOKEN))[0] == 200
    status, body, _ = await get(url + "/api/v1/devices", token=TOKEN)
    assert status == 200 and body["devices"] == []


async def test_on_loopback_a_token_from_the_environment_is_enforced_when_set(
    start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HJ212GW_HTTP_TOKEN", TOKEN)
    running = await start_gateway()
    assert (await get(base_url(running) + "/metrics"))[0] == 401
    assert (await get(base_url(running) + "/metrics", token=TOKEN))[0] == 200
