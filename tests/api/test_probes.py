"""GET /metrics, /healthz and /readyz (api/probes.py)."""

from __future__ import annotations

import pytest
from prometheus_client import Counter

from tests.api.harness import Harness

pytestmark = pytest.mark.integration


async def test_healthz_is_ok_while_the_process_runs(api: Harness) -> None:
    api.ready[0] = False
    assert await api.get("/healthz") == {"status": "ok"}


async def test_readyz_follows_ready(api: Harness) -> None:
    assert await api.get("/readyz") == {"status": "ready"}
    api.ready[0] = False
    body = await api.get("/readyz", status=503)
    assert body["error"] == "not_ready" and body["detail"]
    api.ready[0] = True
    assert await api.get("/readyz") == {"status": "ready"}


async def test_metrics_exposes_the_given_registry(api: Harness) -> None:
    Counter("hj212gw_api_test_hits_total", "Hits, for the test.", registry=api.registry).inc(3)
    resp = await api.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "hj212gw_api_test_hits_total 3.0" in await resp.text()
    resp = await api.client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).endswith("# EOF\n")
