"""The aiohttp admin server: Prometheus metrics, health/readiness probes and a read-only JSON API.

Owns HTTP only: request parsing, JSON shapes (see docs/api.md) and error mapping. Reads stored
data through `Database` (the API's own small pool, see `Database.for_reading`) and live
connections through the `LiveState` the server implements; never touches sockets of data
loggers, never parses HJ 212 and never returns a device's PW. PostgreSQL's error text goes to the
log, never to a client: errors carry a `request_id` to find it. Every time in a response is
RFC 3339 in UTC with a `Z` suffix. Where the token comes from and when it is required: api_auth.py.
"""

from __future__ import annotations

import base64
import binascii
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

from hj212gw.api_auth import require_bearer_token
from hj212gw.storage.db import OUTAGE_ERRORS, Database, DatabaseUnavailable, PoolBusy
from hj212gw.storage.queries import BadCursor, DataPage, decode_cursor, decode_version_cursor

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
MAX_CURSOR_CHARS = 8192
REQUEST_ID_HEADER = "X-Request-Id"
VERSIONS_ROUTE = "/api/v1/data/versions"
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

    def __init__(self, status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


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


def error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None, request_id: str | None = None
) -> web.Response:
    """The JSON error shape; `request_id` (5xx and refused parameters) names the log line with the detail."""
    body = {"error": error, "detail": detail} | ({"request_id": request_id} if request_id else {})
    return json_response(body, status=status, headers=headers)


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


def parse_bool(name: str, text: str | None) -> bool | None:
    """`true` or `false` (None when absent); raises ApiError(400)."""
    if text is None:
        return None
    if text not in ("true", "false"):
        raise ApiError(400, "bad_parameter", f"{name}={text[:20]!r} must be true or false")
    return text == "true"


def check_cursor(cursor: str, *, versions: bool = False) -> None:
    """Reject a cursor this API did not issue before it reaches PostgreSQL; raises ApiError(400)."""
    try:
        when, factor = decode_version_cursor(cursor)[:2] if versions else decode_cursor(cursor)
        if when.tzinfo is None or "\x00" in factor:
            raise BadCursor("cursor was not issued by this API")
        when.astimezone(UTC)
    except (BadCursor, OverflowError) as err:
        raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err


def encode_device_cursor(mn: str) -> str:
    """Opaque keyset position after the device `mn`."""
    return base64.urlsafe_b64encode(json.dumps(["mn", mn]).encode()).decode().rstrip("=")


def decode_device_cursor(cursor: str) -> str:
    """The MN a devices cursor points after; raises ApiError(400) for one this API did not issue."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        kind, mn = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if kind != "mn" or not isinstance(mn, str) or "\x00" in mn:
            raise ValueError("not a devices cursor")
    except (ValueError, TypeError, binascii.Error) as err:
        raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
    return mn


async def _db(call: Awaitable[T]) -> T:
    """Await a Database call; an outage becomes 503, a full API pool 503, a statement timeout 504."""
    try:
        return await call
    except PoolBusy as err:
        log.warning("api_pool_busy", detail=str(err))
        raise ApiError(
            503, "busy", "every API database connection is in use; try again shortly", {"Retry-After": "1"}
        ) from err
    except asyncpg.QueryCanceledError as err:
        log.warning("api_query_timeout", detail=str(err))
        raise ApiError(
            504, "query_timeout", "the query ran longer than the API's statement timeout; ask for less"
        ) from err
    except UNAVAILABLE as err:
        log.warning("api_database_unavailable", error=type(err).__name__, detail=str(err))
        raise ApiError(503, "database_unavailable", "PostgreSQL cannot be reached; try again later") from err


# --- handlers --------------------------------------------------------------------------------


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response gets an X-Request-Id; errors become JSON (see `_error_for`)."""
    request_id = uuid.uuid4().hex[:12]
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            response = _error_for(request, err, request_id)
        except Exception as err:
            response = _error_for(request, err, request_id)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _error_for(request: web.Request, err: Exception, request_id: str) -> web.Response:
    """ApiError and HTTP errors as they are; PostgreSQL's text only to the log (a value it refused
    is the client's 400, anything else a 500); any other exception is a bug: one ERROR, a bare 500."""
    if isinstance(err, ApiError):
        shown_id = request_id if err.status >= 500 else None
        return error_response(err.status, err.error, err.detail, err.headers, shown_id)
    if isinstance(err, web.HTTPException):
        error = (err.reason or "error").lower().replace(" ", "_")
        headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
        return error_response(err.status, error, f"{request.method} {request.path}: {err.reason}", headers)
    if isinstance(err, asyncpg.DataError):  # a parameter value PostgreSQL cannot take: the client's input
        log.info(
            "api_parameter_refused",
            path=request.path,
            request_id=request_id,
            error=type(err).__name__,
            detail=str(err)[:500],
        )
        detail = f"a parameter value is out of range for the database; see the gateway log for request_id={request_id}"
        return error_response(400, "bad_parameter", detail, request_id=request_id)
    log.error("api_request_failed", method=request.method, path=request.path, request_id=request_id, exc_info=err)
    detail = f"unexpected error; see the gateway log for request_id={request_id}"
    return error_response(500, "internal_error", detail, request_id=request_id)


