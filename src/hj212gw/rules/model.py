"""What rules read and what they produce: the contract between `rules/` (pure) and `alerts/` (I/O).

A rule is a pure function (or a small object whose state is only what it has seen) from inputs to
alert changes. It never reads a clock: every input carries its time, and scanning rules get `now`.

Outputs:
- `Fire(key, …)`: the condition of `key` holds. The alert engine raises it when no alert of that
  fingerprint is firing, otherwise updates its value (a Fire is level, not edge: repeating it is
  cheap and harmless).
- `Clear(key, at)`: the condition no longer holds. The engine resolves the firing alert of that
  fingerprint, or drops the Clear at no cost when none fires. A stateful rule that sees a key for
  the first time and finds the condition false emits one Clear, so that an alert raised by another
  replica (or before a restart) resolves too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class AlertKey:
    """What one alert is about: one rule on one device, and one factor where the rule is per factor.

    `factor` is "" for device-level rules; `detail` distinguishes several alerts of one rule on one
    factor (e.g. the CN for silence per CN, the flag letter for flag episodes), "" when not needed.
    """

    rule: str
    mn: str
    factor: str = ""
    detail: str = ""

    @property
    def fingerprint(self) -> str:
        """Stable across replicas and restarts: 16 hex digits of SHA-256 over the key's parts."""
        text = "\x1f".join((self.rule, self.mn, self.factor, self.detail))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Fire:
    """The condition of `key` holds at `at` (since `started_at`, the first evidence of it)."""

    key: AlertKey
    severity: Severity
    started_at: datetime
    at: datetime
    summary_zh: str
    summary_en: str
    article: str = ""  # the regulation article it serves, e.g. "晋环规〔2024〕2号 Art. 18(3)"
    value: float | None = None
    threshold: float | None = None
    details: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Clear:
    """The condition of `key` no longer holds since `at`."""

    key: AlertKey
    at: datetime
    value: float | None = None


AlertChange = Fire | Clear


# ---- inputs -------------------------------------------------------------------------------------


class Sample(NamedTuple):
    """One data packet whose rows committed (2011, 2051, 2061, 2031, 3020, …).

    `fields` is the packet's CP items as sent (`"a21026-Avg": "12.3"`, `"a21026-Flag": "N"`): the
    dict the codec built, shared, never copied. Times are aware (UTC). A named tuple: one is built
    per stored packet, several times faster than a frozen dataclass.
    """

    mn: str
    cn: str
    data_time: datetime
    received_at: datetime
    backfill: bool
    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device's state changed (monitor.state.DeviceStateChanged, as rules see it)."""

    mn: str
    state: str  # online | silent | offline
    previous: str | None
    since: datetime
    cause: str
    details: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GapView:
    """One gap of a device's series as the scanning rules see it (storage's gaps table)."""

    mn: str
    cn: str
    start: datetime
    end: datetime
    missing: int
    status: str  # open | requested | filled | given_up | dormant
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ValueRevised:
    """A resent value differs from the one stored before for the same key (data_versions)."""

    mn: str
    cn: str
    factor: str
    data_time: datetime
    old: float | None
    new: float | None
    at: datetime


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """An alert that fires now, as the scanning rules see it (to escalate long episodes)."""

    key: AlertKey
    severity: Severity
    started_at: datetime
    details: Mapping[str, object] = field(default_factory=dict)
