"""DasSession: the protocol state of one DAS connection, as a pure state machine.

`receive_data(bytes, now)` returns events; `poll(now)` advances timers. The session binds the
MN on the first valid packet, tracks the protocol version, answers heartbeats and notifications
itself (as `Send` events), correlates the platform's requests with 9011/9012 by QN and retries
them after OverTime up to ReCount, and tracks split packets. It never sends a data ack: a
`PacketReceived` with `ack=True` tells the shell to send 9014 once the data is committed.
The events are in `events.py`, the request lifecycle's table in `requests.py`. The time is
always passed in; nothing here reads a clock.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from hj212gw.protocol.builders import Target, build_notification_reply, build_reply, build_set_time
from hj212gw.protocol.constants import HEARTBEAT_CNS, NOTIFICATION_CNS, REPLY_CNS, Cn, ProtocolVersion, QnRtn
from hj212gw.protocol.cp import DataCp, ExecutionResultCp, RequestReplyCp
from hj212gw.protocol.decoder import CrcPolicy, decode_frame
from hj212gw.protocol.errors import Hj212Error, MnMismatch, SegmentError
from hj212gw.protocol.events import (
    Event,
    FailureReason,
    FrameRejected,
    MnBound,
    MnChanged,
    PacketReceived,
    RequestAcknowledged,
    RequestFailed,
    RequestFinished,
    Send,
    SplitPartsMissing,
)
from hj212gw.protocol.framing import Frame, FrameBuffer, FrameLimits
from hj212gw.protocol.models import Packet, format_hj_time, format_qn, wants_answer
from hj212gw.protocol.requests import (
    PendingRequest,
    RequestAction,
    RequestInput,
    RequestState,
    overtime_input,
    reply_input,
    step,
)
from hj212gw.protocol.segment import parse_segment
from hj212gw.protocol.split import SplitError, SplitTracker, check_part

__all__ = [  # the events are the session's vocabulary: importable from here and from events.py
    "DasSession",
    "Event",
    "FrameRejected",
    "MnBound",
    "MnChanged",
    "PacketReceived",
    "RequestAcknowledged",
    "RequestFailed",
    "RequestFinished",
    "Send",
    "SessionConfig",
    "SplitPartsMissing",
]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Protocol policy for one connection; the shell builds it from the settings."""

    limits: FrameLimits = field(default_factory=FrameLimits)
    crc_policy: CrcPolicy = field(default_factory=CrcPolicy)
    keys: Mapping[str, Sequence[bytes]] = field(default_factory=dict)  # MN -> SM4 keys
    heartbeat_reply: Literal["9013", "9014", "none"] = "9013"
    heartbeat_reply_per_mn: Mapping[str, str] = field(default_factory=dict)
    mn_change: Literal["accept", "reject"] = "accept"
    device_tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    send_time_after_1013: bool = True
    max_consecutive_rejects: int = 10
    split_timeout_s: float = 120.0
    max_split_groups: int = 64  # open split transfers per connection
    max_split_parts: int = 256  # PNUM accepted for a transfer of fragments
    max_split_bytes: int = 262144  # per connection: tracking plus fragments awaiting assembly
    max_pending_requests: int = 32  # platform requests awaiting their answer; more fail at once
    raw_head_bytes: int = 120


# ---- the session ------------------------------------------------------------------------------


_FAILURE_REASONS: dict[RequestAction, FailureReason] = {
    RequestAction.FAIL_REJECTED: "rejected",
    RequestAction.FAIL_NO_REPLY: "no_reply",
    RequestAction.FAIL_NO_RESULT: "no_result",
}


_NO_PENDING: dict[str, PendingRequest] = {}  # shared and never written: see send_request


