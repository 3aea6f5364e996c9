"""`LiveDevice`: the server's view of the connection holding an MN, a plain value.

Server side (connection.py builds it, listener.py collects it for `online()`). The admin API
reads it through its own `api.live.LiveView` protocol and
never imports this module, nor does this module import the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveDevice:
    """The connection currently holding an MN, as the server sees it.

    `protocol_version` is the edition the session parses as: "2005", "2017" or "2025".
    All datetimes must be timezone-aware.
    """

    mn: str
    peer: str
    connection_id: int | None
    connected_at: datetime
    last_packet_at: datetime | None
    protocol_version: str | None
