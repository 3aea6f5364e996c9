"""Working days (工作日) of the official PRC calendar: holidays and make-up working days (调休).

Shanxi 晋环规〔2024〕2号 counts deadlines in working days (Art. 15, 18(3)); shanxi-rules.md says to
keep a holiday table, not Mon–Fri. The table comes from the maintained `chinesecalendar` package
(`import chinese_calendar`; it knows the years the State Council has announced, 2004–2026 in
1.11), and an override file (TOML or CSV, parsed by the caller's text) takes precedence for any
day it names, so a year the package does not know yet can be added by hand. A year known to
neither falls back to Mon–Fri: `is_working_day` still answers, and `unknown_years` lists every
such year asked about, so the caller can log once that its answer may be wrong.
No I/O, no clock: the caller reads the override file and passes its text.
"""

from __future__ import annotations

import csv
import io
import tomllib
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

import chinese_calendar

BEIJING = timezone(timedelta(hours=8), "CST")


class CalendarError(ValueError):
    """An override file that cannot be read (`line` where known)."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


def parse_overrides(text: str, *, fmt: str = "toml") -> dict[date, bool]:
    """Override text -> {day: is working day}.

    TOML: `working = ["2027-02-20", …]` and `holidays = ["2027-02-11", …]`.
    CSV: `date,working` rows (`2027-02-20,1`; a header row is allowed).

    Raises:
        CalendarError: unreadable text, a bad date or flag.
    """
    days: dict[date, bool] = {}
    if fmt == "toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise CalendarError(str(err)) from err
        for key, working in (("holidays", False), ("working", True)):
            for item in raw.get(key, []):
                days[_day(item, None)] = working
        return days
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or row[0].strip().lower() in ("date", "") or row[0].startswith("#"):
            continue
        if len(row) < 2 or row[1].strip() not in ("0", "1"):
            raise CalendarError(f"expected date,0|1, got {row!r}", line=number)
        days[_day(row[0].strip(), number)] = row[1].strip() == "1"
    return days


def _day(item: object, line: int | None) -> date:
    if isinstance(item, date) and not isinstance(item, datetime):
        return item
    try:
        return date.fromisoformat(str(item))
    except ValueError as err:
        raise CalendarError(f"bad date {item!r}", line=line) from err


class WorkCalendar:
    """Which days are working days, from the package and the overrides; memoised per year."""

    def __init__(self, overrides: Mapping[date, bool] | None = None, *, use_library: bool = True) -> None:
        self._overrides = dict(overrides or {})
        self._use_library = use_library
        self._years: dict[int, bool] = {}  # year -> known (to the package or the overrides)
        self._library_years: dict[int, bool] = {}
        self.unknown_years: set[int] = set()

    @classmethod
    def from_library(cls, overrides: Mapping[date, bool] | None = None) -> WorkCalendar:
        return cls(overrides)

    def knows_year(self, year: int) -> bool:
        """Whether the package or the overrides cover `year` (else Mon–Fri is assumed)."""
        known = self._years.get(year)
        if known is None:
            known = self._library_knows(year) or any(day.year == year for day in self._overrides)
            self._years[year] = known
        return known

    def _library_knows(self, year: int) -> bool:
        known = self._library_years.get(year)
        if known is None:
            known = self._use_library
            if known:
                try:
                    chinese_calendar.is_workday(date(year, 1, 1))
                except NotImplementedError:
                    known = False
            self._library_years[year] = known
        return known

    def is_working_day(self, day: date) -> bool:
        """Official working day: not a holiday, and a weekday or a make-up working day (调休)."""
        override = self._overrides.get(day)
        if override is not None:
            return override
        if self._library_knows(day.year):
            return bool(chinese_calendar.is_workday(day))
        if not self.knows_year(day.year):
            self.unknown_years.add(day.year)
        return day.weekday() < 5

    def add_working_days(self, start: datetime, n: int) -> datetime:
        """`start` moved forward by `n` whole working days, time of day kept (n >= 0).

        Day one is the first working day after `start`'s date: a fault starting Friday 10:00
        before a plain weekend ends its 5 working days the next Friday 10:00 (Art. 18(3)).
        Days are Beijing days (UTC+8, no DST) when `start` is aware; the result has `start`'s zone.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        current = start.astimezone(BEIJING) if start.tzinfo is not None else start
        while n:
            current += timedelta(days=1)
            if self.is_working_day(current.date()):
                n -= 1
        return current.astimezone(start.tzinfo) if start.tzinfo is not None else current
