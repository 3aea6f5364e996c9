"""replay.py: a mixed 2005/2017/2025 capture replayed through a real gateway into PostgreSQL.

The expected rows and acks are worked out here from the capture's text (CP split by hand), not
with the gateway's row builder, so the test checks the gateway and the replay tool together.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hj212gw.cli.replay import CapturedFrame, read_capture, replay
from hj212gw.cli.serve import Running
from tests.conftest import StartGateway
from tests.integration.waiting import eventually
from tests.protocol.conftest import FIRST

pytestmark = pytest.mark.integration

CAPTURE = Path(__file__).resolve().parents[2] / "fixtures/captures/mixed-versions.capture"
DATA_CNS = {"2011", "2031", "2051", "2061", "3020"}  # 3020 site information is stored as data too
NUMBERS = ("Rtd", "Min", "Avg", "Max", "Cou")
Row = tuple[str, str, str, str]  # mn, cn, DataTime (14 digits), factor


def header(frame: CapturedFrame, name: str) -> str | None:
    segment = frame.wire.decode("utf-8").split("CP=&&", 1)[0]
    fields = dict(item.partition("=")[::2] for item in segment[6:].split(";") if item)
    return fields.get(name)


def expected_rows(frames: list[CapturedFrame]) -> dict[Row, dict[str, float]]:
    """(mn, cn, DataTime, factor) -> its numbers, for every valid upload in the capture."""
    rows: dict[Row, dict[str, float]] = {}
    for frame in frames:
        cn, mn = header(frame, "CN"), header(frame, "MN")
        if frame.packet is None or cn not in DATA_CNS or mn is None:
            continue
        cp = frame.wire.decode("utf-8").split("CP=&&", 1)[1].rsplit("&&", 1)[0]
        items = [item.partition("=")[::2] for item in cp.replace(",", ";").split(";") if item]
        data_time = dict(items)["DataTime"][:14].ljust(14, "0")  # one capture has 13 digits (a tolerance)
        for name, value in items:
            factor, dash, suffix = name.rpartition("-")
            if dash:
                numbers = rows.setdefault((mn, cn, data_time, factor), {})
                if suffix in NUMBERS:
                    numbers[suffix] = float(value)
    return rows


def asks_for_ack(frame: CapturedFrame) -> bool:
    flag, cn = header(frame, "Flag"), header(frame, "CN")
    return frame.packet is not None and flag is not None and int(flag) & 1 == 1 and not (cn or "").startswith("9")


async def stored_rows(conn: asyncpg.Connection) -> dict[Row, dict[str, float]]:
    records = await conn.fetch(
        """SELECT mn, cn, to_char(data_time AT TIME ZONE 'Asia/Shanghai', 'YYYYMMDDHH24MISS') AS data_time,
                  factor, rtd, min, avg, max, cou FROM data"""
    )
    return {
        (r["mn"], r["cn"], r["data_time"], r["factor"]): {
            name: r[name.lower()] for name in NUMBERS if r[name.lower()] is not None
        }
        for r in records
    }


async def replay_cli(running: Running, *flags: str) -> tuple[int, dict[str, Any]]:
    """`hj212gw replay CAPTURE --json` in its own process, as a field engineer runs it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hj212gw.cli",
        "replay",
        str(CAPTURE),
        "--target",
        f"127.0.0.1:{running.gateway.port}",
        "--json",
        *flags,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, json.loads(stdout)


async def test_a_mixed_version_capture_is_acked_in_full_and_stored_exactly(
    start_gateway: StartGateway, conn: asyncpg.Connection
) -> None:
    frames = read_capture(CAPTURE)
    versions = {f.packet.version.label for f in frames if f.packet is not None}
    assert versions == {"2005", "2017", "2025"}
    running = await start_gateway()
    code, report = await replay_cli(running, "--connections", "4")
    assert code == 0
    total = report["total"]
    assert total["sent"] == len(frames) == report["lines"]
    assert total["ack_requested"] == total["acked"] == sum(map(asks_for_ack, frames)) > 0
    assert total["unacked"] == 0 and total["rejected"] == sum(f.packet is None for f in frames) == 3
    # The 2005 1013 carries its QN inside CP; its 9013 echoes it there, and that is an ack.
    assert report["per_mn"]["LD130133000018"]["acked"] == 1
    assert report["connections"] == len({f.mn for f in frames}) == len(report["per_mn"])
    rows = expected_rows(frames)
    assert len(rows) > 500
    await eventually(lambda: rows_are(conn, rows))  # the rows of frames that asked no ack commit on their own
    assert await stored_rows(conn) == rows
    # Every connection ended with our half-close: none was reset, none closed by a policy.
    await eventually(lambda: all_closed(conn, report["connections"]))
    reasons = await conn.fetch("SELECT DISTINCT close_reason FROM connections")
    assert [r["close_reason"] for r in reasons] == ["peer_closed"]


