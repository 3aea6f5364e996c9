"""Device-side changes (Art. 29(6)): `parameter_changed` and `value_revised`.

Both are events, not conditions: each is fired and cleared at once (the alert is stored,
published and can be acknowledged, and never stays firing with nothing to end it).

- `parameter_changed` (factor = PolId, detail = the i13xxx code): an instrument parameter
  uploaded in 3020 (HJ 212-2017 Appendix B.10: i13001 range, i13007/i13008 intercept/slope, …)
  differs from the previous upload of the same parameter. The first upload only sets the
  reference (a restart of the gateway is not a change). The 3020 `fields` are the CP items
  (`PolId=w01018;i13001-Info=0-500`); a vendor's `w01018-i13001-Info` form is read too.
- `value_revised` (detail = CN): a resent value differs from the one stored before for the same
  key (`ValueRevised`, from the storage's data versions).

Parsing of `i13001` (measuring range) is here too: `500` means [0, 500], `0-500` / `0~500` a
range. Imports rules.model only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime

from hj212gw.rules.catalogue import fire
from hj212gw.rules.model import AlertChange, AlertKey, Clear, ValueRevised

RANGE_CODE = "i13001"
MAX_PARAMETERS = 64  # per (MN, factor): bounded whatever a device sends


def instrument_parameters(fields: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """(factor, i13xxx code, text) of a 3020's CP items; factor "" when no PolId is given."""
    pol_id = fields.get("PolId", "")
    for name, text in fields.items():
        if not name.endswith("-Info"):
            continue
        parts = name.split("-")
        if len(parts) == 2 and parts[0].startswith("i13"):
            yield pol_id, parts[0], text
        elif len(parts) == 3 and parts[1].startswith("i13"):
            yield parts[0], parts[1], text


def parse_range(text: str) -> tuple[float | None, float | None] | None:
    """An i13001 text -> (low, high); None when it is not a number or a range of two."""
    for sep in ("~", "-", ","):
        low, found, high = text.strip().partition(sep)
        if found and low:
            try:
                return float(low), float(high)
            except ValueError:
                return None
    try:
        return 0.0, float(text)
    except ValueError:
        return None


def parameter_changes(
    known: dict[str, str], mn: str, factor: str, code: str, text: str, at: datetime
) -> list[AlertChange]:
    """Compare one uploaded parameter with the last known one (`known` is updated)."""
    old = known.get(code)
    if old is None:
        if len(known) < MAX_PARAMETERS:
            known[code] = text
        return []
    if old == text:
        return []
    known[code] = text
    key = AlertKey("parameter_changed", mn, factor, code)
    details = {"parameter": code, "old": old, "new": text}
    return [fire(key, at, at, param=code, old=old, new=text, details=details), Clear(key, at)]


def value_revised(event: ValueRevised) -> list[AlertChange]:
    """A resent value that differs from the stored one: fired and cleared at once."""
    key = AlertKey("value_revised", event.mn, event.factor, event.cn)
    details = {"cn": event.cn, "data_time": event.data_time.isoformat(), "old": event.old, "new": event.new}
    when = event.data_time.isoformat()
    change = fire(
        key, event.at, event.at, value=event.new, cn=event.cn, data_time=when, old=event.old, new=event.new,
        details=details,
    )  # fmt: skip
    return [change, Clear(key, event.at, event.new)]
