"""Packet -> storage rows: one data row per factor with its flags (binary COPY), the raw `FrameRow`, the sighting.

Pure apart from the zone arithmetic: HJ 212 times carry no zone, so DataTime is read in the
device's zone and stored as an aware UTC moment. A DataTime implausibly far from the receive
time is stored and marked `time_suspect`, never dropped.
"""

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from hj212gw.ingest.layout import SUFFIX_COLUMNS, layout_of
from hj212gw.protocol.cp import DataCp, SiteInfoCp
from hj212gw.protocol.factors import CODE_2005_TO_2017
from hj212gw.protocol.framing import Frame
from hj212gw.protocol.models import Packet, parse_hj_time
from hj212gw.storage import pgcopy
from hj212gw.storage.columns import NUMBER_COLUMNS, VALUE_COLUMNS
from hj212gw.storage.rows import DataBlock, DeviceSeen, FrameRow, month_of

# Per-factor suffixes with a column of their own, and its slot among a factor's values
# (storage.columns.VALUE_COLUMNS: the numbers first, then flag, eflag, sample_time, extra); every
# other field goes to extra.
_SLOTS = {suffix: VALUE_COLUMNS.index(column) for suffix, column in SUFFIX_COLUMNS.items()}
_FIRST_TEXT_SLOT = len(NUMBER_COLUMNS)  # a slot below it holds a number
_SAMPLE_TIME_SLOT = VALUE_COLUMNS.index("sample_time")
_EXTRA_SLOT = VALUE_COLUMNS.index("extra")
_NULL_VALUES = (pgcopy.NULL,) * _EXTRA_SLOT
_float8 = pgcopy.pack_float8
_FACTOR_CACHE: dict[str, bytes] = {}
_FACTOR_CACHE_SIZE = 4096  # codes come from devices: a misbehaving one must not grow it forever
_DATA_TIMES: dict[tuple[str | None, tzinfo], tuple[datetime, tuple[int, int]]] = {}
_DATA_TIME_CACHE_SIZE = 512
RAW_TRUNCATED = "raw_truncated"
"""In raw_frames.tolerances: the row keeps only the first FrameLimits.window bytes of a reject."""


@dataclass(frozen=True, slots=True)
class TimePolicy:
    """The device zone and how far DataTime may stray from the receive time before it is suspect."""

    device_tz: tzinfo
    future_tolerance: timedelta = timedelta(hours=1)
    past_tolerance: timedelta = timedelta(days=400)


def device_time(text: str | None, tz: tzinfo) -> datetime | None:
    """An HJ 212 time string read in the device zone, as an aware datetime; None if unreadable."""
    if text is None:
        return None
    naive = parse_hj_time(text)
    return None if naive is None else naive.replace(tzinfo=tz)


def _factor_columns(code: str) -> bytes:
    """`factor` and `factor_2017` of a code, encoded; cached for the codes seen (bounded)."""
    encoded = _FACTOR_CACHE.get(code)
    if encoded is None:
        encoded = pgcopy.text(code) + pgcopy.text(CODE_2005_TO_2017.get(code))
        if len(_FACTOR_CACHE) < _FACTOR_CACHE_SIZE:
            _FACTOR_CACHE[code] = encoded
    return encoded


def _factors(items: Iterable[tuple[str, str]], tz: tzinfo) -> dict[str, list[Any]]:
    """`code-Suffix` items -> {code: its encoded columns `rtd` .. `sample_time`, then a dict of its
    other fields (None if none)}, in the order sent; items without a code are skipped.

    One pass over the packet's fields, without grouping them into a dict per factor first.
    """
    factors: dict[str, list[Any]] = {}
    for name, text in items:
        code, dash, suffix = name.partition("-")
        if not dash:
            continue
        columns = factors.get(code)
        if columns is None:
            columns = factors[code] = [*_NULL_VALUES, None]  # the values, encoded; then `extra`
        slot = _SLOTS.get(suffix)
        if slot is not None:
            if slot < _FIRST_TEXT_SLOT:
                try:
                    number = float(text)
                except ValueError:
                    number = math.nan
                if number - number == 0.0:  # finite: NaN and Infinity are no measurement
                    columns[slot] = _float8(8, number)
                    continue
                # a condition mark, vendor text or NaN where a number belongs: kept as sent in `extra`
            elif slot == _SAMPLE_TIME_SLOT:
                columns[slot] = pgcopy.timestamptz(device_time(text, tz))
                continue
            else:
                columns[slot] = pgcopy.text(text)
                continue
        extra = columns[_EXTRA_SLOT]
        if extra is None:
            extra = columns[_EXTRA_SLOT] = {}
        extra[suffix] = text
    return factors


def _json(mapping: dict[str, str]) -> str:
    return json.dumps(mapping, ensure_ascii=False, separators=(",", ":"))


