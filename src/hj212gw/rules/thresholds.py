"""Rule thresholds: a TOML file (global defaults, per device, per factor, per device and factor)
parsed into an immutable `Thresholds` whose `for_factor(mn, factor)` is one or two dict lookups.

The defaults are the regulation's numbers (晋环规〔2024〕2号: fault 24 h, Art. 18(3)/30(8); restored
within 5 working days, Art. 18(3)) and documented interpretations for the rest. Resolution is field
by field, most specific last: `[defaults]` < `[factors.CODE]` < `[devices."MN"]` <
`[devices."MN".factors.CODE]`. Every resolved view is computed at parse time (their number is
bounded by the file), so a lookup never allocates and memory never grows with the traffic.
Reloading is the caller's job: parse the new text, compare `version`, swap the object.
Imports nothing of hj212gw; no I/O (the caller reads the file).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ThresholdsError(ValueError):
    """A thresholds file that cannot be used: TOML syntax (`line`) or a bad value (`field`)."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        where = " ".join(part for part in (f"line {line}" if line else "", field or "") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.line = line
        self.field = field


@dataclass(frozen=True, slots=True)
class RuleLimits:
    """Every threshold resolved for one (MN, factor); what the rules read per sample."""

    # device-level (scan): read through for_device(mn)
    offline_alert_after_s: float = 600.0
    silent_alert_after_s: float = 1800.0
    fault_alert_after_h: float = 24.0  # Art. 18(3), 30(8)
    fault_restore_working_days: int = 5  # Art. 18(3)
    episode_merge_gap_s: float = 3600.0  # shanxi-rules.md "Fault": episodes < 1 h apart merge
    # per factor (per packet)
    flag_letters: str = "FMSDCTB"  # HJ 212-2017 Table 8; P (2005 power fault) counts as D
    anomaly_cns: tuple[str, ...] = ("2011", "2051", "2061")
    flatline_points: int = 30  # Art. 29(4) (interp.): identical values on this many points
    anomaly_points: int = 3  # zero / negative / range / dilution / flow zero: consecutive points
    jump_factor: float = 10.0  # Art. 22(4) (interp.): x > prev * k or x < prev / k
    jump_min_delta: float = 1.0  # and |x - prev| at least this (ignores noise near zero)
    range_min: float | None = None  # instrument range when no i13001 was uploaded in 3020
    range_max: float | None = None
    dilution_o2_pct: float = 19.0  # a19001 (O2, %) at or above this: diluted or ambient air
    flow_factors: tuple[str, ...] = ("a00000", "w00000")
    limit: float | None = None  # over-limit (超标) on `limit_cn`; None: not judged
    limit_cn: str = "2061"  # hour averages (ZsAvg where present, else Avg), Art. 25
    hysteresis_band: float = 0.05  # over_limit clears below limit * (1 - band)
    near_limit_band: float = 0.1  # 贴限: limit * (1 - band) <= value < limit ...
    near_limit_points: int = 4  # ... on this many consecutive statistics

    def window(self) -> tuple[float, float]:
        """Values strictly inside (low, high) can fire none of the value rules (the fast path)."""
        low = max(0.0, self.range_min if self.range_min is not None else 0.0)
        high = self.range_max if self.range_max is not None else float("inf")
        return low, high


