"""What a new user met with the embedded PostgreSQL (issue #9, item 11), on real embedded servers.

- `hj212gw migrate` beside a running `serve` stopped the gateway's server: now refused, one line.
- A dead embedded server stayed dead: the gateway's watchdog restarts it (readiness false meanwhile).
- As root, the start ran `chmod g+rx,o+rx` on every folder above data_dir: now nothing above it
  changes; an unreachable data_dir is one error saying what to do.
- A second `serve` on a busy port printed a traceback: now one ERROR line and exit code 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from hj212gw.api import bound_port
from hj212gw.cli import serve
from hj212gw.storage.embedded import (
    EmbeddedInUse,
    EmbeddedPostgresError,
    postmaster_alive,
    start_embedded,
    stop_embedded,
)
from tests.integration.das import DasClient, data_packet, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as another user only when we are root")


def modes_above(path: Path) -> dict[Path, int]:
    return {folder: stat.S_IMODE(folder.stat().st_mode) for folder in path.parents}


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hj212gw.cli", "serve", "--log-format", "json", *args]


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("HJ212GW_CONFIG", "HJ212GW_DATABASE_URL", "HJ212GW_HTTP_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def serving(embedded_base: Path, no_config: None) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`hj212gw serve` with an embedded PostgreSQL in embedded_base/data, until it logs it started."""
    data_dir = embedded_base / "data"
    command = serve_command("--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    for line in process.stderr:
        if '"gateway_started"' in line or time.monotonic() > deadline:
            break
    assert process.poll() is None, "serve did not start"
    try:
        yield process, data_dir
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)  # drains and closes the pipe
        assert process.returncode == 0


def test_migrate_beside_a_running_serve_is_refused_and_its_server_keeps_running(
    serving: tuple[subprocess.Popen[str], Path],
) -> None:
    process, data_dir = serving
    assert postmaster_alive(data_dir / "postgres")
    command = [sys.executable, "-m", "hj212gw.cli", "migrate", "--data-dir", str(data_dir), "--log-format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (refusal,) = [line for line in done.stderr.splitlines() if line.startswith("hj212gw: ")]
    assert "in use by a running hj212gw" in refusal and f"pid {process.pid}" in refusal
    assert postmaster_alive(data_dir / "postgres") and process.poll() is None
    with pytest.raises(EmbeddedInUse):  # nor can anything else in another process stop it
        stop_embedded(data_dir / "postgres")
    assert postmaster_alive(data_dir / "postgres")


async def test_the_gateway_restarts_its_embedded_server_when_it_dies(
    embedded_base: Path, pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(embedded_base)
    settings = settings_for(pg_dsn, schema, database_url=None, data_dir=Path("gw"))
    with capture_logs() as logs:
        running = await serve.start(settings)
    try:
        pg_dir = embedded_base / "gw" / "postgres"
        (starting,) = [e for e in logs if e["event"] == "embedded_postgres_starting"]
        assert starting["data_dir"] == str(pg_dir)  # absolute, not ./gw/postgres
        pid = int((pg_dir / "postmaster.pid").read_text().split()[0])
        with capture_logs() as logs:
            os.kill(pid, signal.SIGKILL)
            await _until(lambda: any(e["event"] == "embedded_postgres_died" for e in logs), 10)
            assert not await _ready(running)
            await _until(lambda: any(e["event"] == "embedded_postgres_restarted" for e in logs), 60)
        events = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("embedded_postgres")]
        assert events == [("embedded_postgres_died", "warning"), ("embedded_postgres_restarted", "info")]
        assert postmaster_alive(pg_dir)
        das = await DasClient.connect(running.gateway.port or 0)
        try:
            await das.send(data_packet("20240315100000001"))
            ack = await das.reply(timeout_s=30)
            assert ack.packet.cn == "9014"
        finally:
            await das.close()
        deadline = time.monotonic() + 15
        while not await _ready(running):
            assert time.monotonic() < deadline, "never ready again"
            await asyncio.sleep(0.2)
    finally:
        await running.stop()
    assert not postmaster_alive(embedded_base / "gw" / "postgres")


async def _ready(running: serve.Running) -> bool:
    url = f"http://127.0.0.1:{bound_port(running.http_runner)}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status == 200


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


@as_root
def test_as_root_no_folder_above_data_dir_changes_mode(embedded_base: Path) -> None:
    data_dir = embedded_base / "nested" / "pg"
    (embedded_base / "nested").mkdir(mode=0o711)
    before = modes_above(data_dir)
    start_embedded(data_dir, port=5441)
    try:
        assert modes_above(data_dir) == before
        assert data_dir.stat().st_uid != 0 and stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    finally:
        stop_embedded(data_dir)


@as_root
def test_as_root_an_unreachable_data_dir_is_one_error_saying_what_to_do(embedded_base: Path) -> None:
    private = embedded_base / "private"
    private.mkdir(mode=0o700)
    data_dir = private / "pg"
    before = modes_above(data_dir)
    with pytest.raises(EmbeddedPostgresError) as info:
        start_embedded(data_dir, port=5442)
    message = str(info.value)
    assert "\n" not in message and f"cannot enter {private} (mode 0700)" in message
    assert f"chmod o+x {private}" in message and "--data-dir" in message
    assert modes_above(data_dir) == before


def test_a_second_serve_on_a_busy_port_says_so_in_one_line(pg_dsn: str, schema: str, no_config: None) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = serve_command(
            "--listen", f"127.0.0.1:{port}", "--http", "127.0.0.1:0",
            "--database-url", pg_dsn, "--database-schema", schema,
        )  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if '"error"' in line]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "in use" in errors[0]
