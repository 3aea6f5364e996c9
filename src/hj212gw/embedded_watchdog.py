"""The embedded PostgreSQL's watchdog: notices that its postmaster died and starts it again.

A gateway that started its own embedded server (no `database_url`) is the only one that can bring
it back, so it checks every `interval_s` that the postmaster lives (a pid-file read, no
subprocess). When it has died: one WARNING `embedded_postgres_died`, readiness false (`up`),
a restart through `start_embedded` at every check until one succeeds, then one INFO
`embedded_postgres_restarted`. The blocking `check` serves the workers' supervisor loop as is;
`run` is the asyncio task of a single gateway. Meanwhile the writer sees an outage and acks
nothing, as for any PostgreSQL outage.
"""

from __future__ import annotations

import asyncio
import threading
import time

import structlog

from hj212gw.storage.embedded import EmbeddedPostgres, EmbeddedPostgresError, postmaster_alive, start_embedded

log = structlog.get_logger("hj212gw.embedded")

CHECK_INTERVAL_S = 2.0


class EmbeddedWatchdog:
    """Keeps one embedded server running; `up` is false from its death until it is back."""

    def __init__(self, server: EmbeddedPostgres, *, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.server = server
        self.interval_s = interval_s
        self.up = True
        self._down_since = 0.0
        self._attempts = 0
        self._last_error = ""
        self._closed = False
        self._checking = threading.Lock()  # a check runs in a thread; close() waits for it

    def close(self) -> None:
        """No more checks or restarts (before stopping the server); waits for one under way. Blocks."""
        with self._checking:
            self._closed = True

    def check(self) -> None:
        """One check, restarting the server if it died. Blocks for the restart (pg_ctl -w)."""
        with self._checking:
            if not self._closed and not postmaster_alive(self.server.data_dir):
                self._restart()

    def _restart(self) -> None:
        if self.up:
            self.up, self._down_since, self._attempts = False, time.monotonic(), 0
            log.warning("embedded_postgres_died", data_dir=str(self.server.data_dir))
        self._attempts += 1
        try:
            start_embedded(self.server.data_dir, port=self.server.port)
        except EmbeddedPostgresError as err:  # shared memory still held by dying backends, say: next check
            self._last_error = str(err)[-300:]
            return
        self.up = True
        down_s = round(time.monotonic() - self._down_since, 1)
        log.info(
            "embedded_postgres_restarted",
            data_dir=str(self.server.data_dir),
            down_s=down_s,
            attempts=self._attempts,
            last_error=self._last_error or None,
        )
        self._last_error = ""

    async def run(self) -> None:
        """Check every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.to_thread(self.check)
