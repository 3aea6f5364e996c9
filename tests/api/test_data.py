"""GET /api/v1/data: every field, paging by `next`, and each bad parameter a clear 400 (api/data.py)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from hj212gw.storage.alarms import AlarmRow
from hj212gw.storage.db import Database
from hj212gw.storage.queries import encode_cursor
from tests.api.harness import END, MN, OTHER, START, T0, Harness, make_harness, row, seen

pytestmark = pytest.mark.integration


async def test_data_returns_every_field_and_flag_with_rfc3339_times(api: Harness, db: Database) -> None:
    full = row(
        factor="011", factor_2017="w01018", rtd=math.nan, cou=2.5, zs_avg=5.0, flag="M", eflag="E1",
        sample_time=T0 - timedelta(minutes=3), extra={"Info": "abc", "Rtd": "NaN"},
        resend=True, time_suspect=True,
    )  # fmt: skip
    await db.save_batch([full])
    body = await api.get("/api/v1/data", mn=MN, cn="2051", start="2024-05-01T16:00:00+08:00", end=END)
    assert (body["count"], body["next_cursor"], body["next"]) == (1, None, None)
    (got,) = body["rows"]
    assert got == {
        "mn": MN, "cn": "2051", "data_time": "2024-05-01T08:00:00Z", "factor": "011", "factor_2017": "w01018",
        "rtd": None, "min": None, "avg": 12.3, "max": None, "cou": 2.5, "zs_rtd": None, "zs_min": None,
        "zs_avg": 5.0, "zs_max": None, "flag": "M", "eflag": "E1", "sample_time": "2024-05-01T07:57:00Z",
        "extra": {"Info": "abc", "Rtd": "NaN"}, "qn": "20240501080005123",
        "received_at": "2024-05-01T08:00:05.123456Z", "first_received_at": "2024-05-01T08:00:05.123456Z",
        "resend": True, "revisions": 0, "time_suspect": True,
    }  # fmt: skip
    by_code = await api.get("/api/v1/data", mn=MN, cn="2051", start=START, end=END, code="w01018")
    assert by_code["count"] == 1
    await db.save_sightings([seen(MN)])  # no rows for this code: a known device's empty page, not a 404
    assert (await api.get("/api/v1/data", mn=MN, cn="2051", start=START, end=END, code="a34004"))["count"] == 0


async def test_paging_by_next_returns_every_row_exactly_once(api: Harness, db: Database) -> None:
    factors = ["a01001", "a34004", "w01001", "w01018"]
    inside = [row(f, T0 + timedelta(minutes=m)) for m in range(0, 60, 10) for f in factors]  # 24 rows
    outside = [
        row("w01018", T0 - timedelta(seconds=1)),
        row("w01018", T0 + timedelta(hours=1)),  # end is exclusive
        row("w01018", T0, cn="2061"),
        row("w01018", T0, mn=OTHER),
    ]
    await db.save_batch(inside + outside)
    url: str | None = "/api/v1/data?" + "&".join(
        ["mn=" + MN, "cn=2051", "start=2024-05-01T16:00:00%2B08:00", "end=" + END, "limit=5"]
    )
    seen_keys: list[tuple[str, str]] = []
    pages = 0
    while url is not None:
        resp = await api.client.get(url)
        body = await resp.json()
        assert resp.status == 200, body
        assert body["count"] == len(body["rows"]) <= 5
        seen_keys += [(r["data_time"], r["factor"]) for r in body["rows"]]
        assert (body["next"] is None) == (body["next_cursor"] is None)
        url, pages = body["next"], pages + 1
    expected = [(r.data_time.isoformat().replace("+00:00", "Z"), r.factor) for r in inside]
    assert seen_keys == sorted(expected) and len(set(seen_keys)) == 24
    assert pages == 5


BAD_DATA_QUERIES = {
    "missing_start": ({"end": END}, "missing_parameter", "start"),
    "missing_mn": ({"mn": "", "start": START, "end": END}, "missing_parameter", "mn"),
    "not_a_time": ({"start": "yesterday", "end": END}, "bad_parameter", "start"),
    "no_offset": ({"start": "2024-05-01T08:00:00", "end": END}, "bad_parameter", "start"),
    "date_only": ({"start": "2024-05-01", "end": END}, "bad_parameter", "start"),
    "plus_as_space": ({"start": "2024-05-01T16:00:00 08:00", "end": END}, "bad_parameter", "%2B"),
    "bad_month": ({"start": "2024-13-01T00:00:00Z", "end": END}, "bad_parameter", "start"),
    "overflow": ({"start": "0001-01-01T00:00:00+01:00", "end": END}, "bad_parameter", "start"),
    "end_before_start": ({"start": END, "end": START}, "bad_parameter", "before"),
    "limit_zero": ({"start": START, "end": END, "limit": "0"}, "bad_parameter", "limit"),
    "limit_too_big": ({"start": START, "end": END, "limit": "10001"}, "bad_parameter", "limit"),
    "limit_text": ({"start": START, "end": END, "limit": "1_0"}, "bad_parameter", "limit"),
    "cursor_junk": ({"start": START, "end": END, "cursor": "not-a-cursor"}, "bad_cursor", "cursor"),
    "cursor_naive": (
        {"start": START, "end": END, "cursor": encode_cursor(datetime(2024, 5, 1), "w01018")},
        "bad_cursor",
        "cursor",
    ),
    "nul": ({"start": START, "end": END, "code": "w0\x00"}, "bad_parameter", "NUL"),
}


@pytest.mark.parametrize("case", BAD_DATA_QUERIES.values(), ids=BAD_DATA_QUERIES.keys())
async def test_bad_data_parameters_are_400_with_a_clear_error(
    api: Harness, case: tuple[dict[str, str], str, str]
) -> None:
    params, error, mentioned = case
    body = await api.get("/api/v1/data", status=400, **({"mn": MN, "cn": "2051"} | params))
    assert body["error"] == error and mentioned in body["detail"]


async def test_a_parameter_given_twice_is_400(api: Harness) -> None:
    resp = await api.client.get(f"/api/v1/data?mn={MN}&mn=X&cn=2051&start={START}&end={END}")
    assert resp.status == 400 and (await resp.json())["detail"] == "mn is given more than once"


async def test_an_mn_never_seen_is_404_unknown_device(api: Harness, db: Database) -> None:
    await db.save_batch([row()])
    for path in ("/api/v1/data", "/api/v1/data/versions", "/api/v1/alarms"):
        body = await api.get(path, 404, mn="NEVER0000000001", cn="2051", start=START, end=END)
        assert body["error"] == "unknown_device" and "NEVER0000000001" in body["detail"]
    await db.save_sightings([seen(OTHER)])
    assert (await api.get("/api/v1/data", mn=OTHER, cn="2051", start=START, end=END))["count"] == 0


async def test_names_add_the_factor_name_and_unit_from_the_code_table(api: Harness, db: Database) -> None:
    await db.save_batch([row("w01018"), row("011", factor_2017="w01018", cn="2061"), row("x99999")])
    plain = await api.get("/api/v1/data", mn=MN, cn="2051", start=START, end=END)
    assert all("unit" not in r for r in plain["rows"])
    named = await api.get("/api/v1/data", mn=MN, cn="2051", start=START, end=END, names="1")
    by_code = {r["factor"]: r for r in named["rows"]}
    cod = by_code["w01018"]
    assert (cod["name_zh"], cod["name_en"], cod["unit"], cod["cou_unit"]) == ("化学需氧量", "COD", "毫克/升", "千克")
    assert (by_code["x99999"]["name_zh"], by_code["x99999"]["unit"]) == (None, None)
    old = (await api.get("/api/v1/data", mn=MN, cn="2061", start=START, end=END, names="true"))["rows"][0]
    assert (old["factor"], old["name_en"], old["unit"]) == ("011", "COD", "毫克/升")  # a 2005 code via its 2017 one
    await api.get("/api/v1/data", 400, mn=MN, cn="2051", start=START, end=END, names="yes")


async def test_tz_renders_every_time_in_the_zone_asked_or_the_device_zone(api: Harness, db: Database) -> None:
    await db.save_batch([row()])
    await db.save_batch([row(avg=1.0, received_at=T0 + timedelta(minutes=5))])  # a second arrival: a version
    shanghai = (await api.get("/api/v1/data", mn=MN, cn="2051", start=START, end=END, tz="Asia/Shanghai"))["rows"]
    assert shanghai[0]["data_time"] == "2024-05-01T16:00:00+08:00"
    assert shanghai[0]["first_received_at"] == "2024-05-01T16:00:05.123456+08:00"
    assert shanghai[0]["received_at"] == "2024-05-01T16:05:00+08:00"
    device = (await api.get("/api/v1/data", mn=MN, cn="2051", start=START, end=END, tz="device"))["rows"]
    assert device == shanghai  # the configured device_timezone (default Asia/Shanghai)
    versions = await api.get("/api/v1/data/versions", mn=MN, cn="2051", start=START, end=END, tz="Europe/Berlin")
    assert versions["rows"][0]["data_time"] == "2024-05-01T10:00:00+02:00"
    for bad in ("Mars/Olympus", "../etc/passwd", "Asia"):
        body = await api.get("/api/v1/data", 400, mn=MN, cn="2051", start=START, end=END, tz=bad)
        assert body["error"] == "bad_parameter" and "IANA time zone" in body["detail"]


async def test_tz_device_is_the_configured_device_timezone(db: Database) -> None:
    await db.save_batch([row()])
    harness = make_harness(db, device_timezone="America/New_York")
    async with harness.client:
        rows = (await harness.get("/api/v1/data", mn=MN, cn="2051", start=START, end=END, tz="device"))["rows"]
    assert rows[0]["data_time"] == "2024-05-01T04:00:00-04:00"


async def test_alarms_page_by_alarm_time_with_names_and_refuse_a_data_cursor(api: Harness, db: Database) -> None:
    alarms = [
        AlarmRow(MN, "2072", T0 + timedelta(minutes=m), "a21026", "1", 9.5, {"Ala": "9.5"}, None, T0) for m in range(3)
    ]
    await db.save_batch((), alarms=alarms)
    page = await api.get("/api/v1/alarms", mn=MN, start=START, end=END, limit="2", names="1")
    assert [r["alarm_time"] for r in page["rows"]] == ["2024-05-01T08:00:00Z", "2024-05-01T08:01:00Z"]
    assert page["rows"][0]["name_en"] == "SO2" and page["rows"][0]["value"] == 9.5
    rest = await api.get("/api/v1/alarms", mn=MN, start=START, end=END, cursor=page["next_cursor"])
    assert [r["alarm_time"] for r in rest["rows"]] == ["2024-05-01T08:02:00Z"] and rest["next"] is None
    bad = encode_cursor(T0, "a21026")  # a /data cursor has no id
    assert (await api.get("/api/v1/alarms", 400, mn=MN, start=START, end=END, cursor=bad))["error"] == "bad_cursor"
