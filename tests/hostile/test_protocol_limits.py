"""Issue #9, protocol limits: field widths, the framing window, the log-text tokenizer, pending
requests, NUL bytes and unrepresentable DataTimes. Pure (no event loop, no network), except the
last test, which sends long fields through a real gateway to PostgreSQL.

Each test is a finding that the code before this change got wrong (noted per test).
"""

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hj212gw.cli import serve
from hj212gw.ingest.rows import TimePolicy, data_block
from hj212gw.protocol.cp import DataCp, tokenize_cp
from hj212gw.protocol.errors import FrameError
from hj212gw.protocol.framing import FrameBuffer, FrameLimits, Tolerance, encode_frame
from hj212gw.protocol.session import DasSession, Event, FrameRejected, PacketReceived, RequestFailed, Send
from tests.integration.das import DasClient, data_packet, empty_packet, settings_for
from tests.integration.waiting import eventually
from tests.storage.copy_rows import decode_rows

T0 = datetime(2024, 3, 15, 2, 0, tzinfo=UTC)
MN = "010000A8900016F000169DC0"  # tests.integration.das.MN
STD = encode_frame(f"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN={MN};Flag=5;CP=&&RtdInterval=30&&".encode())


def upload(cp: str, *, mn: str = MN, pw: str = "123456", qn: str = "20240315101000001", st: str = "32") -> bytes:
    return encode_frame(f"QN={qn};ST={st};CN=2011;PW={pw};MN={mn};Flag=5;CP=&&{cp}&&".encode())


def events_of(*chunks: bytes, session: DasSession | None = None) -> list[Event]:
    session = session or DasSession()
    events: list[Event] = []
    for chunk in chunks:
        events += session.receive_data(chunk, now=T0)
    return events + session.end_of_stream(T0)


def packets(events: list[Event]) -> list[PacketReceived]:
    return [e for e in events if isinstance(e, PacketReceived)]


def reasons(events: list[Event]) -> list[str]:
    return [e.error.reason for e in events if isinstance(e, FrameRejected)]


# ---- field widths: what reached the database as a 3,000-character index key --------------------


@pytest.mark.parametrize(
    "wire",
    [
        upload("DataTime=20240315100000;w01018-Rtd=1", mn="M" * 3000),
        upload("DataTime=20240315100000;" + "a" * 3000 + "-Rtd=1"),
        upload("DataTime=20240315100000;w01018-Rtd=1", pw="7" * 3000),
        upload("DataTime=20240315100000;w01018-Rtd=1", qn="2" * 3000),
    ],
    ids=["mn", "factor_code", "pw", "qn"],
)
def test_a_3000_character_field_is_rejected_as_field_too_long(wire: bytes) -> None:
    # Before: accepted, and PostgreSQL refused the MN / factor index row (SQLSTATE 54000).
    for chunks in ([wire], [wire[i : i + 7] for i in range(0, len(wire), 7)]):
        events = events_of(*chunks)
        assert packets(events) == [] and reasons(events) == ["field_too_long"]