class Overrides(BaseModel):
    """One table of the file: every key optional, None meaning "inherit"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offline_alert_after_s: float | None = Field(default=None, ge=0)
    silent_alert_after_s: float | None = Field(default=None, ge=0)
    fault_alert_after_h: float | None = Field(default=None, gt=0)
    fault_restore_working_days: int | None = Field(default=None, ge=1)
    episode_merge_gap_s: float | None = Field(default=None, ge=0)
    flag_letters: str | None = Field(default=None, pattern=r"^[FMSDCTB]*$")
    anomaly_cns: tuple[str, ...] | None = None
    flatline_points: int | None = Field(default=None, ge=2)
    anomaly_points: int | None = Field(default=None, ge=1)
    jump_factor: float | None = Field(default=None, gt=1)
    jump_min_delta: float | None = Field(default=None, ge=0)
    range_min: float | None = None
    range_max: float | None = None
    dilution_o2_pct: float | None = Field(default=None, gt=0, le=100)
    flow_factors: tuple[str, ...] | None = None
    limit: float | None = Field(default=None, gt=0)
    limit_cn: str | None = Field(default=None, pattern=r"^(2051|2061|2031)$")
    hysteresis_band: float | None = Field(default=None, ge=0, lt=1)
    near_limit_band: float | None = Field(default=None, ge=0, lt=1)
    near_limit_points: int | None = Field(default=None, ge=1)


class DeviceOverrides(Overrides):
    factors: dict[str, Overrides] = Field(default_factory=dict)


class ThresholdsFile(BaseModel):
    """The file's shape (keys as in docs/alerts.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Overrides = Overrides()
    factors: dict[str, Overrides] = Field(default_factory=dict)
    devices: dict[str, DeviceOverrides] = Field(default_factory=dict)


_LIMIT_FIELDS = tuple(f.name for f in fields(RuleLimits))


def _apply(base: RuleLimits, *layers: Overrides | None) -> RuleLimits:
    values = {name: getattr(base, name) for name in _LIMIT_FIELDS}
    for layer in layers:
        if layer is not None:
            values.update({k: v for k, v in layer.model_dump(exclude_none=True).items() if k in values})
    return RuleLimits(**values)


class Thresholds:
    """The resolved thresholds of one file; immutable, swapped whole on reload (`version`)."""

    __slots__ = ("_default", "_device", "_exact", "_factor", "source", "version")

    def __init__(self, source: ThresholdsFile, version: str) -> None:
        self.source = source
        self.version = version
        self._default = _apply(RuleLimits(), source.defaults)
        self._factor = {code: _apply(self._default, layer) for code, layer in source.factors.items()}
        self._device: dict[str, RuleLimits] = {}
        self._exact: dict[tuple[str, str], RuleLimits] = {}
        for mn, device in source.devices.items():
            self._device[mn] = _apply(self._default, device)
            for code in {*source.factors, *device.factors}:
                layers = (source.factors.get(code), device, device.factors.get(code))
                self._exact[(mn, code)] = _apply(self._default, *layers)

    @classmethod
    def default(cls) -> Thresholds:
        return parse_thresholds("")

    def for_factor(self, mn: str, factor: str) -> RuleLimits:
        """The thresholds of `factor` on device `mn` (O(1); the same object every call)."""
        if self._exact:
            found = self._exact.get((mn, factor))
            if found is not None:
                return found
            device = self._device.get(mn)
            if device is not None:
                return device
        return self._factor.get(factor, self._default)

    def for_device(self, mn: str) -> RuleLimits:
        """The device-level thresholds of `mn` (offline, silent, fault clocks)."""
        return self._device.get(mn, self._default)


def parse_thresholds(text: str) -> Thresholds:
    """A thresholds TOML document -> `Thresholds` (version = 16 hex digits of its SHA-256).

    Raises:
        ThresholdsError: bad TOML (with `line`) or a bad key or value (with `field`, and the line
            of that key when it can be found).
    """
    version = hashlib.sha256(text.encode()).hexdigest()[:16]
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"line (\d+)", str(err))
        raise ThresholdsError(str(err), line=int(match.group(1)) if match else None) from err
    try:
        source = ThresholdsFile.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        path = ".".join(str(part) for part in first["loc"])
        raise ThresholdsError(first["msg"], field=path, line=_line_of(text, first["loc"])) from err
    return Thresholds(source, version)


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """The line of the last key of `loc` (best effort: the first `key =` of that name)."""
    names = [str(part) for part in loc if isinstance(part, str)]
    if not names:
        return None
    pattern = re.compile(rf"^\s*\"?{re.escape(names[-1])}\"?\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None
