"""MN -> live connection: which connection holds each MN, moves between connections, and the same
across replicas and workers.

One connection may carry several MNs (up to `devices.max_mns_per_connection`). An MN that a live
connection holds moves to a newer one (HJ 212-2017 §15) at most once per `devices.move_interval_s`;
the older connection unbinds it, and if it carries no other MN it retires (stops reading, sends
the acks of what it already queued, closes within `replace_grace_s`).

Every new binding is announced with a PostgreSQL NOTIFY on the schema's channel (the SQL is in
storage.announcements, through `Database.listen`/`announce`); a gateway that holds an older
connection for that MN retires it, as it would for a newer connection of its own. Announcements
go out once a second; while PostgreSQL is down they are dropped (the older connection then ends by
its idle timeout or when the DAS closes it).
"""

import contextlib
import json
import time
from datetime import UTC, datetime

import asyncpg
import structlog

from hj212gw.metrics import Metrics
from hj212gw.monitor.hub import Monitor
from hj212gw.monitor.state import MOVED_TO_CONNECTION, MOVED_TO_REPLICA
from hj212gw.server.connection import DasConnection
from hj212gw.server.live import LiveDevice
from hj212gw.settings import Settings
from hj212gw.storage.announcements import channel_of
from hj212gw.storage.db import OUTAGE_ERRORS, Database

_ANNOUNCE_LIMIT = 100_000
_LOG = structlog.get_logger("hj212gw.gateway")


class Bindings:
    """The MNs of one gateway process's live connections."""

    def __init__(self, settings: Settings, db: Database, metrics: Metrics, monitor: Monitor | None = None) -> None:
        self.settings = settings
        self.monitor = monitor or Monitor()
        self.db = db
        self.metrics = metrics
        self.by_mn: dict[str, DasConnection] = {}
        self._mn_of: dict[DasConnection, tuple[str, ...]] = {}  # the MNs each connection carries
        self._bound_at: dict[str, float] = {}  # MN -> wall-clock time of its current binding
        self._moved_at: dict[str, float] = {}  # MN -> monotonic time of its last move (bound MNs only)
        self._announce: list[str] = []
        self._listener: asyncpg.Connection | None = None
        self.channel = channel_of(db.schema)

    def bind(self, conn: DasConnection, mn: str) -> str | None:
        """Bind `mn`, whose PW `conn` presented, to `conn`; None, or why it may not.

        A connection that is closing or retiring binds nothing (None: its packet is still stored):
        a last frame taken at the end of the stream must not take the MN back from a live connection,
        nor bind it to a connection that is gone.
        """
        if self.by_mn.get(mn) is conn or conn.gone:
            return None
        held = self._mn_of.get(conn, ())
        if mn not in held and len(held) >= self.settings.devices.max_mns_per_connection:
            return "too_many_mns"
        old = self.by_mn.get(mn)
        if old is not None and old is not conn and not old.gone:
            now = time.monotonic()
            last = self._moved_at.get(mn)
            if last is not None and now - last < self.settings.devices.move_interval_s:
                self.metrics.mn_moves.labels(outcome="rate_limited").inc()
                return "mn_move_rate_limited"
            self._moved_at[mn] = now
            self.metrics.mn_moves.labels(outcome="moved").inc()
            _LOG.warning("mn_moved", mn=mn, old_peer=old.peer, new_peer=conn.peer, new_conn=conn.connection_id)
            self._unbind(old, mn, f"connection {conn.connection_id} ({conn.peer})", MOVED_TO_CONNECTION)
        if mn not in held:
            self._mn_of[conn] = (*held, mn)
            if held:
                conn.log.info("das_mn_added", added=mn, mns=len(held) + 1)
        self.by_mn[mn] = conn
        self._bound_at[mn] = time.time()
        self.monitor.bound(mn, conn.connection_id, conn.peer, datetime.now(UTC))
        if len(self._announce) < _ANNOUNCE_LIMIT:
            self._announce.append(mn)
        return None

    def forget(self, conn: DasConnection) -> None:
        """`conn` is gone: the MNs it held are unbound (monitoring is told why it closed)."""
        cause = conn.closing_reason or "peer_closed"
        for mn in self._mn_of.pop(conn, ()):
            if self.by_mn.get(mn) is conn:
                del self.by_mn[mn]
                self._bound_at.pop(mn, None)
                self._moved_at.pop(mn, None)
                self.monitor.released(mn, conn.connection_id, cause, datetime.now(UTC))

    def _unbind(self, conn: DasConnection, mn: str, by: str, cause: str) -> None:
        """`mn` went elsewhere (`cause`: to a connection or a replica): `conn` keeps its other MNs,
        or retires if it carried only this one."""
        held = self._mn_of.get(conn, ())
        rest = tuple(m for m in held if m != mn)
        if self.by_mn.get(mn) is conn:
            del self.by_mn[mn]
            self.monitor.released(mn, conn.connection_id, cause, datetime.now(UTC))
        if rest:
            self._mn_of[conn] = rest
            return
        self._mn_of.pop(conn, None)
        conn.log.info("das_replaced", mn=mn, by=by)
        conn.retire("replaced_by_newer_connection", self.settings.connections.replace_grace_s)

    def mns_of(self, conn: DasConnection) -> tuple[str, ...]:
        """The MNs `conn` holds (usually one)."""
        return self._mn_of.get(conn, ())

    def online(self) -> dict[str, LiveDevice]:
        """MN -> the connection holding it, for the admin API."""
        return {mn: conn.live(mn) for mn, conn in self.by_mn.items()}

    # -- across replicas -----------------------------------------------------------------------

    async def listen(self) -> None:
        """(Re)open the connection that receives other gateways' MN announcements."""
        if self._listener is not None and not self._listener.is_closed():
            return
        with contextlib.suppress(*OUTAGE_ERRORS):
            self._listener = await self.db.listen(self.channel, self._on_announcement)

    async def send_announcements(self) -> None:
        if not self._announce:
            return
        mns, self._announce = self._announce, []
        payloads = [
            json.dumps({"gateway_id": self.settings.gateway_id, "mn": mn, "at": self._bound_at.get(mn, 0.0)})
            for mn in mns
        ]
        await self.db.announce(self.channel, payloads)

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(*OUTAGE_ERRORS):
                await self._listener.close(timeout=2)

    def _on_announcement(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """Another gateway bound an MN: retire our connection for it if ours is the older one."""
        try:
            note = json.loads(payload)
            other, mn, at = str(note["gateway_id"]), str(note["mn"]), float(note["at"])
        except (ValueError, KeyError, TypeError):
            _LOG.warning("bad_mn_announcement", payload=payload[:200])
            return
        conn = self.by_mn.get(mn)
        if other == self.settings.gateway_id or conn is None or self._bound_at.get(mn, 0.0) > at:
            return
        self._unbind(conn, mn, f"gateway {other}", MOVED_TO_REPLICA)
