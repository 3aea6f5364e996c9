"""The SQL of `split_parts`: the parts of split transfers, stored before their acks.

Owns the table's rows (`SplitPartRow`), their insert inside the batch transaction (storage.batch
calls `insert_parts`), and the statements of the sweep: which transfers are complete, claiming
one under row locks so two replicas finishing the same transfer store its data once, and
deleting transfers older than the split timeout. A transfer is (mn, cn, qn, pnum); a part resent
while its transfer is still here keeps its first arrival (`ON CONFLICT DO NOTHING`). Knows no
HJ 212 parsing: the shell assembles the stored segments (hj212gw.ingest.splits).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

SplitKey = tuple[str, str, str, int]
"""(mn, cn, qn, pnum): one split transfer."""


class SplitPartRow(NamedTuple):
    """One part of a split transfer: its data segment (decrypted, as parsed) and where it came from.

    `fragment`: the part does not stand alone, so its data reaches `data` only by assembly.
    """

    mn: str
    cn: str
    qn: str
    pnum: int
    pno: int
    fragment: bool
    backfill: bool
    received_at: datetime
    connection_id: int | None
    segment: bytes

    @property
    def key(self) -> SplitKey:
        return self.mn, self.cn, self.qn, self.pnum


class StoredPart(NamedTuple):
    pno: int
    fragment: bool
    backfill: bool
    segment: bytes


class ExpiredTransfer(NamedTuple):
    """A transfer deleted by the sweep: the PNOs it had, whether any was a fragment or assembled."""

    key: SplitKey
    present: tuple[int, ...]
    fragments: bool
    assembled: bool


_COLUMNS = "mn, cn, qn, pnum, pno, fragment, backfill, received_at, connection_id, segment"
INSERT_SQL = f"""
INSERT INTO split_parts ({_COLUMNS})
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::bool[], $7::bool[],
                     $8::timestamptz[], $9::bigint[], $10::bytea[])
ON CONFLICT DO NOTHING"""

_KEYS = "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])"
COMPLETE_SQL = f"""
SELECT mn, cn, qn, pnum FROM split_parts
WHERE (mn, cn, qn, pnum) IN ({_KEYS})
GROUP BY mn, cn, qn, pnum
HAVING count(*) = pnum AND bool_and(assembled_at IS NULL) AND bool_or(fragment)"""
ALL_COMPLETE_SQL = """
SELECT mn, cn, qn, pnum FROM split_parts
WHERE (mn, cn, qn, pnum) IN (SELECT mn, cn, qn, pnum FROM split_parts WHERE fragment AND assembled_at IS NULL)
GROUP BY mn, cn, qn, pnum
HAVING count(*) = pnum AND bool_and(assembled_at IS NULL) AND bool_or(fragment)
LIMIT $1"""
_WHERE_KEY = "mn = $1 AND cn = $2 AND qn = $3 AND pnum = $4"
PARTS_SQL = f"SELECT pno, fragment, backfill, segment FROM split_parts WHERE {_WHERE_KEY} ORDER BY pno"
LOCK_SQL = f"SELECT pno FROM split_parts WHERE {_WHERE_KEY} AND assembled_at IS NULL ORDER BY pno FOR UPDATE"
MARK_SQL = f"UPDATE split_parts SET assembled_at = now() WHERE {_WHERE_KEY}"
# Transfers whose first part arrived before the cutoff: complete ones are left to be assembled
# (a gateway died between a commit and the assembly), the rest are deleted and reported once (the
# DELETE's RETURNING goes to one replica only).
EXPIRE_SQL = """
WITH old AS (
    SELECT mn, cn, qn, pnum FROM split_parts WHERE received_at < $1 GROUP BY mn, cn, qn, pnum LIMIT $2
), doomed AS (
    SELECT s.mn, s.cn, s.qn, s.pnum FROM split_parts s JOIN old USING (mn, cn, qn, pnum)
    GROUP BY s.mn, s.cn, s.qn, s.pnum
    HAVING count(*) < s.pnum OR bool_or(s.assembled_at IS NOT NULL) OR NOT bool_or(s.fragment)
)
DELETE FROM split_parts s USING doomed d
WHERE (s.mn, s.cn, s.qn, s.pnum) = (d.mn, d.cn, d.qn, d.pnum)
RETURNING s.mn, s.cn, s.qn, s.pnum, s.pno, s.fragment, s.assembled_at IS NOT NULL AS assembled"""


def _columns(rows: Sequence[SplitPartRow]) -> list[list[object]]:
    return [list(column) for column in zip(*rows, strict=True)]


async def insert_parts(conn: asyncpg.Connection, rows: Sequence[SplitPartRow]) -> None:
    """Insert parts inside the caller's (the batch's) transaction; a part already there is kept."""
    if rows:
        await conn.execute(INSERT_SQL, *_columns(rows))


async def fetch_complete(conn: asyncpg.Connection, keys: Sequence[SplitKey] | None, limit: int) -> list[SplitKey]:
    """Transfers with a fragment, every PNO present and not assembled yet: among `keys`, or any."""
    if keys is None:
        records = await conn.fetch(ALL_COMPLETE_SQL, limit)
    elif keys:
        records = await conn.fetch(COMPLETE_SQL, *[list(c) for c in zip(*keys, strict=True)])
    else:
        return []
    return [(r["mn"], r["cn"], r["qn"], r["pnum"]) for r in records]


async def fetch_parts(conn: asyncpg.Connection, key: SplitKey) -> list[StoredPart]:
    """The stored parts of one transfer in PNO order (no lock: `claim` checks again)."""
    return [StoredPart(*r) for r in await conn.fetch(PARTS_SQL, *key)]


async def claim(conn: asyncpg.Connection, key: SplitKey, pnos: Sequence[int]) -> bool:
    """Inside a transaction: lock the transfer's parts; True if they are still exactly `pnos` and
    unassembled. A replica that finished the transfer first has marked them: this one waits for
    its commit on the row locks, then sees no unassembled part and returns False."""
    locked = [r["pno"] for r in await conn.fetch(LOCK_SQL, *key)]
    return locked == list(pnos)


async def mark_assembled(conn: asyncpg.Connection, key: SplitKey) -> None:
    await conn.execute(MARK_SQL, *key)


async def expire(conn: asyncpg.Connection, cutoff: datetime, limit: int) -> list[ExpiredTransfer]:
    """Delete transfers begun before `cutoff` that are incomplete, assembled, or have no fragment."""
    found: dict[SplitKey, ExpiredTransfer] = {}
    for r in await conn.fetch(EXPIRE_SQL, cutoff, limit):
        key = (r["mn"], r["cn"], r["qn"], r["pnum"])
        kept = found.get(key) or ExpiredTransfer(key, (), False, False)
        found[key] = ExpiredTransfer(
            key, (*kept.present, r["pno"]), kept.fragments or r["fragment"], kept.assembled or r["assembled"]
        )
    return [t._replace(present=tuple(sorted(t.present))) for t in found.values()]
