"""server/connection.py end to end, good input: the gateway on port 0, a plain asyncio DAS, real
PostgreSQL. Each test checks the reply bytes (9014 only after COMMIT), the rows, the metrics."""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from hj212gw.protocol.constants import HEARTBEAT_CNS, NOTIFICATION_CNS, REPLY_CNS
from hj212gw.protocol.cp import DataCp, SiteInfoCp
from hj212gw.protocol.framing import encode_frame
from hj212gw.protocol.models import Packet, parse_hj_time
from hj212gw.protocol.packets import parse_packet
from tests.conftest import Dial, StartGateway
from tests.integration.das import MN, PW, data_packet, empty_packet
from tests.integration.serving import E1, E1_ACK, FIXTURES, exists, minute, sample, send_and_half_close
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

GOOD = sorted(FIXTURES.glob("good/**/*.hj212"))
SHANGHAI = ZoneInfo("Asia/Shanghai")


def qns(start: int, count: int) -> list[str]:
    return [f"20240315101{n:06d}" for n in range(start, start + count)]


def expected_reply(info: dict[str, Any]) -> list[str]:
    """The CNs the gateway must answer a fixture with, in order (HJ 212-2017 §9.1, §15)."""
    cn, flag = info["cn"], info["flag"]
    wants = flag is not None and bool(flag & 1)
    if cn in REPLY_CNS:
        return []
    if cn in HEARTBEAT_CNS:
        return ["9013"] if wants else []
    if cn == "1013":
        return ["9013", "1012"] if info.get("mn") else ["9013"]  # then it sets the clock (§9.6)
    if cn in NOTIFICATION_CNS:
        return ["9013"] if wants else []
    return ["9014"] if wants else []


async def stored_factors(conn: asyncpg.Connection, packet: Packet, data_time: str | None) -> set[str]:
    """The factors stored from `packet`: in `data`, or in `alarm_events` for an alarm upload (AlarmTime)."""
    if isinstance(packet.data, DataCp) and "AlarmTime" in packet.data.fields and data_time is None:
        records = await conn.fetch("SELECT factor FROM alarm_events WHERE mn = $1 AND qn = $2", packet.mn, packet.qn)
        return {r["factor"] for r in records}
    at = parse_hj_time(data_time) if data_time else None
    records = await conn.fetch(
        "SELECT factor FROM data WHERE mn = $1 AND cn = $2 AND ($3::timestamptz IS NULL OR data_time = $3)"
        " AND qn IS NOT DISTINCT FROM $4",
        packet.mn,
        packet.cn,
        at.replace(tzinfo=SHANGHAI) if at else None,
        packet.qn,
    )
    return {r["factor"] for r in records}


