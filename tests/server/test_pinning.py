"""server/pinning.py: every MN waiting for a pin goes into one statement, a refused row fails alone, two
replicas racing agree on one PW, an outage fails a pin after its timeout.

Real PostgreSQL (the gateway's own tests go through sockets: tests/hostile/test_auth.py). Rows
written by one statement share its transaction id, so `xmin` counts the statements that pinned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.metrics import Metrics
from hj212gw.server.pinning import PinFailed, Pinner
from hj212gw.server.registry import DeviceRegistry
from hj212gw.storage.db import Database
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration

BAD_PW = "bad\x00pw"  # PostgreSQL text cannot hold a NUL: the row is refused (SQLSTATE 22021)


@pytest.fixture
async def second_db(pg_dsn: str, schema: str, db: Database) -> AsyncIterator[Database]:
    """Another pool on the same schema: a second replica's."""
    database = Database(pg_dsn, schema=schema, min_size=1, max_size=4)
    await database.connect()
    yield database
    await database.close()


def new_pinner(db: Database) -> Pinner:
    return Pinner(db, DeviceRegistry(), Metrics())


@pytest.fixture
async def behind_proxy(pg_dsn: str, schema: str, db: Database, proxy: TcpProxy) -> AsyncIterator[Pinner]:
    """A Pinner whose pool reaches PostgreSQL through `proxy` (outages)."""
    via_proxy = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=2, connect_timeout_s=1.0)
    await via_proxy.connect()
    pinner = new_pinner(via_proxy)
    yield pinner
    proxy.restore()
    await pinner.stop()
    await via_proxy.close()


def sample(pinner: Pinner, name: str, **labels: str) -> float:
    return pinner.metrics.registry.get_sample_value(name, labels) or 0.0


async def settled(futures: Sequence[asyncio.Future[None]]) -> list[BaseException | None]:
    await asyncio.wait(futures, timeout=30)
    return [f.exception() for f in futures]


async def statements_that_pinned(conn: asyncpg.Connection, mns: Sequence[str]) -> int:
    return await conn.fetchval("SELECT count(DISTINCT xmin::text) FROM devices WHERE mn = ANY($1)", mns)  # type: ignore[no-any-return]


async def test_a_fleet_of_new_mns_is_pinned_in_a_few_statements(db: Database, conn: asyncpg.Connection) -> None:
    pinner = new_pinner(db)
    futures = []
    for wave in range(10):  # the first two start at once, the rest arrive while those are in flight
        futures += [pinner.pin(f"MN{wave:02d}{n:03d}", f"pw{wave}-{n}") for n in range(100)]
        await asyncio.sleep(0)
    assert await settled(futures) == [None] * 1000
    mns = [f"MN{wave:02d}{n:03d}" for wave in range(10) for n in range(100)]
    assert await statements_that_pinned(conn, mns) == 3
    assert sample(pinner, "hj212gw_device_pin_batch_mns_count") == 3
    assert sample(pinner, "hj212gw_device_pin_batch_mns_sum") == 1000
    assert sample(pinner, "hj212gw_device_pins_total", outcome="pinned") == 1000
    assert pinner.registry.admit("MN09042", "pw9-42").action == "store"
    assert pinner.registry.admit("MN09042", "pw9-43").reason == "wrong_pw"
    assert await conn.fetchval("SELECT count(*) FROM devices WHERE pw_source = 'first_use'") == 1000
    await pinner.stop()


async def test_connections_presenting_one_mn_share_its_pin_and_the_first_pw_is_offered(
    db: Database, conn: asyncpg.Connection
) -> None:
    pinner = new_pinner(db)
    first, second = pinner.pin("SHARED", "111111"), pinner.pin("SHARED", "222222")
    assert first is second
    await first
    assert await conn.fetchval("SELECT pw FROM devices WHERE mn = 'SHARED'") == "111111"
    await pinner.stop()


