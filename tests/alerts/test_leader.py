"""Leader election on the real server: one leader of two, failover when its session dies, work that
runs only while leading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from hj212gw.alerts.leader import Leader, lock_key
from hj212gw.supervisor import Supervisor

pytestmark = pytest.mark.integration


@pytest.fixture
async def running(pg_dsn: str, schema: str) -> AsyncIterator[Callable[[], Awaitable[Leader]]]:
    """Start Leader objects (each under its own supervisor, as replicas run them); stopped after."""
    supervisors: list[tuple[Supervisor, Leader]] = []

    async def start() -> Leader:
        leader, supervisor = Leader(pg_dsn, schema, "alerts", check_s=0.5), Supervisor()
        supervisor.start("alerts-leader", leader.run)
        supervisors.append((supervisor, leader))
        return leader

    yield start
    for supervisor, leader in supervisors:
        await supervisor.stop()
        await leader.close()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def test_lock_keys_differ_by_schema_and_name() -> None:
    assert len({lock_key("a", "alerts"), lock_key("b", "alerts"), lock_key("a", "scan")}) == 3
    assert lock_key("a", "alerts") == lock_key("a", "alerts")


async def test_one_of_two_leads_and_the_other_takes_over_when_its_backend_is_killed(
    running: Callable[[], Awaitable[Leader]], conn: asyncpg.Connection
) -> None:
    first = await running()
    await asyncio.wait_for(first.wait_until(True), 5)
    second = await running()
    changes: list[bool] = []
    first.add_listener(changes.append)
    await wait_for(lambda: second.connected)
    await asyncio.sleep(1.2)  # two rounds of trying the lock
    assert first.is_leader and not second.is_leader and first.not_ready_reasons() == []
    assert first._conn is not None
    pid = first._conn.get_server_pid()
    assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    await wait_for(lambda: not first.is_leader, timeout_s=1.0)  # lost at once
    assert changes == [False]
    took_s = await wait_for(lambda: second.is_leader, timeout_s=5.0)
    assert took_s < 5.0
    await asyncio.sleep(1.5)  # the first reconnects, and now follows
    assert first.connected and not first.is_leader and second.is_leader


async def test_work_runs_only_while_leading_and_is_cancelled_when_leadership_is_lost(
    running: Callable[[], Awaitable[Leader]], conn: asyncpg.Connection
) -> None:
    leader = await running()
    runs: list[str] = []

    async def work() -> None:
        runs.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            runs.append("stopped")

    supervisor = Supervisor()
    supervisor.start("alert-reminders", lambda: leader.while_leader(work))
    try:
        await wait_for(lambda: runs == ["started"])
        assert leader._conn is not None
        await conn.fetchval("SELECT pg_terminate_backend($1)", leader._conn.get_server_pid())
        await wait_for(lambda: runs[:2] == ["started", "stopped"], timeout_s=2.0)
        await wait_for(lambda: runs == ["started", "stopped", "started"], timeout_s=10.0)  # leads again
        assert supervisor.down() == []
    finally:
        await supervisor.stop()


async def test_a_leader_that_cannot_reach_postgresql_is_not_ready() -> None:
    leader = Leader("postgresql://postgres@127.0.0.1:1/none", "hj212gw", check_s=0.2, connect_timeout_s=0.5)
    task = asyncio.create_task(leader.run())
    await asyncio.sleep(0.5)
    assert not leader.is_leader and leader.not_ready_reasons() == ["the alerts leader election cannot reach PostgreSQL"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
