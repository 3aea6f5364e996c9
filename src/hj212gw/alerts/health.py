"""What every sink shares about outages: the observer the metrics implement, a dependency's up/down
state (one WARNING when it goes down, one INFO when it is back, `hj212gw_dependency_up{name}`),
and the jittered exponential backoff between attempts. Imports nothing of the gateway.
"""

from __future__ import annotations

import random
from typing import Protocol

import structlog


class SinkObserver(Protocol):
    """Metrics hooks; metrics.Metrics implements them."""

    def dependency(self, name: str, up: bool) -> None: ...
    def alerts_sent(self, sink: str, count: int) -> None: ...
    def alert_publish_failed(self, sink: str) -> None: ...
    def device_state_dropped(self) -> None: ...


class NullObserver:
    def dependency(self, name: str, up: bool) -> None:
        pass

    def alerts_sent(self, sink: str, count: int) -> None:
        pass

    def alert_publish_failed(self, sink: str) -> None:
        pass

    def device_state_dropped(self) -> None:
        pass


class Dependency:
    """An outside service (a broker, an HTTP receiver) as the gateway last found it.

    `down` logs `dependency_down` at WARNING only when the service was not already down;
    `up` logs `dependency_restored` at INFO only when it was down: one line each per outage.
    """

    def __init__(self, name: str, observer: SinkObserver) -> None:
        self.name = name
        self.observer = observer
        self.is_up: bool | None = None  # None: not tried yet
        self.log = structlog.get_logger("hj212gw.alerts").bind(dependency=name)

    def down(self, reason: str) -> None:
        if self.is_up is not False:
            self.log.warning("dependency_down", reason=reason)
        self.is_up = False
        self.observer.dependency(self.name, False)

    def up(self) -> None:
        if self.is_up is False:
            self.log.info("dependency_restored")
        self.is_up = True
        self.observer.dependency(self.name, True)


class Backoff:
    """Waits between attempts: doubling from `initial_s` to `max_s`, each drawn from [d/2, d]
    so that replicas (and sinks) that failed together do not retry together."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max(max_s, initial_s)
        self._next_s = initial_s

    def next_s(self) -> float:
        delay = self._next_s
        self._next_s = min(delay * 2, self.max_s)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next_s = self.initial_s
