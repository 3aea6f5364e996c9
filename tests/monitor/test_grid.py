from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hj212gw.monitor.grid import Grid, Run

HOUR = 3600
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def spans(grid: Grid) -> list[tuple[int, int]]:
    return [(run.start, run.end) for run in grid.runs]


def grid_of(indices: list[int], extend_to: int | None = None) -> Grid:
    grid = Grid(HOUR)
    for index in indices:
        grid.add(index)
    if extend_to is not None:
        grid.extend_to(extend_to)
    return grid


def test_consecutive_periods_open_no_gap():
    grid = grid_of([0, 1, 2, 3])
    assert (grid.first, grid.last, grid.runs, grid.missing) == (0, 3, [], 0)


def test_a_jump_opens_the_gap_of_the_periods_skipped():
    grid = grid_of([0, 1, 5])
    assert spans(grid) == [(2, 4)]
    assert grid.missing == 3


def test_late_data_shrinks_splits_and_closes_its_gap_keeping_the_older_piece_in_the_run():
    grid = grid_of([0, 10])
    run = grid.runs[0]
    grid.add(1)  # shrinks from the start
    grid.add(9)  # and from the end
    assert spans(grid) == [(2, 8)] and grid.runs[0] is run
    grid.add(5)  # splits
    assert spans(grid) == [(2, 4), (6, 8)]
    assert grid.runs[0] is run and grid.runs[1].split_from is run
    for index in (2, 3, 4):
        grid.add(index)
    assert run.filled and run.periods == 0 and spans(grid) == [(6, 8)]


def test_a_run_filled_in_order_is_listed_as_touched_once():
    grid = grid_of([0])
    grid.extend_to(500)  # a silent device's tail: periods 1-500 missing
    grid.drain()
    for index in range(1, 400):  # then it catches up, oldest first
        grid.add(index)
    assert spans(grid) == [(400, 500)]
    assert len(grid.touched) == 1  # not one entry per period until the owner drains it
    assert [(run.start, run.end) for run in grid.drain()] == [(400, 500)]


def test_an_arrival_before_first_opens_the_gap_between():
    grid = grid_of([10, 11])
    grid.add(3)
    assert (grid.first, spans(grid)) == (3, [(4, 9)])
    grid.add(2)
    assert (grid.first, spans(grid)) == (2, [(4, 9)])


def test_a_period_stored_twice_counts_once():
    grid = grid_of([0, 3])
    assert grid.add(3) is False and grid.add(0) is False
    assert grid.add(1) is True and grid.add(1) is False
    assert spans(grid) == [(2, 2)]


def test_the_tail_of_a_silent_series_grows_and_shrinks_when_data_returns():
    grid = grid_of([0, 1])
    assert grid.extend_to(4) and spans(grid) == [(2, 4)]
    tail = grid.runs[0]
    assert grid.extend_to(6) and spans(grid) == [(2, 6)] and grid.runs[0] is tail
    assert not grid.extend_to(6)
    grid.add(9)  # back after the tail's end: the tail becomes the gap up to the arrival
    assert spans(grid) == [(2, 8)] and grid.runs[0] is tail and grid.last == 9


def test_an_arrival_inside_the_tail_splits_it():
    grid = grid_of([0], extend_to=10)
    grid.add(4)
    assert spans(grid) == [(1, 3), (5, 10)] and grid.last == 4 and grid.top == 10
    grid.add(11)
    assert spans(grid) == [(1, 3), (5, 10)] and grid.last == grid.top == 11


def test_the_touched_runs_are_drained_once_each():
    grid = grid_of([0, 10])
    grid.add(5)
    grid.add(1)
    touched = grid.drain()
    assert [(run.start, run.end) for run in touched] == [(2, 4), (6, 9)]
    assert grid.drain() == []


def test_off_grid_datetimes_snap_to_the_start_of_their_period():
    grid = Grid(600, int(T0.timestamp()))
    assert grid.index_of(T0 + timedelta(minutes=13)) == 1
    assert grid.index_of(T0 - timedelta(seconds=1)) == -1
    assert grid.start_of(1) == T0 + timedelta(minutes=10)


def test_the_due_period_waits_for_the_grace():
    grid = Grid(HOUR, int(T0.timestamp()))
    grace = timedelta(minutes=10)
    assert grid.due_index(T0 + timedelta(hours=1, minutes=9), grace) == -1
    assert grid.due_index(T0 + timedelta(hours=1, minutes=10), grace) == 0


def test_restore_gives_back_the_same_grid_and_refuses_an_inconsistent_one():
    grid = grid_of([0, 3, 9], extend_to=12)
    again = Grid.restore(HOUR, 0, 0, 9, [Run(r.start, r.end) for r in grid.runs])
    assert (spans(again), again.top, again.missing) == (spans(grid), 12, grid.missing)
    with pytest.raises(ValueError):
        Grid.restore(HOUR, 0, 0, 9, [Run(1, 2), Run(3, 4)])  # touching
    with pytest.raises(ValueError):
        Grid.restore(HOUR, 0, 0, 9, [Run(8, 10)])  # covers the last stored period


def test_a_period_must_be_positive():
    with pytest.raises(ValueError):
        Grid(0)


def test_runs_between_finds_the_runs_overlapping_a_range():
    grid = grid_of([0, 5, 10, 20])
    assert [(r.start, r.end) for r in grid.runs_between(3, 12)] == [(1, 4), (6, 9), (11, 19)]
    assert grid.run_at(7) is grid.runs[1] and grid.run_at(10) is None


# -- properties ---------------------------------------------------------------------------------

periods = st.lists(st.integers(min_value=-200, max_value=200), min_size=1, max_size=80)


def expected_runs(stored: set[int], top: int) -> list[tuple[int, int]]:
    """Maximal runs of [min(stored), top] not in `stored`, by brute force."""
    runs: list[tuple[int, int]] = []
    for index in range(min(stored), top + 1):
        if index in stored:
            continue
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


@given(periods, st.randoms(use_true_random=False), st.integers(min_value=-10, max_value=60))
def test_the_runs_are_exactly_the_missing_periods_whatever_the_arrival_order(indices, rnd, overdue):
    stored = set(indices)
    due = max(stored) + overdue
    shuffled = list(indices)
    rnd.shuffle(shuffled)
    a = grid_of(indices, extend_to=due)
    b = Grid(HOUR)
    for n, index in enumerate(shuffled):  # the tail computed early, in the middle of the arrivals
        b.add(index)
        if n == len(shuffled) // 2:
            b.extend_to(due)
    b.extend_to(due)
    top = max(max(stored), due)
    assert spans(a) == spans(b) == expected_runs(stored, top)
    for grid in (a, b):
        missing = {i for run in grid.runs for i in range(run.start, run.end + 1)}
        assert not missing & stored  # never a stored period reported missing
        assert all(n.start > p.end + 1 for p, n in zip(grid.runs, grid.runs[1:], strict=False))  # never touching
        assert grid.missing + len(stored) == grid.span == top - min(stored) + 1
        assert (grid.first, grid.last, grid.top) == (min(stored), max(stored), top)


@given(periods)
def test_runs_keep_their_identity_and_every_change_is_drained(indices):
    grid = Grid(HOUR)
    seen: dict[int, Run] = {}
    for index in indices:
        grid.add(index)
        for run in grid.drain():
            seen[id(run)] = run
    live = {id(run) for run in grid.runs}
    assert live <= seen.keys()  # every run now present was reported when it changed
    assert all(run.filled for key, run in seen.items() if key not in live)
