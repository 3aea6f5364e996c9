"""The admin API over a real PostgreSQL schema, served by aiohttp's test server; live state as plain data."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from hj212gw.api import build_app
from hj212gw.server.live import LiveDevice
from hj212gw.storage.db import Database
from hj212gw.storage.rows import DataRow, DeviceSeen

MN = "010000A8900016F000169DC0"
OTHER = "88888880000001"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
RECEIVED = datetime(2024, 5, 1, 8, 0, 5, 123456, tzinfo=UTC)
START, END = "2024-05-01T08:00:00Z", "2024-05-01T09:00:00Z"


class Live:
    """The server's side of LiveState, as plain data."""

    def __init__(self) -> None:
        self.devices: dict[str, LiveDevice] = {}

    def online(self) -> Mapping[str, LiveDevice]:
        return self.devices


@dataclasses.dataclass
class Harness:
    client: TestClient[Any, Any]
    live: Live
    registry: CollectorRegistry
    ready: list[bool]

    async def get(self, path: str, status: int = 200, **params: str) -> Any:
        resp = await self.client.get(path, params=params or None)
        body = await resp.json()
        assert resp.status == status, body
        assert resp.content_type == "application/json"
        return body


def make_harness(db: Database, **app_options: Any) -> Harness:
    live, registry, ready = Live(), CollectorRegistry(), [True]
    app = build_app(db=db, live=live, metrics_registry=registry, ready=lambda: ready[0], **app_options)
    return Harness(TestClient(TestServer(app)), live, registry, ready)


def row(factor: str = "w01018", at: datetime = T0, **changes: Any) -> DataRow:
    base = DataRow(
        mn=MN, cn="2051", data_time=at, factor=factor,
        received_at=RECEIVED, qn="20240501080005123", avg=12.3, flag="N",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def seen(mn: str, version: int = 2017) -> DeviceSeen:
    return DeviceSeen(mn=mn, protocol_version=version, st="32", peer="10.0.0.1:4000", seen_at=RECEIVED)
