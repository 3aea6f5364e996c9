"""The gap tracker against a real PostgreSQL: what it writes, loads, claims and scans."""

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.metrics import Metrics
from hj212gw.monitor.gaps import GapTracker
from hj212gw.monitor.hub import StoredData
from hj212gw.settings import GapSettings
from hj212gw.storage.db import Database
from hj212gw.storage.gaps import GapStore

pytestmark = pytest.mark.integration

MN = "GAPS0001"
LATER = 30 * 86400.0  # a grace that keeps tails out of tests about something else
H0 = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)  # on the hour grid (and on Shanghai's)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def hour(n: int) -> datetime:
    return H0 + timedelta(hours=n)


def data(t: datetime, cn: str = "2061", mn: str = MN, *, suspect: bool = False) -> StoredData:
    return StoredData(mn, cn, t, t, False, suspect)


def tracker(db: Database, clock: Clock, owner: str = "a", **settings: float) -> GapTracker:
    return GapTracker(GapStore(db), GapSettings(**settings), owner=owner, device_timezone="Asia/Shanghai", clock=clock)


async def gap_rows(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT id, cn, start_time, end_time, periods, status, requests, reason FROM gaps ORDER BY id"
    )
    return [tuple(r.values()) for r in rows]


async def test_a_jump_opens_a_gap_and_late_data_splits_then_fills_it_keeping_its_row(db, conn):
    clock = Clock(hour(8) + timedelta(minutes=5))  # hour 7 is not overdue yet
    gaps = tracker(db, clock)
    for n in (0, 1, 6, 7):
        gaps.stored(data(hour(n)))
    await gaps.flush()
    [(gap_id, cn, start, end, periods, status, _, _)] = await gap_rows(conn)
    assert (cn, start, end, periods, status) == ("2061", hour(2), hour(5), 4, "open")
    gaps.stored(data(hour(3)))  # resent late: splits the gap
    await gaps.flush()
    rows = await gap_rows(conn)
    assert [(r[2], r[3], r[4], r[5]) for r in rows] == [(hour(2), hour(2), 1, "open"), (hour(4), hour(5), 2, "open")]
    assert rows[0][0] == gap_id  # the older piece keeps the row
    for n in (2, 4, 5):
        gaps.stored(data(hour(n)))
    await gaps.flush()
    assert [(r[4], r[5]) for r in await gap_rows(conn)] == [(0, "filled"), (0, "filled")]
    series = await conn.fetchrow("SELECT period_s, first_time, last_time, owner FROM series")
    assert tuple(series.values()) == (3600, hour(0), hour(7), "a")


async def test_time_suspect_data_and_other_cns_are_left_out(db, conn):
    gaps = tracker(db, Clock(hour(2)))
    gaps.stored(data(hour(0)))
    gaps.stored(data(hour(5), suspect=True))
    gaps.stored(data(hour(9), cn="2011"))
    await gaps.flush()
    assert await gap_rows(conn) == []
    assert await conn.fetchval("SELECT count(*) FROM series") == 1


async def test_a_silent_series_tail_grows_after_its_grace_and_old_gaps_turn_dormant(db, conn):
    clock = Clock(hour(1) + timedelta(minutes=5))
    gaps = tracker(db, clock, horizon_days=1)
    gaps.stored(data(hour(-30)))
    gaps.stored(data(hour(-27)))  # hours -29 and -28 missing: older than the 1-day horizon
    gaps.stored(data(hour(0)))  # hours -26..-1 missing: newer parts within the horizon
    await gaps.flush()
    assert [(r[2], r[5]) for r in await gap_rows(conn)] == [(hour(-29), "dormant"), (hour(-26), "open")]
    clock.now = hour(2) + timedelta(minutes=10)  # hour 1 ended 10 minutes ago: the grace is over
    await gaps.flush()
    assert [(r[2], r[3], r[5]) for r in await gap_rows(conn)][2:] == [(hour(1), hour(1), "open")]
    clock.now = hour(5) + timedelta(minutes=11)
    await gaps.flush()
    assert (await gap_rows(conn))[2][2:6] == (hour(1), hour(4), 4, "open")  # grew in place
    clock.now = hour(2) + timedelta(days=1, minutes=1)  # hours up to -2 + ... pass the horizon
    gaps.stored(data(hour(6)))
    await gaps.flush()
    statuses = [(r[2], r[5]) for r in await gap_rows(conn)]
    assert statuses[:2] == [(hour(-29), "dormant"), (hour(-26), "dormant")]
    assert gaps.totals()[("2061", "dormant")] == (2, 2 + 26)


