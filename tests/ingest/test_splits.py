"""An assembled split transfer is reported to monitoring like any stored packet (ingest/splits.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hj212gw.cli.serve import Running
from hj212gw.monitor.hub import StoredData
from tests.hostile.test_split import parts, send_acked
from tests.integration.das import MN
from tests.integration.serving import start
from tests.integration.waiting import until

pytestmark = pytest.mark.integration


class Recorder:
    """A DeviceListener that keeps what it is told."""

    def __init__(self) -> None:
        self.stored_data: list[StoredData] = []

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None:
        pass

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None:
        pass

    def stored(self, data: StoredData) -> None:
        self.stored_data.append(data)


async def test_an_assembled_transfer_reports_its_stored_data(gateways: list[Running], pg_dsn: str, schema: str) -> None:
    running = await start(gateways, pg_dsn, schema)
    recorder = Recorder()
    running.gateway.monitor.listeners.append(recorder)
    await send_acked(running, *parts("20240315101000778", cuts=(5, 95)))  # no part parses alone
    await until(lambda: bool(recorder.stored_data), timeout_s=10)
    [data] = recorder.stored_data
    assert (data.mn, data.cn, data.backfill) == (MN, "2051", False)
    assert data.data_time == datetime(2024, 3, 15, 2, tzinfo=UTC)  # 10:00 in Shanghai
