"""What the sinks send: the CloudEvents 1.0 envelope of an outbox entry, and the MQTT topics
(docs/mqtt.md).

Topic levels are built from device-provided text (the MN, which a data logger chooses) and must
never let it add a level or a wildcard: `topic_level` percent-encodes every character MQTT gives a
meaning to (`/`, `+`, `#`), NUL and every other character a broker may refuse in a topic (control
characters, lone surrogates, Unicode non-characters), and `%` itself, so the original is always
`urllib.parse.unquote(level, errors="surrogatepass")`. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hj212gw.storage.alert_outbox import OutboxEntry

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
EMPTY_LEVEL = "-"  # an empty text (an alert without an MN) as a level; a literal "-" is "%2D"


def _unsafe(char: str) -> bool:
    code = ord(char)
    return (
        char in "/+#%"
        or code < 0x20
        or 0x7F <= code <= 0x9F  # DEL and the C1 controls (MQTT 3.1.1 §1.5.3: SHOULD NOT)
        or 0xD800 <= code <= 0xDFFF  # lone surrogates: not encodable in UTF-8, brokers drop the client
        or 0xFDD0 <= code <= 0xFDEF
        or (code & 0xFFFE) == 0xFFFE  # U+FFFE, U+FFFF in every plane: non-characters
    )


def topic_level(text: str) -> str:
    """`text` as one MQTT topic level: no `/`, `+`, `#`, NUL or control character left.

    Every unsafe character becomes the `%XX` escapes of its UTF-8 bytes (lone surrogates as
    surrogatepass would encode them); an empty text becomes `-`.
    """
    if text == "":
        return EMPTY_LEVEL
    if text == EMPTY_LEVEL:
        return "%2D"
    if not any(_unsafe(c) for c in text):
        return text
    return "".join("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) if _unsafe(c) else c for c in text)


def check_root_topic(root: str) -> str:
    """A configured topic root: one or more `/`-separated levels, none empty, no wildcard,
    no character `topic_level` would escape, not starting with `$` (the broker's own topics).

    Raises:
        ValueError: the root is unusable.
    """
    levels = root.split("/")
    if root.startswith("$") or any(not level or topic_level(level) != level for level in levels):
        raise ValueError(f"{root!r} is not a usable MQTT topic root (levels of safe characters, no $ first)")
    return root


def alert_topic(root: str, payload: Mapping[str, Any]) -> str:
    """`{root}/v1/alerts/{severity}/{rule}/{mn}` from the payload's labels."""
    labels = payload.get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    levels = (_text(labels.get("severity")), _text(labels.get("alertname")), _text(labels.get("mn")))
    return "/".join((root, "v1", "alerts", *(topic_level(level) for level in levels)))


def device_state_topic(root: str, mn: str) -> str:
    """`{root}/v1/devices/{mn}/state` (retained)."""
    return f"{root}/v1/devices/{topic_level(mn)}/state"


def gateway_status_topic(root: str, gateway_id: str) -> str:
    """`{root}/v1/gateways/{gateway_id}/status` (retained; the Last Will says `offline`)."""
    return f"{root}/v1/gateways/{topic_level(gateway_id)}/status"


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def rfc3339(at: datetime) -> str:
    """UTC, with a `Z`: `2026-12-04T09:31:35.123456Z`."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cloud_event(entry: OutboxEntry, gateway_id: str) -> dict[str, Any]:
    """The CloudEvents 1.0 envelope of an outbox entry (structured mode, JSON event format).

    `id` is the entry's event id: consumers dedupe by it, since delivery is at least once.
    """
    return {
        "specversion": "1.0",
        "id": str(entry.event_id),
        "source": f"hj212gw/{gateway_id}",
        "type": f"hj212gw.alert.{entry.type}",
        "time": rfc3339(entry.created_at),
        "subject": _text(entry.payload.get("fingerprint")),
        "datacontenttype": "application/json",
        "data": entry.payload,
    }


def encode_json(value: object) -> bytes:
    """Compact UTF-8 JSON; values JSON has no type for (a datetime in `details`) as text."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate from a device: \u escapes are valid JSON, raw is not
        return json.dumps(value, separators=(",", ":"), default=str).encode()
