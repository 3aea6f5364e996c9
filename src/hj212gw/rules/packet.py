"""`PacketRules`: every per-packet rule on one stored sample -> alert changes (pure, stateful).

Runs for every stored packet (thousands per second), so each (MN, CN) keeps a plan: the series
of its factors with their field names and a quiet window. A value flagged N that differs from the
previous one and lies inside the window can fire nothing (its series is not `hot`: nothing firing
or counting), and costs a few comparisons; everything else takes the full rules (flags.py,
anomalies.py, limits.py; 3020 parameters in changes.py). A plan is rebuilt when the packet's
number of fields changes or one of its factors is missing.

State is bounded: at most `max_factors_per_device` factors per MN (more are not judged and are
counted in `dropped_factors`); parameters per factor are capped in changes.py. The number of MNs
is the registry's. A key seen for the first time gets one Clear (rules/model.py), only from live
data. Imports rules.model and the rule modules only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from hj212gw.rules.anomalies import Series, judge
from hj212gw.rules.changes import RANGE_CODE, instrument_parameters, parameter_changes, parse_range, value_revised
from hj212gw.rules.fastpath import QuietCheck
from hj212gw.rules.flags import FactorFlags
from hj212gw.rules.limits import LimitState
from hj212gw.rules.model import AlertChange, AlertKey, Clear, Sample, ValueRevised
from hj212gw.rules.thresholds import Thresholds

VALUE_SUFFIX = {"2011": "Rtd", "2051": "Avg", "2061": "Avg", "2031": "Avg"}
EMPTY: list[AlertChange] = []
NEVER = datetime.min.replace(tzinfo=UTC)
Entry = tuple[Series, "FactorState"]


class FactorState:
    """What is known of one (MN, factor) across CNs: flags, limit state, uploaded parameters."""

    __slots__ = ("announced", "flags", "limit", "parameters", "series", "value_range")

    def __init__(self) -> None:
        self.announced = False  # its first-seen Clears went out (on its first live data)
        self.flags = FactorFlags()
        self.limit = LimitState()
        self.parameters: dict[str, str] = {}
        self.value_range: tuple[float | None, float | None] | None = None
        self.series: list[Series] = []


class Plan:
    __slots__ = ("cn", "entries", "last_t", "n_fields", "quiet")

    def __init__(self, cn: str, n_fields: int) -> None:
        self.cn = cn
        self.n_fields = n_fields
        self.entries: list[Entry] = []
        self.last_t = NEVER  # the newest DataTime of this (MN, CN) judged
        self.quiet = QuietCheck()


class Device:
    __slots__ = ("factors", "plans")

    def __init__(self) -> None:
        self.factors: dict[str, FactorState] = {}
        self.plans: dict[str, Plan] = {}

    def disarm(self) -> None:
        """Every plan's fast path off, its series brought up to date (something became hot)."""
        for plan in self.plans.values():
            plan.quiet.sync()


