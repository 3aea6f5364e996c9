"""structlog setup: JSON lines in production, a console renderer on a TTY; the raw wire logger.

Log events are snake_case constants (`das_connected`, `frame_rejected`) with key=value context.
Values often carry bytes a device or an HTTP client chose, so the console renderer shows every
control character escaped (`\x1b`, `\n`): a frame cannot move the cursor, retitle the terminal or
forge a second log line. JSON lines escape them by JSON's own rules.
"""

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

WIRE_LOGGER = "hj212gw.wire"

# C0 controls, DEL, C1 controls, and the bidirectional overrides that reorder what a terminal shows.
_UNSAFE = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPED = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _UNSAFE}
# A traceback keeps its line breaks; the text inside it is escaped otherwise like any value.
_ESCAPED_KEEPING_LINES = {code: text for code, text in _ESCAPED.items() if code != 0x0A}


def escape_control_characters(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: every str value with its control characters as visible escapes (console only)."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = value.translate(_ESCAPED_KEEPING_LINES if key == "exception" else _ESCAPED)
    return event_dict


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO") -> None:
    """Route structlog and stdlib logging to stderr in one format."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *([escape_control_characters] if use_console else []),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger(WIRE_LOGGER).setLevel(logging.DEBUG if level == "DEBUG" else logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    # asyncpg's pools log a WARNING with a traceback for every failed reconnect while PostgreSQL is
    # down; the gateway reports an outage itself (one WARNING database_down, one INFO database_up).
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
