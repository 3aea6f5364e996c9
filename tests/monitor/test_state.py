"""monitor/state.py: online, silent and offline from connection signals, stored data and time."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from hj212gw.monitor.state import (
    MOVED_TO_CONNECTION,
    MOVED_TO_REPLICA,
    SHUTDOWN,
    DeviceState,
    DeviceStateChanged,
    DeviceStates,
    StatePolicy,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
MN = "010000A8900016F000169DC0"
ONLINE, SILENT, OFFLINE = DeviceState.ONLINE, DeviceState.SILENT, DeviceState.OFFLINE


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def minutes_sent(states: DeviceStates, first: int, last: int, *, every: int = 1, mn: str = MN) -> None:
    """Minute data (2051) for minutes first..last, each arriving on time."""
    for n in range(first, last + 1, every):
        assert states.stored(mn, "2051", at(60 * n), at(60 * n + 1)) is None


def test_a_bound_device_is_online_and_a_closed_one_offline_with_the_close_reason() -> None:
    states = DeviceStates("gw-a")
    came = states.bound(MN, 7, T0)
    assert came == DeviceStateChanged(MN, None, ONLINE, T0, "connected", "gw-a", 7, {})
    went = states.released(MN, 7, "peer_error", at(5))
    assert went is not None and (went.old, went.new, went.since, went.cause) == (ONLINE, OFFLINE, at(5), "peer_error")
    again = states.bound(MN, 8, at(9))
    assert again is not None and (again.old, again.new, again.connection_id) == (OFFLINE, ONLINE, 8)


def test_a_device_whose_minute_data_stops_is_silent_after_period_times_tolerance_then_online_when_it_returns() -> None:
    states = DeviceStates("gw-a", StatePolicy(tolerance=3, floor=timedelta(minutes=1)))
    states.bound(MN, 1, T0)
    minutes_sent(states, 0, 20, every=5)  # every 5 minutes: silent after 15
    last_arrival = at(60 * 20 + 1)
    assert states.scan(last_arrival + timedelta(minutes=15, seconds=-1)) == []
    (silent,) = states.scan(last_arrival + timedelta(minutes=15))
    assert (silent.old, silent.new, silent.cause, silent.details) == (
        ONLINE,
        SILENT,
        "data_overdue",
        {"overdue": ["2051"]},
    )
    assert states.scan(last_arrival + timedelta(hours=5)) == []  # no transition without a change
    back = states.stored(MN, "2051", at(60 * 60 * 6), at(60 * 60 * 6 + 2))
    assert back is not None and (back.old, back.new, back.cause) == (SILENT, ONLINE, "data_resumed")


def test_the_floor_bounds_short_periods_and_registry_periods_win_over_learned_ones() -> None:
    states = DeviceStates("gw-a")  # tolerance 3, floor 10 min
    states.bound(MN, 1, T0)
    minutes_sent(states, 0, 5)  # learned: 1 minute, 3 x 1 min < the 10 min floor
    assert states.scan(at(60 * 5 + 1 + 599)) == []
    assert [e.new for e in states.scan(at(60 * 5 + 1 + 600))] == [SILENT]

    fixed = DeviceStates("gw-a")
    fixed.fixed = {MN: {"2051": timedelta(minutes=30)}}
    fixed.bound(MN, 1, T0)
    minutes_sent(fixed, 0, 5)
    assert fixed.scan(at(60 * 5 + 1 + 5399)) == []  # 3 x 30 min
    assert [e.new for e in fixed.scan(at(60 * 5 + 1 + 5400))] == [SILENT]


def test_hour_data_is_expected_hourly_from_the_start_and_other_uploads_never() -> None:
    states = DeviceStates("gw-a")
    states.bound(MN, 1, T0)
    states.stored(MN, "3020", T0, at(1))
    states.stored(MN, "2061", T0, at(1))
    assert states.scan(at(3 * 3600)) == []
    (silent,) = states.scan(at(3 * 3600 + 1))
    assert silent.details == {"overdue": ["2061"]}


def test_a_device_that_connects_after_a_long_absence_is_measured_from_its_connection() -> None:
    states = DeviceStates("gw-a")
    states.bound(MN, 1, T0)
    states.stored(MN, "2061", T0, at(1))
    states.released(MN, 1, "idle_timeout", at(10))
    states.bound(MN, 2, at(86400))
    assert states.scan(at(86400 + 3 * 3600 - 1)) == []
    assert [e.new for e in states.scan(at(86400 + 3 * 3600))] == [SILENT]


def test_moves_and_shutdown_are_no_transitions_and_a_stale_release_is_ignored() -> None:
    states = DeviceStates("gw-a")
    states.bound(MN, 1, T0)
    assert states.released(MN, 1, MOVED_TO_CONNECTION, at(1)) is None
    assert states.bound(MN, 2, at(1)) is None
    assert states.released(MN, 1, "peer_closed", at(2)) is None  # the older connection's close
    assert states.state_of(MN) is ONLINE
    assert states.released(MN, 2, SHUTDOWN, at(3)) is None
    assert states.state_of(MN) is ONLINE
    states.bound(MN, 3, at(4))
    assert states.released(MN, 3, MOVED_TO_REPLICA, at(5)) is None
    assert MN not in states and states.counts[ONLINE] == 0


def test_a_restored_device_keeps_its_since_and_last_data_when_it_is_bound_again() -> None:
    before = DeviceStates("gw-a")
    before.bound(MN, 1, T0)
    before.bound("OTHER", 2, T0)
    minutes_sent(before, 0, 3)
    snapshots = before.take_changed()
    assert {s.mn for s in snapshots} == {MN, "OTHER"} and before.take_changed() == []

    after = DeviceStates("gw-b")  # another replica, or this one restarted
    for snapshot in snapshots:
        after.restore(snapshot)
    assert after.bound(MN, 9, at(310)) is None  # it never stopped being connected
    assert after.scan(at(400)) == []  # the other, restored but not bound here, is not watched
    kept = after.snapshot(MN)
    assert kept is not None and (kept.state, kept.since, kept.connection_id) == (ONLINE, T0, 9)
    assert kept.series["2051"].data_time == at(180) and kept.series["2051"].period == timedelta(minutes=1)
    assert after.released(MN, 9, "peer_closed", at(500)) is not None
    assert after.done_with(MN) is False  # changed since its last snapshot
    after.take_changed()
    assert after.done_with(MN) and not after.done_with("OTHER")


def test_a_replica_taken_for_lost_reports_the_devices_it_holds_again() -> None:
    states = DeviceStates("gw-a")
    states.bound(MN, 1, T0)
    states.bound("GONE", 2, T0)
    states.released("GONE", 2, "peer_closed", at(1))
    states.take_changed()
    (back,) = states.resume(at(90))
    assert (back.mn, back.old, back.new, back.since, back.cause) == (MN, OFFLINE, ONLINE, at(90), "gateway_resumed")
    assert [s.mn for s in states.take_changed()] == [MN]


def test_stored_data_of_an_offline_device_updates_its_last_data_but_not_its_state() -> None:
    states = DeviceStates("gw-a")
    states.bound(MN, 1, T0)
    states.released(MN, 1, "peer_error", at(1))
    assert states.stored(MN, "2051", T0, at(2)) is None
    snapshot = states.snapshot(MN)
    assert snapshot is not None and snapshot.state is OFFLINE and snapshot.series["2051"].received_at == at(2)


# -- any interleaving ----------------------------------------------------------------------------

MNS = ("A", "B")
CAUSES = ("peer_closed", "peer_error", "idle_timeout", MOVED_TO_CONNECTION, MOVED_TO_REPLICA, SHUTDOWN)
signal = st.one_of(
    st.tuples(st.just("bound"), st.sampled_from(MNS), st.integers(1, 4)),
    st.tuples(st.just("released"), st.sampled_from(MNS), st.integers(1, 4), st.sampled_from(CAUSES)),
    st.tuples(
        st.just("stored"), st.sampled_from(MNS), st.sampled_from(("2011", "2051", "2061", "3020")), st.integers(0, 600)
    ),
    st.tuples(st.just("scan")),
)


@given(st.lists(st.tuples(signal, st.integers(0, 3600)), max_size=60))
def test_any_interleaving_follows_the_last_connection_signal_and_every_event_is_a_change(
    steps: list[tuple[tuple[object, ...], int]],
) -> None:
    states = DeviceStates("gw-a")
    now = T0
    held: dict[str, int] = {}  # what the server told: MN -> connection holding it
    seen: dict[str, DeviceState] = {}  # the state as the events tell it
    for step, wait_s in steps:
        now += timedelta(seconds=wait_s)
        events: list[DeviceStateChanged] = []
        match step:
            case ("bound", mn, cid):
                events = [e for e in [states.bound(mn, cid, now)] if e]
                held[mn] = cid
            case ("released", mn, cid, cause):
                if held.get(mn) != cid:
                    continue  # the server releases only what a connection holds
                events = [e for e in [states.released(mn, cid, cause, now)] if e]
                del held[mn]
                if cause == MOVED_TO_REPLICA:
                    seen.pop(mn, None)
            case ("stored", mn, cn, minute):
                events = [e for e in [states.stored(mn, cn, T0 + timedelta(minutes=minute), now)] if e]
            case ("scan",):
                events = states.scan(now)
        for event in events:
            assert event.old != event.new and event.since == now
            assert seen.get(event.mn) == event.old or (event.old is None and event.mn not in seen)
            seen[event.mn] = event.new
        for mn in MNS:
            state = states.state_of(mn)
            assert state == seen.get(mn)
            if mn in held:
                assert state in (ONLINE, SILENT)
    assert sum(states.counts.values()) == len(states)
    assert all(states.counts[s] == sum(1 for mn in MNS if states.state_of(mn) is s) for s in DeviceState)


def test_backfilled_data_neither_ends_nor_delays_silence_but_moves_the_last_data_time() -> None:
    states = DeviceStates("gw-a", StatePolicy(tolerance=3, floor=timedelta(minutes=1)))
    states.bound(MN, 1, T0)
    minutes_sent(states, 0, 20, every=5)
    last_arrival = at(60 * 20 + 1)
    (silent,) = states.scan(last_arrival + timedelta(minutes=15))
    assert silent.new == SILENT
    answer_at = last_arrival + timedelta(minutes=20)
    assert states.stored(MN, "2051", at(60 * 25), answer_at, backfill=True) is None  # still silent
    assert states.scan(answer_at + timedelta(minutes=1)) == []
    live = states.stored(MN, "2051", at(60 * 45), answer_at + timedelta(minutes=5))
    assert live is not None and (live.old, live.new) == (SILENT, ONLINE)
