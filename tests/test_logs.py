"""Log rendering: device bytes never reach the terminal as control characters; JSON stays JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from hj212gw.logs import configure_logging

# Clears the screen, retitles the terminal, rings the bell, forges a second line, flips the text.
HOSTILE = "MN=\x1b[2J\x1b]0;pwned\x07\r\n2026-01-01 [error] forged\u202eabc\x9b31m"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_the_console_renderer_escapes_control_characters_in_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "INFO")
    structlog.get_logger("hj212gw.test").warning("frame_rejected", raw=HOSTILE, detail=HOSTILE)
    logging.getLogger("aiohttp.test").warning("stdlib %s", HOSTILE)
    err = capsys.readouterr().err
    for raw in ("\x1b[2J", "\x1b]0;", "\x07", "\r", "\u202e", "\x9b"):
        assert raw not in err, repr(raw)
    assert len(err.splitlines()) == 2  # nothing forged a line of its own
    assert err.count("\\x1b[2J") == 3 and "\\u202e" in err


def test_a_traceback_keeps_its_lines_but_not_the_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "INFO")
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        structlog.get_logger("hj212gw.test").exception("bug")
    err = capsys.readouterr().err
    assert "Traceback" in err and "\x1b" not in err.replace("\x1b[", "") and "\x07" not in err


def test_json_lines_stay_valid_json_with_the_value_intact(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    structlog.get_logger("hj212gw.test").warning("frame_rejected", raw=HOSTILE)
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["raw"] == HOSTILE