def test_too_many_factors_is_too_many_fields() -> None:
    codes = [f"{a}{b}" for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"][:513]
    events = events_of(upload(";".join(f"{code}-R=1" for code in codes)))
    assert reasons(events) == ["too_many_fields"]


def test_what_real_devices_send_past_the_standard_widths_is_accepted_and_named() -> None:
    wire = upload("DataTime=20240315100000;pms_rules-Rtd=1", pw="BF470F88957588DE902D1A52", st="101")
    [received] = packets(events_of(wire))
    tolerances = received.packet.tolerances
    assert {Tolerance.LONG_PW, Tolerance.LONG_ST, Tolerance.LONG_FACTOR_CODE} <= set(tolerances)


# ---- the framing window ------------------------------------------------------------------------


def declared_0000(segment_bytes: int) -> bytes:
    cp = "DataTime=20240315100000;" + ";".join(f"w{i:05d}-Rtd=1.0" for i in range(segment_bytes // 13 + 1))
    segment = f"QN=20240315101000001;ST=32;CN=2011;PW=123456;MN={MN};Flag=4;CP=&&{cp}"[: segment_bytes - 2] + "&&"
    return b"##0000" + encode_frame(segment.encode())[-len(segment) - 6 :]


def test_a_75_kb_frame_declaring_0000_is_never_accepted_however_chunked() -> None:
    # Before: one read carrying it stored a 75 KB segment (byte by byte it was a trailer error).
    wire = declared_0000(75_000)
    for chunks in ([wire], [wire[i : i + 1000] for i in range(0, len(wire), 1000)]):
        events = events_of(*chunks)
        assert packets(events) == [] and reasons(events)[0] == "trailer_missing"


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(100, 6000),
    declared=st.integers(0, 9999),
    cuts=st.lists(st.integers(1, 6100), max_size=12),
)
def test_no_accepted_segment_exceeds_max_segment_bytes_and_chunking_never_matters(
    size: int, declared: int, cuts: list[int]
) -> None:
    wire = b"##%04d" % declared + declared_0000(size)[6:]
    limits = FrameLimits(max_segment_bytes=4096)
    bounds = sorted({c for c in cuts if c < len(wire)})
    chunked = [wire[a:b] for a, b in zip([0, *bounds], [*bounds, len(wire)], strict=True)]
    outcomes = []
    for chunks in ([wire], chunked):
        buffer = FrameBuffer(limits)
        seen: list[object] = []
        for chunk in chunks:
            buffer.feed(chunk)
            seen += drain(buffer)
        buffer.end_of_stream()
        seen += drain(buffer)
        # Junk is reported per read: consecutive `garbage` count once.
        outcomes.append([s for i, s in enumerate(seen) if s != "garbage" or seen[i - 1 : i] != ["garbage"]])
    assert outcomes[0] == outcomes[1]
    assert all(len(s) <= 4096 for s in outcomes[0] if isinstance(s, bytes))


def drain(buffer: FrameBuffer) -> list[object]:
    """Accepted segments (bytes) and error reasons (str), in order."""
    out: list[object] = []
    while True:
        try:
            frame = buffer.next_frame()
        except FrameError as error:
            out.append(error.reason)
            continue
        if frame is None:
            return out
        out.append(frame.segment)


def test_whitespace_before_a_backlog_in_one_read_loses_no_frame() -> None:
    # Before: more than 64 KiB after a stray newline in one read was a buffer_overflow, and the
    # frame it cut lost its `##` (63 of 700 good frames rejected).
    events = events_of(b"\r\n" + (STD + b"\n") * 700)
    assert len(packets(events)) == 700 and reasons(events) == []


# ---- the log-text tokenizer --------------------------------------------------------------------


class CountingText(str):
    """A str whose `find` adds up how many characters each search walked."""

    walked = 0

    def find(self, sub: str, start: int | None = None, end: int | None = None) -> int:  # type: ignore[override]
        begin = 0 if start is None else start
        found = super().find(sub, begin, len(self) if end is None else end)
        CountingText.walked += (len(self) if found < 0 else found + len(sub)) - begin
        return found


def log_cp(items: int) -> str:
    """Log text, then `,`-separated items: each `;` search used to walk to the end of the text."""
    return "i12001-Info=//restart; checked, ok//," + ",".join(f"a{i:05d}-Rtd={i}" for i in range(items))


@pytest.mark.parametrize("items", [250, 2000])
def test_log_text_tokenizer_walks_each_character_a_bounded_number_of_times(items: int) -> None:
    # Before: each item's `;` search walked to the end: 2,000 items walked about 2,000 x 16 KB
    # (quadratic: a 270 KB CP blocked the event loop for 219 ms). Now the same few walks per
    # character at n and 8n: the cost grows linearly. (Timing ratios cannot show it on a fast
    # memchr; the walk count can.)
    text = CountingText(log_cp(items))
    CountingText.walked = 0
    assert len(tokenize_cp(text)) == items + 1
    assert CountingText.walked <= 3 * len(text)


# ---- pending platform requests -----------------------------------------------------------------


def test_a_1013_flood_keeps_pending_requests_capped() -> None:
    # Before: each 1013 left a pending 1012 (10 s x 4 tries): 1,000 of them on one connection.
    session = DasSession()
    flood = b"".join(
        encode_frame(f"QN=2024031510{i:07d};ST=32;CN=1013;PW=123456;MN={MN};Flag=5;CP=&&&&".encode())
        for i in range(1000)
    )
    events = session.receive_data(flood, now=T0)
    assert len(session.pending_requests()) == 32
    failed = [e for e in events if isinstance(e, RequestFailed)]
    assert len(failed) == 1000 - 32 and {e.reason for e in failed} == {"too_many_pending"}
    assert sum(isinstance(e, Send) and e.cn == "1012" for e in events) == 32
    assert sum(isinstance(e, Send) and e.cn == "9013" for e in events) == 1000


# ---- NUL bytes: what PostgreSQL text cannot hold ------------------------------------------------


def test_nul_bytes_never_reach_a_stored_value_and_are_named() -> None:
    # Before: kept in PW, QN and the CP, so PostgreSQL refused the rows (and the sighting).
    wire = upload("DataTime=20240315100000;w01\x00018-Rtd=1.5,w01018-Flag=N\x00;w01019-Info=a\x00b", pw="12\x003456")
    wire = wire.replace(b"QN=", b"QN=\x00", 1)
    wire = encode_frame(wire[6:-6])
    [received] = packets(events_of(wire))
    packet = received.packet
    assert Tolerance.NUL_IN_FIELD in packet.tolerances
    assert packet.pw == "123456" and packet.qn == "20240315101000001" and "\x00" not in packet.cp
    assert isinstance(packet.data, DataCp) and packet.data.fields["w01018-Flag"] == "N"
    block = data_block(packet, T0, TimePolicy(ZoneInfo("Asia/Shanghai")), resend=False)
    assert block is not None
    for row in decode_rows(block.copy):
        assert all("\x00" not in str(value) for value in row.values())
    assert received.frame.raw == wire  # the raw archive keeps the bytes as sent


def test_an_mn_with_a_nul_byte_is_rejected_not_cleaned() -> None:
    events = events_of(upload("DataTime=20240315100000;w01018-Rtd=1", mn=MN[:-1] + "\x00"))
    assert reasons(events) == ["bad_field_value"] and packets(events) == []


# ---- DataTimes no UTC datetime holds -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data_time", "zone"),
    [("00010101000000", "Asia/Shanghai"), ("99991231235959", "America/New_York"), ("99991231235959", "Asia/Shanghai")],
)
def test_year_0001_and_9999_data_times_are_stored_marked_never_an_exception(data_time: str, zone: str) -> None:
    # Before: OverflowError inside the connection for year 1 east of UTC and year 9999 west of it.
    [received] = packets(events_of(upload(f"DataTime={data_time};w01018-Rtd=1.5")))
    received_at = T0 + timedelta(minutes=1)
    block = data_block(received.packet, received_at, TimePolicy(ZoneInfo(zone)), resend=False)
    assert block is not None
    [row] = decode_rows(block.copy)
    assert row["time_suspect"] is True and row["rtd"] == 1.5


# ---- end to end: a real gateway and PostgreSQL --------------------------------------------------


@pytest.mark.integration
async def test_long_fields_never_reach_postgresql_and_good_data_keeps_being_acked(
    pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    # Before: PostgreSQL refused the index rows of these two packets (SQLSTATE 54000), both batch
    # writers died, and nothing from any device was stored or acked afterwards.
    running = await serve.start(settings_for(pg_dsn, schema))
    try:
        assert running.gateway.port is not None
        das = await DasClient.connect(running.gateway.port)
        with capture_logs() as logs:
            noise = random.Random(9).randbytes(1500).hex()  # 3,000 characters PostgreSQL cannot compress
            await das.send(data_packet("20240315101000001", mn=noise))
            long_code = "DataTime=20240315100000;" + noise + "-Avg=1.5"
            await das.send(empty_packet("20240315101000002", "2051", flag=5, cp=long_code))
            for n in range(3, 6):
                await das.send(data_packet(f"2024031510100000{n}", data_time=f"2024031510{n:02d}00"))
            replies = await das.replies(3)
        assert [r.packet.qn for r in replies] == [f"2024031510100000{n}" for n in range(3, 6)]
        assert [e["reason"] for e in logs if e["event"] == "frame_rejected"] == ["field_too_long"] * 2
        assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", MN) == 3
        assert await conn.fetchval("SELECT max(length(factor)) FROM data") == 6

        async def archived() -> bool:
            return await conn.fetchval("SELECT count(*) FROM raw_frames WHERE verdict = 'field_too_long'") == 2

        await eventually(archived)
        await das.close()
    finally:
        await running.stop()