class Api:
    """Request handlers bound to the objects they read."""

    def __init__(
        self,
        db: Database,
        live: LiveState,
        registry: prometheus_client.CollectorRegistry,
        ready: Callable[[], bool],
        not_ready_reasons: Callable[[], list[str]] | None = None,
    ) -> None:
        self.db = db
        self.live = live
        self.registry = registry
        self.ready = ready
        self.not_ready_reasons = not_ready_reasons

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

    async def devices(self, request: web.Request) -> web.Response:
        """One page of stored and live devices, keyset-paged by mn (code point order)."""
        cursor = _optional(request, "cursor")
        after = decode_device_cursor(cursor) if cursor is not None else None
        limit = parse_limit(_optional(request, "limit"))
        stored = await _db(self.db.fetch_devices(after=after, limit=limit + 1))
        online = self.live.online()
        by_mn = {row["mn"]: row for row in stored}
        # The first `limit` of the union are each among the first `limit` + 1 of their own source.
        mns = sorted(by_mn.keys() | {mn for mn in online if after is None or mn > after})
        page = mns[:limit]
        next_cursor = encode_device_cursor(page[-1]) if len(mns) > limit else None
        next_url = str(request.rel_url.update_query(cursor=next_cursor)) if next_cursor else None
        devices = [device_json(mn, by_mn.get(mn), online.get(mn)) for mn in page]
        return json_response({"devices": devices, "count": len(devices), "next_cursor": next_cursor, "next": next_url})

    async def device(self, request: web.Request) -> web.Response:
        mn = _clean_text("mn", request.match_info["mn"])
        stored = await _db(self.db.fetch_device(mn))
        live = self.live.online().get(mn)
        if stored is None and live is None:
            raise ApiError(404, "unknown_device", f"no device with mn={mn!r}")
        return json_response(device_json(mn, stored, live))

    async def data(self, request: web.Request) -> web.Response:
        q = DataQuery.from_request(request)
        suspect = parse_bool("time_suspect", _optional(request, "time_suspect"))
        fetch = self.db.fetch_data(
            q.mn, q.cn, q.start, q.end, q.code, limit=q.limit, cursor=q.cursor, time_suspect=suspect
        )
        return await _page(request, fetch)

    async def versions(self, request: web.Request) -> web.Response:
        q = DataQuery.from_request(request, versions=True)
        return await _page(request, self.db.fetch_versions(q.mn, q.cn, q.start, q.end, q.code, q.limit, q.cursor))


async def _page(request: web.Request, fetch: Awaitable[DataPage]) -> web.Response:
    """One page of rows as JSON, with the URL of the next page."""
    try:
        page = await _db(fetch)
    except BadCursor as err:
        raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
    next_url = str(request.rel_url.update_query(cursor=page.next_cursor)) if page.next_cursor else None
    rows = [{key: _json_value(value) for key, value in row.items()} for row in page.rows]
    return json_response({"rows": rows, "count": len(rows), "next_cursor": page.next_cursor, "next": next_url})


@dataclass(frozen=True, slots=True)
class DataQuery:
    """The validated parameters of GET /api/v1/data and /api/v1/data/versions."""

    mn: str
    cn: str
    start: datetime
    end: datetime
    code: str | None
    limit: int
    cursor: str | None

    @classmethod
    def from_request(cls, request: web.Request, *, versions: bool = False) -> DataQuery:
        """Raises ApiError(400) naming the first bad parameter."""
        mn, cn = _required(request, "mn"), _required(request, "cn")
        start = parse_time("start", _required(request, "start"))
        end = parse_time("end", _required(request, "end"))
        if end < start:
            raise ApiError(400, "bad_parameter", f"end ({rfc3339(end)}) is before start ({rfc3339(start)})")
        cursor = _optional(request, "cursor")
        if cursor is not None:
            check_cursor(cursor, versions=versions)
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
    token: str | None = None,
    not_ready_reasons: Callable[[], list[str]] | None = None,
) -> web.Application:
    """The admin application; `metrics_registry=None` exposes prometheus_client's default registry.

    With a `token`, every route but /healthz and /readyz needs `Authorization: Bearer <token>`.
    `not_ready_reasons` names what keeps `ready` false (shown by /readyz).
    """
    api = Api(db, live, metrics_registry or prometheus_client.REGISTRY, ready, not_ready_reasons)
    guards = [] if token is None else [require_bearer_token(token)]
    app = web.Application(middlewares=[errors_as_json, *guards])
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/api/v1/devices", api.devices)
    app.router.add_get("/api/v1/devices/{mn}", api.device)
    app.router.add_get(DATA_ROUTE, api.data)
    app.router.add_get(VERSIONS_ROUTE, api.versions)
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
