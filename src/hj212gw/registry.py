"""The device registry as the server sees it: an in-memory copy of `devices`, refreshed periodically.

Lookups on the per-packet path are dictionary reads; the database is asked every `refresh_s`.
Holds the PW secrets in memory only; nothing here logs them.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from hj212gw.storage.db import Database

Status = Literal["accepted", "quarantined", "rejected"]


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    mn: str
    status: Status
    pw: str | None
    enabled: bool
    heartbeat_reply: str | None
    crc_variants: frozenset[str]


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with a packet from `mn`: store its data, archive only, or refuse it."""

    action: Literal["store", "archive", "refuse"]
    reason: str | None = None


class DeviceRegistry:
    """MN -> DeviceEntry, plus the policy for unknown devices and wrong passwords."""

    def __init__(self, *, unknown_mn: str = "accept", wrong_pw: str = "reject") -> None:
        self.unknown_mn = unknown_mn
        self.wrong_pw = wrong_pw
        self._entries: dict[str, DeviceEntry] = {}
        # Live views handed to every session's config: updated in place on refresh.
        self.heartbeat_overrides: dict[str, str] = {}
        self.crc_overrides: dict[str, frozenset[str]] = {}

    @property
    def entries(self) -> Mapping[str, DeviceEntry]:
        return self._entries

    async def refresh(self, db: Database) -> None:
        async with db.pool.acquire() as conn:
            records = await conn.fetch("SELECT mn, status, pw, enabled, heartbeat_reply, crc_variants FROM devices")
        self._entries = {
            r["mn"]: DeviceEntry(
                r["mn"], r["status"], r["pw"], r["enabled"], r["heartbeat_reply"], frozenset(r["crc_variants"] or ())
            )
            for r in records
        }
        heartbeat = {mn: e.heartbeat_reply for mn, e in self._entries.items() if e.heartbeat_reply}
        crc = {mn: e.crc_variants for mn, e in self._entries.items() if e.crc_variants}
        self.heartbeat_overrides.clear()
        self.heartbeat_overrides.update(heartbeat)
        self.crc_overrides.clear()
        self.crc_overrides.update(crc)

    def admit(self, mn: str | None, pw: str | None) -> Admission:
        """The policy decision for one packet's MN and PW."""
        if not mn:
            return Admission("archive", "no_mn")
        entry = self._entries.get(mn)
        if entry is None:
            if self.unknown_mn == "reject":
                return Admission("refuse", "unknown_mn")
            if self.unknown_mn == "quarantine":
                return Admission("archive", "quarantined")
            return Admission("store")
        if entry.status == "rejected" or not entry.enabled:
            return Admission("refuse", "device_rejected")
        if entry.pw and pw != entry.pw and self.wrong_pw == "reject":
            return Admission("refuse", "wrong_pw")
        if entry.status == "quarantined":
            return Admission("archive", "quarantined")
        return Admission("store")

    def remember(self, mn: str) -> None:
        """A device auto-registered by the accept policy (status accepted until the next refresh)."""
        if mn not in self._entries:
            self._entries[mn] = DeviceEntry(mn, "accepted", None, True, None, frozenset())
