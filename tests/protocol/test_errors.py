"""errors.py: the Hj212Error tree, drawn in its docstring, each class with its own metric label."""

import re

from hj212gw.protocol import errors
from hj212gw.protocol.constants import QnRtn
from hj212gw.protocol.errors import CrcMismatch, FrameError, Hj212Error, MnMismatch, NoFrame, SegmentError
from hj212gw.protocol.framing import Garbage


def every_error() -> list[type[Hj212Error]]:
    found: list[type[Hj212Error]] = []
    todo: list[type[Hj212Error]] = [Hj212Error]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__.startswith("hj212gw.protocol")]  # not server.RefusedByPolicy


def test_every_protocol_error_is_drawn_in_the_tree() -> None:
    drawn = set(re.findall(r"\b[A-Z][A-Za-z0-9]+\b", errors.Hj212Error.__doc__ or ""))
    missing = {cls.__name__ for cls in every_error() if cls.__module__ == errors.__name__} - drawn
    assert missing == set()
    assert "Garbage" in drawn and issubclass(Garbage, FrameError)


def test_each_error_class_has_its_own_snake_case_reason() -> None:
    assert all("reason" in vars(cls) for cls in every_error())  # none inherits its parent's label
    reasons = [cls.reason for cls in every_error()]
    assert len(reasons) == len(set(reasons))
    assert all(re.fullmatch(r"[a-z0-9_]+", reason) for reason in reasons)


def test_the_error_carries_its_9011_answer() -> None:
    assert CrcMismatch(computed=1, declared=2).qn_rtn is QnRtn.CRC_ERROR
    assert MnMismatch(bound="A", received="B").qn_rtn is QnRtn.MN_ERROR
    assert NoFrame().reason == "no_frame" and issubclass(NoFrame, FrameError)
    assert not issubclass(SegmentError, FrameError)
