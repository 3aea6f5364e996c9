"""fault_not_restored end to end across National Day 2026 (holidays 10-01…10-07, a make-up
working Saturday 10-10): a D episode from a simulated DAS on a real gateway, the leader's scan
run on a virtual clock (晋环规〔2024〕2号 Art. 18(3): restored within 5 working days)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.simulator.scenarios import Scenario
from hj212gw.simulator.testing import SHANGHAI
from tests.alerts.e2e import WiredDevice, alert_settings, alerts, thresholds
from tests.integration.serving import start
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

START = datetime(2026, 9, 30, 0, 0, tzinfo=SHANGHAI)  # the eve of National Day
FAULT_AT = datetime(2026, 9, 30, 2, 0, tzinfo=UTC)  # 10:00 Beijing time
DEADLINE = datetime(2026, 10, 13, 2, 0, tzinfo=UTC)  # 5 working days: 10-08, 09, 10 (Saturday), 12, 13


class ScanClock:
    """The leader's scan clock: set by the test, counting the rounds that read it."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return self.now

    async def rounds_at(self, now: datetime) -> None:
        """Move to `now` and wait until a whole round ran at it."""
        self.now = now
        target = self.calls + 2
        await until(lambda: self.calls >= target)


async def test_a_fault_before_national_day_is_not_restored_after_five_working_days_not_five_weekdays(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    running = await start(gateways, pg_dsn, schema, **alert_settings(root, thresholds_file=thresholds(tmp_path, "")))
    assert running.gateway.alerts is not None
    clock = ScanClock(datetime(2026, 9, 30, 4, 0, tzinfo=UTC))
    running.gateway.alerts.scans.clock = clock
    das = WiredDevice(st="32", start=START, uploads=frozenset({"2051"}),
                      scenarios=[Scenario("fault", flag="D", factors=("w01018",), start_s=10 * 3600)])  # fmt: skip
    await das.plug(running)
    await das.run(12 * 3600)
    await eventually(lambda: _episode_fires(conn))
    [episode] = await alerts(conn, "flag_episode")
    assert episode.starts_at == FAULT_AT
    await clock.rounds_at(datetime(2026, 10, 8, 3, 0, tzinfo=UTC))  # five weekdays would have passed
    assert await _rules(conn) == {"flag_episode", "fault_over_24h"}
    await clock.rounds_at(datetime(2026, 10, 13, 1, 59, tzinfo=UTC))
    assert await _rules(conn) == {"flag_episode", "fault_over_24h"}
    await clock.rounds_at(datetime(2026, 10, 13, 2, 0, 1, tzinfo=UTC))
    [late] = await alerts(conn, "fault_not_restored")
    assert (late.status, late.factor, late.starts_at) == ("firing", "w01018", DEADLINE)
    details = await conn.fetchval("SELECT details FROM alerts WHERE id = $1", late.id)
    assert '"calendar_known": true' in details and DEADLINE.isoformat() in details
    await das.unplug()


async def _rules(conn: asyncpg.Connection) -> set[str]:
    """The rules of the alerts firing."""
    return {a.rule for a in await alerts(conn) if a.status == "firing"}


async def _episode_fires(conn: asyncpg.Connection) -> bool:
    return "flag_episode" in await _rules(conn)
