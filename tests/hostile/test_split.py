"""Split packets are stored before they are acked (issue #9, item 7 and the split part of item 4).

A transfer of parts that do not stand alone (a factor group cut mid-way) must reach `data`
however its parts arrive: on two connections, across a gateway restart, after a `kill -9` right
after the acks, on two replicas at once. Parts of different transfers are never joined, expired
transfers are reported once, and a flood of parts on one connection stays within a byte bound.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.cli.serve import Running
from hj212gw.protocol.framing import encode_frame
from tests.integration.child import GatewayChild
from tests.integration.das import MN, PW, DasClient
from tests.integration.serving import start
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration

CP = (
    "DataTime=20240315100000;w00000-Cou=10.5,w00000-Avg=17.5,w00000-Flag=N;"
    "w01018-Cou=0.421,w01018-Avg=40.1,w01018-Flag=N;w21003-Avg=7.25,w21003-Flag=N"
)
CUTS = (38, 95)  # mid-value: parts 2 and 3 do not parse alone, part 1 does, with w00000-Cou=10 (of 10.5)


def parts(qn: str, cp: str = CP, cuts: tuple[int, ...] = CUTS, mn: str = MN) -> list[bytes]:
    """The framed parts of one split transfer (Flag=7: each part wants its 9014), one QN for all."""
    bounds = [0, *cuts, len(cp)]
    texts = [cp[a:b] for a, b in itertools.pairwise(bounds)]
    return [
        encode_frame(f"QN={qn};ST=32;CN=2051;PW={PW};MN={mn};Flag=7;PNUM={len(texts)};PNO={n};CP=&&{t}&&".encode())
        for n, t in enumerate(texts, 1)
    ]


async def send_acked(running: Running | int, *frames: bytes) -> None:
    """Send frames on a new connection, wait for one 9014 each, close."""
    port = running if isinstance(running, int) else running.gateway.port
    assert port is not None
    das = await DasClient.connect(port)
    for wire in frames:
        await das.send(wire)
        assert (await das.reply()).packet.cn == "9014"
    await das.close()


async def values(conn: asyncpg.Connection, data_time: str = "2024-03-15 02:00:00+00") -> dict[str, float | None]:
    rows = await conn.fetch("SELECT factor, avg FROM data WHERE mn = $1 AND data_time = $2", MN, _ts(data_time))
    return {r["factor"]: r["avg"] for r in rows}


def sample(running: Running, name: str, **labels: str) -> float:
    return running.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


WHOLE = {"w00000": 17.5, "w01018": 40.1, "w21003": 7.25}


async def stored_whole(conn: asyncpg.Connection) -> None:
    async def whole() -> bool:
        return await values(conn) == WHOLE

    await eventually(whole, timeout_s=10)


async def test_a_transfer_whose_parts_arrive_on_two_connections_is_stored(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema)
    one, two, three = parts("20240315101000777")
    await send_acked(running, one, two)  # the DAS loses its connection after two acked parts
    await send_acked(running, three)  # and sends the last one on a new connection
    await stored_whole(conn)
    assert await conn.fetchval("SELECT count(*) FROM split_parts WHERE assembled_at IS NULL") == 0
    # The cut first part was stored at once as it parsed (Cou=10); the assembled value replaced it.
    assert await conn.fetchval("SELECT cou FROM data WHERE mn = $1 AND factor = 'w00000'", MN) == 10.5


async def test_a_transfer_across_a_gateway_restart_and_a_replica_change_is_stored(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    first = await start(gateways, pg_dsn, schema, gateway_id="replica-a")
    one, two, three = parts("20240315101000777")
    await send_acked(first, two)
    await first.stop()
    gateways.remove(first)
    second = await start(gateways, pg_dsn, schema, gateway_id="replica-b")
    await send_acked(second, three)
    third = await start(gateways, pg_dsn, schema, gateway_id="replica-c")
    await send_acked(third, one)
    await stored_whole(conn)


async def test_every_acked_part_is_durable_when_the_gateway_is_killed_right_after_the_acks(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    child = GatewayChild(pg_dsn, schema, tmp_path / "gateway.log")
    await child.start()
    try:
        await send_acked(child.port, *parts("20240315101000777"))
    finally:
        child.kill()
    # Each acked part is in PostgreSQL: as a stored part, or already assembled into data.
    stored = await conn.fetchval("SELECT count(*) FROM split_parts")
    assert stored == 3 or await values(conn) == WHOLE
    await start(gateways, pg_dsn, schema)  # a later gateway finishes what the dead one left
    await stored_whole(conn)


async def test_two_replicas_finishing_the_same_transfer_store_it_once(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    a = await start(gateways, pg_dsn, schema, gateway_id="replica-a")
    b = await start(gateways, pg_dsn, schema, gateway_id="replica-b")
    for running in (a, b):  # no background sweep: the two finish the transfer at the same moment
        running.gateway.splits.stored = lambda key: None  # type: ignore[method-assign]
        running.gateway.splits.recheck_s = 3600
    await send_acked(a, *parts("20240315101000777"))
    key = (MN, "2051", "20240315101000777", 3)
    now = datetime.now(UTC)
    done = await asyncio.gather(a.gateway.splits.finish(key, now), b.gateway.splits.finish(key, now))
    assert sorted(done) == [False, True]
    assert await values(conn) == WHOLE
    assert (
        sample(a, "hj212gw_split_transfers_total", outcome="assembled")
        + sample(b, "hj212gw_split_transfers_total", outcome="assembled")
        == 1
    )


async def test_two_transfers_of_one_device_with_different_qns_are_never_joined(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema)
    other_cp = CP.replace("20240315100000", "20240315100100").replace("40.1", "99.9")
    a1, a2, a3 = parts("20240315101000777")
    b1, b2, b3 = parts("20240315101100888", cp=other_cp)
    await send_acked(running, a1, b2, b3, a2)  # interleaved; neither is complete yet
    await asyncio.sleep(1.5)  # a sweep or more
    assert await values(conn, "2024-03-15 02:01:00+00") == {}  # B's cut part 1 never arrived
    assert "w21003" not in await values(conn)  # A lacks part 3: nothing of B was joined to it
    await send_acked(running, b1, a3)
    await stored_whole(conn)

    async def b_whole() -> bool:
        return await values(conn, "2024-03-15 02:01:00+00") == {**WHOLE, "w01018": 99.9}

    await eventually(b_whole)


async def test_an_expired_incomplete_transfer_is_reported_once_across_replicas(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    settings = {"protocol": {"split_timeout_s": 1.0}}
    a = await start(gateways, pg_dsn, schema, gateway_id="replica-a", **settings)
    b = await start(gateways, pg_dsn, schema, gateway_id="replica-b", **settings)
    _, two, _ = parts("20240315101000777")
    with capture_logs() as logs:
        await send_acked(a, two)

        async def gone() -> bool:
            return await conn.fetchval("SELECT count(*) FROM split_parts") == 0

        await eventually(gone, timeout_s=15)
        await asyncio.sleep(2.5)  # more sweeps of both replicas
    reports = [e for e in logs if e["event"] == "split_parts_missing"]
    assert len(reports) == 1 and reports[0]["log_level"] == "warning"
    assert reports[0]["missing"] == [1, 3] and reports[0]["qn"] == "20240315101000777"
    assert sum(sample(r, "hj212gw_split_parts_missing_total") for r in (a, b)) == 2
    assert sum(sample(r, "hj212gw_split_transfers_total", outcome="expired") for r in (a, b)) == 1


async def test_3000_parts_on_one_connection_stay_within_a_byte_bound(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    budget = 65536
    running = await start(
        gateways,
        pg_dsn,
        schema,
        protocol={"max_split_bytes": budget},
        connections={"max_consecutive_rejects": 100_000},
    )
    assert running.gateway.port is not None
    das = await DasClient.connect(running.gateway.port)
    filler = "9" * 1000
    for n in range(3000):  # PNO 2 of 3,000 transfers: never complete, about 1 KB each
        qn = f"20240315{n:09d}"
        await das.send(
            encode_frame(f"QN={qn};ST=32;CN=2051;PW={PW};MN={MN};Flag=6;PNUM=2;PNO=2;CP=&&{filler}&&".encode())
        )

    async def all_read() -> bool:
        rejected = sample(running, "hj212gw_frames_rejected_total", reason="split_budget_exceeded")
        return rejected + await conn.fetchval("SELECT count(*) FROM split_parts") == 3000

    with capture_logs():
        await eventually(all_read, timeout_s=30)
    [connection] = running.gateway.connections
    assert connection.session.split_bytes <= budget
    parked = await conn.fetchval("SELECT coalesce(sum(length(segment)), 0) FROM split_parts")
    assert 0 < parked <= budget + 2048  # bytes in PostgreSQL waiting for assembly, per connection
    await das.close()
