"""Alarm uploads -> alarm_events rows at their AlarmTime; end to end through a real gateway: stored
once however often resent, acked after COMMIT, no data rows, served by GET /api/v1/alarms."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest

from hj212gw.api import bound_port
from hj212gw.ingest.alarms import alarm_rows
from hj212gw.ingest.items import IngestItem, encoded_bytes
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.framing import parse_frame
from hj212gw.protocol.segment import parse_segment
from tests.conftest import Dial, StartGateway
from tests.integration.serving import FIXTURES

SHANGHAI = ZoneInfo("Asia/Shanghai")
RECEIVED = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
ALARMS = sorted(FIXTURES.glob("good/*/2072-*.hj212"))
HEADER = b"QN=20240315101000001;ST=32;CN=2072;PW=123456;MN=ZG130182201401;Flag=4;"


def test_a_2072_capture_is_one_alarm_per_factor_at_its_alarm_time_in_the_device_zone() -> None:
    wire = (FIXTURES / "good/xiaoyao9184-hj-t212-parser/2072-l149.hj212").read_bytes()
    [alarm] = alarm_rows(decode_frame(parse_frame(wire)), RECEIVED, SHANGHAI)
    assert alarm.alarm_time == datetime(2016, 8, 24, 0, 40, 58, tzinfo=SHANGHAI)  # AlarmTime, not received
    assert (alarm.mn, alarm.cn, alarm.factor, alarm.alarm_type) == ("ZG130182201401", "2072", "B01", "1")
    assert (alarm.value, dict(alarm.fields), alarm.qn) == (16.0, {"Ala": "16.00"}, "20160824004058234")


def test_alarm_type_per_factor_wins_and_a_missing_type_is_empty() -> None:
    cp = b"CP=&&AlarmTime=20240315101000;a21026-Ala=12.5,a21026-AlarmType=2;a21002-Ala=high&&"
    so2, nox = alarm_rows(parse_segment(HEADER + cp), RECEIVED, SHANGHAI)
    assert (so2.factor, so2.alarm_type, so2.value) == ("a21026", "2", 12.5)
    assert (nox.factor, nox.alarm_type, nox.value, dict(nox.fields)) == ("a21002", "", None, {"Ala": "high"})


def test_data_uploads_and_alarms_without_a_readable_alarm_time_are_no_alarm_events() -> None:
    assert alarm_rows(parse_segment(HEADER + b"CP=&&DataTime=20240315101000;B01-Ala=1&&"), RECEIVED, SHANGHAI) == ()
    assert alarm_rows(parse_segment(HEADER + b"CP=&&AlarmTime=2024;B01-Ala=1,AlarmType=1&&"), RECEIVED, SHANGHAI) == ()


def test_an_alarm_upload_counts_in_the_write_queue_as_large_as_its_fields() -> None:
    """A hostile alarm upload (one factor, many long vendor fields) is as large in the queue's
    byte bound as what it holds, not a constant per row."""
    fields = ",".join(f"B01-Info{n}={'x' * 120}" for n in range(30))
    [alarm] = alarm_rows(
        parse_segment(HEADER + f"CP=&&AlarmTime=20240315101000;{fields}&&".encode()), RECEIVED, SHANGHAI
    )
    assert len(alarm.fields) == 30
    assert encoded_bytes(IngestItem(alarms=(alarm,))) >= 30 * 120


@pytest.mark.integration
async def test_alarms_are_stored_once_at_their_time_acked_and_served_beside_the_data(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway(devices={"auth": "off"})
    das = await dial(running)
    for path in [*ALARMS, *ALARMS]:  # every alarm sent twice
        await das.send(path.read_bytes())
        reply = await das.reply()
        assert reply.packet.cn == "9014"  # acked: committed with its raw frame

    assert await conn.fetchval("SELECT count(*) FROM data") == 0  # no longer data at the receive time
    assert await conn.fetchval("SELECT count(*) FROM raw_frames WHERE cn = '2072'") == 2 * len(ALARMS)
    stored = await conn.fetch("SELECT mn, alarm_time, factor, alarm_type, value FROM alarm_events ORDER BY alarm_time")
    assert [tuple(r) for r in stored] == [
        ("ZG130182201401", datetime(2016, 8, 23, 16, 40, 58, tzinfo=UTC), "B01", "1", 16.0),
        ("ZG130182201323", datetime(2016, 8, 24, 14, 26, 22, tzinfo=UTC), "011", "1", 1182.0),
        ("ZG130182201323", datetime(2016, 8, 24, 14, 50, 22, tzinfo=UTC), "011", "1", 1225.0),
    ]

    url = f"http://127.0.0.1:{bound_port(running.http_runner)}/api/v1/alarms"  # type: ignore[arg-type]
    query = {"mn": "ZG130182201323", "start": "2016-08-24T00:00:00Z", "end": "2016-08-25T00:00:00Z", "limit": "1"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, params=query | {"tz": "Asia/Shanghai"}) as resp:
            first = await resp.json()
        async with http.get(url, params=query | {"cursor": first["next_cursor"]}) as resp:
            second = await resp.json()
    assert [r["alarm_time"] for r in first["rows"]] == ["2016-08-24T22:26:22+08:00"]
    assert first["rows"][0]["fields"] == {"Ala": "1182.00"} and first["rows"][0]["raw_frame_id"] is not None
    assert [r["alarm_time"] for r in second["rows"]] == ["2016-08-24T14:50:22Z"] and second["next_cursor"] is None
