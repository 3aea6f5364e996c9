"""GET /api/v1/gaps: filters, paging and bad parameters (api/gaps.py over storage/gaps.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hj212gw.storage.db import Database
from hj212gw.storage.gaps import GapRow, SeriesRow, new_gap_ids, save
from tests.api.harness import MN, OTHER, Harness

pytestmark = pytest.mark.integration

H0 = datetime(2026, 12, 1, tzinfo=UTC)


async def store_gaps(db: Database) -> list[int]:
    """Five gaps: four of MN (hour data), one of OTHER (minute data), at increasing start times."""
    async with db.pool.acquire() as conn:
        ids = await new_gap_ids(conn, 5)
        specs = [
            (MN, "2061", 1, 2, "open"), (MN, "2061", 4, 4, "requested"), (OTHER, "2051", 5, 5, "open"),
            (MN, "2061", 7, 9, "filled"), (MN, "2031", 24, 24, "dormant"),
        ]  # fmt: skip
        rows = [
            GapRow(gap_id, mn, cn, H0 + timedelta(hours=a), H0 + timedelta(hours=b),
                   0 if status == "filled" else b - a + 1, status, 1 if status == "requested" else 0, None, H0, H0,
                   None)
            for gap_id, (mn, cn, a, b, status) in zip(ids, specs, strict=True)
        ]  # fmt: skip
        series = [SeriesRow(MN, "2061", 3600, H0, H0 + timedelta(hours=10), "a", H0)]
        await save(conn, "a", series, rows)
    return ids


async def query(api: Harness, params: dict[str, str], status: int = 200) -> Any:
    """GET /api/v1/gaps with `params` (`status` is a query parameter here, not the HTTP status)."""
    resp = await api.client.get("/api/v1/gaps", params=params)
    assert resp.status == status
    return await resp.json()


async def test_gaps_are_listed_oldest_first_with_their_missing_periods(api: Harness, db: Database) -> None:
    ids = await store_gaps(db)
    body = await api.get("/api/v1/gaps")
    assert [g["id"] for g in body["gaps"]] == ids and body["count"] == 5 and body["next_cursor"] is None
    first = body["gaps"][0]
    assert first == {
        "id": ids[0], "mn": MN, "cn": "2061", "start": "2026-12-01T01:00:00Z", "end": "2026-12-01T02:00:00Z",
        "periods": 2, "status": "open", "requests": 0, "reason": None, "opened_at": "2026-12-01T00:00:00Z",
        "updated_at": "2026-12-01T00:00:00Z", "last_requested_at": None,
    }  # fmt: skip


async def test_gaps_filter_by_mn_cn_status_and_time(api: Harness, db: Database) -> None:
    ids = await store_gaps(db)
    assert [g["id"] for g in (await api.get("/api/v1/gaps", mn=OTHER))["gaps"]] == [ids[2]]
    assert [g["id"] for g in (await api.get("/api/v1/gaps", mn=MN, cn="2061"))["gaps"]] == [ids[0], ids[1], ids[3]]
    assert [g["id"] for g in (await query(api, {"status": "open"}))["gaps"]] == [ids[0], ids[2]]
    # a gap is listed when any of its periods lies in [start, end)
    window = await api.get("/api/v1/gaps", start="2026-12-01T02:00:00Z", end="2026-12-01T05:00:00Z")
    assert [g["id"] for g in window["gaps"]] == [ids[0], ids[1]]


async def test_gaps_page_with_a_cursor_and_refuse_bad_parameters(api: Harness, db: Database) -> None:
    ids = await store_gaps(db)
    seen: list[int] = []
    params = {"limit": "2"}
    while True:
        body = await api.get("/api/v1/gaps", **params)
        seen += [g["id"] for g in body["gaps"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == ids
    for name, value in (("status", "closed"), ("cn", "2011"), ("start", "yesterday"), ("limit", "0")):
        assert (await query(api, {name: value}, 400))["error"] == "bad_parameter"
    assert (await query(api, {"cursor": "bm90IGEgY3Vyc29y"}, 400))["error"] == "bad_cursor"
