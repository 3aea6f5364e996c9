"""GET / redirects to the index, GET /api/v1 lists the routes (api/index.py)."""

from __future__ import annotations

import pytest

from tests.api.harness import Harness

pytestmark = pytest.mark.integration


async def test_root_redirects_to_the_api_index(api: Harness) -> None:
    resp = await api.client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/api/v1"
    followed = await api.client.get("/")
    assert followed.status == 200 and str(followed.url.path) == "/api/v1"


async def test_the_index_lists_every_route(api: Harness) -> None:
    body = await api.get("/api/v1")
    assert body["service"] == "hj212gw" and body["docs"] == "docs/api.md"
    for route in ("/api/v1/data", "/api/v1/data/versions", "/api/v1/devices", "/api/v1/devices/{mn}", "/metrics",
                  "/healthz", "/readyz"):  # fmt: skip
        assert route in body["routes"], route
    assert "/" not in body["routes"]
