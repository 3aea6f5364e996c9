"""Alarm uploads -> `alarm_events` rows: one per factor, at the alarm's own time.

An alarm upload carries `AlarmTime` and `AlarmType` where data uploads carry `DataTime`: HJ/T
212-2005 CN 2072 (`AlarmTime=20160824004058;B01-Ala=16.00,AlarmType=1`, the captures in
fixtures/packets/good/xiaoyao9184-hj-t212-parser/2072-*.hj212). The 2017 standard dropped the
alarm commands and the 2025 digest names none, so the rule is the shape, not the CN: any data
upload with a readable `AlarmTime` and no `DataTime` is an alarm. One without a readable
AlarmTime stays a data upload (stored at the receive time, marked `time_suspect`).
Pure: imports protocol models and storage rows only.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, tzinfo

from hj212gw.ingest.rows import device_time
from hj212gw.protocol.cp import DataCp
from hj212gw.protocol.models import Packet
from hj212gw.storage.alarms import AlarmRow

ALARM_TIME = "AlarmTime"
ALARM_TYPE = "AlarmType"


def alarm_rows(packet: Packet, received_at: datetime, tz: tzinfo) -> tuple[AlarmRow, ...]:
    """The alarm events of an alarm upload, one per factor (`AlarmType` per factor if sent so,
    else the packet's, else ''); () for any other packet. AlarmTime is read in the device zone."""
    data = packet.data
    if not isinstance(data, DataCp) or data.data_time is not None or not packet.mn:
        return ()
    alarm_time = _utc(device_time(data.fields.get(ALARM_TIME), tz))
    if alarm_time is None:
        return ()
    packet_type = data.fields.get(ALARM_TYPE, "")
    groups = data.groups() or {"": {k: v for k, v in data.fields.items() if k not in (ALARM_TIME, ALARM_TYPE)}}
    return tuple(
        AlarmRow(
            mn=packet.mn,
            cn=packet.cn,
            alarm_time=alarm_time,
            factor=code,
            alarm_type=fields.get(ALARM_TYPE, packet_type),
            value=_number(fields.get("Ala")),
            fields=fields,
            qn=packet.qn,
            received_at=received_at,
        )
        for code, fields in groups.items()
    )


def _utc(moment: datetime | None) -> datetime | None:
    try:
        return None if moment is None else moment.astimezone(UTC)
    except OverflowError:  # year 1 east of UTC, year 9999 west of it: no UTC datetime holds it
        return None


def _number(text: str | None) -> float | None:
    try:
        number = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None
