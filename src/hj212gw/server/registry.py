"""The device registry as the server sees it: an in-memory copy of `devices`, refreshed periodically,
and the admission decision for every packet (device policy and PW authentication).

Lookups on the per-packet path are dictionary reads and one constant-time comparison; the
database is asked every `refresh_s` (SQL in storage.devices) and, under trust on first use, once
for a brand-new MN: `admit` answers "pin" and the gateway has PostgreSQL decide the PW before the
packet goes further. Holds the PW secrets in memory only; nothing here logs them.
`RefusedByPolicy` is a refusal as the typed error (reason, QnRtn) the connection's policy applies.
"""

import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hmac import compare_digest
from typing import ClassVar, Literal

from hj212gw.protocol.constants import QnRtn
from hj212gw.protocol.errors import SessionError
from hj212gw.storage.db import Database
from hj212gw.storage.devices import fetch_registry

Status = Literal["accepted", "quarantined", "rejected"]
AuthMode = Literal["tofu", "registry", "off"]
# Refusal reasons that are authentication failures: counted, slowed down per source IP.
AUTH_FAILURES = frozenset({"wrong_pw", "pw_not_registered"})


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
    """What to do with a packet from `mn`: store its data, archive only, refuse it, or first pin
    its PW (trust on first use; ask again once the pin is known)."""

    action: Literal["store", "archive", "refuse", "pin"]
    reason: str | None = None


# The answers, built once: nearly every packet gets _STORE.
_STORE = Admission("store")
_PIN = Admission("pin")
_NO_MN = Admission("archive", "no_mn")
_QUARANTINED = Admission("archive", "quarantined")
_UNKNOWN = Admission("refuse", "unknown_mn")
_REJECTED = Admission("refuse", "device_rejected")
_WRONG_PW = Admission("refuse", "wrong_pw")
_NOT_REGISTERED = Admission("refuse", "pw_not_registered")


def _secret(pw: str | None) -> bytes:
    # A missing PW field counts as the empty PW. Bytes: compare_digest refuses non-ASCII str.
    return (pw or "").encode("utf-8", "surrogateescape")


