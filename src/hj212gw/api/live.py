"""What the admin API reads about live DAS connections: two structural interfaces.

The server satisfies them without importing this module, and the API never imports the server:
any object with these attributes and methods will do (a frozen dataclass, a test's plain class).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol


class LiveView(Protocol):
    """The connection currently holding an MN, as the server sees it.

    `protocol_version` is the edition the session parses as: "2005", "2017" or "2025".
    All datetimes are timezone-aware.
    """

    @property
    def mn(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def connection_id(self) -> int | None: ...
    @property
    def connected_at(self) -> datetime: ...
    @property
    def last_packet_at(self) -> datetime | None: ...
    @property
    def protocol_version(self) -> str | None: ...


class LiveState(Protocol):
    """What the server exposes about its live connections."""

    def online(self) -> Mapping[str, LiveView]:
        """MN -> the connection currently holding it."""
        ...
