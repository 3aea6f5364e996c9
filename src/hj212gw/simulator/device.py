"""SimDevice: one simulated DAS as a sans-IO state machine.

It decides what to upload and when (2011 every RtdInterval, 2051/2061/2031 at period ends with
DataTime = period start, HJ 212-2017 §10; 2081 after boot; 3020 now and then; 9015 heartbeats
on 2025 when idle), frames its packets with the protocol core, and reacts to platform packets
(`commands.py`). Times are passed in: simulated time (aware datetime) for what it measures,
network seconds for resends and heartbeats. It never touches a socket or reads a clock.
"""

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from hj212gw.protocol.builders import version_bits
from hj212gw.protocol.constants import MAX_CP_BYTES, Cn, PacketFlag, ProtocolVersion
from hj212gw.protocol.framing import encode_frame
from hj212gw.protocol.models import Packet, format_hj_time, format_qn
from hj212gw.simulator.config import DeviceSpec
from hj212gw.simulator.content import ContentModel, unit_hash
from hj212gw.simulator.delivery import Delivery, Outgoing
from hj212gw.simulator.scenarios import DeviceScenarios
from hj212gw.simulator.stats import Counters

AckHook = Callable[[str, Outgoing], None]  # (MN, the acknowledged packet): for tests and tools
PERIOD_CNS = {Cn.MINUTE_DATA: "minute", Cn.HOUR_DATA: "hour", Cn.DAY_DATA: "day"}
_MS = timedelta(milliseconds=1)


