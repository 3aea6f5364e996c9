"""server/connection.py end to end: the gateway on port 0, a plain asyncio DAS, real PostgreSQL.

Each test starts its own gateway on a fresh schema, writes HJ 212 bytes, and checks the reply
bytes, the rows in `data` and `raw_frames`, the metrics and the connection policies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.api import bound_port
from hj212gw.cli.serve import Running
from hj212gw.protocol.constants import HEARTBEAT_CNS, NOTIFICATION_CNS, REPLY_CNS
from hj212gw.protocol.cp import DataCp, SiteInfoCp
from hj212gw.protocol.framing import encode_frame
from hj212gw.protocol.models import Packet, parse_hj_time
from hj212gw.protocol.packets import parse_packet
from hj212gw.storage.db import Database
from tests.conftest import Dial, StartGateway
from tests.integration.das import MN, PW, DasClient, Reply, data_packet, empty_packet
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "packets"
GOOD = sorted(FIXTURES.glob("good/**/*.hj212"))
BAD = sorted(FIXTURES.glob("bad/*.hj212"))
E1 = FIXTURES / "good/hj212-2017-std/2051-e1-minute-data.hj212"
E1_ACK = b"##0087QN=20240315101000001;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&5000\r\n"
SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2024, 3, 15, 10, 0)


def sample(running: Running, name: str, **labels: str) -> float:
    return running.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def qns(start: int, count: int) -> list[str]:
    return [f"20240315101{n:06d}" for n in range(start, start + count)]


def minute(n: int) -> str:
    """DataTime of the n-th minute after 2024-03-15 10:00."""
    return (T0 + timedelta(minutes=n)).strftime("%Y%m%d%H%M%S")


# ---- the standard's worked example ------------------------------------------------------------


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


# ---- every captured packet --------------------------------------------------------------------


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


async def send_and_half_close(dial: Dial, running: Running, wire: bytes) -> list[Reply]:
    """Send one capture, half-close like a DAS that is done, and collect every reply until the gateway closes."""
    das = await dial(running)
    await das.send(wire)
    das.writer.write_eof()
    replies = []
    while True:
        try:
            replies.append(await das.reply(timeout_s=5.0))
        except ConnectionError:
            break
    return replies


async def stored_factors(conn: asyncpg.Connection, packet: Packet, data_time: str | None) -> set[str]:
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


async def test_every_bad_fixture_is_archived_with_its_reason_counted_and_never_answered(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    answered = {}
    for path in BAD:
        replies = await send_and_half_close(dial, running, path.read_bytes())
        if replies:
            answered[path.stem] = [r.raw for r in replies]
    assert answered == {}

    reasons = Counter(path.name.split("-", 1)[0] for path in BAD)
    verdicts = await conn.fetch("SELECT verdict, count(*) FROM raw_frames GROUP BY verdict")
    assert {r["verdict"]: r["count"] for r in verdicts} == reasons
    assert await conn.fetchval("SELECT count(*) FROM data") == 0
    archived = [bytes(r["raw"]) for r in await conn.fetch("SELECT raw FROM raw_frames")]
    wires = [path.read_bytes() for path in BAD]
    assert all(raw and any(wire.startswith(raw) for wire in wires) for raw in archived)
    for reason, count in reasons.items():
        assert sample(running, "hj212gw_frames_rejected_total", reason=reason) == count
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{bound_port(running.http_runner)}/metrics") as resp,  # type: ignore[arg-type]
    ):
        exposition = await resp.text()
    assert f'hj212gw_frames_rejected_total{{reason="crc_mismatch"}} {reasons["crc_mismatch"]}.0' in exposition


# ---- chunking ---------------------------------------------------------------------------------


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


# ---- resends ----------------------------------------------------------------------------------


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


# ---- heartbeats and notifications -------------------------------------------------------------


async def test_a_2025_heartbeat_asking_for_a_reply_gets_9013_with_flag_8(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    das = await dial(running)
    await das.send(empty_packet("20240601085857223", "9015", flag=9))

    reply = await das.reply()

    assert reply.raw == encode_frame(f"QN=20240601085857223;ST=91;CN=9013;PW={PW};MN={MN};Flag=8;CP=&&&&".encode())
    await eventually(lambda: _exists(conn, "SELECT 1 FROM devices WHERE mn = $1 AND protocol_version = 2025", MN))


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


async def _exists(conn: asyncpg.Connection, query: str, *args: object) -> bool:
    return await conn.fetchval(query, *args) is not None


# ---- connection policies ----------------------------------------------------------------------


async def test_an_unknown_mn_under_the_reject_policy_is_refused_and_closed(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway(devices={"unknown_mn": "reject"})
    das = await dial(running)
    await das.send(E1.read_bytes())

    refusal = await das.reply()

    assert (refusal.packet.cn, refusal.packet.qn, refusal.packet.cp) == ("9011", "20240315101000001", "QnRtn=4")
    assert await das.closed_by_gateway()
    assert await conn.fetchval("SELECT count(*) FROM data") == 0
    await eventually(lambda: _exists(conn, "SELECT 1 FROM raw_frames WHERE verdict = 'unknown_mn'"))
    assert sample(running, "hj212gw_frames_rejected_total", reason="unknown_mn") == 1
    await until(lambda: sample(running, "hj212gw_connections_closed_total", reason="unknown_mn") == 1)


async def test_a_wrong_pw_is_rejected_with_9011_qnrtn_3_when_a_reply_is_asked_for(
    start_gateway: StartGateway, dial: Dial, db: Database, conn: asyncpg.Connection
) -> None:
    await db.pool.execute("INSERT INTO devices (mn, pw) VALUES ($1, $2)", MN, "654321")
    running = await start_gateway()

    asked = await dial(running)
    await asked.send(data_packet("20240315101000001", pw="123456", flag=5))
    refusal = await asked.reply()
    assert refusal.raw == encode_frame(
        f"QN=20240315101000001;ST=91;CN=9011;PW=123456;MN={MN};Flag=4;CP=&&QnRtn=3&&".encode()
    )
    assert await asked.closed_by_gateway()

    silent = await dial(running)
    await silent.send(data_packet("20240315101000002", pw="123456", flag=4))
    assert await silent.closed_by_gateway()
    assert silent.frames.buffered == 0

    right = await dial(running)
    await right.send(data_packet("20240315101000003", pw="654321", flag=5))
    ack = await right.reply()
    assert (ack.packet.cn, ack.packet.qn) == ("9014", "20240315101000003")

    assert [r["qn"] for r in await conn.fetch("SELECT qn FROM data")] == ["20240315101000003"]
    await until(lambda: sample(running, "hj212gw_frames_rejected_total", reason="wrong_pw") == 2)
    verdicts = await conn.fetch("SELECT qn, verdict FROM raw_frames ORDER BY qn")
    assert [tuple(v) for v in verdicts] == [
        ("20240315101000001", "wrong_pw"),
        ("20240315101000002", "wrong_pw"),
        ("20240315101000003", "ok"),
    ]


async def test_a_garbage_stream_is_closed_after_consecutive_rejects_while_others_are_served(
    start_gateway: StartGateway, dial: Dial
) -> None:
    running = await start_gateway(connections={"max_consecutive_rejects": 3})
    good = await dial(running)
    bad = await dial(running)
    with capture_logs() as logs:
        await bad.send(b"\x00\xffjunk ##0010abcdefghijFFFF\r\n" * 5)
        assert await bad.closed_by_gateway()
    assert bad.frames.buffered == 0  # not a byte of reply

    await good.send(E1.read_bytes())
    assert (await good.reply()).raw == E1_ACK
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert {e["event"] for e in warnings} == {"frame_rejected"}
    assert len(warnings) >= 3
    assert all(e["raw"] for e in warnings)
    await until(lambda: sample(running, "hj212gw_connections_closed_total", reason="too_many_rejects") == 1)


async def test_an_oversized_declared_length_is_rejected_and_the_next_frame_still_acked(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    das = await dial(running)
    await das.send(b"##9999QN=20240315101000000;ST=32;CN=2051" + b"x" * 200 + b"\r\n" + E1.read_bytes())

    assert (await das.reply()).raw == E1_ACK
    assert sample(running, "hj212gw_frames_rejected_total", reason="frame_too_long") == 1
    assert await conn.fetchval("SELECT count(*) FROM data") == 4
    await eventually(lambda: _exists(conn, "SELECT 1 FROM raw_frames WHERE verdict = 'frame_too_long'"))
    garbage = await conn.fetchval("SELECT raw FROM raw_frames WHERE verdict = 'garbage'")
    assert garbage.startswith(b"9999QN=20240315101000000;ST=32;CN=2051")  # the rest, after the `##`


@pytest.mark.slow
async def test_a_slow_sender_is_served_and_not_taken_for_idle(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway(connections={"idle_timeout_s": 1.5})
    das = await dial(running)
    wire = encode_frame(
        b"QN=20240315101000001;ST=32;CN=2051;PW=1;MN=M1;Flag=5;CP=&&DataTime=20240315100000;w01018-Avg=1&&"
    )
    await das.send_slowly(wire, delay_s=0.05)  # about 5 s for the frame, 50 ms between bytes

    ack = await das.reply()

    assert (ack.packet.cn, ack.packet.qn) == ("9014", "20240315101000001")
    assert await conn.fetchval("SELECT avg FROM data WHERE mn = 'M1'") == 1.0


async def test_an_idle_connection_is_closed(start_gateway: StartGateway, dial: Dial) -> None:
    running = await start_gateway(connections={"idle_timeout_s": 1.0})
    das = await dial(running)
    await das.send(E1.read_bytes())
    assert (await das.reply()).raw == E1_ACK

    assert await das.closed_by_gateway(timeout_s=4.0)
    await until(lambda: sample(running, "hj212gw_connections_closed_total", reason="idle_timeout") == 1)


async def test_a_connection_without_a_valid_packet_is_closed_after_the_first_packet_timeout(
    start_gateway: StartGateway, dial: Dial
) -> None:
    running = await start_gateway(connections={"first_packet_timeout_s": 1.0, "idle_timeout_s": 30.0})
    das = await dial(running)
    # Busy but never complete: E1 at 10 bytes a second keeps the idle timer fresh for 40 s.
    trickle = asyncio.create_task(das.send_slowly(E1.read_bytes(), delay_s=0.1))
    try:
        assert await das.closed_by_gateway(timeout_s=4.0)
    finally:
        trickle.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await trickle
    await until(lambda: sample(running, "hj212gw_connections_closed_total", reason="no_valid_packet") == 1)


async def test_connections_beyond_max_per_ip_are_refused(start_gateway: StartGateway, dial: Dial) -> None:
    running = await start_gateway(connections={"max_connections_per_ip": 2})
    first, second = await dial(running), await dial(running)
    third = await dial(running)

    assert await third.closed_by_gateway()
    for n, das in enumerate((first, second), start=1):
        await das.send(data_packet(f"2024031510100000{n}", mn=f"MN{n}"))
        assert (await das.reply()).packet.qn == f"2024031510100000{n}"
    assert sample(running, "hj212gw_connections_total", outcome="max_connections_per_ip") == 1

    await first.close()
    await until(lambda: sample(running, "hj212gw_connections_open") == 1)
    fourth = await dial(running)
    await fourth.send(data_packet("20240315101000004", mn="MN4"))
    assert (await fourth.reply()).packet.qn == "20240315101000004"


async def test_a_newer_connection_for_the_same_mn_closes_the_older_one(start_gateway: StartGateway, dial: Dial) -> None:
    running = await start_gateway()
    older = await dial(running)
    await older.send(data_packet("20240315101000001"))
    assert (await older.reply()).packet.qn == "20240315101000001"

    newer = await dial(running)
    await newer.send(data_packet("20240315101000002", data_time=minute(1)))

    assert (await newer.reply()).packet.qn == "20240315101000002"
    assert await older.closed_by_gateway()
    await newer.send(data_packet("20240315101000003", data_time=minute(2)))
    assert (await newer.reply()).packet.qn == "20240315101000003"
    assert sample(running, "hj212gw_connections_closed_total", reason="replaced_by_newer_connection") == 1
    assert set(running.gateway.online()) == {MN}


# ---- shutdown ---------------------------------------------------------------------------------


async def pump(das: DasClient, mn: str, acked: set[str], sent: list[str]) -> None:
    """Send uploads back to back (never waiting for an ack) until the gateway goes away."""
    reader = asyncio.create_task(collect_acks(das, acked))
    try:
        for n in range(100_000):
            qn = f"2024031510{n:07d}"
            sent.append(qn)
            await das.send(data_packet(qn, mn=mn, data_time=minute(n), values={"w01018": str(n)}))
            await asyncio.sleep(0)
    except ConnectionError:
        pass
    await reader


async def collect_acks(das: DasClient, acked: set[str]) -> None:
    with contextlib.suppress(ConnectionError, TimeoutError):
        while True:
            reply = await das.reply(timeout_s=30.0)
            assert reply.packet.cn == "9014" and reply.packet.qn is not None
            acked.add(reply.packet.qn)


async def test_stop_with_packets_in_flight_acks_only_what_was_committed(
    start_gateway: StartGateway, dial: Dial, pg_dsn: str, schema: str
) -> None:
    running = await start_gateway()
    acked: dict[str, set[str]] = {f"MN{n}": set() for n in range(4)}
    sent: dict[str, list[str]] = {mn: [] for mn in acked}
    clients = [await dial(running) for _ in acked]
    pumps = [asyncio.create_task(pump(das, mn, acked[mn], sent[mn])) for das, mn in zip(clients, acked, strict=True)]
    await asyncio.sleep(0.5)

    await running.stop()
    await asyncio.wait_for(asyncio.gather(*pumps), 10)

    check = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    try:
        for mn, qns_acked in acked.items():
            stored = {r["qn"] for r in await check.fetch("SELECT qn FROM data WHERE mn = $1", mn)}
            assert qns_acked, f"{mn}: nothing acked before the stop"
            assert qns_acked <= stored, f"{mn}: acked but not stored: {sorted(qns_acked - stored)[:5]}"
        closed = await check.fetch("SELECT mn, close_reason FROM connections ORDER BY mn")
        assert [tuple(c) for c in closed] == [(mn, "shutdown") for mn in acked]
    finally:
        await check.close()
    assert sum(len(s) for s in sent.values()) > sum(len(a) for a in acked.values())  # the stop cut real traffic


async def test_a_packet_with_a_wrong_pw_does_not_replace_the_devices_live_connection(
    start_gateway: StartGateway, dial: Dial, db: Database
) -> None:
    await db.pool.execute("INSERT INTO devices (mn, pw) VALUES ($1, $2)", MN, "654321")
    running = await start_gateway()
    device = await dial(running)
    await device.send(data_packet("20240315101000001", pw="654321"))
    assert (await device.reply()).packet.qn == "20240315101000001"

    impostor = await dial(running)
    await impostor.send(data_packet("20240315101000002", pw="000000", data_time=minute(1)))
    assert (await impostor.reply()).packet.cp == "QnRtn=3"
    assert await impostor.closed_by_gateway()

    await device.send(data_packet("20240315101000003", pw="654321", data_time=minute(2)))
    assert (await device.reply()).packet.qn == "20240315101000003"
    assert sample(running, "hj212gw_connections_closed_total", reason="replaced_by_newer_connection") == 0
    assert running.gateway.online()[MN].connection_id == running.gateway.bindings.by_mn[MN].connection_id
