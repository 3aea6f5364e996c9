"""Every Prometheus metric of the gateway, defined once, in one registry per `Metrics` object.

Names are `hj212gw_<thing>_<unit or total>`; labels take only bounded values (a CN outside the
standard's tables becomes `other`; never a QN, a value or, by default, an MN).
"""

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from hj212gw import __version__, native
from hj212gw.protocol.constants import Cn

disable_created_metrics()  # type: ignore[no-untyped-call,unused-ignore]  # the *_created series double the exposition for no operator value

_KNOWN_CNS = frozenset(c.value for c in Cn)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def cn_label(cn: str | None) -> str:
    return cn if cn in _KNOWN_CNS else "other"


class _FlushFirst:
    """Registered before every metric: each collection (a scrape, `get_sample_value`) first moves
    the per-packet counts into their Prometheus counters."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        self._flush()
        return []


class PlainHistogram:
    """A histogram for the per-packet hot path: `observe` is a bisect and two int/float adds on
    plain Python values (prometheus_client's takes a lock and walks the buckets in Python, about
    1.5 µs). Exposed as a standard Prometheus histogram when the registry is collected."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(buckets)
        self._labels = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._counts = [0] * (len(self._bounds) + 1)  # the last one: above every bound
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # le: a value equal to a bound is in it
        self._sum += value

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        cumulative, running = [], 0
        for label, count in zip(self._labels, self._counts, strict=True):
            running += count
            cumulative.append((label, running))
        return [HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self._sum)]


class DataBatchCounts(Protocol):
    """How batches reached `data` (storage.batch.DirectInsertGuard keeps these)."""

    copied: int
    conflicted_batches: int
    upserted: int


class _DataBatches:
    """hj212gw_data_batches_total{path}, read from the storage layer's counts at collection."""

    def __init__(self, counts: DataBatchCounts) -> None:
        self._counts = counts

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily("hj212gw_data_batches", _DATA_BATCHES_HELP, labels=["path"])]

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily("hj212gw_data_batches", _DATA_BATCHES_HELP, labels=["path"])
        family.add_metric(["copy"], self._counts.copied)
        family.add_metric(["copy_conflict"], self._counts.conflicted_batches)
        family.add_metric(["upsert"], self._counts.upserted)
        return [family]


_DATA_BATCHES_HELP = (
    "Batches written to data: copy (straight in), copy_conflict (a key existed: rolled back, then "
    "merged), upsert (merged at once: resends, or after a conflict)."
)


class GapTotals(Protocol):
    """What monitor.gaps.GapTracker counts: (cn, status) -> (gaps, missing periods)."""

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]: ...


class _Gaps:
    """hj212gw_gaps{cn,status} and hj212gw_gap_missing_periods{cn,status}, counted at collection."""

    def __init__(self, source: GapTotals) -> None:
        self._source = source

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("hj212gw_gaps", "Unfilled gaps tracked by this process, by CN and status.",
                              labels=["cn", "status"]),
            GaugeMetricFamily("hj212gw_gap_missing_periods", "Periods missing in those gaps, by CN and status.",
                              labels=["cn", "status"]),
        )  # fmt: skip

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        gaps, periods = self._families()
        for (cn, status), (count, missing) in sorted(self._source.totals().items()):
            gaps.add_metric([cn_label(cn), status], count)
            periods.add_metric([cn_label(cn), status], missing)
        return [gaps, periods]


class AdmissionCounts(Protocol):
    """What server.admission.ReadAdmission counts."""

    @property
    def deferred(self) -> int: ...
    @property
    def backlog(self) -> int: ...


class _Admission:
    """hj212gw_reads_deferred_total and hj212gw_read_backlog, read at collection (no work per read)."""

    def __init__(self, source: AdmissionCounts) -> None:
        self._source = source

    def _families(self) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily("hj212gw_reads_deferred", "Socket reads kept unparsed because the batch writers "
                                "had a full batch each queued (a burst), parsed oldest first."),
            GaugeMetricFamily("hj212gw_read_backlog", "Connections whose read waits to be parsed now."),
        )  # fmt: skip

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        deferred, backlog = self._families()
        deferred.add_metric([], self._source.deferred)
        backlog.add_metric([], self._source.backlog)
        return [deferred, backlog]


