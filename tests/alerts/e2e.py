"""What the end-to-end alert tests share: simulated data loggers on a virtual clock wired to real
gateways (every frame sent over TCP, every ack fed back), the settings of a gateway with alerts,
MQTT and a thresholds file, and queries of the alerts and events that resulted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg

from hj212gw.cli.serve import Running
from hj212gw.protocol.packets import iter_packets
from hj212gw.simulator.testing import SHANGHAI, SteppedDevice
from tests.alerts.conftest import BROKER
from tests.integration.das import DasClient
from tests.integration.serving import connect


class WiredDevice(SteppedDevice):
    """A SteppedDevice (FakeClock, simulated time only: no OverTime resends) whose frames go to a
    real gateway. `run(seconds)` moves simulated time a period at a time and, after each step,
    sends what the device wrote and feeds every reply back to it (acks, commands)."""

    def __init__(self, **spec: Any) -> None:
        self.frames: list[bytes] = []
        self.das: DasClient | None = None
        super().__init__(**spec)

    def _flush(self) -> list[Any]:
        frames = self.device.frames_due(self.clock.sim_now(), self.clock.real_now())
        self.frames += frames
        packets = list(iter_packets(b"".join(frames)))
        self.sent += packets
        return packets

    async def plug(self, running: Running) -> None:
        """Connect to `running` (the first time: the boot packet goes up)."""
        self.das = await connect(running)
        self.connect()
        await self.deliver()

    async def unplug(self) -> None:
        self.disconnect()
        if self.das is not None:
            await self.das.close()
        self.das = None

    async def run(self, sim_seconds: float, step_s: float | None = None) -> None:
        step = step_s or self.spec.min_interval_min * 60
        left = sim_seconds
        while left > 0:
            self.advance(min(step, left), real_seconds=0)
            left -= step
            await self.deliver()

    async def deliver(self) -> None:
        """Send the frames written so far, one at a time, each after the previous was answered."""
        assert self.das is not None
        while self.frames:
            frame = self.frames.pop(0)
            await self.das.send(frame)
            sent = next(iter_packets(frame))
            while sent.ack_requested:
                reply = await self.das.reply(timeout_s=10)
                self.feed(reply.raw)
                if reply.packet.qn == sent.qn:
                    break


def recent_start(hours_ago: int) -> datetime:
    """A whole device-time hour `hours_ago` ago: a run of fewer hours stays in the past (no
    time_suspect data), and a fault episode in it stays under 24 h for the leader's scan."""
    now = datetime.now(SHANGHAI).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=hours_ago)


def thresholds(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thresholds.toml"
    path.write_text(text)
    return path


def alert_settings(
    root: str, gateway_id: str = "gw1", *, broker_port: int = BROKER[1], **alerts: Any
) -> dict[str, Any]:
    """Overrides of `settings_for`: fast scans, refreshes and deliveries, the broker, no backfill."""
    return {
        "gateway_id": gateway_id,
        "alerts": {"scan_s": 0.2, "refresh_s": 0.5, "leader_check_s": 0.3, **alerts},
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}", "root_topic": root, "client_id": f"{root}-{gateway_id}",
                 "keepalive_s": 5, "publish_timeout_s": 2.0, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2},
        "alert_sinks": {"poll_interval_s": 0.2, "backoff_initial_s": 0.05, "backoff_max_s": 0.2},
        "backfill": {"enabled": False},
    }  # fmt: skip


@dataclass(frozen=True)
class AlertRow:
    id: int
    rule: str
    status: str
    factor: str
    detail: str
    starts_at: datetime
    ends_at: datetime | None
    value: float | None


async def alerts(conn: asyncpg.Connection, rule: str | None = None) -> list[AlertRow]:
    rows = await conn.fetch(
        "SELECT id, rule, status, factor, detail, starts_at, ends_at, value FROM alerts"
        " WHERE $1::text IS NULL OR rule = $1 ORDER BY id",
        rule,
    )
    return [AlertRow(**dict(r)) for r in rows]


def events(messages: list[aiomqtt.Message], rule: str | None = None) -> list[dict[str, Any]]:
    """The CloudEvents of alert topics received, in order (optionally one rule's)."""
    found = []
    for m in messages:
        if "/v1/alerts/" in m.topic.value:
            event = json.loads(bytes(m.payload))  # type: ignore[arg-type]
            if rule is None or event["data"]["labels"]["alertname"] == rule:
                found.append(event | {"topic": m.topic.value})
    return found
