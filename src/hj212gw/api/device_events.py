"""GET /api/v1/devices/{mn}/events: a device's state transitions (online, silent, offline), newest
first, keyset-paged by event id (docs/monitoring.md). Reads `device_events` through storage."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hj212gw.api.errors import read_db
from hj212gw.api.params import clean_text, optional_param, parse_limit
from hj212gw.api.responses import ApiError, json_response, json_value, rfc3339
from hj212gw.storage.db import Database
from hj212gw.storage.device_state import decode_event_cursor, encode_event_cursor


class DeviceEventRoutes:
    """The device events endpoint, bound to the API's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/devices/{mn}/events", self.events)

    async def events(self, request: web.Request) -> web.Response:
        """One page of a device's transitions, newest first (an unknown MN has none)."""
        mn = clean_text("mn", request.match_info["mn"])
        cursor = optional_param(request, "cursor")
        try:
            before = decode_event_cursor(cursor) if cursor is not None else None
        except ValueError as err:
            raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
        limit = parse_limit(optional_param(request, "limit"))
        rows = await read_db(self.db.fetch_device_events(mn, before=before, limit=limit + 1))
        page = rows[:limit]
        next_cursor = encode_event_cursor(page[-1]["id"]) if len(rows) > limit else None
        next_url = str(request.rel_url.update_query(cursor=next_cursor)) if next_cursor else None
        events = [event_json(row) for row in page]
        return json_response({"events": events, "count": len(events), "next_cursor": next_cursor, "next": next_url})


def event_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "mn": row["mn"],
        "at": rfc3339(row["at"]),
        "state": row["state"],
        "previous": row["previous"],
        "cause": row["cause"],
        "gateway_id": row["gateway_id"],
        "connection_id": row["connection_id"],
        "details": json_value(row["details"]),
    }
