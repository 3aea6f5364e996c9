"""The automatic backfill through a real gateway (issue #12 item 4): a scripted DAS on a real socket
answers (or not) the history fetches the gateway sends for its gaps; rows, gaps and commands are
checked in PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.protocol.builders import build_execution_result, build_request_reply
from hj212gw.protocol.constants import ExeRtn, QnRtn
from hj212gw.protocol.cp import HistoryRequestCp
from hj212gw.protocol.models import Packet
from tests.conftest import Dial
from tests.integration.das import MN, DasClient, data_packet
from tests.integration.serving import sample, start
from tests.integration.test_gaps import DAY0, NO_TAIL, hj_time, hours, send_hours, settled
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration

QUICK = {
    "gaps": NO_TAIL,
    "backfill": {"settle_s": 0.2, "sweep_s": 1.0, "retry_initial_s": 0.3, "retry_max_s": 0.6, "max_attempts": 2},
    "commands": {"over_time_s": 1.0, "re_count": 0, "settle_s": 0.5},
}


async def fetch_request(client: DasClient, timeout_s: float = 10.0) -> Packet:
    """The next history fetch the gateway sends (its data acks are not expected here)."""
    packet = (await client.reply(timeout_s)).packet
    assert packet.cn == "2061" and isinstance(packet.data, HistoryRequestCp), packet
    return packet


async def answer(client: DasClient, request: Packet, moments: list[datetime], exe_rtn: ExeRtn) -> None:
    """9011 QnRtn=1, one hour packet per moment (each acked), then 9012 with `exe_rtn`."""
    await client.send(build_request_reply(request, QnRtn.READY))
    await send_hours(client, moments, qn=500 + moments[0].hour if moments else 500)
    await client.send(build_execution_result(request, exe_rtn))


async def commands_of(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT cn, state, purpose, params->>'BeginTime', params->>'EndTime', exe_rtn FROM commands ORDER BY id"
    )
    return [tuple(r.values()) for r in rows]


async def test_a_gap_is_fetched_after_the_device_connects_and_filled_without_duplicate_rows(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, **QUICK)
    client = await dial(running)
    await send_hours(client, hours(DAY0, 0, 1, 4))
    await settled(conn, [(DAY0 + timedelta(hours=2), DAY0 + timedelta(hours=3), 2, "open")])
    request = await fetch_request(client)
    assert isinstance(request.data, HistoryRequestCp)
    assert (request.data.begin_time, request.data.end_time) == (
        hj_time(DAY0 + timedelta(hours=2)),
        hj_time(DAY0 + timedelta(hours=3)),
    )
    await answer(client, request, hours(DAY0, 2, 3), ExeRtn.SUCCESS)
    await settled(conn, [(DAY0 + timedelta(hours=3), DAY0 + timedelta(hours=3), 0, "filled")])  # as last missing
    counts = await conn.fetch(
        "SELECT data_time, count(*) AS n, bool_or(resend) AS backfilled FROM data WHERE mn = $1"
        " GROUP BY data_time ORDER BY data_time",
        MN,
    )
    assert [r["n"] for r in counts] == [1] * 5
    assert [r["backfilled"] for r in counts] == [False, False, True, True, False]  # the answers are marked
    await eventually(lambda: _state_is(conn, "succeeded"), timeout_s=5)
    assert (await commands_of(conn))[0][:3] == ("2061", "succeeded", "backfill")
    assert sample(running, "hj212gw_backfill_filled_periods_total", cn="2061") == 2
    assert sample(running, "hj212gw_backfill_requests_total", outcome="succeeded") == 1
    assert await client.nothing_within(1.5)  # nothing more to ask


async def _state_is(conn: asyncpg.Connection, state: str) -> bool:
    return await conn.fetchval("SELECT state FROM commands ORDER BY id LIMIT 1") == state


async def test_a_device_answering_no_data_has_its_gap_given_up(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, **QUICK)
    client = await dial(running)
    await send_hours(client, hours(DAY0, 0, 3))
    await settled(conn, [(DAY0 + timedelta(hours=1), DAY0 + timedelta(hours=2), 2, "open")])
    await answer(client, await fetch_request(client), [], ExeRtn.NO_DATA)
    await settled(conn, [(DAY0 + timedelta(hours=1), DAY0 + timedelta(hours=2), 2, "given_up")])
    assert await conn.fetchval("SELECT reason FROM gaps") == "no_data"
    assert sample(running, "hj212gw_backfill_requests_total", outcome="no_data") == 1
    assert await client.nothing_within(1.5)


async def test_a_device_that_never_answers_is_asked_again_then_given_up(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, **QUICK)
    client = await dial(running)
    await send_hours(client, hours(DAY0, 0, 2))
    await settled(conn, [(DAY0 + timedelta(hours=1), DAY0 + timedelta(hours=1), 1, "open")])
    first = await fetch_request(client)
    second = await fetch_request(client, timeout_s=10)  # after OverTime and the retry delay
    assert first.qn != second.qn
    await settled(conn, [(DAY0 + timedelta(hours=1), DAY0 + timedelta(hours=1), 1, "given_up")])
    assert await conn.fetchval("SELECT reason FROM gaps") == "no_answer"
    assert [c[1] for c in await commands_of(conn)] == ["timed_out", "timed_out"]
    assert await conn.fetchval("SELECT requests FROM gaps") == 2


async def test_an_answer_covering_half_the_gap_leaves_the_rest_open_and_asks_for_it_again(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, **QUICK)
    client = await dial(running)
    await send_hours(client, hours(DAY0, 0, 5))
    await settled(conn, [(DAY0 + timedelta(hours=1), DAY0 + timedelta(hours=4), 4, "open")])
    await answer(client, await fetch_request(client), hours(DAY0, 1, 2), ExeRtn.SUCCESS)
    await settled(conn, [(DAY0 + timedelta(hours=3), DAY0 + timedelta(hours=4), 2, "requested")])
    again = await fetch_request(client)  # the next pass asks for what is still missing only
    assert isinstance(again.data, HistoryRequestCp)
    assert again.data.begin_time == hj_time(DAY0 + timedelta(hours=3))
    await answer(client, again, hours(DAY0, 3, 4), ExeRtn.SUCCESS)
    await settled(conn, [(DAY0 + timedelta(hours=4), DAY0 + timedelta(hours=4), 0, "filled")])
    assert sample(running, "hj212gw_backfill_filled_periods_total", cn="2061") == 4


@pytest.mark.slow
async def test_many_devices_reconnecting_at_once_are_asked_within_the_rate(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    rate, burst, devices = 40.0, 5, 120
    settings = {**QUICK, "backfill": {**QUICK["backfill"], "rate_per_s": rate, "burst": burst, "settle_s": 0.0}}
    running = await start(gateways, pg_dsn, schema, **settings)
    assert running.gateway.port is not None
    mns = [f"{MN[:-6]}{n:06d}" for n in range(devices)]
    clients = [await DasClient.connect(running.gateway.port) for _ in mns]

    async def device(client: DasClient, mn: str) -> None:
        for qn, moment in enumerate(hours(DAY0, 0, 2)):
            await client.send(data_packet(f"2024031510{qn:07d}", mn=mn, cn="2061", data_time=hj_time(moment)))
            assert (await client.reply(timeout_s=30)).packet.cn == "9014"
        request = (await client.reply(timeout_s=60)).packet
        await client.send(build_request_reply(request, QnRtn.READY))
        await client.send(build_execution_result(request, ExeRtn.NO_DATA))

    try:
        await asyncio.gather(*(device(c, mn) for c, mn in zip(clients, mns, strict=True)))
    finally:
        for client in clients:
            await client.close()
    created = [r["created_at"] for r in await conn.fetch("SELECT created_at FROM commands ORDER BY created_at")]
    assert await conn.fetchval("SELECT count(DISTINCT mn) FROM commands") == devices  # (a slow 9011 is asked again)
    for n in range(len(created)):  # any window of requests: at most burst + rate x its length (+1 for rounding)
        for m in range(n + burst + 1, len(created), 25):
            span = (created[m] - created[n]).total_seconds()
            assert m - n + 1 <= burst + rate * span + 1


async def test_a_backfilled_value_that_differs_from_the_live_one_keeps_both(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, **QUICK)
    client = await dial(running)
    await send_hours(client, hours(DAY0, 0, 1, 3))  # w01018-Avg=40.1 each
    await settled(conn, [(DAY0 + timedelta(hours=2), DAY0 + timedelta(hours=2), 1, "open")])
    request = await fetch_request(client)
    await client.send(build_request_reply(request, QnRtn.READY))
    for qn, (hour, value) in enumerate(((1, "44.4"), (2, "41.0"))):  # the device also resends hour 1, changed
        moment = DAY0 + timedelta(hours=hour)
        packet = data_packet(f"2024031511{qn:07d}", cn="2061", data_time=hj_time(moment), values={"w01018": value})
        await client.send(packet)
        assert (await client.reply()).packet.cn == "9014"
    await client.send(build_execution_result(request, ExeRtn.SUCCESS))
    await settled(conn, [(DAY0 + timedelta(hours=2), DAY0 + timedelta(hours=2), 0, "filled")])
    hour_1 = DAY0 + timedelta(hours=1)
    row = await conn.fetchrow("SELECT avg, resend, revisions FROM data WHERE mn = $1 AND data_time = $2", MN, hour_1)
    kept = await conn.fetch("SELECT avg FROM data_versions WHERE mn = $1 AND data_time = $2", MN, hour_1)
    assert {row["avg"], *(k["avg"] for k in kept)} == {40.1, 44.4}  # both values, whichever the precedence keeps
    assert row["revisions"] == 1


def _next_hour(moment: datetime) -> datetime:
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(hours=1)


async def test_a_gap_straddling_the_horizon_is_asked_for_only_inside_it(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    settings = {**QUICK, "gaps": {**NO_TAIL, "horizon_days": 1.0}}
    running = await start(gateways, pg_dsn, schema, **settings)
    client = await dial(running)
    last = datetime.now(DAY0.tzinfo).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    before = datetime.now(DAY0.tzinfo) - timedelta(days=1)
    await send_hours(client, [last - timedelta(hours=40), last])
    request = await fetch_request(client)
    after = datetime.now(DAY0.tzinfo) - timedelta(days=1)
    assert isinstance(request.data, HistoryRequestCp)
    assert request.data.begin_time in {hj_time(_next_hour(before)), hj_time(_next_hour(after))}
    assert request.data.end_time == hj_time(last - timedelta(hours=1))
