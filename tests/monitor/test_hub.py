"""monitor/hub.py: what a real gateway tells monitoring — an MN bound, its data committed, the MN
released when its connection closes or moves — and that a failing tracker disturbs nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.monitor.hub import BACKFILL_ONLY, NOTHING, Monitor, StoredData
from hj212gw.monitor.state import MOVED_TO_CONNECTION
from hj212gw.storage.rows import DataBlock
from tests.integration.das import MN, data_packet
from tests.integration.serving import connect, start
from tests.integration.test_gaps import DAY0, hj_time, hours

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self) -> None:
        self.signals: list[tuple[object, ...]] = []

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None:
        self.signals.append(("bound", mn, connection_id))

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None:
        self.signals.append(("released", mn, connection_id, cause))

    def stored(self, data: StoredData) -> None:
        self.signals.append(("stored", data.mn, data.cn, data.data_time, data.backfill))


class Broken(Recorder):
    def stored(self, data: StoredData) -> None:
        raise RuntimeError("a tracker bug")


async def test_bound_stored_and_released_reach_every_tracker(gateways: list[Running], pg_dsn: str, schema: str) -> None:
    running = await start(gateways, pg_dsn, schema)
    recorder = Recorder()
    running.gateway.monitor.listeners.extend([Broken(), recorder])  # the broken one first
    das = await connect(running)
    await das.send(data_packet("20240315101000001", data_time="20240315100000"))
    assert (await das.reply(timeout_s=5)).packet.cn == "9014"  # a tracker's bug does not stop acks
    await das.send(data_packet("20240315101000002", data_time="20240315101000"))
    assert (await das.reply(timeout_s=5)).packet.cn == "9014"
    connection_id = running.gateway.bindings.by_mn[MN].connection_id
    await das.close()
    for _ in range(50):
        if recorder.signals and recorder.signals[-1][0] == "released":
            break
        await asyncio.sleep(0.05)
    shanghai_10h = datetime(2024, 3, 15, 2, 0, tzinfo=UTC)
    assert recorder.signals == [
        ("bound", MN, connection_id),
        ("stored", MN, "2051", shanghai_10h, False),
        ("stored", MN, "2051", shanghai_10h.replace(minute=10), False),
        ("released", MN, connection_id, "peer_closed"),  # the close reason
    ]


async def test_an_mn_moving_to_a_newer_connection_is_released_by_the_older_one(
    gateways: list[Running], pg_dsn: str, schema: str
) -> None:
    running = await start(gateways, pg_dsn, schema)
    recorder = Recorder()
    running.gateway.monitor.listeners.append(recorder)
    older = await connect(running)
    await older.send(data_packet("20240315101000001"))
    assert (await older.reply(timeout_s=5)).packet.cn == "9014"
    newer = await connect(running)
    await newer.send(data_packet("20240315101000002", data_time="20240315100100"))
    assert (await newer.reply(timeout_s=5)).packet.cn == "9014"
    kinds = [(s[0], s[3] if s[0] == "released" else None) for s in recorder.signals if s[0] != "stored"]
    assert kinds[0] == ("bound", None) and kinds[2] == ("bound", None)
    assert kinds[1] == ("released", MOVED_TO_CONNECTION)
    await older.close()
    await newer.close()


async def test_with_monitoring_off_only_the_command_channel_listens(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, monitoring=False)
    alerts = running.gateway.alerts
    assert alerts is not None  # the rules judge committed data whether or not devices are tracked
    assert running.gateway.monitor.listeners == [running.gateway.commands.tracker, alerts.runner]
    das = await connect(running)
    for n, moment in enumerate(hours(DAY0, 0, 1, 5)):  # recent DataTimes, a gap between
        await das.send(data_packet(f"2024031510100000{n}", cn="2061", data_time=hj_time(moment)))
        assert (await das.reply(timeout_s=5)).packet.cn == "9014"
    await asyncio.sleep(1.5)  # longer than the trackers' flushes
    assert await conn.fetchval("SELECT count(*) FROM gaps") == 0
    assert await conn.fetchval("SELECT count(*) FROM device_state") == 0
    assert await conn.fetchval("SELECT count(*) FROM data") == 3
    await das.close()


def _block(mn: str, hour: int, *, resend: bool) -> DataBlock:
    t = datetime(2026, 12, 3, hour, tzinfo=UTC)
    return DataBlock(b"", 1, (2026, 12), resend, False, mn, "2061", t, t)


def test_a_listener_is_told_of_the_data_it_declares_it_follows() -> None:
    every, answers, none = Recorder(), Recorder(), Recorder()
    answers.stored_kinds = BACKFILL_ONLY  # type: ignore[attr-defined]
    none.stored_kinds = NOTHING  # type: ignore[attr-defined]
    monitor = Monitor([every, answers, none, Broken()])
    monitor.committed([_block("A", 1, resend=False), _block("B", 2, resend=True), _block("", 3, resend=False)])
    assert [s[1:] for s in every.signals] == [("A", "2061", datetime(2026, 12, 3, 1, tzinfo=UTC), False),
                                              ("B", "2061", datetime(2026, 12, 3, 2, tzinfo=UTC), True)]  # fmt: skip
    assert [s[1] for s in answers.signals] == ["B"]
    assert none.signals == []
    quiet = Monitor([answers])
    quiet.committed([_block("C", 4, resend=False)])  # nobody follows live data: nothing built
    assert [s[1] for s in answers.signals] == ["B"]
