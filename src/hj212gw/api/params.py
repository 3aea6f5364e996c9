"""Query parameters of the admin API, validated: each bad one is an ApiError(400) naming it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from hj212gw.api.responses import ApiError

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
# RFC 3339 section 5.6 date-time; an offset is mandatory ("Z" or +hh:mm / -hh:mm).
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
# What a "+hh:mm" offset turns into when a client forgets that "+" means space in a query string.
PLUS_DECODED_AS_SPACE = re.compile(r".*:\d{2}(\.\d+)? \d{2}:\d{2}")


def optional_param(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once; empty counts as absent."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, "bad_parameter", f"{name} is given more than once")
    return clean_text(name, values[0]) if values and values[0] != "" else None


def required_param(request: web.Request, name: str) -> str:
    value = optional_param(request, name)
    if value is None:
        raise ApiError(400, "missing_parameter", f"{name} is required")
    return value


def clean_text(name: str, value: str) -> str:
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


def one_of(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    """An optional parameter that must be one of `allowed`."""
    value = optional_param(request, name)
    if value is not None and value not in allowed:
        raise ApiError(400, "bad_parameter", f"{name}={value[:20]!r} must be one of {', '.join(allowed)}")
    return value


def time_bounds(request: web.Request) -> dict[str, datetime | None]:
    """`start` and `end` (RFC 3339), each None when absent."""
    bounds: dict[str, datetime | None] = {}
    for bound in ("start", "end"):
        text = optional_param(request, bound)
        bounds[bound] = parse_time(bound, text) if text is not None else None
    return bounds


async def json_object_body(request: web.Request, max_bytes: int, what: str) -> dict[str, Any]:
    """The request body as a JSON object of at most `max_bytes` (413 beyond, read no further;
    400 if it is not a JSON object). `what` names it in the 413 message ("an acknowledgement")."""
    too_large = ApiError(413, "body_too_large", f"{what} is at most {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise too_large
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, "bad_body", "the body must be a JSON object") from err
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", "the body must be a JSON object")
    return body
