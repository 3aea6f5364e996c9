"""`DasConnection`: one DAS on one TCP socket, the one place where bad input meets its policy.

It feeds bytes to its `DasSession`, hands each packet to ingest in one call (`Intake.submit_packet`)
and writes the 9014 when the packet's batch has committed. What it needs from the listener that
accepted it is the `ConnectionHost` interface below; it never imports the listener. Flow control
(read holds, the queue share, retiring, a peer that does not read) is its base class,
`flow.SocketFlow`.

The policy for what a DAS sends, all applied in `_on_event` and the methods it calls:

    input                                 counted, logged                   stored        answer              then
    good packet, registry says store      frames{ok}                        rows + frame  9014 after COMMIT   -
    good packet, quarantined or no MN     frames{ok}                        frame         9014 after COMMIT   -
    a new MN (trust on first use)         held until PostgreSQL pins its PW, then as above; pin failed: close
    a frame the session rejects           frames_rejected{reason}, WARNING  frame         9011 (its QnRtn)    close: Nth
    wrong PW, PW not registered           + auth_failures{reason}           frame         9011 after backoff  close
    unknown MN (reject), device rejected  frames_rejected{reason}, WARNING  frame         9011                close
    too many MNs, an MN moved too soon    frames_rejected{reason}, WARNING  frame         9011 / none         close
    no valid packet in time, silence      connections_closed{reason}        -             -                   timer

Nth: `max_consecutive_rejects` in a row; timer: the listener closes at `first_packet_timeout_s` or
`idle_timeout_s`. A 9xxx packet never gets a 9011 (`models.wants_answer`). Refused rows that
PostgreSQL archived as evidence are acked too (a resend could never succeed); any other failure
gets no ack.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, cast

import structlog

from hj212gw.ingest.intake import Intake
from hj212gw.ingest.items import WriterClosed, evidence_kept
from hj212gw.metrics import Metrics, cn_label
from hj212gw.protocol.builders import build_data_ack, build_request_reply
from hj212gw.protocol.constants import ExeRtn, QnRtn
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.framing import Frame
from hj212gw.protocol.models import Packet, wants_answer
from hj212gw.protocol.session import (
    DasSession,
    FrameRejected,
    PacketReceived,
    RequestAcknowledged,
    RequestFailed,
    RequestFinished,
    Send,
    SessionConfig,
    SplitPartsMissing,
)
from hj212gw.server.admission import ReadAdmission
from hj212gw.server.flow import ReadHold, SocketFlow, mask_pw
from hj212gw.server.live import LiveDevice
from hj212gw.server.registry import AUTH_FAILURES, Admission, DeviceRegistry, RefusedByPolicy
from hj212gw.settings import Settings

__all__ = ["ConnectionHost", "DasConnection", "Deps", "ReadHold", "RefusedByPolicy", "mask_pw"]


_LOG = structlog.get_logger("hj212gw.server")
# A connection records its device's sighting (devices.last_seen, peer, version; the side writes
# flush them about once a second) with its first packet and then at most this often: one
# devices row update per packet cost PostgreSQL as much as the raw archive row. The live state
# (GET /api/v1/devices/{mn}) is exact regardless.
SIGHTING_INTERVAL_S = 10.0


class ConnectionHost(Protocol):
    """What a connection asks of the listener that accepted it (`listener.Gateway` implements it)."""

    def admit_connection(self, conn: "DasConnection") -> str | None:
        """None to accept, or the refusal reason."""
        ...

    def next_connection_id(self) -> int | None: ...
    def record_open(self, conn: "DasConnection") -> None: ...
    def record_close(self, conn: "DasConnection", reason: str) -> None: ...
    def forget(self, conn: "DasConnection") -> bool:
        """Drop `conn` and its MN bindings; False if it was never admitted."""
        ...

    def auth_wait_s(self, conn: "DasConnection") -> float: ...
    def auth_failed(self, conn: "DasConnection", reason: str) -> float: ...
    def pause(self, conn: "DasConnection") -> None:
        """The write queue is full: stop reading every socket until it has room."""
        ...

    def bind_mn(self, conn: "DasConnection", mn: str) -> str | None:
        """Bind `mn` to `conn` (a no-op if it holds it); None, or why it may not."""
        ...

    def pin(self, mn: str, pw: str | None) -> "asyncio.Future[None]":
        """Trust on first use: PostgreSQL decides a new MN's PW."""
        ...

    def command_progress(self, conn: "DasConnection", event: object) -> None:
        """A platform request's 9011/9012/failure, or a packet answering one (the command channel)."""
        ...


