"""Flow control of one DAS socket: why it is not read (`ReadHold`), what was read while events are
held (parsed events in order, the rest of a burst as bytes), and what a peer that does not read
costs (the outgoing buffer's marks, the stall timer, the abort as `not_reading`).

`SocketFlow` is the base of `DasConnection`: it owns the transport, the read holds, the held
events, the connection's share of the write queue (`_stored` is every item's last callback), the
acks of one commit round, retiring and the close by policy; the connection adds the session and
the policy for what it reads (`_parse`, `_after_input`, `_on_event`).
"""

import asyncio
import enum
import re
import socket
from typing import cast

import structlog

from hj212gw.ingest.items import QueueShare
from hj212gw.logs import WIRE_LOGGER
from hj212gw.metrics import Metrics
from hj212gw.protocol.session import Event
from hj212gw.settings import Settings


class ReadHold(enum.IntFlag):
    """Why a socket is not being read. It reads again only when every hold is released: the write
    queue finding room must not resume a socket whose peer does not read, and the reverse."""

    WRITE_QUEUE = 1  # the batch writer is full (Gateway.pause / _resume_when_room)
    PEER_NOT_READING = 2  # our outgoing buffer is over connections.write_buffer_high_bytes
    RETIRING = 4  # replaced by a newer connection: closing once its acks are out
    EVENTS = 8  # events held: a new MN's pin, the source IP's wrong-PW backoff, a wrong PW's close
    QUEUE_SHARE = 16  # events held: this connection's share of the write queue is full
    BACKLOG = 32  # over _DEFER_PAUSE_BYTES wait unparsed for the writers to catch up (server/admission.py)


# Holds under which what was read waits unhandled (events parsed, bytes not parsed yet).
EVENT_HOLDS = ReadHold.EVENTS | ReadHold.QUEUE_SHARE

# A read longer than this (a burst: a flood, or a backlog after a pause; one read takes up to
# 256 KiB) is parsed a slice at a time, so a connection whose queue share fills keeps the rest as
# bytes, not as thousands of parsed packets.
_SLICE_BYTES = 4096

# What a connection may keep unparsed while the read admission is behind before its socket is
# paused (a peer that floods; a DAS waiting for its ack stays far below).
_DEFER_PAUSE_BYTES = 16384

_PW_FIELD = re.compile(rb"PW=[^;&]*")


def mask_pw(raw: bytes) -> bytes:
    """The bytes with the access password replaced by `***`: a PW is a secret and never logged."""
    return _PW_FIELD.sub(b"PW=***", raw)


