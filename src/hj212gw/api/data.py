"""GET /api/v1/data (the current value of each reading), /api/v1/data/versions (every arrival) and
/api/v1/alarms (alarm events at their AlarmTime; mn, start, end, no cn or code).

They take mn, cn, start, end (RFC 3339 with offset), optional code and limit, and page with an
opaque cursor that is checked here before it reaches PostgreSQL; `names` and `tz` choose how rows
are shown (rendering.py). An MN neither stored nor connected is a 404 `unknown_device`, not an
empty page.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from aiohttp import web

from hj212gw.api.errors import read_db
from hj212gw.api.live import LiveState
from hj212gw.api.params import optional_param, parse_bool, parse_limit, parse_time, required_param
from hj212gw.api.rendering import RowStyle
from hj212gw.api.responses import ApiError, json_response, rfc3339
from hj212gw.storage.db import Database
from hj212gw.storage.queries import BadCursor, DataPage, decode_cursor, decode_version_cursor

DATA_ROUTE = "/api/v1/data"
VERSIONS_ROUTE = "/api/v1/data/versions"
ALARMS_ROUTE = "/api/v1/alarms"


class DataRoutes:
    """The data endpoints, bound to the API's database, the live connections and the device zone."""

    def __init__(self, db: Database, live: LiveState, device_zone: tzinfo) -> None:
        self.db = db
        self.live = live
        self.device_zone = device_zone

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get(DATA_ROUTE, self.data)
        router.add_get(VERSIONS_ROUTE, self.versions)
        router.add_get(ALARMS_ROUTE, self.alarms)

    async def data(self, request: web.Request) -> web.Response:
        q, style = DataQuery.from_request(request), RowStyle.from_request(request, self.device_zone)
        suspect = parse_bool("time_suspect", optional_param(request, "time_suspect"))
        fetch = self.db.fetch_data(
            q.mn, q.cn, q.start, q.end, q.code, limit=q.limit, cursor=q.cursor, time_suspect=suspect
        )
        return await self._page(request, q.mn, style, fetch)

    async def versions(self, request: web.Request) -> web.Response:
        q = DataQuery.from_request(request, versions=True)
        style = RowStyle.from_request(request, self.device_zone)
        fetch = self.db.fetch_versions(q.mn, q.cn, q.start, q.end, q.code, q.limit, q.cursor)
        return await self._page(request, q.mn, style, fetch)

    async def alarms(self, request: web.Request) -> web.Response:
        q = DataQuery.from_request(request, versions=True, alarms=True)
        style = RowStyle.from_request(request, self.device_zone)
        return await self._page(request, q.mn, style, self.db.fetch_alarms(q.mn, q.start, q.end, q.limit, q.cursor))

    async def _page(self, request: web.Request, mn: str, style: RowStyle, fetch: Awaitable[DataPage]) -> web.Response:
        """One page of rows as JSON, with the URL of the next page; 404 for an MN never seen."""
        try:
            page = await read_db(fetch)
        except BadCursor as err:
            raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
        if not page.rows and mn not in self.live.online() and await read_db(self.db.fetch_device(mn)) is None:
            raise ApiError(404, "unknown_device", f"no device with mn={mn!r} has been seen")
        next_url = str(request.rel_url.update_query(cursor=page.next_cursor)) if page.next_cursor else None
        rows = [style.render(row) for row in page.rows]
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
    def from_request(cls, request: web.Request, *, versions: bool = False, alarms: bool = False) -> DataQuery:
        """Raises ApiError(400) naming the first bad parameter. `versions`: the cursor carries an
        id; `alarms`: no `cn` (alarm events of every CN)."""
        mn = required_param(request, "mn")
        cn = "" if alarms else required_param(request, "cn")
        start = parse_time("start", required_param(request, "start"))
        end = parse_time("end", required_param(request, "end"))
        if end < start:
            raise ApiError(400, "bad_parameter", f"end ({rfc3339(end)}) is before start ({rfc3339(start)})")
        cursor = optional_param(request, "cursor")
        if cursor is not None:
            check_cursor(cursor, versions=versions)
        limit = parse_limit(optional_param(request, "limit"))
        return cls(mn, cn, start, end, optional_param(request, "code"), limit, cursor)


def check_cursor(cursor: str, *, versions: bool = False) -> None:
    """Reject a cursor this API did not issue before it reaches PostgreSQL; raises ApiError(400)."""
    try:
        when, factor = decode_version_cursor(cursor)[:2] if versions else decode_cursor(cursor)
        if when.tzinfo is None or "\x00" in factor:
            raise BadCursor("cursor was not issued by this API")
        when.astimezone(UTC)
    except (BadCursor, OverflowError) as err:
        raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