async def rows_are(conn: asyncpg.Connection, rows: dict[Row, dict[str, float]]) -> bool:
    return await stored_rows(conn) == rows


async def all_closed(conn: asyncpg.Connection, count: int) -> bool:
    """The gateway logged `count` connections, all of them closed."""
    query = "SELECT count(*) = $1 AND bool_and(close_reason IS NOT NULL) FROM connections"
    return bool(await conn.fetchval(query, count))


async def test_connections_are_one_per_mn_and_bounded(start_gateway: StartGateway, conn: asyncpg.Connection) -> None:
    frames = read_capture(CAPTURE)
    running = await start_gateway()
    assert running.gateway.port is not None
    report = await replay(frames, "127.0.0.1", running.gateway.port, connections=3)
    assert report.ok and report.total.acked == report.total.ack_requested
    await eventually(lambda: all_closed(conn, len(report.per_mn)))
    spans = await conn.fetch("SELECT mn, connected_at, disconnected_at FROM connections")
    assert {r["mn"] for r in spans} <= set(report.per_mn)
    most_open = max(
        sum(1 for o in spans if o["connected_at"] <= s["connected_at"] < o["disconnected_at"]) for s in spans
    )
    assert 1 < most_open <= 3


async def test_captured_pace_keeps_the_captured_spacing(start_gateway: StartGateway) -> None:
    frames = read_capture(CAPTURE)
    times = [f.captured_at for f in frames if isinstance(f.captured_at, datetime)]
    span_s = (max(times) - min(times)).total_seconds()
    running = await start_gateway()
    assert running.gateway.port is not None
    started = time.monotonic()
    report = await replay(frames, "127.0.0.1", running.gateway.port, pace="captured", speed=2.0)
    assert time.monotonic() - started >= span_s / 2
    assert report.ok and report.total.sent == len(frames)


async def test_unanswered_frames_are_reported_and_fail_the_run(tmp_path: Path) -> None:
    """A listener that reads but never answers: every ack is missing, after the idle timeout."""
    received = bytearray()
    replayed = asyncio.Event()
    handled = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())  # until the replay's half-close
        await replayed.wait()
        writer.close()
        await writer.wait_closed()
        handled.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    capture = tmp_path / "one.capture"
    lines = CAPTURE.read_text(encoding="utf-8").splitlines()
    capture.write_text("\n".join(x.split(" ", 1)[1] for x in lines if "QN=20240316083001001" in x) + "\n")
    async with server:
        report = await replay(read_capture(capture), "127.0.0.1", port, idle_s=0.2)
        replayed.set()
        await handled.wait()
    assert bytes(received).startswith(b"##0206QN=20240316083001001;")
    [tally] = report.per_mn.values()
    assert (tally.sent, tally.ack_requested, tally.acked, tally.unacked) == (1, 1, 0, 1)
    assert tally.unacked_qns == ["20240316083001001"] and not report.ok


def test_capture_lines_with_and_without_times(tmp_path: Path) -> None:
    capture = tmp_path / "c.capture"
    first = FIRST.read_text(encoding="ascii").rstrip("\r\n")  # the standard's example frame
    capture.write_text(f"# a comment\n\n2024-03-15 10:00:00\t{first}\r\n{first}\nnot a frame\n", encoding="utf-8")
    frames = read_capture(capture)
    assert [f.captured_at is not None for f in frames] == [True, False, False]
    assert frames[0].wire == frames[1].wire == first.encode() + b"\r\n"
    assert frames[0].packet is not None and frames[2].packet is None
    assert [f.mn for f in frames] == ["010000A8900016F000169DC0", "010000A8900016F000169DC0", "?"]
