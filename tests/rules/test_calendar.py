from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from hj212gw.rules.calendar import CalendarError, WorkCalendar, parse_overrides


@pytest.fixture
def calendar() -> WorkCalendar:
    return WorkCalendar.from_library()


@pytest.mark.parametrize(
    ("day", "working"),
    [
        ("2026-02-14", True),  # Saturday, make-up working day before the Spring Festival
        ("2026-02-16", False),  # Monday, Spring Festival
        ("2026-02-23", False),  # Monday, last day of the Spring Festival holiday
        ("2026-02-28", True),  # Saturday, make-up working day
        ("2026-09-20", True),  # Sunday, make-up working day for National Day
        ("2026-10-01", False),
        ("2026-10-07", False),
        ("2026-10-08", True),
        ("2026-10-10", True),  # Saturday, make-up working day
        ("2026-10-11", False),  # plain Sunday
    ],
)
def test_2026_holidays_and_make_up_days(calendar: WorkCalendar, day: str, working: bool) -> None:
    assert calendar.is_working_day(date.fromisoformat(day)) is working
    assert not calendar.unknown_years


def test_five_working_days_across_national_day_2026(calendar: WorkCalendar) -> None:
    # Fault at 2026-09-30 10:00 Beijing (02:00 UTC): 10-01..07 holidays, 10-08 Thu, 09 Fri, 10 Sat
    # (make-up), 12 Mon, 13 Tue -> the 5th working day is 10-13.
    start = datetime(2026, 9, 30, 2, 0, tzinfo=UTC)
    assert calendar.add_working_days(start, 5) == datetime(2026, 10, 13, 2, 0, tzinfo=UTC)


def test_five_working_days_across_spring_festival_2026(calendar: WorkCalendar) -> None:
    # Fri 02-13 10:00 Beijing: Sat 14 (make-up) is day 1, 15-23 holidays, 24, 25, 26, 27 -> day 5 = 02-27.
    start = datetime(2026, 2, 13, 2, 0, tzinfo=UTC)
    assert calendar.add_working_days(start, 5) == datetime(2026, 2, 27, 2, 0, tzinfo=UTC)


def test_days_are_beijing_days(calendar: WorkCalendar) -> None:
    # 2026-09-30 20:00 UTC is already 10-01 04:00 in Beijing: counting starts after National Day.
    start = datetime(2026, 9, 30, 20, 0, tzinfo=UTC)
    assert calendar.add_working_days(start, 1) == datetime(2026, 10, 7, 20, 0, tzinfo=UTC)


def test_unknown_year_falls_back_to_monday_to_friday_and_says_so(calendar: WorkCalendar) -> None:
    assert not calendar.knows_year(2031)
    assert calendar.is_working_day(date(2031, 1, 1))  # a Wednesday; really a holiday
    assert calendar.unknown_years == {2031}


def test_overrides_cover_a_year_the_library_does_not_know() -> None:
    overrides = parse_overrides('holidays = ["2031-01-01"]\nworking = ["2031-01-04"]\n')
    calendar = WorkCalendar.from_library(overrides)
    assert calendar.knows_year(2031)
    assert not calendar.is_working_day(date(2031, 1, 1))
    assert calendar.is_working_day(date(2031, 1, 4))  # a Saturday
    assert not calendar.unknown_years


def test_csv_overrides_and_their_errors() -> None:
    assert parse_overrides("date,working\n2031-01-01,0\n", fmt="csv") == {date(2031, 1, 1): False}
    with pytest.raises(CalendarError) as err:
        parse_overrides("date,working\n2031-01-01,yes\n", fmt="csv")
    assert err.value.line == 2
