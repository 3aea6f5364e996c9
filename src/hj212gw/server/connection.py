"""The asyncio shell around the protocol core: accept DAS connections, feed their sessions, store
what they send through the batch writer, ack after commit, and apply the connection policies.

`DasConnection` moves bytes and applies policy for one socket; `Gateway` owns the listening
socket, the shared writer, registry and metrics, the timers, and the shutdown order. The
reject policy lives in one `match` in `DasConnection._on_event`.
"""

import asyncio
import enum
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, cast
from zoneinfo import ZoneInfo

import structlog

from hj212gw.ingest.rows import TimePolicy, data_block, device_seen, frame_row
from hj212gw.ingest.splits import split_part_row
from hj212gw.ingest.writer import BatchWriter, IngestItem, OnDone, QueueShare, WriterClosed, evidence_kept
from hj212gw.logs import WIRE_LOGGER
from hj212gw.metrics import Metrics, cn_label
from hj212gw.protocol.builders import build_data_ack, build_request_reply
from hj212gw.protocol.constants import ExeRtn, QnRtn
from hj212gw.protocol.decoder import CrcPolicy
from hj212gw.protocol.errors import Hj212Error, SessionError
from hj212gw.protocol.framing import Frame, FrameLimits
from hj212gw.protocol.models import Packet, wants_answer
from hj212gw.protocol.session import (
    DasSession,
    Event,
    FrameRejected,
    MnBound,
    MnChanged,
    PacketReceived,
    RequestAcknowledged,
    RequestFailed,
    RequestFinished,
    Send,
    SessionConfig,
    SplitPartsMissing,
)
from hj212gw.server.live import LiveDevice
from hj212gw.server.registry import AUTH_FAILURES, DeviceRegistry
from hj212gw.settings import Settings

if TYPE_CHECKING:
    from hj212gw.server.listener import Gateway


class RefusedByPolicy(SessionError):
    """The device registry refuses this packet (unknown MN under `reject`, wrong PW, disabled), or
    the gateway does not bind its MN here (too many MNs on the connection, a move too soon)."""

    _QN_RTN: ClassVar[Mapping[str, QnRtn]] = {
        "wrong_pw": QnRtn.PW_ERROR,
        "pw_not_registered": QnRtn.PW_ERROR,
        "unknown_mn": QnRtn.MN_ERROR,
        "device_rejected": QnRtn.REJECTED,
    }

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused by device policy: {reason}")
        self.policy_reason = reason

    @property
    def reason(self) -> str:  # type: ignore[override]  # per instance: the policy that refused
        return self.policy_reason

    @property
    def qn_rtn(self) -> QnRtn:  # type: ignore[override]
        return self._QN_RTN.get(self.policy_reason, QnRtn.REJECTED)


_PW_FIELD = re.compile(rb"PW=[^;&]*")


def mask_pw(raw: bytes) -> bytes:
    """The bytes with the access password replaced by `***`: a PW is a secret and never logged."""
    return _PW_FIELD.sub(b"PW=***", raw)


_LOG = structlog.get_logger("hj212gw.server")
# A connection records its device's sighting (devices.last_seen, peer, version; the gateway
# writes them about once a second) with its first packet and then at most this often: one
# devices row update per packet cost PostgreSQL as much as the raw archive row. The live state
# (GET /api/v1/devices/{mn}) is exact regardless.
SIGHTING_INTERVAL_S = 10.0


class ReadHold(enum.IntFlag):
    """Why a socket is not being read. It reads again only when every hold is released: the write
    queue finding room must not resume a socket whose peer does not read, and the reverse."""

    WRITE_QUEUE = 1  # the batch writer is full (Gateway.pause / _resume_when_room)
    PEER_NOT_READING = 2  # our outgoing buffer is over connections.write_buffer_high_bytes
    RETIRING = 4  # replaced by a newer connection: closing once its acks are out
    EVENTS = 8  # events held: a new MN's pin, the source IP's wrong-PW backoff, a wrong PW's close
    QUEUE_SHARE = 16  # events held: this connection's share of the write queue is full


