"""The command channel over HTTP: POST /api/v1/devices/{mn}/commands, GET /api/v1/commands/{id},
GET /api/v1/devices/{mn}/commands.

A POST validates the command against the catalog (`protocol.commands`: 400 naming the CN, name
or item that is wrong), inserts it `queued` and returns at once (`201 {"id": …}`); the replica
holding the MN sends it, and GET shows how it went. Writing needs the admin token always: on an
API without one (loopback, no token configured) a POST is 403. Secret items (NewPW, NewSK) are
masked in every answer. Imports no server module: rows go through `storage.commands`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hj212gw.api.errors import read_db
from hj212gw.api.params import clean_text, json_object_body, optional_param, parse_limit
from hj212gw.api.responses import ApiError, json_response, json_value
from hj212gw.protocol.commands import CommandError, check_params, find_command, mask_secrets
from hj212gw.storage.commands import CommandStore, NewCommand

MAX_BODY_BYTES = 16_384
MAX_COMMANDS_PAGE = 1000
DEFAULT_COMMANDS_PAGE = 100
_BODY_KEYS = frozenset({"cn", "name", "params", "over_time_s", "re_count"})


class CommandRoutes:
    """The command endpoints. `reader`: the API's read-only pool; `writer`: a pool that may
    insert (None: this API takes no commands); `token_set`: whether the API requires a token."""

    def __init__(self, reader: CommandStore, writer: CommandStore | None, *, token_set: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.token_set = token_set

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/v1/devices/{mn}/commands", self.create)
        router.add_get("/api/v1/devices/{mn}/commands", self.for_device)
        router.add_get("/api/v1/commands/{id}", self.one)

    async def create(self, request: web.Request) -> web.Response:
        if not self.token_set:
            raise ApiError(403, "token_required", "sending commands needs the admin token: set http_token_file")
        if self.writer is None:
            raise ApiError(403, "commands_disabled", "this API does not take commands")
        mn = _check_mn(request.match_info["mn"])
        body = await _json_body(request)
        new = _new_command(mn, body, requested_by=f"api {request.remote or '?'}")
        command_id = await read_db(self.writer.insert(new))
        return json_response({"id": command_id, "url": f"/api/v1/commands/{command_id}"}, status=201)

    async def one(self, request: web.Request) -> web.Response:
        text = request.match_info["id"]
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise ApiError(400, "bad_parameter", f"command id {text[:20]!r} must be a positive integer")
        row = await read_db(self.reader.fetch(int(text)))
        if row is None:
            raise ApiError(404, "unknown_command", f"no command with id {text}")
        return json_response(command_json(row))

    async def for_device(self, request: web.Request) -> web.Response:
        """The MN's commands, newest first, keyset-paged by id."""
        mn = _check_mn(request.match_info["mn"])
        cursor = optional_param(request, "cursor")
        before = decode_command_cursor(cursor) if cursor is not None else None
        limit = min(parse_limit(optional_param(request, "limit") or str(DEFAULT_COMMANDS_PAGE)), MAX_COMMANDS_PAGE)
        rows = await read_db(self.reader.fetch_for_mn(mn, before_id=before, limit=limit + 1))
        page = rows[:limit]
        next_cursor = encode_command_cursor(page[-1]["id"]) if len(rows) > limit else None
        next_url = str(request.rel_url.update_query(cursor=next_cursor)) if next_cursor else None
        commands = [command_json(row) for row in page]
        body = {"commands": commands, "count": len(commands), "next_cursor": next_cursor, "next": next_url}
        return json_response(body)


def _check_mn(mn: str) -> str:
    mn = clean_text("mn", mn)
    if not mn or len(mn) > 64 or not mn.isascii() or not mn.isprintable() or set(mn) & set(";&,="):
        raise ApiError(400, "bad_parameter", "mn: 1-64 printable ASCII characters without ; & , =")
    return mn


async def _json_body(request: web.Request) -> Mapping[str, Any]:
    body = await json_object_body(request, MAX_BODY_BYTES, "a command body")
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise ApiError(400, "bad_body", f"unknown keys {unknown[:5]}; allowed: {sorted(_BODY_KEYS)}")
    return body


def _new_command(mn: str, body: Mapping[str, Any], *, requested_by: str) -> NewCommand:
    """The row to insert for a POST body; raises ApiError(400) for anything the catalog refuses."""
    cn, name = body.get("cn"), body.get("name")
    given = cn if cn is not None else name
    if (cn is None) == (name is None) or not isinstance(given, str):
        raise ApiError(400, "bad_body", 'give the command as "cn" (e.g. "1012") or "name" (e.g. "set_time"), not both')
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise ApiError(400, "bad_params", '"params" must be a JSON object of CP items')
    try:
        spec = find_command(given)
        if given != (spec.cn if cn is not None else spec.name):  # "cn": "set_time" or "name": "1012"
            field = "CN" if cn is not None else "name"
            raise ApiError(400, "unknown_command", f"no command with {field} {given[:40]!r}")
        check_params(spec, params)
    except CommandError as err:
        raise ApiError(400, err.reason, str(err)) from err
    return NewCommand(
        mn, spec.cn, spec.name, params, _bounded(body, "over_time_s", 1, 99), _whole(body, "re_count", 0, 99),
        requested_by,
    )  # fmt: skip


def _bounded(body: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, "bad_body", f"{key} must be a number from {low} to {high}")
    return float(value)


def _whole(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, "bad_body", f"{key} must be an integer from {low} to {high}")
    return value


def command_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """One command as the API shows it: times RFC 3339, secret params masked."""
    try:
        spec = find_command(row["cn"])
    except CommandError:
        spec = None
    out = {key: json_value(value) for key, value in row.items()}
    out["params"] = mask_secrets(spec, row["params"] or {})
    return out


def encode_command_cursor(command_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps(["cmd", command_id]).encode()).decode().rstrip("=")


def decode_command_cursor(cursor: str) -> int:
    """The id a commands cursor points below; raises ApiError(400) for one this API did not issue."""
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        kind, command_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if kind != "cmd" or not isinstance(command_id, int) or isinstance(command_id, bool):
            raise ValueError("not a commands cursor")
    except (ValueError, TypeError, binascii.Error) as err:
        raise ApiError(400, "bad_cursor", "cursor is not a next_cursor returned by this API") from err
    return command_id
