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

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

import structlog

from hj212gw.storage.rows import DataBlock

__all__ = ["DeviceListener", "Monitor", "StoredData"]

_LOG = structlog.get_logger("hj212gw.monitor")


class StoredData(NamedTuple):
    """One data packet whose rows committed."""

    mn: str
    cn: str
    data_time: datetime  # its DataTime (UTC); the receive time when it had none
    received_at: datetime
    backfill: bool  # RF=1 or an answer to a history fetch
    time_suspect: bool  # DataTime outside the tolerance window (or missing)


class DeviceListener(Protocol):
    """A tracker that follows devices; every method must be quick and must not raise."""

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None: ...
    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None: ...
    def stored(self, data: StoredData) -> None: ...


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
        """The data blocks of one committed batch (the writer's `on_committed`)."""
        if not self.listeners:
            return
        for block in blocks:
            if block.mn and block.data_time is not None and block.received_at is not None:
                self.stored(
                    StoredData(block.mn, block.cn, block.data_time, block.received_at, block.resend, block.time_suspect)
                )

    def stored(self, data: StoredData) -> None:
        for listener in self.listeners:
            try:
                listener.stored(data)
            except Exception:
                _LOG.exception("monitor_bug", signal="stored", mn=data.mn)
