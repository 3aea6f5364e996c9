"""Frame -> Packet under a CRC policy, with SM4 decryption for 2025 devices that encrypt.

The policy is data, passed in: `strict` rejects any CRC that is not the HJ 212 routine's,
`lenient` accepts and marks it; MODBUS-form variants can be allowed globally or per MN and are
always labelled on the packet. Keys are supplied per MN by the caller (current, then previous).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hj212gw.protocol.crc import crc16
from hj212gw.protocol.crypto import decrypt_cp, from_text_form, looks_encrypted
from hj212gw.protocol.errors import (
    BadEncoding,
    CrcMismatch,
    CrcMismatchAfterDecrypt,
    CrcVariantMismatch,
    DecryptFailed,
)
from hj212gw.protocol.framing import CrcVerdict, Frame, Tolerance
from hj212gw.protocol.models import Packet
from hj212gw.protocol.segment import parse_header, parse_segment, split_segment

_VARIANT_TOLERANCE = {
    CrcVerdict.MODBUS: Tolerance.CRC_MODBUS,
    CrcVerdict.MODBUS_SWAPPED: Tolerance.CRC_MODBUS_SWAPPED,
}


@dataclass(frozen=True, slots=True)
class CrcPolicy:
    """What to do with a CRC that is not HJ 212's."""

    mode: Literal["strict", "lenient"] = "strict"
    allowed_variants: frozenset[str] = frozenset()  # "modbus", "modbus_swapped" for every device
    per_mn_variants: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allows(self, variant: str, mn: str | None) -> bool:
        if variant in self.allowed_variants:
            return True
        return mn is not None and variant in self.per_mn_variants.get(mn, frozenset())


KeyLookup = Mapping[str, Sequence[bytes]]  # MN -> (current key, previous key, ...)


def decode_frame(frame: Frame, policy: CrcPolicy | None = None, keys: KeyLookup | None = None) -> Packet:
    """The packet in a frame, once its CRC (or its decryption) checks out.

    Raises:
        CrcMismatch: the CRC is wrong and the policy does not let it through.
        CrcVariantMismatch: the CRC is a MODBUS form this device is not allowed.
        SegmentError: the segment is malformed, or decryption found no working key.
    """
    policy = policy or CrcPolicy()
    if frame.crc_verdict is CrcVerdict.OK and not (keys and b"CP=&&{0x" in frame.segment):
        return parse_segment(frame.segment, tolerances=frame.tolerances)
    header, content, _closed, _after = split_segment(frame.segment)
    mn = dict(parse_header(header)).get("MN")
    device_keys = keys.get(mn, ()) if keys and mn is not None else ()
    if device_keys and looks_encrypted(content):
        return _decrypt(frame, content, device_keys)
    if frame.crc_verdict is CrcVerdict.OK:
        return parse_segment(frame.segment, tolerances=frame.tolerances)
    variant = _VARIANT_TOLERANCE.get(frame.crc_verdict)
    if variant is not None and policy.allows(frame.crc_verdict.value, mn):
        return parse_segment(frame.segment, tolerances=(*frame.tolerances, variant))
    if policy.mode == "lenient":
        extra = variant or Tolerance.CRC_NOT_CHECKED
        return parse_segment(frame.segment, tolerances=(*frame.tolerances, extra))
    if variant is not None:
        raise CrcVariantMismatch(
            computed=frame.computed_crc, declared=frame.declared_crc, variant=frame.crc_verdict.value
        )
    raise CrcMismatch(computed=frame.computed_crc, declared=frame.declared_crc)


def _decrypt(frame: Frame, content: bytes, device_keys: Sequence[bytes]) -> Packet:
    """Try each key; accept the one whose plaintext is text and whose segment CRC matches."""
    tolerances = [t for t in frame.tolerances if t != Tolerance.LENGTH_MISMATCH]
    raw = from_text_form(content)
    if raw is None:
        raw = content
    else:
        tolerances.append(Tolerance.SM4_TEXT_FORM)
    prefix = frame.segment[: frame.segment.find(b"CP=&&") + 5]
    suffix = frame.segment[len(prefix) + len(content) :]
    for index, key in enumerate(device_keys):
        try:
            plain = decrypt_cp(raw, key)
            text = plain.decode("utf-8")
        except (DecryptFailed, UnicodeDecodeError):
            continue
        segment = prefix + plain + suffix
        if crc16(segment) != frame.declared_crc or "=" not in text[:32]:
            continue
        if len(segment) != frame.declared_length:
            tolerances.append(Tolerance.LENGTH_MISMATCH)
        if index:
            tolerances.append(Tolerance.SM4_PREVIOUS_KEY)
        return parse_segment(segment, cp_text=text, encrypted=True, tolerances=tuple(tolerances))
    if not device_keys:
        raise BadEncoding("CP looks encrypted and no key is known for this device")
    raise CrcMismatchAfterDecrypt(declared=frame.declared_crc, keys_tried=len(device_keys))
