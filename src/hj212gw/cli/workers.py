"""`hj212gw serve --workers N`: N gateway processes on one DAS port, under one supervisor.

One gateway process is one event loop, so it uses one core. With `--workers N` the supervisor
starts the embedded PostgreSQL when no URL is given (once, for all), then N workers. Each worker
is a whole gateway (its own loop, writer pool, device registry and metrics) and behaves like a
replica of its own: gateway_id `<id>-<i>`, admin HTTP on the `--http` port + i, the DAS port
shared through SO_REUSEPORT (the kernel spreads new connections over the workers). A newer
connection for an MN held by another worker replaces the older one through PostgreSQL NOTIFY,
exactly as between replicas on different hosts (server/listener.py).

A worker that exits on its own is restarted, after a pause that grows while it keeps dying.
SIGTERM/SIGINT is passed on to every worker, which drains as a single gateway does; then the
embedded PostgreSQL stops. The supervisor also watches the embedded server it started and
restarts it if it dies (embedded_watchdog.py). Exit code 0 after an orderly stop. A worker whose supervisor dies
without stopping it (kill -9) notices within a second and stops as on SIGTERM.
"""

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog

from hj212gw import native
from hj212gw.embedded_watchdog import CHECK_INTERVAL_S, EmbeddedWatchdog
from hj212gw.logs import configure_logging
from hj212gw.settings import Settings, split_host_port
from hj212gw.storage.embedded import EmbeddedPostgresError, start_embedded, stop_embedded

log = structlog.get_logger("hj212gw.workers")

_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 30.0
_HEALTHY_AFTER_S = 30.0  # a worker that ran this long starts over from the shortest pause


def worker_settings(settings: Settings, index: int, database_url: str) -> Settings:
    """The settings of worker `index`: the shared database, its own HTTP port and gateway id, and
    its own MQTT client id when one is set (a broker disconnects the older of two equal ids)."""
    host, port = split_host_port(settings.http)
    http_host = f"[{host}]" if ":" in host else host
    mqtt = settings.mqtt
    if mqtt.client_id is not None:
        mqtt = mqtt.model_copy(update={"client_id": f"{mqtt.client_id}-{index}"})
    return settings.model_copy(
        update={
            "database_url": database_url,
            "http": f"{http_host}:{port + index}",
            "gateway_id": f"{settings.gateway_id}-{index}",
            "mqtt": mqtt,
        }
    )


def _worker_main(settings: Settings, supervisor: int) -> None:
    from hj212gw.cli.serve import run  # imported in the worker: the supervisor needs no event loop

    configure_logging(settings.log_format, settings.log_level)
    structlog.contextvars.bind_contextvars(gateway_id=settings.gateway_id)
    threading.Thread(target=_stop_when_orphaned, args=(supervisor,), daemon=True).start()
    raise SystemExit(run(settings))


def _stop_when_orphaned(supervisor: int) -> None:
    """If the supervisor dies without stopping us (kill -9), drain and exit as on SIGTERM.

    `supervisor` is the pid the supervisor passed, not our getppid() at start-up: a worker that is
    still starting when the supervisor dies would read its new parent's pid and never notice."""
    while os.getppid() == supervisor:
        time.sleep(1.0)
    log.warning("supervisor_gone", supervisor_pid=supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


class _Worker:
    def __init__(self, index: int, settings: Settings) -> None:
        self.index = index
        self.settings = settings
        self.process: BaseProcess | None = None
        self.started_at = 0.0
        self.pause_s = _RESTART_MIN_S
        self.restart_at = 0.0

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no inherited loop, pool or sockets
        self.process = context.Process(
            target=_worker_main, args=(self.settings, os.getpid()), name=f"hj212gw-worker-{self.index}"
        )
        self.process.start()
        self.started_at = time.monotonic()
        log.info("worker_started", worker=self.index, pid=self.process.pid, http=self.settings.http)

    def check(self, now: float) -> None:
        """Restart the worker if it exited, once its pause is over."""
        process = self.process
        if process is not None and process.is_alive():
            return
        if process is not None:
            ran_s = now - self.started_at
            self.pause_s = _RESTART_MIN_S if ran_s > _HEALTHY_AFTER_S else min(self.pause_s * 2, _RESTART_MAX_S)
            self.restart_at = now + self.pause_s
            log.error("worker_exited", worker=self.index, exitcode=process.exitcode, restart_in_s=self.pause_s)
            self.process = None
        if now >= self.restart_at:
            self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.terminate()  # SIGTERM: the worker drains, acks what committed, exits

    def join(self, deadline: float) -> int | None:
        process = self.process
        if process is None:
            return 0
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker_killed", worker=self.index, reason="did not stop in time")
            process.kill()
            process.join()
        return process.exitcode


def supervise(settings: Settings) -> int:
    """Run `settings.workers` gateway processes until SIGTERM/SIGINT; 0 after an orderly stop."""
    embedded_dir, watchdog = None, None
    database_url = settings.database_url
    if not database_url:
        embedded_dir = (settings.data_dir / "postgres").expanduser().absolute()
        log.info("embedded_postgres_starting", data_dir=str(embedded_dir))
        try:
            server = start_embedded(embedded_dir)
        except EmbeddedPostgresError as err:
            log.error("gateway_start_failed", reason=type(err).__name__, detail=str(err))
            return 1
        database_url, watchdog = server.dsn, EmbeddedWatchdog(server)
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    workers = [_Worker(i, worker_settings(settings, i, database_url)) for i in range(settings.workers)]
    log.info("gateway_started", listen=settings.listen, workers=settings.workers, native=native.mode())
    next_check = time.monotonic() + CHECK_INTERVAL_S
    try:
        while not stopping:
            now = time.monotonic()
            for worker in workers:
                worker.check(now)
            if watchdog is not None and now >= next_check:
                watchdog.check()
                next_check = now + CHECK_INTERVAL_S
            time.sleep(0.2)
    finally:
        log.info("gateway_stopping", workers=len(workers))
        for worker in workers:
            worker.stop()
        deadline = time.monotonic() + settings.shutdown_grace_s + 15.0
        codes = [worker.join(deadline) for worker in workers]
        if embedded_dir is not None:
            stop_embedded(embedded_dir)
            log.info("embedded_postgres_stopped")
    return 0 if all(code == 0 for code in codes) else 1
