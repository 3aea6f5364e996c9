"""`hj212gw serve --workers 2`: one DAS port served by two gateway processes under a supervisor
that restarts a dead worker and passes SIGTERM on. Runs the real console script."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from hj212gw.cli.workers import worker_settings
from hj212gw.settings import Settings
from tests.integration.child import GatewayChild
from tests.integration.das import DasClient, data_packet

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICES = 16


def test_each_worker_gets_its_own_http_port_and_gateway_id() -> None:
    settings = Settings(http="127.0.0.1:9213", gateway_id="gw", workers=3)
    second = worker_settings(settings, 1, "postgresql://db/x")
    assert (second.http, second.gateway_id, second.database_url) == ("127.0.0.1:9214", "gw-1", "postgresql://db/x")
    assert worker_settings(Settings(http="[::1]:9213"), 2, "dsn").http == "[::1]:9215"


def test_each_worker_gets_its_own_mqtt_client_id_when_one_is_set() -> None:
    fixed = Settings(mqtt={"url": "mqtt://broker", "client_id": "plant"})  # type: ignore[arg-type]
    assert worker_settings(fixed, 2, "dsn").mqtt.client_id == "plant-2"
    assert worker_settings(fixed, 2, "dsn").mqtt.url == "mqtt://broker"
    assert worker_settings(Settings(), 2, "dsn").mqtt.client_id is None  # hj212gw-{gateway_id}: distinct already


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker is a child too)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def upload_from_every_device(port: int, round_: int) -> set[str]:
    acked = set()
    for device in range(DEVICES):
        das = await DasClient.connect(port)
        qn = f"2024031510{round_:02d}{device:05d}"
        await das.send(data_packet(qn, mn=f"WORKER{device:02d}", data_time=f"202403151{round_}0000"))
        reply = await das.reply(timeout_s=10)
        assert reply.packet.cn == "9014"
        acked.add(str(reply.packet.qn))
        await das.close()
    return acked


@pytest.fixture
def supervisor(pg_dsn: str, schema: str, tmp_path: Path) -> Iterator[GatewayChild]:
    """`hj212gw serve --workers 2`, stopped (SIGTERM, so its workers too) if a test leaves it running."""
    child = GatewayChild(pg_dsn, schema, tmp_path / "gateway.log", workers=2)
    yield child
    if child.process is not None and child.process.poll() is None:
        child.terminate()


async def test_two_workers_share_the_port_a_dead_one_is_restarted_sigterm_stops_all(
    supervisor: GatewayChild, conn: asyncpg.Connection
) -> None:
    await supervisor.start()
    assert supervisor.process is not None
    async with asyncio.timeout(30):
        while not await supervisor._ready(supervisor.http + 1):
            await asyncio.sleep(0.1)

    acked = await upload_from_every_device(supervisor.port, 1)
    assert len(acked) == DEVICES
    await asyncio.sleep(1.5)  # the connection log is written once a second
    ids = {r["gateway_id"] for r in await conn.fetch("SELECT DISTINCT gateway_id FROM connections")}
    assert len(ids) == 2 and all(i.endswith(("-0", "-1")) for i in ids)  # the kernel spread them

    first, _ = worker_pids(supervisor.process.pid)
    os.kill(first, signal.SIGKILL)
    async with asyncio.timeout(30):  # restarted after a pause: both HTTP ports answer again
        while first in worker_pids(supervisor.process.pid) or not (
            await supervisor._ready() and await supervisor._ready(supervisor.http + 1)
        ):
            await asyncio.sleep(0.2)
    acked |= await upload_from_every_device(supervisor.port, 2)

    assert supervisor.terminate() == 0
    stored = {r["qn"] for r in await conn.fetch("SELECT DISTINCT qn FROM data")}
    assert acked <= stored and len(acked) == 2 * DEVICES
    assert "worker_exited" in supervisor.log.read_text()


async def test_workers_stop_by_themselves_when_the_supervisor_is_killed(supervisor: GatewayChild) -> None:
    await supervisor.start()
    assert supervisor.process is not None
    workers = worker_pids(supervisor.process.pid)
    assert len(workers) == 2
    supervisor.kill()
    async with asyncio.timeout(20):  # each drains (nothing pending) and exits
        while any(Path(f"/proc/{pid}").exists() and _not_zombie(pid) for pid in workers):
            await asyncio.sleep(0.2)
    assert "supervisor_gone" in supervisor.log.read_text()


async def test_workers_still_starting_when_the_supervisor_is_killed_stop_too(supervisor: GatewayChild) -> None:
    # Killed before any worker is ready: a worker that read its parent's pid only once it was up
    # would see its new parent and run on forever.
    with supervisor.log.open("ab") as out:
        supervisor.process = subprocess.Popen(supervisor.args, stdout=out, stderr=subprocess.STDOUT)
    async with asyncio.timeout(20):
        while len(workers := worker_pids(supervisor.process.pid)) < 2:
            await asyncio.sleep(0.01)
    supervisor.kill()
    async with asyncio.timeout(20):
        while any(Path(f"/proc/{pid}").exists() and _not_zombie(pid) for pid in workers):
            await asyncio.sleep(0.2)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