def data_block(packet: Packet, received_at: datetime, policy: TimePolicy, *, resend: bool) -> DataBlock | None:
    """The rows of a data upload (or 3020 info items), one per factor; None for packets without data.

    The packet's own columns are encoded once for all its factors. A data upload whose field
    layout compiles (hj212gw.ingest.layout: the common case) is encoded in one `struct` call; any
    other packet, or a number field without a finite number, takes `_factors`, which defines
    the result: this runs for every value the gateway stores.
    """
    data = packet.data
    tz = policy.device_tz
    layout = None
    factors: dict[str, list[Any]] | None = None
    fields: dict[str, str]
    if isinstance(data, DataCp):
        fields = data.fields
        layout = layout_of(data.names or tuple(data.fields), _factor_columns)
        if layout is None:
            factors = _factors(data.fields.items(), tz)
        data_time_text = data.data_time
    elif isinstance(data, SiteInfoCp):
        items = [(f"{r.code}-{suffix}", text) for r in data.infos for suffix, text in r.values.items()]
        factors, data_time_text = _factors(items, tz), data.data_time
        fields = dict(items)
        if data.pol_id:
            fields["PolId"] = data.pol_id  # the instrument the infos are about (rules.changes)
    else:
        return None
    if not (layout.rows if layout is not None else factors) or not packet.mn:
        return None
    known = _data_time(data_time_text, tz)
    if known is None:  # no DataTime, or not a time: stored at the receive time and marked
        data_time, month, suspect = received_at, month_of(received_at), True
    else:
        data_time, month = known
        suspect = data_time - received_at > policy.future_tolerance or received_at - data_time > policy.past_tolerance
    packet_columns = pgcopy.row_head(packet.mn, packet.cn, data_time, packet.qn, received_at, resend, suspect)
    if layout is not None:
        assert isinstance(data, DataCp)
        encoded = layout.encode(list(data.fields.values()), packet_columns)
        if encoded is not None:
            return DataBlock(
                encoded, layout.rows, month, resend, suspect, packet.mn, packet.cn, data_time, received_at, fields
            )
        factors = _factors(data.fields.items(), tz)  # a number field holds text: kept in `extra`
    assert factors is not None
    parts: list[bytes] = []
    null = pgcopy.NULL
    for code, columns in factors.items():
        extra = columns[_EXTRA_SLOT]
        columns[_EXTRA_SLOT] = null if extra is None else pgcopy.jsonb(_json(extra))
        parts.append(packet_columns)
        parts.append(_factor_columns(code))
        parts += columns
    copy = b"".join(parts)
    return DataBlock(copy, len(factors), month, resend, suspect, packet.mn, packet.cn, data_time, received_at, fields)


def _data_time(text: str | None, tz: tzinfo) -> tuple[datetime, tuple[int, int]] | None:
    """DataTime read in the device zone, as a UTC moment, and its partition month; None if it is
    no time, or a time no UTC datetime holds (taken like no time). Cached: every device sends the
    same few DataTimes (this minute, this hour) at about the same time. In UTC, arithmetic with
    the (UTC) receive time needs no zone lookups."""
    key = (text, tz)
    known = _DATA_TIMES.get(key)
    if known is None:
        moment = device_time(text, tz)
        if moment is None:
            return None
        try:
            utc = moment.astimezone(UTC)
        except OverflowError:  # year 1 east of UTC, year 9999 west of it: no UTC datetime holds it
            return None
        known = (utc, month_of(utc))
        if len(_DATA_TIMES) >= _DATA_TIME_CACHE_SIZE:
            _DATA_TIMES.clear()
        _DATA_TIMES[key] = known
    return known


def frame_row(
    frame: Frame | None,
    received_at: datetime,
    *,
    verdict: str,
    connection_id: int | None,
    peer: str,
    packet: Packet | None = None,
    raw: bytes | None = None,
    truncated: bool = False,
) -> FrameRow:
    """The raw-archive row of one frame, good (`verdict="ok"`) or rejected (the reason);
    `truncated`: `raw` is only the head of what a framing defect consumed (marked RAW_TRUNCATED)."""
    tolerances = packet.tolerances if packet is not None else (frame.tolerances if frame else ())
    if truncated:
        tolerances = (*tolerances, RAW_TRUNCATED)
    return FrameRow(
        received_at=received_at,
        raw=raw if raw is not None else (frame.raw if frame is not None else b""),
        verdict=verdict,
        connection_id=connection_id,
        peer=peer,
        mn=packet.mn if packet is not None else None,
        cn=packet.cn if packet is not None else None,
        qn=packet.qn if packet is not None else None,
        tolerances=tuple(tolerances),
    )


def packet_frame_row(
    frame: Frame, packet: Packet, received_at: datetime, connection_id: int | None, peer: str
) -> FrameRow:
    """`frame_row(frame, received_at, verdict="ok", …, packet=packet)` for a good packet: the
    same row, built positionally (one per stored packet)."""
    return FrameRow(
        received_at, frame.raw, "ok", connection_id, peer, packet.mn, packet.cn, packet.qn, tuple(packet.tolerances)
    )


def device_seen(packet: Packet, peer: str, seen_at: datetime, *, status: str = "accepted") -> DeviceSeen | None:
    """The sighting of the packet's device; `status` applies only if the device is new to the registry."""
    if not packet.mn:
        return None
    st = packet.st if packet.st and packet.st != "91" and packet.st.isprintable() else None
    return DeviceSeen(packet.mn, int(packet.version.label), st, peer, seen_at, status)
