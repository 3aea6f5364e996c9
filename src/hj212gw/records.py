"""Packet -> storage rows: one data row per factor with its flags (binary COPY), the raw `FrameRow`, the sighting.

Pure apart from the zone arithmetic: HJ 212 times carry no zone, so DataTime is read in the
device's zone and stored as an aware UTC moment. A DataTime implausibly far from the receive
time is stored and marked `time_suspect`, never dropped.
"""

import json
import math
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from hj212gw.protocol.codes import CODE_2005_TO_2017
from hj212gw.protocol.cp import DataCp, SiteInfoCp
from hj212gw.protocol.framing import Frame
from hj212gw.protocol.models import Packet, parse_hj_time
from hj212gw.storage import pgcopy
from hj212gw.storage.rows import DataBlock, DeviceSeen, FrameRow, month_of

# Per-factor suffixes with a float column: their place among storage.pgcopy.NUMBER_COLUMNS.
_NUMBER_SLOTS = {"Rtd": 0, "Min": 1, "Avg": 2, "Max": 3, "Cou": 4, "ZsRtd": 5, "ZsMin": 6, "ZsAvg": 7, "ZsMax": 8}
_float8 = struct.Struct(">id").pack  # length 8 + the value: a float8 column
_FACTOR_CACHE: dict[str, bytes] = {}
_FACTOR_CACHE_SIZE = 4096  # codes come from devices: a misbehaving one must not grow it forever


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


def _value_columns(values: dict[str, str], tz: tzinfo) -> list[bytes]:
    """The encoded columns `rtd` .. `extra` of one factor's {suffix: text}."""
    null = pgcopy.NULL
    columns = [null] * 9
    flag = eflag = sample_time = null
    extra: dict[str, str] | None = None
    for suffix, text in values.items():
        slot = _NUMBER_SLOTS.get(suffix)
        if slot is not None:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number - number == 0.0:  # finite: NaN and Infinity are no measurement
                columns[slot] = _float8(8, number)
                continue
            # a condition mark, vendor text or NaN where a number belongs: kept as sent in `extra`
        elif suffix == "Flag":
            flag = pgcopy.text(text)
            continue
        elif suffix == "EFlag":
            eflag = pgcopy.text(text)
            continue
        elif suffix == "SampleTime":
            sample_time = pgcopy.timestamptz(device_time(text, tz))
            continue
        if extra is None:
            extra = {}
        extra[suffix] = text
    columns += (flag, eflag, sample_time, null if extra is None else pgcopy.jsonb(_json(extra)))
    return columns


def _json(mapping: dict[str, str]) -> str:
    return json.dumps(mapping, ensure_ascii=False, separators=(",", ":"))


def data_block(packet: Packet, received_at: datetime, policy: TimePolicy, *, resend: bool) -> DataBlock | None:
    """The rows of a data upload (or 3020 info items), one per factor; None for packets without data.

    Encoded straight from the packet's grouped fields, with the packet's own columns encoded once
    for all its factors: this runs for every value the gateway stores.
    """
    data = packet.data
    if isinstance(data, DataCp):
        groups, data_time_text = data.groups(), data.data_time
    elif isinstance(data, SiteInfoCp):
        groups, data_time_text = {r.code: r.values for r in data.infos}, data.data_time
    else:
        return None
    if not groups or not packet.mn:
        return None
    tz = policy.device_tz
    data_time = device_time(data_time_text, tz)
    suspect = data_time is None
    if data_time is None:
        data_time = received_at
    elif data_time - received_at > policy.future_tolerance or received_at - data_time > policy.past_tolerance:
        suspect = True
    received = pgcopy.timestamptz(received_at)
    packet_columns = b"".join(
        [
            pgcopy.ROW_START,
            pgcopy.text(packet.mn),
            pgcopy.text(packet.cn),
            pgcopy.timestamptz(data_time),
            pgcopy.text(packet.qn),
            received,
            received,  # first_received_at: the same for a new row; an upsert of a known key keeps the old one
            pgcopy.boolean(resend),
            pgcopy.boolean(suspect),
        ]
    )
    parts: list[bytes] = []
    for code, values in groups.items():
        parts.append(packet_columns)
        parts.append(_factor_columns(code))
        parts += _value_columns(values, tz)
    return DataBlock(b"".join(parts), len(groups), month_of(data_time), resend)


def frame_row(
    frame: Frame | None,
    received_at: datetime,
    *,
    verdict: str,
    connection_id: int | None,
    peer: str,
    packet: Packet | None = None,
    raw: bytes | None = None,
) -> FrameRow:
    """The raw-archive row of one frame, good (`verdict="ok"`) or rejected (the reason)."""
    tolerances = packet.tolerances if packet is not None else (frame.tolerances if frame else ())
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


def device_seen(packet: Packet, peer: str, seen_at: datetime, *, status: str = "accepted") -> DeviceSeen | None:
    """The sighting of the packet's device; `status` applies only if the device is new to the registry."""
    if not packet.mn:
        return None
    st = packet.st if packet.st and packet.st != "91" and packet.st.isprintable() else None
    return DeviceSeen(packet.mn, int(packet.version.label), st, peer, seen_at, status)