class DeviceRegistry:
    """MN -> DeviceEntry, plus the policy for unknown devices and the PW check.

    `auth`: `tofu` pins the first PW an MN presents and then requires it; `registry` admits only
    MNs whose PW an operator registered; `off` checks no PW.
    """

    def __init__(self, *, unknown_mn: str = "accept", auth: AuthMode = "tofu") -> None:
        self.unknown_mn = unknown_mn
        self.auth = auth
        self._checks_pw = auth != "off"
        # Most devices are plain accepted ones: for those only the MN (and its PW) is kept. Full
        # entries are kept only for devices the policy must look at more closely.
        self._known: set[str] = set()
        self._special: dict[str, DeviceEntry] = {}
        self._pw: dict[str, bytes] = {}
        # A second PW an MN may present while its PW changes, until a monotonic deadline.
        self._alternate_pw: dict[str, tuple[bytes, float]] = {}
        # Live views handed to every session's config: updated in place on refresh.
        self.heartbeat_overrides: dict[str, str] = {}
        self.crc_overrides: dict[str, frozenset[str]] = {}

    def load(self, entries: Iterable[DeviceEntry]) -> None:
        """Replace the registry's content (refresh, tests)."""
        known: set[str] = set()
        special: dict[str, DeviceEntry] = {}
        pws: dict[str, bytes] = {}
        for entry in entries:
            known.add(entry.mn)
            if entry.pw is not None:
                pws[entry.mn] = _secret(entry.pw)
            if entry.status != "accepted" or not entry.enabled or entry.heartbeat_reply or entry.crc_variants:
                special[entry.mn] = entry
        self._known, self._special, self._pw = known, special, pws
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
        pw = self._pw.get(mn)
        if entry is not None and pw is not None:
            entry = dataclasses.replace(entry, pw=pw.decode("utf-8", "surrogateescape"))
        return entry

    async def refresh(self, db: Database) -> None:
        async with db.pool.acquire() as conn:
            records = await fetch_registry(conn)
        self.load(
            DeviceEntry(
                r["mn"], r["status"], r["pw"], r["enabled"], r["heartbeat_reply"], frozenset(r["crc_variants"] or ())
            )
            for r in records
        )

    def admit(self, mn: str | None, pw: str | None) -> Admission:
        """The policy decision for one packet's MN and PW."""
        if not mn:
            return _NO_MN
        entry = self._special.get(mn)
        if entry is None and mn in self._known:  # nearly every packet: a plain accepted device
            pinned = self._pw.get(mn)
            if pinned is not None and self._checks_pw:  # inline: ~13k packets/s pass here
                if compare_digest(pinned, (pw or "").encode("utf-8", "surrogateescape")):
                    return _STORE
                return _STORE if self._is_alternate(mn, pw) else _WRONG_PW
            return self._check_pw(mn, pw, quarantined=False) or _STORE
        if entry is not None and (entry.status == "rejected" or not entry.enabled):
            return _REJECTED
        if entry is None and self.unknown_mn == "reject":
            return _UNKNOWN
        quarantined = entry.status == "quarantined" if entry is not None else self.unknown_mn == "quarantine"
        return self._check_pw(mn, pw, quarantined=quarantined) or (_QUARANTINED if quarantined else _STORE)

    def _check_pw(self, mn: str, pw: str | None, *, quarantined: bool) -> Admission | None:
        """None if the PW passes under `auth`; else pin first, or the refusal."""
        if self.auth == "off":
            return None
        pinned = self._pw.get(mn)
        if pinned is None:
            if self.auth == "tofu":
                return _PIN
            # registry: only a quarantined device may talk (archive only) without a PW
            return None if quarantined else _NOT_REGISTERED
        return None if compare_digest(pinned, _secret(pw)) or self._is_alternate(mn, pw) else _WRONG_PW

    def _is_alternate(self, mn: str, pw: str | None) -> bool:
        """`pw` is the other PW `mn` may present while its PW changes (see `expect_pw`)."""
        alternate = self._alternate_pw.get(mn)
        if alternate is None:
            return False
        if time.monotonic() >= alternate[1]:
            del self._alternate_pw[mn]
            return False
        return compare_digest(alternate[0], _secret(pw))

    def new_device_status(self) -> Status:
        """The status a device the gateway registers itself gets."""
        return "quarantined" if self.unknown_mn == "quarantine" else "accepted"

    def learn_pin(self, mn: str, pw: str, status: Status) -> None:
        """PostgreSQL decided `mn`'s PW (this gateway's pin or an earlier one): use it from now on."""
        self._known.add(mn)
        self._pw[mn] = _secret(pw)
        entry = self._special.get(mn)
        if entry is not None:
            self._special[mn] = dataclasses.replace(entry, status=status)
        elif status != "accepted":
            self._special[mn] = DeviceEntry(mn, status, None, True, None, frozenset())

    def expect_pw(self, mn: str, pw: str | None, for_s: float = 300.0) -> None:
        """A 1072 (set PW) to `mn` is in flight: a device may answer with its new PW already, so
        that one is admitted too for `for_s` (None: the command ended without success)."""
        self._drop_expired()
        if pw is None:
            self._alternate_pw.pop(mn, None)
        else:
            self._alternate_pw[mn] = (_secret(pw), time.monotonic() + for_s)

    def change_pw(self, mn: str, pw: str, old_for_s: float = 60.0) -> None:
        """`mn` took a new PW (a 1072 it executed): pin it; its old PW is still admitted for
        `old_for_s` (its 9012 and what it sent before the change carry the old one)."""
        self._drop_expired()
        old = self._pw.get(mn)
        self._pw[mn] = _secret(pw)
        if old is not None:
            self._alternate_pw[mn] = (old, time.monotonic() + old_for_s)

    def _drop_expired(self) -> None:
        """Alternates expire when next checked, or here (one per PW change: the map stays small)."""
        now = time.monotonic()
        for mn in [mn for mn, (_, until) in self._alternate_pw.items() if until <= now]:
            del self._alternate_pw[mn]

    def remember(self, mn: str) -> None:
        """A device auto-registered by the accept policy (status accepted until the next refresh)."""
        self._known.add(mn)


class RefusedByPolicy(SessionError):
    """The device registry refuses this packet (unknown MN under `reject`, wrong PW, disabled), or
    the gateway does not bind its MN here (too many MNs on the connection, a move too soon)."""

    _QN_RTN: ClassVar[Mapping[str, QnRtn]] = {
        "wrong_pw": QnRtn.PW_ERROR,
        "pw_not_registered": QnRtn.PW_ERROR,
        "unknown_mn": QnRtn.MN_ERROR,
        "device_rejected": QnRtn.REJECTED,
    }

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused by device policy: {reason}")
        self.policy_reason = reason

    @property
    def reason(self) -> str:  # type: ignore[override]  # per instance: the policy that refused
        return self.policy_reason

    @property
    def qn_rtn(self) -> QnRtn:  # type: ignore[override]
        return self._QN_RTN.get(self.policy_reason, QnRtn.REJECTED)
