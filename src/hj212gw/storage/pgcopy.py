"""PostgreSQL binary COPY encoding of `data` and `raw_frames` rows, without asyncpg's per-field codecs.

The gateway encodes each packet's rows once, when the packet arrives; the writer only joins the
bytes of a batch and streams them with `copy_to_table(format="binary")`, straight into `data` or
into the staging table of the upsert (storage.batch). A row is the columns of `storage.columns.DATA_COLUMNS` in
order: the packet's fields first (encoded once per packet, shared by all its factors), then the
factor's own. Raw-archive rows (`FRAME_COLUMNS`) are encoded by the writer, a batch at a time.
Format: PostgreSQL docs, "COPY — Binary Format" and the types' send functions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from hj212gw.storage.columns import DATA_COLUMN_TYPES, DATA_COLUMNS, FRAME_COLUMNS, PACKET_COLUMNS
from hj212gw.storage.rows import DataRow, FrameRow

HEADER: bytes = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER: bytes = struct.pack(">h", -1)
NULL: bytes = struct.pack(">i", -1)
ROW_START: bytes = struct.pack(">h", len(DATA_COLUMNS))
FRAME_ROW_START: bytes = struct.pack(">h", len(FRAME_COLUMNS))
TEXT_OID = 25  # pg_type oid of text, the element type of a text[] in array_send's format
EMPTY_TEXT_ARRAY: bytes = struct.pack(">iiii", 12, 0, 0, TEXT_OID)  # length 12: no dimensions, no NULLs, text
TRUE: bytes = struct.pack(">ib", 1, 1)
FALSE: bytes = struct.pack(">ib", 1, 0)

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_length = struct.Struct(">i").pack
pack_float8 = struct.Struct(">id").pack  # (8, value): a non-NULL float8 column, for hot loops
_int8 = struct.Struct(">iq").pack
_array_head = struct.Struct(">iiiii").pack  # dimensions, has-NULLs flag, element oid, size, lower bound


def text(value: str | None) -> bytes:
    """A text column (NULL for None)."""
    if value is None:
        return NULL
    data = value.encode()
    return _length(len(data)) + data


def float8(value: float | None) -> bytes:
    """A double precision column (NULL for None)."""
    return NULL if value is None else pack_float8(8, value)


def timestamptz(value: datetime | None) -> bytes:
    """A timestamptz column from an aware datetime (NULL for None): microseconds since 2000-01-01 UTC."""
    return NULL if value is None else _int8(8, (value - _PG_EPOCH) // _ONE_US)


def int8(value: int | None) -> bytes:
    """A bigint column (NULL for None)."""
    return NULL if value is None else _int8(8, value)


def text_array(values: Sequence[str]) -> bytes:
    """A one-dimensional text[] column without NULL elements ('{}' for none)."""
    if not values:
        return EMPTY_TEXT_ARRAY
    body = _array_head(1, 0, TEXT_OID, len(values), 1) + b"".join([text(v) for v in values])
    return _length(len(body)) + body


def boolean(value: bool) -> bytes:
    return TRUE if value else FALSE


def jsonb(json_text: str | None) -> bytes:
    """A jsonb column from JSON text (NULL for None): version byte 1, then the text."""
    if json_text is None:
        return NULL
    data = json_text.encode()
    return _length(len(data) + 1) + b"\x01" + data


def row_head(
    mn: str, cn: str, data_time: datetime, qn: str | None, received_at: datetime, resend: bool, time_suspect: bool
) -> bytes:
    """The start of a row up to `time_suspect`: the columns every factor of one packet shares.

    `first_received_at` is `received_at`: right for a new row, and the upsert keeps a known key's.
    """
    received = timestamptz(received_at)
    columns = [ROW_START, text(mn), text(cn), timestamptz(data_time), text(qn), received, received]
    columns += (boolean(resend), boolean(time_suspect))  # PACKET_COLUMNS, in order
    return b"".join(columns)


def copy_data(chunks: Sequence[bytes]) -> memoryview:
    """A whole binary COPY stream from encoded rows (each chunk: one or more whole rows).

    A memoryview, not bytes: asyncpg's `copy_to_table(source=...)` takes bytes for a file path.
    """
    return memoryview(b"".join([HEADER, *chunks, TRAILER]))


def frame_row(row: FrameRow) -> bytes:
    """One raw-archive row in `FRAME_COLUMNS` order."""
    raw = bytes(row.raw)
    return b"".join(
        [
            FRAME_ROW_START,
            timestamptz(row.received_at),
            int8(row.connection_id),
            text(row.peer),
            text(row.mn),
            text(row.cn),
            text(row.qn),
            text(row.verdict),
            text_array(row.tolerances),
            _length(len(raw)),
            raw,
        ]
    )


def data_row(row: DataRow) -> bytes:
    """One `DataRow` as an encoded row: the path for rows that were not encoded from a packet.

    `DataRow` fields are named after the columns; `first_received_at` is its `received_at`.
    """
    head = row_head(row.mn, row.cn, row.data_time, row.qn, row.received_at, row.resend, row.time_suspect)
    encoded = [head]
    for name, kind in _FACTOR_AND_VALUE_TYPES:
        value = getattr(row, name)
        if kind == "jsonb":
            value = None if value is None else _json(value)
        encoded.append(_ENCODERS[kind](value))
    return b"".join(encoded)


_ENCODERS: dict[str, Callable[[Any], bytes]] = {"float8": float8, "timestamptz": timestamptz, "jsonb": jsonb}
_ENCODERS.update(dict.fromkeys(("text", 'text COLLATE "C"'), text))
_FACTOR_AND_VALUE_TYPES = DATA_COLUMN_TYPES[len(PACKET_COLUMNS) :]


def _json(mapping: Mapping[str, Any]) -> str:
    return json.dumps(dict(mapping), ensure_ascii=False, separators=(",", ":"))
