"""Device authentication state that spans connections: the per-IP wrong-PW backoff table and the
SM4 keys `serve` decrypts 2025 devices' CP with.

`WrongPwBackoff` is pure bookkeeping with the time passed in (no clock, no sockets, no logs): the
gateway asks it how long a source IP must wait and tells it about each failure. Its memory is
bounded (`MAX_IPS` entries, oldest forgotten first). `load_sm4_keys` reads the keys from the
settings and the keys file; its errors name the MN, never the key. Imports no SQL.
"""

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from hj212gw.settings import DeviceSettings

# About 100 bytes per entry: 16,384 source IPs in backoff at once cost under 2 MB. Beyond that,
# the IP whose last failure is oldest is forgotten (it starts again from the first delay).
MAX_IPS = 16_384
SM4_KEY_BYTES = 16


@dataclass(slots=True)
class _Failures:
    count: int
    blocked_until: float


class WrongPwBackoff:
    """Source IP -> consecutive authentication failures and the time until which it must wait.

    The n-th failure blocks the IP for `base_s * 2**(n-1)`, at most `max_s`. An IP forgets its
    failures once it has been quiet for `max_s` after its block ended.
    """

    def __init__(self, *, base_s: float, max_s: float, max_ips: int = MAX_IPS) -> None:
        self.base_s = base_s
        self.max_s = max(max_s, base_s)
        self.max_ips = max_ips
        self._ips: dict[str, _Failures] = {}  # insertion order = order of the last failure

    def __len__(self) -> int:
        return len(self._ips)

    def wait_s(self, ip: str, now: float) -> float:
        """How long a new connection from `ip` must wait before it is read (0: not at all)."""
        entry = self._ips.get(ip)
        if entry is None:
            return 0.0
        if now > entry.blocked_until + self.max_s:
            del self._ips[ip]
            return 0.0
        return max(0.0, entry.blocked_until - now)

    def failed(self, ip: str, now: float) -> float:
        """Record one failure from `ip`; return its delay (the connection waits this long)."""
        entry = self._ips.pop(ip, None)
        if entry is None or now > entry.blocked_until + self.max_s:
            entry = _Failures(0, now)
        entry.count += 1
        delay = min(self.base_s * 2.0 ** min(entry.count - 1, 32), self.max_s)
        entry.blocked_until = now + delay
        self._ips[ip] = entry  # re-inserted: the dict stays ordered by last failure
        while len(self._ips) > self.max_ips:
            del self._ips[next(iter(self._ips))]
        return delay


class Sm4KeysError(ValueError):
    """The configured SM4 keys cannot be used; the message names the MN, never the key."""


def parse_sm4_key(mn: str, text: str) -> bytes:
    """32 hex digits, or 16 characters taken as they are (the standard's example `0000000000000000`).

    Raises:
        Sm4KeysError: neither form.
    """
    text = text.strip()
    if len(text) == 2 * SM4_KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    elif len(text) == SM4_KEY_BYTES and text.isascii() and text.isprintable():
        return text.encode("ascii")
    raise Sm4KeysError(f"SM4 key for MN {mn!r}: expected 32 hex digits or 16 ASCII characters")


def _keys_of(mn: str, value: object) -> tuple[bytes, ...]:
    values = value if isinstance(value, list) else [value]
    keys = []
    for item in values:
        text = item.get_secret_value() if isinstance(item, SecretStr) else item
        if not isinstance(text, str):
            raise Sm4KeysError(f"SM4 key for MN {mn!r}: expected a string or a list of strings")
        keys.append(parse_sm4_key(mn, text))
    if not keys:
        raise Sm4KeysError(f"SM4 keys for MN {mn!r}: the list is empty")
    return tuple(keys)


def load_sm4_keys(settings: DeviceSettings) -> dict[str, tuple[bytes, ...]]:
    """MN -> (current key, previous keys…) from `sm4_keys_file`, then `sm4_keys` (which wins per MN).

    Raises:
        Sm4KeysError: the file is missing, not TOML, or holds a key in neither form.
    """
    found: dict[str, tuple[bytes, ...]] = {}
    if settings.sm4_keys_file is not None:
        found.update((mn, _keys_of(mn, value)) for mn, value in _read_keys_file(settings.sm4_keys_file).items())
    found.update((mn, _keys_of(mn, value)) for mn, value in settings.sm4_keys.items())
    return found


def _read_keys_file(path: Path) -> Mapping[str, object]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as err:
        raise Sm4KeysError(f"devices.sm4_keys_file {str(path)!r}: {err.strerror}") from None
    except tomllib.TOMLDecodeError:
        # The parser's message may quote the line, and the line holds a key: say only where.
        raise Sm4KeysError(f"devices.sm4_keys_file {str(path)!r} is not valid TOML") from None
    return data
