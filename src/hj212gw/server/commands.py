"""`CommandRunner`: sends queued platform->DAS commands on this replica's live connections.

A command is a `commands` row inserted `queued` (API, CLI, or `submit` in this process) and
announced on the schema's command channel. Every replica listens; the one whose live
connection holds the MN claims the row (one conditional UPDATE: exactly one replica wins),
builds the frame from the catalog (`protocol.commands`) with a QN of that connection's session
and hands it to the connection, which retries it per OverTime/ReCount. From then on the
`monitor.commands.CommandTracker` follows the session's events to the outcome, and this runner
writes its updates. Any replica ends a row nobody claimed within `commands.offline_timeout_s` as
`device_offline`, so a command queued while every replica was down is never sent later; rows a
previous run of this replica left open end `failed` at start. One supervised task does all
the I/O; the listener's callbacks only queue work and wake it.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import structlog

from hj212gw.metrics import Metrics
from hj212gw.monitor.commands import CommandOutcome, CommandTracker, InFlight
from hj212gw.protocol.builders import Target, build_set_time
from hj212gw.protocol.commands import CommandError, CommandSpec, build_command, check_params, find_command
from hj212gw.protocol.constants import Cn
from hj212gw.protocol.cp import Items
from hj212gw.protocol.models import format_hj_time
from hj212gw.server.bindings import Bindings
from hj212gw.server.connection import DasConnection
from hj212gw.server.registry import DeviceRegistry
from hj212gw.settings import Settings
from hj212gw.storage.commands import CommandStore, CommandUpdate, NewCommand
from hj212gw.storage.db import DATABASE_ERRORS, OUTAGE_ERRORS, Database
from hj212gw.storage.devices import set_pw
from hj212gw.waiting import wait_set

_LOG = structlog.get_logger("hj212gw.commands")
SWEEP_INTERVAL_S = 1.0
MAX_CLAIMS = 10_000  # notifications waiting for their claim; more are left to expire


@dataclass(frozen=True, slots=True)
class CommandTicket:
    """A command `submit` queued: its row id and the outcome to await."""

    id: int
    outcome: "asyncio.Future[CommandOutcome]"


class CommandRunner:
    """Claims, sends and follows the commands of the MNs this replica's connections hold."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        bindings: Bindings,
        metrics: Metrics,
        registry: DeviceRegistry | None = None,
    ) -> None:
        self.settings = settings.commands
        self.gateway_id = settings.gateway_id
        self.device_tz = ZoneInfo(settings.device_timezone)
        self.store = CommandStore(db)
        self.db = db
        self.bindings = bindings
        self.metrics = metrics
        self.registry = registry
        self._pw_writes: set[asyncio.Task[None]] = set()
        self.tracker = CommandTracker(settle_s=self.settings.settle_s, wake=self._wake_up, on_final=self._count)
        self._claims: list[tuple[int, str, Callable[[CommandOutcome], None] | None]] = []
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._started = False
        for outcome in ("succeeded", "failed", "timed_out", "refused", "device_offline"):
            metrics.commands.labels(outcome=outcome)

    # -- the supervised task --------------------------------------------------------------------

    async def run(self) -> None:
        """Listen, claim and send, write progress, expire what nobody claimed; until cancelled."""
        if not self._started:
            with contextlib.suppress(*OUTAGE_ERRORS):
                abandoned = await self.store.abandon(self.gateway_id, "the gateway restarted before it finished")
                self._started = True
                if abandoned:
                    self._count("failed", abandoned)
        next_sweep = 0.0
        try:
            while True:
                self._wake.clear()
                await self.listen()
                await self._claim_waiting()
                self.tracker.tick(datetime.now(UTC))
                await self._save(self.tracker.take_updates())
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                    await self._expire()
                await wait_set(self._wake, SWEEP_INTERVAL_S)
        finally:
            await self.close()

    def _wake_up(self) -> None:
        self._wake.set()

    def _count(self, state: str, count: int = 1) -> None:
        self.metrics.commands.labels(outcome=state).inc(count)

    async def listen(self) -> None:
        """(Re)open the connection that hears queued commands (a no-op while it is open)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        with contextlib.suppress(*OUTAGE_ERRORS):
            self._listener = await self.db.listen(self.store.channel, self._on_notify)

    async def close(self) -> None:
        """Close the listening connection (the task does at its end; `Gateway.stop` too)."""
        if self._listener is not None:
            with contextlib.suppress(*OUTAGE_ERRORS):
                await self._listener.close(timeout=2)
            self._listener = None

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """A command was queued (`"<id> <mn>"`): claim it if a connection of ours holds the MN."""
        command_id, _, mn = payload.partition(" ")
        if not command_id.isdigit():
            _LOG.warning("bad_command_notification", payload=payload[:200])
            return
        if mn in self.bindings.by_mn and len(self._claims) < MAX_CLAIMS:
            self._claims.append((int(command_id), mn, None))
            self._wake.set()

    async def _expire(self) -> None:
        try:
            expired = await self.store.expire(self.settings.offline_timeout_s)
        except OUTAGE_ERRORS:
            return  # the housekeeping reports the outage once; the rows expire when it ends
        except DATABASE_ERRORS as err:
            _LOG.warning("command_expiry_failed", error=type(err).__name__, detail=str(err)[:200])
            return
        if expired:
            self._count("device_offline", expired)

    async def _save(self, updates: list[CommandUpdate]) -> None:
        if not updates:
            return
        try:
            await self.store.save(updates)
        except OUTAGE_ERRORS:
            self.tracker.put_back(updates)
        except DATABASE_ERRORS as err:  # a refused row: logged; the outcome is still counted
            _LOG.warning("command_update_failed", error=type(err).__name__, detail=str(err)[:200])

    # -- claiming and sending -------------------------------------------------------------------

    async def _claim_waiting(self) -> None:
        claims, self._claims = self._claims, []
        for command_id, mn, on_done in claims:
            try:
                await self._claim_and_send(command_id, mn, on_done)
            except DATABASE_ERRORS as err:
                _LOG.warning("command_claim_failed", id=command_id, error=type(err).__name__)
                if on_done is not None:
                    on_done(CommandOutcome(command_id, "failed", reason=f"database: {type(err).__name__}"))

    async def _claim_and_send(self, command_id: int, mn: str, on_done: Callable[[CommandOutcome], None] | None) -> None:
        conn = self.bindings.by_mn.get(mn)
        if conn is None or conn.gone:  # it moved away meanwhile: another replica or the expiry takes it
            if on_done is not None:  # submitted here, announced to nobody
                self._finish_now(command_id, "device_offline", "the device disconnected before it was sent", on_done)
            return
        qn = conn.session.new_qn(datetime.now(UTC))
        row = await self.store.claim(command_id, self.gateway_id, qn, self.settings.offline_timeout_s)
        if row is None:
            return
        now = datetime.now(UTC)
        over_time_s = row["over_time_s"] or self.settings.over_time_s
        re_count = row["re_count"] if row["re_count"] is not None else self.settings.re_count
        try:
            spec = find_command(row["cn"])
            items = check_params(spec, row["params"])
        except CommandError as err:  # inserted by something that skipped the catalog
            self._finish_now(command_id, "failed", str(err), on_done)
            return
        conn = self.bindings.by_mn.get(mn)
        target = conn.session.target() if conn is not None and not conn.gone else None
        if conn is None or target is None:
            self._finish_now(command_id, "failed", "connection closed before the command was sent", on_done)
            return
        data_cn = spec.data_cn
        new_pw = dict(items).get("NewPW") if spec.cn == Cn.SET_PASSWORD else None
        if new_pw:
            on_done = self._changing_pw(mn, new_pw, on_done)
        self.tracker.track(InFlight(command_id, mn, spec.cn, qn, data_cn, spec.expects_result, on_done))
        frame, refresh = self._frame(spec, target, qn, items, now)
        conn.send_command(
            frame, qn=qn, cn=spec.cn, over_time_s=over_time_s, re_count=re_count,
            expects_result=spec.expects_result, refresh=refresh,
        )  # fmt: skip
        _LOG.info("command_sent", id=command_id, mn=mn, cn=spec.cn, qn=qn)

    def _changing_pw(
        self, mn: str, new_pw: str, on_done: Callable[[CommandOutcome], None] | None
    ) -> Callable[[CommandOutcome], None]:
        """A 1072 in flight: the device may answer with its new PW already, so the registry admits
        both until the command ends; once it succeeded the new PW is pinned at once (here, the old
        one still admitted for a minute: the 9012 echoes it) and in PostgreSQL (for the other
        replicas and restarts). Otherwise the gateway that just changed the device's PW would
        refuse it as `wrong_pw`."""

        if self.registry is not None:
            self.registry.expect_pw(mn, new_pw)

        def done(outcome: CommandOutcome) -> None:
            if self.registry is not None:
                if outcome.state == "succeeded":
                    self.registry.change_pw(mn, new_pw)
                    held = self.bindings.by_mn.get(mn)
                    if held is not None:
                        held.session.pw = new_pw  # the next requests to it carry the new PW
                else:
                    self.registry.expect_pw(mn, None)
            if outcome.state == "succeeded":
                task = asyncio.get_running_loop().create_task(self._store_pw(mn, new_pw))
                self._pw_writes.add(task)
                task.add_done_callback(self._pw_writes.discard)
            if on_done is not None:
                on_done(outcome)

        return done

    async def _store_pw(self, mn: str, new_pw: str) -> None:
        try:
            async with self.db.pool.acquire() as conn:
                await set_pw(conn, mn, new_pw)
        except DATABASE_ERRORS as err:
            # This replica uses the new PW until its registry is refreshed from the old row: the
            # operator must store it (`hj212gw devices set-pw`). Never logged: the PW itself.
            _LOG.error("device_pw_not_stored", mn=mn, error=type(err).__name__)
        else:
            _LOG.info("device_pw_changed", mn=mn)

    def _frame(
        self, spec: CommandSpec, target: Target, qn: str, items: Items, now: datetime
    ) -> tuple[bytes, Callable[[datetime], bytes] | None]:
        """The request; a 1012 without SystemTime carries the time of each try (device time)."""
        if spec.cn != Cn.SET_TIME or any(name == "SystemTime" for name, _ in items):
            return build_command(spec, target, qn, items), None
        pol_id = dict(items).get("PolId")
        zone = self.device_tz

        def set_time_at(moment: datetime) -> bytes:
            return build_set_time(target, qn, format_hj_time(moment.astimezone(zone)), pol_id)

        return set_time_at(now), set_time_at

    def _finish_now(
        self, command_id: int, state: str, reason: str, on_done: Callable[[CommandOutcome], None] | None
    ) -> None:
        outcome = self.tracker.finish_untracked(command_id, state, reason, datetime.now(UTC))
        if on_done is not None:
            on_done(outcome)

    # -- what the listener and the connections tell ---------------------------------------------

    def progress(self, conn: DasConnection, event: object) -> None:
        """A request event, or a packet marked as an answer, on `conn` (ConnectionHost)."""
        if self.tracker.by_mn:  # nothing in flight: the usual case, one check per RF=1 packet
            self.tracker.progress(self.bindings.mns_of(conn), event, datetime.now(UTC))

    # -- in-process callers (automatic backfill) ------------------------------------------------

    async def submit(
        self,
        mn: str,
        command: str,
        params: Mapping[str, Any],
        *,
        purpose: str | None = None,
        gap_id: int | None = None,
        requested_by: str | None = None,
        over_time_s: float | None = None,
        re_count: int | None = None,
    ) -> CommandTicket:
        """Queue `command` (a CN or a catalog name) for `mn` and send it on this replica's connection.

        The row is persisted like any other command. If no connection of this replica holds
        `mn`, it ends `device_offline` at once. Await `ticket.outcome` for the final state.

        Raises:
            CommandError: unknown command or bad params (nothing is stored).
        """
        spec = find_command(command)
        check_params(spec, params)
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()

        def resolve(outcome: CommandOutcome) -> None:
            if not future.done():
                future.set_result(outcome)

        held = mn in self.bindings.by_mn
        new = NewCommand(
            mn, spec.cn, spec.name, dict(params), over_time_s, re_count, requested_by or f"gateway {self.gateway_id}",
            purpose, gap_id, "queued" if held else "device_offline",
            None if held else "no connection of this replica holds the device",
        )  # fmt: skip
        command_id = await self.store.insert(new, announce=False)  # claimed here, by this replica
        if held:
            self._claims.append((command_id, mn, resolve))
            self._wake.set()
        else:
            self._count("device_offline")
            resolve(CommandOutcome(command_id, "device_offline", reason=new.reason))
        return CommandTicket(command_id, future)
