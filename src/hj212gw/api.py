"""The aiohttp admin server: Prometheus metrics, health/readiness probes and a read-only JSON API.

Owns HTTP only: request parsing, JSON shapes (see docs/api.md) and error mapping. Reads stored
data through `Database` and live connections through the `LiveState` the server implements;
never touches sockets of data loggers, never parses HJ 212 and never returns a device's PW.
Every time in a response is RFC 3339 in UTC with a `Z` suffix.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import asyncpg
import prometheus_client
import structlog
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from hj212gw.storage.db import OUTAGE_ERRORS, Database, DatabaseUnavailable
from hj212gw.storage.queries import BadCursor, decode_cursor

log = structlog.get_logger("hj212gw.api")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
# RFC 3339 section 5.6 date-time; an offset is mandatory ("Z" or +hh:mm / -hh:mm).
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
# What a "+hh:mm" offset turns into when a client forgets that "+" means space in a query string.
PLUS_DECODED_AS_SPACE = re.compile(r".*:\d{2}(\.\d+)? \d{2}:\d{2}")
# Registry columns returned by the device endpoints; an explicit list so `pw` can never slip in.
DEVICE_FIELDS = (
    "mn", "name", "site", "enabled", "status", "protocol_version", "st", "first_seen", "last_seen", "last_peer",
    "heartbeat_reply", "crc_variants",
)  # fmt: skip
DATA_ROUTE = "/api/v1/data"
UNAVAILABLE: tuple[type[BaseException], ...] = (DatabaseUnavailable, *OUTAGE_ERRORS)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveDevice:
    """The connection currently holding an MN, as the server sees it.

    `protocol_version` is the edition the session parses as: "2005", "2017" or "2025".
    All datetimes must be timezone-aware.
    """

    mn: str
    peer: str
    connection_id: int | None
    connected_at: datetime
    last_packet_at: datetime | None
    protocol_version: str | None


class LiveState(Protocol):
    """What the server exposes about its live connections."""

    def online(self) -> Mapping[str, LiveDevice]:
        """MN -> the connection currently holding it."""
        ...


class ApiError(Exception):
    """A request that gets a JSON error answer instead of a result."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


def rfc3339(value: datetime | None) -> str | None:
    """`2024-05-01T00:00:00Z`; a fraction of a second only when it is non-zero."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity (the gateway stores such text in `extra` instead)
    return value


def json_response(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    text = json.dumps(body, ensure_ascii=False, allow_nan=False)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def error_response(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"error": error, "detail": detail}, status=status, headers=headers)


# --- request parsing -------------------------------------------------------------------------


def _optional(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once; empty counts as absent."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, "bad_parameter", f"{name} is given more than once")
    return _clean_text(name, values[0]) if values and values[0] != "" else None


def _required(request: web.Request, name: str) -> str:
    value = _optional(request, name)
    if value is None:
        raise ApiError(400, "missing_parameter", f"{name} is required")
    return value


def _clean_text(name: str, value: str) -> str:
    if "\x00" in value:
        raise ApiError(400, "bad_parameter", f"{name} contains a NUL character")
    return value


def parse_time(name: str, text: str) -> datetime:
    """An RFC 3339 date-time with offset, as an aware datetime in UTC; raises ApiError(400)."""
    if PLUS_DECODED_AS_SPACE.fullmatch(text):
        raise ApiError(
            400, "bad_parameter", f"{name}={text!r}: '+' in a query string means a space; encode it as %2B or use Z"
        )
    if not RFC3339.fullmatch(text):
        raise ApiError(400, "bad_parameter", f"{name}={text!r} is not an RFC 3339 date-time with offset")
    try:
        return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except (ValueError, OverflowError) as err:
        raise ApiError(400, "bad_parameter", f"{name}={text!r}: {err}") from err


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isascii() or not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, "bad_parameter", f"limit={text[:20]!r} must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def check_cursor(cursor: str) -> None:
    """Reject a cursor this API did not issue before it reaches PostgreSQL; raises ApiError(400)."""
    try:
        when, factor = decode_cursor(cursor)
        if when.tzinfo is None or "\x00" in factor:
            raise BadCursor("cursor was not issued by this API")
        when.astimezone(UTC)
    except (BadCursor, OverflowError) as err:
        raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err


async def _db(call: Awaitable[T]) -> T:
    """Await a Database call; an outage becomes 503, not a bug."""
    try:
        return await call
    except UNAVAILABLE as err:
        log.warning("api_database_unavailable", error=type(err).__name__, detail=str(err))
        raise ApiError(503, "database_unavailable", "PostgreSQL cannot be reached; try again later") from err


# --- handlers --------------------------------------------------------------------------------


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ApiError and HTTP errors become JSON; anything else is a bug: one ERROR log, a bare 500."""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err.status, err.error, err.detail)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        error = (err.reason or "error").lower().replace(" ", "_")
        headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
        return error_response(err.status, error, f"{request.method} {request.path}: {err.reason}", headers)
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        log.exception("api_request_failed", method=request.method, path=request.path, error_id=error_id)
        return error_response(500, "internal_error", f"unexpected error; see the gateway log for error_id={error_id}")


