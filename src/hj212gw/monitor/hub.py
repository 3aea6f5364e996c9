"""`Monitor`: what the server and ingest tell monitoring, fanned out to its trackers.

Three signals, all on the event loop and all cheap (they run for every connection and every
stored packet; a tracker that needs PostgreSQL queues the write for its own background task):
- `bound`: a connection of this replica now holds an MN (its first admitted packet, or a move);
- `released`: this replica no longer holds an MN (`cause`: the connection closed and why, or
  the MN moved to another connection or replica);
- `stored`: a packet's data rows committed (after COMMIT, never in the ack path's way).
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import structlog

from hj212gw.ingest.items import StoredData

__all__ = ["DeviceListener", "Monitor", "StoredData"]

_LOG = structlog.get_logger("hj212gw.monitor")


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

    def stored(self, data: StoredData) -> None:
        for listener in self.listeners:
            try:
                listener.stored(data)
            except Exception:
                _LOG.exception("monitor_bug", signal="stored", mn=data.mn)
