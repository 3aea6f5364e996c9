"""Scenarios: what goes wrong, for which devices, when. Pure: built from plain data, asked with a time.

A scenario is a mapping such as `{"kind": "cut", "devices": [0, 3], "start_s": 600,
"duration_s": 1800}`. Times are simulated seconds since the run started, so a sped-up clock runs
an outage of hours in seconds. `devices` is a list of device indices, `"all"`, or a fraction
(0.1 = every tenth device). Kinds:

    cut          network cut: the connection drops and cannot reconnect until it ends
    silent       the device measures nothing and uploads no data (its link stays up)
    flap         the link drops every `period_s` and stays down for `down_s`
    drift        the device clock runs `ppm` fast (negative: slow) and starts `offset_s` off
    constant | zero | negative | over_limit     value effects, optionally only for `factors`
    flatline     a stuck analyser: each factor keeps the reading it had when the scenario started
    dilution     air drawn into the flue: O2 (a19001) reads 20.6 %, pollutants a twentieth
    parameter_change   instrument parameters (i13001 range) uploaded in 3020 every hour; while
                 the scenario is active the range is doubled (an unfiled change, Art. 29(6))
    fault        data flag episode: `flag` is D, M or C (default D), optionally only `factors`
    garbage      junk bytes before a frame with probability `rate`
    bad_crc      a frame sent with a wrong CRC with probability `rate` (it is resent later)
    split        data packets split in two parts (Flag 7, PNUM/PNO) with probability `rate`
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

KINDS = frozenset(
    {"cut", "silent", "flap", "drift", "constant", "zero", "negative", "over_limit", "flatline", "dilution", "fault",
     "parameter_change", "garbage", "bad_crc", "split"}
)  # fmt: skip
VALUE_KINDS = frozenset({"constant", "zero", "negative", "over_limit", "flatline", "dilution"})


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: str
    devices: tuple[int, ...] | str | float = "all"
    start_s: float = 0.0
    duration_s: float | None = None
    factors: tuple[str, ...] = ()
    rate: float = 0.0
    flag: str = "D"
    ppm: float = 0.0
    offset_s: float = 0.0
    period_s: float = 3600.0
    down_s: float = 60.0

    def applies_to(self, index: int) -> bool:
        if self.devices == "all":
            return True
        if isinstance(self.devices, float):
            every = max(1, round(1 / self.devices)) if self.devices > 0 else 0
            return every > 0 and index % every == 0
        return isinstance(self.devices, tuple) and index in self.devices

    def active_at(self, elapsed_s: float) -> bool:
        if elapsed_s < self.start_s:
            return False
        return self.duration_s is None or elapsed_s < self.start_s + self.duration_s


def parse_scenario(raw: Mapping[str, Any]) -> Scenario:
    """A Scenario from a TOML/JSON table.

    Raises:
        ValueError: an unknown kind or key, or a bad device selector.
    """
    data = dict(raw)
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValueError(f"scenario kind {kind!r} is not one of {sorted(KINDS)}")
    devices = data.get("devices", "all")
    if isinstance(devices, list):
        data["devices"] = tuple(int(d) for d in devices)
    elif isinstance(devices, int | float) and not isinstance(devices, bool):
        data["devices"] = float(devices)
    elif devices != "all":
        raise ValueError(f"devices must be a list of indices, 'all' or a fraction, not {devices!r}")
    if "factors" in data:
        data["factors"] = tuple(data["factors"])
    known = set(Scenario.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown scenario keys {sorted(unknown)}")
    return Scenario(**data)


@dataclass(slots=True)
class DeviceScenarios:
    """The scenarios that apply to one device, asked with simulated time."""

    started: datetime
    items: list[Scenario] = field(default_factory=list)

    def _elapsed(self, sim: datetime) -> float:
        return (sim - self.started).total_seconds()

    def _active(self, kinds: Iterable[str], sim: datetime) -> list[Scenario]:
        elapsed = self._elapsed(sim)
        return [s for s in self.items if s.kind in kinds and s.active_at(elapsed)]

    def network_down(self, sim: datetime) -> datetime | None:
        """When the current cut or flap ends, or None if the link may be up now."""
        elapsed = self._elapsed(sim)
        ends: list[float] = []
        for s in self._active(("cut",), sim):
            ends.append(float("inf") if s.duration_s is None else s.start_s + s.duration_s)
        for s in self._active(("flap",), sim):
            phase = (elapsed - s.start_s) % s.period_s
            if phase >= s.period_s - s.down_s:
                ends.append(elapsed + s.period_s - phase)
        if not ends:
            return None
        end = max(ends)
        return datetime.max.replace(tzinfo=sim.tzinfo) if end == float("inf") else self.started + timedelta(seconds=end)

    def silent(self, sim: datetime) -> bool:
        return bool(self._active(("silent",), sim))

    def value_effect(self, code: str, sim: datetime) -> str | None:
        scenario = self.value_scenario(code, sim)
        return None if scenario is None else scenario.kind

    def value_scenario(self, code: str, sim: datetime) -> Scenario | None:
        """The value scenario forcing `code` at `sim` (the first listed), or None."""
        for s in self._active(VALUE_KINDS, sim):
            if not s.factors or code in s.factors:
                return s
        return None

    def start_of(self, scenario: Scenario) -> datetime:
        """The simulated moment `scenario` starts."""
        return self.started + timedelta(seconds=scenario.start_s)

    def uploads_parameters(self, code: str) -> bool:
        """Whether `code`'s instrument parameters go up in every hour's 3020 (a parameter_change
        scenario names it, active or not: the values before the change are the reference)."""
        return any(s.kind == "parameter_change" and (not s.factors or code in s.factors) for s in self.items)

    def parameters_changed(self, code: str, sim: datetime) -> bool:
        return any(not s.factors or code in s.factors for s in self._active(("parameter_change",), sim))

    def flag_effect(self, code: str, sim: datetime) -> str | None:
        for s in self._active(("fault",), sim):
            if not s.factors or code in s.factors:
                return s.flag
        return None

    def rate(self, kind: str, sim: datetime) -> float:
        return max((s.rate for s in self._active((kind,), sim)), default=0.0)

    def clock_skew(self) -> tuple[float, float]:
        """(ppm, initial offset in seconds) of the drift scenarios."""
        drifts = [s for s in self.items if s.kind == "drift"]
        return sum(s.ppm for s in drifts), sum(s.offset_s for s in drifts)


def for_device(scenarios: Iterable[Scenario], index: int, started: datetime) -> DeviceScenarios:
    return DeviceScenarios(started, [s for s in scenarios if s.applies_to(index)])
