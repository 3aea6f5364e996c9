"""`Supervisor`: keeps the gateway's long-running tasks alive and says which are down.

A supervised task that ends unexpectedly (raises, or returns while the supervisor is not
stopping) is logged once at ERROR with its traceback (`task_crashed`), counted through the
observer (`hj212gw_task_restarts_total{task}`), and started again after a jittered exponential
backoff; while it waits for that restart it is down, and readiness says so. Cancellation by
`stop()` is not a crash. Imports nothing of the gateway: no protocol, storage, metrics or settings.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import structlog

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class SupervisorObserver(Protocol):
    """Metrics hooks; metrics.py provides the Prometheus implementation."""

    def task_up(self, task: str, up: bool) -> None: ...
    def task_restarted(self, task: str) -> None: ...


class _NullObserver:
    def task_up(self, task: str, up: bool) -> None:
        pass

    def task_restarted(self, task: str) -> None:
        pass


class Supervisor:
    """Runs named coroutines; restarts each that ends unexpectedly, with backoff.

    Args:
        observer: metrics hooks.
        backoff_initial_s: wait before the first restart (before jitter: each wait is drawn
            from [delay / 2, delay]).
        backoff_max_s: the cap of the doubling wait.
        healthy_after_s: a task that ran this long before it ended restarts after the initial
            wait again, not after the doubled one.
    """

    def __init__(
        self,
        observer: SupervisorObserver | None = None,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        healthy_after_s: float = 60.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.observer: SupervisorObserver = observer or _NullObserver()
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.stop_timeout_s = stop_timeout_s  # a task that ignores its cancellation never holds a stop longer
        self.log = structlog.get_logger("hj212gw.supervisor")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._up: dict[str, bool] = {}
        self._stopping: set[str] = set()  # names being stopped: their end is no crash

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run `factory()` as the task `name` (call inside the running loop); names are unique."""
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        self._stopping.discard(name)
        self._set_up(name, True)
        self._tasks[name] = asyncio.create_task(self._keep_running(name, factory), name=name)

    def down(self) -> list[str]:
        """Names of the supervised tasks that are not running now (waiting for their restart)."""
        return sorted(name for name, up in self._up.items() if not up)

    def is_up(self, name: str) -> bool:
        return self._up.get(name, False)

    async def stop(self, names: Iterable[str] | None = None) -> None:
        """Cancel the named supervised tasks (default: all) and wait for them, at most
        `stop_timeout_s` (then one ERROR per task still running, and the stop goes on); not a crash."""
        chosen = list(self._tasks) if names is None else [n for n in names if n in self._tasks]
        self._stopping.update(chosen)
        tasks = [self._tasks.pop(name) for name in chosen]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=self.stop_timeout_s)
            for name, task in zip(chosen, tasks, strict=True):
                if task in stuck:  # a bug (a library that swallows the cancel): shutdown goes on without it
                    self.log.error("task_stop_timeout", task=name, waited_s=self.stop_timeout_s)
        for name in chosen:
            self._up.pop(name, None)

    async def _keep_running(self, name: str, factory: TaskFactory) -> None:
        delay = self.backoff_initial_s
        while True:
            started = time.monotonic()
            self._set_up(name, True)
            failure = await self._run_once(name, factory)
            if failure is None:
                return
            self._set_up(name, False)
            self.observer.task_restarted(name)
            if time.monotonic() - started >= self.healthy_after_s:
                delay = self.backoff_initial_s
            wait_s = delay * random.uniform(0.5, 1.0)
            self.log.error("task_crashed", task=name, restart_in_s=round(wait_s, 3), **failure)
            await asyncio.sleep(wait_s)
            delay = min(delay * 2, self.backoff_max_s)

    async def _run_once(self, name: str, factory: TaskFactory) -> dict[str, object] | None:
        """Run the coroutine once; None if it ended because it was stopped, else what to log."""
        try:
            await factory()
        except asyncio.CancelledError as err:
            current = asyncio.current_task()
            if name in self._stopping or (current is not None and current.cancelling()):
                raise  # stop() or whoever owns the loop cancelled us: not a crash
            return {"exc_info": err}  # a CancelledError nobody asked for (an awaited future's): a bug
        except Exception as err:
            return {"exc_info": err}
        if name in self._stopping:
            return None
        return {"detail": "returned while the gateway was running"}

    def _set_up(self, name: str, up: bool) -> None:
        if self._up.get(name) is not up:
            self._up[name] = up
            self.observer.task_up(name, up)