def _floor(moment: datetime, step_s: int) -> datetime:
    """The start of the `step_s` period containing `moment` (periods aligned to midnight)."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    offset = int((moment - midnight).total_seconds()) // step_s * step_s
    return midnight + timedelta(seconds=offset)


class SimDevice:
    """One DAS. Drive it with `tick`, `frames_due`, `receive`, `link_up` and `link_down`."""

    def __init__(
        self,
        spec: DeviceSpec,
        scenarios: DeviceScenarios,
        counters: Counters,
        boot: datetime,
        *,
        on_ack: AckHook | None = None,
    ) -> None:
        self.spec = spec
        self.scenarios = scenarios
        self.counters = counters
        self.pw = spec.pw
        self.boot = boot.astimezone(UTC)
        self.ppm, offset_s = scenarios.clock_skew()
        self.offset = timedelta(seconds=offset_s)
        self.rtd_interval_s = spec.rtd_interval_s
        self.min_interval_min = spec.min_interval_min
        self.uploads = set(spec.uploads)
        self.content = ContentModel(
            spec.factors,
            seed=spec.seed,
            codes_2005=spec.version is ProtocolVersion.HJT212_2005,
            water=spec.st == "32",
            scenarios=scenarios,
            sim_of=self.sim_of,
            episode_rate_per_hour=spec.episode_rate,
        )
        self.delivery = Delivery(
            self._encode,
            counters,
            window=spec.window,
            over_time_s=spec.over_time_s,
            re_count=spec.re_count,
            max_unacked=spec.max_unacked,
            on_ack=None if on_ack is None else partial(on_ack, spec.mn),
        )
        keep = timedelta(days=spec.history_days)
        self.recorded: dict[str, deque[tuple[datetime, int]]] = {cn: deque() for cn in PERIOD_CNS}
        self._keep = keep
        self._last_qn = datetime.min
        self._last_send_s = 0.0
        self.heartbeat_qn: str | None = None  # the heartbeat still waiting for its reply
        self.heartbeating = True  # the shell turns it off when the run drains
        local = self.local(self.boot)
        self._next_rtd = _floor(local, self.rtd_interval_s) + timedelta(seconds=self.rtd_interval_s)
        self._next = {
            Cn.MINUTE_DATA: _floor(local, self.min_interval_min * 60) + timedelta(minutes=self.min_interval_min),
            Cn.HOUR_DATA: _floor(local, 3600) + timedelta(hours=1),
            Cn.DAY_DATA: _floor(local, 86400) + timedelta(days=1),
        }
        restart = format_hj_time(local)
        # Sent live on the first connect, whatever happened before: it announces the boot (CN 2081).
        self.delivery.fresh.append(
            Outgoing(Cn.RESTART_TIME, restart, f"DataTime={restart};RestartTime={restart}", ack=spec.ack)
        )

    # -- time -----------------------------------------------------------------------------------

    def local(self, sim: datetime) -> datetime:
        """The device clock: simulated time plus offset and drift, naive in the device's zone."""
        drift = timedelta(seconds=(sim - self.boot).total_seconds() * self.ppm / 1e6)
        return (sim + self.offset + drift).astimezone(self.spec.tz).replace(tzinfo=None)

    def sim_of(self, local: datetime) -> datetime:
        """Approximate inverse of `local` (drift ignored): which simulated moment shows `local`."""
        return local.replace(tzinfo=self.spec.tz).astimezone(UTC) - self.offset

    def set_clock(self, sim: datetime, system_time: datetime) -> None:
        """CN 1012: from now on the device clock reads `system_time` at simulated `sim`."""
        self.offset += system_time - self.local(sim)
        local = self.local(sim)
        self._next_rtd = _floor(local, self.rtd_interval_s) + timedelta(seconds=self.rtd_interval_s)

    def reschedule_minutes(self) -> None:
        """After CN 1064: the next minute period ends on the new interval's grid."""
        step = self.min_interval_min * 60
        self._next[Cn.MINUTE_DATA] = _floor(self.local(self._sim_for_qn), step) + timedelta(seconds=step)

    def new_qn(self, sim: datetime) -> str:
        """A QN from the device clock in ms, strictly increasing per device (replies are matched by it)."""
        moment = self.local(sim)
        if moment <= self._last_qn:
            moment = self._last_qn + _MS
        self._last_qn = moment
        return format_qn(moment)

    # -- generation -----------------------------------------------------------------------------

    def tick(self, sim: datetime, *, max_records: int | None = None) -> bool:
        """Produce the records that became due by simulated time `sim`.

        `max_records` caps the minute/hour/day periods produced in this call, so a device that
        fell behind (an overloaded process, a fast virtual clock) catches up in small steps and
        its shell can yield in between. Returns True if periods due by `sim` are still left.
        """
        local = self.local(sim)
        silent = self.scenarios.silent(sim)
        if local >= self._next_rtd:
            moment = _floor(local, self.rtd_interval_s)  # a DAS sends the current reading, no catch-up
            self._next_rtd = moment + timedelta(seconds=self.rtd_interval_s)
            if not silent and Cn.REALTIME_DATA in self.uploads:
                self._enqueue(
                    Outgoing(Cn.REALTIME_DATA, format_hj_time(moment), self.content.rtd_cp(moment), keep=False)
                )
        budget = max_records
        steps = {Cn.MINUTE_DATA: self.min_interval_min * 60, Cn.HOUR_DATA: 3600, Cn.DAY_DATA: 86400}
        while True:
            # Periods in the order they end (minute before hour before day at the same moment): a
            # device catching up in small steps lives at its records' time (`next_sim_due`), and an
            # hour left for later would hold that time back while its minutes ran ahead of it.
            cn = min(steps, key=self._next.__getitem__)
            if local < self._next[cn]:
                return False
            if budget is not None:
                if budget <= 0:
                    return True
                budget -= 1
            step = steps[cn]
            start = self._next[cn] - timedelta(seconds=step)
            self._next[cn] += timedelta(seconds=step)
            if self._next[cn] < local - timedelta(days=1):
                self._next[cn] = _floor(local, step) + timedelta(seconds=step)  # clock jumped
            if not self.scenarios.silent(self.sim_of(start)):  # measured nothing in that period
                self._record(cn, start, step)

    def _record(self, cn: str, start: datetime, step: int) -> None:
        history = self.recorded[cn]
        history.append((start, step))
        while history and history[0][0] < start - self._keep:
            history.popleft()
        if cn in self.uploads:
            for item in self.period_packets(cn, start, step):
                self._enqueue(item)
        if cn == Cn.HOUR_DATA:
            self._maybe_status(start)

    def period_packets(self, cn: str, start: datetime, step: int, *, history: bool = False) -> list[Outgoing]:
        """The packet(s) of one period: one, or split parts (Flag 7) when too long or by scenario."""
        data_time = format_hj_time(start)
        items = self.content.period_items(start, step)
        head = f"DataTime={data_time}"
        cp = ";".join([head, *items])
        split_rate = self.scenarios.rate("split", self.sim_of(start))
        want_split = split_rate > 0 and unit_hash(self.spec.seed, 31, int(start.timestamp())) < split_rate
        if len(cp.encode()) <= MAX_CP_BYTES and not (want_split and len(items) > 1):
            return [Outgoing(cn, data_time, cp, ack=self.spec.ack, history=history)]
        groups: list[list[str]] = [[]]
        half = (len(items) + 1) // 2
        for item in items:
            too_long = len(";".join([head, *groups[-1], item])) > MAX_CP_BYTES
            forced = want_split and len(groups) == 1 and len(groups[0]) >= half
            if groups[-1] and (too_long or forced):
                groups.append([])
            groups[-1].append(item)
        total = len(groups)
        self.counters.split_parts += total
        return [
            Outgoing(cn, data_time, ";".join([head, *g]), ack=self.spec.ack, part=(total, n), history=history)
            for n, g in enumerate(groups, 1)
        ]

    def _maybe_status(self, hour_start: datetime) -> None:
        moment = hour_start + timedelta(minutes=30)
        cp = self.content.status_cp(moment)
        if cp is None and unit_hash(self.spec.seed, 41, int(moment.timestamp())) < self.spec.status_rate:
            code = self.content.code(self.spec.factors[-1])
            cp = f"DataTime={format_hj_time(moment)};PolId={code};i12001-Info=0"
        if cp is not None:
            self._enqueue(Outgoing(Cn.SITE_INFO, format_hj_time(moment), cp, ack=self.spec.ack))
        for parameters in self.content.parameter_cps(moment):
            data_time = parameters.split(";", 1)[0].removeprefix("DataTime=")
            self._enqueue(Outgoing(Cn.SITE_INFO, data_time, parameters, ack=self.spec.ack))

    def _enqueue(self, item: Outgoing) -> None:
        item.ack = item.ack and self.spec.ack
        self.delivery.enqueue(item)

    # -- framing --------------------------------------------------------------------------------

    def _flag(self, *, ack: bool, split: bool) -> int:
        bits = version_bits(self.spec.version)
        return bits | (PacketFlag.ACK_REQUESTED if ack else 0) | (PacketFlag.SPLIT if split else 0)

    def segment(self, qn: str, cn: str, cp: str, *, ack: bool, part: tuple[int, int] | None = None,
                backfill: bool = False, st: str | None = None) -> bytes:  # fmt: skip
        """`QN;ST;CN;PW;MN;Flag;[PNUM;PNO;][RF=1;]CP=&&…&&` (2025 §2.4 order)."""
        head = f"QN={qn};ST={st or self.spec.st};CN={cn};PW={self.pw};MN={self.spec.mn};"
        head += f"Flag={self._flag(ack=ack, split=part is not None)};"
        if part is not None:
            head += f"PNUM={part[0]};PNO={part[1]};"
        if backfill and self.spec.version is ProtocolVersion.HJ212_2025:
            head += "RF=1;"
        return f"{head}CP=&&{cp}&&".encode()

    def _encode(self, item: Outgoing) -> None:
        item.qn = self.new_qn(self._sim_for_qn)
        item.frame = encode_frame(self.segment(item.qn, item.cn, item.cp, ack=item.ack, part=item.part,
                                               backfill=item.backfill))  # fmt: skip

    _sim_for_qn: datetime = datetime.min.replace(tzinfo=UTC)

    # -- link -----------------------------------------------------------------------------------

    def frames_due(self, sim: datetime, now_s: float) -> list[bytes]:
        """Frames to write now (data, resends, replies, a heartbeat if idle on 2025)."""
        self._sim_for_qn = sim
        frames = self.delivery.frames_due(now_s)
        if frames:
            self._last_send_s = now_s
        elif self._heartbeat_due(now_s):
            qn = self.new_qn(sim)
            self.heartbeat_qn = qn
            self._last_send_s = now_s
            self.counters.heartbeats += 1
            frames = [encode_frame(self.segment(qn, Cn.HEARTBEAT, "", ack=True))]
        self.counters.bytes_sent += sum(len(f) for f in frames)
        return frames

    def _heartbeat_due(self, now_s: float) -> bool:
        return self._may_heartbeat() and now_s - self._last_send_s >= self.spec.heartbeat_s

    def _may_heartbeat(self) -> bool:
        """A 2025 DAS on an idle link; one heartbeat at a time: the next waits for the 9013."""
        return (
            self.spec.version is ProtocolVersion.HJ212_2025
            and self.heartbeating
            and self.delivery.connected
            and self.heartbeat_qn is None
        )

    def next_sim_due(self) -> datetime:
        """Simulated time of the next record (approximate when the clock drifts)."""
        return min(self.sim_of(t) for t in (self._next_rtd, *self._next.values()))

    def next_real_due(self) -> float | None:
        deadline = self.delivery.next_deadline_s()
        if self._may_heartbeat():
            heartbeat = self._last_send_s + self.spec.heartbeat_s
            deadline = heartbeat if deadline is None else min(deadline, heartbeat)
        return deadline

    def link_up(self, now_s: float) -> None:
        self._last_send_s = now_s
        self.delivery.link_up()

    def stop(self) -> None:
        """The run is over: a heartbeat still waiting is counted as such, not as lost with the link."""
        if self.heartbeat_qn is not None:
            self.heartbeat_qn = None
            self.counters.heartbeats_waiting += 1

    def link_down(self) -> None:
        if self.heartbeat_qn is not None:
            self.heartbeat_qn = None
            self.counters.heartbeats_lost += 1  # its 9013, if any, went with the link
        self.delivery.link_down()

    def receive(self, packet: Packet, sim: datetime, now_s: float) -> None:
        """A packet from the platform: acks are matched by QN, commands answered (`commands.py`)."""
        from hj212gw.simulator.commands import handle_packet  # commands imports this module

        self._sim_for_qn = sim
        handle_packet(self, packet, sim, now_s)

    def history_range(self, cn: str, begin: datetime, end: datetime) -> list[tuple[datetime, int]]:
        """Recorded (period start, length in s) of `cn` within [begin, end], both ends inclusive (§9.2)."""
        return [(t, step) for t, step in self.recorded.get(cn, ()) if begin <= t <= end]

    @property
    def unacked(self) -> int:
        return self.delivery.unacked
