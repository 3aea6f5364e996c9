"""The outbox payload of an alert change: an alert row as the CloudEvent's `data`, Alertmanager style.

Pure: a stored row (storage.alerts) in, a JSON-ready dict out (docs/alerts.md, "Payload"). Every
label is a string (Alertmanager's rule); `value` and `threshold` stay numbers. Times are RFC 3339
in UTC. The sinks wrap it in the CloudEvents envelope; nothing here knows a sink.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def rfc3339(value: datetime | None) -> str | None:
    """`2024-05-01T00:00:00Z` (a fraction of a second only when non-zero); None stays None."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def alert_labels(row: Mapping[str, Any]) -> dict[str, str]:
    """alertname (the rule), severity, mn, factor and detail when set, then the registry's
    labels (name, site, tags) taken when the alert was raised."""
    labels = {"alertname": row["rule"], "severity": row["severity"], "mn": row["mn"]}
    for key in ("factor", "detail"):
        if row.get(key):
            labels[key] = row[key]
    for key, value in (row.get("labels") or {}).items():
        labels.setdefault(str(key), str(value))
    return labels


def alert_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `data` of the CloudEvent for this alert as it stands (after the change was written)."""
    annotations: dict[str, Any] = {
        "summary_zh": row["summary_zh"], "summary_en": row["summary_en"], "article": row["article"],
    }  # fmt: skip
    for key in ("value", "threshold"):
        number = _number(row.get(key))
        if number is not None:
            annotations[key] = number
    acked_at = row.get("acked_at")
    acknowledgement = (
        None if acked_at is None else {"by": row["acked_by"], "at": rfc3339(acked_at), "note": row["ack_note"]}
    )
    return {
        "fingerprint": row["fingerprint"],
        "status": row["status"],
        "labels": alert_labels(row),
        "annotations": annotations,
        "startsAt": rfc3339(row["starts_at"]),
        "endsAt": rfc3339(row.get("ends_at")),
        "alertId": row["id"],
        "acknowledgement": acknowledgement,
        "details": dict(row.get("details") or {}),
    }


def response_s(row: Mapping[str, Any]) -> float | None:
    """Seconds from the alert's start to its acknowledgement (Art. 20(9)), None until acknowledged."""
    acked_at = row.get("acked_at")
    return None if acked_at is None else round((acked_at - row["starts_at"]).total_seconds(), 3)
