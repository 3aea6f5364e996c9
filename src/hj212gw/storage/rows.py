"""Plain rows the rest of the gateway hands to storage.

The ingest code converts parsed packets into these; storage only writes them.
No protocol parsing and no validation happen here (the parser already validated),
and this module imports nothing from hj212gw.protocol, asyncpg or asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class DataRow:
    """One value set of one factor (pollutant or parameter) at one DataTime: a row of `data`.

    The float columns are the parsed numbers, None when absent or not a finite number; such
    text and every other per-factor field go to `extra` as sent ("w01018-Info" -> key "Info").
    All datetimes must be timezone-aware.
    """

    mn: str
    cn: str
    data_time: datetime
    factor: str
    received_at: datetime
    qn: str | None = None
    factor_2017: str | None = None
    rtd: float | None = None
    min: float | None = None
    avg: float | None = None
    max: float | None = None
    cou: float | None = None
    zs_rtd: float | None = None
    zs_min: float | None = None
    zs_avg: float | None = None
    zs_max: float | None = None
    flag: str | None = None
    eflag: str | None = None
    sample_time: datetime | None = None
    extra: Mapping[str, Any] | None = None
    resend: bool = False
    time_suspect: bool = False


class DataBlock(NamedTuple):
    """One packet's data rows, already encoded for the binary COPY of storage.pgcopy.DATA_COLUMNS."""

    copy: bytes
    rows: int
    month: tuple[int, int]  # (year, month) in UTC of DataTime: the `data` partition it goes into
    resend: bool = False  # RF=1 or a history answer: likely to exist already
    time_suspect: bool = False  # DataTime outside the tolerance window: never creates a partition
    # What monitoring learns once the rows committed (monitor.hub): whose data, which kind, when.
    mn: str = ""
    cn: str = ""
    data_time: datetime | None = None  # the rows' DataTime (UTC); the receive time if it had none
    received_at: datetime | None = None
    # What the rules (issue #13) read once the rows committed: the CP items as sent, name -> text
    # (the codec's own dict, shared, never copied). None where nobody needs them.
    fields: Mapping[str, str] | None = None


class FrameRow(NamedTuple):
    """One received frame, good or bad, for the `raw_frames` evidence trail.

    `verdict` is "ok" or the reject reason (an Hj212Error.reason); `tolerances` names the
    vendor quirks that were tolerated to accept it.
    """

    received_at: datetime
    raw: bytes
    verdict: str = "ok"
    connection_id: int | None = None
    peer: str | None = None
    mn: str | None = None
    cn: str | None = None
    qn: str | None = None
    tolerances: Sequence[str] = ()


class DeviceSeen(NamedTuple):
    """A valid packet from `mn` arrived at `seen_at` from `peer`: refreshes `devices`.

    `status` is written only when the sighting registers a new device (the quarantine policy
    registers unknown devices as `quarantined`); an existing device keeps its status.
    """

    mn: str
    protocol_version: int | None
    st: str | None
    peer: str | None
    seen_at: datetime
    status: str = "accepted"  # registry status if this sighting registers the device


def month_of(moment: datetime) -> tuple[int, int]:
    """(year, month) of `moment` in UTC, the partition bounds' time zone."""
    utc = moment.astimezone(UTC)
    return utc.year, utc.month
