"""Who may use the admin HTTP server: where its bearer token comes from and when one is required.

The token comes from `http_token_file` (a file only the gateway can read: a container secret, a
0600 file) or from `HJ212GW_HTTP_TOKEN`; there is deliberately no command-line flag (flags are
visible to every user in `ps`). Listening beyond loopback without a token is refused: the API
shows every device, its peers and its data. The middleware that checks each request is here too
(app.py installs it); it imports nothing else of the API, so its 401 is built here in the API's shape.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from hj212gw.settings import Settings, split_host_port

log = structlog.get_logger("hj212gw.api")

MIN_TOKEN_CHARS = 16
# The probes a load balancer or orchestrator calls without credentials; they reveal nothing.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
UNAUTHORIZED = {"error": "unauthorized", "detail": "this endpoint needs Authorization: Bearer <token>"}


class HttpAccessError(Exception):
    """The admin HTTP server must not start as configured; the message is one line for the operator."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); wildcards and names are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_http_token(settings: Settings) -> str | None:
    """The configured token, or None; raises HttpAccessError for an unreadable, short or odd one."""
    if settings.http_token_file is not None and settings.http_token is not None:
        raise HttpAccessError("set http_token_file or HJ212GW_HTTP_TOKEN, not both")
    if settings.http_token_file is not None:
        path = settings.http_token_file.expanduser().absolute()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise HttpAccessError(f"cannot read http_token_file {path}: {reason}") from err
        source = f"http_token_file {path}"
    elif settings.http_token is not None:
        token, source = settings.http_token.get_secret_value().strip(), "HJ212GW_HTTP_TOKEN"
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise HttpAccessError(f"the token in {source} is shorter than {MIN_TOKEN_CHARS} characters")
    if not all("!" <= char <= "~" for char in token):
        raise HttpAccessError(f"the token in {source} must be printable ASCII without spaces")
    return token


def http_access_token(settings: Settings) -> str | None:
    """The token the admin server requires (None: open, allowed on loopback only); raises HttpAccessError."""
    token = load_http_token(settings)
    host, _ = split_host_port(settings.http)
    if token is None and not is_loopback(host):
        raise HttpAccessError(
            f"the admin HTTP server would listen on {settings.http}, beyond loopback, without a token: "
            "put one in a file named by http_token_file (or set HJ212GW_HTTP_TOKEN), or listen on 127.0.0.1"
        )
    return token


def require_bearer_token(token: str) -> Middleware:
    """Middleware: `Authorization: Bearer <token>` on every path but OPEN_PATHS, compared in constant time."""
    expected = token.encode()

    @web.middleware
    async def bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)):
                log.warning("api_unauthorized", path=request.path[:200], peer=request.remote)
                return web.Response(
                    text=json.dumps(UNAUTHORIZED),
                    status=401,
                    content_type="application/json",
                    headers={"WWW-Authenticate": 'Bearer realm="hj212gw"'},
                )
        return await handler(request)

    return bearer_token
