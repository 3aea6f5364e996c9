"""Packet -> storage rows: one data record per factor, with its flags, the raw `FrameRow`, the sighting.

Pure apart from the zone arithmetic: HJ 212 times carry no zone, so DataTime is read in the
device's zone and stored as an aware UTC moment. A DataTime implausibly far from the receive
time is stored and marked `time_suspect`, never dropped.
"""

import json
import json.encoder
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from hj212gw.protocol.codes import CODE_2005_TO_2017
from hj212gw.protocol.cp import DataCp, SiteInfoCp
from hj212gw.protocol.framing import Frame
from hj212gw.protocol.models import Packet, parse_hj_time
from hj212gw.storage.rows import DeviceSeen, FrameRow

# Per-factor suffixes with a float column: their index in a data record (storage.batch.STAGE_COLUMNS).
_NUMBER_SLOTS = {"Rtd": 5, "Min": 6, "Avg": 7, "Max": 8, "Cou": 9, "ZsRtd": 10, "ZsMin": 11, "ZsAvg": 12, "ZsMax": 13}
_TEXT_COLUMNS = frozenset({"Flag", "EFlag", "SampleTime"})
_SAMPLE_TIME_SLOT = 16
_EXTRA_SLOT = 17
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
if json.encoder.c_make_encoder is not None:  # type: ignore[attr-defined]
    # JSONEncoder.encode builds a C encoder per call; one built once halves the cost of the
    # per-row values_text (the dicts hold only str, so no circular check or default is needed).
    _c_encode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, None, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )

    def _dumps(values: dict[str, str]) -> str:  # type: ignore[misc]
        return "".join(_c_encode(values, 0))


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


def _record(code: str, values: dict[str, str], head: list[object], tail: list[object], tz: tzinfo) -> list[object]:
    """One data record (the columns of storage.batch.STAGE_COLUMNS) for one factor's fields."""
    flag = values.get("Flag")
    row = [*head, code, CODE_2005_TO_2017.get(code), None, None, None, None, None, None, None, None, None,
           flag, values.get("EFlag"), None, None, _dumps(values), *tail]  # fmt: skip
    extra = None
    for suffix, text in values.items():
        slot = _NUMBER_SLOTS.get(suffix)
        if slot is not None:
            try:
                row[slot] = float(text)
                continue
            except ValueError:
                pass  # a condition mark or vendor text where a number belongs: kept in `extra`
        elif suffix in _TEXT_COLUMNS:
            continue
        if extra is None:
            extra = {}
        extra[suffix] = text
    if extra is not None:
        row[_EXTRA_SLOT] = _dumps(extra)
    if "SampleTime" in values:
        row[_SAMPLE_TIME_SLOT] = device_time(values["SampleTime"], tz)
    return row


def data_records(packet: Packet, received_at: datetime, policy: TimePolicy, *, resend: bool) -> list[list[object]]:
    """One COPY-ready record per factor of a data upload (or 3020 info item); [] for packets without data.

    Built straight from the packet's flat fields, with no intermediate objects: this runs for
    every value the gateway stores.
    """
    data = packet.data
    if isinstance(data, DataCp):
        groups, data_time_text = data.groups(), data.data_time
    elif isinstance(data, SiteInfoCp):
        groups, data_time_text = {r.code: r.values for r in data.infos}, data.data_time
    else:
        return []
    if not groups or not packet.mn:
        return []
    tz = policy.device_tz
    data_time = device_time(data_time_text, tz)
    suspect = data_time is None
    if data_time is None:
        data_time = received_at
    elif data_time - received_at > policy.future_tolerance or received_at - data_time > policy.past_tolerance:
        suspect = True
    head: list[object] = [packet.mn, packet.cn, data_time]
    tail: list[object] = [packet.qn, received_at, resend, suspect]
    return [_record(code, values, head, tail, tz) for code, values in groups.items()]


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
