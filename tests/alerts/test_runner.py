"""alerts/runner.py against a real PostgreSQL: committed packets judged after the fact, the alert
rows they raise and resolve, the bounded queue, and changes kept through a database outage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.alerts import runner as runner_module
from hj212gw.alerts.engine import AlertEngine
from hj212gw.alerts.runner import PacketRuleRunner
from hj212gw.monitor.hub import StoredData
from hj212gw.rules.model import AlertChange, Sample
from hj212gw.rules.packet import PacketRules
from hj212gw.rules.thresholds import Thresholds
from hj212gw.settings import AlertSettings
from hj212gw.storage.db import Database
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration

MN = "RUNNER0001"
T0 = datetime(2026, 12, 3, 8, tzinfo=UTC)


def minute(n: int, flag: str = "N", value: str = "12.5", *, suspect: bool = False) -> StoredData:
    t = T0 + timedelta(minutes=n)
    fields = {"DataTime": t.strftime("%Y%m%d%H%M%S"), "a21026-Avg": value, "a21026-Flag": flag}
    return StoredData(MN, "2051", t, t + timedelta(seconds=5), False, suspect, fields)


def runner_on(db: Database, **kwargs: object) -> PacketRuleRunner:
    engine = AlertEngine(db, "gw-a", AlertSettings())
    return PacketRuleRunner(PacketRules(Thresholds.default()), engine, **kwargs)  # type: ignore[arg-type]


async def firing(conn: asyncpg.Connection) -> list[tuple[str, str, str, str]]:
    rows = await conn.fetch("SELECT rule, factor, detail, status FROM alerts ORDER BY id")
    return [tuple(r.values()) for r in rows]


async def test_a_flagged_value_raises_an_episode_that_valid_data_resolves(db: Database, conn) -> None:
    runner = runner_on(db)
    await runner.engine.refresh()
    for n in range(3):
        runner.stored(minute(n))
    runner.stored(minute(3, "D"))
    assert await runner.judge() == 4
    assert await firing(conn) == [("flag_episode", "a21026", "D", "firing")]
    for n in range(4, 66):  # valid data for the episodes' merge gap (1 h) after the last D
        runner.stored(minute(n, "N", f"12.{n % 10}"))
    await runner.judge()
    assert await firing(conn) == [("flag_episode", "a21026", "D", "resolved")]


async def test_packets_without_fields_or_with_a_suspect_time_are_not_judged(db: Database) -> None:
    runner = runner_on(db)
    runner.stored(minute(0, "D", suspect=True))
    runner.stored(minute(1)._replace(fields=None))
    assert runner.pending == 0 and await runner.judge() == 0


async def test_beyond_max_pending_a_packet_is_not_judged_counted_and_warned_once(db: Database) -> None:
    dropped: list[int] = []
    runner = runner_on(db, max_pending=2, on_dropped=dropped.append)
    for n in range(5):
        runner.stored(minute(n))
    assert runner.pending == 2
    with capture_logs() as logs:
        assert await runner.judge() == 2
    assert dropped == [3]
    assert [entry["event"] for entry in logs] == ["rule_samples_dropped"]


class TurnsSeen(PacketRules):
    """The rules, noting how many turns another task had on the event loop before each sample."""

    def __init__(self, ticks: list[int]) -> None:
        super().__init__(Thresholds.default())
        self.ticks = ticks
        self.seen: list[int] = []

    def on_sample(self, sample: Sample) -> list[AlertChange]:
        self.seen.append(self.ticks[0])
        return super().on_sample(sample)


@pytest.mark.parametrize("slice_s", [0.0, 60.0])
async def test_the_judge_gives_the_event_loop_a_turn_once_its_time_slice_is_spent(
    db: Database, monkeypatch: pytest.MonkeyPatch, slice_s: float
) -> None:
    monkeypatch.setattr(runner_module, "SLICE_S", slice_s)
    ticks = [0]
    rules = TurnsSeen(ticks)
    runner = PacketRuleRunner(rules, AlertEngine(db, "gw-a", AlertSettings()))
    for n in range(200):
        runner.stored(minute(n, "N", f"12.{n % 10}"))

    async def tick() -> None:
        while True:
            ticks[0] += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        assert await runner.judge() == 200
    finally:
        ticker.cancel()
    assert len(rules.seen) == 200
    turns = rules.seen[-1] - rules.seen[0]
    if slice_s:  # a slice longer than the work: judged in one turn
        assert turns == 0
    else:  # every slice spent at once: a turn after every CHECK_EVERY packets
        assert turns == 200 // runner_module.CHECK_EVERY
        assert all(b - a <= 1 for a, b in zip(rules.seen, rules.seen[1:], strict=False))


@pytest.fixture
async def db_via_proxy(proxy: TcpProxy, pg_dsn: str, schema: str) -> AsyncIterator[Database]:
    database = Database(proxy.dsn_via(pg_dsn), schema=schema)
    await database.connect()
    yield database
    proxy.restore()
    await database.close()


async def test_changes_wait_through_an_outage_and_are_applied_when_it_ends(
    db_via_proxy: Database, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    runner = runner_on(db_via_proxy)
    runner.stored(minute(0, "D"))
    proxy.cut()
    with capture_logs() as logs:
        assert await runner.judge() == 1  # judged; the engine could not write
    assert [entry["event"] for entry in logs] == ["rule_changes_waiting"]
    assert await firing(conn) == []
    proxy.restore()
    runner.stored(minute(1, "D"))
    with capture_logs() as logs:
        await runner.judge()
    assert [entry["event"] for entry in logs] == ["rule_changes_applied"]
    assert await firing(conn) == [("flag_episode", "a21026", "D", "firing")]


async def test_the_rules_forget_devices_an_hour_after_they_left_and_keep_those_that_came_back(db: Database) -> None:
    now = [0.0]
    runner = runner_on(db, monotonic=lambda: now[0])
    moment = T0
    for n in range(1000):  # a thousand MNs come and go: their state must not stay for ever
        mn = f"CYCLE{n:04d}"
        runner.bound(mn, n, "peer", moment)
        runner.stored(minute(0)._replace(mn=mn))
        runner.released(mn, n, "peer_closed", moment)
    runner.bound(MN, 1, "peer", moment)
    runner.stored(minute(0))
    runner.released(MN, 1, "moved_to_connection", moment)  # still here, on a newer connection
    runner.bound("CYCLE0007", 2, "peer", moment)  # came back within the hour
    await runner.judge()
    assert runner.rules.devices == 1001
    now[0] = 3599.0
    await runner.judge()
    assert runner.rules.devices == 1001
    now[0] = 3600.0
    await runner.judge()
    assert runner.rules.devices == 2  # MN and CYCLE0007
