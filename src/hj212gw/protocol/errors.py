"""The Hj212Error tree: every defect a data logger can send, with its metric label and 9011 answer.

Raised only by the protocol package. The session turns each into a `FrameRejected` event.
"""

from typing import ClassVar

from hj212gw.protocol.constants import QnRtn


class Hj212Error(Exception):
    """Bad input from a data logger.

    Hj212Error -> FrameError    (LengthFieldError, TrailerError, FrameTooLong, BufferOverflow,
                                 CrcMissing, CrcMismatch -> CrcVariantMismatch, NoFrame,
                                 framing.Garbage)
               -> SegmentError  (MissingField, BadFieldValue, FieldTooLong, TooManyFields,
                                 BadEncoding, BadCpItem, DecryptFailed, CrcMismatchAfterDecrypt)
               -> SessionError  (MnMismatch; the gateway's server.RefusedByPolicy)
    """

    reason: ClassVar[str] = "unknown"  # metric label and log field
    qn_rtn: ClassVar[QnRtn] = QnRtn.UNKNOWN  # what a 9011 reply would carry


class FrameError(Hj212Error):
    """The bytes do not form a `##dddd<segment><crc>\\r\\n` frame."""

    reason = "frame_error"
    # What the defect consumed (a header's `##`, junk, a whole frame without a CRC or too long),
    # for the log line and the raw archive: its first FrameLimits.window bytes in `head`, and its
    # length in `consumed` (larger than len(head) when the head is truncated).
    head: bytes = b""
    consumed: int = 0


class LengthFieldError(FrameError):
    reason = "length_field_invalid"

    def __init__(self, field: bytes) -> None:
        super().__init__(f"length field {field!r} is not four decimal digits")
        self.field = field


class FrameTooLong(FrameError):
    """The declared segment length, or the length found at the tail (`received`), is over the limit."""

    reason = "frame_too_long"

    def __init__(self, *, declared: int, limit: int, received: int | None = None) -> None:
        if received is None:
            super().__init__(f"declared segment length {declared} exceeds the limit {limit}")
        else:
            super().__init__(f"segment of {received} bytes (declared {declared}) exceeds the limit {limit}")
        self.declared = declared
        self.limit = limit
        self.received = received


class BufferOverflow(FrameError):
    reason = "buffer_overflow"

    def __init__(self, *, buffered: int, limit: int) -> None:
        super().__init__(f"{buffered} bytes buffered without a complete frame (limit {limit})")
        self.buffered = buffered
        self.limit = limit


class TrailerError(FrameError):
    reason = "trailer_missing"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class NoFrame(FrameError):
    """Bytes that hold no `##` frame at all (raised by `framing.parse_frame`, never by the buffer)."""

    reason = "no_frame"

    def __init__(self) -> None:
        super().__init__("no `##` frame found")


class CrcMissing(FrameError):
    reason = "crc_missing"
    qn_rtn = QnRtn.CRC_ERROR

    def __init__(self, found: bytes) -> None:
        super().__init__(f"no four hex digits of CRC before the tail (found {found!r})")
        self.found = found


class CrcMismatch(FrameError):
    reason = "crc_mismatch"
    qn_rtn = QnRtn.CRC_ERROR

    def __init__(self, *, computed: int, declared: int) -> None:
        super().__init__(f"CRC {declared:04X} in frame, {computed:04X} computed")
        self.computed = computed
        self.declared = declared


class CrcVariantMismatch(CrcMismatch):
    """The CRC is a known non-standard variant (MODBUS forms) that this device is not allowed."""

    reason = "crc_variant"

    def __init__(self, *, computed: int, declared: int, variant: str) -> None:
        super().__init__(computed=computed, declared=declared)
        self.args = (f"CRC {declared:04X} is the {variant} variant; HJ 212 gives {computed:04X}",)
        self.variant = variant


class SegmentError(Hj212Error):
    """The data segment is framed correctly but its content is malformed."""

    reason = "segment_error"


class MissingField(SegmentError):
    reason = "missing_field"

    def __init__(self, name: str) -> None:
        super().__init__(f"required field {name} is missing")
        self.name = name


class BadFieldValue(SegmentError):
    reason = "bad_field_value"

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r}: expected {expected}")
        self.name = name
        self.value = value
        self.expected = expected


class FieldTooLong(SegmentError):
    """A header or CP field longer than its hard cap (protocol.limits), whatever the segment allows."""

    reason = "field_too_long"

    def __init__(self, name: str, value: str, limit: int) -> None:
        super().__init__(f"{name} of {len(value)} characters exceeds the limit {limit}: {value[:24]!r}")
        self.name = name
        self.length = len(value)
        self.limit = limit


class TooManyFields(SegmentError):
    """More header fields, CP fields or factors than protocol.limits allows."""

    reason = "too_many_fields"

    def __init__(self, where: str, count: int, limit: int) -> None:
        super().__init__(f"{where}: {count}, more than the limit {limit}")
        self.where = where
        self.count = count
        self.limit = limit


class BadEncoding(SegmentError):
    reason = "bad_encoding"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class BadCpItem(SegmentError):
    reason = "bad_cp_item"

    def __init__(self, item: str) -> None:
        super().__init__(f"CP item {item[:60]!r} is not name=value")
        self.item = item


class DecryptFailed(SegmentError):
    reason = "decrypt_failed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class CrcMismatchAfterDecrypt(SegmentError):
    reason = "crc_mismatch_after_decrypt"
    qn_rtn = QnRtn.CRC_ERROR

    def __init__(self, *, declared: int, keys_tried: int) -> None:
        super().__init__(f"no key of {keys_tried} gives a plaintext with CRC {declared:04X}")
        self.declared = declared
        self.keys_tried = keys_tried


class SessionError(Hj212Error):
    """A well-formed packet that this connection must not accept."""

    reason = "session_error"


class MnMismatch(SessionError):
    reason = "mn_mismatch"
    qn_rtn = QnRtn.MN_ERROR

    def __init__(self, *, bound: str, received: str) -> None:
        super().__init__(f"connection is bound to MN {bound}, packet carries {received}")
        self.bound = bound
        self.received = received
