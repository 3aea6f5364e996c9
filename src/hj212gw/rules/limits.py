"""Over-limit (超标, `over_limit`) and just-under-the-limit (贴限, `near_limit`) per (MN, factor).

Judged on the statistic the limit is written for (`limit_cn`, default 2061 hour averages), the
折算 value `ZsAvg` where the packet has one, else `Avg`, and only on values flagged N: data marked
invalid are not used to judge exceedances (Art. 25; MEE Q&A on the 2022 marking rule, data-flags.md
§3.1). Non-N values neither fire nor clear. `over_limit` fires on a value above `limit` and clears
(hysteresis) only on a value below `limit * (1 - hysteresis_band)`. `near_limit` fires once
`near_limit_points` consecutive values lie in [limit * (1 - near_limit_band), limit] (Art. 29(4),
interp.) and clears on the first that does not. Only statistics newer than the newest judged
count: a late backfilled hour is stored and reported, not judged live. Imports rules.model only.
"""

from __future__ import annotations

from datetime import datetime

from hj212gw.rules.catalogue import fire
from hj212gw.rules.model import AlertChange, AlertKey, Clear
from hj212gw.rules.thresholds import RuleLimits


class LimitState:
    __slots__ = ("near_count", "near_firing", "near_since", "over_firing", "over_since")

    def __init__(self) -> None:
        self.over_firing = False
        self.over_since: datetime | None = None
        self.near_count = 0
        self.near_since: datetime | None = None
        self.near_firing = False

    def first_clears(self, mn: str, factor: str, at: datetime) -> list[AlertChange]:
        return [Clear(AlertKey("over_limit", mn, factor), at), Clear(AlertKey("near_limit", mn, factor), at)]

    def judge(
        self, mn: str, factor: str, value: float, at: datetime, limits: RuleLimits, statistic: str
    ) -> list[AlertChange]:
        """One N statistic newer than the last judged -> over_limit and near_limit changes."""
        limit = limits.limit
        if limit is None:
            return []
        changes = self._over(mn, factor, value, at, limit, limits, statistic)
        changes.extend(self._near(mn, factor, value, at, limit, limits))
        return changes

    def _over(
        self, mn: str, factor: str, value: float, at: datetime, limit: float, limits: RuleLimits, statistic: str
    ) -> list[AlertChange]:
        key = AlertKey("over_limit", mn, factor)
        if value > limit:
            if self.over_since is None:
                self.over_since = at
            self.over_firing = True
            details = {"statistic": statistic, "cn": limits.limit_cn}
            return [fire(key, self.over_since, at, value=value, threshold=limit, details=details)]
        if self.over_firing and value < limit * (1 - limits.hysteresis_band):
            self.over_firing, self.over_since = False, None
            return [Clear(key, at, value)]
        return []

    def _near(
        self, mn: str, factor: str, value: float, at: datetime, limit: float, limits: RuleLimits
    ) -> list[AlertChange]:
        key = AlertKey("near_limit", mn, factor)
        if limit * (1 - limits.near_limit_band) <= value <= limit:
            self.near_count += 1
            if self.near_since is None:
                self.near_since = at
            if self.near_count >= limits.near_limit_points and not self.near_firing:
                self.near_firing = True
                points = self.near_count
                return [fire(key, self.near_since, at, value=value, threshold=limit, points=points)]
            return []
        self.near_count, self.near_since = 0, None
        if self.near_firing:
            self.near_firing = False
            return [Clear(key, at, value)]
        return []
