"""events.py: the session's vocabulary, one `Event` union, importable from the session too."""

import dataclasses
import typing

import pytest

from hj212gw.protocol import events, session


def test_every_event_class_is_in_the_union_and_re_exported_by_the_session() -> None:
    classes = {obj for obj in vars(events).values() if isinstance(obj, type) and obj.__module__ == events.__name__}
    assert set(typing.get_args(events.Event)) == classes
    assert all(getattr(session, cls.__name__) is cls for cls in classes)
    assert {cls.__name__ for cls in classes} <= set(session.__all__)


def test_events_are_immutable_values() -> None:
    for cls in typing.get_args(events.Event):
        if issubclass(cls, tuple):  # PacketReceived, one per packet: a named tuple
            assert hasattr(cls, "_fields")
            continue
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_a_packet_event_cannot_be_changed() -> None:
    event = events.PacketReceived(typing.cast(typing.Any, None), typing.cast(typing.Any, None), ack=True)
    with pytest.raises(AttributeError):
        event.ack = False  # type: ignore[misc]
    assert (event.backfill, event.fragment) == (False, False)
