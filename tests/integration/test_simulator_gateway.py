"""The simulated DAS fleet against the real gateway: what the simulator saw acked is what PostgreSQL holds.

Each test starts the gateway in-process on port 0 with a fresh schema, runs a few hundred
simulated data loggers (2017, 2025 and 2005) on a virtual clock against it, and compares the
packets the simulator counted as acknowledged with the rows in `data`, factor by factor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from hj212gw.protocol.constants import ProtocolVersion
from hj212gw.protocol.models import parse_hj_time
from hj212gw.simulator.cli import run_simulation
from hj212gw.simulator.config import SimConfig, device_specs
from hj212gw.simulator.delivery import Outgoing
from hj212gw.simulator.scenarios import Scenario
from hj212gw.simulator.stats import Summary
from tests.integration.das import settings_for
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
PERIOD_CNS = ("2051", "2061", "2031")
# Yesterday 00:00 device time: a few simulated hours stay in the past (no time_suspect rows).
START = (datetime.now(SHANGHAI) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)

Key = tuple[str, str, datetime, str]  # (mn, cn, data_time, factor)


@pytest.fixture
async def gateway(pg_dsn: str, schema: str) -> AsyncIterator[Running]:
    running = await serve.start(settings_for(pg_dsn, schema))
    yield running
    await running.stop()


def _config(gateway: Running, **kw: object) -> SimConfig:
    fields: dict[str, object] = {
        "target": f"127.0.0.1:{gateway.gateway.port}", "start": START.isoformat(), "seed": 7,
        "versions": {"2017": 0.6, "2025": 0.3, "2005": 0.1}, "uploads": PERIOD_CNS, "heartbeat_s": 0.3,
        "drain_s": 120.0, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "episode_rate": 0.05,
    }  # fmt: skip
    fields.update(kw)
    return SimConfig(**fields)  # type: ignore[arg-type]


async def _simulate(config: SimConfig) -> tuple[Summary, set[Key], set[Key], set[Key]]:
    """Run the fleet; the (mn, cn, data_time, factor) of every period value it saw acknowledged,
    of those acknowledged after a re-upload from the unacked store (RF=1 on 2025), and of those
    never sent live (generated while the link was down)."""
    acked: set[Key] = set()
    reuploaded: set[Key] = set()
    only_reuploaded: set[Key] = set()

    def on_ack(mn: str, item: Outgoing) -> None:
        if item.cn not in PERIOD_CNS:
            return
        data_time = parse_hj_time(item.data_time or "")
        assert data_time is not None
        when = data_time.replace(tzinfo=SHANGHAI)
        for field in item.cp.split(";")[1:]:  # DataTime first, then one item per factor
            key = (mn, item.cn, when, field.split("-", 1)[0])
            acked.add(key)
            if item.backfill:
                reuploaded.add(key)
            if not item.sent_live:
                only_reuploaded.add(key)

    summary = await run_simulation(config, on_ack=on_ack)
    return summary, acked, reuploaded, only_reuploaded


async def _stored(conn: asyncpg.Connection) -> tuple[set[Key], int]:
    rows = await conn.fetch("SELECT mn, cn, data_time, factor FROM data WHERE cn = ANY($1::text[])", list(PERIOD_CNS))
    return {(r["mn"], r["cn"], r["data_time"], r["factor"]) for r in rows}, len(rows)


async def _assert_acked_equals_stored(summary: Summary, acked: set[Key], conn: asyncpg.Connection) -> None:
    assert summary.unacked == 0 and summary.dropped == 0 and summary.acked > 0
    stored, row_count = await _stored(conn)
    assert acked and acked <= stored, f"acked but not stored: {sorted(acked - stored)[:5]}"
    # Nothing stored that the simulator did not see acked in the end, and no duplicate rows.
    assert stored == acked and row_count == len(stored)
    distinct = await conn.fetchval("SELECT count(DISTINCT (mn, cn, data_time, factor)) FROM data")
    assert distinct == await conn.fetchval("SELECT count(*) FROM data")


def _heartbeats_answered(summary: Summary) -> None:
    """Every 2025 heartbeat got its 9013 unless its link went down first; none left waiting at the end.

    Heartbeats are paced by network (wall-clock) time, so how many are sent depends on the machine;
    the counts are checked against each other, not against a number derived from the duration.
    A DAS waits for one heartbeat's reply before the next, so a lost link costs at most one.
    """
    assert summary.heartbeats_answered > 0
    assert summary.heartbeats_waiting == 0  # the drain waits for the replies, as for the 9014s
    assert summary.heartbeats == summary.heartbeats_answered + summary.heartbeats_lost
    assert summary.heartbeats_lost <= summary.reconnects


async def test_a_mixed_fleet_stores_everything_it_was_acked(gateway: Running, conn: asyncpg.Connection) -> None:
    config = _config(gateway, count=120, speed=1200, sim_duration_s=3 * 3600 + 60)
    summary, acked, _, _ = await _simulate(config)
    await _assert_acked_equals_stored(summary, acked, conn)

    async def every_version_seen() -> bool:  # sightings are written within about a second
        return len(await conn.fetch("SELECT DISTINCT protocol_version FROM devices")) == 3

    await eventually(every_version_seen)
    _heartbeats_answered(summary)


@pytest.mark.slow
async def test_network_cut_is_followed_by_reupload_and_nothing_is_lost(
    gateway: Running, conn: asyncpg.Connection
) -> None:
    cut = Scenario("cut", devices=0.1, start_s=3600, duration_s=3600)  # every tenth device, 01:00-02:00
    config = _config(gateway, count=300, speed=1200, sim_duration_s=4 * 3600 + 60, scenarios=(cut,))
    summary, acked, reuploaded, only_reuploaded = await _simulate(config)
    await _assert_acked_equals_stored(summary, acked, conn)
    specs = device_specs(config)
    cut_specs = [s for s in specs if cut.applies_to(s.index)]
    assert summary.reconnects >= len(cut_specs) and summary.reuploaded > 0
    _heartbeats_answered(summary)

    minutes: dict[str, set[datetime]] = defaultdict(set)
    for mn, cn, data_time, _ in acked:
        if cn == "2051":
            minutes[mn].add(data_time)
    every_period = {START + timedelta(minutes=10 * m) for m in range(4 * 6)}  # 00:00 .. 03:50
    for spec in cut_specs:
        assert every_period <= minutes[spec.mn], spec.index  # the cut hour came back

    # What reached the gateway only as a re-upload is stored resend = true on 2025 (RF=1). Which
    # periods those are depends on the machine's speed (a lagging device may send some live).
    cut_2025 = {s.mn for s in cut_specs if s.version is ProtocolVersion.HJ212_2025}
    only_reuploaded_2025 = {key for key in only_reuploaded if key[0] in cut_2025}
    stored_resent = await conn.fetch(
        "SELECT mn, cn, data_time, factor FROM data WHERE resend AND cn = ANY($1::text[])", list(PERIOD_CNS)
    )
    resent = {(r["mn"], r["cn"], r["data_time"], r["factor"]) for r in stored_resent}
    assert only_reuploaded_2025 and only_reuploaded_2025 <= resent
    # Only re-uploads are stored as resend: live data never is.
    assert resent <= reuploaded
    assert acked - reuploaded  # and live data was stored too, with resend = false
