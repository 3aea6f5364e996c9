"""Test helper: decode the binary COPY rows hj212gw encodes (storage.pgcopy) back into Python values.

Independent of the encoder: it follows PostgreSQL's binary COPY format (int16 field count, then
per field an int32 length, -1 for NULL, and the value in the type's binary send format).
"""

import json
import struct
from datetime import UTC, datetime, timedelta

from hj212gw.storage.columns import DATA_COLUMNS

_TIMESTAMPS = {"data_time", "received_at", "first_received_at", "sample_time"}
_BOOLEANS = {"resend", "time_suspect"}
_FLOATS = {"rtd", "min", "avg", "max", "cou", "zs_rtd", "zs_min", "zs_avg", "zs_max"}
_JSONB = {"extra"}
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _value(column: str, data: bytes) -> object:
    if column in _TIMESTAMPS:
        return _PG_EPOCH + timedelta(microseconds=struct.unpack(">q", data)[0])
    if column in _BOOLEANS:
        return data == b"\x01"
    if column in _FLOATS:
        return struct.unpack(">d", data)[0]
    if column in _JSONB:
        assert data[:1] == b"\x01", "jsonb binary format version 1"
        return json.loads(data[1:].decode())
    return data.decode()


def decode_rows(copy: bytes) -> list[dict[str, object]]:
    """Rows (no COPY header or trailer) -> one dict per row, keyed by stage column."""
    rows = []
    pos = 0
    while pos < len(copy):
        (count,) = struct.unpack_from(">h", copy, pos)
        assert count == len(DATA_COLUMNS)
        pos += 2
        row: dict[str, object] = {}
        for column in DATA_COLUMNS:
            (length,) = struct.unpack_from(">i", copy, pos)
            pos += 4
            if length < 0:
                row[column] = None
                continue
            row[column] = _value(column, copy[pos : pos + length])
            pos += length
        rows.append(row)
    return rows