async def test_the_grace_delays_the_tail(db, conn):
    clock = Clock(hour(2) + timedelta(minutes=9))
    gaps = tracker(db, clock)
    gaps.stored(data(hour(0)))
    await gaps.flush()
    assert await gap_rows(conn) == []  # hour 1 ended 9 minutes ago: not missing yet
    clock.now = hour(2) + timedelta(minutes=10)
    await gaps.flush()
    assert [(r[2], r[3]) for r in await gap_rows(conn)] == [(hour(1), hour(1))]


async def test_minute_data_has_no_gaps_until_its_period_is_known_then_counts_from_the_first_packet(db, conn):
    clock = Clock(hour(1))
    gaps = tracker(db, clock)
    minute = [hour(0) + timedelta(minutes=m) for m in (0, 10, 40)]
    gaps.stored(data(minute[0], cn="2051"))
    gaps.stored(data(minute[1], cn="2051"))
    gaps.stored(data(minute[2], cn="2051"))  # steps 10 and 30: no step seen twice yet
    await gaps.flush()
    assert await gap_rows(conn) == [] and await conn.fetchval("SELECT count(*) FROM series") == 0
    gaps.stored(data(hour(0) + timedelta(minutes=50), cn="2051"))  # 10 again: the period is 10 min
    await gaps.flush()
    assert [(r[2], r[3], r[4]) for r in await gap_rows(conn)] == [
        (hour(0) + timedelta(minutes=20), hour(0) + timedelta(minutes=30), 2)
    ]
    assert await conn.fetchval("SELECT period_s FROM series WHERE cn = '2051'") == 600


async def test_state_survives_a_restart_and_the_backfill_interface_persists(db, conn):
    clock = Clock(hour(8))
    first = tracker(db, clock, grace_hour_s=LATER)
    for n in (0, 3, 6):
        first.stored(data(hour(n)))
    await first.flush()
    older, newer = first.open_gaps(MN)
    assert (older.start, older.end, older.periods, newer.start) == (hour(1), hour(2), 2, hour(4))
    assert first.mark_requested(older.id, clock.now) and first.give_up(newer.id, "exe_rtn_100")
    await first.flush()
    again = tracker(db, clock, grace_hour_s=LATER)  # a restart: the same replica loads what it owns
    await again.flush()
    assert again.gap(older.id) == older._replace(status="requested", requests=1)
    assert again.open_gaps(MN) == []
    again.stored(data(hour(1)))
    again.stored(data(hour(2)))
    await again.flush()
    rows = {r[0]: r for r in await gap_rows(conn)}
    assert rows[older.id][4:8] == (0, "filled", 1, None)
    assert rows[newer.id][4:8] == (2, "given_up", 0, "exe_rtn_100")


async def store_rows(conn: asyncpg.Connection, times: list[datetime], cn: str = "2061") -> None:
    """Data rows as the batch writer commits them (the tracker hears of them only afterwards)."""
    await conn.execute(
        """INSERT INTO data (mn, cn, data_time, factor, received_at, first_received_at)
           SELECT $1, $2, t, f, now(), now() FROM unnest($3::timestamptz[]) t, unnest('{w01018,w00000}'::text[]) f""",
        MN, cn, times,
    )  # fmt: skip


async def test_a_series_with_only_newer_data_is_written_every_series_write_s_and_at_the_last_round(db, conn):
    clock = Clock(hour(8))
    gaps = tracker(db, clock, grace_hour_s=LATER, series_write_s=3600.0)
    gaps.stored(data(hour(0)))  # a new series: written at once
    await gaps.flush()
    assert await conn.fetchval("SELECT last_time FROM series") == hour(0)
    gaps.stored(data(hour(1)))  # the next period: nothing but `last` moved
    await gaps.flush()
    assert await conn.fetchval("SELECT last_time FROM series") == hour(0)
    gaps.stored(data(hour(3)))  # a jump opens a gap: written in the next round, with `last`
    await gaps.flush()
    assert await conn.fetchval("SELECT last_time FROM series") == hour(3)
    gaps.stored(data(hour(4)))
    gaps.monotonic = lambda: float("inf")  # series_write_s passed
    await gaps.flush()
    assert await conn.fetchval("SELECT last_time FROM series") == hour(4)
    gaps.stored(data(hour(5)))
    await gaps.flush(loading=False)  # the last round, at stop
    assert await conn.fetchval("SELECT last_time FROM series") == hour(5)


