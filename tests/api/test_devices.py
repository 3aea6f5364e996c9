"""GET /api/v1/devices and /api/v1/devices/{mn}: stored devices merged with live state (api/devices.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import asyncpg
import pytest

from hj212gw.server.live import LiveDevice
from hj212gw.storage.db import Database
from hj212gw.storage.rows import DeviceSeen
from tests.api.harness import MN, OTHER, Harness, Live, make_harness, seen

pytestmark = pytest.mark.integration


async def test_devices_merge_registry_with_live_state_and_never_show_pw(
    api: Harness, db: Database, conn: asyncpg.Connection
) -> None:
    await db.save_sightings([seen(MN), seen(OTHER, 2005)])
    await conn.execute("UPDATE devices SET pw = 'sekret-pw', name = '污水厂 1' WHERE mn = $1", MN)
    connected = datetime(2024, 5, 1, 16, 0, tzinfo=UTC)
    api.live.devices[MN] = LiveDevice(
        mn=MN, peer="10.0.0.9:5000", connection_id=42, connected_at=connected, last_packet_at=None,
        protocol_version="2017",
    )  # fmt: skip
    api.live.devices["NEW"] = dataclasses.replace(api.live.devices[MN], mn="NEW", protocol_version="2025")

    resp = await api.client.get("/api/v1/devices")
    assert "sekret-pw" not in await resp.text()
    devices = {d["mn"]: d for d in (await resp.json())["devices"]}
    assert list(devices) == sorted(devices) == sorted([MN, OTHER, "NEW"])
    online = devices[MN]
    assert "pw" not in online
    assert online["online"] is True and online["registered"] is True and online["name"] == "污水厂 1"
    assert (online["peer"], online["connection_id"], online["last_peer"]) == ("10.0.0.9:5000", 42, "10.0.0.1:4000")
    assert (online["connected_at"], online["last_packet_at"]) == ("2024-05-01T16:00:00Z", None)
    assert (online["first_seen"], online["last_seen"]) == ("2024-05-01T08:00:05.123456Z",) * 2
    assert (online["status"], online["st"], online["protocol_version"]) == ("accepted", "32", "2017")
    offline = devices[OTHER]
    assert offline["online"] is False and offline["peer"] is None and offline["connected_at"] is None
    assert offline["protocol_version"] == "2005" and offline["last_peer"] == "10.0.0.1:4000"
    assert devices["NEW"]["registered"] is False and devices["NEW"]["status"] is None
    assert devices["NEW"]["online"] is True and devices["NEW"]["protocol_version"] == "2025"


async def test_one_device_by_mn_and_unknown_mn_is_404(api: Harness, db: Database) -> None:
    await db.save_sightings([seen(MN)])
    one = await api.get(f"/api/v1/devices/{MN}")
    assert one["mn"] == MN and one["online"] is False and one["last_seen"] == "2024-05-01T08:00:05.123456Z"
    missing = await api.get("/api/v1/devices/NOPE", status=404)
    assert missing == {"error": "unknown_device", "detail": "no device with mn='NOPE'"}
    assert (await api.get("/api/v1/devices/a%00b", status=400))["error"] == "bad_parameter"


async def test_paging_devices_lists_every_stored_and_live_device_exactly_once(db: Database) -> None:
    seen_at = datetime(2024, 5, 1, tzinfo=UTC)
    # Upper and lower case and non-ASCII: PostgreSQL's default collation orders these differently
    # from Python; the pages must still merge live and stored MNs into one order.
    stored = [f"{prefix}{n:02d}" for prefix in ("A", "b", "c", "Z", "é") for n in range(5)]
    live_only = ["A02x", "a00", "B99", "zz", "ü1"]
    await db.save_sightings(
        [DeviceSeen(mn=mn, protocol_version=2017, st="32", peer="p", seen_at=seen_at) for mn in stored]
    )
    live = Live()
    for mn in [*live_only, "A00", "c04"]:  # two live ones are stored too
        live.devices[mn] = LiveDevice(
            mn=mn, peer="10.0.0.1:1", connection_id=None, connected_at=seen_at, last_packet_at=None,
            protocol_version="2017",
        )  # fmt: skip
    api_db = Database.for_reading(db.dsn, schema=db.schema, pool_size=2, statement_timeout_s=5, acquire_timeout_s=2)
    await api_db.connect()
    harness = make_harness(api_db)
    harness.live.devices = live.devices
    listed: list[str] = []
    pages = 0
    try:
        async with harness.client:
            url: str | None = "/api/v1/devices?limit=4"
            while url is not None:
                body = await harness.get(url)
                assert body["count"] == len(body["devices"]) <= 4
                listed += [d["mn"] for d in body["devices"]]
                url, pages = body["next"], pages + 1
            bad = await harness.get("/api/v1/devices", status=400, cursor="bm9wZQ")
            assert bad["error"] == "bad_cursor"
    finally:
        await api_db.close()
    expected = sorted({*stored, *live_only})
    assert listed == expected
    assert pages == -(-len(expected) // 4)
