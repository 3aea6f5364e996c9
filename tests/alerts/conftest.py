"""Fixtures of the sink tests: the real Mosquitto on 127.0.0.1:1883 with a topic root per test, a
TCP proxy in front of it that can be cut (or made to hold the broker's replies), a subscriber that
records what reached the broker, and outbox entries written as the alert engine would."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import asyncpg
import pytest

from hj212gw.settings import MqttSettings
from hj212gw.storage import alert_outbox
from hj212gw.storage.alert_outbox import OutboxEntry
from tests.integration.proxy import TcpProxy

BROKER = ("127.0.0.1", 1883)


class BrokerProxy(TcpProxy):
    """A TcpProxy in front of Mosquitto that can also hold the broker's replies (PUBACKs) while
    still forwarding what the gateway sends: a publish reaches the broker, its PUBACK does not."""

    def __init__(self) -> None:
        super().__init__(*BROKER)
        self.replies = asyncio.Event()
        self.replies.set()
        self._upstream: set[asyncio.StreamReader] = set()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await super()._open_upstream()
        self._upstream.add(reader)
        return reader, writer

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if reader not in self._upstream:
            return await super()._pipe(reader, writer)
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self.replies.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._links.discard(writer)
        return None


@dataclass
class Subscriber:
    """Every message under a topic filter, as it reached a subscriber of the real broker."""

    messages: list[aiomqtt.Message] = field(default_factory=list)

    def on(self, topic: str) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages if m.topic.value == topic]  # type: ignore[arg-type]


Subscribe = Callable[[str], Awaitable[Subscriber]]


@pytest.fixture
def root() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def broker_proxy() -> AsyncIterator[BrokerProxy]:
    proxy = BrokerProxy()
    await proxy.start()
    yield proxy
    proxy.replies.set()
    await proxy.stop()


@pytest.fixture
def mqtt_settings(root: str, broker_proxy: BrokerProxy) -> MqttSettings:
    """The sink's settings: through the proxy, fast reconnects, short PUBACK timeout."""
    return MqttSettings(
        url=f"mqtt://127.0.0.1:{broker_proxy.port}", root_topic=root, client_id=f"gw-{root}",
        keepalive_s=5, publish_timeout_s=2.0, reconnect_initial_s=0.05, reconnect_max_s=0.2,
    )  # fmt: skip


@pytest.fixture
async def subscribe(root: str) -> AsyncIterator[Subscribe]:
    """Subscribe (QoS 1, straight to the broker) to a filter; retained messages come first."""
    tasks: list[asyncio.Task[None]] = []

    async def start(topic_filter: str) -> Subscriber:
        found = Subscriber()
        subscribed = asyncio.Event()

        async def listen() -> None:
            async with aiomqtt.Client(*BROKER, identifier=f"sub-{uuid.uuid4().hex[:8]}") as client:
                await client.subscribe(topic_filter, qos=1)
                subscribed.set()
                async for message in client.messages:
                    found.messages.append(message)

        tasks.append(asyncio.create_task(listen()))
        await asyncio.wait_for(subscribed.wait(), 5)
        return found

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await clear_retained(f"{root}/#")


async def clear_retained(topic_filter: str) -> None:
    """Delete every retained message under the filter (the broker keeps them across tests)."""
    async with aiomqtt.Client(*BROKER) as client:
        await client.subscribe(topic_filter, qos=1)
        topics = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    topics.add(message.topic.value)
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)


def payload(mn: str = "MN001", rule: str = "over_limit", severity: str = "critical", n: int = 0) -> dict[str, Any]:
    """An outbox payload as docs/mqtt.md describes it (the alert engine's shape)."""
    return {
        "fingerprint": f"fp-{rule}-{mn}-{n}",
        "status": "firing",
        "labels": {"alertname": rule, "severity": severity, "mn": mn, "factor": "w01018"},
        "annotations": {"summary_zh": "超标", "summary_en": f"over the limit #{n}", "article": "Art. 25"},
        "startsAt": "2026-12-04T09:00:00Z",
        "endsAt": None,
        "alertId": n,
        "acknowledgement": None,
        "details": {"n": n},
    }


async def add_entries(conn: asyncpg.Connection, count: int, **labels: Any) -> list[OutboxEntry]:
    """`count` entries, each in its own committed transaction."""
    entries = []
    for n in range(count):
        async with conn.transaction():
            entries.append(
                await alert_outbox.save_entry(conn, alert_id=n, type="firing", payload=payload(n=n, **labels))
            )
    return entries