async def test_a_restart_reads_back_the_periods_stored_after_the_series_row_was_written(db, conn):
    clock = Clock(hour(8))
    first = tracker(db, clock, grace_hour_s=LATER, series_write_s=3600.0)
    for n in (0, 1, 2, 3):
        first.stored(data(hour(n)))
    await first.flush()
    await store_rows(conn, [hour(n) for n in range(6)])
    for n in (4, 5):
        first.stored(data(hour(n)))  # stored and tracked, the row not written yet: then a crash
    await first.flush()
    assert await conn.fetchval("SELECT last_time FROM series") == hour(3)
    again = tracker(db, clock, grace_hour_s=LATER, series_write_s=3600.0)
    await again.flush()
    again.stored(data(hour(6)))  # the next period after what `data` holds: no gap
    await again.flush(loading=False)
    assert await gap_rows(conn) == []
    assert await conn.fetchval("SELECT last_time FROM series") == hour(6)


async def test_a_device_catching_up_in_order_moves_its_tail_gap_with_the_series_row_not_every_round(db, conn):
    clock = Clock(hour(8) + timedelta(minutes=15))  # hours 1-7 overdue
    gaps = tracker(db, clock, series_write_s=3600.0)
    gaps.stored(data(hour(0)))
    await gaps.flush()
    assert [(r[2], r[3], r[4]) for r in await gap_rows(conn)] == [(hour(1), hour(7), 7)]
    for n in (1, 2, 3):  # it answers the backfill (or replays a capture) oldest first
        gaps.stored(data(hour(n)))
    await gaps.flush()
    [gap] = gaps.open_gaps(MN)
    assert (gap.start, gap.end, gap.periods) == (hour(4), hour(7), 4)  # exact in memory at once
    assert [(r[2], r[4]) for r in await gap_rows(conn)] == [(hour(1), 7)]  # the row waits, as `last` does
    assert gaps.totals()[("2061", "open")] == (1, 4)
    gaps.monotonic = lambda: float("inf")  # series_write_s passed
    await gaps.flush()
    assert [(r[2], r[4]) for r in await gap_rows(conn)] == [(hour(4), 4)]
    assert await conn.fetchval("SELECT last_time FROM series") == hour(3)
    for n in (4, 5, 6):
        gaps.stored(data(hour(n)))
    gaps.stored(data(hour(7)))  # the last missing period: the gap is filled, written in the next round
    gaps.monotonic = lambda: 0.0
    await gaps.flush()
    assert [r[5] for r in await gap_rows(conn)] == ["filled"]
    assert gaps.open_gaps(MN) == []


async def test_a_restart_reads_back_how_far_a_device_caught_up_in_its_tail_gap(db, conn):
    clock = Clock(hour(8) + timedelta(minutes=15))
    first = tracker(db, clock, series_write_s=3600.0)
    first.stored(data(hour(0)))
    await first.flush()
    await store_rows(conn, [hour(n) for n in range(4)])
    for n in (1, 2, 3):
        first.stored(data(hour(n)))  # tracked, the rows not written yet: then a crash
    await first.flush()
    assert [(r[2], r[4]) for r in await gap_rows(conn)] == [(hour(1), 7)]
    again = tracker(db, clock, series_write_s=3600.0)
    await again.flush()
    [gap] = again.open_gaps(MN)
    assert (gap.start, gap.end, gap.periods) == (hour(4), hour(7), 4)
    await again.flush(loading=False)
    assert [(r[2], r[3], r[4], r[5]) for r in await gap_rows(conn)] == [(hour(4), hour(7), 4, "open")]


