"""What a simulated device measures: values with a daily shape and noise, flags, period statistics.

Everything is a deterministic function of (device seed, factor, device-local time), so a history
request answered an hour later returns the same numbers as the live upload. Builds CP text for
real-time (2011), minute/hour/day (2051/2061/2031) and status (3020) packets; it frames nothing.
Units follow HJ 212-2017 Appendix D: Cou is m³ for flow codes and kg for pollutants.
"""

import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from hj212gw.protocol.models import format_hj_time
from hj212gw.simulator.profiles import FactorProfile
from hj212gw.simulator.scenarios import VALUE_KINDS, DeviceScenarios

_MASK = (1 << 64) - 1
_EPOCH = datetime(2000, 1, 1)
_EPISODE_LETTERS = "MCD"
_FLUE_GAS_VALID_FRACTION = 0.75  # HJ 212-2017 §10, notes to C.16-C.18
_SAMPLES = {60: 6, 3600: 12, 86400: 24}
O2 = "a19001"
DILUTED_O2_PCT = 20.6  # ambient air is 20.9 %
DILUTED_FRACTION = 0.05  # pollutant readings in diluted flue gas


def unit_hash(*values: int) -> float:
    """A deterministic number in [0, 1) from integers (splitmix64 mixing)."""
    h = 0x9E3779B97F4A7C15
    for value in values:
        h = (h ^ (value & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h ^= h >> 31
        h = h * 0x94D049BB133111EB & _MASK
        h ^= h >> 29
    return (h >> 11) / float(1 << 53)


def _seconds(local: datetime) -> int:
    return int((local - _EPOCH).total_seconds())


class ContentModel:
    """The measurements of one device. `sim_of` maps device-local time to simulated time."""

    def __init__(
        self,
        factors: tuple[FactorProfile, ...],
        *,
        seed: int,
        codes_2005: bool,
        water: bool,
        scenarios: DeviceScenarios,
        sim_of: Callable[[datetime], datetime],
        episode_rate_per_hour: float = 0.02,
    ) -> None:
        self.factors = factors
        self.seed = seed
        self.codes_2005 = codes_2005
        self.water = water
        self.scenarios = scenarios
        self.sim_of = sim_of
        self.episode_rate = episode_rate_per_hour
        # Most devices have no value or flag scenario: skip the per-sample lookups (the hot path).
        self._effects = any(s.kind in VALUE_KINDS or s.kind == "fault" for s in scenarios.items)
        self._flow = next((i for i, f in enumerate(factors) if f.kind == "flow"), None)
        self._o2 = next((i for i, f in enumerate(factors) if f.code == O2), None)

    def code(self, factor: FactorProfile) -> str:
        return factor.code_2005 if self.codes_2005 else factor.code

    # -- point values ---------------------------------------------------------------------------

    def value(self, index: int, local: datetime) -> float:
        f = self.factors[index]
        scenario = self.scenarios.value_scenario(f.code, self.sim_of(local)) if self._effects else None
        match None if scenario is None else scenario.kind:
            case "zero":
                return 0.0
            case "negative":
                return -round(f.base * 0.05 + 0.1, f.decimals)
            case "constant":
                return f.base
            case "flatline":  # the reading of the moment the analyser got stuck, to the second
                assert scenario is not None
                stuck = local - (self.sim_of(local) - self.scenarios.start_of(scenario))
                return self._measured(index, stuck.replace(microsecond=0))
            case "dilution" if f.code == O2:
                return DILUTED_O2_PCT
            case "dilution" if f.kind == "pollutant":
                return self._measured(index, local) * DILUTED_FRACTION
            case "over_limit":
                return (f.limit or f.base * 2) * 1.6 + self._measured(index, local) * 0.1
        return self._measured(index, local)

    def _measured(self, index: int, local: datetime) -> float:
        """The undisturbed reading: a daily shape and noise."""
        f = self.factors[index]
        t = _seconds(local)
        day_phase = (t % 86400) / 86400 - 0.375  # peaks at 15:00 device time
        shape = 1 + f.daily_amplitude * math.sin(2 * math.pi * day_phase)
        noise = (2 * unit_hash(self.seed, index, t) - 1) * f.noise
        return f.base * max(shape + noise, 0.0)

    def flag(self, index: int, local: datetime) -> str:
        f = self.factors[index]
        forced = self.scenarios.flag_effect(f.code, self.sim_of(local)) if self._effects else None
        if forced:
            return forced
        t = _seconds(local)
        hour = t // 3600
        if unit_hash(self.seed, 7, hour) >= self.episode_rate:
            return "N"
        if int(unit_hash(self.seed, 8, hour) * len(self.factors)) != index:
            return "N"
        begin = int(unit_hash(self.seed, 9, hour) * 3000)
        length = 600 + int(unit_hash(self.seed, 10, hour) * 1800)
        if begin <= t % 3600 < begin + length:
            return _EPISODE_LETTERS[int(unit_hash(self.seed, 11, hour) * 3)]
        return "N"

    def _fmt(self, index: int, value: float) -> str:
        return f"{value:.{self.factors[index].decimals}f}"

    def _zs_factor(self, local: datetime) -> float:
        o2 = self.value(self._o2, local) if self._o2 is not None else 9.0
        return (21 - 6) / max(21 - o2, 1.0)  # corrected to 6 % reference O2

    # -- CP text --------------------------------------------------------------------------------

    def rtd_cp(self, local: datetime) -> str:
        """2011: `DataTime=<acquisition moment>;code-Rtd=…,[code-ZsRtd=…,]code-Flag=…;…`."""
        parts = [f"DataTime={format_hj_time(local)}"]
        zs = self._zs_factor(local)
        for i, f in enumerate(self.factors):
            code, value = self.code(f), self.value(i, local)
            item = f"{code}-Rtd={self._fmt(i, value)}"
            if f.corrected:
                item += f",{code}-ZsRtd={self._fmt(i, value * zs)}"
            parts.append(f"{item},{code}-Flag={self.flag(i, local)}")
        return ";".join(parts)

    def period_items(self, start: datetime, seconds: int) -> list[str]:
        """Per-factor items of a minute/hour/day packet for the period starting at `start`."""
        n = _SAMPLES.get(seconds, 6)
        moments = [start + timedelta(seconds=(k + 0.5) * seconds / n) for k in range(n)]
        zs = sum(self._zs_factor(m) for m in moments) / n if any(f.corrected for f in self.factors) else 1.0
        volume = None
        if self._flow is not None:
            flow_avg = sum(self.value(self._flow, m) for m in moments) / n
            volume = flow_avg * seconds / (1000 if self.water else 1)
        items = []
        for i, f in enumerate(self.factors):
            code = self.code(f)
            values = [self.value(i, m) for m in moments]
            avg = sum(values) / n
            fields = []
            if f.kind == "flow" and volume is not None:
                fields.append(("Cou", f"{volume:.1f}"))
            elif f.kind == "pollutant" and volume is not None:
                fields.append(("Cou", f"{avg * volume * (1e-3 if self.water else 1e-6):.3f}"))
            fields += [
                ("Min", self._fmt(i, min(values))),
                ("Avg", self._fmt(i, avg)),
                ("Max", self._fmt(i, max(values))),
            ]
            if f.corrected:
                fields.append(("ZsAvg", self._fmt(i, avg * zs)))
            fields.append(("Flag", self._rollup([self.flag(i, m) for m in moments])))
            items.append(",".join(f"{code}-{k}={v}" for k, v in fields))
        return items

    def _rollup(self, flags: list[str]) -> str:
        """HJ 212-2017 §10: water, any abnormal value marks the period; flue gas, <75 % normal is D."""
        abnormal = [f for f in flags if f != "N"]
        if not abnormal:
            return "N"
        if self.water:
            return Counter(abnormal).most_common(1)[0][0]
        return "D" if len(abnormal) / len(flags) > 1 - _FLUE_GAS_VALID_FRACTION else "N"

    def parameter_cps(self, local: datetime) -> list[str]:
        """3020 instrument parameters, one packet per factor (a packet names one PolId), each a
        second after the previous (one stored key per DataTime and code): the range i13001 is
        `0-R` with R ten times the limit (or the base), doubled while a parameter_change is active."""
        cps: list[str] = []
        for f in self.factors:
            if not self.scenarios.uploads_parameters(f.code):
                continue
            changed = self.scenarios.parameters_changed(f.code, self.sim_of(local))
            top = round((f.limit or f.base) * 10) * (2 if changed else 1)
            moment = local + timedelta(seconds=len(cps))
            cps.append(f"DataTime={format_hj_time(moment)};PolId={self.code(f)};i13001-Info=0-{top}")
        return cps

    def status_cp(self, local: datetime) -> str | None:
        """3020 instrument state (i12001) if some instrument is in an episode at `local`, else None."""
        states = {"M": 1, "D": 2, "C": 3}
        for i, f in enumerate(self.factors):
            letter = self.flag(i, local)
            if letter in states:
                return f"DataTime={format_hj_time(local)};PolId={self.code(f)};i12001-Info={states[letter]}"
        return None
