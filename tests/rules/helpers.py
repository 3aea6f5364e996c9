"""Builders of rule inputs shared by the rules tests (pure: no clock, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hj212gw.rules.model import AlertChange, Clear, Fire, Sample

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
MN = "MN0001"


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def sample(
    at: datetime, values: dict[str, str | float], *, flags: dict[str, str] | None = None, cn: str = "2051",
    mn: str = MN, backfill: bool = False, zs: dict[str, float] | None = None,
) -> Sample:  # fmt: skip
    suffix = "Rtd" if cn == "2011" else "Avg"
    fields = {"DataTime": at.strftime("%Y%m%d%H%M%S")}
    for code, value in values.items():
        fields[f"{code}-{suffix}"] = str(value)
        fields[f"{code}-Flag"] = (flags or {}).get(code, "N")
        if zs and code in zs:
            fields[f"{code}-Zs{suffix}"] = str(zs[code])
    return Sample(mn, cn, at, at, backfill, fields)


def fires(changes: list[AlertChange], rule: str) -> list[Fire]:
    return [c for c in changes if isinstance(c, Fire) and c.key.rule == rule]


def clears(changes: list[AlertChange], rule: str) -> list[Clear]:
    return [c for c in changes if isinstance(c, Clear) and c.key.rule == rule]