async def test_a_restart_reads_back_a_gap_the_crash_kept_from_being_written(db, conn):
    clock = Clock(hour(8))
    first = tracker(db, clock, grace_hour_s=LATER, series_write_s=3600.0)
    first.stored(data(hour(0)))
    await first.flush()
    await store_rows(conn, [hour(0), hour(1), hour(4)])  # committed; the crash came before the round
    again = tracker(db, clock, grace_hour_s=LATER)
    await again.flush()
    [gap] = again.open_gaps(MN)
    assert (gap.start, gap.end, gap.periods) == (hour(2), hour(3), 2)
    assert [(r[2], r[3], r[5]) for r in await gap_rows(conn)] == [(hour(2), hour(3), "open")]


async def test_a_device_claimed_by_another_replica_is_written_no_more_here(db, conn):
    clock = Clock(hour(8))
    a, b = tracker(db, clock, owner="a", grace_hour_s=LATER), tracker(db, clock, owner="b", grace_hour_s=LATER)
    a.stored(data(hour(0)))
    a.stored(data(hour(2)))
    await a.flush()
    b.bound(MN, 1, "peer", clock.now)  # the device reconnected to replica b
    await b.flush()
    assert len(b.open_gaps(MN)) == 1
    b.stored(data(hour(1)))
    await b.flush()
    a.stored(data(hour(5)))  # a stale arrival on a: refused by the owner check, and a forgets MN
    await a.flush()
    assert await conn.fetchval("SELECT owner FROM series") == "b"
    assert await conn.fetchval("SELECT last_time FROM series") == hour(2)
    assert [(r[4], r[5]) for r in await gap_rows(conn)] == [(0, "filled")]
    assert a.series == {}


async def test_arrivals_before_a_device_is_loaded_wait_for_it(db, conn):
    clock = Clock(hour(8))
    first = tracker(db, clock, grace_hour_s=LATER)
    first.stored(data(hour(0)))
    await first.flush()
    other = tracker(db, clock, owner="b", grace_hour_s=LATER)
    other.stored(data(hour(3)))  # MN not loaded on b yet: waits, then goes on the loaded grid
    await other.flush()
    assert [(r[2], r[3], r[5]) for r in await gap_rows(conn)] == [(hour(1), hour(2), "open")]


async def test_a_recheck_puts_what_data_holds_onto_the_gap(db, conn):
    clock = Clock(hour(8))
    gaps = tracker(db, clock, grace_hour_s=LATER)
    gaps.stored(data(hour(0)))
    gaps.stored(data(hour(4)))
    await gaps.flush()
    [gap] = gaps.open_gaps(MN)
    await conn.execute(
        """INSERT INTO data (mn, cn, data_time, factor, received_at, first_received_at)
           SELECT $1, '2061', t, 'w01018', now(), now() FROM unnest($2::timestamptz[]) t""",
        MN, [hour(1), hour(2)],
    )  # fmt: skip
    after = await gaps.recheck(gap.id)
    assert after is not None and (after.start, after.end, after.periods) == (hour(3), hour(3), 1)


async def test_metrics_count_unfilled_gaps_and_missing_periods_by_cn_and_status(db):
    clock = Clock(hour(8))
    gaps = tracker(db, clock, grace_hour_s=LATER)
    metrics = Metrics()
    metrics.watch_gaps(gaps)
    for n in (0, 2, 6):
        gaps.stored(data(hour(n)))
    await gaps.flush()
    [older, _] = gaps.open_gaps(MN)
    gaps.mark_requested(older.id, clock.now)

    def sample(name: str, status: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"cn": "2061", "status": status})

    assert (sample("hj212gw_gaps", "open"), sample("hj212gw_gap_missing_periods", "open")) == (1, 3)
    assert (sample("hj212gw_gaps", "requested"), sample("hj212gw_gap_missing_periods", "requested")) == (1, 1)


async def test_a_piece_split_off_a_gap_that_turns_dormant_is_judged_by_its_own_end(db, conn):
    clock = Clock(hour(1))
    gaps = tracker(db, clock, horizon_days=1)
    gaps.stored(data(hour(0)))
    gaps.stored(data(hour(-72)))  # a replayed old hour: the gap reaches from 3 days ago to now
    await gaps.flush()
    gaps.stored(data(hour(-70)))  # splits it: the older piece is wholly past the horizon, the newer is not
    clock.now = hour(2) + timedelta(minutes=11)  # hour 1 falls due: this flush's scan visits the series
    await gaps.flush()
    assert [(r[2], r[3], r[5]) for r in await gap_rows(conn)] == [
        (hour(-71), hour(-71), "dormant"),
        (hour(-69), hour(-1), "open"),
        (hour(1), hour(1), "open"),
    ]


