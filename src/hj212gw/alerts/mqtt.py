"""The MQTT sink (aiomqtt 2.x): one connection per replica carrying the alert stream, the retained
device states and the gateway's own status (docs/mqtt.md).

`MqttSink.run` keeps the connection: it connects with a Last Will (`offline`, retained, QoS 1 on
`{root}/v1/gateways/{gateway_id}/status`), publishes `online` there, sends the device states that
waited, and reconnects with jittered exponential backoff when the connection ends; stopped
(cancelled), it publishes `offline` itself, since a clean disconnect fires no Will.
`MqttSink.deliver` is the outbox's sink: every entry is published with QoS 1 and confirmed only
by its PUBACK. The session is clean (clean_session true): the outbox cursor, not the broker,
remembers what was delivered, and a new connection never replays another's in-flight messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import aiomqtt
import structlog

from hj212gw.alerts.events import (
    alert_topic,
    check_root_topic,
    cloud_event,
    device_state_topic,
    encode_json,
    gateway_status_topic,
    rfc3339,
)
from hj212gw.alerts.health import Backoff, Dependency, NullObserver, SinkObserver
from hj212gw.alerts.outbox import Refusal, SinkDown
from hj212gw.monitor.state import DeviceStateChanged
from hj212gw.settings import MqttSettings, mqtt_address
from hj212gw.storage.alert_outbox import OutboxEntry
from hj212gw.waiting import wait_set

_LOG = structlog.get_logger("hj212gw.alerts")
ONLINE, OFFLINE = b"online", b"offline"
QOS = 1
_MAX_INFLIGHT = 100  # QoS 1 messages awaiting their PUBACK at once; paho queues the rest in order
_DEVICE_STATES_PER_ROUND = 100


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context for an mqtts:// URL (CA file or the system's; client certificate if set)."""
    if not mqtt_address(settings.url or "mqtt://unset")[2]:
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    if settings.tls_cert_file is not None:
        key = str(settings.tls_key_file) if settings.tls_key_file else None
        context.load_cert_chain(str(settings.tls_cert_file), key)
    return context


def broker_password(settings: MqttSettings) -> str | None:
    """From `password_file` (its first line), else `password` (e.g. HJ212GW_MQTT__PASSWORD)."""
    if settings.password_file is not None:
        lines = settings.password_file.read_text().splitlines()
        return lines[0] if lines else ""
    return settings.password.get_secret_value() if settings.password is not None else None


def device_state_payload(event: DeviceStateChanged) -> bytes:
    """The retained `{root}/v1/devices/{mn}/state` message of a state change (JSON)."""
    return encode_json(
        {
            "mn": event.mn, "state": str(event.new), "previous": None if event.old is None else str(event.old),
            "since": rfc3339(event.since), "cause": event.cause, "gateway_id": event.replica,
            "connection_id": event.connection_id, "details": dict(event.details),
        }
    )  # fmt: skip


# The MQTT client library's own logger: it logs each lost connection at ERROR ("failed to receive
# on socket"), beside the one WARNING `dependency_down` this sink logs per outage (house style).
# Its debug and error lines are for debugging the library, so only CRITICAL passes.
_CLIENT_LOG = logging.getLogger("hj212gw.mqtt_client")
_CLIENT_LOG.setLevel(logging.CRITICAL)


class DeviceStatePublisher:
    """Device states waiting for the broker: the newest per MN wins, at most `max_pending` MNs.

    `changed` is a subscriber of monitor.devices.DeviceTracker (synchronous, never blocks). While
    the broker is away each MN keeps only its latest state, so 20,000 devices cost 20,000 entries
    at most; a state for yet another MN beyond `max_pending` is dropped and counted.
    """

    def __init__(self, root: str, *, max_pending: int, observer: SinkObserver | None = None) -> None:
        self.root = root
        self.max_pending = max_pending
        self.observer: SinkObserver = observer or NullObserver()
        self.pending: dict[str, bytes] = {}
        self._ready = asyncio.Event()
        self._overflowing = False

    def changed(self, event: DeviceStateChanged) -> None:
        if event.mn not in self.pending and len(self.pending) >= self.max_pending:
            self.observer.device_state_dropped()
            if not self._overflowing:
                _LOG.warning("device_states_dropped", max_pending=self.max_pending)
                self._overflowing = True
            return
        self.pending[event.mn] = device_state_payload(event)
        self._ready.set()

    async def drain(self, client: aiomqtt.Client, timeout_s: float) -> None:
        """Publish waiting states (retained, QoS 1) as they come; raises MqttError when a publish
        fails (the states not confirmed wait again, unless a newer one came)."""
        while True:
            await self._ready.wait()
            chunk = list(itertools.islice(self.pending.items(), _DEVICE_STATES_PER_ROUND))
            for mn, _ in chunk:
                del self.pending[mn]
            if not self.pending:
                self._ready.clear()
                self._overflowing = False
            results: list[BaseException | None] = []
            try:
                results = await asyncio.gather(
                    *(client.publish(device_state_topic(self.root, mn), payload, qos=QOS, retain=True,
                                     timeout=timeout_s) for mn, payload in chunk),
                    return_exceptions=True,
                )  # fmt: skip
            finally:  # also when cancelled (the connection ended): nothing unconfirmed is lost
                self._wait_again(chunk, results)
            for error in results:
                if error is not None:
                    raise error

    def _wait_again(self, chunk: list[tuple[str, bytes]], results: list[BaseException | None]) -> None:
        """Put back the states of `chunk` not confirmed (all of them without `results`), unless a
        newer state of the same MN came meanwhile."""
        for index, (mn, payload) in enumerate(chunk):
            if index >= len(results) or results[index] is not None:
                self.pending.setdefault(mn, payload)
                self._ready.set()


