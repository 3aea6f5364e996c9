"""GET /api/v1/devices/{mn}/events and the state fields of /api/v1/devices (api/device_events.py,
api/devices.py) over rows stored by the device state's SQL (storage/device_state.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hj212gw.storage.db import Database
from hj212gw.storage.device_state import DeviceEventRow, DeviceStateRow, DeviceStateStore
from tests.api.harness import MN, OTHER, T0, Harness, seen

pytestmark = pytest.mark.integration


def state(mn: str, value: str, **changes: object) -> DeviceStateRow:
    last = {"2051": {"data_time": "2024-05-01T08:00:00+00:00", "received_at": "2024-05-01T08:00:05.5+00:00"}}
    row = DeviceStateRow(mn, value, T0, "connected", "gw-1", 42, T0, last, {"2051": 60.0})
    return row._replace(**changes)  # type: ignore[arg-type]


async def test_devices_carry_their_stored_state_and_the_state_filter_pages_by_mn(api: Harness, db: Database) -> None:
    await db.save_sightings([seen(MN), seen(OTHER)])
    store = DeviceStateStore(db)
    await store.save(
        [], [state(MN, "online"), state(OTHER, "offline", cause="idle_timeout"), state("GHOST", "offline")]
    )

    one = await api.get(f"/api/v1/devices/{MN}")
    assert (one["state"], one["state_since"], one["state_cause"], one["state_gateway_id"]) == (
        "online", "2024-05-01T08:00:00Z", "connected", "gw-1",
    )  # fmt: skip
    assert one["last_data"] == {
        "2051": {"data_time": "2024-05-01T08:00:00Z", "received_at": "2024-05-01T08:00:05.500000Z"}
    }
    first = await api.get("/api/v1/devices", state="offline", limit="1")
    assert [(d["mn"], d["registered"], d["state_cause"]) for d in first["devices"]] == [
        ("88888880000001", True, "idle_timeout")
    ]
    rest = await api.get("/api/v1/devices", state="offline", limit="1", cursor=first["next_cursor"])
    assert [(d["mn"], d["registered"], d["name"]) for d in rest["devices"]] == [("GHOST", False, None)]
    assert rest["next_cursor"] is None
    assert (await api.get("/api/v1/devices/GHOST"))["state"] == "offline"  # known by its state alone
    bad = await api.get("/api/v1/devices", status=400, state="asleep")
    assert bad["error"] == "bad_parameter"
    every = await api.get("/api/v1/devices")
    assert {d["mn"]: d["state"] for d in every["devices"]} == {MN: "online", OTHER: "offline"}


async def test_events_are_listed_newest_first_in_pages(api: Harness, db: Database) -> None:
    events = [
        DeviceEventRow(MN, T0 + timedelta(minutes=n), new, old, cause, "gw-1", 42, details)
        for n, (old, new, cause, details) in enumerate([
            (None, "online", "connected", {}),
            ("online", "silent", "data_overdue", {"overdue": ["2051"]}),
            ("silent", "offline", "peer_error", {}),
        ])
    ]  # fmt: skip
    await DeviceStateStore(db).save(events, [])

    page = await api.get(f"/api/v1/devices/{MN}/events", limit="2")
    assert [(e["state"], e["previous"], e["cause"]) for e in page["events"]] == [
        ("offline", "silent", "peer_error"),
        ("silent", "online", "data_overdue"),
    ]
    assert page["events"][1]["details"] == {"overdue": ["2051"]} and page["events"][1]["at"] == "2024-05-01T08:01:00Z"
    rest = await api.get(f"/api/v1/devices/{MN}/events", limit="2", cursor=page["next_cursor"])
    assert [e["previous"] for e in rest["events"]] == [None] and rest["next"] is None
    assert (await api.get(f"/api/v1/devices/{OTHER}/events"))["events"] == []
    assert (await api.get(f"/api/v1/devices/{MN}/events", status=400, cursor="bm9wZQ"))["error"] == "bad_cursor"