class SocketFlow(asyncio.Protocol):
    """Reading and writing one socket under holds; closing it by policy."""

    __slots__ = (
        "_acks",
        "_deferred",
        "_eof_waiting",
        "_held",
        "_holds",
        "_loop",
        "_metrics",
        "_settings",
        "_share",
        "_stall_timer",
        "_unread",
        "closing_reason",
        "eof",
        "retiring",
        "transport",
    )

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.transport: asyncio.Transport | None = None
        self.closing_reason: str | None = None
        self._acks: list[bytes] | None = None  # 9014s of one commit round, sent together
        self._loop: asyncio.AbstractEventLoop | None = None  # get_running_loop() costs a getpid()
        self._holds = ReadHold(0)
        self._stall_timer: asyncio.TimerHandle | None = None  # aborts a peer that stopped reading
        self._unread: memoryview | None = None  # the rest of a burst, while events are held
        self._deferred: bytes | bytearray | None = None  # reads not parsed yet: admission is behind
        self._eof_waiting = False  # the peer half-closed after a packet whose events are held
        # Events waiting while reading is held: for a new MN's pin, for the source IP's wrong-PW
        # backoff, or (never released) after a wrong PW until the connection closes.
        self._held: list[tuple[Event, float]] | None = None
        limits = settings.connections
        # Items submitted and not yet committed (or failed), counted by the writer; when full, this
        # socket alone is not read until half of them are confirmed: a flood delays only itself.
        self._share = QueueShare(limits.max_unconfirmed_items, limits.max_unconfirmed_bytes)
        self.eof = False  # the peer half-closed: close once what it sent is confirmed
        self.retiring = False

    @property
    def log(self) -> structlog.stdlib.BoundLogger:
        raise NotImplementedError

    def _not_reading_context(self) -> dict[str, object]:
        """More fields for the `das_not_reading` line."""
        return {}

    def _parse(self, data: bytes | memoryview) -> bool:
        """Feed the session and handle its events; False if a bug closed the connection."""
        raise NotImplementedError

    def _after_input(self) -> None:
        """What was read is handled (or held): close or pause by policy."""
        raise NotImplementedError

    def _on_event(self, event: object, arrived: float) -> None:
        raise NotImplementedError

    def _end_of_stream(self) -> None:
        """The peer's half-close, handled once nothing it sent before waits any more."""
        raise NotImplementedError

    # -- input under holds ---------------------------------------------------------------------

    def _read(self, data: bytes) -> None:
        if len(data) > _SLICE_BYTES:
            self._unread = memoryview(data)
            self._read_unread()
        elif self._parse(data):
            self._after_input()

    def _defer(self, data: bytes) -> bool:
        """Keep `data` unparsed until `parse_deferred`; True if this connection must now join the
        admission's backlog (it had no read waiting). The socket is paused only once what it keeps
        passes `_DEFER_PAUSE_BYTES`: a DAS with one packet in flight sends nothing more until its
        ack, so pausing it (two epoll calls) would only cost the burst CPU."""
        kept = self._deferred
        if kept is None:
            self._deferred = kept = data
        else:
            if isinstance(kept, bytes):
                kept = self._deferred = bytearray(kept)
            kept += data
        if len(kept) > _DEFER_PAUSE_BYTES:
            self.hold_reading(ReadHold.BACKLOG)
        return kept is data

    def parse_deferred(self) -> None:
        """Parse what `_defer` kept (nothing left: a no-op), then read the socket again unless
        another hold keeps it paused."""
        data, self._deferred = self._deferred, None
        if data is None:
            return
        self._read(data if isinstance(data, bytes) else bytes(data))
        if self._holds & ReadHold.BACKLOG:
            self.release_reading(ReadHold.BACKLOG)

    def _read_unread(self) -> None:
        """Parse the rest of a burst a slice at a time, until it is done or events are held."""
        while self._unread is not None and self._held is None:
            chunk = self._unread[:_SLICE_BYTES]
            self._unread = self._unread[_SLICE_BYTES:] or None
            if not self._parse(chunk):
                return
        self._after_input()

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
        if not self._holds & EVENT_HOLDS:
            held, self._held = self._held or [], None
            for event, arrived in held:
                self._handle([event], arrived)
            self._read_unread()
            if self._eof_waiting and self._held is None:
                self._eof_waiting = False
                self._end_of_stream()
        if not self._holds and not transport.is_closing():
            transport.resume_reading()

    # -- the queue share and closing after confirmation ---------------------------------------

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

    def _check_share(self) -> None:
        """After a submit: a full share holds the rest of what was read."""
        share = self._share
        if share.full and not self._holds & ReadHold.QUEUE_SHARE:
            limit = "items" if share.items >= share.max_items else "bytes"
            self._metrics.queue_share_pauses.labels(limit=limit).inc()
            self._hold(ReadHold.QUEUE_SHARE)

    def _stored(self, error: BaseException | None) -> None:
        """An item's batch committed (error None) or never will: one fewer to wait for before closing.

        A refused item (ItemRejected) is logged once, by the writer, with its MN and the error.
        Acked all the same (9014, by `_ack`) when PostgreSQL refused its rows and its raw frame was
        archived instead (verdict `refused_by_database:<SQLSTATE>`): a resend could never succeed,
        and the evidence is kept (docs/protocol.md). Otherwise no ack: the DAS sends it again.
        """
        if self._held is not None and self._share.has_room:
            self._release(ReadHold.QUEUE_SHARE)  # a no-op unless the share's hold is on
        self._close_when_confirmed()

    # -- output and flow control ----------------------------------------------------------------

    def _limit_send_buffer(self, high: int) -> None:
        """Outgoing buffer marks: `pause_writing` above `high` bytes."""
        transport = cast(asyncio.Transport, self.transport)
        transport.set_write_buffer_limits(high=high)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # The kernel's send buffer holds replies too, autotuned up to megabytes: a peer that
            # does not read would fill it before pause_writing is ever called. A DAS reads a few
            # hundred bytes of acks at a time; the high mark is plenty.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, high)

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
                    self._settings.connections.write_stall_timeout_s, self._abort_not_reading
                )

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
        self._metrics.write_paused.inc()
        if self._stall_timer is None:
            self._stall_timer = self._event_loop().call_later(
                self._settings.connections.write_stall_timeout_s, self._abort_not_reading
            )

    def resume_writing(self) -> None:
        """The outgoing buffer drained below the low mark: read the peer again (unless held otherwise)."""
        if not self._holds & ReadHold.PEER_NOT_READING:
            return
        self._metrics.write_paused.dec()
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
            **self._not_reading_context(),
        )
        self._acks = None
        self.closing_reason = "not_reading"
        transport.abort()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    def _queue_ack(self, ack: bytes) -> None:
        """Collect the acks of one commit round; written once, right after it (one send())."""
        if self._acks is None:
            self._acks = [ack]
            self._event_loop().call_soon(self._send_acks)
        else:
            self._acks.append(ack)

    def _send_acks(self) -> None:
        acks, self._acks = self._acks, None
        if acks:
            self._write(acks[0] if len(acks) == 1 else b"".join(acks))

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self._metrics.sent(len(data))
            if (
                self._holds & ReadHold.PEER_NOT_READING
                and transport.get_write_buffer_size() > self._settings.connections.max_write_buffer_bytes
            ):
                self._abort_not_reading()
            if self._settings.log_level == "DEBUG":
                structlog.get_logger(WIRE_LOGGER).debug("wire_out", hex=mask_pw(data).hex())
