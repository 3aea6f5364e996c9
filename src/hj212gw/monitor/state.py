"""Device state (pure): each MN is `online`, `silent` (connected, data overdue) or `offline`, with
since when, why, and the last DataTime and arrival of each kind of data (CN) it sent.

Two signals decide it. The connection: an MN bound to a connection of this replica is online
(or silent); a connection that ends takes it offline with the close reason as cause; a move to
another connection of this replica changes nothing, a move to another replica hands the MN over
(this replica forgets it: the other one reports it online); a gateway shutting down leaves it as
it is (restarted, the gateway takes those that did not come back offline: storage.device_state).
The data: a connected device whose scheduled data (real-time 2011, minute 2051, hour 2061, day
2031) stops is silent once a CN is overdue, that is when nothing of it arrived for max(period x
tolerance, floor) since the later of its last arrival and the moment it came online; its data
coming back makes it online again. Periods are the registry's fixed ones, else those learned by
`cadence.Cadence`, else the persisted ones.

Every change of state is returned as a `DeviceStateChanged`; nothing changes without one, and no
event is made without a change. `scan(now)` finds overdue devices through a heap of deadlines, so
it costs only the devices whose deadline passed, not one step per device per scan. Imports no
I/O, reads no clock: the time is passed in.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hj212gw.monitor.cadence import Cadence


class DeviceState(enum.StrEnum):
    ONLINE = "online"
    SILENT = "silent"  # connected, but some scheduled data is overdue
    OFFLINE = "offline"


SCHEDULED_CNS = frozenset(("2011", "2051", "2061", "2031"))
"""The kinds of data a device sends on a schedule (real-time, minute, hour, day): only their
silence makes a device silent; other uploads (3020, 2081, …) are recorded but never expected."""

# `released` causes that are not a connection's end (server.bindings sends them).
MOVED_TO_CONNECTION = "moved_to_connection"  # a newer connection of this replica holds the MN now
MOVED_TO_REPLICA = "moved_to_replica"  # another replica holds it now
SHUTDOWN = "shutdown"  # this gateway is stopping: the device keeps its state until it is back
# Causes the machine gives itself.
CONNECTED = "connected"
DATA_OVERDUE = "data_overdue"
DATA_RESUMED = "data_resumed"
GATEWAY_RESUMED = "gateway_resumed"  # its replica was taken for lost (stored offline) but lives


@dataclass(frozen=True, slots=True)
class StatePolicy:
    """How long silence is tolerated.

    A CN is overdue after max(period x `tolerance`, `floor`) without data (transmission-rate.md
    §5's "Offline" rule uses 3 x RtdInterval, 2 x MinInterval and 10 min; one factor for all CNs
    keeps it explainable).
    """

    tolerance: float = 3.0
    floor: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class DeviceStateChanged:
    """A device's state changed: published to later layers (rules, alerts) and stored."""

    mn: str
    old: DeviceState | None  # None: a device this gateway never knew before
    new: DeviceState
    since: datetime
    cause: str
    replica: str
    connection_id: int | None
    details: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    """The last of one CN: its greatest DataTime, its last arrival and its period (if known)."""

    data_time: datetime
    received_at: datetime
    period: timedelta | None = None


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One device as it is persisted (`device_state`) and restored after a restart or a move."""

    mn: str
    state: DeviceState
    since: datetime
    cause: str
    connection_id: int | None
    bound_at: datetime | None
    series: Mapping[str, SeriesSnapshot]


class _Series:
    __slots__ = ("cadence", "data_time", "received_at", "restored_period")

    def __init__(self, cn: str, data_time: datetime, received_at: datetime) -> None:
        self.cadence = Cadence(cn) if cn in SCHEDULED_CNS else None
        self.data_time = data_time
        self.received_at = received_at
        self.restored_period: timedelta | None = None


class _Device:
    __slots__ = (
        "bound", "bound_at", "cause", "connected_since", "connection_id", "mn", "queued", "series", "since", "state",
    )  # fmt: skip

    def __init__(self, mn: str, state: DeviceState, since: datetime, cause: str) -> None:
        self.mn = mn
        self.state = state
        self.since = since
        self.cause = cause
        self.connection_id: int | None = None
        self.bound = False  # a connection of this replica holds it
        self.bound_at: datetime | None = None  # when the connection holding it bound it
        # When it came online after being offline: overdue data is counted from here at the
        # earliest, so a reconnect (a move, a restart) does not restart the count.
        self.connected_since: datetime | None = None
        self.queued = False  # has an entry in the deadline heap
        self.series: dict[str, _Series] = {}


_NO_PERIODS: Mapping[str, timedelta] = {}


class DeviceStates:
    """The state of every device this replica follows; feed it signals and `scan(now)`."""

    def __init__(self, replica: str, policy: StatePolicy | None = None) -> None:
        self.replica = replica
        self.policy = policy or StatePolicy()
        self.fixed: Mapping[str, Mapping[str, timedelta]] = {}  # MN -> CN -> period (the registry's)
        self.counts = dict.fromkeys(DeviceState, 0)  # devices followed here, by state
        # MNs whose snapshot changed since the caller last took them: in their state or connection
        # (`changed`), or only in their last data (`data_changed`, which may be stored less often).
        self.changed: set[str] = set()
        self.data_changed: set[str] = set()
        self._devices: dict[str, _Device] = {}
        self._due: list[tuple[datetime, int, str]] = []  # (deadline, tiebreak, MN), lazily updated
        self._seq = itertools.count()

    def __contains__(self, mn: str) -> bool:
        return mn in self._devices

    def mns(self) -> list[str]:
        return list(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def state_of(self, mn: str) -> DeviceState | None:
        device = self._devices.get(mn)
        return device.state if device is not None else None

    # -- connection signals --------------------------------------------------------------------

    def bound(self, mn: str, connection_id: int | None, now: datetime) -> DeviceStateChanged | None:
        """A connection of this replica holds `mn` now."""
        device = self._devices.get(mn)
        known = device is not None
        if device is None:
            device = self._devices[mn] = _Device(mn, DeviceState.OFFLINE, now, CONNECTED)
            self.counts[DeviceState.OFFLINE] += 1
        device.bound, device.connection_id, device.bound_at = True, connection_id, now
        self.changed.add(mn)
        self._queue(device, now)
        if device.state is not DeviceState.OFFLINE:
            return None  # a move (or a restart) restored it: it never stopped being connected
        device.connected_since = now
        return self._change(device, DeviceState.ONLINE, now, CONNECTED, known=known)

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> DeviceStateChanged | None:
        """This replica no longer holds `mn`; `cause`: why the connection ended, or a move."""
        device = self._devices.get(mn)
        if device is None or not device.bound:
            return None
        if connection_id is not None and device.connection_id is not None and connection_id != device.connection_id:
            return None  # an older connection's late news: a newer one holds the MN
        if cause == MOVED_TO_REPLICA:
            self.forget(mn)
            return None
        device.bound, device.connection_id = False, None
        self.changed.add(mn)
        if cause in (MOVED_TO_CONNECTION, SHUTDOWN) or device.state is DeviceState.OFFLINE:
            return None
        return self._change(device, DeviceState.OFFLINE, now, cause)

    def stored(
        self, mn: str, cn: str, data_time: datetime, received_at: datetime, *, backfill: bool = False
    ) -> DeviceStateChanged | None:
        """A packet of `mn` committed (called for every data packet: keep it cheap).

        A `backfill` packet (RF=1, an answer to a history fetch) moves the CN's last DataTime only:
        old data arriving is no live data, so it neither brings a silent device back nor delays
        its silence. Returns None also when `mn` is not followed here (the caller restores it first)."""
        device = self._devices.get(mn)
        if device is None:
            return None
        if backfill:
            known = device.series.get(cn)
            if known is not None and data_time > known.data_time:
                known.data_time = data_time
                self.data_changed.add(mn)
            return None
        series = device.series.get(cn)
        if series is None:
            series = device.series[cn] = _Series(cn, data_time, received_at)
        else:
            if data_time > series.data_time:
                series.data_time = data_time
            series.received_at = received_at
        self.data_changed.add(mn)
        if series.cadence is None:
            return None
        series.cadence.observe(data_time)
        if device.bound:
            if device.state is DeviceState.SILENT:
                return self._recheck(device, received_at)
            if not device.queued:
                self._queue(device, received_at)
        return None

    # -- time ----------------------------------------------------------------------------------

    def scan(self, now: datetime) -> list[DeviceStateChanged]:
        """Devices whose deadline passed: overdue data makes them silent."""
        events: list[DeviceStateChanged] = []
        due = self._due
        while due and due[0][0] <= now:
            mn = heapq.heappop(due)[2]
            device = self._devices.get(mn)
            if device is None or not device.queued:
                continue
            device.queued = False
            if not device.bound:
                continue  # offline, or between two connections of a move
            deadline, late = self._deadline(device, now)
            if late and device.state is DeviceState.ONLINE:
                events.append(self._change(device, DeviceState.SILENT, now, DATA_OVERDUE, overdue=late))
            elif device.state is DeviceState.ONLINE:
                self._push(device, deadline if deadline is not None else now + self.policy.floor)
        return events

    def _recheck(self, device: _Device, now: datetime) -> DeviceStateChanged | None:
        deadline, late = self._deadline(device, now)
        if late:
            return None
        self._push(device, deadline if deadline is not None else now + self.policy.floor)
        return self._change(device, DeviceState.ONLINE, now, DATA_RESUMED)

    def _deadline(self, device: _Device, now: datetime) -> tuple[datetime | None, list[str]]:
        """The earliest deadline among the device's scheduled CNs that are not late, and those late."""
        policy = self.policy
        fixed = self.fixed.get(device.mn, _NO_PERIODS)
        start = device.connected_since or now
        earliest: datetime | None = None
        late: list[str] = []
        for cn, series in device.series.items():
            if series.cadence is None:
                continue
            period = fixed.get(cn) or series.cadence.period or series.restored_period
            if period is None:
                continue
            deadline = max(series.received_at, start) + max(period * policy.tolerance, policy.floor)
            if deadline <= now:
                late.append(cn)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        return earliest, sorted(late)

    def _queue(self, device: _Device, now: datetime) -> None:
        if not device.queued:
            self._push(device, now + self.policy.floor)

    def _push(self, device: _Device, deadline: datetime) -> None:
        device.queued = True
        heapq.heappush(self._due, (deadline, next(self._seq), device.mn))

    def _change(
        self, device: _Device, new: DeviceState, now: datetime, cause: str, *, known: bool = True, **details: object
    ) -> DeviceStateChanged:
        """Move `device` to `new`; `known`: False for a device never followed before (old: None)."""
        previous = device.state if known else None
        self.counts[device.state] -= 1
        self.counts[new] += 1
        device.state, device.since, device.cause = new, now, cause
        self.changed.add(device.mn)
        return DeviceStateChanged(device.mn, previous, new, now, cause, self.replica, device.connection_id, details)

    def resume(self, now: datetime) -> list[DeviceStateChanged]:
        """Another replica took this one for lost and stored its devices offline (`gateway_lost`):
        each device held here is online (or silent) again as of `now`."""
        events = []
        for device in self._devices.values():
            if device.bound and device.state is not DeviceState.OFFLINE:
                device.since, device.cause = now, GATEWAY_RESUMED
                self.changed.add(device.mn)
                old, cid = DeviceState.OFFLINE, device.connection_id
                events.append(DeviceStateChanged(device.mn, old, device.state, now, GATEWAY_RESUMED, self.replica, cid))
        return events

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self, mn: str) -> DeviceSnapshot | None:
        device = self._devices.get(mn)
        if device is None:
            return None
        fixed = self.fixed.get(mn, _NO_PERIODS)
        series = {
            cn: SeriesSnapshot(
                s.data_time,
                s.received_at,
                fixed.get(cn) or (s.cadence.period if s.cadence is not None else None) or s.restored_period,
            )
            for cn, s in device.series.items()
        }
        return DeviceSnapshot(
            mn, device.state, device.since, device.cause, device.connection_id, device.bound_at, series
        )

    def take_changed(self, *, with_data: bool = True) -> list[DeviceSnapshot]:
        """Snapshots of the devices changed since the last call (those still followed); without
        `with_data`, only those whose state or connection changed (their data goes with them)."""
        mns, self.changed = self.changed, set()
        if with_data:
            mns |= self.data_changed
            self.data_changed = set()
        else:
            self.data_changed -= mns
        return [s for mn in mns if (s := self.snapshot(mn)) is not None]

    def restore(self, snapshot: DeviceSnapshot) -> None:
        """Follow a device as persisted (held elsewhere, before a restart, or nowhere), making no
        event: its signals of this replica are replayed next."""
        self.forget(snapshot.mn)
        device = self._devices[snapshot.mn] = _Device(snapshot.mn, snapshot.state, snapshot.since, snapshot.cause)
        self.counts[snapshot.state] += 1
        device.bound_at = device.connected_since = snapshot.bound_at
        for cn, kept in snapshot.series.items():
            series = device.series[cn] = _Series(cn, kept.data_time, kept.received_at)
            series.restored_period = kept.period

    def forget(self, mn: str) -> None:
        """Stop following `mn` (offline and persisted, or held by another replica now)."""
        device = self._devices.pop(mn, None)
        if device is not None:
            self.counts[device.state] -= 1
            device.queued = False  # its heap entry is skipped when it comes up
        self.changed.discard(mn)
        self.data_changed.discard(mn)

    def done_with(self, mn: str) -> bool:
        """`mn` is offline, held by no connection here and unchanged since its last snapshot: it
        need not be followed any more (the persisted row is its state)."""
        device = self._devices.get(mn)
        if device is None or device.bound or mn in self.changed or mn in self.data_changed:
            return False
        return device.state is DeviceState.OFFLINE
