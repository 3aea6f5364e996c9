"""The HJ 212 CRC (HJ 212-2017 Appendix A, HJ 212-2025 Appendix A.1 "ANSI CRC16") and the
MODBUS variants some devices send instead.

Only the CRC lives here. The fast path uses the structure of the routine: between bytes only
the register's high byte survives, and the map from one high byte to the next is linear over
GF(2) with order 8, so the whole segment folds to eight XOR lanes (see `crc16`).
"""

from typing import Final


def _reflected_table(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


# T[x]: eight shift/XOR rounds with 0xA001 applied to an 8-bit register value x.
_T: Final = _reflected_table(0xA001)


def _powers_of_high_byte_map() -> tuple[tuple[int, ...], ...]:
    """P[r][x] = H^r(x), where H(x) = T[x] >> 8 is the high-byte step. H^8 is the identity."""
    step = tuple(t >> 8 for t in _T)
    powers = [tuple(range(256))]
    for _ in range(7):
        prev = powers[-1]
        powers.append(tuple(step[prev[x]] for x in range(256)))
    assert all(step[powers[7][x]] == x for x in range(256)), "H must have order 8"
    return tuple(powers)


_P: Final = _powers_of_high_byte_map()


def crc16_reference(segment: bytes) -> int:
    """CRC of a data segment exactly as Appendix A prints it; the specification for `crc16`.

    Not the Modbus CRC-16, although it looks like it: the register is shifted right by 8
    *before* each byte is XORed in. Start 0xFFFF, polynomial 0xA001. Frames carry the result
    as four hex digits, high byte first.
    """
    crc = 0xFFFF
    for byte in segment:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _fold_plan(size: int) -> tuple[tuple[int, int], ...]:
    """(shift, mask) pairs that fold `size` bytes (8 * 2**m) down to 8 by XORing halves."""
    plan = []
    half = size * 4
    while half >= 64:
        plan.append((half, (1 << half) - 1))
        half >>= 1
    return tuple(plan)


_FOLD_PLANS: Final = {8 << m: _fold_plan(8 << m) for m in range(16)}
# The crc from the high byte after the last byte: crc = T[H^-1(h)] and H^-1 = H^7 (H has order 8).
_FINAL: Final = tuple(_T[_P[7][h]] for h in range(256))
_P0, _P1, _P2, _P3, _P4, _P5, _P6, _P7 = _P


def crc16(segment: bytes | bytearray | memoryview) -> int:
    """CRC of a data segment, HJ 212-2017 Appendix A; equal to `crc16_reference` for all input.

    With h the register's high byte, each byte b does h <- H(h ^ b) and the CRC is T[h_{n-1} ^
    b_{n-1}] = T[H^-1(h_n)]. H is linear over GF(2) with H^8 = id, so h_n = H^n(0xFF) ^
    XOR_r H^r(lane_r), where lane_r is the XOR of the bytes whose distance from the end is
    r mod 8. The lanes come from XOR-folding the bytes as one big integer: no Python loop per byte.
    """
    n = len(segment)
    if n == 0:
        return 0xFFFF
    size = 8 << ((n + 7) // 8 - 1).bit_length()
    value = int.from_bytes(segment, "big")  # big-endian: the zero padding goes on the left for free
    for shift, mask in _FOLD_PLANS.get(size) or _fold_plan(size):  # planned up to 256 KiB
        value = (value >> shift) ^ (value & mask)
    # Byte q of the folded word, counted from the right, holds the bytes at distance q + 1 (mod 8)
    # from the end, which went through H^(q+1).
    lanes = value.to_bytes(8, "little")
    h = (
        _P[n & 7][0xFF]
        ^ _P1[lanes[0]]
        ^ _P2[lanes[1]]
        ^ _P3[lanes[2]]
        ^ _P4[lanes[3]]
        ^ _P5[lanes[4]]
        ^ _P6[lanes[5]]
        ^ _P7[lanes[6]]
        ^ _P0[lanes[7]]
    )
    return _FINAL[h]


def crc16_modbus(segment: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (`reg ^= byte`), which some devices send instead of the HJ 212 CRC."""
    crc = 0xFFFF
    table = _T
    for byte in segment:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def swap_bytes(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)
