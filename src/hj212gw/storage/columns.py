"""The one definition of the `data` columns the gateway writes: their order and their types.

Everything that depends on the column order derives it from here: the binary COPY encoders
(storage.pgcopy), the staging tables of the merge (storage.batch), the compiled row layouts and
the general row encoder (ingest). A column added here without its encoder fails the tests that
decode the COPY stream column by column.
"""

from typing import Final

# (column, type in the staging tables), in COPY order. Keys compare byte-wise (COLLATE "C", as in
# `data` since migration 0002): a libc collation costs a strcoll() per comparison.
DATA_COLUMN_TYPES: Final = (
    # the packet's own columns, shared by every factor of one packet (pgcopy.row_head)
    ("mn", 'text COLLATE "C"'),
    ("cn", 'text COLLATE "C"'),
    ("data_time", "timestamptz"),
    ("qn", "text"),
    ("received_at", "timestamptz"),
    ("first_received_at", "timestamptz"),
    ("resend", "boolean"),
    ("time_suspect", "boolean"),
    # the factor
    ("factor", 'text COLLATE "C"'),
    ("factor_2017", "text"),
    # its values: the numbers first, then the texts, then what has no column of its own
    ("rtd", "float8"),
    ("min", "float8"),
    ("avg", "float8"),
    ("max", "float8"),
    ("cou", "float8"),
    ("zs_rtd", "float8"),
    ("zs_min", "float8"),
    ("zs_avg", "float8"),
    ("zs_max", "float8"),
    ("flag", "text"),
    ("eflag", "text"),
    ("sample_time", "timestamptz"),
    ("extra", "jsonb"),
)
DATA_COLUMNS: Final = tuple(name for name, _ in DATA_COLUMN_TYPES)
PACKET_COLUMNS: Final = DATA_COLUMNS[: DATA_COLUMNS.index("factor")]
FACTOR_COLUMNS: Final = ("factor", "factor_2017")
# A factor's values, in order: the slots of the row encoders.
VALUE_COLUMNS: Final = DATA_COLUMNS[DATA_COLUMNS.index("rtd") :]
NUMBER_COLUMNS: Final = tuple(name for name, kind in DATA_COLUMN_TYPES if kind == "float8")
TEXT_VALUE_COLUMNS: Final = ("flag", "eflag")

FRAME_COLUMNS: Final = ("received_at", "connection_id", "peer", "mn", "cn", "qn", "verdict", "tolerances", "raw")


def column_definitions(names: tuple[str, ...]) -> str:
    """`name type, …` of these data columns, for a CREATE TABLE."""
    types = dict(DATA_COLUMN_TYPES)
    return ", ".join(f"{name} {types[name]}" for name in names)
