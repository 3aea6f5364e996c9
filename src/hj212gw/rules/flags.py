"""Flag episodes (rule `flag_episode`, detail = the flag letter) per (MN, factor, letter).

HJ 212-2017 Table 8 flags F/M/S/D/C/T/B mark values the instrument itself declares not normal;
shanxi-rules.md defines a fault episode (Art. 18(3)): it starts at the first value flagged D and
ends when valid N data resume, and episodes less than `episode_merge_gap_s` (1 h) apart merge.
The same holds here for every letter. An episode fires at its first flagged value; it clears once
N data have run for the merge gap after its last flagged value (so a merged episode stays one
alert), the Clear carrying the time N resumed. A 2005 P (power fault) counts as D.

Order: an N value ends nothing unless it is newer than the episode's last flagged value, so a
backfilled N never ends an episode that newer live data show running; a flagged value older than
the newest N by more than the merge gap is history and opens nothing. Imports rules.model only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hj212gw.rules.catalogue import fire
from hj212gw.rules.model import AlertChange, AlertKey, Clear
from hj212gw.rules.thresholds import RuleLimits

FLAG_MEANINGS: dict[str, tuple[str, str]] = {
    "F": ("停运", "instrument stopped"),
    "M": ("维护", "maintenance"),
    "S": ("手工设定值", "manually set value"),
    "D": ("故障", "instrument fault"),
    "C": ("校准", "calibration"),
    "T": ("超测量上限", "over the measuring range"),
    "B": ("通讯异常", "communication fault"),
}
ALIASES = {"P": "D"}  # HJ/T 212-2005 power fault: a fault (data-flags.md §1.5)


class Episode:
    __slots__ = ("last_flag", "resume", "start")

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.last_flag = start
        self.resume: datetime | None = None  # the first N after last_flag


class FactorFlags:
    """The flag state of one (MN, factor): its open episodes (empty when all is normal)."""

    __slots__ = ("episodes",)

    def __init__(self) -> None:
        self.episodes: dict[str, Episode] = {}

    def observe(
        self, mn: str, factor: str, flag: str, at: datetime, limits: RuleLimits, latest_normal: datetime | None
    ) -> list[AlertChange]:
        """One value's flag at DataTime `at` -> the changes it makes (usually none).

        `latest_normal` is the newest DataTime of an N value of this factor (any CN), which the
        caller keeps: the fast path of rules.packet never calls this for N values with no episode.
        """
        if flag == "N":
            return self._normal(mn, factor, at, limits) if self.episodes else []
        letter = ALIASES.get(flag, flag)
        if letter not in FLAG_MEANINGS or letter not in limits.flag_letters:
            return []
        return self._flagged(mn, factor, letter, at, limits, latest_normal)

    def first_clears(self, mn: str, factor: str, at: datetime, limits: RuleLimits) -> list[AlertChange]:
        """The model's first-seen rule: one Clear per letter not running now."""
        return [
            Clear(AlertKey("flag_episode", mn, factor, letter), at)
            for letter in limits.flag_letters
            if letter not in self.episodes
        ]

    def _normal(self, mn: str, factor: str, at: datetime, limits: RuleLimits) -> list[AlertChange]:
        gap = timedelta(seconds=limits.episode_merge_gap_s)
        changes: list[AlertChange] = []
        for letter, episode in list(self.episodes.items()):
            if at <= episode.last_flag:
                continue  # older than the episode's newest flagged value: ends nothing
            if episode.resume is None or at < episode.resume:
                episode.resume = at
            if at - episode.last_flag >= gap:
                del self.episodes[letter]
                changes.append(Clear(AlertKey("flag_episode", mn, factor, letter), episode.resume))
        return changes

    def _flagged(
        self, mn: str, factor: str, letter: str, at: datetime, limits: RuleLimits, latest_normal: datetime | None
    ) -> list[AlertChange]:
        episode = self.episodes.get(letter)
        if episode is not None:
            if at > episode.last_flag:
                episode.last_flag = at
                if episode.resume is not None and episode.resume <= at:
                    episode.resume = None  # merged: the N run was shorter than the gap
            if at >= episode.start:
                return []
            episode.start = at  # an earlier flagged value arrived late: the episode began earlier
        else:
            gap = timedelta(seconds=limits.episode_merge_gap_s)
            if latest_normal is not None and latest_normal - at >= gap:
                return []  # history: N data newer by more than the gap already closed it
            episode = self.episodes[letter] = Episode(at)
        meaning_zh, meaning_en = FLAG_MEANINGS[letter]
        key = AlertKey("flag_episode", mn, factor, letter)
        since = episode.start.isoformat()
        return [
            fire(key, episode.start, at, flag=letter, flag_zh=meaning_zh, flag_en=meaning_en, since=since,
                 details={"flag": letter})
        ]  # fmt: skip
