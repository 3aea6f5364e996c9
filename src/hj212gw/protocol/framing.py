"""Framing: splits a byte stream into `##dddd<segment><crc>\\r\\n` frames (HJ 212-2017 §2).

`FrameBuffer` is incremental: feed it what a socket read returned, then take frames until it
answers None ("need more bytes"). A bad frame raises a `FrameError` *after* its bytes have been
consumed, so the caller just asks again: a bad frame never costs the good frame after it. For
bytes that are all there is (a file, a captured line), `iter_frames` and `parse_frame` run one.

Field quirks are tolerated by name (the `Tolerance` constants); every frame lists the ones it
needed. The CRC is computed here and its verdict recorded; whether a verdict is acceptable is
policy, decided by `decoder`. Imports nothing outside the protocol package.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple

from hj212gw.protocol.constants import MAX_SEGMENT_BYTES
from hj212gw.protocol.crc import crc16, crc16_modbus, swap_bytes
from hj212gw.protocol.errors import (
    BufferOverflow,
    CrcMissing,
    FrameError,
    FrameTooLong,
    LengthFieldError,
    NoFrame,
    TrailerError,
)


class Tolerance(StrEnum):
    """A deviation from the standard that real devices are known to send, and we accept."""

    LOWERCASE_CRC = "lowercase_crc"  # 1dc0, 71c0: xiaoyao9184/hj-t212-parser test data
    MISSING_CR = "missing_cr"  # LF-only tail
    MISSING_LF = "missing_lf"  # CR-only tail
    MISSING_TAIL = "missing_tail"  # no CR LF at all: next `##` or end of stream ends the frame
    EXTRA_CR = "extra_cr"  # CR CR LF (text-mode logging on Windows forwarders)
    TRAILING_WHITESPACE = "trailing_whitespace"  # blanks between the CRC and the tail
    LENGTH_MISMATCH = "length_mismatch"  # declared length does not land on the CRC
    OVERSIZE_SEGMENT = "oversize_segment"  # segment longer than the standard's 1024
    DTU_KEEPALIVE = "dtu_keepalive"  # modem keep-alive `#G…&` between `&&` and the CRC
    CRC_MODBUS = "crc_modbus"  # CRC-16/MODBUS, allowed for this device
    CRC_MODBUS_SWAPPED = "crc_modbus_swapped"  # CRC-16/MODBUS, bytes swapped, allowed
    CRC_NOT_CHECKED = "crc_not_checked"  # lenient CRC policy let a mismatch through
    NUL_IN_FIELD = "nul_in_field"  # NUL bytes removed from a header or CP value (2016 Hebei capture)
    LONG_QN = "long_qn"  # QN longer than its 17 digits (18: scair-hj212-distribute l018)
    LONG_ST = "long_st"  # ST longer than 2 characters (ST=101: tonyxia2016-hj212receiver l026)
    LONG_PW = "long_pw"  # PW longer than 6 characters (24 hex characters: jinuxx-hj212 l076)
    LONG_MN = "long_mn"  # MN longer than the 24 characters of an EPC-96 code
    LONG_FACTOR_CODE = "long_factor_code"  # code over 6 characters (pms_rules, PURIFYAD: teafull-hjt212 l020)
    LONG_DATATIME = "long_datatime"  # 15-17 digit times: milliseconds appended
    SHORT_DATATIME = "short_datatime"  # 13 or fewer digits
    CP_UNCLOSED = "cp_unclosed"  # CP=&&… with no closing && before the CRC
    FIELDS_AFTER_CP = "fields_after_cp"  # `…&&;Flag=0` (a generator bug)
    MISSING_QN = "missing_qn"  # 2005 uploads
    MISSING_FLAG = "missing_flag"  # 2005
    GBK_TEXT = "gbk_text"  # log text in GBK rather than UTF-8
    SM4_TEXT_FORM = "sm4_text_form"  # CP ciphertext sent as the printed `{0xE4,…}` text
    SM4_PREVIOUS_KEY = "sm4_previous_key"  # decrypted with the device's previous key


class CrcVerdict(StrEnum):
    """Which routine, if any, produced the CRC the frame carries."""

    OK = "ok"
    MODBUS = "modbus"
    MODBUS_SWAPPED = "modbus_swapped"
    MISMATCH = "mismatch"


_SLACK_BYTES: Final = 64  # room for a tail with blanks and extra CRs after the longest segment
_FRAME_OVERHEAD: Final = 12  # `##dddd` + CRC + CR LF


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Bounds that protect the gateway from hostile or broken streams.

    No accepted segment is longer than `max_segment_bytes`, and no frame may take more than
    `max_buffer_bytes` of buffer (header, segment, CRC and tail), however the bytes are chunked.
    A defect keeps at most `window` bytes of what it consumed (`FrameError.head`; the raw archive
    of a reject): the longest frame the limits let through, 6 + `segment_cap` + 4 + 64 bytes.
    """

    max_segment_bytes: int = 4096  # >1024 is accepted but marked OVERSIZE_SEGMENT
    max_buffer_bytes: int = 65536
    # Derived once here, not per connection: the longest segment both bounds allow, and how far
    # past a header the tail is looked for.
    segment_cap: int = field(init=False, repr=False, compare=False)
    window: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        segment_cap = min(self.max_segment_bytes, self.max_buffer_bytes - _FRAME_OVERHEAD)
        object.__setattr__(self, "segment_cap", segment_cap)
        object.__setattr__(self, "window", min(6 + segment_cap + 4 + _SLACK_BYTES, self.max_buffer_bytes))


