"""bench/attack.py stays runnable: a tiny run (a few devices, one-second mixes) against a real
gateway subprocess and PostgreSQL reports every field, and the normal devices' acks equal what
PostgreSQL stored."""

from __future__ import annotations

import pytest
from bench.attack import MIXES, main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHASE_FIELDS = {
    *("mix", "hostile_connections", "seconds", "acked", "ack_p50_ms", "ack_p99_ms", "ack_max_ms"),
    *("gateway_rss_start_mb", "gateway_rss_peak_mb", "closed", "rejected", "worker", "victims_evicted"),
    *("queue_drain_s", "normal_disconnected", "normal_acked", "normal_stored", "gateway_exit_code"),
}


def test_a_tiny_attack_run_reports_every_field_and_acked_equals_stored(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--database-url", pg_dsn, "--normal", "5", "--rate", "40", "--warmup", "0.5"]
    args += ["--baseline-seconds", "1", "--mix-seconds", "1", "--hostile", "2"]
    args += ["--budget-connections", "14", "--budget-seconds", "1.5", "--drain-seconds", "5"]
    monkeypatch.delenv("HJ212GW_CONFIG", raising=False)  # the gateway runs on its defaults

    report = main(args)

    assert report is not None
    assert report["normal_acked"] > 0
    assert report["normal_acked"] == report["normal_stored"]
    assert report["acked_equals_stored"] is True
    assert [m["mix"] for m in report["mixes"]] == list(MIXES)
    for phase in [report["baseline"], *report["mixes"], report["budget"]]:
        assert phase.keys() >= PHASE_FIELDS
        assert phase["gateway_exit_code"] == 0
        assert phase["normal_acked"] == phase["normal_stored"]
    for phase in [*report["mixes"], report["budget"]]:
        assert phase["worker"]["connects"] >= phase["hostile_connections"]
        assert phase["victims_evicted"] == 0  # a wrong PW never evicts the device's connection
    assert report["gateway_rss_peak_mb"] >= report["baseline"]["gateway_rss_peak_mb"] > 0
