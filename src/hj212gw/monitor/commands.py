"""`CommandTracker`: the commands this replica sent and is following, from the 9011 to their outcome.

Fed by the server (the request events of a connection's session and the packets that answer a
command) and by the monitor hub (`released`: the connection no longer holds the MN; `stored`: a
fetched packet's rows committed). Each move becomes a `CommandUpdate` queued for the runner's
background task to write, and a final one resolves the command's `CommandTicket`. Never does
I/O and never raises into its callers; O(1) per event (a dict lookup by MN, then by QN).

How a session event ends a command (HJ 212-2017 §9.1; QnRtn Table 7, ExeRtn Table 6):

    event                                        | state          | reason
    ---------------------------------------------+----------------+----------------------------
    9011 QnRtn=1, a 9012 expected                | acknowledged   |
    9011 QnRtn=1 or 9013 to a notification       | succeeded      |
    9011 QnRtn other                             | refused        | QnRtn=n (name)
    9012 ExeRtn=1 / ExeRtn=100                   | succeeded      | - / no data (ExeRtn=100)
    9012 ExeRtn other                            | failed         | ExeRtn=n (name)
    no 9011 after OverTime x (ReCount + 1)       | timed_out      | no_reply
    no 9012 (nor data) within OverTime after it  | timed_out      | no_result
    too many requests pending on the connection  | failed         | too_many_pending
    the connection closed or the MN moved        | failed         | connection closed: cause

A history fetch's 9012 is final once the rows of the packets it brought are committed (so a
caller that re-reads the data sees them), or after `settle_s` when some never are.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from hj212gw.monitor.hub import BACKFILL_ONLY, StoredData
from hj212gw.protocol.constants import DATA_CNS, ExeRtn, QnRtn
from hj212gw.protocol.events import PacketReceived, RequestAcknowledged, RequestFailed, RequestFinished
from hj212gw.storage.commands import CommandUpdate

_LOG = structlog.get_logger("hj212gw.monitor")

MAX_RESULT_ITEMS = 64  # CP items of a get answer kept in `result`
MAX_RESULT_CHARS = 200  # per value

RequestEvent = RequestAcknowledged | RequestFinished | RequestFailed


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """How a command ended: a final state of the `commands` table and what came with it."""

    id: int
    state: str
    qn_rtn: int | None = None
    exe_rtn: int | None = None
    reason: str | None = None
    result: dict[str, Any] | None = None

    @property
    def no_data(self) -> bool:
        """The DAS executed it and had nothing for the range (ExeRtn=100)."""
        return self.exe_rtn == ExeRtn.NO_DATA


@dataclass(slots=True)
class InFlight:
    """One command sent on one of this replica's connections. `data_cn`: the CN of the packets
    that answer it (a get's response, a fetch's history), if any; `qn`: the request's QN."""

    id: int
    mn: str
    cn: str
    qn: str
    data_cn: str | None
    expects_result: bool
    on_done: Callable[[CommandOutcome], None] | None = None
    packets: int = 0
    stored: int = 0  # answer packets whose rows committed
    first_data_time: datetime | None = None
    last_data_time: datetime | None = None
    response: dict[str, str] | None = None
    finishing: CommandOutcome | None = None  # 9012 in, waiting for the fetched rows to commit
    settle_at: float = 0.0
    acknowledged_at: datetime | None = None


def _code_name(enum: type[QnRtn] | type[ExeRtn], code: int | None) -> str:
    try:
        return enum(code).name.lower() if code is not None else "none"
    except ValueError:
        return "unknown"


