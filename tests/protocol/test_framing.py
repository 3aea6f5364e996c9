"""framing.py: every fixture frames back to its wire bytes; tolerances; limits; resync."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hj212gw.protocol.errors import (
    BufferOverflow,
    CrcMissing,
    FrameError,
    FrameTooLong,
    Hj212Error,
    LengthFieldError,
    NoFrame,
    TrailerError,
)
from hj212gw.protocol.framing import (
    CrcVerdict,
    Frame,
    FrameBuffer,
    FrameLimits,
    Garbage,
    Tolerance,
    encode_frame,
    iter_frames,
    parse_frame,
)
from tests.protocol.conftest import BAD, FIRST, GOOD, expected, fixture_id

STANDARD = FIRST.read_bytes()


def drain(buffer: FrameBuffer) -> list[Frame | Hj212Error]:
    """Every frame and defect the buffer gives until it needs more bytes."""
    out: list[Frame | Hj212Error] = []
    while True:
        try:
            frame = buffer.next_frame()
        except FrameError as error:
            out.append(error)
            continue
        if frame is None:
            return out
        out.append(frame)


def frames_of(data: bytes, *, eos: bool = True) -> list[Frame | Hj212Error]:
    """What one read of `data` gives, then (`eos`) what the end of the stream adds."""
    buffer = FrameBuffer()
    buffer.feed(data)
    out = drain(buffer)
    if eos:
        buffer.end_of_stream()
        out += drain(buffer)
    return out


def only_frame(data: bytes) -> Frame:
    [frame] = frames_of(data)
    assert isinstance(frame, Frame)
    return frame


def test_the_first_fixture_is_the_standard_example() -> None:
    assert GOOD[0] == FIRST
    frame = only_frame(STANDARD)
    assert frame.declared_length == len(frame.segment) == 101
    assert frame.crc_text == b"1C80"
    assert frame.crc_verdict is CrcVerdict.OK
    assert frame.tolerances == ()


@pytest.mark.parametrize("path", GOOD, ids=fixture_id)
def test_good_fixture_frame_raw_is_the_wire(path: Path) -> None:
    wire = path.read_bytes()
    frame = only_frame(wire)
    assert frame.raw == wire
    assert frame.crc_verdict.value == expected(path)["crc_verdict"]


@pytest.mark.parametrize("path", [p for p in GOOD if expected(p)["canonical"]], ids=fixture_id)
def test_canonical_fixture_is_what_encode_frame_writes(path: Path) -> None:
    wire = path.read_bytes()
    assert encode_frame(only_frame(wire).segment) == wire


@pytest.mark.parametrize("path", [p for p in GOOD if not expected(p)["needs_end_of_stream"]], ids=fixture_id)
def test_fixture_with_a_tail_needs_no_end_of_stream(path: Path) -> None:
    frames = frames_of(path.read_bytes(), eos=False)
    assert len(frames) == 1 and isinstance(frames[0], Frame)


@pytest.mark.parametrize("path", BAD, ids=fixture_id)
def test_bad_fixture_frames_to_its_wire_or_a_frame_error(path: Path) -> None:
    wire = path.read_bytes()
    results = frames_of(wire)
    assert results
    for result in results:
        if isinstance(result, Frame):
            assert result.raw == wire
        else:
            assert result.reason == expected(path)["reason"]


def test_lowercase_crc_is_tolerated_and_named() -> None:
    frame = only_frame(STANDARD.replace(b"1C80", b"1c80"))
    assert frame.crc_verdict is CrcVerdict.OK
    assert Tolerance.LOWERCASE_CRC in frame.tolerances


@pytest.mark.parametrize(
    ("tail", "tolerance"),
    [
        (b"\n", Tolerance.MISSING_CR),
        (b"\r\r\n", Tolerance.EXTRA_CR),
        (b"  \r\n", Tolerance.TRAILING_WHITESPACE),
    ],
)
def test_odd_tails_are_tolerated_and_named(tail: bytes, tolerance: Tolerance) -> None:
    wire = STANDARD[:-2] + tail
    frame = only_frame(wire)
    assert tolerance in frame.tolerances
    assert frame.raw == wire
    assert frame.crc_verdict is CrcVerdict.OK


def test_missing_tail_ends_at_end_of_stream() -> None:
    wire = STANDARD[:-2]
    assert frames_of(wire, eos=False) == []
    frame = only_frame(wire)
    assert Tolerance.MISSING_TAIL in frame.tolerances
    assert frame.raw == wire


def test_missing_tail_ends_at_the_next_header() -> None:
    results = frames_of(STANDARD[:-2] + STANDARD, eos=False)
    assert [type(r) for r in results] == [Frame, Frame]
    assert isinstance(results[0], Frame) and Tolerance.MISSING_TAIL in results[0].tolerances


def test_cr_only_tail() -> None:
    frame = only_frame(STANDARD[:-1])
    assert Tolerance.MISSING_LF in frame.tolerances


def test_length_mismatch_is_reframed_at_the_tail() -> None:
    wire = b"##0099" + STANDARD[6:]
    frame = only_frame(wire)
    assert Tolerance.LENGTH_MISMATCH in frame.tolerances
    assert frame.declared_length == 99 and len(frame.segment) == 101
    assert frame.raw == wire


def test_utf8_length_counts_bytes() -> None:
    wire = (FIRST.parent / "3020-extra-u1-utf8-log.hj212").read_bytes()
    frame = only_frame(wire)
    assert len(frame.segment) == 152 and frame.tolerances == ()


def test_oversize_segment_is_accepted_and_named() -> None:
    segment = b"QN=1;ST=32;CN=2011;PW=1;MN=1;Flag=4;CP=&&" + b"a=1;" * 300 + b"&&"
    frame = only_frame(encode_frame(segment))
    assert Tolerance.OVERSIZE_SEGMENT in frame.tolerances


def test_declared_length_above_the_limit_is_rejected() -> None:
    buffer = FrameBuffer(FrameLimits(max_segment_bytes=200))
    buffer.feed(b"##0300" + b"x" * 10)
    with pytest.raises(FrameTooLong):
        buffer.next_frame()


def test_length_field_not_digits() -> None:
    results = frames_of(b"##01a1" + STANDARD)
    assert isinstance(results[0], LengthFieldError)
    assert isinstance(results[-1], Frame)


def test_no_crc_before_tail() -> None:
    results = frames_of(b"##0010QN=1;CP=&&&&\r\n")
    assert any(isinstance(r, CrcMissing) for r in results)


def test_no_tail_within_the_window_is_a_trailer_error() -> None:
    # The window is the longest segment plus CRC and a tail, whatever the length field declares.
    assert frames_of(b"##0010" + b"x" * 4000, eos=False) == []
    results = frames_of(b"##0010" + b"x" * 5000, eos=False)
    assert isinstance(results[0], TrailerError)


def test_buffer_overflow_without_a_frame() -> None:
    buffer = FrameBuffer(FrameLimits(max_buffer_bytes=100))
    buffer.feed(b"##")
    buffer.feed(b"#" * 200)
    with pytest.raises((BufferOverflow, LengthFieldError)):
        buffer.next_frame()


def test_junk_before_a_frame_is_garbage_and_whitespace_is_not() -> None:
    results = frames_of(b"hello" + STANDARD)
    assert isinstance(results[0], Garbage) and results[0].junk == b"hello"
    assert isinstance(results[1], Frame)
    results = frames_of(b"\r\n \t\x00" + STANDARD)
    assert [type(r) for r in results] == [Frame]


def test_lone_trailing_hash_is_kept_for_the_next_read() -> None:
    buffer = FrameBuffer()
    buffer.feed(b"xyz#")
    with pytest.raises(Garbage):
        buffer.next_frame()
    buffer.feed(STANDARD[1:])
    frame = buffer.next_frame()
    assert frame is not None and frame.raw == STANDARD


def test_encode_frame_writes_byte_length_and_uppercase_crc() -> None:
    assert encode_frame(FIRST.read_bytes()[6:-6]) == STANDARD


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300).filter(lambda b: b"##" not in b and not b.endswith(b"#")))
def test_a_good_frame_after_any_garbage_is_recovered(junk: bytes) -> None:
    results = frames_of(junk + STANDARD)
    frames = [r for r in results if isinstance(r, Frame)]
    assert frames and frames[-1].raw == STANDARD
    assert all(isinstance(r, Garbage) for r in results[:-1])


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_a_good_frame_after_any_bytes_and_a_newline_is_recovered(junk: bytes) -> None:
    # A broken frame may swallow bytes up to its own end; a newline and the next `##` bound it.
    results = frames_of(junk + b"\r\n" + STANDARD)
    assert isinstance(results[-1], Frame) and results[-1].raw == STANDARD


def chunked(data: bytes, size: int, limits: FrameLimits | None = None) -> list[Frame | Hj212Error]:
    buffer = FrameBuffer(limits)
    out: list[Frame | Hj212Error] = []
    for start in range(0, len(data), size):
        buffer.feed(data[start : start + size])
        out += drain(buffer)
    return out


@pytest.mark.parametrize("size", [1, 7, 100_000])
def test_a_wrong_length_field_is_reframed_at_the_tail_in_any_chunking(size: int) -> None:
    wire = b"##0000" + STANDARD[6:]
    [frame] = chunked(wire, size)
    assert isinstance(frame, Frame) and frame.raw == wire and Tolerance.LENGTH_MISMATCH in frame.tolerances


@pytest.mark.parametrize("size", [1, 64, 100_000])
def test_a_tail_past_max_segment_bytes_is_frame_too_long_in_any_chunking(size: int) -> None:
    segment = b"QN=1;ST=32;CN=2011;PW=1;MN=1;Flag=4;CP=&&" + b"a=1;" * 1100 + b"&&"  # 4,443 bytes
    wire = b"##0000" + encode_frame(segment[:4120])[6:]
    [error] = chunked(wire, size)
    assert isinstance(error, FrameTooLong) and (error.received, error.limit) == (4120, 4096)


def test_frame_limits_derive_the_segment_cap_and_the_window() -> None:
    assert (FrameLimits().segment_cap, FrameLimits().window) == (4096, 6 + 4096 + 4 + 64)
    small = FrameLimits(max_segment_bytes=4096, max_buffer_bytes=1000)
    assert (small.segment_cap, small.window) == (988, 1000)
    results = frames_of(b"##0900" + b"x" * 1100, eos=False)
    assert results == []  # within the default window: wait for the tail
    [error] = chunked(b"##0990" + b"x" * 1100, 10, small)[:1]
    assert isinstance(error, FrameTooLong) and error.limit == 988
    [error] = chunked(b"##0900" + b"x" * 1100, 10, small)[:1]
    assert isinstance(error, BufferOverflow)


def test_a_defect_carries_every_byte_it_consumed_up_to_the_window() -> None:
    [error] = frames_of(b"##0010QN=1;CP=&&&&\r\n")
    assert isinstance(error, CrcMissing) and (error.head, error.consumed) == (b"##0010QN=1;CP=&&&&\r\n", 20)
    wire = b"##0000" + encode_frame(b"x" * 4120)[6:]
    [error] = frames_of(wire)
    assert isinstance(error, FrameTooLong) and (error.head, error.consumed) == (wire, len(wire))
    [error, junk] = frames_of(b"##9999" + b"x" * 10)
    assert isinstance(error, FrameTooLong) and (error.head, error.consumed) == (b"##", 2)  # the rest is garbage
    assert isinstance(junk, Garbage) and junk.head == b"9999" + b"x" * 10
    [error, _] = frames_of(b"##01a1QN=1")
    assert isinstance(error, LengthFieldError) and error.head == b"##"


def test_a_long_defect_keeps_the_first_window_bytes_and_says_how_many_it_consumed() -> None:
    window = FrameLimits().window
    [error] = frames_of(b"\xff" * (3 * window))
    assert isinstance(error, Garbage) and error.head == b"\xff" * window and error.consumed == 3 * window
    [error] = frames_of(b"##0101" + b"x" * 1000)  # no CRC at the end of the stream: more than 120 bytes kept
    assert isinstance(error, CrcMissing) and error.head == b"##0101" + b"x" * 1000


def test_iter_frames_gives_frames_and_defects_in_stream_order() -> None:
    data = b"hello" + STANDARD + b"##01a1" + STANDARD[:-2]
    results = list(iter_frames(data))
    assert [repr(r) for r in results] == [repr(r) for r in frames_of(data)]  # as a socket would give them
    assert [type(r) for r in results] == [Garbage, Frame, LengthFieldError, Garbage, Frame]
    assert results[-1].tolerances == (Tolerance.MISSING_TAIL,)  # type: ignore[union-attr]


def test_parse_frame_is_the_first_frame_or_the_first_defect() -> None:
    assert parse_frame(STANDARD + b"junk").raw == STANDARD
    with pytest.raises(Garbage):
        parse_frame(b"hello" + STANDARD)
    with pytest.raises(NoFrame):
        parse_frame(b"\r\n\t")
