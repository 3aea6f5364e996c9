"""Packet -> storage rows: one `DataRow` per factor, with its flags, the raw `FrameRow`, the sighting.

Pure apart from the zone arithmetic: HJ 212 times carry no zone, so DataTime is read in the
device's zone and stored as an aware UTC moment. A DataTime implausibly far from the receive
time is stored and marked `time_suspect`, never dropped.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from hj212gw.protocol.cp import DataCp, SiteInfoCp
from hj212gw.protocol.framing import Frame
from hj212gw.protocol.models import Packet, Reading, parse_hj_time
from hj212gw.storage.rows import DataRow, DeviceSeen, FrameRow

# Per-factor suffixes that have their own column; everything else goes to `extra`.
_NUMBER_COLUMNS = {
    "Rtd": "rtd",
    "Min": "min",
    "Avg": "avg",
    "Max": "max",
    "Cou": "cou",
    "ZsRtd": "zs_rtd",
    "ZsMin": "zs_min",
    "ZsAvg": "zs_avg",
    "ZsMax": "zs_max",
}
_TEXT_COLUMNS = frozenset({"Flag", "EFlag", "SampleTime"})


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


def _reading_row(reading: Reading, base: dict[str, object], policy: TimePolicy) -> DataRow:
    numbers: dict[str, float] = {}
    extra: dict[str, str] = {}
    for suffix, text in reading.values.items():
        column = _NUMBER_COLUMNS.get(suffix)
        if column is not None:
            try:
                numbers[column] = float(text)
            except ValueError:
                extra[suffix] = text  # a condition mark or vendor text where a number belongs
        elif suffix not in _TEXT_COLUMNS:
            extra[suffix] = text
    values = reading.values
    return DataRow(
        factor=reading.code,
        values_text=values,
        factor_2017=reading.code_2017,
        flag=values.get("Flag"),
        eflag=values.get("EFlag"),
        sample_time=device_time(values.get("SampleTime"), policy.device_tz),
        extra=extra or None,
        **numbers,  # type: ignore[arg-type]
        **base,  # type: ignore[arg-type]
    )


def data_rows(packet: Packet, received_at: datetime, policy: TimePolicy, *, resend: bool) -> list[DataRow]:
    """One row per factor of a data upload (or 3020 info item); [] for packets without data."""
    data = packet.data
    if isinstance(data, DataCp):
        readings, data_time_text = data.readings, data.data_time
    elif isinstance(data, SiteInfoCp):
        readings, data_time_text = data.infos, data.data_time
    else:
        return []
    if not readings or not packet.mn:
        return []
    data_time = device_time(data_time_text, policy.device_tz)
    suspect = data_time is None
    if data_time is None:
        data_time = received_at
    elif data_time - received_at > policy.future_tolerance or received_at - data_time > policy.past_tolerance:
        suspect = True
    base: dict[str, object] = {
        "mn": packet.mn,
        "cn": packet.cn,
        "data_time": data_time,
        "received_at": received_at,
        "qn": packet.qn,
        "resend": resend,
        "time_suspect": suspect,
    }
    return [_reading_row(reading, base, policy) for reading in readings]


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


def device_seen(packet: Packet, peer: str, seen_at: datetime) -> DeviceSeen | None:
    if not packet.mn:
        return None
    st = packet.st if packet.st and packet.st != "91" and packet.st.isprintable() else None
    return DeviceSeen(packet.mn, int(packet.version), st, peer, seen_at)