class CommandTracker:
    """In-flight commands by MN and QN; `take_updates()` hands the rows to write to the runner."""

    stored_kinds = BACKFILL_ONLY  # a history fetch's answer rows are backfilled data

    def __init__(
        self,
        *,
        settle_s: float = 5.0,
        wake: Callable[[], None] = lambda: None,
        on_final: Callable[[str], None] = lambda state: None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settle_s = settle_s
        self._wake = wake
        self._on_final = on_final
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self.by_mn: dict[str, dict[str, InFlight]] = {}
        self._updates: list[CommandUpdate] = []

    def __len__(self) -> int:
        return sum(len(flights) for flights in self.by_mn.values())

    # -- what the runner tells ------------------------------------------------------------------

    def track(self, flight: InFlight) -> None:
        """`flight` was claimed and is about to be sent: its answers are matched from now on."""
        self.by_mn.setdefault(flight.mn, {})[flight.qn] = flight

    def take_updates(self) -> list[CommandUpdate]:
        updates, self._updates = self._updates, []
        return updates

    def put_back(self, updates: list[CommandUpdate]) -> None:
        """Updates the runner could not write (PostgreSQL down): first in the next round."""
        self._updates[:0] = updates

    def finish_untracked(self, command_id: int, state: str, reason: str, now: datetime) -> CommandOutcome:
        """A command that ended before it was sent (moved away, bad row): its final update."""
        self._on_final(state)
        self._queue(CommandUpdate(command_id, state, finished_at=now, reason=reason))
        return CommandOutcome(command_id, state, reason=reason)

    def progress(self, mns: tuple[str, ...], event: object, now: datetime) -> None:
        """A session event on the connection holding `mns`: a request's 9011/9012/failure, or a
        packet that may answer a command (the server passes only those marked as answers)."""
        try:
            if isinstance(event, PacketReceived):
                flights = self.by_mn.get(event.packet.mn or "")
                if flights:
                    data = event.packet.data
                    self._answered(flights, event.packet.cn, event.packet.qn, data.items if data else ())
                return
            qn = getattr(event, "qn", None)
            flight = next((f[qn] for mn in mns if (f := self.by_mn.get(mn)) and qn in f), None)
            if flight is None:
                return
            match event:
                case RequestAcknowledged(qn_rtn=qn_rtn):
                    self._acknowledged(flight, qn_rtn, now)
                case RequestFinished(exe_rtn=exe_rtn):
                    self._finished(flight, exe_rtn, now)
                case RequestFailed(reason=reason):
                    state = "failed" if reason in ("too_many_pending", "rejected") else "timed_out"
                    self._final(flight, CommandOutcome(flight.id, state, reason=reason), now)
        except Exception:  # a bug here must not reach the connection's event loop
            _LOG.exception("command_tracker_bug", mns=list(mns))

    def tick(self, now: datetime) -> None:
        """Finish fetches whose rows did not all commit within `settle_s` of their 9012."""
        moment = self._clock()
        for flights in list(self.by_mn.values()):
            for flight in list(flights.values()):
                if flight.finishing is not None and moment >= flight.settle_at:
                    self._final(flight, flight.finishing, now)

    # -- DeviceListener -------------------------------------------------------------------------

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None:
        """Nothing to do: a command is sent when it is claimed, never when a device connects."""

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None:
        """The connection no longer holds `mn`: its commands cannot be answered any more."""
        for flight in list(self.by_mn.get(mn, {}).values()):
            if flight.finishing is not None:
                self._final(flight, flight.finishing, now)  # the 9012 was in: its outcome stands
            else:
                self._final(flight, CommandOutcome(flight.id, "failed", reason=f"connection closed: {cause}"), now)

    def stored(self, data: StoredData) -> None:
        flights = self.by_mn.get(data.mn)
        if not flights or not data.backfill:
            return
        for flight in list(flights.values()):
            if flight.data_cn == data.cn:
                flight.stored += 1
                if flight.first_data_time is None or data.data_time < flight.first_data_time:
                    flight.first_data_time = data.data_time
                if flight.last_data_time is None or data.data_time > flight.last_data_time:
                    flight.last_data_time = data.data_time
                if flight.finishing is not None and flight.stored >= flight.packets:
                    self._final(flight, flight.finishing, data.received_at)

    # -- the moves ------------------------------------------------------------------------------

    def _answered(self, flights: dict[str, InFlight], cn: str, qn: str | None, items: Any) -> None:
        for flight in flights.values():
            if flight.data_cn != cn or flight.finishing is not None:
                continue
            flight.packets += 1
            if qn == flight.qn and flight.response is None:  # a get's answer carries the request's QN
                flight.response = {
                    name[:40]: value[:MAX_RESULT_CHARS] for name, value in tuple(items)[:MAX_RESULT_ITEMS]
                }

    def _acknowledged(self, flight: InFlight, qn_rtn: int | None, now: datetime) -> None:
        if qn_rtn != QnRtn.READY:
            reason = f"QnRtn={qn_rtn} ({_code_name(QnRtn, qn_rtn)})"
            self._final(flight, CommandOutcome(flight.id, "refused", qn_rtn=qn_rtn, reason=reason), now)
        elif not flight.expects_result:
            self._final(flight, CommandOutcome(flight.id, "succeeded", qn_rtn=qn_rtn), now)
        elif flight.acknowledged_at is None:
            flight.acknowledged_at = now
            self._queue(CommandUpdate(flight.id, "acknowledged", acknowledged_at=now, qn_rtn=qn_rtn))

    def _finished(self, flight: InFlight, exe_rtn: int | None, now: datetime) -> None:
        if exe_rtn == ExeRtn.SUCCESS:
            outcome = CommandOutcome(flight.id, "succeeded", exe_rtn=exe_rtn)
        elif exe_rtn == ExeRtn.NO_DATA:
            outcome = CommandOutcome(flight.id, "succeeded", exe_rtn=exe_rtn, reason="no data (ExeRtn=100)")
        else:
            reason = f"ExeRtn={exe_rtn} ({_code_name(ExeRtn, exe_rtn)})"
            outcome = CommandOutcome(flight.id, "failed", exe_rtn=exe_rtn, reason=reason)
        if flight.data_cn in DATA_CNS and flight.stored < flight.packets:
            flight.finishing = outcome  # rows of the fetched packets still on their way to COMMIT
            flight.settle_at = self._clock() + self.settle_s
            return
        self._final(flight, outcome, now)

    def _final(self, flight: InFlight, outcome: CommandOutcome, now: datetime) -> None:
        flights = self.by_mn.get(flight.mn, {})
        if flights.get(flight.qn) is not flight:
            return
        del flights[flight.qn]
        if not flights:
            del self.by_mn[flight.mn]
        qn_rtn = outcome.qn_rtn if outcome.qn_rtn is not None else (1 if flight.acknowledged_at else None)
        done = CommandOutcome(outcome.id, outcome.state, qn_rtn, outcome.exe_rtn, outcome.reason, _result(flight))
        self._queue(
            CommandUpdate(
                flight.id, done.state, finished_at=now, qn_rtn=done.qn_rtn, exe_rtn=done.exe_rtn,
                reason=done.reason, result=done.result,
            )
        )  # fmt: skip
        self._on_final(done.state)
        if flight.on_done is not None:
            try:
                flight.on_done(done)
            except Exception:
                _LOG.exception("command_callback_bug", id=flight.id)

    def _queue(self, update: CommandUpdate) -> None:
        self._updates.append(update)
        self._wake()


def _result(flight: InFlight) -> dict[str, Any] | None:
    """What the command brought back: a get's CP items, a fetch's packets and rows."""
    if flight.response is not None:
        return {"cp": flight.response}
    if flight.data_cn is None or (flight.packets == 0 and flight.stored == 0):
        return None if flight.data_cn is None else {"packets": 0, "packets_stored": 0}
    return {
        "packets": flight.packets,
        "packets_stored": flight.stored,
        "data_time_first": _iso(flight.first_data_time),
        "data_time_last": _iso(flight.last_data_time),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
