"""The JSON shapes every admin API answer shares (docs/api.md): times, values, errors.

Every time in a response is RFC 3339 in UTC with a `Z` suffix (data rows in another zone on
request: rendering.py); JSON has no NaN or Infinity, so such values are null. Imports nothing of the API's routes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


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


def json_value(value: Any) -> Any:
    """A stored value as JSON can carry it: times as RFC 3339, non-finite floats as null."""
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


def page_response(request: web.Request, key: str, rows: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    """One page of a cursor-paged list: `{key: rows, count, next_cursor, next}` (`next`: this
    request's URL with the cursor, None on the last page)."""
    next_url = str(request.rel_url.update_query(cursor=next_cursor)) if next_cursor else None
    return json_response({key: rows, "count": len(rows), "next_cursor": next_cursor, "next": next_url})
