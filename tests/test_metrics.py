"""Metrics: per-packet counts kept as plain ints reach the exposition at every collection, once."""

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from hj212gw.metrics import Metrics, PlainHistogram


def test_hot_path_counts_are_collected_exactly_once() -> None:
    metrics = Metrics()
    metrics.received(100)
    metrics.received(23)
    metrics.sent(60)
    metrics.frame_ok("2051")
    metrics.frame_ok("2051")
    metrics.frame_ok("7777")  # outside the standard: label "other"
    metrics.data_acked(0.004)
    value = metrics.registry.get_sample_value
    assert value("hj212gw_received_bytes_total") == 123
    assert value("hj212gw_sent_bytes_total") == 60
    assert value("hj212gw_frames_total", {"cn": "2051", "result": "ok"}) == 2
    assert value("hj212gw_frames_total", {"cn": "other", "result": "ok"}) == 1
    assert value("hj212gw_replies_total", {"cn": "9014"}) == 1
    assert value("hj212gw_ack_latency_seconds_count") == 1
    # A second collection does not count them again; new counts add up.
    metrics.received(7)
    exposition = generate_latest(metrics.registry).decode()
    assert "hj212gw_received_bytes_total 130.0" in exposition
    assert 'hj212gw_frames_total{cn="2051",result="ok"} 2.0' in exposition


def test_data_batches_by_path_are_read_from_the_storage_counts_at_collection() -> None:
    metrics = Metrics()
    counts = SimpleNamespace(copied=0, conflicted_batches=0, upserted=0)
    metrics.watch_data_batches(counts)  # type: ignore[arg-type]
    counts.copied, counts.conflicted_batches, counts.upserted = 40, 2, 21
    value = metrics.registry.get_sample_value
    assert value("hj212gw_data_batches_total", {"path": "copy"}) == 40
    assert value("hj212gw_data_batches_total", {"path": "copy_conflict"}) == 2
    assert value("hj212gw_data_batches_total", {"path": "upsert"}) == 21


def test_plain_histogram_exposes_what_a_prometheus_client_histogram_would() -> None:
    buckets = (0.001, 0.01, 0.1, 1.0)
    reference_registry, plain_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("lat_seconds", "Latency.", buckets=buckets, registry=reference_registry)
    plain = PlainHistogram("lat_seconds", "Latency.", buckets)
    plain_registry.register(plain)
    for value in (0.0, 0.001, 0.0011, 0.01, 0.5, 1.0, 7.5, 7.5):  # on a bound, between, above the last
        reference.observe(value)
        plain.observe(value)
    assert generate_latest(plain_registry) == generate_latest(reference_registry)
    assert plain_registry.get_sample_value("lat_seconds_bucket", {"le": "0.001"}) == 2
    assert plain_registry.get_sample_value("lat_seconds_bucket", {"le": "+Inf"}) == 8


def test_build_info_says_whether_the_per_packet_modules_run_compiled() -> None:
    from hj212gw import __version__, native

    text = generate_latest(Metrics().registry).decode()
    form = "compiled" if native.mode() == "compiled" else "pure"
    assert f'hj212gw_build_info{{native="{form}",version="{__version__}"}} 1.0' in text