async def test_a_minute_period_the_registry_fixes_counts_from_the_first_packet(db, conn):
    gaps = GapTracker(
        GapStore(db), GapSettings(grace_minute_s=LATER), owner="a", device_timezone="Asia/Shanghai",
        clock=Clock(hour(1)), fixed_periods=lambda: {MN: {"2051": timedelta(minutes=5)}},
    )  # fmt: skip
    gaps.stored(data(hour(0), cn="2051"))
    gaps.stored(data(hour(0) + timedelta(minutes=20), cn="2051"))  # no step repeated: not learnable yet
    await gaps.flush()
    assert [(r[2], r[3], r[4]) for r in await gap_rows(conn)] == [
        (hour(0) + timedelta(minutes=5), hour(0) + timedelta(minutes=15), 3)
    ]
    assert await conn.fetchval("SELECT period_s FROM series") == 300


async def test_the_scan_in_slices_reaches_every_series(db, conn, monkeypatch):
    monkeypatch.setattr("hj212gw.monitor.gaps.SCAN_SLICE", 2)
    clock = Clock(hour(1))
    gaps = tracker(db, clock)
    for n in range(5):
        gaps.stored(data(hour(0), mn=f"SLICE{n}"))
    await gaps.flush()
    clock.now = hour(3)  # hours 1 (and not yet 2) of every series fall due
    await gaps.flush()
    assert await conn.fetchval("SELECT count(*) FROM gaps WHERE start_time = $1 AND end_time = $1", hour(1)) == 5


async def test_a_device_back_from_another_replica_is_loaded_again_from_what_that_one_wrote(db, conn):
    clock = Clock(hour(8))
    a, b = tracker(db, clock, owner="a", grace_hour_s=LATER), tracker(db, clock, owner="b", grace_hour_s=LATER)
    a.bound(MN, 1, "peer", clock.now)
    a.stored(data(hour(0)))
    a.stored(data(hour(2)))
    await a.flush()
    a.released(MN, 1, "connection_closed", clock.now)
    b.bound(MN, 2, "peer", clock.now)  # the device went to replica b, which filled the gap
    b.stored(data(hour(1)))
    await b.flush()
    b.released(MN, 2, "connection_closed", clock.now)
    a.bound(MN, 3, "peer", clock.now)  # and came back to a, which must not keep its old gap
    a.stored(data(hour(4)))
    await a.flush()
    assert [(r[2], r[4], r[5]) for r in await gap_rows(conn)] == [(hour(1), 0, "filled"), (hour(3), 1, "open")]
    assert [(g.start, g.status) for g in a.open_gaps(MN)] == [(hour(3), "open")]
    assert await conn.fetchval("SELECT owner FROM series") == "a"


async def test_arrivals_beyond_the_waiting_bound_are_dropped_with_one_warning(db, conn, monkeypatch):
    monkeypatch.setattr("hj212gw.monitor.gaps.MAX_PENDING", 2)
    gaps = tracker(db, Clock(hour(8)), grace_hour_s=LATER)
    for n in (0, 3, 5, 6):  # the device is not loaded yet: two wait, two are dropped
        gaps.stored(data(hour(n)))
    with capture_logs() as logs:
        await gaps.flush()
    assert [(e["event"], e["count"]) for e in logs if e["log_level"] == "warning"] == [("gaps_arrivals_dropped", 2)]
    assert [(r[2], r[3]) for r in await gap_rows(conn)] == [(hour(1), hour(2))]


async def test_a_device_bound_before_the_restart_load_is_loaded_once(db, conn):
    clock = Clock(hour(8))
    first = tracker(db, clock, grace_hour_s=LATER)
    first.stored(data(hour(0)))
    await first.flush()
    again = tracker(db, clock, grace_hour_s=LATER)
    again.bound(MN, 1, "peer", clock.now)  # before the restart's load ran
    again.stored(data(hour(2)))
    claims = []
    claim = again.store.claim

    async def counted(owner, mns):
        claims.append(mns)
        return await claim(owner, mns)

    again.store.claim = counted
    await again.flush()
    await again.flush()
    assert claims == [None]  # the restart's load took the device; no second claim, none per round
    assert [(g.start, g.end) for g in again.open_gaps(MN)] == [(hour(1), hour(1))]
