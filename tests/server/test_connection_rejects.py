"""server/connection.py end to end, bad input: every reject is archived with its reason, counted,
logged and answered (9011) only when asked; the connection closes by the policy table."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.api import bound_port
from hj212gw.protocol.framing import FrameLimits, encode_frame
from hj212gw.storage.db import Database
from tests.conftest import Dial, StartGateway
from tests.integration.das import MN, data_packet
from tests.integration.serving import E1, E1_ACK, FIXTURES, exists, sample, send_and_half_close
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

BAD = sorted(FIXTURES.glob("bad/*.hj212"))


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
    await eventually(lambda: exists(conn, "SELECT 1 FROM raw_frames WHERE verdict = 'unknown_mn'"))
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
    await eventually(lambda: exists(conn, "SELECT 1 FROM raw_frames WHERE verdict = 'frame_too_long'"))
    garbage = await conn.fetchval("SELECT raw FROM raw_frames WHERE verdict = 'garbage'")
    assert garbage.startswith(b"9999QN=20240315101000000;ST=32;CN=2051")  # the rest, after the `##`


async def test_a_frame_cut_by_a_reset_is_archived_with_every_byte_it_had(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    das = await dial(running)
    whole = data_packet("20240315101000004", values={f"w{i:05d}": "2.5" for i in range(20)})
    cut = whole[: whole.index(b"-Flag=", len(whole) // 2) + 4]  # ends `-Fla`: no CRC, no tail
    assert len(cut) > 200
    await das.send(cut)
    await asyncio.sleep(0.1)  # read by the gateway before the reset
    sock = das.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
    das.writer.transport.abort()

    await eventually(lambda: exists(conn, "SELECT 1 FROM raw_frames WHERE verdict = 'crc_missing'"))
    row = await conn.fetchrow("SELECT raw, tolerances FROM raw_frames WHERE verdict = 'crc_missing'")
    assert (bytes(row["raw"]), row["tolerances"]) == (cut, [])  # whole, not its first 120 bytes


async def test_a_bad_length_field_and_a_missing_crc_keep_their_bytes_in_the_archive(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    no_crc = b"##0101QN=20240315101000005;ST=32;CN=2051;CP=&&" + b"a" * 150 + b"&&"
    await send_and_half_close(dial, running, b"##01x1" + E1.read_bytes() + no_crc)

    await eventually(lambda: exists(conn, "SELECT 1 FROM raw_frames WHERE verdict <> 'ok' HAVING count(*) = 3"))
    rows = await conn.fetch("SELECT verdict, raw FROM raw_frames WHERE verdict <> 'ok'")
    # As a set: two batch writers may commit these rows out of arrival order (ids follow commits).
    assert sorted((r["verdict"], bytes(r["raw"])) for r in rows) == sorted(
        [
            ("length_field_invalid", b"##"),  # only the `##` is consumed: a header may follow at once
            ("garbage", b"01x1"),
            ("crc_missing", no_crc),  # whole at the end of the stream, not its first 120 bytes
        ]
    )


async def test_a_flood_of_junk_is_archived_up_to_the_window_and_marked_truncated(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway(protocol={"max_segment_bytes": 1024})
    window = FrameLimits(max_segment_bytes=1024).window
    junk = b"\xff" * (20 * window)  # one write: the gateway reads it in one or a few chunks
    await send_and_half_close(dial, running, junk + E1.read_bytes())

    await eventually(lambda: exists(conn, "SELECT 1 FROM raw_frames WHERE verdict = 'ok'"))
    rows = await conn.fetch("SELECT raw, tolerances FROM raw_frames WHERE verdict = 'garbage' ORDER BY id")
    assert rows and all(set(bytes(r["raw"])) == {0xFF} and len(r["raw"]) <= window for r in rows)
    assert any(r["tolerances"] == ["raw_truncated"] for r in rows)  # some read held more than a window
    assert all(len(r["raw"]) == window for r in rows if r["tolerances"] == ["raw_truncated"])
    assert sum(len(r["raw"]) for r in rows) < len(junk)
