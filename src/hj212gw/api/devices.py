"""GET /api/v1/devices and /api/v1/devices/{mn}: stored devices merged with their live connection
and their state (online, silent, offline; docs/monitoring.md).

Registry columns come from `storage` (an explicit list, so a device's PW can never slip in), the
live connection from a `LiveState`, the state from `device_state` (written by the replica that
follows the device, about once a second); pages are keyset-paged by MN in code point order.
`?state=` lists only the devices whose stored state it is.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from hj212gw.api.errors import read_db
from hj212gw.api.live import LiveState, LiveView
from hj212gw.api.params import clean_text, optional_param, parse_limit
from hj212gw.api.responses import ApiError, json_response, json_value, rfc3339
from hj212gw.storage.db import Database

STATES = ("online", "silent", "offline")

# Registry columns returned by the device endpoints; an explicit list so `pw` can never slip in.
DEVICE_FIELDS = (
    "mn", "name", "site", "enabled", "status", "protocol_version", "st", "first_seen", "last_seen", "last_peer",
    "heartbeat_reply", "crc_variants",
)  # fmt: skip
MAX_CURSOR_CHARS = 8192


class DeviceRoutes:
    """The device endpoints, bound to the API's database and the server's live state."""

    def __init__(self, db: Database, live: LiveState) -> None:
        self.db = db
        self.live = live

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/devices", self.devices)
        router.add_get("/api/v1/devices/{mn}", self.device)

    async def devices(self, request: web.Request) -> web.Response:
        """One page of stored and live devices, keyset-paged by mn (code point order)."""
        cursor = optional_param(request, "cursor")
        after = decode_device_cursor(cursor) if cursor is not None else None
        limit = parse_limit(optional_param(request, "limit"))
        state = optional_param(request, "state")
        online = self.live.online()
        if state is not None:
            if state not in STATES:
                raise ApiError(400, "bad_parameter", f"state={state[:20]!r}: one of {', '.join(STATES)}")
            found = await read_db(self.db.fetch_devices_in_state(state, after=after, limit=limit + 1))
            by_mn = dict(found)
            mns = [mn for mn, _ in found]
        else:
            stored = await read_db(self.db.fetch_devices(after=after, limit=limit + 1))
            by_mn = {row["mn"]: row for row in stored}
            # The first `limit` of the union are each among the first `limit` + 1 of their own source.
            mns = sorted(by_mn.keys() | {mn for mn in online if after is None or mn > after})
        page = mns[:limit]
        states = {row["mn"]: row for row in await read_db(self.db.fetch_device_states(page))} if page else {}
        next_cursor = encode_device_cursor(page[-1]) if len(mns) > limit else None
        next_url = str(request.rel_url.update_query(cursor=next_cursor)) if next_cursor else None
        devices = [device_json(mn, by_mn.get(mn), online.get(mn), states.get(mn)) for mn in page]
        return json_response({"devices": devices, "count": len(devices), "next_cursor": next_cursor, "next": next_url})

    async def device(self, request: web.Request) -> web.Response:
        mn = clean_text("mn", request.match_info["mn"])
        stored = await read_db(self.db.fetch_device(mn))
        state = next(iter(await read_db(self.db.fetch_device_states([mn]))), None)
        live = self.live.online().get(mn)
        if stored is None and live is None and state is None:
            raise ApiError(404, "unknown_device", f"no device with mn={mn!r}")
        return json_response(device_json(mn, stored, live, state))


def device_json(
    mn: str, stored: Mapping[str, Any] | None, live: LiveView | None, state: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One device: registry columns (null if not stored yet) merged with its live connection and
    its stored state (`state` null: never followed yet, unless it is connected here: online)."""
    out: dict[str, Any] = {name: json_value(stored.get(name)) if stored else None for name in DEVICE_FIELDS}
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
    out["state"] = state["state"] if state else ("online" if live else None)
    out["state_since"] = rfc3339(state["since"]) if state else None
    out["state_cause"] = state["cause"] if state else None
    out["state_gateway_id"] = state["gateway_id"] if state else None
    out["last_data"] = last_data_json(state["last_data"]) if state else {}
    return out


def last_data_json(last_data: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str | None]]:
    """{cn: {"data_time", "received_at"}} as stored (ISO 8601), in the API's RFC 3339 UTC form."""
    return {
        cn: {key: rfc3339(datetime.fromisoformat(last[key])) for key in ("data_time", "received_at")}
        for cn, last in sorted(last_data.items())
    }


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
