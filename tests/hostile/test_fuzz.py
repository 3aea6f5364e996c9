"""Issue #9, fuzz campaign: mutated captures into framing, segment, CP and DasSession.

Seeded from every good fixture; mutations are byte flips, truncations, splices of two captures,
repeated fields, huge fields, hostile bytes (NUL, `##`, `&&`, `//`, CR LF, invalid UTF-8) and
random chunking, mostly re-framed with a correct length and CRC so that the parser behind the
framing sees them. Asserts: parse functions raise only `Hj212Error`; the session yields only
events and never raises; what it accepts stays within protocol.limits and holds no NUL; memory
stays bounded while megabytes of hostile input go through one session. Pure, no event loop.
"""

import contextlib
import os
import random
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hj212gw.protocol import limits
from hj212gw.protocol.cp import DataCp, parse_cp
from hj212gw.protocol.errors import FrameError, Hj212Error
from hj212gw.protocol.framing import Frame, FrameBuffer, FrameLimits, encode_frame
from hj212gw.protocol.segment import parse_segment
from hj212gw.protocol.session import DasSession, Event, PacketReceived, SessionConfig
from tests.protocol.conftest import GOOD, T0, fixture_id

SEEDS = [path.read_bytes() for path in GOOD]
EVENTS = get_args(Event)
LIMITS = FrameLimits()
HOSTILE = [b"\x00", b"##", b"&&", b"//", b"\r\n", b"=", b";", b",", b"-", b"\xff\xfe", b"\xe4\xb8", b"CP=&&", b"#G1&"]
# The campaign's size: about 15 s in CI on a loaded 2-core box; raise it for a longer local run.
EXAMPLES = int(os.environ.get("HJ212GW_FUZZ_EXAMPLES", "2500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def segment_of(wire: bytes) -> bytes:
    """The segment of a capture, roughly: between the length field and the CRC + tail."""
    return wire[6:].rstrip(b"\r\n \t")[:-4]


def mutate(rng: random.Random, segment: bytes, other: bytes) -> bytes:
    """One mutation of a segment (several may be chained)."""
    size = len(segment)
    at = rng.randrange(size + 1)
    match rng.randrange(7):
        case 0:  # byte flips
            data = bytearray(segment)
            for _ in range(rng.randint(1, 5)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            return bytes(data)
        case 1:  # truncation
            return segment[:at]
        case 2:  # splice with another capture
            return segment[:at] + other[rng.randrange(len(other) + 1) :]
        case 3:  # a field repeated
            pieces = segment.replace(b",", b";").split(b";")
            piece = rng.choice(pieces) + rng.choice([b";", b","])
            return segment[:at] + piece * rng.choice([2, 50, 700, 3000]) + segment[at:]
        case 4:  # a huge field or value
            run = rng.choice([b"x", b"9", b"a21026-Rtd=1;", b"\x00", "重".encode()]) * rng.choice([30, 300, 5000])
            return segment[:at] + run + segment[at:]
        case 5:  # hostile bytes at random places
            data = segment
            for _ in range(rng.randint(1, 4)):
                cut = rng.randrange(len(data) + 1)
                data = data[:cut] + rng.choice(HOSTILE) + data[cut:]
            return data
        case _:  # a field's value replaced by a long one
            eq = segment.find(b"=", at)
            end = min([i for i in (segment.find(b";", eq), segment.find(b",", eq)) if i >= 0] or [size])
            return segment if eq < 0 else segment[: eq + 1] + b"Z" * rng.choice([25, 41, 65, 129, 1100]) + segment[end:]


def hostile_wire(rng: random.Random) -> bytes:
    """A mutated capture, framed right (most often) or wrongly."""
    segment = segment_of(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 3)):
        segment = mutate(rng, segment, segment_of(rng.choice(SEEDS)))
    choice = rng.random()
    if choice < 0.7:
        return encode_frame(segment)
    length = rng.choice([b"0000", b"%04d" % rng.randrange(10000), b"%04d" % len(segment)])
    tail = rng.choice([b"\r\n", b"\n", b"", b"\r\r\n", b"  \r\n"])
    return b"##" + length + segment + encode_frame(segment)[-6:-2] + tail


def chunks_of(rng: random.Random, wire: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(wire):
        step = rng.choice([1, 2, 7, 64, 1500, 65536])
        out.append(wire[pos : pos + step])
        pos += step
    return out


def check_accepted(event: PacketReceived) -> None:
    """What the session accepts is within the limits and holds nothing PostgreSQL text refuses."""
    packet, frame = event.packet, event.frame
    assert len(frame.segment) <= LIMITS.max_segment_bytes
    for value, width in (
        (packet.qn, limits.QN),
        (packet.st, limits.ST),
        (packet.pw, limits.PW),
        (packet.mn, limits.MN),
    ):
        assert value is None or (len(value) <= width.hard and "\x00" not in value)
    assert "\x00" not in packet.cp
    if isinstance(packet.data, DataCp):
        assert len(packet.data.fields) <= limits.MAX_CP_FIELDS
        for name, value in packet.data.fields.items():
            assert len(name) <= limits.MAX_CP_KEY and "\x00" not in name and "\x00" not in value
            code, dash, _suffix = name.partition("-")
            assert not dash or len(code) <= limits.FACTOR_CODE.hard


def feed(session: DasSession, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += session.receive_data(chunk, now=T0)
        assert session.frames.buffered <= LIMITS.window
    events += session.end_of_stream(T0) + session.poll(T0 + timedelta(hours=1))
    assert all(isinstance(event, EVENTS) for event in events)
    for event in events:
        if isinstance(event, PacketReceived):
            check_accepted(event)
    return events


@FUZZ
@given(st.randoms(use_true_random=False))
def test_session_takes_mutated_captures_in_any_chunking(rng: random.Random) -> None:
    wire = b"".join(hostile_wire(rng) for _ in range(rng.randint(1, 4)))
    feed(DasSession(), chunks_of(rng, wire))


@FUZZ
@given(st.randoms(use_true_random=False))
def test_framing_raises_only_frame_errors(rng: random.Random) -> None:
    buffer = FrameBuffer(LIMITS)
    for chunk in chunks_of(rng, hostile_wire(rng) + hostile_wire(rng)):
        buffer.feed(chunk)
        while True:
            try:
                frame = buffer.next_frame()
            except FrameError:
                continue
            if frame is None:
                break
            assert isinstance(frame, Frame) and len(frame.segment) <= LIMITS.max_segment_bytes


@FUZZ
@given(st.randoms(use_true_random=False))
def test_segment_and_cp_raise_only_typed_errors(rng: random.Random) -> None:
    segment = segment_of(hostile_wire(rng))
    try:
        packet = parse_segment(segment)
    except Hj212Error:
        packet = None
    text = segment.decode("utf-8", "replace")
    cn = packet.cn if packet is not None else rng.choice(["2011", "2051", "3020", "1011", "9011", "2061", "4444"])
    with contextlib.suppress(Hj212Error):  # a typed rejection passes; any other exception fails
        parse_cp(cn, text.partition("CP=&&")[2])


@pytest.mark.parametrize("path", GOOD, ids=fixture_id)
def test_every_capture_mutated_and_chunked(path: Path) -> None:
    """Each seed in turn (Hypothesis samples them; this walks all): 12 mutations each."""
    rng = random.Random(path.name)
    segment = segment_of(path.read_bytes())
    for _ in range(12):
        wire = encode_frame(mutate(rng, segment, segment_of(rng.choice(SEEDS))))
        feed(DasSession(), chunks_of(rng, wire))


def test_megabytes_of_hostile_input_keep_one_session_bounded() -> None:
    rng = random.Random(9)
    stream = []
    while sum(map(len, stream)) < 8_000_000:
        stream.append(hostile_wire(rng))
        if rng.random() < 0.05:  # junk, header storms, frames that never end
            stream.append(rng.choice([b"##", b"#", b"x", b"##0000", b"##9999QN="]) * rng.choice([10, 1000, 20000]))
    chunks = chunks_of(rng, b"".join(stream))
    session = DasSession(SessionConfig(max_consecutive_rejects=10**9))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for chunk in chunks:
            session.receive_data(chunk, now=T0)  # events dropped, as the shell does after acting on them
            assert session.frames.buffered <= LIMITS.window
            assert len(session.pending_requests()) <= session.config.max_pending_requests
        session.poll(T0 + timedelta(seconds=30))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # One read's events (at most 64 KiB of frames) and the session's bounded state.
    assert peak < 12 * 1024 * 1024