class MqttSink:
    """One replica's MQTT connection and the alert outbox's MQTT sink (see the module docstring).

    Args:
        settings: the `mqtt` settings; `url` must be set.
        gateway_id: this replica's name (event `source`, status topic, default client id).
        observer: metrics hooks (`hj212gw_dependency_up{name="mqtt"}`, device states dropped).
    """

    name = "mqtt"

    def __init__(self, settings: MqttSettings, gateway_id: str, *, observer: SinkObserver | None = None) -> None:
        if settings.url is None:
            raise ValueError("MqttSink needs mqtt.url")
        self.settings = settings
        self.gateway_id = gateway_id
        self.root = check_root_topic(settings.root_topic)
        self.status_topic = gateway_status_topic(self.root, gateway_id)
        self.client_id = settings.client_id or f"hj212gw-{gateway_id}"
        self.host, self.port, _ = mqtt_address(settings.url)
        self._tls = tls_context(settings)
        self._password = broker_password(settings)
        self.dependency = Dependency("mqtt", observer or NullObserver())
        self.device_states = DeviceStatePublisher(
            self.root, max_pending=settings.max_pending_device_states, observer=observer
        )
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()

    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        return aiomqtt.Client(
            self.host, self.port, username=s.username, password=self._password, identifier=self.client_id,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=QOS, retain=True), clean_session=True,
            keepalive=s.keepalive_s, timeout=s.publish_timeout_s, tls_context=self._tls,
            max_inflight_messages=_MAX_INFLIGHT, logger=_CLIENT_LOG,
        )  # fmt: skip

    async def run(self) -> None:
        """Stay connected, forever (cancel to stop: `offline` is published first)."""
        backoff = Backoff(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
        while True:
            try:
                async with self._new_client() as client:
                    # A batch publishes up to alert_sinks.batch_size at once, by design: no "pending calls" WARNING.
                    client.pending_calls_threshold = 1_000_000
                    await client.publish(self.status_topic, ONLINE, qos=QOS, retain=True)
                    backoff.reset()
                    await self._serve(client)
            except aiomqtt.MqttError as err:
                self.dependency.down(str(err) or type(err).__name__)
            await asyncio.sleep(backoff.next_s())

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._client, self._lost = client, asyncio.Event()
        self._connected.set()
        self.dependency.up()
        _LOG.info("mqtt_connected", host=self.host, port=self.port, client_id=self.client_id)
        tasks = [
            asyncio.create_task(self._until_disconnected(client)),
            asyncio.create_task(self.device_states.drain(client, self.settings.publish_timeout_s)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the MqttError that ended the connection (or a bug)
        except asyncio.CancelledError:
            with contextlib.suppress(aiomqtt.MqttError):  # stopping: the broker may be gone too
                await client.publish(self.status_topic, OFFLINE, qos=QOS, retain=True, timeout=2.0)
            raise
        finally:
            self._connected.clear()
            self._lost.set()
            self._client = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _until_disconnected(client: aiomqtt.Client) -> None:
        # Nothing is subscribed: the iterator only ever ends by raising MqttError on disconnection.
        async for _message in client.messages:
            pass

    async def deliver(self, entries: Sequence[OutboxEntry]) -> Sequence[Refusal]:
        """Publish each entry's CloudEvent (QoS 1, in order); return once every PUBACK came.

        Raises:
            SinkDown: not connected, or the connection ended or a PUBACK did not come in time;
                `delivered` counts the leading entries that were confirmed.
        """
        client, lost = await self._connection()
        publishes = [asyncio.ensure_future(self._publish(client, entry)) for entry in entries]
        everything: asyncio.Future[Any] = asyncio.gather(*publishes, return_exceptions=True)
        ended: asyncio.Future[Any] = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait([everything, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            for publish in publishes:
                publish.cancel()  # those still waiting for a PUBACK that will not come on this connection
            await asyncio.wait([everything, ended])
        delivered = sum(1 for _ in itertools.takewhile(_confirmed, publishes))
        if delivered < len(entries):
            raise SinkDown(_failure(publishes), delivered)
        return ()

    async def _connection(self) -> tuple[aiomqtt.Client, asyncio.Event]:
        await wait_set(self._connected, self.settings.publish_timeout_s)
        if self._client is None:
            raise SinkDown("not connected to the broker")
        return self._client, self._lost

    async def _publish(self, client: aiomqtt.Client, entry: OutboxEntry) -> None:
        topic = alert_topic(self.root, entry.payload)
        payload = encode_json(cloud_event(entry, self.gateway_id))
        await client.publish(topic, payload, qos=QOS, timeout=self.settings.publish_timeout_s)


def _confirmed(publish: asyncio.Future[Any]) -> bool:
    return publish.done() and not publish.cancelled() and publish.exception() is None


def _failure(publishes: Sequence[asyncio.Future[Any]]) -> str:
    for publish in publishes:
        if publish.done() and not publish.cancelled() and publish.exception() is not None:
            return str(publish.exception()) or type(publish.exception()).__name__
    return "connection to the broker lost"
