"""Errors as JSON: unknown routes, bugs (one ERROR, a bare 500), outages (503) (api/errors.py)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from hj212gw.api import build_app
from hj212gw.storage.db import Database
from tests.api.harness import Harness, Live, make_harness
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration


async def test_unknown_route_and_wrong_method_are_json(api: Harness) -> None:
    assert (await api.get("/api/v1/nothing", status=404))["error"] == "not_found"
    resp = await api.client.post("/api/v1/devices")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


async def test_a_bug_is_one_error_log_and_a_bare_500(db: Database) -> None:
    def broken() -> bool:
        raise RuntimeError("internal detail that must stay in the log")

    app = build_app(db=db, live=Live(), metrics_registry=CollectorRegistry(), ready=broken)
    with capture_logs() as logs:
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/readyz")
            text = await resp.text()
    assert resp.status == 500 and resp.content_type == "application/json"
    assert "internal detail" not in text and "Traceback" not in text
    (error,) = [e for e in logs if e["log_level"] == "error"]
    assert error["event"] == "api_request_failed" and error["path"] == "/readyz" and error["exc_info"]
    assert error["request_id"] in text and resp.headers["X-Request-Id"] == error["request_id"]


async def test_database_outage_is_503_not_a_bug(pg_dsn: str, schema: str) -> None:
    proxy = TcpProxy.for_dsn(pg_dsn)
    await proxy.start()
    db = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=1, connect_timeout_s=1.0)
    await db.connect()
    try:
        harness = make_harness(db)
        async with harness.client:
            assert (await harness.get("/api/v1/devices"))["devices"] == []
            proxy.cut()
            with capture_logs() as logs:
                body = await harness.get("/api/v1/devices", status=503)
            assert body["error"] == "database_unavailable"
            assert [e["log_level"] for e in logs] == ["warning"]
    finally:
        await db.close()
        await proxy.stop()
