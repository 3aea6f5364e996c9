"""The admin HTTP server (aiohttp): Prometheus metrics, probes and a read-only JSON API.

Routes per resource: probes.py (/metrics, /healthz, /readyz), devices.py, data.py (stored rows
and their versions); app.py builds the application and serves it; auth.py owns the bearer token.
Reads stored data through `storage` and live connections through the `LiveState` interface in
live.py; it imports nothing of the DAS server (`hj212gw.server`), which
satisfies that interface structurally.
"""

from hj212gw.api.app import bound_port, build_app, start_http, stop_http
from hj212gw.api.live import LiveState, LiveView

__all__ = ["LiveState", "LiveView", "bound_port", "build_app", "start_http", "stop_http"]
