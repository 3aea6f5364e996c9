"""GET /api/v1/alerts, GET /api/v1/alerts/{id}, POST /api/v1/alerts/{id}/ack: the alerts the rules
raised, and their acknowledgement by an operator (Art. 20(9): who, when, why; `response_s` is
the time from the alert's start to its acknowledgement).

The list filters status (firing, resolved), mn, rule, severity and a time range (start, end:
RFC 3339; an alert is listed if the time it fired, up to now for a firing one, overlaps
[start, end)); newest first, paged with an opaque cursor. Reads go through `storage.alerts` on the
API's read-only pool; an acknowledgement through `alerts.acks` on the gateway's writable pool,
and always needs the admin token (on an API without one, a POST is 403). docs/api.md, "Alerts".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hj212gw.alerts.acks import AlertAcks
from hj212gw.alerts.payload import alert_labels, response_s
from hj212gw.api.errors import read_db
from hj212gw.api.params import clean_text, json_object_body, one_of, optional_param, parse_limit, time_bounds
from hj212gw.api.responses import ApiError, json_response, json_value, page_response, rfc3339
from hj212gw.storage.alerts import ALERT_STATUSES, SEVERITIES, AlertStore
from hj212gw.storage.db import Database
from hj212gw.storage.queries import BadCursor

ALERTS_ROUTE = "/api/v1/alerts"
MAX_ACK_BODY_BYTES = 8192
MAX_BY_CHARS = 200
MAX_NOTE_CHARS = 2000


class AlertRoutes:
    """The alert endpoints: `db` the API's read-only pool; `acks` acknowledgements on a writable
    pool (None: this API takes none); `token_set` whether the API requires a token."""

    def __init__(self, db: Database, acks: AlertAcks | None, *, token_set: bool) -> None:
        self.store = AlertStore(db)
        self.acks = acks
        self.token_set = token_set

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get(ALERTS_ROUTE, self.list)
        router.add_get(ALERTS_ROUTE + "/{id}", self.one)
        router.add_post(ALERTS_ROUTE + "/{id}/ack", self.ack)

    async def list(self, request: web.Request) -> web.Response:
        query: dict[str, Any] = {
            "status": one_of(request, "status", ALERT_STATUSES),
            "severity": one_of(request, "severity", SEVERITIES),
            "mn": optional_param(request, "mn"),
            "rule": optional_param(request, "rule"),
            "limit": parse_limit(optional_param(request, "limit")),
            "cursor": optional_param(request, "cursor"),
        }
        query.update(time_bounds(request))
        try:
            page = await read_db(self.store.fetch(**query))
        except BadCursor as err:
            raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
        return page_response(request, "alerts", [alert_json(row) for row in page.rows], page.next_cursor)

    async def one(self, request: web.Request) -> web.Response:
        alert_id = _alert_id(request)
        row = await read_db(self.store.fetch_one(alert_id))
        if row is None:
            raise ApiError(404, "unknown_alert", f"no alert with id {alert_id}")
        return json_response(alert_json(row))

    async def ack(self, request: web.Request) -> web.Response:
        if not self.token_set:
            raise ApiError(403, "token_required", "acknowledging alerts needs the admin token: set http_token_file")
        if self.acks is None:
            raise ApiError(403, "acks_disabled", "this API takes no acknowledgements")
        alert_id = _alert_id(request)
        by, note = _ack_body(await _json_body(request))
        done = await read_db(self.acks.acknowledge(alert_id, by=by, note=note))
        if done.outcome == "unknown" or done.alert is None:
            raise ApiError(404, "unknown_alert", f"no alert with id {alert_id}")
        if done.outcome == "already":
            body = {"error": "already_acknowledged", "detail": f"alert {alert_id} was acknowledged before",
                    "alert": alert_json(done.alert)}  # fmt: skip
            return json_response(body, status=409)
        return json_response(alert_json(done.alert))


def alert_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One alert as the API shows it (times RFC 3339 UTC; labels as in the outbox payload)."""
    acked_at = row["acked_at"]
    return {
        "id": row["id"],
        "fingerprint": row["fingerprint"],
        "status": row["status"],
        "rule": row["rule"],
        "severity": row["severity"],
        "mn": row["mn"],
        "factor": row["factor"],
        "detail": row["detail"],
        "labels": alert_labels(row),
        "summary_zh": row["summary_zh"],
        "summary_en": row["summary_en"],
        "article": row["article"],
        "value": json_value(row["value"]),
        "threshold": json_value(row["threshold"]),
        "details": row["details"],
        "starts_at": rfc3339(row["starts_at"]),
        "ends_at": rfc3339(row["ends_at"]),
        "updated_at": rfc3339(row["updated_at"]),
        "reminded_at": rfc3339(row["reminded_at"]),
        "acknowledgement": None
        if acked_at is None
        else {"by": row["acked_by"], "at": rfc3339(acked_at), "note": row["ack_note"]},
        "response_s": response_s(row),
        "gateway_id": row["gateway_id"],
    }


def _alert_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) == 0:
        raise ApiError(400, "bad_parameter", f"alert id {text[:20]!r} must be a positive integer")
    return int(text)


async def _json_body(request: web.Request) -> Mapping[str, Any]:
    return await json_object_body(request, MAX_ACK_BODY_BYTES, "an acknowledgement")


def _ack_body(body: Mapping[str, Any]) -> tuple[str, str | None]:
    """`by` (who: 1-200 characters) and `note` (optional, ≤ 2000); raises ApiError(400)."""
    unknown = sorted(set(body) - {"by", "note"})
    if unknown:
        raise ApiError(400, "bad_body", f"unknown keys {unknown[:5]}; allowed: ['by', 'note']")
    by, note = body.get("by"), body.get("note")
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_BY_CHARS:
        raise ApiError(400, "bad_body", f'"by" (who acknowledges) must be 1-{MAX_BY_CHARS} characters')
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
        raise ApiError(400, "bad_body", f'"note" must be text of at most {MAX_NOTE_CHARS} characters')
    return clean_text("by", by.strip()), None if note is None else clean_text("note", note)