@dataclass(slots=True)
class Deps:
    """What every connection shares."""

    settings: Settings
    intake: Intake
    registry: DeviceRegistry
    metrics: Metrics
    session_config: SessionConfig
    host: ConnectionHost
    admission: ReadAdmission


class DasConnection(SocketFlow):
    """One DAS on one TCP connection: feeds bytes to its session, acks after commit."""

    # Thousands of these live at once: slots and no per-connection bound logger keep each small.
    __slots__ = (
        "_seen_at",
        "_seen_mn",
        "connected_at",
        "connection_id",
        "deps",
        "frames_ok",
        "frames_rejected",
        "ip",
        "last_activity",
        "peer",
        "session",
    )

    def __init__(self, deps: Deps) -> None:
        super().__init__(deps.settings, deps.metrics)
        self.deps = deps
        self.session = DasSession(deps.session_config)
        self.peer = "?"
        self.ip = "?"
        self.connection_id: int | None = None
        self.connected_at = datetime.now(UTC)
        self.last_activity = time.monotonic()
        self.frames_ok = 0
        self.frames_rejected = 0
        self._seen_mn: str | None = None  # the last sighting written: MN and perf_counter time
        self._seen_at = 0.0

    @property
    def log(self) -> structlog.stdlib.BoundLogger:
        """A logger bound to this connection's peer, id and MN (built only when something is logged)."""
        context: dict[str, object] = {"peer": self.peer}
        if self.connection_id is not None:
            context["conn"] = self.connection_id
        if self.session.mn is not None:
            context["mn"] = self.session.mn
        return _LOG.bind(**context)  # type: ignore[no-any-return]

    @property
    def mn(self) -> str | None:
        """The MN the session last parsed (None before the first valid packet)."""
        return self.session.mn

    def _not_reading_context(self) -> dict[str, object]:
        return {"mn": self.session.mn}

    # -- lifecycle -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        host = self.deps.host
        refusal = host.admit_connection(self)
        if refusal is not None:
            self.deps.metrics.connections_total.labels(outcome=refusal).inc()
            self.log.warning("das_refused", reason=refusal)
            self.closing_reason = refusal
            self.transport.abort()
            return
        self._limit_send_buffer(self.deps.settings.connections.write_buffer_high_bytes)
        self.connection_id = host.next_connection_id()
        self.deps.metrics.connections_total.labels(outcome="accepted").inc()
        self.deps.metrics.connections_open.inc()
        host.record_open(self)
        self.log.info("das_connected")
        wait_s = host.auth_wait_s(self)
        if wait_s > 0:  # its IP sent wrong PWs lately: read nothing from it until the backoff ends
            self._hold()
            self._loop.call_later(wait_s, self._release)
        if self._holds:
            # uvloop starts reading once connection_made returns, whatever was paused in it (a
            # full write queue, the wrong-PW backoff): pause again before the first read.
            self._loop.call_soon(self._reassert_holds)

    def connection_lost(self, exc: Exception | None) -> None:
        self.parse_deferred()  # what it sent before it went is taken like any other read
        if not self.eof:
            # A last frame without its tail (a reset right after it) is still taken, before the
            # connection is forgotten: its MN is released with the connection, never bound again
            # to it (a closing connection binds nothing: Bindings.bind). Nothing was read from a
            # connection refused at accept, so this finds nothing there.
            self._handle(self.session.end_of_stream(datetime.now(UTC)), time.perf_counter())
        self.closing_reason = self.closing_reason or ("peer_error" if exc else "peer_closed")
        if not self.deps.host.forget(self):
            return  # refused at accept: never counted as open
        self._cancel_stall_timer()
        if self._holds & ReadHold.PEER_NOT_READING:
            self.deps.metrics.write_paused.dec()
        reason = self.closing_reason
        self.deps.metrics.connections_open.dec()
        self.deps.metrics.connections_closed.labels(reason=reason).inc()
        self.log.info(
            "das_disconnected",
            reason=reason,
            mn=self.session.mn,
            frames_ok=self.frames_ok,
            frames_rejected=self.frames_rejected,
        )
        self.deps.host.record_close(self, reason)

    def eof_received(self) -> bool:
        """The DAS half-closed: take a last frame that lacks its tail, then close once its acks are out.

        Returning True keeps our side open, so a DAS that shuts down writing after its last packet
        (or whose last frame is delimited only by the end of the stream) still gets its 9014. What
        the read admission kept is parsed first; if a packet of it now waits (a new MN's pin), the
        end of the stream is handled after it (`_end_of_stream`, from `_release`).
        """
        self.parse_deferred()  # a bug in it is caught and closes the connection, as for any read
        if self._held is not None:
            self._eof_waiting = True
            return True
        self._end_of_stream()
        return True

    def _end_of_stream(self) -> None:
        self.eof = True
        try:
            self._handle(self.session.end_of_stream(datetime.now(UTC)), time.perf_counter())
        except Exception:
            self.log.exception("connection_bug", mn=self.session.mn)
            self.close("internal_error")
            return
        self._close_when_confirmed()

    # -- input ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        deps = self.deps
        deps.metrics.received(len(data))
        admission = deps.admission
        if admission.behind:
            if self._defer(data):
                admission.defer(self, busy=self._share.items > 0)
        else:
            self._read(data)

    def _parse(self, data: bytes | memoryview) -> bool:
        """Feed the session and handle its events; False if a bug closed the connection."""
        try:
            events = self.session.receive_data(data, datetime.now(UTC))
            self._handle(events, time.perf_counter())
        except Exception:
            # A bug, not bad input (the session turns all bad input into events): close only this one.
            self.log.exception("connection_bug", mn=self.session.mn)
            self.close("internal_error")
            return False
        return True

    def _after_input(self) -> None:
        if self.session.should_close:
            self.close(self.session.close_reason or "session")
        elif self.deps.intake.full and self.transport is not None:  # held or not: every socket pauses
            self.deps.host.pause(self)

    def poll(self, now: datetime) -> None:
        """Timers: request retries, split timeouts (called by the listener's ticker)."""
        self._handle(self.session.poll(now), time.perf_counter())

    def send_command(
        self,
        data: bytes,
        *,
        qn: str,
        cn: str,
        over_time_s: float,
        re_count: int,
        expects_result: bool,
        refresh: Callable[[datetime], bytes] | None = None,
    ) -> None:
        """Send a platform request built for this connection's session; it is retried per
        OverTime/ReCount, and its 9011/9012 (or failure) reach `host.command_progress`."""
        events = self.session.send_request(
            data, qn=qn, cn=cn, now=datetime.now(UTC), over_time_s=over_time_s, re_count=re_count,
            expects_result=expects_result, refresh=refresh,
        )  # fmt: skip
        self._handle(events, time.perf_counter())

    def _pin_done(self, future: "asyncio.Future[None]") -> None:
        if future.cancelled() or future.exception() is not None:
            self.close("pin_failed")  # no ack was sent: the DAS sends the data again later
        else:
            self._release()

    # -- policy --------------------------------------------------------------------------------

    def _on_event(self, event: object, arrived: float) -> None:
        metrics = self.deps.metrics
        match event:
            case PacketReceived(packet=packet, frame=frame, ack=ack, backfill=backfill, fragment=fragment):
                self._on_packet(packet, frame, ack=ack, backfill=backfill, fragment=fragment, arrived=arrived)
                if backfill:  # RF=1, or the answer to a fetch or get: maybe a command's
                    self.deps.host.command_progress(self, event)
            case FrameRejected(error=error, raw_head=raw, packet=packet, frame=frame):
                self._reject(error, raw, packet, frame)
            case Send(data=data, cn=cn):
                self._write(data)
                metrics.replies.labels(cn=cn_label(cn)).inc()
            case RequestAcknowledged(cn=cn, qn_rtn=qn_rtn):
                outcome = "acknowledged" if qn_rtn == QnRtn.READY else "refused"
                metrics.requests.labels(cn=cn_label(cn), outcome=outcome).inc()
                self.deps.host.command_progress(self, event)
            case RequestFinished(cn=cn, exe_rtn=exe_rtn):
                outcome = f"exe_{exe_rtn}" if exe_rtn in (ExeRtn.SUCCESS, ExeRtn.NO_DATA) else "failed"
                metrics.requests.labels(cn=cn_label(cn), outcome=outcome).inc()
                self.deps.host.command_progress(self, event)
            case RequestFailed(qn=qn, cn=cn, reason=reason):
                metrics.requests.labels(cn=cn_label(cn), outcome=reason).inc()
                self.log.warning("request_failed", qn=qn, cn=cn, reason=reason)
                self.deps.host.command_progress(self, event)
            case SplitPartsMissing(cn=cn, data_time=data_time, missing=missing):
                metrics.split_missing.inc(len(missing))
                self.log.warning("split_parts_missing", cn=cn, data_time=data_time, missing=list(missing))
            # MnBound / MnChanged: the listener learns an MN only once a packet passes the registry
            # (_on_packet), so a wrong PW never closes the device's live connection as "replaced";
            # it logs each MN a connection adds (das_mn_added) and each move (mn_moved).

    def _on_packet(
        self, packet: Packet, frame: Frame, *, ack: bool, backfill: bool, fragment: bool, arrived: float
    ) -> None:
        deps = self.deps
        admission = deps.registry.admit(packet.mn, packet.pw)
        if admission.action == "pin":  # a new MN: PostgreSQL decides its PW before anything else
            self._hold()
            self._held = [(PacketReceived(packet, frame, ack, backfill, fragment), arrived)]
            deps.host.pin(packet.mn or "", packet.pw).add_done_callback(self._pin_done)
            return
        if admission.action == "refuse":
            self._refuse(admission.reason or "refused", packet, frame)
            return
        if packet.mn and (refusal := deps.host.bind_mn(self, packet.mn)) is not None:
            self._refuse(refusal, packet, frame)
            return
        self.frames_ok += 1
        deps.metrics.frame_ok(packet.cn)
        for tolerance in packet.tolerances:
            deps.metrics.tolerances.labels(tolerance=tolerance).inc()
        self._submit_packet(packet, frame, admission, ack=ack, backfill=backfill, fragment=fragment, arrived=arrived)

    def _submit_packet(
        self, packet: Packet, frame: Frame, admission: Admission, *, ack: bool, backfill: bool, fragment: bool,
        arrived: float,
    ) -> None:  # fmt: skip
        """Hand an admitted packet to ingest; its 9014 goes out when its rows are committed."""
        sighting = None
        if packet.mn != self._seen_mn or arrived - self._seen_at >= SIGHTING_INTERVAL_S:
            sighting = "quarantined" if admission.reason == "quarantined" else "accepted"
        store = admission.action == "store"

        def done(error: BaseException | None) -> None:
            if ack and evidence_kept(error):  # a refused packet's raw frame is archived: acked too
                self._ack(packet, arrived)
            else:
                self._stored(error)

        try:
            seen_mn = self.deps.intake.submit_packet(
                packet, frame, store=store, fragment=fragment, backfill=backfill, sighting=sighting,
                connection_id=self.connection_id, peer=self.peer, share=self._share, on_done=done,
            )  # fmt: skip
        except WriterClosed:
            return  # shutting down: no ack, the DAS sends it again
        if seen_mn is not None:
            self._seen_mn, self._seen_at = seen_mn, arrived
            if store:
                self.deps.registry.remember(seen_mn)
        self._check_share()

    def _refuse(self, reason: str, packet: Packet, frame: Frame) -> None:
        """A packet the registry or the MN bindings refuse: archived, counted, logged, then closed.

        A wrong PW waits out its IP's backoff first, reading nothing more, and only then gets its
        9011 (QnRtn=3) and the close: a guesser learns nothing sooner. A move refused as too soon
        gets no answer (the DAS keeps the data and sends it again later).
        """
        error = RefusedByPolicy(reason)
        if reason in AUTH_FAILURES:
            delay_s = self.deps.host.auth_failed(self, reason)
            self._reject(error, frame.raw, packet, frame, answer=False, delay_s=round(delay_s, 3))
            self._hold()  # never released: what else this connection sent is dropped unacked
            reply = build_request_reply(packet, error.qn_rtn) if wants_answer(packet) else None
            self._event_loop().call_later(delay_s, self._answer_and_close, reply, reason)
            return
        self._reject(error, frame.raw, packet, frame, answer=reason != "mn_move_rate_limited")
        self.close(reason)

    def _answer_and_close(self, reply: bytes | None, reason: str) -> None:
        if reply is not None:
            self._write(reply)
        self.close(reason)

    def _ack(self, packet: Packet, arrived: float) -> None:
        """The packet's rows are committed: its 9014, then the same bookkeeping as `_stored`.

        The writer confirms a whole batch in one go; acks for this connection in that round are
        collected and written once, right after it (one send() instead of one per packet).
        """
        if self.transport is not None and not self.transport.is_closing():
            self._queue_ack(build_data_ack(packet))
            self.deps.metrics.data_acked(time.perf_counter() - arrived)
        self._stored(None)

    def _reject(
        self,
        error: Hj212Error,
        raw: bytes,
        packet: Packet | None,
        frame: Frame | None,
        *,
        answer: bool = True,
        **context: object,
    ) -> None:
        """The policy for bad input: a metric, one WARNING, the raw archive, 9011 if it was a request
        (unless `answer` is false: the caller answers, or not at all). `context`: more log fields."""
        self.frames_rejected += 1
        reason = error.reason
        self.deps.metrics.frames_rejected.labels(reason=reason).inc()
        self.deps.metrics.frames.labels(cn=cn_label(packet.cn if packet else None), result="rejected").inc()
        self.log.warning(
            "frame_rejected",
            reason=reason,
            detail=str(error)[:200],
            mn=self.session.mn,
            raw=mask_pw(raw[:120]).decode("latin-1"),
            **context,
        )
        # Every reject is archived, so raw_frames agrees with the metric.
        try:
            self.deps.intake.submit_reject(
                frame, raw, verdict=reason, packet=packet, consumed=getattr(error, "consumed", len(raw)),
                connection_id=self.connection_id, peer=self.peer, share=self._share, on_done=self._stored,
            )  # fmt: skip
        except WriterClosed:
            pass  # shutting down: the frame is not archived
        else:
            self._check_share()
        if answer and packet is not None and wants_answer(packet):
            self._write(build_request_reply(packet, error.qn_rtn))

    def live(self, mn: str) -> LiveDevice:
        """This connection as the holder of `mn` (one of the MNs it carries), for the admin API."""
        version = self.session.version
        return LiveDevice(
            mn=mn,
            peer=self.peer,
            connection_id=self.connection_id,
            connected_at=self.connected_at,
            last_packet_at=self.session.last_packet_at,
            protocol_version=version.label if version is not None else None,
        )