class Api:
    """Request handlers bound to the objects they read."""

    def __init__(
        self,
        db: Database,
        live: LiveState,
        registry: prometheus_client.CollectorRegistry,
        ready: Callable[[], bool],
    ) -> None:
        self.db = db
        self.live = live
        self.registry = registry
        self.ready = ready

    async def metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready():
            return json_response({"status": "ready"})
        return error_response(503, "not_ready", "the database is down or the DAS listener is not accepting yet")

    async def devices(self, request: web.Request) -> web.Response:
        stored = await _db(self.db.fetch_devices())
        online = self.live.online()
        by_mn = {row["mn"]: row for row in stored}
        mns = sorted(by_mn.keys() | online.keys())
        return json_response({"devices": [device_json(mn, by_mn.get(mn), online.get(mn)) for mn in mns]})

    async def device(self, request: web.Request) -> web.Response:
        mn = _clean_text("mn", request.match_info["mn"])
        stored = await _db(self.db.fetch_device(mn))
        live = self.live.online().get(mn)
        if stored is None and live is None:
            raise ApiError(404, "unknown_device", f"no device with mn={mn!r}")
        return json_response(device_json(mn, stored, live))

    async def data(self, request: web.Request) -> web.Response:
        q = DataQuery.from_request(request)
        try:
            page = await _db(self.db.fetch_data(q.mn, q.cn, q.start, q.end, q.code, limit=q.limit, cursor=q.cursor))
        except BadCursor as err:
            raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
        except asyncpg.DataError as err:  # a value PostgreSQL cannot take as a parameter: the client's input
            raise ApiError(400, "bad_parameter", str(err)) from err
        next_url = str(request.rel_url.update_query(cursor=page.next_cursor)) if page.next_cursor else None
        rows = [{key: _json_value(value) for key, value in row.items()} for row in page.rows]
        return json_response({"rows": rows, "count": len(rows), "next_cursor": page.next_cursor, "next": next_url})


@dataclass(frozen=True, slots=True)
class DataQuery:
    """The validated parameters of GET /api/v1/data."""

    mn: str
    cn: str
    start: datetime
    end: datetime
    code: str | None
    limit: int
    cursor: str | None

    @classmethod
    def from_request(cls, request: web.Request) -> DataQuery:
        """Raises ApiError(400) naming the first bad parameter."""
        mn, cn = _required(request, "mn"), _required(request, "cn")
        start = parse_time("start", _required(request, "start"))
        end = parse_time("end", _required(request, "end"))
        if end < start:
            raise ApiError(400, "bad_parameter", f"end ({rfc3339(end)}) is before start ({rfc3339(start)})")
        cursor = _optional(request, "cursor")
        if cursor is not None:
            check_cursor(cursor)
        limit = parse_limit(_optional(request, "limit"))
        return cls(mn, cn, start, end, _optional(request, "code"), limit, cursor)


def device_json(mn: str, stored: Mapping[str, Any] | None, live: LiveDevice | None) -> dict[str, Any]:
    """One device: registry columns (null if not stored yet) merged with its live connection."""
    out: dict[str, Any] = {name: _json_value(stored.get(name)) if stored else None for name in DEVICE_FIELDS}
    out["mn"] = mn
    if out["protocol_version"] is not None:
        out["protocol_version"] = str(out["protocol_version"])
    out["registered"] = stored is not None
    out["online"] = live is not None
    out["peer"] = live.peer if live else None
    out["connection_id"] = live.connection_id if live else None
    out["connected_at"] = rfc3339(live.connected_at) if live else None
    out["last_packet_at"] = rfc3339(live.last_packet_at) if live else None
    if live and live.protocol_version:
        out["protocol_version"] = live.protocol_version  # what the current session parses as wins
    return out


def build_app(
    *,
    db: Database,
    live: LiveState,
    metrics_registry: prometheus_client.CollectorRegistry | None,
    ready: Callable[[], bool],
) -> web.Application:
    """The admin application; `metrics_registry=None` exposes prometheus_client's default registry."""
    api = Api(db, live, metrics_registry or prometheus_client.REGISTRY, ready)
    app = web.Application(middlewares=[errors_as_json])
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/api/v1/devices", api.devices)
    app.router.add_get("/api/v1/devices/{mn}", api.device)
    app.router.add_get(DATA_ROUTE, api.data)
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
