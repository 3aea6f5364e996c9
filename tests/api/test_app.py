"""The admin application served on a real port (api/app.py)."""

from __future__ import annotations

import aiohttp
import pytest

from hj212gw.api import bound_port, build_app, start_http, stop_http
from hj212gw.storage.db import Database
from tests.api.harness import Live

pytestmark = pytest.mark.integration


async def test_start_http_serves_on_a_free_port_until_stopped(db: Database) -> None:
    app = build_app(db=db, live=Live(), metrics_registry=None, ready=lambda: True)
    runner = await start_http(app, "127.0.0.1", 0)
    port = bound_port(runner)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
    finally:
        await stop_http(runner)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/healthz")