# Holds under which what was read waits unhandled (events parsed, bytes not parsed yet).
_EVENT_HOLDS = ReadHold.EVENTS | ReadHold.QUEUE_SHARE
# A read longer than this (a burst: a flood, or a backlog after a pause; one read takes up to
# 256 KiB) is parsed a slice at a time, so a connection whose queue share fills keeps the rest as
# bytes, not as thousands of parsed packets.
_SLICE_BYTES = 4096


@dataclass(slots=True)
class Deps:
    """What every connection shares."""

    settings: Settings
    writer: BatchWriter
    registry: DeviceRegistry
    metrics: Metrics
    session_config: SessionConfig
    time_policy: TimePolicy
    gateway: "Gateway"


class DasConnection(asyncio.Protocol):
    """One DAS on one TCP connection: feeds bytes to its session, acks after commit."""

    # Thousands of these live at once: slots and no per-connection bound logger keep each small.
    __slots__ = (
        "_acks",
        "_held",
        "_holds",
        "_loop",
        "_seen_at",
        "_seen_mn",
        "_share",
        "_stall_timer",
        "_unread",
        "closing_reason",
        "connected_at",
        "connection_id",
        "deps",
        "eof",
        "frames_ok",
        "frames_rejected",
        "ip",
        "last_activity",
        "peer",
        "retiring",
        "session",
        "transport",
    )

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.session = DasSession(deps.session_config)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.ip = "?"
        self.connection_id: int | None = None
        self.connected_at = datetime.now(UTC)
        self.last_activity = time.monotonic()
        self.frames_ok = 0
        self.frames_rejected = 0
        self.closing_reason: str | None = None
        self.eof = False
        limits = deps.settings.connections
        # Items submitted and not yet committed (or failed), counted by the writer; when full, this
        # socket alone is not read until half of them are confirmed: a flood delays only itself.
        self._share = QueueShare(limits.max_unconfirmed_items, limits.max_unconfirmed_bytes)
        self._unread: memoryview | None = None  # the rest of a burst, while events are held
        self._seen_mn: str | None = None  # the last sighting written: MN and perf_counter time
        self._seen_at = 0.0
        self._acks: list[bytes] | None = None  # 9014s of one commit round, sent together
        self._loop: asyncio.AbstractEventLoop | None = None  # get_running_loop() costs a getpid()
        # Events waiting while reading is held: for a new MN's pin, for the source IP's wrong-PW
        # backoff, or (never released) after a wrong PW until the connection closes.
        self._held: list[tuple[Event, float]] | None = None
        self._holds = ReadHold(0)
        self._stall_timer: asyncio.TimerHandle | None = None  # aborts a peer that stopped reading
        self.retiring = False

    @property
    def log(self) -> structlog.stdlib.BoundLogger:
        """A logger bound to this connection's peer, id and MN (built only when something is logged)."""
        context: dict[str, object] = {"peer": self.peer}
        if self.connection_id is not None:
            context["conn"] = self.connection_id
        if self.session.mn is not None:
            context["mn"] = self.session.mn
        return _LOG.bind(**context)  # type: ignore[no-any-return]

    # -- lifecycle -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        gateway = self.deps.gateway
        refusal = gateway.admit_connection(self)
        if refusal is not None:
            self.deps.metrics.connections_total.labels(outcome=refusal).inc()
            self.log.warning("das_refused", reason=refusal)
            self.closing_reason = refusal
            self.transport.abort()
            return
        high = self.deps.settings.connections.write_buffer_high_bytes
        self.transport.set_write_buffer_limits(high=high)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # The kernel's send buffer holds replies too, autotuned up to megabytes: a peer that
            # does not read would fill it before pause_writing is ever called. A DAS reads a few
            # hundred bytes of acks at a time; the high mark is plenty.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, high)
        self.connection_id = gateway.next_connection_id()
        self.deps.metrics.connections_total.labels(outcome="accepted").inc()
        self.deps.metrics.connections_open.inc()
        gateway.record_open(self)
        self.log.info("das_connected")
        wait_s = gateway.auth_wait_s(self)
        if wait_s > 0:  # its IP sent wrong PWs lately: read nothing from it until the backoff ends
            self._hold()
            self._loop.call_later(wait_s, self._release)
        if self._holds:
            # uvloop starts reading once connection_made returns, whatever was paused in it (a
            # full write queue, the wrong-PW backoff): pause again before the first read.
            self._loop.call_soon(self._reassert_holds)

    def connection_lost(self, exc: Exception | None) -> None:
        gateway = self.deps.gateway
        if not gateway.forget(self):
            return  # refused at accept: never counted as open
        self._cancel_stall_timer()
        if self._holds & ReadHold.PEER_NOT_READING:
            self.deps.metrics.write_paused.dec()
        if not self.eof:
            self._handle(self.session.end_of_stream(datetime.now(UTC)), time.perf_counter())
        reason = self.closing_reason or ("peer_error" if exc else "peer_closed")
        self.deps.metrics.connections_open.dec()
        self.deps.metrics.connections_closed.labels(reason=reason).inc()
        self.log.info(
            "das_disconnected",
            reason=reason,
            mn=self.session.mn,
            frames_ok=self.frames_ok,
            frames_rejected=self.frames_rejected,
        )
        gateway.record_close(self, reason)

    def eof_received(self) -> bool:
        """The DAS half-closed: take a last frame that lacks its tail, then close once its acks are out.

        Returning True keeps our side open, so a DAS that shuts down writing after its last packet
        (or whose last frame is delimited only by the end of the stream) still gets its 9014.
        """
        self.eof = True
        try:
            self._handle(self.session.end_of_stream(datetime.now(UTC)), time.perf_counter())
        except Exception:
            self.log.exception("connection_bug", mn=self.session.mn)
            self.close("internal_error")
            return True
        self._close_when_confirmed()
        return True

    @property
    def gone(self) -> bool:
        """Closed, closing or retiring: no longer the live connection of its MNs."""
        return self.transport is None or self.transport.is_closing() or self.retiring

    def _close_when_confirmed(self) -> None:
        if (self.eof or self.retiring) and not self._share.items:
            self.close(self.closing_reason or "peer_closed")

    def retire(self, reason: str, grace_s: float) -> None:
        """Stop reading, send the acks of what is already queued, then close (at most `grace_s`).

        Used when a newer connection takes over this MN (HJ 212-2017 §15): the old socket's
        pending acks still go out, so the DAS need not resend data that was stored.
        """
        if self.transport is None or self.transport.is_closing():
            return
        self.retiring = True
        self.closing_reason = self.closing_reason or reason
        self.hold_reading(ReadHold.RETIRING)
        asyncio.get_running_loop().call_later(grace_s, self.close, reason)
        self._close_when_confirmed()

    def close(self, reason: str) -> None:
        """Close by policy; the reason is what the disconnect line and metric say."""
        self._send_acks()  # acks for committed data go out before the close
        if self.closing_reason is None:
            self.closing_reason = reason
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            # close() waits for the outgoing buffer to drain: a peer that never reads would keep
            # the socket (and the buffer) forever.
            if transport.get_write_buffer_size() and self._stall_timer is None:
                self._stall_timer = self._event_loop().call_later(
                    self.deps.settings.connections.write_stall_timeout_s, self._abort_not_reading
                )

    # -- flow control --------------------------------------------------------------------------

    def hold_reading(self, hold: ReadHold) -> None:
        """Stop reading this socket for `hold` (it reads again once every hold is released)."""
        if not self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._holds |= hold

    def release_reading(self, hold: ReadHold) -> None:
        """Release `hold`; the socket reads again only if no other hold remains."""
        if not self._holds & hold:
            return
        self._holds &= ~hold
        if not self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _reassert_holds(self) -> None:
        if self._holds and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        """The outgoing buffer passed `write_buffer_high_bytes`: the peer reads slower than we answer.

        Stop reading it (its packets are what make our replies) until it drains; a peer still
        stalled after `write_stall_timeout_s`, or whose buffer passes `max_write_buffer_bytes`
        (acks of what it sent before the pause), is aborted as `not_reading`.
        """
        if self._holds & ReadHold.PEER_NOT_READING:
            return
        self.hold_reading(ReadHold.PEER_NOT_READING)
        self.deps.metrics.write_paused.inc()
        if self._stall_timer is None:
            self._stall_timer = self._event_loop().call_later(
                self.deps.settings.connections.write_stall_timeout_s, self._abort_not_reading
            )

    def resume_writing(self) -> None:
        """The outgoing buffer drained below the low mark: read the peer again (unless held otherwise)."""
        if not self._holds & ReadHold.PEER_NOT_READING:
            return
        self.deps.metrics.write_paused.dec()
        self._cancel_stall_timer()
        self.release_reading(ReadHold.PEER_NOT_READING)

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _abort_not_reading(self) -> None:
        """Drop a peer that does not read. Its buffered acks are lost, not its data: what they
        confirm is committed, and the DAS sends it again (storing a resend is idempotent)."""
        self._stall_timer = None
        transport = self.transport
        if transport is None or self.closing_reason == "not_reading":
            return
        self.log.warning(
            "das_not_reading",
            unsent_bytes=transport.get_write_buffer_size(),
            unsent_acks=len(self._acks or ()),
            unconfirmed=self._share.items,
            mn=self.session.mn,
        )
        self._acks = None
        self.closing_reason = "not_reading"
        transport.abort()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    # -- input ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.deps.metrics.received(len(data))
        if len(data) > _SLICE_BYTES:
            self._unread = memoryview(data)
            self._read_unread()
        elif self._parse(data):
            self._after_input()

    def _read_unread(self) -> None:
        """Parse the rest of a burst a slice at a time, until it is done or events are held."""
        while self._unread is not None and self._held is None:
            chunk = self._unread[:_SLICE_BYTES]
            self._unread = self._unread[_SLICE_BYTES:] or None
            if not self._parse(chunk):
                return
        self._after_input()

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
        elif self.deps.writer.full and self.transport is not None:  # held or not: every socket pauses
            self.deps.gateway.pause(self)

    def poll(self, now: datetime) -> None:
        """Timers: request retries, split timeouts (called by the gateway's ticker)."""
        self._handle(self.session.poll(now), time.perf_counter())

    def _handle(self, events: list[Event], arrived: float) -> None:
        for event in events:
            if self._held is None:
                self._on_event(event, arrived)
            else:
                self._held.append((event, arrived))

    def _hold(self, hold: ReadHold = ReadHold.EVENTS) -> None:
        """Stop reading; events already read (and the rest of a burst) wait in order until `_release`."""
        if self._held is None:
            self._held = []
        self.hold_reading(hold)

    def _release(self, hold: ReadHold = ReadHold.EVENTS) -> None:
        """Release `hold`; unless another hold keeps them waiting, handle the held events and the
        rest of the burst (one may hold again: the rest waits on), then read again."""
        transport = self.transport
        if transport is None or transport.is_closing() or not self._holds & hold:
            return
        self._holds &= ~hold  # reading stays paused while the held events are handled
        if not self._holds & _EVENT_HOLDS:
            held, self._held = self._held or [], None
            for event, arrived in held:
                self._handle([event], arrived)
            self._read_unread()
        if not self._holds and not transport.is_closing():
            transport.resume_reading()

    def _pin_done(self, future: "asyncio.Future[None]") -> None:
        if future.cancelled() or future.exception() is not None:
            self.close("pin_failed")  # no ack was sent: the DAS sends the data again later
        else:
            self._release()

    def _on_event(self, event: object, arrived: float) -> None:
        metrics = self.deps.metrics
        match event:
            case PacketReceived(packet=packet, frame=frame, ack=ack, backfill=backfill, fragment=fragment):
                self._on_packet(packet, frame, ack=ack, backfill=backfill, fragment=fragment, arrived=arrived)
            case FrameRejected(error=error, raw_head=raw, packet=packet, frame=frame):
                self._reject(error, raw, packet, frame)
            case Send(data=data, cn=cn):
                self._write(data)
                metrics.replies.labels(cn=cn_label(cn)).inc()
            case MnBound():
                # The gateway learns the MN only once a packet passes the registry (_on_packet):
                # a wrong PW must not close the device's live connection as "replaced". Log lines
                # carry the MN from the session from now on.
                pass
            case MnChanged():
                # One connection may carry several MNs (a DAS serving several monitoring points):
                # the gateway logs each MN a connection adds (das_mn_added) and each move between
                # connections (mn_moved), not every switch between them.
                pass
            case RequestAcknowledged(cn=cn, qn_rtn=qn_rtn):
                metrics.requests.labels(
                    cn=cn_label(cn), outcome="acknowledged" if qn_rtn == QnRtn.READY else "refused"
                ).inc()
            case RequestFinished(cn=cn, exe_rtn=exe_rtn):
                metrics.requests.labels(
                    cn=cn_label(cn),
                    outcome=f"exe_{exe_rtn}" if exe_rtn in (ExeRtn.SUCCESS, ExeRtn.NO_DATA) else "failed",
                ).inc()
            case RequestFailed(qn=qn, cn=cn, reason=reason):
                metrics.requests.labels(cn=cn_label(cn), outcome=reason).inc()
                self.log.warning("request_failed", qn=qn, cn=cn, reason=reason)
            case SplitPartsMissing(cn=cn, data_time=data_time, missing=missing):
                metrics.split_missing.inc(len(missing))
                self.log.warning("split_parts_missing", cn=cn, data_time=data_time, missing=list(missing))

    def _on_packet(
        self, packet: Packet, frame: Frame, *, ack: bool, backfill: bool, fragment: bool, arrived: float
    ) -> None:
        deps = self.deps
        admission = deps.registry.admit(packet.mn, packet.pw)
        if admission.action == "pin":  # a new MN: PostgreSQL decides its PW before anything else
            self._hold()
            self._held = [(PacketReceived(packet, frame, ack, backfill, fragment), arrived)]
            deps.gateway.pinner.pin(packet.mn or "", packet.pw).add_done_callback(self._pin_done)
            return
        if admission.action == "refuse":
            self._refuse(admission.reason or "refused", packet, frame)
            return
        mn = packet.mn
        if mn and deps.gateway.by_mn.get(mn) is not self:
            refusal = deps.gateway.bind_mn(self, mn)
            if refusal is not None:
                self._refuse(refusal, packet, frame)
                return
        self.frames_ok += 1
        deps.metrics.frame_ok(packet.cn)
        for tolerance in packet.tolerances:
            deps.metrics.tolerances.labels(tolerance=tolerance).inc()
        now = datetime.now(UTC)
        data = None
        if admission.action == "store" and not fragment:
            data = data_block(packet, now, deps.time_policy, resend=backfill)
            if data is not None and data.time_suspect:
                deps.metrics.data_time_suspect.inc()
        if packet.mn != self._seen_mn or arrived - self._seen_at >= SIGHTING_INTERVAL_S:
            status = "quarantined" if admission.reason == "quarantined" else "accepted"
            seen = device_seen(packet, self.peer, now, status=status)
            if seen is not None:
                self._seen_mn, self._seen_at = seen.mn, arrived
                deps.gateway.record_sighting(seen)
                if admission.action == "store":
                    deps.registry.remember(seen.mn)
        item = IngestItem(
            data=data,
            frame_rows=(
                frame_row(frame, now, verdict="ok", connection_id=self.connection_id, peer=self.peer, packet=packet),
            ),
        )
        if admission.action == "store" and (fragment or (packet.split and data is not None)):
            self._submit_split_part(packet, item, ack=ack, fragment=fragment, backfill=backfill, arrived=arrived)
        elif ack:
            self._submit(item, lambda e: self._ack(packet, arrived) if e is None else self._refused(e, packet, arrived))
        else:
            self._submit(item, self._stored)

    def _submit_split_part(
        self, packet: Packet, item: IngestItem, *, ack: bool, fragment: bool, backfill: bool, arrived: float
    ) -> None:
        """A split part commits with its `split_parts` row; the gateway's sweep assembles its transfer."""
        received_at = item.frame_rows[0].received_at
        row = split_part_row(
            packet, fragment=fragment, backfill=backfill, received_at=received_at, connection_id=self.connection_id
        )
        splits = self.deps.gateway.splits

        def done(error: BaseException | None) -> None:
            if error is None and row is not None:
                splits.stored(row.key)
            if ack and evidence_kept(error):  # a refused part's raw frame is archived: acked too
                self._ack(packet, arrived)
            else:
                self._stored(error)

        self._submit(item if row is None else item._replace(split_parts=(row,)), done)

    def _refuse(self, reason: str, packet: Packet, frame: Frame) -> None:
        """A packet the registry or the MN bindings refuse: archived, counted, logged, then closed.

        A wrong PW waits out its IP's backoff first, reading nothing more, and only then gets its
        9011 (QnRtn=3) and the close: a guesser learns nothing sooner. A move refused as too soon
        gets no answer (the DAS keeps the data and sends it again later).
        """
        error = RefusedByPolicy(reason)
        if reason in AUTH_FAILURES:
            delay_s = self.deps.gateway.auth_failed(self, reason)
            self._reject(error, frame.raw, packet, frame, answer=False, delay_s=round(delay_s, 3))
            self._hold()  # never released: what else this connection sent is dropped unacked
            reply = build_request_reply(packet, error.qn_rtn) if wants_answer(packet) else None
            (self._loop or asyncio.get_running_loop()).call_later(delay_s, self._answer_and_close, reply, reason)
            return
        self._reject(error, frame.raw, packet, frame, answer=reason != "mn_move_rate_limited")
        self.close(reason)

    def _answer_and_close(self, reply: bytes | None, reason: str) -> None:
        if reply is not None:
            self._write(reply)
        self.close(reason)

    def _submit(self, item: IngestItem, on_done: OnDone) -> None:
        """Hand an item to the writer; `on_done` must end in `_stored`. A full share holds the rest."""
        share = self._share
        try:
            self.deps.writer.submit(item, on_done, share)
        except WriterClosed:
            return  # shutting down: no ack, the DAS sends it again
        if share.full and not self._holds & ReadHold.QUEUE_SHARE:
            limit = "items" if share.items >= share.max_items else "bytes"
            self.deps.metrics.queue_share_pauses.labels(limit=limit).inc()
            self._hold(ReadHold.QUEUE_SHARE)

    def _stored(self, error: BaseException | None) -> None:
        """An item's batch committed (error None) or never will: one fewer to wait for before closing.

        A refused item (ItemRejected) is logged once, by the writer, with its MN and the error.
        """
        if self._held is not None and self._share.has_room:
            self._release(ReadHold.QUEUE_SHARE)  # a no-op unless the share's hold is on
        self._close_when_confirmed()

    def _refused(self, error: BaseException, packet: Packet, arrived: float) -> None:
        """The packet was not stored as data. Acked all the same (9014) when PostgreSQL refused its
        rows and its raw frame was archived instead (verdict `refused_by_database:<SQLSTATE>`):
        a resend could never succeed, and the evidence is kept (docs/protocol.md). Otherwise (the
        writer closed, or not even the raw frame could be stored) no ack: the DAS sends it again."""
        if evidence_kept(error):
            self._ack(packet, arrived)
        else:
            self._stored(error)

    def _ack(self, packet: Packet, arrived: float) -> None:
        """The packet's rows are committed: its 9014, then the same bookkeeping as `_stored`.

        The writer confirms a whole batch in one go; acks for this connection in that round are
        collected and written once, right after it (one send() instead of one per packet).
        """
        if self.transport is not None and not self.transport.is_closing():
            ack = build_data_ack(packet)
            if self._acks is None:
                self._acks = [ack]
                (self._loop or asyncio.get_running_loop()).call_soon(self._send_acks)
            else:
                self._acks.append(ack)
            self.deps.metrics.data_acked(time.perf_counter() - arrived)
        self._stored(None)

    def _send_acks(self) -> None:
        acks, self._acks = self._acks, None
        if acks:
            self._write(acks[0] if len(acks) == 1 else b"".join(acks))

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
        # Every reject is archived, so raw_frames agrees with the metric. A framing defect
        # (declared length over the limit, bad length field) consumes only the `##`: its row has
        # no bytes, and the bytes after it arrive as the next `garbage` row.
        row = frame_row(
            frame,
            datetime.now(UTC),
            verdict=reason,
            connection_id=self.connection_id,
            peer=self.peer,
            packet=packet,
            raw=None if frame is not None else raw,
        )
        self._submit(IngestItem(frame_rows=(row,)), self._stored)
        if answer and packet is not None and wants_answer(packet):
            self._write(build_request_reply(packet, error.qn_rtn))

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.deps.metrics.sent(len(data))
            if (
                self._holds & ReadHold.PEER_NOT_READING
                and transport.get_write_buffer_size() > self.deps.settings.connections.max_write_buffer_bytes
            ):
                self._abort_not_reading()
            if self.deps.settings.log_level == "DEBUG":
                structlog.get_logger(WIRE_LOGGER).debug("wire_out", hex=mask_pw(data).hex())

    # -- view for the admin API ----------------------------------------------------------------

    def live(self, mn: str) -> LiveDevice | None:
        """This connection as the holder of `mn` (one of the MNs it carries)."""
        last = self.session.last_packet_at
        version = self.session.version
        return LiveDevice(
            mn=mn,
            peer=self.peer,
            connection_id=self.connection_id,
            connected_at=self.connected_at,
            last_packet_at=last,
            protocol_version=version.label if version is not None else None,
        )