_DEFAULT_LIMITS: Final = FrameLimits()


class Frame(NamedTuple):
    """One framed packet as received: the segment, the CRC verdict, the quirks it needed.

    Immutable; a named tuple because one is built per packet.
    """

    segment: bytes
    declared_length: int
    length_text: bytes
    crc_text: bytes
    declared_crc: int
    computed_crc: int
    crc_verdict: CrcVerdict
    tail: bytes
    injected: bytes
    tolerances: tuple[str, ...]

    @property
    def raw(self) -> bytes:
        """The frame's bytes exactly as they arrived."""
        return b"##" + self.length_text + self.segment + self.injected + self.crc_text + self.tail


class Garbage(FrameError):
    """Bytes that are no part of any frame, skipped while looking for `##`."""

    reason = "garbage"

    def __init__(self, junk: bytes, skipped: int) -> None:
        super().__init__(f"{skipped} bytes outside any frame: {junk[:40]!r}")
        self.junk = junk
        self.head = junk
        self.skipped = skipped


_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_UPPER_HEX: Final = frozenset(b"0123456789ABCDEF")
_BLANK: Final = b" \t\x00"
_INTER_FRAME: Final = b"\r\n \t\x00"


def _is_hex4(chunk: bytes | bytearray) -> bool:
    return len(chunk) == 4 and _HEX.issuperset(chunk)


