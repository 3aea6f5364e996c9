"""The command endpoints: a POST validated against the catalog becomes a queued row (and its NOTIFY);
GET shows it with secrets masked; writing needs the token always."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from hj212gw.storage.commands import CommandStore, CommandUpdate, channel_of
from hj212gw.storage.db import Database
from tests.api.harness import MN, Harness, make_harness

TOKEN = "t" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Harness]:
    harness = make_harness(db, token=TOKEN, commands=CommandStore(db))
    async with harness.client:
        yield harness


async def post(api: Harness, body: Any, status: int, mn: str = MN, headers: dict[str, str] = AUTH) -> Any:
    resp = await api.client.post(f"/api/v1/devices/{mn}/commands", json=body, headers=headers)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def get(api: Harness, path: str, status: int = 200, **params: str) -> Any:
    resp = await api.client.get(path, params=params or None, headers=AUTH)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def test_a_post_queues_the_command_and_announces_it(
    api: Harness, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    heard: list[str] = []
    await conn.add_listener(channel_of(schema), lambda *args: heard.append(args[-1]))
    created = await post(api, {"name": "set_time", "params": {"SystemTime": "20240315120001"}}, 201)
    command = await get(api, created["url"])
    assert command["id"] == created["id"] and command["state"] == "queued"
    assert (command["mn"], command["cn"], command["name"]) == (MN, "1012", "set_time")
    assert command["params"] == {"SystemTime": "20240315120001"}
    assert command["requested_by"].startswith("api ") and command["created_at"].endswith("Z")
    await conn.execute("SELECT 1")  # notifications are delivered between statements
    assert heard == [f"{created['id']} {MN}"]


@pytest.mark.parametrize(
    ("body", "error", "says"),
    [
        ({"cn": "9999"}, "unknown_command", "no platform command with CN or name '9999'"),
        ({"name": "1012"}, "unknown_command", "no command with name '1012'"),
        ({"cn": "1064", "params": {"MinInterval": 7}}, "bad_params", "MinInterval must be one of 1, 2, 3"),
        ({"cn": "1062"}, "bad_params", "needs RtdInterval"),
        ({"cn": "1011", "name": "get_time"}, "bad_body", "not both"),
        ({"cn": "1011", "params": [1]}, "bad_params", "JSON object"),
        ({"cn": "1011", "retries": 3}, "bad_body", "unknown keys"),
        ({"cn": "1011", "over_time_s": 100}, "bad_body", "over_time_s must be a number from 1 to 99"),
        ([1, 2], "bad_body", "a JSON object"),
    ],
)
async def test_a_bad_command_is_400_saying_what_is_wrong(
    api: Harness, conn: asyncpg.Connection, body: Any, error: str, says: str
) -> None:
    answer = await post(api, body, 400)
    assert answer["error"] == error and says in answer["detail"]
    assert await conn.fetchval("SELECT count(*) FROM commands") == 0


async def test_writing_needs_the_token(api: Harness, db: Database) -> None:
    await post(api, {"cn": "1011"}, 401, headers={})
    without_token = make_harness(db, commands=CommandStore(db))  # an open (loopback) API
    async with without_token.client:
        resp = await without_token.client.post(f"/api/v1/devices/{MN}/commands", json={"cn": "1011"})
        assert resp.status == 403 and (await resp.json())["error"] == "token_required"


async def test_secrets_are_masked_and_the_device_list_is_paged_newest_first(api: Harness, db: Database) -> None:
    first = await post(api, {"name": "set_password", "params": {"NewPW": "654321"}}, 201)
    ids = [first["id"]] + [(await post(api, {"cn": "1011"}, 201))["id"] for _ in range(2)]
    await post(api, {"cn": "1011"}, 201, mn="OTHER")
    await CommandStore(db).save([CommandUpdate(ids[1], "refused", qn_rtn=3, reason="QnRtn=3 (pw_error)")])
    page = await get(api, f"/api/v1/devices/{MN}/commands", limit="2")
    assert [c["id"] for c in page["commands"]] == [ids[2], ids[1]] and page["commands"][1]["qn_rtn"] == 3
    rest = await get(api, f"/api/v1/devices/{MN}/commands", cursor=page["next_cursor"])
    assert [c["id"] for c in rest["commands"]] == [ids[0]] and rest["next_cursor"] is None
    assert rest["commands"][0]["params"] == {"NewPW": "***"}
    assert (await get(api, f"/api/v1/commands/{ids[0]}"))["params"] == {"NewPW": "***"}


async def test_unknown_ids_and_bad_cursors(api: Harness) -> None:
    assert (await get(api, "/api/v1/commands/12345", 404))["error"] == "unknown_command"
    assert (await get(api, "/api/v1/commands/abc", 400))["error"] == "bad_parameter"
    assert (await get(api, f"/api/v1/devices/{MN}/commands", 400, cursor="xyz"))["error"] == "bad_cursor"


async def test_a_final_state_is_never_left_by_a_later_update(api: Harness, db: Database) -> None:
    created = await post(api, {"cn": "1011"}, 201)
    store = CommandStore(db)
    await store.save([CommandUpdate(created["id"], "timed_out", reason="no_reply")])
    await store.save([CommandUpdate(created["id"], "acknowledged", qn_rtn=1)])
    command = await get(api, created["url"])
    assert command["state"] == "timed_out" and command["qn_rtn"] is None
