"""`Leader`: elects one gateway replica for the work only one may do (scanning rules, reminders).

A PostgreSQL session advisory lock, held on a dedicated connection (never a pooled one: the
lock lives and dies with its session). The replica whose `pg_try_advisory_lock` succeeds leads
until its session ends; the others try again every `alerts.leader_check_s`. Leadership is lost
AT ONCE when the lock's connection closes (asyncpg's termination callback, before any await),
and when a ping gets no answer within `leader_check_s` (a half-open TCP connection). The
session is set to end on the server after `idle_session_timeout` = 5 × leader_check_s (≥ 10 s)
without a ping, so the server frees the lock of a replica cut off from it, but only after that
replica (pinging every leader_check_s, waiting leader_check_s for each answer) has stopped
leading: two leaders never overlap while clocks run at the same speed. docs/alerts.md, "Leader
election". Imports storage only for its error classes; holds no pool.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import structlog

from hj212gw.storage.db import OUTAGE_ERRORS
from hj212gw.waiting import wait_set

_LOG = structlog.get_logger("hj212gw.alerts")
RECONNECT_MAX_S = 30.0


def lock_key(schema: str, name: str) -> int:
    """The advisory lock's bigint for election `name` of the installation in `schema` (advisory
    locks are per database, so the schema is part of it)."""
    digest = hashlib.sha256(f"hj212gw:{schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LeaderConnectionLost(Exception):
    """The election's connection closed or stopped answering."""


_LOST_ERRORS: tuple[type[BaseException], ...] = (LeaderConnectionLost, *OUTAGE_ERRORS)


class Leader:
    """One replica's side of an election (see the module docstring).

    Args:
        dsn: PostgreSQL DSN (the lock's own connection is opened from it).
        schema: the installation's schema (part of the lock key; the connection's search_path).
        name: what is elected, e.g. "alerts".
        check_s: ping (or, when not leading, try the lock) this often; an answer later than this
            is a lost connection.
        connect_timeout_s: give up a connection attempt after this.
    """

    def __init__(
        self, dsn: str, schema: str, name: str = "alerts", *, check_s: float = 2.0, connect_timeout_s: float = 10.0
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.name = name
        self.key = lock_key(schema, name)
        self.check_s = check_s
        self.connect_timeout_s = connect_timeout_s
        self.connected = False
        self._leader = False
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()
        self._listeners: list[Callable[[bool], None]] = []
        self._conn: asyncpg.Connection | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader

    def add_listener(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(is_leader)` at every change (synchronously, where the change happens)."""
        self._listeners.append(callback)

    def not_ready_reasons(self) -> list[str]:
        """For /readyz: why this replica cannot take part in the election now."""
        return [] if self.connected else [f"the {self.name} leader election cannot reach PostgreSQL"]

    async def wait_until(self, leading: bool) -> None:
        """Return once this replica leads (`leading`) or does not."""
        await (self._leading if leading else self._following).wait()

    async def run(self) -> None:
        """Connect, campaign, hold; after a lost connection, connect again with backoff. Outages
        are one WARNING each, not a crash (a supervised task: only a bug ends it)."""
        pause_s = self.check_s
        while True:
            try:
                conn = await self._connect()
            except OUTAGE_ERRORS as err:
                if self.connected or pause_s == self.check_s:
                    _LOG.warning("leader_connect_failed", election=self.name, error=type(err).__name__)
                self.connected = False
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, RECONNECT_MAX_S)
                continue
            if pause_s != self.check_s:
                _LOG.info("leader_connected", election=self.name)
            pause_s = self.check_s
            try:
                await self._hold(conn)
            except _LOST_ERRORS as err:
                _LOG.warning("leader_connection_lost", election=self.name, error=type(err).__name__)
            except asyncio.CancelledError:  # stopped: the session ends below, and the lock with it
                self._set_leader(False, event="leader_resigned")
                raise
            finally:
                self.connected = False
                self._set_leader(False)
                conn.terminate()
                self._conn = None
            await asyncio.sleep(self.check_s)

    async def _connect(self) -> asyncpg.Connection:
        idle_ms = round(max(5 * self.check_s, 10.0) * 1000)
        conn = await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout_s,
            server_settings={
                "search_path": f'"{self.schema}"',
                "application_name": f"hj212gw-{self.name}-leader",
                "idle_session_timeout": f"{idle_ms}ms",
            },
        )
        self._conn = conn
        self.connected = True
        return conn

    async def _hold(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()

        def closed(_: object) -> None:
            self._set_leader(False)  # before anything else runs: no work starts on a lost lock
            lost.set()

        conn.add_termination_listener(closed)
        while True:
            if conn.is_closed():
                raise LeaderConnectionLost("closed")
            if self._leader:
                await conn.fetchval("SELECT 1", timeout=self.check_s)
            elif await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key, timeout=self.check_s):
                _LOG.info("leader_elected", election=self.name)
                self._set_leader(True)
            if await wait_set(lost, self.check_s):
                raise LeaderConnectionLost("closed")

    def _set_leader(self, leading: bool, *, event: str = "leader_lost") -> None:
        """Change leadership at once (no await: nothing runs between the change and the wake-ups)."""
        if self._leader is leading:
            return
        self._leader = leading
        (self._leading if leading else self._following).set()
        (self._following if leading else self._leading).clear()
        if not leading:
            log = _LOG.info if event == "leader_resigned" else _LOG.warning
            log(event, election=self.name)
        for callback in self._listeners:
            callback(leading)

    async def while_leader(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `factory()` whenever this replica leads; cancel it the moment leadership is lost.

        For the supervisor: `supervisor.start("alert-reminders", lambda: leader.while_leader(engine.run_reminders))`.
        An exception of the work is raised (a crash for the supervisor to restart)."""
        while True:
            await self.wait_until(True)
            work = asyncio.create_task(factory())
            lost = asyncio.create_task(self.wait_until(False))
            try:
                done, _ = await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (work, lost):
                    task.cancel()
                await asyncio.gather(work, lost, return_exceptions=True)
            if work in done and not work.cancelled():
                work.result()  # its exception, if any
                return  # the work ended on its own: the supervisor says so

    async def close(self) -> None:
        """Give up leadership and the connection (the supervisor's stop cancels `run` first)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close_quietly(conn.close(timeout=2.0), conn)
        self.connected = False
        self._set_leader(False, event="leader_resigned")


async def _close_quietly(closing: Awaitable[None], conn: asyncpg.Connection) -> None:
    try:
        await closing
    except (*OUTAGE_ERRORS, asyncpg.PostgresError):  # closing a broken connection: terminate it
        conn.terminate()