class FrameBuffer:
    """Incremental decoder for one connection's byte stream."""

    __slots__ = ("_buf", "_eof", "limits")

    def __init__(self, limits: FrameLimits | None = None) -> None:
        self.limits = limits or _DEFAULT_LIMITS
        self._buf = bytearray()
        self._eof = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def end_of_stream(self) -> None:
        """No more bytes will come: the buffer's end may close a frame that lacks its tail."""
        self._eof = True

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed.

        Raises:
            FrameError: a defect; its bytes are already consumed, so call again.
        """
        buf = self._buf
        start = buf.find(b"##")
        if start != 0:
            return self._skip_to_header(start)
        if len(buf) < 6:
            return None
        length_text = bytes(buf[2:6])
        if not length_text.isdigit():
            raise self._header_only(LengthFieldError(length_text))
        declared = int(length_text)
        if declared > self.limits.segment_cap:
            raise self._header_only(FrameTooLong(declared=declared, limit=self.limits.segment_cap))
        end = 6 + declared
        if len(buf) >= end + 6 and buf[end + 4 : end + 6] == b"\r\n" and _is_hex4(buf[end : end + 4]):
            segment = bytes(buf[6:end])
            crc_text = bytes(buf[end : end + 4])
            del buf[: end + 6]
            return _make_frame(segment, declared, length_text, crc_text, b"\r\n", b"", [])
        return self._frame_by_tail(declared, length_text)

    def _skip_to_header(self, start: int) -> Frame | None:
        buf = self._buf
        if start < 0:
            # Keep a trailing '#', it may be the first half of the next header.
            start = len(buf) - 1 if buf.endswith(b"#") else len(buf)
        junk = bytes(buf[:start])
        del buf[:start]
        if junk.strip(_INTER_FRAME):
            raise _consumed(Garbage(junk[: self.limits.window], len(junk)), junk, self.limits.window)
        # What follows the junk is bounded frame by frame (the window of `_frame_by_tail`), not
        # here: one read may carry a long backlog of good frames.
        return self.next_frame() if buf.startswith(b"##") else None

    def _frame_by_tail(self, declared: int, length_text: bytes) -> Frame | None:
        """Slow path: the declared length does not land on `CRC\\r\\n`; find the tail itself.

        The declared length may be wrong (LENGTH_MISMATCH, `0000`, an SM4 text form printed four
        times longer than its plaintext), so the tail is looked for within a window that the
        limits fix, not the length field: `max_segment_bytes` plus CRC and a tail with some
        blanks. A frame without a tail there is rejected once the window is complete, so the
        outcome depends on the bytes alone, never on how the reads cut them.
        """
        buf = self._buf
        declared_end = 6 + declared + 6
        window = self.limits.window
        newline = buf.find(b"\n", 6, window)
        header = buf.find(b"##", 6, window)
        candidates = [i for i in (newline, header) if i >= 0]
        boundary = min(candidates) if candidates else -1
        if boundary < 0:
            if len(buf) > window:
                if window == self.limits.max_buffer_bytes:
                    raise self._header_only(BufferOverflow(buffered=window, limit=window))
                raise self._header_only(TrailerError(f"no CRC and tail within {window} bytes of a header"))
            if not self._eof or len(buf) <= 6:
                return None
            boundary = len(buf)
        elif (
            boundary < declared_end and not self._eof and not _looks_like_end(buf, boundary) and len(buf) < declared_end
        ):
            # A newline inside the declared length that is not `&&XXXX\r\n` may be payload
            # (an SM4 ciphertext is binary): wait for the declared bytes first.
            return None
        return self._cut_at(boundary, declared, length_text)

    def _cut_at(self, boundary: int, declared: int, length_text: bytes) -> Frame:
        buf = self._buf
        tolerances: list[str] = []
        is_newline = boundary < len(buf) and buf[boundary] == 0x0A
        line = bytes(buf[6:boundary])
        consumed = boundary + 1 if is_newline else boundary
        tail_start = len(line.rstrip(b"\r" + _BLANK))
        tail_text = line[tail_start:] + (b"\n" if is_newline else b"")
        line = line[:tail_start]
        wire = bytes(buf[:consumed])
        del buf[:consumed]
        crs = tail_text.count(b"\r")
        if tail_text.strip(b"\r\n"):
            tolerances.append(Tolerance.TRAILING_WHITESPACE)
        if not is_newline:
            tolerances.append(Tolerance.MISSING_LF if crs else Tolerance.MISSING_TAIL)
        elif crs == 0:
            tolerances.append(Tolerance.MISSING_CR)
        elif crs > 1:
            tolerances.append(Tolerance.EXTRA_CR)
        crc_text = line[-4:]
        if not _is_hex4(crc_text):
            raise _consumed(CrcMissing(crc_text), wire, self.limits.window)
        segment = line[:-4]
        injected = b""
        keepalive = segment.rfind(b"&&#G")
        if keepalive >= 0 and segment.endswith(b"&"):
            injected = segment[keepalive + 2 :]
            segment = segment[: keepalive + 2]
            tolerances.append(Tolerance.DTU_KEEPALIVE)
        if len(segment) != declared:
            if len(segment) > self.limits.segment_cap:
                too_long = FrameTooLong(declared=declared, limit=self.limits.segment_cap, received=len(segment))
                raise _consumed(too_long, wire, self.limits.window)
            tolerances.append(Tolerance.LENGTH_MISMATCH)
        return _make_frame(segment, declared, length_text, crc_text, tail_text, injected, tolerances)

    def _header_only(self, error: FrameError) -> FrameError:
        """`error` for a defect seen in a header: only its `##` is consumed, so that a real header
        inside what follows still starts the next frame (the rest arrives as `Garbage`)."""
        del self._buf[:2]
        return _consumed(error, b"##", self.limits.window)


def _consumed(error: FrameError, wire: bytes, cap_bytes: int) -> FrameError:
    """`error` carrying the bytes its defect consumed: the first `cap_bytes` of them in `head`,
    and how many there were in `consumed` (more than `len(head)`: the head is truncated)."""
    error.head = wire[:cap_bytes]
    error.consumed = len(wire)
    return error


def _looks_like_end(buf: bytearray, newline: int) -> bool:
    """`&&XXXX[\\r]\\n` or `XXXX\\r\\n`: the shape of a real frame end before position `newline`."""
    stop = newline - 1 if newline > 0 and buf[newline - 1] == 0x0D else newline
    return _is_hex4(buf[stop - 4 : stop])


def _make_frame(
    segment: bytes,
    declared: int,
    length_text: bytes,
    crc_text: bytes,
    tail: bytes,
    injected: bytes,
    tolerances: list[str],
) -> Frame:
    declared_crc = int(crc_text, 16)
    computed = crc16(segment)
    if computed == declared_crc:
        verdict = CrcVerdict.OK
    else:
        modbus = crc16_modbus(segment)
        if modbus == declared_crc:
            verdict = CrcVerdict.MODBUS
        elif swap_bytes(modbus) == declared_crc:
            verdict = CrcVerdict.MODBUS_SWAPPED
        else:
            verdict = CrcVerdict.MISMATCH
    if not _UPPER_HEX.issuperset(crc_text):
        tolerances.append(Tolerance.LOWERCASE_CRC)
    if len(segment) > MAX_SEGMENT_BYTES:
        tolerances.append(Tolerance.OVERSIZE_SEGMENT)
    return Frame(
        segment=segment,
        declared_length=declared,
        length_text=length_text,
        crc_text=crc_text,
        declared_crc=declared_crc,
        computed_crc=computed,
        crc_verdict=verdict,
        tail=tail,
        injected=injected,
        tolerances=tuple(tolerances),
    )


def iter_frames(data: bytes, limits: FrameLimits | None = None) -> Iterator[Frame | FrameError]:
    """Every frame in a complete byte string, and every defect met on the way, in stream order.

    `data` is all there is (end of stream): a last frame without its tail is still taken.
    """
    buffer = FrameBuffer(limits)
    buffer.feed(data)
    buffer.end_of_stream()
    while True:
        try:
            frame = buffer.next_frame()
        except FrameError as error:
            yield error
            continue
        if frame is None:
            return
        yield frame


def parse_frame(wire: bytes, limits: FrameLimits | None = None) -> Frame:
    """The first frame in `wire` (one complete frame's bytes); what follows it is not read.

    Raises:
        FrameError: the first defect met before a frame; `NoFrame` if there is none at all.
    """
    buffer = FrameBuffer(limits)
    buffer.feed(wire)
    buffer.end_of_stream()
    frame = buffer.next_frame()
    if frame is None:
        raise NoFrame
    return frame


def encode_frame(segment: bytes) -> bytes:
    """`##dddd<segment><CRC>\\r\\n` with the byte length and upper-case CRC the standard asks for."""
    return b"##%04d%s%04X\r\n" % (len(segment), segment, crc16(segment))
