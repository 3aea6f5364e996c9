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
_LANE_MASK: Final = 0xFF


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


def crc16(segment: bytes | bytearray | memoryview) -> int:
    """CRC of a data segment, HJ 212-2017 Appendix A; equal to `crc16_reference` for all input.

    With h the register's high byte, each byte b does h <- H(h ^ b), and the last byte gives
    T[h ^ b]. H is linear with H^8 = id, so after k bytes h = H^k(0xFF) ^ XOR_r H^r(lane_r),
    where lane_r is the XOR of the bytes whose distance from the end is r mod 8. The lanes come
    from XOR-folding the bytes as one big integer: no Python loop per byte.
    """
    n = len(segment)
    if n == 0:
        return 0xFFFF
    k = n - 1
    if k == 0:
        return _T[0xFF ^ segment[0]]
    # Left-pad the first k bytes with zeros to 8 * 2**m bytes so that the lane of a byte is its
    # position mod 8, then fold halves together until eight bytes remain.
    words = max(1, (k + 7) >> 3)
    size = 8 << (words - 1).bit_length()
    value = int.from_bytes(segment[:k], "big")  # big-endian: padding goes on the left for free
    half = size * 4  # bits in half of `size` bytes
    while half >= 64:
        value = (value >> half) ^ (value & ((1 << half) - 1))
        half >>= 1
    # Byte q of the folded 64-bit word, counted from the right (q = 0 is the last byte of the
    # prefix), collects the bytes at distance q + 1 from position k; the step count is 8j + q + 1.
    h = _P[k & 7][0xFF]
    p = _P
    for q in range(8):
        h ^= p[(q + 1) & 7][(value >> (8 * q)) & _LANE_MASK]
    return _T[h ^ segment[k]]


def crc16_modbus(segment: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (`reg ^= byte`), which some devices send instead of the HJ 212 CRC."""
    crc = 0xFFFF
    table = _T
    for byte in segment:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def swap_bytes(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)
