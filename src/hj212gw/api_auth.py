"""Who may use the admin HTTP server: where its bearer token comes from and when one is required.

The token comes from `http_token_file` (a file only the gateway can read: a container secret, a
0600 file) or from `HJ212GW_HTTP_TOKEN`; there is deliberately no command-line flag (flags are
visible to every user in `ps`). Listening beyond loopback without a token is refused: the API
shows every device, its peers and its data. Checking a request's token is api.py's middleware.
Imports only settings.
"""

from __future__ import annotations

import ipaddress

from hj212gw.settings import Settings, split_host_port

MIN_TOKEN_CHARS = 16


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
