"""Split transfers in the shell: the `split_parts` row a part stores before its ack, and the sweep
that assembles completed transfers from PostgreSQL and expires incomplete ones.

A part's row commits in its batch, with its raw frame, so its 9014 means "stored" even when the
part holds half a factor group. Assembly reads the stored parts, whatever connection, gateway
process or replica received them, so a transfer survives a reconnect, a restart and a replica
change. `SplitSweeper.sweep` runs in the gateway's housekeeping: first the transfers whose parts
this process committed since the last sweep, then, every `recheck_s`, any complete transfer
(one left by a process that died between a commit and the assembly) and the expiry of
transfers older than `split_timeout_s` (one WARNING each, reported by one replica only).
An assembled transfer whose data rows committed is passed to `on_committed`, as the batch writer
passes its batches' data blocks (monitoring follows it like any other data; ingest never imports
monitoring).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog

from hj212gw.ingest.rows import TimePolicy, data_block
from hj212gw.metrics import Metrics
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.models import Packet
from hj212gw.protocol.segment import encode_segment, parse_segment
from hj212gw.protocol.split import MAX_KEY_CHARS, assemble_parts
from hj212gw.storage.db import ROW_ERRORS, Database, is_retryable
from hj212gw.storage.rows import DataBlock
from hj212gw.storage.split_parts import ExpiredTransfer, SplitKey, SplitPartRow

_LOG = structlog.get_logger("hj212gw.splits")
_MAX_LOGGED_PNOS = 20
_MAX_PENDING_KEYS = 10_000


def split_part_row(
    packet: Packet, *, fragment: bool, backfill: bool, received_at: datetime, connection_id: int | None
) -> SplitPartRow | None:
    """The `split_parts` row of a split part; None for a standalone part that names no transfer
    (no MN or QN, or one too long for the key; PNO outside 1..PNUM: nothing could join it, and
    its data is stored on its own). The session refuses such fragments (`split.check_part`)."""
    mn, qn, pnum, pno = packet.mn, packet.qn, packet.pnum, packet.pno
    if not (mn and qn and pnum and pno and pno <= pnum) or max(len(mn), len(qn)) > MAX_KEY_CHARS:
        return None
    return SplitPartRow(
        mn,
        packet.cn,
        qn,
        pnum,
        pno,
        fragment,
        backfill,
        received_at,
        connection_id,
        encode_segment(packet),  # plaintext (an SM4 part decrypted), as the session parsed it
    )


class SplitSweeper:
    """Assembles complete transfers from `split_parts` and expires the rest; one per gateway."""

    def __init__(
        self,
        db: Database,
        policy: TimePolicy,
        metrics: Metrics,
        *,
        timeout_s: float,
        recheck_s: float = 10.0,
        on_committed: Callable[[Sequence[DataBlock]], object] | None = None,
    ) -> None:
        self.db = db
        self.on_committed = on_committed  # an assembled transfer's data rows committed (monitoring)
        self.policy = policy
        self.metrics = metrics
        self.timeout = timedelta(seconds=timeout_s)
        self.recheck_s = min(recheck_s, timeout_s)
        self._keys: set[SplitKey] = set()
        self._last_recheck: float | None = None

    def stored(self, key: SplitKey) -> None:
        """A part of `key` committed: check the transfer at the next sweep."""
        if len(self._keys) < _MAX_PENDING_KEYS:  # beyond: the periodic recheck finds them
            self._keys.add(key)

    async def sweep(self, now: datetime) -> None:
        """Assemble what completed, expire what timed out. Raises the database's errors (the keys
        stay queued)."""
        keys, self._keys = self._keys, set()
        try:
            for key in await self.db.fetch_complete_splits(sorted(keys)) if keys else ():
                await self.finish(key, now)
        except BaseException:
            self._keys |= keys
            raise
        if self._last_recheck is not None and time.monotonic() - self._last_recheck < self.recheck_s:
            return
        for key in await self.db.fetch_complete_splits(None):
            await self.finish(key, now)
        for expired in await self.db.expire_splits(now - self.timeout):
            self._report(expired)
        self._last_recheck = time.monotonic()

    async def finish(self, key: SplitKey, now: datetime) -> bool:
        """Assemble one transfer and store its data; False if it was incomplete or done elsewhere."""
        parts = await self.db.fetch_split_parts(key)
        pnos = [p.pno for p in parts]
        if pnos != list(range(1, key[3] + 1)):
            return False
        block, outcome, error = None, "assembled", ""
        try:
            packet = assemble_parts([parse_segment(p.segment, parse_data=False) for p in parts])
            block = data_block(packet, now, self.policy, resend=any(p.backfill for p in parts))
        except Hj212Error as err:  # the raw frames keep it; marked assembled so it is not retried
            outcome, error = "unparsable", f"{err.reason}: {err}"
        try:
            done = await self.db.finish_split(key, pnos, block)
        except ROW_ERRORS as err:  # a value PostgreSQL refuses: marked, so one transfer never blocks the sweep
            if is_retryable(err):  # an outage or a lock conflict: the next sweep tries again
                raise
            outcome, error = "rejected", f"{type(err).__name__}: {err}"
            done = await self.db.finish_split(key, pnos, None)
        if not done:
            return False
        if outcome == "assembled" and block is not None and self.on_committed is not None:
            self.on_committed((block,))
        self.metrics.split_transfers.labels(outcome=outcome).inc()
        if error:
            _LOG.warning(f"split_{outcome}", mn=key[0], cn=key[1], qn=key[2], pnum=key[3], detail=error[:200])
        return True

    def _report(self, expired: ExpiredTransfer) -> None:
        """A transfer deleted by expiry: one WARNING if it lost data (a fragment, never assembled)."""
        if expired.assembled or not expired.fragments:
            return  # done, or parts that each stood alone and were stored as data
        mn, cn, qn, pnum = expired.key
        missing = [p for p in range(1, pnum + 1) if p not in expired.present]
        self.metrics.split_missing.inc(len(missing))
        self.metrics.split_transfers.labels(outcome="expired").inc()
        _LOG.warning(
            "split_parts_missing",
            mn=mn,
            cn=cn,
            qn=qn,
            pnum=pnum,
            missing=missing[:_MAX_LOGGED_PNOS],
            missing_count=len(missing),
        )