async def test_e1_gets_the_standard_ack_bytes_only_once_its_rows_are_visible_to_others(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    das = await dial(running)
    await das.send(E1.read_bytes())

    ack = await das.reply()
    visible_at_ack = await conn.fetchval("SELECT count(*) FROM data WHERE qn = '20240315101000001'")

    assert ack.raw == E1_ACK
    assert visible_at_ack == 4
    rows = await conn.fetch("SELECT factor, cou, min, avg, max, flag, revisions, resend FROM data ORDER BY factor")
    assert [tuple(r) for r in rows] == [
        ("w00000", 10.5, 16.4, 17.5, 20.1, "N", 0, False),
        ("w01001", None, 7.1, 7.5, 7.8, "N", 0, False),
        ("w01018", 0.421, 38.2, 40.1, 41.3, "N", 0, False),
        ("w21003", 0.012, 1.02, 1.10, 1.21, "N", 0, False),
    ]
    frames = await conn.fetch("SELECT verdict, mn, cn, qn, raw FROM raw_frames")
    assert [tuple(f) for f in frames] == [("ok", MN, "2051", "20240315101000001", E1.read_bytes())]


async def test_every_good_fixture_is_stored_and_answered_as_its_flag_asks(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    # The fixtures come from some twenty unrelated sources that reuse the standard's example MN,
    # each with its own PW: as one device that is an MN under attack, refused by the default
    # authentication (tests/hostile/test_auth.py). This test is about parsing and storage.
    running = await start_gateway(writer={"linger_ms": 1}, devices={"auth": "off"})
    problems = []
    for path in GOOD:
        info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        wire = path.read_bytes()
        packet = parse_packet(wire)
        replies = await send_and_half_close(dial, running, wire)
        got = [r.packet.cn for r in replies]
        if got != expected_reply(info):
            problems.append(f"{path.parent.name}/{path.stem}: replies {got}, expected {expected_reply(info)}")
        elif got and packet.qn is not None and f"QN={packet.qn}".encode() not in replies[0].raw:
            problems.append(f"{path.parent.name}/{path.stem}: reply {replies[0].raw!r} does not echo the QN")
        data = packet.data
        codes = (
            {r.code for r in data.readings}
            if isinstance(data, DataCp)
            else {i.code for i in data.infos}
            if isinstance(data, SiteInfoCp)
            else set()
        )
        if codes and packet.mn and not (packet.split and info.get("data_time") is None):
            stored = await stored_factors(conn, packet, info.get("data_time"))
            if not codes <= stored:
                problems.append(f"{path.parent.name}/{path.stem}: stored {sorted(stored)}, expected {sorted(codes)}")
    assert problems == []
    verdicts = await conn.fetch("SELECT verdict, count(*) FROM raw_frames GROUP BY verdict")
    assert {r["verdict"]: r["count"] for r in verdicts} == {"ok": len(GOOD)}
    assert sample(running, "hj212gw_frames_rejected_total", reason="crc_mismatch") == 0


@pytest.mark.parametrize("delivery", ["one_write_each", "byte_by_byte", "coalesced"])
async def test_how_the_bytes_are_cut_does_not_change_acks_or_rows(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection, delivery: str
) -> None:
    running = await start_gateway()
    sent = qns(1, 10)
    packets = [
        data_packet(qn, data_time=minute(n), values={"w01018": f"{n}.5", "w21003": "1.10"}) for n, qn in enumerate(sent)
    ]
    das = await dial(running)
    if delivery == "coalesced":
        await das.send(b"".join(packets))
    elif delivery == "byte_by_byte":
        await das.send_slowly(b"".join(packets), chunk=1)
    else:
        for packet in packets:
            await das.send(packet)

    acks = await das.replies(10)

    assert [a.packet.cn for a in acks] == ["9014"] * 10
    assert sorted(a.packet.qn for a in acks) == sent
    rows = await conn.fetch("SELECT qn, factor, avg FROM data ORDER BY qn, factor")
    assert [tuple(r) for r in rows] == [
        (qn, factor, value) for n, qn in enumerate(sent) for factor, value in (("w01018", n + 0.5), ("w21003", 1.1))
    ]
    assert await das.nothing_within(0.2)


async def test_the_same_packet_twice_is_stored_once_and_acked_twice(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    das = await dial(running)
    wire = E1.read_bytes()
    await das.send(wire)
    await das.send(wire)

    acks = await das.replies(2)

    assert [a.raw for a in acks] == [E1_ACK, E1_ACK]
    rows = await conn.fetch("SELECT factor, revisions, resend FROM data ORDER BY factor")
    assert [tuple(r) for r in rows] == [(f, 0, False) for f in ("w00000", "w01001", "w01018", "w21003")]
    assert await conn.fetchval("SELECT count(*) FROM raw_frames WHERE verdict = 'ok'") == 2


async def test_a_2025_rf_resend_with_a_changed_value_revises_the_row(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    das = await dial(running)
    await das.send(data_packet("20240601080000001", flag=9, values={"a21026": "18.5"}))
    first = await das.reply()
    await das.send(data_packet("20240601090000001", flag=9, values={"a21026": "19.0"}, rf=True))
    second = await das.reply()

    assert (first.packet.cn, first.packet.flag, second.packet.cn, second.packet.flag) == ("9014", 8, "9014", 8)
    assert second.packet.qn == "20240601090000001"
    row = await conn.fetchrow("SELECT avg, qn, revisions, resend, received_at, first_received_at FROM data")
    assert (row["avg"], row["qn"], row["revisions"], row["resend"]) == (19.0, "20240601090000001", 1, True)
    assert row["first_received_at"] < row["received_at"]


async def test_a_2025_heartbeat_asking_for_a_reply_gets_9013_with_flag_8(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    das = await dial(running)
    await das.send(empty_packet("20240601085857223", "9015", flag=9))

    reply = await das.reply()

    assert reply.raw == encode_frame(f"QN=20240601085857223;ST=91;CN=9013;PW={PW};MN={MN};Flag=8;CP=&&&&".encode())
    await eventually(lambda: exists(conn, "SELECT 1 FROM devices WHERE mn = $1 AND protocol_version = 2025", MN))


async def test_1013_gets_9013_then_the_platform_sets_the_time_with_1012(
    start_gateway: StartGateway, dial: Dial
) -> None:
    running = await start_gateway()
    das = await dial(running)
    await das.send(FIXTURES.joinpath("good/hj212-2017-std/1013-e4-time-calibration-request.hj212").read_bytes())

    notification, request = await das.replies(2)

    assert notification.raw == (
        b"##0087QN=20240315120000456;ST=91;CN=9013;PW=123456;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&21C0\r\n"
    )
    assert (request.packet.cn, request.packet.flag, request.packet.mn, request.packet.pw) == ("1012", 5, MN, PW)
    system_time = request.packet.cp.removeprefix("SystemTime=")
    assert len(system_time) == 14 and system_time.isdigit()
    qn = request.packet.qn
    assert qn is not None
    await das.send(empty_packet(qn, "9011", flag=4, cp="QnRtn=1"))
    await das.send(empty_packet(qn, "9012", flag=4, cp="ExeRtn=1"))
    await until(lambda: sample(running, "hj212gw_requests_total", cn="1012", outcome="exe_1") == 1)
