"""`Monitor`: what the server and ingest tell monitoring, fanned out to its trackers.

Three signals, all on the event loop and all cheap (they run for every connection and every
stored packet; a tracker that needs PostgreSQL queues the write for its own background task):
- `bound`: a connection of this replica now holds an MN (its first admitted packet, or a move);
- `released`: this replica no longer holds an MN (`cause`: the connection's close reason, such as
  `peer_closed`, `peer_error`, `idle_timeout`, `shutdown`; or `state.MOVED_TO_CONNECTION` /
  `state.MOVED_TO_REPLICA` when the MN moved to another connection or replica);
- `stored`: a packet's data rows committed (the batch writer reports each committed batch's data
  blocks once, after their acks: `committed`).
"""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

import structlog

from hj212gw.storage.rows import DataBlock

__all__ = ["BACKFILL_ONLY", "EVERYTHING", "NOTHING", "DeviceListener", "Monitor", "StoredData"]

_LOG = structlog.get_logger("hj212gw.monitor")


class StoredData(NamedTuple):
    """One data packet whose rows committed."""

    mn: str
    cn: str
    data_time: datetime  # its DataTime (UTC); the receive time when it had none
    received_at: datetime
    backfill: bool  # RF=1 or an answer to a history fetch
    time_suspect: bool  # DataTime outside the tolerance window (or missing)
    fields: Mapping[str, str] | None = None  # the CP items as sent (for the rules), shared


class DeviceListener(Protocol):
    """A tracker that follows devices; every method must be quick and must not raise.

    A listener may declare `stored_kinds = BACKFILL_ONLY` (a class attribute): then `stored` is
    called only for backfilled data (RF=1, history answers), and the hub builds nothing for the
    other packets on its account; `NOTHING` (it follows connections only) skips `stored` always.
    """

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None: ...
    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None: ...
    def stored(self, data: StoredData) -> None: ...


EVERYTHING = "everything"
BACKFILL_ONLY = "backfill_only"
NOTHING = "nothing"


class Monitor:
    """Fans the server's signals out to the trackers; a tracker's bug is logged, never raised."""

    __slots__ = ("listeners",)

    def __init__(self, listeners: Sequence[DeviceListener] = ()) -> None:
        self.listeners = list(listeners)

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None:
        for listener in self.listeners:
            try:
                listener.bound(mn, connection_id, peer, now)
            except Exception:
                _LOG.exception("monitor_bug", signal="bound", mn=mn)

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None:
        for listener in self.listeners:
            try:
                listener.released(mn, connection_id, cause, now)
            except Exception:
                _LOG.exception("monitor_bug", signal="released", mn=mn)

    def committed(self, blocks: Sequence[DataBlock]) -> None:
        """The data blocks of one committed batch (the writer's `on_committed`).

        Once per batch, for every packet in it: one StoredData per block only when a listener
        wants it, and the listeners called in one loop (this ran per packet in the ack path's
        process, so it is kept to a tuple and a few calls)."""
        every, backfill = self._storing()
        if not every and not backfill:
            return
        for block in blocks:
            if not block.mn or block.data_time is None or block.received_at is None:
                continue
            if block.resend:
                data = StoredData(
                    block.mn, block.cn, block.data_time, block.received_at, True, block.time_suspect, block.fields
                )
                self._fan_out(data, every)
                self._fan_out(data, backfill)
            elif every:
                data = StoredData(
                    block.mn, block.cn, block.data_time, block.received_at, False, block.time_suspect, block.fields
                )
                self._fan_out(data, every)

    def stored(self, data: StoredData) -> None:
        every, backfill = self._storing()
        self._fan_out(data, every)
        if data.backfill:
            self._fan_out(data, backfill)

    def _storing(self) -> tuple[list[DeviceListener], list[DeviceListener]]:
        every: list[DeviceListener] = []
        backfill: list[DeviceListener] = []
        for listener in self.listeners:
            kinds = getattr(listener, "stored_kinds", EVERYTHING)
            if kinds == EVERYTHING:
                every.append(listener)
            elif kinds == BACKFILL_ONLY:
                backfill.append(listener)
        return every, backfill

    @staticmethod
    def _fan_out(data: StoredData, listeners: list[DeviceListener]) -> None:
        for listener in listeners:
            try:
                listener.stored(data)
            except Exception:
                _LOG.exception("monitor_bug", signal="stored", mn=data.mn)
