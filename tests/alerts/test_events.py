"""alerts/events.py (pure): topic levels that no device-chosen text can break, topic roots, and the
CloudEvents envelope of an outbox entry."""

from __future__ import annotations

import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hj212gw.alerts.events import (
    alert_topic,
    check_root_topic,
    cloud_event,
    device_state_topic,
    encode_json,
    topic_level,
)
from hj212gw.storage.alert_outbox import OutboxEntry


def decoded(level: str) -> str:
    return "" if level == "-" else urllib.parse.unquote(level, errors="surrogatepass")


@given(st.text())
@example("a/b+c#d\x00e%f")
@example("-")
@example("")
@example("\ud800\udfff\ufffe\U0010ffff\x85")
def test_any_text_is_one_safe_level_that_decodes_back(text: str) -> None:
    level = topic_level(text)
    assert level and not set("/+#\x00") & set(level)
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F and not 0xD800 <= ord(c) <= 0xDFFF for c in level)
    level.encode("utf-8")  # a broker gets valid UTF-8
    assert decoded(level) == text


def test_safe_text_is_left_as_it_is() -> None:
    assert topic_level("010000A8900016F000169DC0") == "010000A8900016F000169DC0"
    assert topic_level("站点 1") == "站点 1"
    assert device_state_topic("r", "a/b") == "r/v1/devices/a%2Fb/state"


def test_the_alert_topic_comes_from_the_labels_and_survives_a_payload_without_them() -> None:
    labels = {"labels": {"severity": "warning", "alertname": "flatline", "mn": "M#1"}}
    assert alert_topic("plant/hj", labels) == "plant/hj/v1/alerts/warning/flatline/M%231"
    assert alert_topic("r", {}) == "r/v1/alerts/-/-/-"


@pytest.mark.parametrize("root", ["", "a//b", "a/+", "#", "$SYS/x", "a\x00", "x/", "a%b"])
def test_unusable_roots_are_refused(root: str) -> None:
    with pytest.raises(ValueError):
        check_root_topic(root)


def test_the_cloudevent_envelope() -> None:
    entry = OutboxEntry(
        id=3, event_id=uuid.UUID(int=7), alert_id=9, type="acknowledged", payload={"fingerprint": "fp", "x": 1},
        created_at=datetime(2026, 12, 4, 17, 0, 1, 500, tzinfo=timezone(timedelta(hours=8))), txid=99,
    )  # fmt: skip
    assert cloud_event(entry, "gw-2") == {
        "specversion": "1.0", "id": "00000000-0000-0000-0000-000000000007", "source": "hj212gw/gw-2",
        "type": "hj212gw.alert.acknowledged", "time": "2026-12-04T09:00:01.000500Z", "subject": "fp",
        "datacontenttype": "application/json", "data": {"fingerprint": "fp", "x": 1},
    }  # fmt: skip


def test_json_is_compact_utf8_and_still_valid_with_a_lone_surrogate() -> None:
    assert encode_json({"s": "超标", "t": datetime(2026, 1, 1, tzinfo=UTC)}) == (
        '{"s":"超标","t":"2026-01-01 00:00:00+00:00"}'.encode()
    )
    assert encode_json({"mn": "a\ud800"}) == b'{"mn":"a\\ud800"}'
