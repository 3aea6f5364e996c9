"""The quiet check of one (MN, CN) plan: "this packet can fire nothing", decided without the rules.

`PacketRules` asks it first for every live packet newer than the plan's last one; only when it
says no do the full rules run, value by value. It says yes when every flag is N, no series is
`hot` (nothing firing, counting or in a flag episode), and every value differs from the previous
one as sent and lies inside its series' quiet band. The band check avoids float parsing: texts of
one shape (each digit as 9: `99.999`) compare as text exactly as they compare as numbers, so a
value is checked against bounds written in its armed shape (`12.500 <= v <= 99.999`). The band
of a series is its static window (no zero, in range, O2 under the dilution level) and, for the
jump rule, [v / √k, v · √k] around the value it was armed with (two values of it are less than k
times apart). The packet's flags and band values are fetched in one lookup, joined, their shape
compared with the one armed (one byte translation), then bounds and repeats compared: a few
C-level passes. A value whose whole decade is quiet (jump factor >= 10, the decade inside the
window) needs no bounds: the same shape without a leading 0 is enough; the others (O2 under its
dilution level, a range) are bounded. A value just under where its shape would change (9.9 →
10.0: the shape check would fail at each crossing) or not a plain decimal is parsed and checked
one by one; one just above 10**(digits - 1) is not (falling under it costs one miss, after which
the full rules re-arm it as a parsed value). The series are updated lazily
(`sync`) when the full rules run.
Imports rules.anomalies only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from operator import eq, itemgetter, le
from sys import intern
from typing import Any

from hj212gw.rules.anomalies import INF, Series

# Every byte to its class: digits to 9, "." ";" and the flag N kept, anything else (-, e, D, …) to x.
SHAPE = bytes(57 if 48 <= b <= 57 else b if b in b".;N" else 120 for b in range(256))


@lru_cache(maxsize=4096)
def _getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, str]], tuple[str, ...]]:
    """One getter per layout, shared by every plan of that layout (it stays in the CPU cache)."""
    if len(keys) == 1:
        key = keys[0]
        return lambda fields: (fields[key],)
    getter: Any = itemgetter(*keys)
    return getter  # type: ignore[no-any-return]


def _picker(indices: list[int]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """The items of a tuple at these indices, always as a tuple."""
    if len(indices) == 1:
        index = indices[0]
        return lambda texts: (texts[index],)
    getter: Any = itemgetter(*indices)
    return getter  # type: ignore[no-any-return]


MARGIN = 1.1  # a value this close to where its shape changes is checked as a number


def whole_decade(series: Series, shape: bytes) -> bool:
    """Whether every value of the series' current decade is quiet: then the same shape with no
    leading 0 (the same decade, values less than 10 times apart) is enough, with no bounds."""
    value, text, dot = series.last, series.last_text, shape.find(b".")
    if value is None or not text or dot < 1 or text[0] == "0":
        return False
    low, high = 10.0 ** (dot - 1), 10.0**dot
    if not low <= value <= high / MARGIN:
        return False
    return not series.judged or (series.k >= 10 and series.lo < low and high <= series.hi)


def _digits(text: str, shape: bytes) -> tuple[int, int] | None:
    """(integer digits, decimals) of a plain decimal text, None for any other text."""
    if shape.strip(b"9.") or shape.count(b".") > 1:
        return None
    dot = shape.find(b".")
    return (len(text), 0) if dot < 0 else (dot, len(text) - dot - 1)


def in_band(series: Series, shape: bytes, floor_margin: float = 1.0) -> bool:
    """Whether the series' last text is a plain decimal > 0 not just under a change of its shape
    (at 10**digits), and above 10**(digits - 1) times `floor_margin`. `arm` lets a value just
    above 10**(digits - 1) in (margin 1) unless it was parsed at the previous arm: a value
    falling under it fails the shape check once and is parsed from then on while it hovers
    there, so a crossing costs one miss, not one per packet or per re-arm."""
    value, text = series.last, series.last_text
    if value is None or not text or value <= 0:
        return False
    found = _digits(text, shape)
    if found is None:
        return False
    top, floor = 10.0 ** found[0], (10.0 ** (found[0] - 1) if found[0] > 1 else 0.0)
    return value * MARGIN < top and value > floor * floor_margin


def band(series: Series, shape: bytes) -> tuple[str, str] | None:
    """Text bounds, in the shape of the series' last text (`in_band`), of the values that fire
    nothing; None when its value is not strictly inside them."""
    value, text, found = series.last, series.last_text or "", _digits(series.last_text or "", shape)
    if value is None or found is None:
        return None
    digits, decimals = found
    low = max(10.0 ** (digits - 1) if digits > 1 else 0.0, series.lo)
    high = min(10.0**digits, series.hi)
    if series.judged:
        root = series.k**0.5 * (1 - 1e-9)  # strictly inside: two values less than k times apart
        low, high = max(low, value / root), min(high, value * root)
    scale, width = 10**decimals, len(text)
    low_int, high_int = math.floor(low * scale) + 1, math.ceil(high * scale) - 1
    # Strictly inside as the rules see them (float of the text), whatever the rounding above.
    while float(_render(low_int, width, decimals)) <= low:
        low_int += 1
    while high_int >= low_int and float(_render(high_int, width, decimals)) >= high:
        high_int -= 1
    if not low_int <= round(value * scale) <= high_int:
        return None
    return _render(low_int, width, decimals), _render(high_int, width, decimals)


def _render(number: int, width: int, decimals: int) -> str:
    """An integer count of 10**-decimals as a zero-padded text of `width` (`1250, 6, 2` -> `012.50`)."""
    digits = str(number).rjust(width - (1 if decimals else 0), "0")
    return digits if not decimals else f"{digits[:-decimals]}.{digits[-decimals:]}"


class QuietCheck:
    """The fast path of one plan: built from its series when they are all quiet, else inactive."""

    __slots__ = (
        "active",
        "band_series",
        "bounded",
        "high",
        "highs",
        "low",
        "lows",
        "modes",
        "n_flags",
        "no_leading_0",
        "numbers",
        "numeric",
        "numeric_texts",
        "numeric_values",
        "pick",
        "quiet_t",
        "ratio_high",
        "ratio_low",
        "shape",
        "texts",
        "values",
    )

    def __init__(self) -> None:
        self.active = False
        self.modes: tuple[bool, ...] = ()
        self.quiet_t: datetime | None = None  # the newest DataTime accepted here (the series lag)

    def arm(self, series: list[Series]) -> None:
        """Activate for these series (all not hot, each with a last value), or stay inactive."""
        self.active = False
        if not series or any(s.hot or s.last_text is None for s in series):
            return
        texts = [s.last_text or "" for s in series]
        shapes = ";".join(texts).encode(errors="replace").translate(SHAPE).split(b";")
        if len(shapes) != len(series):
            return  # a ";" inside a value
        modes = tuple(map(in_band, series, shapes))
        if len(self.modes) == len(modes):  # parsed last time: parsed while it hovers above its floor
            modes = tuple(
                mode and (was or in_band(s, shape, MARGIN))
                for mode, was, s, shape in zip(modes, self.modes, series, shapes, strict=True)
            )
        numeric = [s for s, mode in zip(series, modes, strict=True) if not mode]
        if any(s.last is None or s.last <= 0 for s in numeric):
            return  # the ratio test needs a positive previous value
        if modes != self.modes:
            self._layout(series, modes, numeric)
        self.values = tuple(text for text, mode in zip(texts, modes, strict=True) if mode)
        band_shapes = [shape for shape, mode in zip(shapes, modes, strict=True) if mode]
        if not self._bound(band_shapes):
            return
        self.shape = ";".join(("N",) * len(series) + self.values).encode().translate(SHAPE)
        # Windows may have changed since the layout (an i13001 range uploaded): taken anew.
        self.low = [s.lo for s in numeric]
        self.high = [s.hi for s in numeric]
        self.ratio_low = max((1 / s.k for s in numeric), default=0.0)
        self.ratio_high = min((s.k for s in numeric), default=INF)
        self.numeric_texts = tuple(s.last_text or "" for s in numeric)
        self.numeric_values = [s.last or 0.0 for s in numeric]
        self.quiet_t = None
        self.active = True

    def _bound(self, band_shapes: list[bytes]) -> bool:
        """Text bounds for the band values whose whole decade is not quiet (they take a few µs at
        arm and a pass per packet), the others checked by shape and `no_leading_0` only. When a
        bounded value has a leading 0 ("0.123"), the ";0" test cannot serve: every value bounded."""
        decade = list(map(whole_decade, self.band_series, band_shapes))
        self.no_leading_0 = not any(text[0] == "0" for text in self.values)
        picked = [i for i, whole in enumerate(decade) if not whole or not self.no_leading_0]
        self.bounded = bool(picked)
        if not picked:
            return True
        bounds = [band(self.band_series[i], band_shapes[i]) for i in picked]
        if any(bound is None for bound in bounds):
            return False
        # Interned: devices with the same bounds share them (they stay in the CPU cache).
        self.lows = [intern(bound[0]) for bound in bounds if bound is not None]
        self.highs = [intern(bound[1]) for bound in bounds if bound is not None]
        self.pick = _picker(picked)
        return True

    def _layout(self, series: list[Series], modes: tuple[bool, ...], numeric: list[Series]) -> None:
        self.modes = modes
        self.band_series = [s for s, mode in zip(series, modes, strict=True) if mode]
        self.numeric = numeric
        # One lookup for every flag (first) and every band value: the shape check covers both.
        self.texts = _getter(tuple([s.flag_key for s in series] + [s.value_key for s in self.band_series]))
        self.n_flags = len(series)
        self.numbers = _getter(tuple(s.value_key for s in numeric)) if numeric else None

    def accept(self, fields: Mapping[str, str], at: datetime) -> bool:
        """Whether the packet can fire nothing; if so, it is recorded as the series' new values.

        Raises:
            KeyError: a field of the plan is missing (the caller rebuilds the plan).
        """
        got = self.texts(fields)
        joined = ";".join(got)
        # Every flag N, and the values of the digits-and-dot shape armed (so bounds compare as text).
        if joined.encode(errors="replace").translate(SHAPE) != self.shape:
            return False
        texts = got[self.n_flags :]
        if self.no_leading_0 and ";0" in joined:
            return False  # a leading 0: another decade
        if self.bounded:
            picked = self.pick(texts)
            if not (all(map(le, self.lows, picked)) and all(map(le, picked, self.highs))):
                return False
        if any(map(eq, texts, self.values)):
            return False  # an unchanged value: the flatline count must see it
        if self.numbers is not None:
            numbers = self.numbers(fields)
            values = []
            low, high = self.ratio_low, self.ratio_high
            for text, lo, hi, last, last_text in zip(
                numbers, self.low, self.high, self.numeric_values, self.numeric_texts, strict=True
            ):
                try:
                    value = float(text)
                except ValueError:
                    return False
                # last > 0: inside (last / k, last * k) is no jump, and neither 0 nor negative.
                if not (lo < value < hi and last * low < value < last * high) or text == last_text:
                    return False
                values.append(value)
            self.numeric_texts, self.numeric_values = numbers, values
        self.values = texts
        self.quiet_t = at
        return True

    def sync(self) -> None:
        """Bring the series up to the values accepted here, before the full rules run."""
        if not self.active:
            return
        self.active = False
        at = self.quiet_t
        if at is None:
            return
        for s, text in zip(self.band_series, self.values, strict=True):
            s.last_text, s.normal_t, s.repeat, s.run_start = text, at, 1, at
            s.rebaseline(float(text))
        for s, text, value in zip(self.numeric, self.numeric_texts, self.numeric_values, strict=True):
            s.last_text, s.normal_t, s.repeat, s.run_start = text, at, 1, at
            s.rebaseline(value)
