"""GET /metrics (Prometheus exposition), /healthz (the process runs) and /readyz (it can take data).

/healthz and /readyz are the probes a load balancer calls without credentials (auth.OPEN_PATHS).
"""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from hj212gw.api.responses import json_response


class ProbeRoutes:
    """Metrics and probes; `not_ready_reasons` names what keeps `ready` false."""

    def __init__(
        self,
        registry: prometheus_client.CollectorRegistry,
        ready: Callable[[], bool],
        not_ready_reasons: Callable[[], list[str]] | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.not_ready_reasons = not_ready_reasons

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/metrics", self.metrics)
        router.add_get("/healthz", self.healthz)
        router.add_get("/readyz", self.readyz)

    async def metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready():
            return json_response({"status": "ready"})
        reasons = self.not_ready_reasons() if self.not_ready_reasons is not None else []
        detail = "; ".join(reasons) or "the database is down or the DAS listener is not accepting yet"
        return json_response({"error": "not_ready", "detail": detail, "reasons": reasons}, status=503)
