"""`AlertPipeline`: everything issue #13 runs in one gateway process, built from the settings.

- every replica: the per-packet rules after commit (`PacketRuleRunner`, a monitor-hub listener),
  the engine's refresh of the firing set, the MQTT connection (gateway status with its Last Will,
  retained device states from the device tracker) when a broker is configured;
- the elected replica (`Leader`, an advisory lock on its own connection): the scanning rules
  (`LeaderScans`), reminders, the outbox deliveries to every configured sink, and outbox retention.

Without a broker or HTTP sink the alerts are still stored (and the API and CLI show them); the
outbox keeps them for a sink configured later. `not_ready_reasons` joins the readiness of the
gateway: an election that cannot reach PostgreSQL makes the replica not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from hj212gw.alerts.config import ThresholdsFile, load_calendar
from hj212gw.alerts.engine import AlertEngine
from hj212gw.alerts.http_sinks import AlertmanagerSink, WebhookSink
from hj212gw.alerts.leader import Leader
from hj212gw.alerts.mqtt import MqttSink
from hj212gw.alerts.outbox import AlertNotifications, OutboxDelivery, OutboxRetention, Sink
from hj212gw.alerts.runner import PacketRuleRunner
from hj212gw.alerts.scans import LeaderScans
from hj212gw.metrics import Metrics
from hj212gw.monitor.state import DeviceStateChanged
from hj212gw.rules.packet import PacketRules
from hj212gw.settings import Settings
from hj212gw.storage.db import DATABASE_ERRORS, Database
from hj212gw.supervisor import Supervisor


class AlertPipeline:
    """The rules, the alert engine, the election and the sinks of one replica (module docstring)."""

    def __init__(self, settings: Settings, db: Database, dsn: str, metrics: Metrics, supervisor: Supervisor) -> None:
        a = settings.alerts
        self.settings = settings
        self.supervisor = supervisor
        self.thresholds = ThresholdsFile(a.thresholds_file)
        self.calendar = load_calendar(a.calendar_file)
        self.engine = AlertEngine(db, settings.gateway_id, a, observer=metrics)
        self.rules = PacketRules(self.thresholds.current)
        self.runner = PacketRuleRunner(
            self.rules, self.engine, max_pending=a.max_pending_samples, on_dropped=metrics.rule_samples_dropped.inc
        )
        self.leader = Leader(dsn, settings.database_schema, check_s=a.leader_check_s)
        self.leader.add_listener(metrics.alert_leader)
        self.scans = LeaderScans(
            db, self.engine, lambda: self.thresholds.current, lambda: self.calendar, interval_s=a.scan_s
        )
        self.mqtt = MqttSink(settings.mqtt, settings.gateway_id, observer=metrics) if settings.mqtt.url else None
        sinks: list[Sink] = [] if self.mqtt is None else [self.mqtt]
        s = settings.alert_sinks
        self.http_sinks: list[AlertmanagerSink | WebhookSink] = []
        if s.alertmanager_url:
            self.http_sinks.append(AlertmanagerSink(s, observer=metrics))
        if s.webhook_url:
            self.http_sinks.append(WebhookSink(s, settings.gateway_id, observer=metrics))
        sinks.extend(self.http_sinks)
        leading = self._is_leader
        self.deliveries = [OutboxDelivery(db, sink, leading, settings=s, observer=metrics) for sink in sinks]
        for delivery in self.deliveries:
            self.leader.add_listener(_waker(delivery))
        self.notifications = AlertNotifications(db, self.deliveries, settings=s)
        self.retention = OutboxRetention(db, leading, settings=s)

    def _is_leader(self) -> bool:
        return self.leader.is_leader

    def device_changed(self, event: DeviceStateChanged) -> None:
        """A subscriber of the device tracker: the retained state on MQTT (the scans read the table)."""
        if self.mqtt is not None:
            self.mqtt.device_states.changed(event)

    async def start(self) -> None:
        await self.engine.refresh()
        start = self.supervisor.start
        start("alerts-rules", self.runner.run)
        start("alerts-refresh", self.engine.run_refresh)
        if self.thresholds.path is not None:
            start("alerts-thresholds", self._watch_thresholds)
        start("alerts-election", self.leader.run)
        start("alerts-scans", lambda: self.leader.while_leader(self.scans.run))
        start("alerts-reminders", lambda: self.leader.while_leader(self.engine.run_reminders))
        start("alerts-retention", self.retention.run)
        if self.mqtt is not None:
            start("alerts-mqtt", self.mqtt.run)
        for delivery in self.deliveries:
            start(f"alerts-deliver-{delivery.sink.name}", delivery.run)
        if self.deliveries:
            start("alerts-notifications", self.notifications.run)

    async def _watch_thresholds(self) -> None:
        """A thresholds file that changed is put in force within `alerts.refresh_s`."""
        while True:
            await asyncio.sleep(self.settings.alerts.refresh_s)
            if self.thresholds.reload():
                self.rules.thresholds = self.thresholds.current

    async def stop(self) -> None:
        """After the supervisor stopped the tasks: judge what was queued (best effort: what does not
        get judged now is data that is stored), close the sinks and the election."""
        with contextlib.suppress(*DATABASE_ERRORS):
            await self.runner.judge()
        for sink in self.http_sinks:
            await sink.close()
        await self.leader.close()

    def not_ready_reasons(self) -> list[str]:
        return self.leader.not_ready_reasons()


def _waker(delivery: OutboxDelivery) -> Callable[[bool], Any]:
    def wake(leading: bool) -> None:
        if leading:
            delivery.wake()

    return wake
