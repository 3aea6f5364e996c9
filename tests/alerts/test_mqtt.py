"""alerts/mqtt.py against the real Mosquitto: the gateway's status (online, the Last Will when its
connection dies, offline when it stops), retained device states (the newest per MN, bounded while
the broker is away) and hostile MNs that can never add a topic level or a wildcard."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hj212gw.alerts.mqtt import MqttSink, broker_password, tls_context
from hj212gw.metrics import Metrics
from hj212gw.monitor.state import DeviceState, DeviceStateChanged
from hj212gw.settings import MqttSettings
from hj212gw.storage.alert_outbox import OutboxEntry
from tests.alerts.conftest import BrokerProxy, Subscribe, payload
from tests.alerts.test_outbox import running
from tests.integration.waiting import until

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
HOSTILE_MNS = ["a/b", "+", "#", "x\x00y", "../..", "%2F", "-", "", "$SYS", "\ud800", "\x1b[2J", "\ufffe"]


def changed(mn: str, new: DeviceState, cause: str = "connected") -> DeviceStateChanged:
    return DeviceStateChanged(mn=mn, old=None, new=new, since=T0, cause=cause, replica="gw1", connection_id=7)


def entry_for(mn: str, n: int = 0) -> OutboxEntry:
    return OutboxEntry(
        id=n + 1, event_id=uuid.uuid4(), alert_id=n, type="firing", payload=payload(mn=mn, n=n), created_at=T0,
        txid=1000 + n,
    )  # fmt: skip


async def test_online_on_connect_the_last_will_when_the_connection_dies_and_offline_on_stop(
    mqtt_settings: MqttSettings, root: str, broker_proxy: BrokerProxy, subscribe: Subscribe
) -> None:
    status = f"{root}/v1/gateways/gw1/status"
    sub = await subscribe(status)
    sink = MqttSink(mqtt_settings, "gw1")
    async with running(sink.run):
        await until(lambda: sub.on(status) == [b"online"])
        broker_proxy.cut()  # the TCP connection dies without a DISCONNECT: the broker sends the Will
        await until(lambda: sub.on(status) == [b"online", b"offline"])
        broker_proxy.restore()
        await until(lambda: sub.on(status) == [b"online", b"offline", b"online"])
    await until(lambda: sub.on(status)[-1:] == [b"offline"])  # stopped: said so before disconnecting
    later = await subscribe(status)
    await until(lambda: later.on(status) == [b"offline"])  # retained
    assert all(m.retain for m in later.messages)


async def test_device_states_are_retained_and_only_the_newest_per_mn_waits_for_the_broker(
    mqtt_settings: MqttSettings, root: str, broker_proxy: BrokerProxy, subscribe: Subscribe
) -> None:
    metrics = Metrics()
    sink = MqttSink(mqtt_settings.model_copy(update={"max_pending_device_states": 3}), "gw1", observer=metrics)
    broker_proxy.cut()  # the broker is away while the states change
    for state in (DeviceState.ONLINE, DeviceState.SILENT, DeviceState.OFFLINE):
        sink.device_states.changed(changed("MN-A", state))
    sink.device_states.changed(changed("MN-B", DeviceState.ONLINE))
    sink.device_states.changed(changed("MN-C", DeviceState.SILENT))
    sink.device_states.changed(changed("MN-D", DeviceState.ONLINE))  # a fourth MN: over the bound
    assert list(sink.device_states.pending) == ["MN-A", "MN-B", "MN-C"]
    assert metrics.registry.get_sample_value("hj212gw_device_states_dropped_total") == 1
    async with running(sink.run):
        await asyncio.sleep(0.3)
        broker_proxy.restore()
        await until(lambda: not sink.device_states.pending and sink.dependency.is_up is True)
        await asyncio.sleep(0.2)
    sub = await subscribe(f"{root}/v1/devices/+/state")  # after the fact: only retained messages
    await until(lambda: len(sub.messages) == 3)
    states = {m.topic.value: json.loads(m.payload) for m in sub.messages}  # type: ignore[arg-type]
    assert {topic: s["state"] for topic, s in states.items()} == {
        f"{root}/v1/devices/MN-A/state": "offline",
        f"{root}/v1/devices/MN-B/state": "online",
        f"{root}/v1/devices/MN-C/state": "silent",
    }
    assert states[f"{root}/v1/devices/MN-B/state"] == {
        "mn": "MN-B", "state": "online", "previous": None, "since": "2026-12-04T09:00:00Z", "cause": "connected",
        "gateway_id": "gw1", "connection_id": 7, "details": {},
    }  # fmt: skip
    assert all(m.retain for m in sub.messages)


async def test_hostile_mns_stay_one_topic_level_and_decode_back(
    mqtt_settings: MqttSettings, root: str, subscribe: Subscribe
) -> None:
    alerts = await subscribe(f"{root}/v1/alerts/#")
    devices = await subscribe(f"{root}/v1/devices/#")
    sink = MqttSink(mqtt_settings, "gw/+#1")  # an operator's odd gateway id is escaped too
    async with running(sink.run):
        await sink.deliver([entry_for(mn, n) for n, mn in enumerate(HOSTILE_MNS)])
        for mn in HOSTILE_MNS:
            sink.device_states.changed(changed(mn, DeviceState.ONLINE))
        await until(lambda: len(alerts.messages) == len(HOSTILE_MNS) and len(devices.messages) == len(HOSTILE_MNS))
        assert sink.dependency.is_up is True  # the broker accepted every topic: never disconnected us
    alert_levels = [m.topic.value.split("/") for m in alerts.messages]
    assert all(len(levels) == 6 and levels[:3] == [root, "v1", "alerts"] for levels in alert_levels)
    assert [_decoded(levels[5]) for levels in alert_levels] == HOSTILE_MNS
    device_levels = [m.topic.value.split("/") for m in devices.messages]
    assert all(len(levels) == 5 and levels[4] == "state" for levels in device_levels)
    assert sorted(_decoded(levels[3]) for levels in device_levels) == sorted(HOSTILE_MNS)
    assert all(not set("+#\x00") & set(m.topic.value) for m in alerts.messages + devices.messages)
    assert sink.status_topic == f"{root}/v1/gateways/gw%2F%2B%231/status"


def _decoded(level: str) -> str:
    return "" if level == "-" else urllib.parse.unquote(level, errors="surrogatepass")


def test_the_password_comes_from_its_file_else_the_setting(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    assert broker_password(MqttSettings(password_file=secret, password="ignored")) == "s3cret"  # type: ignore[arg-type]
    assert broker_password(MqttSettings(password="from-env")) == "from-env"  # type: ignore[arg-type]
    assert broker_password(MqttSettings()) is None


def test_mqtts_verifies_the_broker_and_mqtt_is_plain() -> None:
    assert tls_context(MqttSettings(url="mqtt://broker")) is None
    context = tls_context(MqttSettings(url="mqtts://broker"))
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(FileNotFoundError):
        tls_context(MqttSettings(url="mqtts://broker", tls_ca_file=Path("/nonexistent/ca.pem")))


async def test_device_states_in_flight_when_the_connection_dies_are_sent_again(
    mqtt_settings: MqttSettings, broker_proxy: BrokerProxy
) -> None:
    sink = MqttSink(mqtt_settings, "gw1")
    async with running(sink.run):
        await until(lambda: sink.dependency.is_up is True)
        broker_proxy.replies.clear()  # their PUBACKs will not come on this connection
        for n in range(5):
            sink.device_states.changed(changed(f"MN-{n}", DeviceState.ONLINE))
        await until(lambda: not sink.device_states.pending)  # taken, in flight
        broker_proxy.cut()
        await until(lambda: sink.dependency.is_up is False)
        assert sorted(sink.device_states.pending) == [f"MN-{n}" for n in range(5)]  # waiting again
        broker_proxy.replies.set()
        broker_proxy.restore()
        await until(lambda: not sink.device_states.pending and sink.dependency.is_up is True)
