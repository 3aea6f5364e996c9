"""GET /api/v1/gaps: the runs of missing minute, hour and day data, as the gap tracker wrote them.

Filters mn, cn (2051, 2061 or 2031), status (open, requested, filled, given_up, dormant) and a
time range (start, end: RFC 3339; a gap is listed if any of its periods lies in [start, end));
oldest first, paged with an opaque cursor checked before it reaches PostgreSQL. Rows come from
`storage.gaps`; `start` and `end` are the starts of the first and the last missing period, both
inclusive (the BeginTime and EndTime of a history fetch). See docs/monitoring.md "Gaps".
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hj212gw.api.errors import read_db
from hj212gw.api.params import one_of, optional_param, parse_limit, time_bounds
from hj212gw.api.responses import ApiError, page_response, rfc3339
from hj212gw.storage.db import Database
from hj212gw.storage.gaps import GAP_STATUSES, GapStore
from hj212gw.storage.queries import BadCursor

GAPS_ROUTE = "/api/v1/gaps"
GAP_CNS = ("2051", "2061", "2031")


class GapRoutes:
    """The gaps endpoint, bound to the API's database."""

    def __init__(self, db: Database) -> None:
        self.store = GapStore(db)

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get(GAPS_ROUTE, self.gaps)

    async def gaps(self, request: web.Request) -> web.Response:
        query: dict[str, Any] = {
            "mn": optional_param(request, "mn"),
            "cn": one_of(request, "cn", GAP_CNS),
            "status": one_of(request, "status", GAP_STATUSES),
            "limit": parse_limit(optional_param(request, "limit")),
            "cursor": optional_param(request, "cursor"),
        }
        query.update(time_bounds(request))
        try:
            page = await read_db(self.store.fetch(**query))
        except BadCursor as err:
            raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
        return page_response(request, "gaps", [gap_json(row) for row in page.rows], page.next_cursor)


def gap_json(row: dict[str, Any]) -> dict[str, Any]:
    """One gap as the API shows it (times in RFC 3339, UTC)."""
    return {
        "id": row["id"],
        "mn": row["mn"],
        "cn": row["cn"],
        "start": rfc3339(row["start_time"]),
        "end": rfc3339(row["end_time"]),
        "periods": row["periods"],
        "status": row["status"],
        "requests": row["requests"],
        "reason": row["reason"],
        "opened_at": rfc3339(row["opened_at"]),
        "updated_at": rfc3339(row["updated_at"]),
        "last_requested_at": rfc3339(row["last_requested_at"]),
    }
