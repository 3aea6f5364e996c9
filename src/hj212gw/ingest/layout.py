"""Compiled row encoders for the field layouts devices repeat: one `struct` call per packet.

A DAS sends the same CP field names in the same order packet after packet (its configured
factors and their Min/Avg/Max/Cou/Flag), so the work of mapping names to columns is done once
per layout and cached. A compiled `RowLayout` turns the values of one packet into all its
encoded `data` rows (storage.pgcopy's binary COPY format) with one `float()` per number, one
`itemgetter` and one `struct.pack`.

Only the common case is compiled: every `code-Suffix` field has a number or Flag/EFlag suffix
(fields without a code, like DataTime, are not rows). Layouts with other suffixes (SampleTime,
vendor fields, which go to `extra`) are not, and `encode` refuses a packet whose numbers are
not all finite numbers: those take the general encoder in hj212gw.ingest.rows, which defines the
result. Tests hold the two byte-identical.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, Final

from hj212gw.storage import pgcopy
from hj212gw.storage.columns import NUMBER_COLUMNS, TEXT_VALUE_COLUMNS, VALUE_COLUMNS

# The HJ 212 field suffixes with a `data` column of their own; every other suffix goes to `extra`.
SUFFIX_COLUMNS: Final = {
    "Rtd": "rtd", "Min": "min", "Avg": "avg", "Max": "max", "Cou": "cou",
    "ZsRtd": "zs_rtd", "ZsMin": "zs_min", "ZsAvg": "zs_avg", "ZsMax": "zs_max",
    "Flag": "flag", "EFlag": "eflag", "SampleTime": "sample_time",
}  # fmt: skip
_COLUMN_SUFFIXES: Final = {column: suffix for suffix, column in SUFFIX_COLUMNS.items()}
# In column order (storage.columns.VALUE_COLUMNS): the numbers, then the texts.
NUMBER_SUFFIXES: Final = tuple(_COLUMN_SUFFIXES[column] for column in NUMBER_COLUMNS)
TEXT_SUFFIXES: Final = tuple(_COLUMN_SUFFIXES[column] for column in TEXT_VALUE_COLUMNS)
# sample_time, extra: NULL in every compiled row
_TRAILING_NULLS: Final = pgcopy.NULL * (len(VALUE_COLUMNS) - len(NUMBER_COLUMNS) - len(TEXT_VALUE_COLUMNS))
_FLOAT8_LENGTH: Final = struct.pack(">i", 8)
_MAX_STRUCTS = 16  # per layout: one per (head length, text lengths) actually seen
_MAX_LAYOUTS = 1024  # layouts come from devices: a misbehaving one must not grow the cache forever

FactorColumns = Callable[[str], bytes]


def _getter(positions: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """`itemgetter` that always returns a tuple (itemgetter of one index returns the item)."""
    if len(positions) == 1:
        (only,) = positions
        return lambda values: (values[only],)
    if not positions:
        return lambda values: ()
    return itemgetter(*positions)


class RowLayout:
    """The encoder of one field-name layout. `encode` gives the rows' bytes, or None if a number
    field does not hold a finite number (the general encoder then keeps it as text)."""

    __slots__ = ("_args", "_consts", "_numbers", "_pieces", "_structs", "_texts", "rows")

    def __init__(self, names: Sequence[str], factor_columns: FactorColumns) -> None:
        factors: dict[str, dict[str, int]] = {}
        for position, name in enumerate(names):
            code, dash, suffix = name.partition("-")
            if dash:  # DataTime and other packet-level fields have no code
                factors.setdefault(code, {})[suffix] = position
        numbers: list[int] = []
        texts: list[int] = []
        # Pieces of the struct format, in byte order: ("head",), ("const", bytes), ("number", i),
        # ("text", i) for the i-th text's length and bytes.
        pieces: list[tuple[str, int]] = []
        consts: list[bytes] = []
        pending = b""

        def flush() -> None:
            nonlocal pending
            if pending:
                pieces.append(("const", len(consts)))
                consts.append(pending)
                pending = b""

        for code, suffixes in factors.items():
            flush()
            pieces.append(("head", 0))
            pending = factor_columns(code)
            for suffix in NUMBER_SUFFIXES:
                if suffix in suffixes:
                    pending += _FLOAT8_LENGTH
                    flush()
                    pieces.append(("number", len(numbers)))
                    numbers.append(suffixes[suffix])
                else:
                    pending += pgcopy.NULL
            for suffix in TEXT_SUFFIXES:
                if suffix in suffixes:
                    flush()
                    pieces.append(("text", len(texts)))
                    texts.append(suffixes[suffix])
                else:
                    pending += pgcopy.NULL
            pending += _TRAILING_NULLS
        flush()
        self.rows = len(factors)
        self._numbers = _getter(numbers)
        self._texts = _getter(texts)
        self._pieces = tuple(pieces)
        self._consts = tuple(consts)
        # The struct's arguments come from one list: consts, head, numbers, texts, text lengths.
        n_consts, n_numbers, n_texts = len(consts), len(numbers), len(texts)
        index: list[int] = []
        for kind, i in pieces:
            if kind == "const":
                index.append(i)
            elif kind == "head":
                index.append(n_consts)
            elif kind == "number":
                index.append(n_consts + 1 + i)
            else:
                index += (n_consts + 1 + n_numbers + n_texts + i, n_consts + 1 + n_numbers + i)
        self._args = _getter(index)
        self._structs: dict[tuple[int, tuple[int, ...]], Callable[..., bytes]] = {}

    def encode(self, values: Sequence[str], head: bytes) -> bytes | None:
        """The rows of one packet whose field values (in layout order) are `values`.

        `head` is the packet's own columns (pgcopy.row_head). None if a number field holds no
        finite number.
        """
        try:
            numbers = list(map(float, self._numbers(values)))
        except ValueError:
            return None
        total = sum(numbers)
        if total - total != 0.0:  # NaN or an infinity among them (or a finite sum that overflowed)
            return None
        texts = [text.encode() for text in self._texts(values)]
        lengths = tuple(map(len, texts))
        key = (len(head), lengths)
        pack = self._structs.get(key)
        if pack is None:
            pack = self._compile(len(head), lengths)
        return pack(*self._args([*self._consts, head, *numbers, *texts, *lengths]))

    def _compile(self, head_length: int, lengths: tuple[int, ...]) -> Callable[..., bytes]:
        fmt = [">"]
        for kind, i in self._pieces:
            if kind == "const":
                fmt.append(f"{len(self._consts[i])}s")
            elif kind == "head":
                fmt.append(f"{head_length}s")
            elif kind == "number":
                fmt.append("d")
            else:
                fmt.append(f"i{lengths[i]}s")
        pack = struct.Struct("".join(fmt)).pack
        if len(self._structs) < _MAX_STRUCTS:
            self._structs[(head_length, lengths)] = pack
        return pack


_COMPILABLE: Final = frozenset(NUMBER_SUFFIXES + TEXT_SUFFIXES)
_LAYOUTS: dict[tuple[str, ...], RowLayout | None] = {}


def layout_of(names: tuple[str, ...], factor_columns: FactorColumns) -> RowLayout | None:
    """The compiled layout for these field names, or None if they need the general encoder."""
    try:
        return _LAYOUTS[names]
    except KeyError:
        pass
    layout = None
    if all(not dash or suffix in _COMPILABLE for _, dash, suffix in (name.partition("-") for name in names)):
        layout = RowLayout(names, factor_columns)
    if len(_LAYOUTS) < _MAX_LAYOUTS:
        _LAYOUTS[names] = layout
    return layout