class DasSession:
    """Protocol state of one connection. Feed it bytes and the time; act on the events."""

    __slots__ = (
        "_last_qn",
        "_pending",
        "_splits",
        "close_reason",
        "config",
        "consecutive_rejects",
        "frames",
        "last_packet_at",
        "mn",
        "pw",
        "st",
        "version",
    )

    def __init__(self, config: SessionConfig | None = None) -> None:
        self.config = config or SessionConfig()
        self.frames = FrameBuffer(self.config.limits)
        self.mn: str | None = None
        self.pw: str | None = None
        self.st: str | None = None
        self.version: ProtocolVersion | None = None
        self.last_packet_at: datetime | None = None
        self.consecutive_rejects = 0
        self.close_reason: str | None = None
        # Most connections never see a platform request or a split packet: both are made on demand.
        self._pending: dict[str, PendingRequest] = _NO_PENDING
        self._splits: SplitTracker | None = None
        self._last_qn = ""

    @property
    def should_close(self) -> bool:
        return self.close_reason is not None

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: datetime) -> list[Event]:
        """Events for the bytes just read. Never raises for any input."""
        self.frames.feed(data)
        return self._drain(now)

    def end_of_stream(self, now: datetime) -> list[Event]:
        """The peer closed: a last frame without its tail is still taken."""
        self.frames.end_of_stream()
        return self._drain(now)

    def _drain(self, now: datetime) -> list[Event]:
        events: list[Event] = []
        frames = self.frames
        while True:
            try:
                frame = frames.next_frame()
            except Hj212Error as error:
                self._reject(events, error, b"")
                continue
            if frame is None:
                return events
            self._on_frame(frame, now, events)

    def _reject(self, events: list[Event], error: Hj212Error, raw: bytes, **extra: object) -> None:
        # A framing defect's head is what it consumed, already bounded by FrameLimits.window.
        head = raw[: self.config.raw_head_bytes] if raw else getattr(error, "head", b"")
        events.append(FrameRejected(error, head, **extra))  # type: ignore[arg-type]
        self.consecutive_rejects += 1
        if self.consecutive_rejects >= self.config.max_consecutive_rejects:
            self.close_reason = "too_many_rejects"

    def _on_frame(self, frame: Frame, now: datetime, events: list[Event]) -> None:
        fragment = False
        try:
            packet = decode_frame(frame, self.config.crc_policy, self.config.keys)
        except SegmentError as error:
            part = self._fragment_or_none(frame)
            if part is None:
                self._reject(events, error, frame.raw, frame=frame)
                return
            packet, fragment = part, True
        except Hj212Error as error:
            self._reject(events, error, frame.raw, frame=frame)
            return
        if not self._bind(packet, frame, events):
            return
        self.consecutive_rejects = 0
        self.last_packet_at = now
        self.version = packet.version
        if packet.split and not fragment and isinstance(packet.data, DataCp) and packet.data.data_time is None:
            fragment = True
        self._dispatch(packet, frame, now, fragment, events)

    def _fragment_or_none(self, frame: Frame) -> Packet | None:
        """A split part whose CP does not parse alone (a factor group cut mid-way)."""
        try:
            packet = parse_segment(frame.segment, tolerances=frame.tolerances, parse_data=False)
        except Hj212Error:
            return None
        return packet if packet.split and packet.pnum and packet.pno else None

    def _bind(self, packet: Packet, frame: Frame, events: list[Event]) -> bool:
        mn = packet.mn
        if not mn:
            return True  # 2025 CN 1001 before activation carries an empty MN
        if self.mn is None:
            self.mn = mn
            events.append(MnBound(mn))
        elif mn != self.mn:
            if self.config.mn_change == "reject":
                self._reject(events, MnMismatch(bound=self.mn, received=mn), frame.raw, packet=packet, frame=frame)
                return False
            events.append(MnChanged(self.mn, mn))
            self.mn = mn
        self.pw = packet.pw if packet.pw is not None else self.pw
        if packet.st and packet.st != "91":
            self.st = packet.st
        return True

    # -- what each packet needs ----------------------------------------------------------------

    def _dispatch(self, packet: Packet, frame: Frame, now: datetime, fragment: bool, events: list[Event]) -> None:
        cn = packet.cn
        if cn in REPLY_CNS:
            self._correlate(packet, now, events)
            events.append(PacketReceived(packet, frame, ack=False))
            return
        if cn in HEARTBEAT_CNS:
            events.append(PacketReceived(packet, frame, ack=False))
            if packet.ack_requested:
                self._reply_heartbeat(packet, events)
            return
        if cn in NOTIFICATION_CNS:
            events.append(PacketReceived(packet, frame, ack=False))
            if packet.ack_requested or cn == Cn.TIME_CALIBRATION_REQUEST:
                events.append(Send(build_notification_reply(packet), Cn.NOTIFICATION_REPLY))
            if cn == Cn.TIME_CALIBRATION_REQUEST and self.config.send_time_after_1013:
                events.extend(self._send_time(packet, now))
            return
        backfill = packet.rf or self._fetch_pending(cn, now)
        # Uploads, answers to our gets, and unknown DAS commands alike: 9014 after storage when
        # asked (HJ 212-2017 §15 recommends acking unknown non-9xxx CNs so the DAS stops retrying).
        ack = wants_answer(packet)
        if (fragment or packet.split) and not self._track_split(packet, frame, now, fragment, events):
            return
        events.append(PacketReceived(packet, frame, ack, backfill, fragment))

    def _reply_heartbeat(self, packet: Packet, events: list[Event]) -> None:
        choice = self.config.heartbeat_reply_per_mn.get(packet.mn or "", self.config.heartbeat_reply)
        if choice != "none":
            events.append(Send(build_reply(packet, choice), choice))

    def _send_time(self, packet: Packet, now: datetime) -> list[Event]:
        """HJ 212-2017 §9.6: after the 9013, set the DAS clock to the platform's.

        Each retry carries the time it is sent at (same QN), not the first try's.
        """
        target = self.target()
        if target is None:
            return []
        device_tz = self.config.device_tz
        pol_id = packet.data.get("PolId") if packet.data is not None else None
        qn = self.new_qn(now)

        def set_time_at(moment: datetime) -> bytes:
            return build_set_time(target, qn, format_hj_time(moment.astimezone(device_tz)), pol_id)

        return self.send_request(set_time_at(now), qn=qn, cn=Cn.SET_TIME, now=now, refresh=set_time_at)

    def _track_split(self, packet: Packet, frame: Frame, now: datetime, fragment: bool, events: list[Event]) -> bool:
        """False (and a FrameRejected) for a fragment the transfer caps refuse; a standalone part
        with a bad PNUM/PNO still stands alone, it is only not tracked."""
        config = self.config
        if self._splits is None:
            self._splits = SplitTracker(
                timeout_s=config.split_timeout_s,
                max_transfers=config.max_split_groups,
                max_parts=config.max_split_parts,
                max_bytes=config.max_split_bytes,
            )
        try:
            check_part(packet, fragment=fragment, max_parts=config.max_split_parts)
            self._splits.add(packet, now, fragment=fragment)
        except SplitError as error:
            if fragment:
                self._reject(events, error, frame.raw, packet=packet, frame=frame)
                return False
        finally:  # reported now, not at the next poll: a flood would pile them up meanwhile
            events.extend(SplitPartsMissing(*missing) for missing in self._splits.take_evicted())
        return True

    @property
    def split_bytes(self) -> int:
        """Bytes this connection's split tracking accounts for (bounded by `max_split_bytes`)."""
        return self._splits.size if self._splits is not None else 0

    # -- platform requests ---------------------------------------------------------------------

    def target(self) -> Target | None:
        """Header values for requests to this DAS, once its MN is known."""
        if self.mn is None:
            return None
        # Not `self.version or ...`: HJT212_2005 is 0, and a 2005 unit must get 2005 version bits.
        version = ProtocolVersion.HJ212_2017 if self.version is None else self.version
        return Target(self.mn, self.pw or "", self.st or "32", version)

    def new_qn(self, now: datetime) -> str:
        """A fresh 17-digit QN in device time, strictly increasing within this session."""
        qn = format_qn(now.astimezone(self.config.device_tz).replace(tzinfo=None))
        if qn <= self._last_qn:
            qn = str(int(self._last_qn) + 1)
        self._last_qn = qn
        return qn

    def send_request(
        self,
        data: bytes,
        *,
        qn: str,
        cn: str,
        now: datetime,
        over_time_s: float = 10.0,
        re_count: int = 3,
        expects_result: bool = True,
        refresh: Callable[[datetime], bytes] | None = None,
    ) -> list[Event]:
        """Register a request built by a `build_*` function and return the `Send` for it.

        `refresh(now)` rebuilds the frame (same QN) for each retry of a request whose content
        is a time; without it a retry repeats `data`.

        With `max_pending_requests` already awaiting their answer (a DAS that floods 1013, each
        answered with a 1012, or one that never answers), the request is not sent and fails at
        once: `RequestFailed(reason="too_many_pending")`.
        """
        if len(self._pending) >= self.config.max_pending_requests and qn not in self._pending:
            return [RequestFailed(qn, cn, "too_many_pending")]
        if self._pending is _NO_PENDING:
            self._pending = {}
        self._pending[qn] = PendingRequest(
            qn,
            cn,
            data,
            over_time_s,
            re_count,
            now + timedelta(seconds=over_time_s),
            expects_result=expects_result,
            refresh=refresh,
        )
        return [Send(data, cn)]

    def pending_requests(self) -> list[tuple[str, str]]:
        return [(p.qn, p.cn) for p in self._pending.values()]

    def _fetch_pending(self, cn: str, now: datetime) -> bool:
        """True if a fetch of `cn` was acknowledged; its data keeps the fetch alive (§9.1)."""
        if not self._pending:
            return False  # the usual case, checked for every data packet
        found = False
        for pending in list(self._pending.values()):
            if pending.cn == cn:
                found |= RequestAction.EXTEND in self._step(pending, RequestInput.DATA, now, [])
        return found

    def _correlate(self, packet: Packet, now: datetime, events: list[Event]) -> None:
        data = packet.data
        qn = packet.qn or (getattr(data, "qn", None) if data is not None else None)
        pending = self._pending.get(qn) if qn else None
        if pending is None:
            return
        if isinstance(data, RequestReplyCp):
            self._step(pending, reply_input(pending, data.qn_rtn), now, events, data.qn_rtn)
        elif isinstance(data, ExecutionResultCp):
            self._step(pending, RequestInput.RESULT, now, events, data.exe_rtn)
        elif packet.cn == Cn.NOTIFICATION_REPLY and not pending.expects_result:
            # A notification we sent (2012, 2022) is answered with 9013 alone (§9.1): done.
            self._step(pending, RequestInput.ACCEPTED_FINAL, now, events, QnRtn.READY)

    def _step(
        self, pending: PendingRequest, given: RequestInput, now: datetime, events: list[Event], code: int | None = None
    ) -> tuple[RequestAction, ...]:
        """One row of the request table (protocol/requests.py), its actions turned into events.

        `code` is the QnRtn of a 9011 or the ExeRtn of a 9012.
        """
        actions = step(pending, given, now)
        for action in actions:
            if action is RequestAction.ACKNOWLEDGE:
                events.append(RequestAcknowledged(pending.qn, pending.cn, code))
            elif action is RequestAction.FINISH:
                events.append(RequestFinished(pending.qn, pending.cn, code))
            elif action is RequestAction.RESEND:
                events.append(Send(pending.data, pending.cn))
            elif action in _FAILURE_REASONS:
                events.append(RequestFailed(pending.qn, pending.cn, _FAILURE_REASONS[action]))
        if pending.state is RequestState.DONE:
            del self._pending[pending.qn]
        return actions

    # -- timers --------------------------------------------------------------------------------

    def poll(self, now: datetime) -> list[Event]:
        """Retries, failed requests and overdue split parts as of `now`."""
        if not self._pending and self._splits is None:
            return []  # the usual case, checked for every connection every second
        events: list[Event] = []
        for pending in list(self._pending.values()):
            if now >= pending.deadline:
                self._step(pending, overtime_input(pending), now, events)
        for mn, cn, data_time, missing in self._splits.expire(now) if self._splits is not None else ():
            events.append(SplitPartsMissing(mn, cn, data_time, missing))
        return events
