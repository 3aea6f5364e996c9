"""The quiet check of one (MN, CN) plan: "this packet can fire nothing", decided without the rules.

`PacketRules` asks it first for every live packet newer than the plan's last one; only when it
says no do the full rules run, value by value. It says yes when every flag is N, no series is
`hot` (nothing firing, counting or in a flag episode), and every value differs from the previous
one as sent and lies inside its series' quiet window. The window check avoids float parsing where
it can: a value written as plain decimal digits with a dot and a first digit 1–9 lies in the
decade given by the dot's position ([10, 100) for `35.123`), and two values of one decade are
less than 10 times apart, so a decade wholly inside the series' static window, with a jump
factor of at least 10, makes every value of that decade quiet. The packet's texts are joined and
their shape (each digit as 9: `99.999;9.99`) compared with the shape armed: a few C-level
passes. Values outside such a decade (below 1, negative, exponents, O2 near its dilution level,
a range or jump factor that does not fit) are parsed and checked one by one. The series are updated lazily
(`sync`) when the full rules run.
Imports rules.anomalies only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from operator import eq, itemgetter
from typing import Any

from hj212gw.rules.anomalies import INF, Series

# Every byte to its class: digits to 9, "." ";" and the flag N kept, anything else (-, e, D, …) to x.
SHAPE = bytes(57 if 48 <= b <= 57 else b if b in b".;N" else 120 for b in range(256))


def _getter(keys: list[str]) -> Callable[[Mapping[str, str]], tuple[str, ...]]:
    if len(keys) == 1:
        key = keys[0]
        return lambda fields: (fields[key],)
    getter: Any = itemgetter(*keys)
    return getter  # type: ignore[no-any-return]


MARGIN = 1.1  # a value this close to its decade's ends is checked as a number (it may cross soon)


def decade_mode(series: Series, shape: bytes) -> bool:
    """Whether every plain-decimal value of `series`'s current decade is quiet (`shape` its text's)."""
    value, text = series.last, series.last_text
    dot = shape.find(b".")
    if value is None or not text or dot < 1 or text[0] == "0" or shape.count(b"9") != len(shape) - 1:
        return False
    low, high = 10.0 ** (dot - 1), 10.0**dot
    if not low * MARGIN <= value <= high / MARGIN:
        return False
    return not series.judged or (series.k >= 10 and series.lo < low and high <= series.hi)


class QuietCheck:
    """The fast path of one plan: built from its series when they are all quiet, else inactive."""

    __slots__ = (
        "active",
        "decade_series",
        "high",
        "low",
        "modes",
        "n_flags",
        "numbers",
        "numeric",
        "numeric_texts",
        "numeric_values",
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
        modes = tuple(map(decade_mode, series, shapes))
        numeric = [s for s, mode in zip(series, modes, strict=True) if not mode]
        if any(s.last is None or s.last <= 0 for s in numeric):
            return  # the ratio test needs a positive previous value
        if modes != self.modes:
            self._layout(series, modes, numeric)
        self.values = tuple(text for text, mode in zip(texts, modes, strict=True) if mode)
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

    def _layout(self, series: list[Series], modes: tuple[bool, ...], numeric: list[Series]) -> None:
        self.modes = modes
        self.decade_series = [s for s, mode in zip(series, modes, strict=True) if mode]
        self.numeric = numeric
        # One lookup for every flag (first) and every decade value: the shape check covers both.
        self.texts = _getter([s.flag_key for s in series] + [s.value_key for s in self.decade_series])
        self.n_flags = len(series)
        self.numbers = _getter([s.value_key for s in numeric]) if numeric else None

    def accept(self, fields: Mapping[str, str], at: datetime) -> bool:
        """Whether the packet can fire nothing; if so, it is recorded as the series' new values.

        Raises:
            KeyError: a field of the plan is missing (the caller rebuilds the plan).
        """
        got = self.texts(fields)
        joined = ";".join(got)
        # Every flag N, and the values of the same digits-and-dot shape as those armed (so of the
        # same decade), none with a leading 0.
        if ";0" in joined or joined.encode(errors="replace").translate(SHAPE) != self.shape:
            return False
        texts = got[self.n_flags :]
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
        for s, text in zip(self.decade_series, self.values, strict=True):
            s.last_text, s.normal_t, s.repeat, s.run_start = text, at, 1, at
            s.rebaseline(float(text))
        for s, text, value in zip(self.numeric, self.numeric_texts, self.numeric_values, strict=True):
            s.last_text, s.normal_t, s.repeat, s.run_start = text, at, 1, at
            s.rebaseline(value)
