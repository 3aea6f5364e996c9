"""The HTTP sinks of the alert outbox: Alertmanager (`POST {url}/api/v2/alerts`, a batch of alerts
per request) and a generic webhook (`POST` of each CloudEvent, structured mode, one per request,
in order). Each has its own cursor (its `name`).

A 2xx confirms. 400, 413 and 422 refuse the content: no retry could succeed, so a refused
Alertmanager batch is sent again one alert per request to find the one refused, and a refused
entry is passed back as a `Refusal` (logged, counted, skipped). Anything else (no answer, a
timeout, 5xx, 408, 429, and 401/403/404, which are a configuration to fix rather than content to
drop) is an outage: `SinkDown`, retried with backoff, nothing skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from hj212gw.alerts.events import CLOUDEVENTS_CONTENT_TYPE, cloud_event, encode_json, rfc3339
from hj212gw.alerts.health import Dependency, NullObserver, SinkObserver
from hj212gw.alerts.outbox import Refusal, SinkDown
from hj212gw.settings import AlertSinkSettings
from hj212gw.storage.alert_outbox import OutboxEntry

REFUSED_STATUSES = frozenset((400, 413, 422))
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")
_REASON_CHARS = 200  # of a refusing answer's body, in the log line


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HttpPoster:
    """POSTs with one aiohttp session (opened on first use) and a whole-request timeout."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def post(self, body: bytes, content_type: str) -> None:
        """Raises `_Refused` (400/413/422) or `SinkDown` (anything else but a 2xx)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url, data=body, headers={"Content-Type": content_type}) as resp:
                if 200 <= resp.status < 300:
                    return
                text = (await resp.text(errors="replace"))[:_REASON_CHARS]
        except (aiohttp.ClientError, TimeoutError) as err:
            raise SinkDown(f"{type(err).__name__}: {err}") from err
        reason = f"HTTP {resp.status}: {text}"
        raise (_Refused(reason) if resp.status in REFUSED_STATUSES else SinkDown(reason))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _label_name(name: str) -> str:
    """Alertmanager's classic label names: [a-zA-Z_][a-zA-Z0-9_]*."""
    cleaned = _LABEL_NAME.sub("_", name) or "_"
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


def _label_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(_label_value(v) for v in value)
    if isinstance(value, Mapping):
        return encode_json(value).decode()
    return str(value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def alertmanager_alert(entry: OutboxEntry) -> dict[str, Any]:
    """One entry as an Alertmanager API v2 `postableAlert`: string labels and annotations,
    `startsAt`, and `endsAt` once resolved (a firing alert has none: Alertmanager resolves it
    after its `resolve_timeout` unless it is sent again, by a reminder)."""
    payload = entry.payload
    labels = _mapping(payload.get("labels"))
    notes = _mapping(payload.get("annotations"))
    annotations = {_label_name(k): _label_value(v) for k, v in notes.items() if v is not None}
    annotations.setdefault("summary", annotations.get("summary_en", ""))
    annotations["event_id"] = str(entry.event_id)
    if isinstance(ack := payload.get("acknowledgement"), Mapping):
        annotations.update({f"acknowledged_{k}": _label_value(v) for k, v in ack.items() if v is not None})
    alert: dict[str, Any] = {
        "labels": {_label_name(k): _label_value(v) for k, v in labels.items() if v not in (None, "")},
        "annotations": annotations,
    }
    if payload.get("startsAt"):
        alert["startsAt"] = payload["startsAt"]
    if payload.get("status") == "resolved":
        alert["endsAt"] = payload.get("endsAt") or rfc3339(entry.created_at)
    return alert


class AlertmanagerSink:
    """Sends outbox entries to an Alertmanager, a batch per request (cursor `alertmanager`)."""

    name = "alertmanager"

    def __init__(self, settings: AlertSinkSettings, *, observer: SinkObserver | None = None) -> None:
        if settings.alertmanager_url is None:
            raise ValueError("AlertmanagerSink needs alert_sinks.alertmanager_url")
        self.poster = HttpPoster(settings.alertmanager_url.rstrip("/") + "/api/v2/alerts", settings.http_timeout_s)
        self.dependency = Dependency(self.name, observer or NullObserver())

    async def deliver(self, entries: Sequence[OutboxEntry]) -> Sequence[Refusal]:
        try:
            await self._post(entries)
            return ()
        except _Refused as refused:
            if len(entries) == 1:
                return [Refusal(entries[0], refused.reason)]
        return await self._one_by_one(entries)

    async def _one_by_one(self, entries: Sequence[OutboxEntry]) -> list[Refusal]:
        refusals = []
        for done, entry in enumerate(entries):
            try:
                await self._post([entry])
            except _Refused as refused:
                refusals.append(Refusal(entry, refused.reason))
            except SinkDown as err:
                raise SinkDown(err.reason, delivered=done) from err
        return refusals

    async def _post(self, entries: Sequence[OutboxEntry]) -> None:
        await self.poster.post(encode_json([alertmanager_alert(e) for e in entries]), "application/json")

    async def close(self) -> None:
        await self.poster.close()


class WebhookSink:
    """POSTs each entry's CloudEvent (structured mode) to a URL, in order (cursor `webhook`)."""

    name = "webhook"

    def __init__(self, settings: AlertSinkSettings, gateway_id: str, *, observer: SinkObserver | None = None) -> None:
        if settings.webhook_url is None:
            raise ValueError("WebhookSink needs alert_sinks.webhook_url")
        self.gateway_id = gateway_id
        self.poster = HttpPoster(settings.webhook_url, settings.http_timeout_s)
        self.dependency = Dependency(self.name, observer or NullObserver())

    async def deliver(self, entries: Sequence[OutboxEntry]) -> Sequence[Refusal]:
        refusals = []
        for done, entry in enumerate(entries):
            try:
                await self.poster.post(encode_json(cloud_event(entry, self.gateway_id)), CLOUDEVENTS_CONTENT_TYPE)
            except _Refused as refused:
                refusals.append(Refusal(entry, refused.reason))
            except SinkDown as err:
                raise SinkDown(err.reason, delivered=done) from err
        return refusals

    async def close(self) -> None:
        await self.poster.close()
