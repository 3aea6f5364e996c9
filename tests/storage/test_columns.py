"""storage.columns: the one definition of the `data` columns, and what derives from it."""

import asyncpg

from hj212gw.ingest import layout as row_layout
from hj212gw.ingest import rows as records
from hj212gw.storage import batch
from hj212gw.storage.columns import (
    DATA_COLUMNS,
    FACTOR_COLUMNS,
    NUMBER_COLUMNS,
    PACKET_COLUMNS,
    TEXT_VALUE_COLUMNS,
    VALUE_COLUMNS,
)
from hj212gw.storage.db import Database


def test_the_encoders_shape_holds() -> None:
    """The row encoders put numbers in the first value slots and the texts right after them."""
    assert (*PACKET_COLUMNS, *FACTOR_COLUMNS, *VALUE_COLUMNS) == DATA_COLUMNS
    assert VALUE_COLUMNS[: len(NUMBER_COLUMNS)] == NUMBER_COLUMNS
    assert VALUE_COLUMNS[len(NUMBER_COLUMNS) : len(NUMBER_COLUMNS) + len(TEXT_VALUE_COLUMNS)] == TEXT_VALUE_COLUMNS


def test_suffix_slots_follow_the_columns() -> None:
    assert row_layout.NUMBER_SUFFIXES == ("Rtd", "Min", "Avg", "Max", "Cou", "ZsRtd", "ZsMin", "ZsAvg", "ZsMax")
    assert row_layout.TEXT_SUFFIXES == ("Flag", "EFlag")
    for suffix, column in row_layout.SUFFIX_COLUMNS.items():
        assert VALUE_COLUMNS[records._SLOTS[suffix]] == column


async def test_the_staging_table_matches_data(db: Database, conn: asyncpg.Connection) -> None:
    """The staging table built from the definition has `data`'s types for every written column."""
    async with conn.transaction():
        await conn.execute(batch.CREATE_STAGE_SQL)
        query = """SELECT attname, format_type(atttypid, atttypmod) AS type, collname
                   FROM pg_attribute LEFT JOIN pg_collation c ON c.oid = attcollation
                   WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"""
        staged = await conn.fetch(query, f"pg_temp.{batch.STAGE_TABLE}")
        data = {r["attname"]: (r["type"], r["collname"]) for r in await conn.fetch(query, "data")}
    assert tuple(r["attname"] for r in staged) == DATA_COLUMNS
    for row in staged:
        assert (row["type"], row["collname"]) == data[row["attname"]], row["attname"]
