"""How data rows are shown on request: factor names and units, times in a chosen zone.

`?names=1` adds `name_zh`, `name_en`, `unit` and `cou_unit` from the standard's code table
(protocol/factors.py; 2005 codes through their 2017 code; null for a code it does not list).
`?tz=Asia/Shanghai` renders every time in that IANA zone with its offset, `?tz=device` in the
gateway's configured `device_timezone`; without it times stay UTC with `Z`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from hj212gw.api.params import optional_param
from hj212gw.api.responses import ApiError, json_value
from hj212gw.protocol.factors import factor_for

DEVICE_ZONE = "device"
MAX_ZONE_CHARS = 64


@dataclass(frozen=True, slots=True)
class RowStyle:
    """How one request wants its rows: with factor names or not, times in UTC or a zone."""

    names: bool = False
    zone: tzinfo | None = None

    @classmethod
    def from_request(cls, request: web.Request, device_zone: tzinfo) -> RowStyle:
        """Raises ApiError(400) for a bad `names` or an unknown `tz`."""
        names = optional_param(request, "names")
        if names not in (None, "0", "1", "true", "false"):
            raise ApiError(400, "bad_parameter", f"names={names[:20]!r} must be 1 or 0")
        return cls(names in ("1", "true"), parse_zone(optional_param(request, "tz"), device_zone))

    def render(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out = {key: self._value(value) for key, value in row.items()}
        if self.names:
            factor = factor_for(str(row.get("factor_2017") or row.get("factor") or ""))
            out["name_zh"] = factor.name_zh if factor else None
            out["name_en"] = (factor.name_en or None) if factor else None
            out["unit"] = factor.unit if factor else None
            out["cou_unit"] = factor.cou_unit if factor else None
        return out

    def _value(self, value: Any) -> Any:
        if self.zone is not None and isinstance(value, datetime):
            return value.astimezone(self.zone).isoformat()
        return json_value(value)


def parse_zone(text: str | None, device_zone: tzinfo) -> tzinfo | None:
    """None for UTC (no `tz`), the device zone for `device`, else the IANA zone named; raises ApiError(400)."""
    if text is None:
        return None
    if text == DEVICE_ZONE:
        return device_zone
    try:
        if len(text) > MAX_ZONE_CHARS:
            raise ValueError("too long")
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError) as err:
        detail = f"tz={text[:MAX_ZONE_CHARS]!r} is not an IANA time zone (e.g. Asia/Shanghai) or 'device'"
        raise ApiError(400, "bad_parameter", detail) from err
