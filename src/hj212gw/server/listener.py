"""The listener (`Gateway`): the listening socket, the shared writer/registry/metrics, timers, and
the shutdown order. It implements `connection.ConnectionHost` for the connections it accepts.

Connection policies that span connections live here: total and per-IP limits, idle and
first-packet deadlines, the wrong-PW backoff per source IP, pausing every socket while the write
queue is full. MN bindings (a newer connection replacing an older one, here or on another
replica) are bindings.py; the sightings and the `connections` table are written in the background
by ingest.side_writes; split transfers are assembled by ingest.splits. Housekeeping runs all of
them about once a second.
"""

import asyncio
import contextlib
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from hj212gw.alerts.pipeline import AlertPipeline
from hj212gw.ingest.intake import Intake
from hj212gw.ingest.side_writes import SideWrites
from hj212gw.ingest.splits import SplitSweeper
from hj212gw.ingest.writer import BatchWriter
from hj212gw.metrics import Metrics
from hj212gw.monitor.backfill import Backfill, BackfillConfig
from hj212gw.monitor.backfill_plan import RetryPolicy
from hj212gw.monitor.devices import DeviceTracker
from hj212gw.monitor.gaps import GapTracker
from hj212gw.monitor.hub import Monitor
from hj212gw.server.admission import ReadAdmission
from hj212gw.server.auth import WrongPwBackoff, load_sm4_keys
from hj212gw.server.bindings import Bindings
from hj212gw.server.commands import CommandRunner
from hj212gw.server.config import session_config_from, time_policy_from
from hj212gw.server.connection import DasConnection, Deps
from hj212gw.server.flow import ReadHold
from hj212gw.server.live import LiveDevice
from hj212gw.server.pinning import Pinner
from hj212gw.server.registry import DeviceRegistry
from hj212gw.settings import Settings, split_host_port
from hj212gw.storage.connections import ConnectionClosed, ConnectionOpened
from hj212gw.storage.db import DATABASE_ERRORS, OUTAGE_ERRORS, Database
from hj212gw.storage.device_state import DeviceStateStore
from hj212gw.storage.gaps import GapStore
from hj212gw.supervisor import Supervisor


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
        self.supervisor = Supervisor(self.metrics)
        self.monitor = Monitor()  # the trackers of issue #12 subscribe here
        self.writer = self._writer()
        time_policy = time_policy_from(settings)
        self.splits = SplitSweeper(
            db, time_policy, self.metrics, timeout_s=settings.protocol.split_timeout_s,
            on_committed=self.monitor.committed,
        )  # fmt: skip
        self.side_writes = SideWrites(db)
        self.device_tracker = DeviceTracker(
            DeviceStateStore(db), settings.device_state, settings.gateway_id, self.metrics,
            registry_refresh_s=devices.refresh_s,
        )  # fmt: skip
        tracking = settings.monitoring  # off: the command channel only (and a baseline to measure against)
        if tracking:
            self.monitor.listeners.append(self.device_tracker)
        self.gaps = GapTracker(
            GapStore(db), settings.gaps, owner=settings.gateway_id, device_timezone=settings.device_timezone,
            fixed_periods=lambda: self.device_tracker.states.fixed,
        )  # fmt: skip
        if tracking:
            self.monitor.listeners.append(self.gaps)
        self.metrics.watch_gaps(self.gaps)
        self.bindings = Bindings(settings, db, self.metrics, self.monitor)
        self.commands = CommandRunner(settings, db, self.bindings, self.metrics, self.registry)
        self.monitor.listeners.append(self.commands.tracker)
        self.backfill = self._backfill()
        if tracking and settings.backfill.enabled:
            self.monitor.listeners.append(self.backfill)
        self.alerts = self._alerts()
        intake = Intake(self.writer, self.splits, self.side_writes, time_policy, self.metrics.data_time_suspect.inc)
        self.admission = ReadAdmission(self.writer, ahead_rows=settings.writer.admission_rows)
        self.metrics.watch_admission(self.admission)
        self.deps = Deps(
            settings=settings,
            intake=intake,
            registry=self.registry,
            metrics=self.metrics,
            session_config=session_config_from(settings, self.registry, load_sm4_keys(devices)),
            host=self,
            admission=self.admission,
        )
        self.log = structlog.get_logger("hj212gw.gateway")
        self.connections: set[DasConnection] = set()
        self.per_ip: defaultdict[str, int] = defaultdict(int)
        self.paused: set[DasConnection] = set()
        self.server: asyncio.Server | None = None
        self.port: int | None = None
        self.db_up = True
        self._resuming = False
        self._stopping = False

    def _writer(self) -> BatchWriter:
        w = self.settings.writer
        return BatchWriter(
            self.db,
            max_batch_rows=w.max_batch_rows,
            linger_s=w.linger_ms / 1000,
            writers=w.writers,
            max_pending_items=w.max_pending_items,
            max_pending_bytes=w.max_pending_bytes,
            observer=self.metrics,
            supervisor=self.supervisor,
            on_committed=self.monitor.committed,
        )

    def _alerts(self) -> AlertPipeline | None:
        """Issue #13: the rules judge committed packets (after the acks) and device states."""
        if not self.settings.alerts.enabled:
            return None
        alerts = AlertPipeline(self.settings, self.db, self.db.dsn, self.metrics, self.supervisor)
        self.monitor.listeners.append(alerts.runner)
        self.device_tracker.subscribers.append(alerts.device_changed)
        return alerts

    def _backfill(self) -> Backfill:
        b = self.settings.backfill
        config = BackfillConfig(
            rate_per_s=b.rate_per_s, burst=b.burst, settle_s=b.settle_s, sweep_s=b.sweep_s,
            horizon=timedelta(days=self.settings.gaps.horizon_days),
            policy=RetryPolicy(max_attempts=b.max_attempts, initial_s=b.retry_initial_s, max_s=b.retry_max_s),
        )  # fmt: skip
        return Backfill(
            self.gaps, self.commands, config, device_tz=ZoneInfo(self.settings.device_timezone),
            held=self.bindings.by_mn.__contains__, observer=self.metrics,
        )  # fmt: skip

    # -- start / stop --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.registry.refresh(self.db)
        await self.side_writes.refill_ids()
        if self.settings.monitoring:
            await self.device_tracker.load()
        self.writer.start()
        self.supervisor.start("read-admission", self.admission.run)
        if self.alerts is not None:
            await self.alerts.start()
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
        await self.bindings.listen()
        await self.commands.listen()  # before the first request to the API can queue a command
        self.port = self.server.sockets[0].getsockname()[1]
        self.metrics.dependency_up.labels(name="postgresql").set(1)
        self.supervisor.start("gateway-tick", self._tick)
        self.supervisor.start("gateway-housekeeping", self._housekeeping)
        self.supervisor.start("gateway-commands", self.commands.run)
        if self.settings.monitoring:
            self.supervisor.start("device-state-scan", self.device_tracker.run_scan)
            self.supervisor.start("device-state-flush", self.device_tracker.run_flush)
            self.supervisor.start("gateway-gaps", self.gaps.run)
            if self.settings.backfill.enabled:
                self.supervisor.start("gateway-backfill", self.backfill.run)
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
        if self.alerts is not None:
            await self.alerts.stop()
        await self.pinner.stop()
        with contextlib.suppress(*OUTAGE_ERRORS, asyncpg.PostgresError):  # best effort: neither is data
            await self.side_writes.flush_connection_log()
        with contextlib.suppress(*OUTAGE_ERRORS, asyncpg.PostgresError):
            await self.side_writes.flush_sightings()
        with contextlib.suppress(*OUTAGE_ERRORS, asyncpg.PostgresError):  # what the closes changed
            await self.device_tracker.flush(with_data=True)
        with contextlib.suppress(*DATABASE_ERRORS):  # what changed in the last second survives a restart
            await self.gaps.flush(loading=False)
        await self.bindings.close()
        await self.commands.close()
        self.log.info("gateway_stopped", flushed_items=pending, unflushed_items=self.writer.pending)

    # -- ConnectionHost ------------------------------------------------------------------------

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
        self.bindings.forget(conn)
        return True

    def bind_mn(self, conn: DasConnection, mn: str) -> str | None:
        return self.bindings.bind(conn, mn)

    def pin(self, mn: str, pw: str | None) -> "asyncio.Future[None]":
        return self.pinner.pin(mn, pw)

    def command_progress(self, conn: DasConnection, event: object) -> None:
        self.commands.progress(conn, event)

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

    def next_connection_id(self) -> int | None:
        return self.side_writes.next_connection_id()

    def record_open(self, conn: DasConnection) -> None:
        if conn.connection_id is not None:
            opened = ConnectionOpened(conn.connection_id, self.settings.gateway_id, conn.peer, conn.connected_at)
            self.side_writes.record_open(opened)

    def record_close(self, conn: DasConnection, reason: str) -> None:
        if conn.connection_id is not None:
            self.side_writes.record_close(
                ConnectionClosed(
                    conn.connection_id, datetime.now(UTC), reason, conn.mn, conn.frames_ok, conn.frames_rejected
                )
            )

    def pause(self, conn: DasConnection) -> None:
        """Backpressure: the write queue is full; stop reading sockets until it has room.

        Every socket at once, not only the one whose read filled the queue: each socket read
        before its own turn to pause would add a whole read (up to 256 KiB of packets) to the
        queue, so 1,000 busy connections would overshoot the bound a thousandfold.
        """
        if conn in self.paused:
            return
        for each in (conn,) if self._resuming else tuple(self.connections):
            if each not in self.paused:
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

    # -- state for the admin API ---------------------------------------------------------------

    def online(self) -> dict[str, LiveDevice]:
        return self.bindings.online()

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
        if self.alerts is not None:
            reasons.extend(self.alerts.not_ready_reasons())
        return reasons

    # -- timers --------------------------------------------------------------------------------

    async def _tick(self) -> None:
        limits = self.settings.connections
        while True:
            await asyncio.sleep(1.0)
            now_mono = time.monotonic()
            now = datetime.now(UTC)
            for conn in list(self.connections):
                if now_mono - conn.last_activity > limits.idle_timeout_s:
                    conn.close("idle_timeout")
                elif conn.mn is None and (now - conn.connected_at).total_seconds() > limits.first_packet_timeout_s:
                    conn.close("no_valid_packet")
                else:
                    conn.poll(now)

    async def _housekeeping(self) -> None:
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.bindings.listen()
                await self.bindings.send_announcements()
                await self.side_writes.flush()
                await self.splits.sweep(datetime.now(UTC))
                await self.db.ensure_partitions_ahead(datetime.now(UTC))  # a round trip only for a new month
                if time.monotonic() - last_refresh > self.settings.devices.refresh_s:
                    await self.registry.refresh(self.db)
                    last_refresh = time.monotonic()
                await self.side_writes.refill_ids(when_low=True)
                up = await self.db.ping()
            except OUTAGE_ERRORS:
                up = False
            except asyncpg.PostgresError as err:  # never let one refused statement end housekeeping
                self.log.warning("housekeeping_failed", error=type(err).__name__, detail=str(err)[:200])
                up = self.db_up
            self.db_up = up
