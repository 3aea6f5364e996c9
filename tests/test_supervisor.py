"""Supervisor: a task that ends unexpectedly is logged once at ERROR, counted, restarted with a
capped, jittered backoff, and reported down until it runs again; stopping is no crash."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from hj212gw.supervisor import Supervisor


class Recorder:
    """SupervisorObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.restarts: list[str] = []
        self.states: list[tuple[str, bool]] = []

    def task_up(self, task: str, up: bool) -> None:
        self.states.append((task, up))

    def task_restarted(self, task: str) -> None:
        self.restarts.append(task)


async def until(check: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_a_task_that_raises_is_logged_once_counted_and_restarted() -> None:
    runs = 0
    recorder = Recorder()
    supervisor = Supervisor(recorder, backoff_initial_s=0.01, backoff_max_s=0.02)

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ValueError("boom")
        await asyncio.Event().wait()  # the second run keeps running

    with capture_logs() as logs:
        supervisor.start("writer", flaky)
        await until(lambda: runs == 2)
        await supervisor.stop()
    crashes = [e for e in logs if e["event"] == "task_crashed"]
    assert len(crashes) == 1
    assert crashes[0]["log_level"] == "error" and crashes[0]["task"] == "writer" and crashes[0]["exc_info"]
    assert recorder.restarts == ["writer"]
    assert recorder.states == [("writer", True), ("writer", False), ("writer", True)]


async def test_a_task_that_returns_while_running_is_a_crash() -> None:
    runs = 0
    recorder = Recorder()
    supervisor = Supervisor(recorder, backoff_initial_s=0.01)

    async def returns_once() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await asyncio.Event().wait()

    with capture_logs() as logs:
        supervisor.start("tick", returns_once)
        await until(lambda: runs == 2)
        await supervisor.stop()
    assert [(e["event"], e["log_level"]) for e in logs] == [("task_crashed", "error")]
    assert recorder.restarts == ["tick"]


async def test_down_while_waiting_for_the_restart() -> None:
    supervisor = Supervisor(backoff_initial_s=0.4)
    started = asyncio.Event()

    async def dies() -> None:
        started.set()
        raise RuntimeError("bug")

    with capture_logs():
        supervisor.start("housekeeping", dies)
        await started.wait()
        await until(lambda: supervisor.down() == ["housekeeping"])
        assert not supervisor.is_up("housekeeping")
        await supervisor.stop()
    assert supervisor.down() == []


async def test_stop_cancels_without_counting_a_crash() -> None:
    recorder = Recorder()
    supervisor = Supervisor(recorder)
    running = asyncio.Event()

    async def forever() -> None:
        running.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        supervisor.start("writer", forever)
        supervisor.start("tick", forever)
        await running.wait()
        await supervisor.stop(["writer"])
        assert supervisor.down() == [] and supervisor.is_up("tick")
        await supervisor.stop()
    assert logs == [] and recorder.restarts == []


async def test_a_stray_cancelled_error_is_a_crash_not_a_stop() -> None:
    runs = 0
    supervisor = Supervisor(backoff_initial_s=0.01)

    async def awaits_a_cancelled_future() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        await asyncio.Event().wait()

    with capture_logs() as logs:
        supervisor.start("writer", awaits_a_cancelled_future)
        await until(lambda: runs == 2)
        await supervisor.stop()
    assert [e["event"] for e in logs] == ["task_crashed"]


async def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    supervisor = Supervisor(backoff_initial_s=0.01, backoff_max_s=0.04)

    async def always_fails() -> None:
        raise RuntimeError("bug")

    with capture_logs() as logs:
        supervisor.start("writer", always_fails)
        await until(lambda: len(logs) >= 6)
        await supervisor.stop()
    waits = [e["restart_in_s"] for e in logs[:6]]
    caps = [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]
    assert all(cap / 2 - 0.001 <= wait <= cap + 0.001 for wait, cap in zip(waits, caps, strict=True)), waits


async def test_the_same_name_twice_is_refused() -> None:
    supervisor = Supervisor()

    async def forever() -> None:
        await asyncio.Event().wait()

    supervisor.start("writer", forever)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("writer", forever)
    await supervisor.stop()


async def test_a_task_that_ignores_its_cancellation_holds_a_stop_no_longer_than_stop_timeout_s() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # the bug this bound is for: a swallowed cancel
            await release.wait()

    supervisor = Supervisor(stop_timeout_s=0.2)
    supervisor.start("stubborn", stubborn)
    await asyncio.sleep(0)
    with capture_logs() as logs:
        async with asyncio.timeout(5):
            await supervisor.stop()
    assert [(e["event"], e["task"], e["log_level"]) for e in logs] == [("task_stop_timeout", "stubborn", "error")]
    release.set()
    await asyncio.sleep(0.01)  # it ends now
