"""The rules' configuration as files: thresholds (TOML, reloaded when the file changes) and the
working-day calendar's overrides. A file that does not parse at start stops the gateway with the
error and its line; a reload that does not parse keeps the thresholds in force, with one ERROR.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from hj212gw.rules.calendar import CalendarError, WorkCalendar, parse_overrides
from hj212gw.rules.thresholds import Thresholds, ThresholdsError, parse_thresholds

_LOG = structlog.get_logger("hj212gw.alerts")


class AlertConfigError(Exception):
    """A thresholds or calendar file that cannot be read or does not parse (at start)."""


class ThresholdsFile:
    """`current` thresholds of `path` (defaults when None); `reload()` re-reads a changed file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.current = Thresholds.default()
        if path is not None:
            try:
                self._stamp = _stamp(path)
                self.current = parse_thresholds(path.read_text(encoding="utf-8"))
            except (OSError, ThresholdsError) as err:
                raise AlertConfigError(f"alerts.thresholds_file {path}: {_described(err)}") from err

    def reload(self) -> bool:
        """Re-read the file if it changed (mtime or size); True if new thresholds are in force."""
        if self.path is None:
            return False
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            loaded = parse_thresholds(self.path.read_text(encoding="utf-8"))
        except (OSError, ThresholdsError) as err:
            _LOG.error("thresholds_reload_failed", path=str(self.path), error=str(err),
                       line=getattr(err, "line", None), field=getattr(err, "field", None))  # fmt: skip
            return False
        changed = loaded.version != self.current.version
        self.current = loaded
        if changed:
            _LOG.info("thresholds_reloaded", path=str(self.path), version=loaded.version)
        return changed


def load_calendar(path: Path | None) -> WorkCalendar:
    """The working-day calendar: the maintained library plus the overrides file, if any."""
    if path is None:
        return WorkCalendar.from_library()
    fmt = "csv" if path.suffix.lower() == ".csv" else "toml"
    try:
        return WorkCalendar.from_library(parse_overrides(path.read_text(encoding="utf-8"), fmt=fmt))
    except (OSError, CalendarError) as err:
        raise AlertConfigError(f"alerts.calendar_file {path}: {_described(err)}") from err


def _described(err: Exception) -> str:
    line = getattr(err, "line", None)
    return f"{err} (line {line})" if line is not None else str(err)


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size
