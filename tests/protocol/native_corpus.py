"""What the compiled modules (hj212gw.native) make of a fixed corpus, one line per input.

Run as `python -m tests.protocol.native_corpus`, once as built and once with HJ212GW_PURE_PYTHON=1;
tests/protocol/test_native.py compares the two outputs. The corpus: every fixture packet, and
seeded mutations of them (bytes flipped, cut, repeated; long fields; NUL; junk between frames), fed
to a DasSession in uneven reads; for each data packet also the rows ingest encodes.
The first line is the mode (hj212gw.native.mode()).
"""

import json
import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hj212gw import native
from hj212gw.ingest.alarms import alarm_rows
from hj212gw.ingest.rows import TimePolicy, data_block
from hj212gw.protocol.events import PacketReceived
from hj212gw.protocol.framing import encode_frame
from hj212gw.protocol.session import DasSession
from tests.protocol.conftest import BAD, GOOD, SM4

NOW = datetime(2024, 3, 15, 2, 0, 0, tzinfo=UTC)
POLICY = TimePolicy(ZoneInfo("Asia/Shanghai"))
SEED = 212


def corpus(mutations: int = 5000) -> list[bytes]:
    originals = [path.read_bytes() for path in (*GOOD, *BAD, *SM4)]
    rng = random.Random(SEED)
    inputs = list(originals)
    for _ in range(mutations):
        data = bytearray(rng.choice(originals))
        kind = rng.randrange(7)
        if kind == 0 and data:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1 and data:  # cut
            del data[rng.randrange(len(data)) :]
        elif kind == 2:  # two frames, junk between
            data += bytes(rng.randrange(256) for _ in range(rng.randint(0, 8))) + rng.choice(originals)
        elif kind == 3:  # a long field, re-framed with a good CRC
            body = _segment(bytes(data))
            if body is not None:
                at = rng.randrange(len(body) + 1)
                filler = rng.choice([b"9", b"A", b"w01018-Avg=1;", b";", b"=", b"//", b","]) * rng.randint(20, 400)
                data = bytearray(encode_frame(body[:at] + filler + body[at:]))
        elif kind == 4:  # NUL bytes, re-framed
            body = _segment(bytes(data))
            if body is not None:
                at = rng.randrange(len(body) + 1)
                data = bytearray(encode_frame(body[:at] + b"\x00" + body[at:]))
        elif kind == 5:  # a value replaced, re-framed
            body = _segment(bytes(data))
            if body is not None and b"=" in body:
                pieces = body.split(b"=")
                k = rng.randrange(1, len(pieces))
                value = rng.choice([b"", b"-", b"1e999", b"nan", b"0x1F", b"12.5", b"\xe4\xb8\xad"])
                tail = pieces[k].split(b";", 1)
                pieces[k] = value + (b";" + tail[1] if len(tail) > 1 else b"")
                data = bytearray(encode_frame(b"=".join(pieces)))
        else:  # the same packet twice, no CR LF between
            data = data.rstrip(b"\r\n") + bytes(data)
        inputs.append(bytes(data))
    return inputs


def _segment(frame: bytes) -> bytes | None:
    """The data segment of a well-formed `##dddd…CRCC\\r\\n` frame, else None."""
    if not frame.startswith(b"##") or len(frame) < 12:
        return None
    end = frame.find(b"\r\n")
    body = frame[6 : (end if end >= 0 else len(frame)) - 4]
    return body or None


def outcome(data: bytes, rng: random.Random) -> str:
    session = DasSession()
    events: list[object] = []
    at = 0
    while at < len(data):
        step = rng.randint(1, max(1, len(data) // 2))
        events += session.receive_data(data[at : at + step], NOW)
        at += step
    events += session.end_of_stream(NOW)
    rows = []
    for event in events:
        if isinstance(event, PacketReceived):
            block = data_block(event.packet, NOW, POLICY, resend=False)
            rows.append(None if block is None else (block.copy.hex(), block.rows, block.month, block.time_suspect))
            rows.append(repr(alarm_rows(event.packet, NOW, POLICY.device_tz)))
    return repr((events, rows))


def main() -> None:
    rng = random.Random(SEED)
    print(native.mode())
    for data in corpus():
        print(json.dumps(outcome(data, rng)))


if __name__ == "__main__":
    main()
