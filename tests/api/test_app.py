"""Admin HTTP API over a real PostgreSQL schema: devices merged with live state, data paging, errors, probes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from hj212gw.api import LiveDevice, bound_port, build_app, start_http, stop_http
from hj212gw.storage.db import Database
from hj212gw.storage.queries import encode_cursor
from hj212gw.storage.rows import DataRow, DeviceSeen
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration

MN = "010000A8900016F000169DC0"
OTHER = "88888880000001"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
RECEIVED = datetime(2024, 5, 1, 8, 0, 5, 123456, tzinfo=UTC)
START, END = "2024-05-01T08:00:00Z", "2024-05-01T09:00:00Z"


class Live:
    """The server's side of LiveState, as plain data."""

    def __init__(self) -> None:
        self.devices: dict[str, LiveDevice] = {}

    def online(self) -> Mapping[str, LiveDevice]:
        return self.devices


@dataclasses.dataclass
class Harness:
    client: TestClient[Any, Any]
    live: Live
    registry: CollectorRegistry
    ready: list[bool]

    async def get(self, path: str, status: int = 200, **params: str) -> Any:
        resp = await self.client.get(path, params=params or None)
        body = await resp.json()
        assert resp.status == status, body
        assert resp.content_type == "application/json"
        return body


def make_harness(db: Database) -> Harness:
    live, registry, ready = Live(), CollectorRegistry(), [True]
    app = build_app(db=db, live=live, metrics_registry=registry, ready=lambda: ready[0])
    return Harness(TestClient(TestServer(app)), live, registry, ready)


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Harness]:
    harness = make_harness(db)
    async with harness.client:
        yield harness


def row(factor: str = "w01018", at: datetime = T0, **changes: Any) -> DataRow:
    base = DataRow(
        mn=MN, cn="2051", data_time=at, factor=factor,
        received_at=RECEIVED, qn="20240501080005123", avg=12.3, flag="N",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def seen(mn: str, version: int = 2017) -> DeviceSeen:
    return DeviceSeen(mn=mn, protocol_version=version, st="32", peer="10.0.0.1:4000", seen_at=RECEIVED)


# --- probes and metrics ---------------------------------------------------------------------


async def test_healthz_is_ok_while_the_process_runs(api: Harness) -> None:
    api.ready[0] = False
    assert await api.get("/healthz") == {"status": "ok"}


async def test_readyz_follows_ready(api: Harness) -> None:
    assert await api.get("/readyz") == {"status": "ready"}
    api.ready[0] = False
    body = await api.get("/readyz", status=503)
    assert body["error"] == "not_ready" and body["detail"]
    api.ready[0] = True
    assert await api.get("/readyz") == {"status": "ready"}


async def test_metrics_exposes_the_given_registry(api: Harness) -> None:
    Counter("hj212gw_api_test_hits_total", "Hits, for the test.", registry=api.registry).inc(3)
    resp = await api.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "hj212gw_api_test_hits_total 3.0" in await resp.text()
    resp = await api.client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).endswith("# EOF\n")


# --- devices ----------------------------------------------------------------------------------


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


# --- data -------------------------------------------------------------------------------------


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


# --- errors -----------------------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_are_json(api: Harness) -> None:
    assert (await api.get("/api/v1/nothing", status=404))["error"] == "not_found"
    resp = await api.client.post("/api/v1/devices")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


async def test_a_bug_is_one_error_log_and_a_bare_500(db: Database) -> None:
    def broken() -> bool:
        raise RuntimeError("internal detail that must stay in the log")

    app = build_app(db=db, live=Live(), metrics_registry=CollectorRegistry(), ready=broken)
    with capture_logs() as logs:
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/readyz")
            text = await resp.text()
    assert resp.status == 500 and resp.content_type == "application/json"
    assert "internal detail" not in text and "Traceback" not in text
    (error,) = [e for e in logs if e["log_level"] == "error"]
    assert error["event"] == "api_request_failed" and error["path"] == "/readyz" and error["exc_info"]
    assert error["request_id"] in text and resp.headers["X-Request-Id"] == error["request_id"]


async def test_database_outage_is_503_not_a_bug(pg_dsn: str, schema: str) -> None:
    proxy = TcpProxy.for_dsn(pg_dsn)
    await proxy.start()
    db = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=1, connect_timeout_s=1.0)
    await db.connect()
    try:
        harness = make_harness(db)
        async with harness.client:
            assert (await harness.get("/api/v1/devices"))["devices"] == []
            proxy.cut()
            with capture_logs() as logs:
                body = await harness.get("/api/v1/devices", status=503)
            assert body["error"] == "database_unavailable"
            assert [e["log_level"] for e in logs] == ["warning"]
    finally:
        await db.close()
        await proxy.stop()


async def test_start_http_serves_on_a_free_port_until_stopped(db: Database) -> None:
    app = build_app(db=db, live=Live(), metrics_registry=None, ready=lambda: True)
    runner = await start_http(app, "127.0.0.1", 0)
    port = bound_port(runner)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
    finally:
        await stop_http(runner)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/healthz")