class Metrics:
    """The gateway's metrics.

    Counts made for every packet (bytes, accepted frames, 9014s) go to plain ints first and into
    their counters when the registry is collected: a prometheus_client `inc()` takes a lock and
    costs about a microsecond, several per packet. The event loop is single-threaded, and so is
    collection (the admin server runs on the same loop), so nothing is lost or counted twice.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._received_bytes = 0
        self._sent_bytes = 0
        self._acks = 0
        self._frames_ok_pending: dict[str, int] = {}
        r.register(_FlushFirst(self.flush))
        self.build_info = Gauge(
            "hj212gw_build_info",
            "1, labelled with the version and whether the per-packet modules run compiled (hj212gw.native).",
            ["version", "native"],
            registry=r,
        )
        self.build_info.labels(version=__version__, native=native.mode().partition(":")[0]).set(1)
        self.connections_open = Gauge("hj212gw_connections_open", "DAS connections open now.", registry=r)
        self.connections_total = Counter(
            "hj212gw_connections_total", "DAS connections accepted or refused.", ["outcome"], registry=r
        )
        self.connections_closed = Counter(
            "hj212gw_connections_closed_total", "DAS connections closed, by reason.", ["reason"], registry=r
        )
        self.frames = Counter("hj212gw_frames_total", "Frames received by CN, result.", ["cn", "result"], registry=r)
        self.frames_rejected = Counter(
            "hj212gw_frames_rejected_total", "Frames rejected, by reason.", ["reason"], registry=r
        )
        self.tolerances = Counter(
            "hj212gw_tolerances_total", "Frames accepted with a named vendor quirk.", ["tolerance"], registry=r
        )
        self.bytes_received = Counter("hj212gw_received_bytes_total", "Bytes read from DAS sockets.", registry=r)
        self.bytes_sent = Counter("hj212gw_sent_bytes_total", "Bytes written to DAS sockets.", registry=r)
        self.replies = Counter("hj212gw_replies_total", "Replies and requests sent, by CN.", ["cn"], registry=r)
        self.values_stored = Counter("hj212gw_values_stored_total", "Data rows committed.", registry=r)
        self.batch_rows = Histogram(
            "hj212gw_batch_rows",
            "Rows per committed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000),
            registry=r,
        )
        self.batch_commit = Histogram(
            "hj212gw_batch_commit_seconds", "Time to write and commit one batch.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.ack_latency = PlainHistogram(
            "hj212gw_ack_latency_seconds", "From a data packet's arrival to its 9014 (after commit).", _LATENCY_BUCKETS
        )
        r.register(self.ack_latency)
        self.write_queue = Gauge("hj212gw_write_queue_items", "Packets waiting for their batch to commit.", registry=r)
        self.write_queue_bytes = Gauge(
            "hj212gw_write_queue_bytes", "Encoded bytes (data rows + raw frames) of the queued packets.", registry=r
        )
        self.items_refused = Counter(
            "hj212gw_items_refused_total",
            "Packets whose rows PostgreSQL refused even alone, by SQLSTATE class and whether the raw "
            "frame was archived (archived: acked; not_archived: no ack).",
            ["sqlstate_class", "outcome"],
            registry=r,
        )
        self.task_restarts = Counter(
            "hj212gw_task_restarts_total",
            "Supervised tasks that ended unexpectedly and were restarted.",
            ["task"],
            registry=r,
        )
        self.task_up_gauge = Gauge(
            "hj212gw_task_up", "1 while a supervised task runs, 0 while it waits to restart.", ["task"], registry=r
        )
        self.dependency_up = Gauge("hj212gw_dependency_up", "1 when a dependency is reachable.", ["name"], registry=r)
        self.paused_reading = Gauge(
            "hj212gw_paused_connections", "Connections whose reading is paused by backpressure.", registry=r
        )
        self.queue_share_pauses = Counter(
            "hj212gw_queue_share_pauses_total",
            "Connections not read because their own packets in the write queue reached "
            "connections.max_unconfirmed_items or max_unconfirmed_bytes, by limit.",
            ["limit"],
            registry=r,
        )
        for limit in ("items", "bytes"):
            self.queue_share_pauses.labels(limit=limit)
        self.write_paused = Gauge(
            "hj212gw_write_paused_connections",
            "Connections not read because their peer does not read our replies (outgoing buffer full).",
            registry=r,
        )
        self.requests = Counter(
            "hj212gw_requests_total", "Platform requests by CN, outcome.", ["cn", "outcome"], registry=r
        )
        self.data_time_suspect = Counter(
            "hj212gw_data_time_suspect_total",
            "Data packets whose DataTime is outside the tolerance window (stored, marked time_suspect).",
            registry=r,
        )
        self.split_missing = Counter(
            "hj212gw_split_parts_missing_total", "Split-packet parts that never arrived.", registry=r
        )
        self.split_transfers = Counter(
            "hj212gw_split_transfers_total",
            "Split transfers of fragments finished: assembled, unparsable, rejected (by PostgreSQL), expired.",
            ["outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "hj212gw_auth_failures_total", "Packets refused for their PW, by reason.", ["reason"], registry=r
        )
        self.auth_throttled = Counter(
            "hj212gw_auth_throttled_total", "Connections made to wait by their IP's wrong-PW backoff.", registry=r
        )
        self.device_pins = Counter(
            "hj212gw_device_pins_total", "Trust-on-first-use pins of new MNs' PWs, by outcome.", ["outcome"], registry=r
        )
        self.device_pin_batch = Histogram(
            "hj212gw_device_pin_batch_mns",
            "New MNs per pin statement (one INSERT for every MN waiting; a refused one is isolated).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.mn_moves = Counter(
            "hj212gw_mn_moves_total", "MNs moving between live connections, by outcome.", ["outcome"], registry=r
        )
        self.commands = Counter(
            "hj212gw_commands_total",
            "Platform commands (API, CLI, backfill) ended, by outcome: the final state.",
            ["outcome"],
            registry=r,
        )
        self.backfill_requests = Counter(
            "hj212gw_backfill_requests_total",
            "History fetches of the automatic backfill, by outcome (succeeded, no_data, timed_out, refused, "
            "failed, device_offline).",
            ["outcome"],
            registry=r,
        )
        self.backfill_filled_periods = Counter(
            "hj212gw_backfill_filled_periods_total",
            "Missing periods the backfill's fetches filled, by CN.",
            ["cn"],
            registry=r,
        )
        self.devices = Gauge(
            "hj212gw_devices",
            "Devices by state (docs/monitoring.md): online and silent, those held by this replica; offline, "
            "those last held by it.",
            ["state"],
            registry=r,
        )
        self.device_transitions = Counter(
            "hj212gw_device_transitions_total",
            "Device state transitions, by new state and cause.",
            ["state", "cause"],
            registry=r,
        )
        self.alerts_firing_gauge = Gauge(
            "hj212gw_alerts_firing",
            "Alerts firing now in the installation (every replica reads the same count from PostgreSQL "
            "every alerts.refresh_s), by rule and severity.",
            ["rule", "severity"],
            registry=r,
        )
        self.alert_changes_total = Counter(
            "hj212gw_alert_changes_total",
            "Alert changes this replica wrote, by type (firing, resolved, updated, acknowledged, reminder).",
            ["type"],
            registry=r,
        )
        self.alert_outbox_depth = Gauge(
            "hj212gw_alert_outbox_depth",
            "Outbox entries a sink has not delivered yet (read from PostgreSQL every alerts.refresh_s).",
            ["sink"],
            registry=r,
        )
        self.alert_outbox_oldest_age = Gauge(
            "hj212gw_alert_outbox_oldest_age_seconds",
            "Age of the oldest outbox entry a sink has not delivered yet (0: none).",
            ["sink"],
            registry=r,
        )
        self.rule_samples_dropped = Counter(
            "hj212gw_rule_samples_dropped_total",
            "Committed packets the per-packet rules did not judge: their queue was full (alerts.max_pending_samples).",
            registry=r,
        )
        self.alert_leader_gauge = Gauge(
            "hj212gw_alert_leader", "1 while this replica is the elected one (scanning rules, reminders).", registry=r
        )
        self.alerts_delivered = Counter(
            "hj212gw_alerts_delivered_total",
            "Alert outbox entries a sink confirmed (PUBACK, HTTP 2xx), by sink.",
            ["sink"],
            registry=r,
        )
        self.alert_publish_errors = Counter(
            "hj212gw_alert_publish_errors_total",
            "Failed alert deliveries (each retried later) and entries a sink refused, by sink.",
            ["sink"],
            registry=r,
        )
        self.device_states_dropped = Counter(
            "hj212gw_device_states_dropped_total",
            "Device states not published to MQTT: more devices waited for the broker than "
            "mqtt.max_pending_device_states.",
            registry=r,
        )
        self._frames_ok: dict[str, Counter] = {}
        self.data_acks = self.replies.labels(cn="9014")  # one per data packet: the child, looked up once

    def watch_data_batches(self, counts: DataBatchCounts) -> None:
        """Expose the storage layer's counts of how batches reached `data`."""
        self.registry.register(_DataBatches(counts))

    def watch_admission(self, source: AdmissionCounts) -> None:
        """Expose the read admission's deferred reads and backlog, read at each scrape."""
        self.registry.register(_Admission(source))

    def watch_gaps(self, source: GapTotals) -> None:
        """Expose the gap tracker's unfilled gaps and missing periods, counted at each scrape."""
        self.registry.register(_Gaps(source))

    # Hot path: plain counts, moved into the counters by flush() -----------------------------

    def received(self, nbytes: int) -> None:
        self._received_bytes += nbytes

    def sent(self, nbytes: int) -> None:
        self._sent_bytes += nbytes

    def frame_ok(self, cn: str) -> None:
        pending = self._frames_ok_pending
        pending[cn] = pending.get(cn, 0) + 1

    def backfill_request(self, outcome: str) -> None:
        self.backfill_requests.labels(outcome=outcome).inc()

    def backfill_filled(self, cn: str, periods: int) -> None:
        if periods:
            self.backfill_filled_periods.labels(cn=cn_label(cn)).inc(periods)

    def data_acked(self, latency_s: float) -> None:
        self._acks += 1
        self.ack_latency.observe(latency_s)

    def flush(self) -> None:
        if self._received_bytes:
            self.bytes_received.inc(self._received_bytes)
            self._received_bytes = 0
        if self._sent_bytes:
            self.bytes_sent.inc(self._sent_bytes)
            self._sent_bytes = 0
        if self._acks:
            self.data_acks.inc(self._acks)
            self._acks = 0
        for cn, count in self._frames_ok_pending.items():
            child = self._frames_ok.get(cn)
            if child is None:
                child = self._frames_ok[cn] = self.frames.labels(cn=cn_label(cn), result="ok")
            child.inc(count)
        self._frames_ok_pending.clear()

    # WriterObserver (hj212gw.ingest.items)---------------------------------------------------

    def batch_committed(self, *, items: int, rows: int, values: int, latency_s: float) -> None:
        self.values_stored.inc(values)
        self.batch_rows.observe(rows)
        self.batch_commit.observe(latency_s)

    def queue_depth(self, items: int, nbytes: int) -> None:
        self.write_queue.set(items)
        self.write_queue_bytes.set(nbytes)

    def item_refused(self, *, sqlstate_class: str, archived: bool) -> None:
        self.items_refused.labels(
            sqlstate_class=sqlstate_class, outcome="archived" if archived else "not_archived"
        ).inc()

    def database_up(self, up: bool) -> None:
        self.dependency_up.labels(name="postgresql").set(1 if up else 0)

    # SinkObserver (hj212gw.alerts.outbox) ----------------------------------------------------

    def dependency(self, name: str, up: bool) -> None:
        self.dependency_up.labels(name=name).set(1 if up else 0)

    def alerts_sent(self, sink: str, count: int) -> None:
        self.alerts_delivered.labels(sink=sink).inc(count)

    def alert_publish_failed(self, sink: str) -> None:
        self.alert_publish_errors.labels(sink=sink).inc()

    def device_state_dropped(self) -> None:
        self.device_states_dropped.inc()

    # SupervisorObserver (hj212gw.supervisor) -------------------------------------------------

    def task_up(self, task: str, up: bool) -> None:
        self.task_up_gauge.labels(task=task).set(1 if up else 0)

    def task_restarted(self, task: str) -> None:
        self.task_restarts.labels(task=task).inc()

    # AlertObserver (hj212gw.alerts.engine) ---------------------------------------------------

    def alert_changes(self, change: str, count: int) -> None:
        self.alert_changes_total.labels(type=change).inc(count)

    def alerts_firing(self, counts: Mapping[tuple[str, str], int]) -> None:
        self.alerts_firing_gauge.clear()  # a rule with none firing any more drops out
        for (rule, severity), count in counts.items():
            self.alerts_firing_gauge.labels(rule=rule, severity=severity).set(count)

    def alert_outbox_backlog(self, backlog: Sequence[tuple[str, int, float | None]]) -> None:
        for sink, depth, oldest_age_s in backlog:
            self.alert_outbox_depth.labels(sink=sink).set(depth)
            self.alert_outbox_oldest_age.labels(sink=sink).set(oldest_age_s or 0.0)

    def alert_leader(self, leading: bool) -> None:
        self.alert_leader_gauge.set(1 if leading else 0)
