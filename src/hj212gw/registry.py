"""The device registry as the server sees it: an in-memory copy of `devices`, refreshed periodically.

Lookups on the per-packet path are dictionary reads; the database is asked every `refresh_s`.
Holds the PW secrets in memory only; nothing here logs them.
"""

from collections.abc import Iterable
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


_STORE = Admission("store")  # the answer for nearly every packet: built once


class DeviceRegistry:
    """MN -> DeviceEntry, plus the policy for unknown devices and wrong passwords."""

    def __init__(self, *, unknown_mn: str = "accept", wrong_pw: str = "reject") -> None:
        self.unknown_mn = unknown_mn
        self.wrong_pw = wrong_pw
        # Tens of thousands of devices are plain accepted ones without a PW: for those only the MN
        # is kept. Full entries are kept only for devices the policy must look at more closely.
        self._known: set[str] = set()
        self._special: dict[str, DeviceEntry] = {}
        # Live views handed to every session's config: updated in place on refresh.
        self.heartbeat_overrides: dict[str, str] = {}
        self.crc_overrides: dict[str, frozenset[str]] = {}

    def load(self, entries: Iterable[DeviceEntry]) -> None:
        """Replace the registry's content (refresh, tests)."""
        known: set[str] = set()
        special: dict[str, DeviceEntry] = {}
        for entry in entries:
            known.add(entry.mn)
            if (
                entry.status != "accepted"
                or entry.pw
                or not entry.enabled
                or entry.heartbeat_reply
                or entry.crc_variants
            ):
                special[entry.mn] = entry
        self._known, self._special = known, special
        heartbeat = {mn: e.heartbeat_reply for mn, e in special.items() if e.heartbeat_reply}
        crc = {mn: e.crc_variants for mn, e in special.items() if e.crc_variants}
        self.heartbeat_overrides.clear()
        self.heartbeat_overrides.update(heartbeat)
        self.crc_overrides.clear()
        self.crc_overrides.update(crc)

    def __len__(self) -> int:
        return len(self._known)

    def get(self, mn: str) -> DeviceEntry | None:
        """The device's entry, or None if the registry does not know it."""
        entry = self._special.get(mn)
        if entry is None and mn in self._known:
            entry = DeviceEntry(mn, "accepted", None, True, None, frozenset())
        return entry

    async def refresh(self, db: Database) -> None:
        async with db.pool.acquire() as conn:
            records = await conn.fetch("SELECT mn, status, pw, enabled, heartbeat_reply, crc_variants FROM devices")
        self.load(
            DeviceEntry(
                r["mn"], r["status"], r["pw"], r["enabled"], r["heartbeat_reply"], frozenset(r["crc_variants"] or ())
            )
            for r in records
        )

    def admit(self, mn: str | None, pw: str | None) -> Admission:
        """The policy decision for one packet's MN and PW."""
        if not mn:
            return Admission("archive", "no_mn")
        entry = self._special.get(mn)
        if entry is None:
            if mn in self._known:
                return _STORE
            if self.unknown_mn == "reject":
                return Admission("refuse", "unknown_mn")
            if self.unknown_mn == "quarantine":
                return Admission("archive", "quarantined")
            return _STORE
        if entry.status == "rejected" or not entry.enabled:
            return Admission("refuse", "device_rejected")
        if entry.pw and pw != entry.pw and self.wrong_pw == "reject":
            return Admission("refuse", "wrong_pw")
        if entry.status == "quarantined":
            return Admission("archive", "quarantined")
        return _STORE

    def remember(self, mn: str) -> None:
        """A device auto-registered by the accept policy (status accepted until the next refresh)."""
        self._known.add(mn)