async def test_a_refused_row_fails_alone_while_the_others_are_pinned(db: Database, conn: asyncpg.Connection) -> None:
    await conn.execute("ALTER TABLE devices ADD CONSTRAINT refuse_odd_mn CHECK (mn <> 'ODD')")
    pinner = new_pinner(db)
    pws = {f"GOOD{n:02d}": f"pw{n}" for n in range(62)} | {"NUL": BAD_PW, "ODD": "123456"}
    with capture_logs() as logs:
        futures = {mn: pinner.pin(mn, pw) for mn, pw in pws.items()}
        outcomes = dict(zip(futures, await settled(list(futures.values())), strict=True))
    assert {mn for mn, err in outcomes.items() if err is not None} == {"NUL", "ODD"}
    assert all(isinstance(outcomes[mn], PinFailed) for mn in ("NUL", "ODD"))
    stored = dict(await conn.fetch("SELECT mn, pw FROM devices"))
    assert stored == {mn: pw for mn, pw in pws.items() if mn.startswith("GOOD")}
    assert sample(pinner, "hj212gw_device_pins_total", outcome="pinned") == 62
    assert sample(pinner, "hj212gw_device_pins_total", outcome="failed") == 2
    # Halving 64 MNs down to two single ones: 2 × 6 statements plus the first, not one per MN.
    assert sample(pinner, "hj212gw_device_pin_batch_mns_count") <= 13
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert sorted((e["event"], e["mn"], e["sqlstate"]) for e in warnings) == [
        ("pin_failed", "NUL", "22021"),
        ("pin_failed", "ODD", "23514"),
    ]
    assert "bad\\x00pw" not in repr(logs) and BAD_PW not in repr(logs)
    await pinner.stop()


async def test_two_replicas_racing_for_the_same_mns_agree_on_one_pw_each(
    db: Database, second_db: Database, conn: asyncpg.Connection
) -> None:
    replicas = [new_pinner(db), new_pinner(second_db)]
    mns = [f"RACE{n:03d}" for n in range(200)]
    # Opposite orders: the statements would lock the rows in opposite orders unless sorted.
    futures = [replicas[0].pin(mn, f"a{mn}") for mn in mns] + [replicas[1].pin(mn, f"b{mn}") for mn in reversed(mns)]
    assert await settled(futures) == [None] * 400
    stored = dict(await conn.fetch("SELECT mn, pw FROM devices"))
    assert len(stored) == 200
    for mn, pw in stored.items():
        loser = f"b{mn}" if pw == f"a{mn}" else f"a{mn}"
        for replica in replicas:
            assert replica.registry.admit(mn, pw).action == "store"
            assert replica.registry.admit(mn, loser).reason == "wrong_pw"
    for outcome in ("pinned", "already_set"):
        assert sum(sample(r, "hj212gw_device_pins_total", outcome=outcome) for r in replicas) == 200
    for replica in replicas:
        await replica.stop()


async def test_a_pw_set_before_wins_over_the_one_presented(db: Database, conn: asyncpg.Connection) -> None:
    await conn.execute("INSERT INTO devices (mn, pw, pw_source) VALUES ('SET', '424242', 'operator')")
    await conn.execute("INSERT INTO devices (mn) VALUES ('SEEN')")  # registered earlier, no PW yet
    pinner = new_pinner(db)
    assert await settled([pinner.pin("SET", "999999"), pinner.pin("SEEN", "777777")]) == [None, None]
    assert pinner.registry.admit("SET", "424242").action == "store"
    assert pinner.registry.admit("SET", "999999").reason == "wrong_pw"
    assert await conn.fetchval("SELECT pw FROM devices WHERE mn = 'SEEN'") == "777777"
    assert sample(pinner, "hj212gw_device_pins_total", outcome="already_set") == 1
    assert sample(pinner, "hj212gw_device_pins_total", outcome="pinned") == 1
    await pinner.stop()


async def test_during_an_outage_pins_fail_after_their_timeout_and_succeed_once_it_ends(
    behind_proxy: Pinner, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    pinner = behind_proxy
    pinner.timeout_s = 0.6
    proxy.cut()
    began = time.monotonic()
    with capture_logs():
        early = [pinner.pin(f"OUT{n}", "123456") for n in range(3)]
        await asyncio.sleep(0.3)
        late = pinner.pin("LATE", "123456")  # queued while the first batch waits to retry
        errors = await settled([*early, late])
    assert all(isinstance(err, PinFailed) for err in errors)
    assert 0.6 <= time.monotonic() - began < 5
    assert sample(pinner, "hj212gw_device_pins_total", outcome="failed") == 4
    proxy.restore()
    pinner.timeout_s = 10
    assert await settled([pinner.pin(f"OUT{n}", "123456") for n in range(3)]) == [None] * 3
    assert await conn.fetchval("SELECT count(*) FROM devices") == 3


async def test_an_mn_presented_during_an_outage_joins_the_retry_and_pins_when_it_ends(
    behind_proxy: Pinner, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    proxy.cut()
    with capture_logs():
        futures = [behind_proxy.pin(f"WAIT{n}", "123456") for n in range(2)]
        await asyncio.sleep(0.1)
        futures += [behind_proxy.pin(f"JOIN{n}", "123456") for n in range(20)]
        await asyncio.sleep(0.5)
    proxy.restore()
    assert await settled(futures) == [None] * 22
    assert await conn.fetchval("SELECT count(*) FROM devices WHERE pw = '123456'") == 22
