"""Packet -> storage rows: one data record per factor, with its flags, the raw `FrameRow`, the sighting.

Pure apart from the zone arithmetic: HJ 212 times carry no zone, so DataTime is read in the
device's zone and stored as an aware UTC moment. A DataTime implausibly far from the receive
time is stored and marked `time_suspect`, never dropped.
"""

import json
import json.encoder
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from hj212gw.protocol.codes import CODE_2005_TO_2017
from hj212gw.protocol.cp import DataCp, SiteInfoCp
from hj212gw.protocol.framing import Frame
from hj212gw.protocol.models import Packet, parse_hj_time
from hj212gw.storage.batch import NULL, copy_escape
from hj212gw.storage.rows import DeviceSeen, FrameRow

# Data records are lines of PostgreSQL COPY text format, one per factor, in the column order of
# storage.batch.STAGE_COLUMNS: PostgreSQL parses the number text as sent in C, and no Python object
# is built per column. Numbers are checked here (a non-numeric value goes to `extra`, never into a
# float column, so one odd value cannot fail a whole batch).
_NUMBER_INDEX = {"Rtd": 0, "Min": 1, "Avg": 2, "Max": 3, "Cou": 4, "ZsRtd": 5, "ZsMin": 6, "ZsAvg": 7, "ZsMax": 8}
_NO_NUMBERS = [NULL] * 9
_TEXT_COLUMNS = frozenset({"Flag", "EFlag", "SampleTime"})
# Characters that COPY text format (or JSON) would have to escape: packets containing none of them,
# i.e. nearly all, take the fast path with no per-field escaping.
_NEEDS_ESCAPE = re.compile(r'[\\\x00-\x1f"]')
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


def _number_text(text: str) -> str | None:
    """The COPY text of a float column: the digits as sent when plain, else Python's repr; None if
    the text is no number at all."""
    try:
        number = float(text)
    except ValueError:
        return None
    return text if text.lstrip("-").replace(".", "", 1).isdigit() else repr(number)


def _line(code: str, values: dict[str, str], head: str, tail: str, tz: tzinfo, escape: bool) -> str:
    """One COPY line for one factor's fields (the columns of storage.batch.STAGE_COLUMNS)."""
    if escape:
        values = {suffix: text.replace("\x00", "") for suffix, text in values.items()}  # jsonb refuses \u0000
    numbers = _NO_NUMBERS.copy()
    extra = None
    for suffix, text in values.items():
        index = _NUMBER_INDEX.get(suffix)
        if index is not None:
            number = _number_text(text)
            if number is not None:
                numbers[index] = number
                continue  # else a condition mark or vendor text where a number belongs: `extra`
        elif suffix in _TEXT_COLUMNS:
            continue
        if extra is None:
            extra = {}
        extra[suffix] = text
    sample = device_time(values["SampleTime"], tz) if "SampleTime" in values else None
    flag, eflag = values.get("Flag"), values.get("EFlag")
    extra_text = None if extra is None else _dumps(extra)
    values_text = _dumps(values)
    if escape:
        code, values_text = copy_escape(code), copy_escape(values_text)
        flag = None if flag is None else copy_escape(flag)
        eflag = None if eflag is None else copy_escape(eflag)
        extra_text = None if extra_text is None else copy_escape(extra_text)
    texts = [
        code,
        CODE_2005_TO_2017.get(code, NULL),
        "\t".join(numbers),
        NULL if flag is None else flag,
        NULL if eflag is None else eflag,
        NULL if sample is None else sample.isoformat(),
        NULL if extra_text is None else extra_text,
        values_text,
    ]
    return head + "\t".join(texts) + tail


def data_records(packet: Packet, received_at: datetime, policy: TimePolicy, *, resend: bool) -> list[str]:
    """One COPY text line per factor of a data upload (or 3020 info item); [] for packets without data.

    Runs for every value the gateway stores. (Cutting the lines straight from the CP text with
    C-level string operations was measured slower than this: fewer calls, but not cheaper ones.)
    """
    data = packet.data
    if not isinstance(data, DataCp | SiteInfoCp) or not packet.mn:
        return []
    tz = policy.device_tz
    data_time = device_time(data.data_time, tz)
    suspect = data_time is None
    if data_time is None:
        data_time = received_at
    elif data_time - received_at > policy.future_tolerance or received_at - data_time > policy.past_tolerance:
        suspect = True
    identity = f"{packet.mn}{packet.qn or ''}{packet.cn}"
    escape = bool(_NEEDS_ESCAPE.search(packet.cp) or _NEEDS_ESCAPE.search(identity))
    mn, cn, qn = packet.mn, packet.cn, NULL if packet.qn is None else packet.qn
    if escape:
        mn, cn, qn = copy_escape(mn), copy_escape(cn), qn if qn == NULL else copy_escape(qn)
    head = f"{mn}\t{cn}\t{data_time.astimezone(UTC).isoformat()}\t"  # UTC: the partition bounds' zone
    tail = f"\t{qn}\t{received_at.isoformat()}\t{'t' if resend else 'f'}\t{'t' if suspect else 'f'}\n"
    groups = data.groups() if isinstance(data, DataCp) else {r.code: r.values for r in data.infos}
    return [_line(code, values, head, tail, tz, escape) for code, values in groups.items()]


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
    return DeviceSeen(packet.mn, int(packet.version), st, peer, seen_at, status)