class PacketRules:
    """Per-packet rules for all devices of this replica. Not thread-safe: one caller at a time."""

    def __init__(self, thresholds: Thresholds, *, max_factors_per_device: int = 256, fast_path: bool = True) -> None:
        self._thresholds = thresholds
        self.fast_path = fast_path  # off: every value through the full rules (tests compare both)
        self.max_factors_per_device = max_factors_per_device
        self.dropped_factors = 0  # factor series not judged because of the cap (for a metric)
        self._devices: dict[str, Device] = {}

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    @thresholds.setter
    def thresholds(self, new: Thresholds) -> None:
        """Swap the thresholds (a reload): plans are rebuilt with them, state is kept."""
        if new.version != self._thresholds.version:
            self._thresholds = new
            for device in self._devices.values():
                device.disarm()
                device.plans.clear()

    def forget(self, mn: str) -> None:
        """Drop what the rules hold of `mn` (it left this replica: another one judges it now)."""
        self._devices.pop(mn, None)

    @property
    def devices(self) -> int:
        return len(self._devices)

    def on_revised(self, event: ValueRevised) -> list[AlertChange]:
        """A resent value differing from the stored one -> `value_revised` (fired and cleared)."""
        return value_revised(event)

    def on_sample(self, sample: Sample) -> list[AlertChange]:
        """The changes one committed packet makes (usually none: an empty list)."""
        changes = self._judge(sample)
        return _without_cleared_then_fired(changes) if len(changes) > 1 else changes

    def _judge(self, sample: Sample) -> list[AlertChange]:
        device = self._devices.get(sample.mn)
        if device is None:
            device = self._devices[sample.mn] = Device()
        fields = sample.fields
        plan = device.plans.get(sample.cn)
        changes = EMPTY
        if plan is None or plan.n_fields != len(fields):
            if sample.cn not in VALUE_SUFFIX:
                return self._parameters(device, sample) if sample.cn == "3020" and not sample.backfill else []
            plan, changes = self._plan(device, sample)
        at = sample.data_time
        if sample.backfill or at <= plan.last_t:
            plan.quiet.sync()
            return self._slow_all(device, plan, sample, changes)
        if plan.quiet.active:
            try:
                if plan.quiet.accept(fields, at):
                    plan.last_t = at
                    return changes or []  # a new list: callers may keep it
            except KeyError:
                plan.quiet.sync()
                plan, more = self._plan(device, sample)
                changes = [*changes, *more]
            plan.quiet.sync()
        if any(entry[0].value_key not in fields for entry in plan.entries):
            plan, more = self._plan(device, sample)  # the same number of fields, other factors
            changes = [*changes, *more]
        plan.last_t = at
        changes = self._each(device, plan, sample, changes)
        if self.fast_path:
            plan.quiet.arm([entry[0] for entry in plan.entries])
        return changes or []  # a new list: callers may keep it

    def _each(self, device: Device, plan: Plan, sample: Sample, changes: list[AlertChange]) -> list[AlertChange]:
        """The rules value by value, skipping those that can fire nothing (a live, newer packet)."""
        get, at = sample.fields.get, sample.data_time
        for entry in plan.entries:
            series = entry[0]
            text = get(series.value_key)
            if (
                self.fast_path and not series.hot and text is not None and text != series.last_text
                and get(series.flag_key, "N") == "N"
            ):  # fmt: skip
                try:
                    value = float(text)
                except ValueError:
                    value = series.lo
                if series.lo < value < series.hi and series.jlo < value < series.jhi:
                    series.last_text, series.normal_t, series.repeat, series.run_start = text, at, 1, at
                    series.rebaseline(value)
                    continue
            if text is None:
                plan.n_fields = -1  # a factor went missing: rebuild the plan next time
            more = self._slow(device, sample, entry, text, True)
            if more:
                changes = more if changes is EMPTY else [*changes, *more]
        return changes

    def _slow_all(self, device: Device, plan: Plan, sample: Sample, changes: list[AlertChange]) -> list[AlertChange]:
        """Backfilled or older data: flags and limits of newer data only, no series reset."""
        newer = sample.data_time > plan.last_t
        if newer:
            plan.last_t = sample.data_time
        out = list(changes)
        for entry in plan.entries:
            out.extend(self._slow(device, sample, entry, sample.fields.get(entry[0].value_key), newer))
        if self.fast_path:
            plan.quiet.arm([entry[0] for entry in plan.entries])
        return out

    def _slow(self, device: Device, sample: Sample, entry: Entry, text: str | None, newer: bool) -> list[AlertChange]:
        """All the rules on one value (anything the fast path could not decide)."""
        series, state = entry
        flag = sample.fields.get(series.flag_key, "N")
        changes = self._flags(device, sample, entry, flag) if flag != "N" or state.flags.episodes else []
        if text is None or not newer:
            return changes
        value = _number(text)
        if value is None or flag != "N":
            series.rebaseline(None)
            series.last_text, series.repeat = None, 0
        else:
            series.normal_t = sample.data_time
            if series.judged:
                changes.extend(judge(series, sample.mn, sample.cn, value, text, sample.data_time, state.value_range,
                                     sample.fields))  # fmt: skip
            else:
                series.last_text = text
                series.rebaseline(value)
            changes.extend(self._limit(sample, entry))
        series.refresh_hot()
        series.hot = series.hot or bool(state.flags.episodes) or series.limit_judged
        return changes

    def _flags(self, device: Device, sample: Sample, entry: Entry, flag: str) -> list[AlertChange]:
        series, state = entry
        opened = not state.flags.episodes
        latest_normal = max((s.normal_t for s in state.series if s.normal_t is not None), default=None)
        changes = state.flags.observe(sample.mn, series.factor, flag, sample.data_time, series.limits, latest_normal)
        if opened and state.flags.episodes:
            device.disarm()  # N values of every CN must now reach the episode to end it
            for other in state.series:
                other.hot = True
        return changes

    def _limit(self, sample: Sample, entry: Entry) -> list[AlertChange]:
        series, state = entry
        if not series.limit_judged:
            return []
        statistic = series.zs_key if series.zs_key in sample.fields else series.value_key
        value = _number(sample.fields[statistic])
        if value is None:
            return []
        return state.limit.judge(sample.mn, series.factor, value, sample.data_time, series.limits, statistic)

    def _factor(self, device: Device, factor: str) -> FactorState | None:
        """The state of (MN, factor), created unless over the cap."""
        state = device.factors.get(factor)
        if state is None:
            if len(device.factors) >= self.max_factors_per_device:
                self.dropped_factors += 1
                return None
            state = device.factors[factor] = FactorState()
        return state

    def _announce(self, state: FactorState, sample: Sample, factor: str, out: list[AlertChange]) -> None:
        """The first-seen Clears of a factor's flag and limit keys, on its first live data."""
        if state.announced or sample.backfill:
            return
        state.announced = True
        limits = self._thresholds.for_factor(sample.mn, factor)
        out.extend(state.flags.first_clears(sample.mn, factor, sample.data_time, limits))
        if limits.limit is not None:
            out.extend(state.limit.first_clears(sample.mn, factor, sample.data_time))

    def _plan(self, device: Device, sample: Sample) -> tuple[Plan, list[AlertChange]]:
        """The plan of (MN, CN) for this packet's factors; first-seen Clears of new keys."""
        cn, mn, suffix = sample.cn, sample.mn, VALUE_SUFFIX[sample.cn]
        old = device.plans.get(cn)
        if old is not None:
            old.quiet.sync()
        plan = device.plans[cn] = Plan(cn, len(sample.fields))
        plan.last_t = old.last_t if old is not None else NEVER
        out: list[AlertChange] = []
        for factor in _factors(sample.fields, suffix):
            state = self._factor(device, factor)
            if state is None:
                continue
            self._announce(state, sample, factor, out)
            series = next((s for s in state.series if s.cn == cn), None)
            if series is None:
                series = Series(cn, factor, suffix)
                state.series.append(series)
                series.configure(self._thresholds.for_factor(mn, factor), state.value_range)
                if series.judged and not sample.backfill:
                    out.extend(Clear(AlertKey(rule, mn, factor, cn), sample.data_time) for rule in series.rules())
            else:
                series.configure(self._thresholds.for_factor(mn, factor), state.value_range)
            plan.entries.append((series, state))
        return plan, out

    def _parameters(self, device: Device, sample: Sample) -> list[AlertChange]:
        """A 3020 upload: changed i13xxx parameters; an i13001 range becomes the factor's range."""
        changes: list[AlertChange] = []
        for factor, code, text in instrument_parameters(sample.fields):
            state = self._factor(device, factor)
            if state is None:
                continue
            changes.extend(parameter_changes(state.parameters, sample.mn, factor, code, text, sample.data_time))
            if code == RANGE_CODE:
                device.disarm()
                state.value_range = parse_range(text)
                for series in state.series:
                    series.set_window(state.value_range)
        return changes


def _without_cleared_then_fired(changes: list[AlertChange]) -> list[AlertChange]:
    """One packet's changes without a Clear of a key the same packet fires afterwards.

    The first-seen Clears of a factor's keys come before the packet's own values are judged. A
    device whose first packet here still shows a condition (flagged D, over its limit), e.g. on
    the replica it just moved to, would otherwise resolve the alert that another replica raised
    for that condition, and raise a second one for it at once."""
    last_fire = {change.key: i for i, change in enumerate(changes) if not isinstance(change, Clear)}
    if not last_fire:
        return changes
    return [c for i, c in enumerate(changes) if not (isinstance(c, Clear) and last_fire.get(c.key, -1) > i)]


def _factors(fields: Mapping[str, str], suffix: str) -> list[str]:
    """The factor codes of a data packet that carry a value (`-Rtd`/`-Avg`) or a flag, in order."""
    codes: dict[str, None] = {}
    for name in fields:
        code, dash, rest = name.partition("-")
        if dash and (rest == suffix or rest == "Flag"):
            codes[code] = None
    return list(codes)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
