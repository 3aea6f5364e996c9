"""The admin application: the routes of every resource behind one error middleware, and its server.

Owns HTTP only: request parsing, JSON shapes (see docs/api.md) and error mapping. Reads stored
data through `Database` (the API's own small pool, see `Database.for_reading`) and live
connections through the `LiveState` the server implements (live.py); never touches sockets of
data loggers, never parses HJ 212 and never returns a device's PW. Where the token comes from and
when it is required: auth.py.
"""

from __future__ import annotations

from collections.abc import Callable
from zoneinfo import ZoneInfo

import prometheus_client
import structlog
from aiohttp import web

from hj212gw.alerts.acks import AlertAcks
from hj212gw.api.alerts import AlertRoutes
from hj212gw.api.auth import require_bearer_token
from hj212gw.api.commands import CommandRoutes
from hj212gw.api.data import DataRoutes
from hj212gw.api.device_events import DeviceEventRoutes
from hj212gw.api.devices import DeviceRoutes
from hj212gw.api.errors import errors_as_json
from hj212gw.api.gaps import GapRoutes
from hj212gw.api.index import IndexRoutes
from hj212gw.api.live import LiveState
from hj212gw.api.probes import ProbeRoutes
from hj212gw.storage.commands import CommandStore
from hj212gw.storage.db import Database

log = structlog.get_logger("hj212gw.api")


def build_app(
    *,
    db: Database,
    live: LiveState,
    metrics_registry: prometheus_client.CollectorRegistry | None,
    ready: Callable[[], bool],
    token: str | None = None,
    not_ready_reasons: Callable[[], list[str]] | None = None,
    device_timezone: str = "Asia/Shanghai",
    commands: CommandStore | None = None,
    alert_acks: AlertAcks | None = None,
) -> web.Application:
    """The admin application; `metrics_registry=None` exposes prometheus_client's default registry.

    With a `token`, every route but /healthz and /readyz needs `Authorization: Bearer <token>`.
    `not_ready_reasons` names what keeps `ready` false (shown by /readyz); `device_timezone` is
    the zone `?tz=device` renders data times in. `/` redirects to the index of routes, /api/v1.
    `commands`: where POSTed commands are inserted (a writable pool; None: POST is refused); a
    POST needs the token, so an API without one takes no commands. `alert_acks`: where alert
    acknowledgements are written (a writable pool; None: POST .../ack is refused), token as for commands.
    """
    guards = [] if token is None else [require_bearer_token(token)]
    app = web.Application(middlewares=[errors_as_json, *guards])
    ProbeRoutes(metrics_registry or prometheus_client.REGISTRY, ready, not_ready_reasons).add_to(app.router)
    DeviceRoutes(db, live).add_to(app.router)
    DeviceEventRoutes(db).add_to(app.router)
    DataRoutes(db, live, ZoneInfo(device_timezone)).add_to(app.router)
    CommandRoutes(CommandStore(db), commands, token_set=token is not None).add_to(app.router)
    GapRoutes(db).add_to(app.router)
    AlertRoutes(db, alert_acks, token_set=token is not None).add_to(app.router)
    IndexRoutes().add_to(app.router)
    return app


async def start_http(app: web.Application, host: str, port: int, *, access_log: bool = False) -> web.AppRunner:
    """Serve `app` on host:port (port 0: any free port, see `bound_port`); stop with `stop_http`.

    The aiohttp access log (one INFO line per request) is off unless `access_log` is true.
    """
    runner = web.AppRunner(app) if access_log else web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("http_listening", host=host, port=bound_port(runner))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the first site of `runner` listens on."""
    return int(runner.addresses[0][1])


async def stop_http(runner: web.AppRunner) -> None:
    """Stop accepting, let in-flight requests finish briefly, release the port."""
    await runner.cleanup()
    log.info("http_stopped")
