"""Whole packets: complete wire bytes <-> `Packet`, for callers that hold every byte already.

Tools, tests and the simulator read captured lines and files; they take `parse_packet` (one
frame's bytes) or `iter_packets` (a byte string of frames). A live connection's stream goes
through `DasSession` instead, which keeps its buffer across reads and never raises.
"""

from collections.abc import Iterator

from hj212gw.protocol.decoder import CrcPolicy, KeyLookup, decode_frame
from hj212gw.protocol.errors import FrameError
from hj212gw.protocol.framing import encode_frame, iter_frames, parse_frame
from hj212gw.protocol.models import Packet
from hj212gw.protocol.segment import encode_segment


def parse_packet(wire: bytes, policy: CrcPolicy | None = None, keys: KeyLookup | None = None) -> Packet:
    """The checked, decoded packet in one complete frame's bytes (what follows it is not read).

    Raises:
        Hj212Error: the first defect: a `FrameError` (`NoFrame` for bytes without a frame) or
            the decoder's `CrcMismatch`, `SegmentError` and the rest.
    """
    return decode_frame(parse_frame(wire), policy, keys)


def iter_packets(data: bytes, policy: CrcPolicy | None = None, keys: KeyLookup | None = None) -> Iterator[Packet]:
    """Every packet in a byte string of frames, in order.

    Raises:
        Hj212Error: at the first bad frame (for streams that must hold only good ones).
    """
    for found in iter_frames(data):
        if isinstance(found, FrameError):
            raise found
        yield decode_frame(found, policy, keys)


def encode_packet(packet: Packet) -> bytes:
    """`##dddd<segment><CRC>\\r\\n` for a packet, its CP as plaintext (a decrypted CP stays so).

    For a packet parsed without tolerances, `encode_packet(parse_packet(wire)) == wire`.
    """
    return encode_frame(encode_segment(packet))
