"""The Gateway: listening socket, shared writer/registry/metrics, timers, and the shutdown order.

Connection policies that span connections live here: total and per-IP limits, a newer connection
for the same MN replacing the older one, idle and first-packet deadlines, pausing every socket
while the write queue is full. The `connections` table is written in the background in batches.

Replicas and workers: every new MN binding is announced with a PostgreSQL NOTIFY on the schema's
channel; a gateway that holds an older connection for that MN retires it, as it would for a
newer connection of its own. Announcements go out once a second; while PostgreSQL is down they
are dropped (the older connection then ends by its idle timeout or when the DAS closes it).
"""

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
import structlog

from hj212gw.ingest.splits import SplitSweeper
from hj212gw.ingest.writer import BatchWriter
from hj212gw.metrics import Metrics
from hj212gw.server.auth import WrongPwBackoff, load_sm4_keys
from hj212gw.server.connection import DasConnection, Deps, ReadHold, session_config_from, time_policy_from
from hj212gw.server.live import LiveDevice
from hj212gw.server.pinning import Pinner
from hj212gw.server.registry import DeviceRegistry
from hj212gw.settings import Settings, split_host_port
from hj212gw.storage.announcements import channel_of
from hj212gw.storage.connections import ConnectionClosed, ConnectionOpened
from hj212gw.storage.db import DATABASE_ERRORS, OUTAGE_ERRORS, Database, is_retryable
from hj212gw.storage.rows import DeviceSeen
from hj212gw.supervisor import Supervisor

_Row = TypeVar("_Row")

_ID_BLOCK = 500
_CONNECTION_LOG_LIMIT = 200_000
_ANNOUNCE_LIMIT = 100_000


