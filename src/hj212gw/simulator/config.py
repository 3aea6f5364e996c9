"""Configuration of a simulation run: `SimConfig` (the run) and `DeviceSpec` (one DAS).

Loaded from CLI flags, optionally on top of a TOML or JSON file with a `[simulation]` table and
`[[scenario]]` tables (see scenarios.py). MNs are deterministic from the seed and the device
index, so two runs with the same seed talk about the same sites.
"""

import hashlib
import json
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hj212gw.protocol.constants import ProtocolVersion
from hj212gw.simulator.profiles import FactorProfile, profile_for
from hj212gw.simulator.scenarios import Scenario, parse_scenario

VERSION_LABELS = {"2005": ProtocolVersion.HJT212_2005, "2017": ProtocolVersion.HJ212_2017,
                  "2025": ProtocolVersion.HJ212_2025}  # fmt: skip
MIN_INTERVALS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)  # HJ 212-2017 §6.1 MinInterval


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """Everything fixed about one simulated DAS."""

    index: int
    mn: str
    pw: str
    st: str
    version: ProtocolVersion
    factors: tuple[FactorProfile, ...]
    seed: int
    tz: ZoneInfo
    rtd_interval_s: int = 30
    min_interval_min: int = 10
    uploads: frozenset[str] = frozenset({"2011", "2051", "2061", "2031"})
    ack: bool = True
    over_time_s: float = 10.0
    re_count: int = 3
    window: int = 8
    max_unacked: int = 5000
    history_days: int = 7
    heartbeat_s: float = 60.0  # network seconds of silence before a 2025 heartbeat
    status_rate: float = 0.05  # chance per hour of a 3020 state upload without an episode
    episode_rate: float = 0.02  # chance per hour of an M/C/D flag episode


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A simulation run. `speed` > 1 runs a virtual clock (1440: a day per minute)."""

    target: str = "127.0.0.1:9212"
    count: int = 10
    seed: int = 1
    versions: Mapping[str, float] = field(default_factory=lambda: {"2017": 1.0})
    kinds: Mapping[str, float] = field(default_factory=lambda: {"31": 0.5, "32": 0.5})
    duration_s: float | None = 60.0  # real seconds; None: until cancelled
    sim_duration_s: float | None = None  # stop after this much simulated time instead
    speed: float = 1.0
    start: str | None = None  # simulated start, ISO 8601; default now
    ramp: float = 0.0  # connects per second; 0 = all at once
    tz: str = "Asia/Shanghai"
    rtd_interval_s: int = 30
    min_interval_min: int = 10
    uploads: tuple[str, ...] = ("2011", "2051", "2061", "2031")
    ack: bool = True
    over_time_s: float = 10.0
    re_count: int = 3
    window: int = 8
    max_unacked: int = 5000
    heartbeat_s: float = 60.0
    episode_rate: float = 0.02
    pw: str = "123456"
    factors_air: tuple[str, ...] = ()
    factors_water: tuple[str, ...] = ()
    scenarios: tuple[Scenario, ...] = ()
    progress_s: float = 5.0
    drain_s: float = 2.0  # after the end, wait this long for outstanding acks
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 30.0

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"target must be HOST:PORT, not {self.target!r}")
        return host.strip("[]"), int(port)


def parse_ratio(text: str, allowed: Mapping[str, object] | None = None) -> dict[str, float]:
    """`2017=0.8,2025=0.15,2005=0.05` -> {"2017": 0.8, …}, normalised to sum 1.

    Raises:
        ValueError: a malformed item, an unknown key or no positive weight.
    """
    weights: dict[str, float] = {}
    for item in text.split(","):
        key, eq, value = item.strip().partition("=")
        if not eq:
            weights[key] = 1.0
            continue
        if allowed is not None and key not in allowed:
            raise ValueError(f"{key!r} is not one of {sorted(allowed)}")
        weights[key] = float(value)
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        raise ValueError(f"no positive weight in {text!r}")
    return {k: w / total for k, w in weights.items() if w > 0}


def make_mn(seed: int, index: int) -> str:
    """A 24-hex-character MN, the same for the same (seed, index)."""
    return hashlib.sha256(f"hj212gw-sim:{seed}:{index}".encode()).hexdigest()[:24].upper()


def _pick(weights: Mapping[str, float], index: int, count: int) -> str:
    """Deterministic, proportional assignment: device `index` of `count` by cumulative share."""
    position = (index + 0.5) / count
    cumulative = 0.0
    for key, weight in weights.items():
        cumulative += weight
        if position < cumulative:
            return key
    return list(weights)[-1]


def device_specs(config: SimConfig) -> list[DeviceSpec]:
    """One spec per device: versions and site kinds spread by ratio, shuffled by the seed."""
    rng = random.Random(config.seed)
    order = list(range(config.count))
    rng.shuffle(order)
    tz = ZoneInfo(config.tz)
    specs = []
    for index in range(config.count):
        slot = order[index]
        version = VERSION_LABELS[_pick(config.versions, slot, config.count)]
        st = _pick(config.kinds, (slot * 7919) % config.count, config.count)
        codes = config.factors_air if st == "31" else config.factors_water
        specs.append(
            DeviceSpec(
                index=index,
                mn=make_mn(config.seed, index),
                pw=config.pw,
                st=st,
                version=version,
                factors=profile_for(st, codes or None),
                seed=config.seed * 1_000_003 + index,
                tz=tz,
                rtd_interval_s=config.rtd_interval_s,
                min_interval_min=config.min_interval_min,
                uploads=frozenset(config.uploads),
                ack=config.ack,
                over_time_s=config.over_time_s,
                re_count=config.re_count,
                window=config.window,
                max_unacked=config.max_unacked,
                heartbeat_s=config.heartbeat_s,
                episode_rate=config.episode_rate,
            )
        )
    return specs


def load_file(path: Path) -> tuple[dict[str, Any], tuple[Scenario, ...]]:
    """The `[simulation]` table and the scenarios of a TOML or JSON file.

    Raises:
        ValueError: unknown settings or bad scenarios.
    """
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    settings = dict(data.get("simulation", {}))
    known = {f.name for f in fields(SimConfig)} - {"scenarios"}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"unknown [simulation] keys {sorted(unknown)}")
    raw = data.get("scenario", data.get("scenarios", []))
    return settings, tuple(parse_scenario(s) for s in raw)


def with_overrides(config: SimConfig, **changes: Any) -> SimConfig:
    """`config` with the given fields changed; list values become tuples."""
    clean: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    return replace(config, **clean)