def session_config_from(
    settings: Settings, registry: DeviceRegistry, sm4_keys: Mapping[str, tuple[bytes, ...]] | None = None
) -> SessionConfig:
    """Protocol policy from the settings; per-device overrides are live views of the registry;
    `sm4_keys`: MN -> SM4 keys of 2025 devices that encrypt their CP (auth.load_sm4_keys)."""
    proto = settings.protocol
    return SessionConfig(
        limits=FrameLimits(max_segment_bytes=proto.max_segment_bytes, max_buffer_bytes=proto.max_buffer_bytes),
        keys=sm4_keys or {},
        crc_policy=CrcPolicy(
            mode=proto.crc_policy,
            allowed_variants=frozenset(proto.crc_variants),
            per_mn_variants=registry.crc_overrides,
        ),
        heartbeat_reply=proto.heartbeat_reply,
        heartbeat_reply_per_mn=registry.heartbeat_overrides,
        mn_change=proto.mn_change,
        device_tz=ZoneInfo(settings.device_timezone),
        send_time_after_1013=proto.time_calibration,
        max_consecutive_rejects=settings.connections.max_consecutive_rejects,
        split_timeout_s=proto.split_timeout_s,
        max_split_groups=proto.max_split_groups,
        max_split_parts=proto.max_split_parts,
        max_split_bytes=proto.max_split_bytes,
        max_pending_requests=proto.max_pending_requests,
    )


def time_policy_from(settings: Settings) -> TimePolicy:
    return TimePolicy(
        device_tz=ZoneInfo(settings.device_timezone),
        future_tolerance=timedelta(seconds=settings.protocol.future_tolerance_s),
        past_tolerance=timedelta(days=settings.protocol.past_tolerance_days),
    )