class Gateway:
    """Everything one gateway process serves; `start()` then `stop()`."""

    def __init__(self, settings: Settings, db: Database, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics or Metrics()
        self.metrics.watch_data_batches(db.direct_guard)
        devices = settings.devices
        self.registry = DeviceRegistry(unknown_mn=devices.unknown_mn, auth=devices.auth)
        self.pinner = Pinner(db, self.registry, self.metrics)
        self.wrong_pw_backoff = WrongPwBackoff(base_s=devices.wrong_pw_backoff_s, max_s=devices.wrong_pw_backoff_max_s)
        self.sm4_keys = load_sm4_keys(devices)
        self.supervisor = Supervisor(self.metrics)
        w = settings.writer
        self.writer = BatchWriter(
            db,
            max_batch_rows=w.max_batch_rows,
            linger_s=w.linger_ms / 1000,
            writers=w.writers,
            max_pending_items=w.max_pending_items,
            max_pending_bytes=w.max_pending_bytes,
            observer=self.metrics,
            supervisor=self.supervisor,
        )
        self.deps = Deps(
            settings=settings,
            writer=self.writer,
            registry=self.registry,
            metrics=self.metrics,
            session_config=session_config_from(settings, self.registry, self.sm4_keys),
            time_policy=time_policy_from(settings),
            gateway=self,
        )
        self.splits = SplitSweeper(db, self.deps.time_policy, self.metrics, timeout_s=settings.protocol.split_timeout_s)
        self.log = structlog.get_logger("hj212gw.gateway")
        self.connections: set[DasConnection] = set()
        self.by_mn: dict[str, DasConnection] = {}
        self._mn_of: dict[DasConnection, tuple[str, ...]] = {}  # the MNs each connection carries
        self._bound_at: dict[str, float] = {}  # MN -> wall-clock time of its current binding
        self._moved_at: dict[str, float] = {}  # MN -> monotonic time of its last move (bound MNs only)
        self._announce: list[str] = []
        self._listener: asyncpg.Connection | None = None
        self.channel = channel_of(db.schema)
        self.per_ip: defaultdict[str, int] = defaultdict(int)
        self.paused: set[DasConnection] = set()
        self.server: asyncio.Server | None = None
        self.port: int | None = None
        self.db_up = True
        self._ids: list[int] = []
        self._sightings: dict[str, DeviceSeen] = {}  # the latest per MN, until the next flush
        self._opened: list[ConnectionOpened] = []
        self._closed: list[ConnectionClosed] = []
        self._resuming = False
        self._stopping = False

    # -- start / stop --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.registry.refresh(self.db)
        await self._refill_ids()
        self.writer.start()
        host, port = split_host_port(self.settings.listen)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: DasConnection(self.deps),
            host,
            port,
            reuse_address=True,
            reuse_port=self.settings.workers > 1,  # the workers of one supervisor share the port
            backlog=4096,
        )
        await self._listen()
        self.port = self.server.sockets[0].getsockname()[1]
        self.metrics.dependency_up.labels(name="postgresql").set(1)
        self.supervisor.start("gateway-tick", self._tick)
        self.supervisor.start("gateway-housekeeping", self._housekeeping)
        self.log.info("gateway_listening", host=host, port=self.port, gateway_id=self.settings.gateway_id)

    async def stop(self) -> None:
        """Stop accepting, flush pending batches (acks go out as they commit), close, record."""
        self._stopping = True
        if self.server is not None:
            self.server.close()
        pending = self.writer.pending
        await self.writer.close(timeout_s=self.settings.shutdown_grace_s)
        for conn in list(self.connections):
            conn.close("shutdown")
        await asyncio.sleep(0)  # let connection_lost run
        await self.supervisor.stop()
        await self.pinner.stop()
        for flush in (self._flush_connection_log, self._flush_sightings):  # best effort: neither is data
            with contextlib.suppress(*OUTAGE_ERRORS, asyncpg.PostgresError):
                await flush()
        if self._listener is not None:
            with contextlib.suppress(*OUTAGE_ERRORS):
                await self._listener.close(timeout=2)
        self.log.info("gateway_stopped", flushed_items=pending, unflushed_items=self.writer.pending)

    # -- connection policy ---------------------------------------------------------------------

    def admit_connection(self, conn: DasConnection) -> str | None:
        """None to accept, or the refusal reason."""
        limits = self.settings.connections
        if self._stopping:
            return "shutting_down"
        if len(self.connections) >= limits.max_connections:
            return "max_connections"
        if self.per_ip[conn.ip] >= limits.max_connections_per_ip:
            return "max_connections_per_ip"
        self.connections.add(conn)
        self.per_ip[conn.ip] += 1
        if self.writer.full:
            self.pause(conn)
        return None

    def forget(self, conn: DasConnection) -> bool:
        if conn not in self.connections:
            return False
        self.connections.discard(conn)
        self.paused.discard(conn)
        self.per_ip[conn.ip] -= 1
        if self.per_ip[conn.ip] <= 0:
            del self.per_ip[conn.ip]
        for mn in self._mn_of.pop(conn, ()):
            if self.by_mn.get(mn) is conn:
                del self.by_mn[mn]
                self._bound_at.pop(mn, None)
                self._moved_at.pop(mn, None)
        return True

    def bind_mn(self, conn: DasConnection, mn: str) -> str | None:
        """Bind `mn`, whose PW `conn` presented, to `conn`; None, or why it may not.

        One connection may carry several MNs (up to `devices.max_mns_per_connection`). An MN that
        a live connection holds moves to the newer one (HJ 212-2017 §15) at most once per
        `devices.move_interval_s`; the older connection unbinds it, and if it carries no other MN
        it stops reading, sends the acks of what it already queued, and closes within
        `replace_grace_s`.
        """
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
            self.log.warning("mn_moved", mn=mn, old_peer=old.peer, new_peer=conn.peer, new_conn=conn.connection_id)
            self._unbind(old, mn, f"connection {conn.connection_id} ({conn.peer})")
        if mn not in held:
            self._mn_of[conn] = (*held, mn)
            if held:
                conn.log.info("das_mn_added", added=mn, mns=len(held) + 1)
        self.by_mn[mn] = conn
        self._bound_at[mn] = time.time()
        if len(self._announce) < _ANNOUNCE_LIMIT:
            self._announce.append(mn)
        return None

    def _unbind(self, conn: DasConnection, mn: str, by: str) -> None:
        """`mn` went elsewhere: `conn` keeps its other MNs, or retires if it carried only this one."""
        held = self._mn_of.get(conn, ())
        rest = tuple(m for m in held if m != mn)
        if self.by_mn.get(mn) is conn:
            del self.by_mn[mn]
        if rest:
            self._mn_of[conn] = rest
            return
        self._mn_of.pop(conn, None)
        conn.log.info("das_replaced", mn=mn, by=by)
        conn.retire("replaced_by_newer_connection", self.settings.connections.replace_grace_s)

    def auth_failed(self, conn: DasConnection, reason: str) -> float:
        """A packet on `conn` failed authentication: count it; return how long `conn` waits before
        its answer and close (its source IP's wrong-PW backoff, which also delays new connections)."""
        self.metrics.auth_failures.labels(reason=reason).inc()
        return self.wrong_pw_backoff.failed(conn.ip, time.monotonic())

    def auth_wait_s(self, conn: DasConnection) -> float:
        """How long a new connection waits before it is read: its IP's wrong-PW backoff, if any."""
        wait = self.wrong_pw_backoff.wait_s(conn.ip, time.monotonic())
        if wait > 0:
            self.metrics.auth_throttled.inc()
        return wait

    # -- MN bindings across replicas -----------------------------------------------------------

    async def _listen(self) -> None:
        """(Re)open the connection that receives other gateways' MN announcements."""
        if self._listener is not None and not self._listener.is_closed():
            return
        with contextlib.suppress(*OUTAGE_ERRORS):
            self._listener = await self.db.listen(self.channel, self._on_announcement)

    async def _send_announcements(self) -> None:
        if not self._announce:
            return
        mns, self._announce = self._announce, []
        payloads = [
            json.dumps({"gateway_id": self.settings.gateway_id, "mn": mn, "at": self._bound_at.get(mn, 0.0)})
            for mn in mns
        ]
        await self.db.announce(self.channel, payloads)

    def _on_announcement(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """Another gateway bound an MN: retire our connection for it if ours is the older one."""
        try:
            note = json.loads(payload)
            other, mn, at = str(note["gateway_id"]), str(note["mn"]), float(note["at"])
        except (ValueError, KeyError, TypeError):
            self.log.warning("bad_mn_announcement", payload=payload[:200])
            return
        conn = self.by_mn.get(mn)
        if other == self.settings.gateway_id or conn is None or self._bound_at.get(mn, 0.0) > at:
            return
        self._unbind(conn, mn, f"gateway {other}")

    def pause(self, conn: DasConnection) -> None:
        """Backpressure: the write queue is full; stop reading sockets until it has room.

        Every socket at once, not only the one whose read filled the queue: each socket read
        before its own turn to pause would add a whole read (up to 256 KiB of packets) to the
        queue, so 1,000 busy connections would overshoot the bound a thousandfold.
        """
        if conn in self.paused:
            return
        for each in (conn,) if self._resuming else tuple(self.connections):
            if each.transport is not None and each not in self.paused:
                each.hold_reading(ReadHold.WRITE_QUEUE)
                self.paused.add(each)
        self.metrics.paused_reading.set(len(self.paused))
        if not self._resuming:
            self._resuming = True
            asyncio.get_running_loop().create_task(self._resume_when_room())

    async def _resume_when_room(self) -> None:
        try:
            await self.writer.wait_for_room()
        finally:
            self._resuming = False
        paused, self.paused = self.paused, set()
        for conn in paused:
            conn.release_reading(ReadHold.WRITE_QUEUE)  # reads again unless its peer is not reading
        self.metrics.paused_reading.set(0)

    def online(self) -> dict[str, LiveDevice]:
        found = {}
        for mn, conn in self.by_mn.items():
            live = conn.live(mn)
            if live is not None:
                found[mn] = live
        return found

    def ready(self) -> bool:
        return not self.not_ready_reasons()

    def not_ready_reasons(self) -> list[str]:
        """Why the gateway is not ready (empty when it is), for /readyz."""
        reasons = []
        if self.server is None:
            reasons.append("the DAS listener is not accepting yet")
        if self._stopping:
            reasons.append("shutting down")
        if not self.writer.ready or not self.db_up:
            reasons.append("the database is down")
        reasons.extend(f"task {name} is down (restarting)" for name in self.supervisor.down())
        return reasons

    # -- timers --------------------------------------------------------------------------------

    async def _tick(self) -> None:
        limits = self.settings.connections
        while True:
            await asyncio.sleep(1.0)
            now_mono = time.monotonic()
            now = datetime.now(UTC)
            for conn in list(self.connections):
                silent = now_mono - conn.last_activity
                if silent > limits.idle_timeout_s:
                    conn.close("idle_timeout")
                elif (
                    conn.session.mn is None
                    and (now - conn.connected_at).total_seconds() > limits.first_packet_timeout_s
                ):
                    conn.close("no_valid_packet")
                else:
                    conn.poll(now)

    async def _housekeeping(self) -> None:
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._listen()
                await self._send_announcements()
                await self._flush_connection_log()
                await self._flush_sightings()
                await self.splits.sweep(datetime.now(UTC))
                await self.db.ensure_partitions_ahead(datetime.now(UTC))  # a round trip only for a new month
                if time.monotonic() - last_refresh > self.settings.devices.refresh_s:
                    await self.registry.refresh(self.db)
                    last_refresh = time.monotonic()
                if len(self._ids) < _ID_BLOCK // 2:
                    await self._refill_ids()
                up = await self.db.ping()
            except OUTAGE_ERRORS:
                up = False
            except asyncpg.PostgresError as err:  # never let one refused statement end housekeeping
                self.log.warning("housekeeping_failed", error=type(err).__name__, detail=str(err)[:200])
                up = self.db_up
            self.db_up = up

    # -- the connections table -----------------------------------------------------------------

    async def _refill_ids(self) -> None:
        with contextlib.suppress(*OUTAGE_ERRORS):
            self._ids.extend(await self.db.fetch_connection_ids(_ID_BLOCK))

    def next_connection_id(self) -> int | None:
        return self._ids.pop(0) if self._ids else None

    def record_open(self, conn: DasConnection) -> None:
        if conn.connection_id is not None and len(self._opened) < _CONNECTION_LOG_LIMIT:
            self._opened.append(
                ConnectionOpened(conn.connection_id, self.settings.gateway_id, conn.peer, conn.connected_at)
            )

    def record_close(self, conn: DasConnection, reason: str) -> None:
        if conn.connection_id is not None and len(self._closed) < _CONNECTION_LOG_LIMIT:
            self._closed.append(
                ConnectionClosed(
                    conn.connection_id, datetime.now(UTC), reason, conn.session.mn, conn.frames_ok, conn.frames_rejected
                )
            )

    # -- device sightings ----------------------------------------------------------------------

    def record_sighting(self, seen: DeviceSeen) -> None:
        """A device was seen (a connection's first packet, then at most every 10 s). Written to
        `devices` by the housekeeping task within about a second, not in the batch its packet's
        ack waits for: an ack vouches for the data and the raw frame, not for `last_seen`."""
        kept = self._sightings.get(seen.mn)
        if kept is None or seen.seen_at >= kept.seen_at:
            self._sightings[seen.mn] = seen

    async def _flush_sightings(self) -> None:
        if not self._sightings:
            return
        sightings, self._sightings = self._sightings, {}
        try:
            await self._write_rows("sighting", list(sightings.values()), self.db.save_sightings)
        except (*OUTAGE_ERRORS, asyncpg.PostgresError):
            for seen in sightings.values():  # kept for the next try; newer sightings win
                self.record_sighting(seen)
            raise

    async def _write_rows(self, what: str, rows: list[_Row], write: Callable[[list[_Row]], Awaitable[None]]) -> None:
        """Write rows in one go; if PostgreSQL refuses them (anything but an outage or a lock
        conflict: a NUL byte from a tolerated header, an index row too large for a 3,000-character
        MN, ...), write them one at a time and drop each refused one with a WARNING. Writes are
        idempotent, so a retry after an outage may repeat some. Raises outages and conflicts."""
        try:
            await write(rows)
        except DATABASE_ERRORS as err:
            if is_retryable(err):
                raise
            for row in rows:
                try:
                    await write([row])
                except DATABASE_ERRORS as row_err:
                    if is_retryable(row_err):
                        raise
                    self.log.warning(
                        f"{what}_rejected_by_database",
                        row=repr(row)[:200],
                        error=type(row_err).__name__,
                        sqlstate=getattr(row_err, "sqlstate", None),
                        detail=str(row_err)[:200],
                    )

    async def _flush_connection_log(self) -> None:
        if not self._opened and not self._closed:
            return
        opened, closed = self._opened, self._closed
        self._opened, self._closed = [], []

        try:  # opened before closed: a connection's row exists before its close is recorded
            if opened:
                await self._write_rows("connection_log", opened, self.db.save_connections_opened)
            if closed:
                await self._write_rows("connection_log", closed, self.db.save_connections_closed)
        except (*OUTAGE_ERRORS, asyncpg.PostgresError):
            self._opened = opened + self._opened
            self._closed = closed + self._closed
            raise
