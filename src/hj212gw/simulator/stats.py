"""Counters of a simulation run and the summary printed at its end. No I/O besides formatting.

Latencies are kept as a bounded reservoir sample, so a long run with many devices has a fixed
memory cost; percentiles are computed from the sample at the end.
"""

import json
import random
from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class Counters:
    """Totals over all devices; the device core and the shell add to one shared instance."""

    sent: int = 0  # first transmissions of data packets (live and re-uploads)
    acked: int = 0
    resent: int = 0  # OverTime resends with the same QN
    reuploaded: int = 0  # re-uploads from the unacked store after a failure or reconnect
    dropped: int = 0  # data lost because the unacked store was full
    rtd_expired: int = 0  # real-time packets given up (a DAS keeps no real-time backlog)
    history_requests: int = 0
    history_packets: int = 0
    commands: int = 0  # platform commands answered (1000, 1011, 1012, 106x, 2012, …)
    heartbeats: int = 0
    heartbeats_answered: int = 0  # 9013 (or 9014) with the heartbeat's QN
    heartbeats_lost: int = 0  # still waiting for the reply when the link went down
    heartbeats_waiting: int = 0  # still waiting for the reply when the run stopped
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    bad_frames_sent: int = 0  # deliberate bad CRCs
    garbage_sent: int = 0
    split_parts: int = 0
    frames_received: int = 0
    frames_rejected: int = 0  # bytes from the platform the DAS could not decode
    bytes_sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    latency_seen: int = 0
    latency_cap: int = 200_000
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add_latency(self, ms: float) -> None:
        self.latency_seen += 1
        if len(self.latencies_ms) < self.latency_cap:
            self.latencies_ms.append(ms)
            return
        slot = self._rng.randrange(self.latency_seen)
        if slot < self.latency_cap:
            self.latencies_ms[slot] = ms


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


@dataclass(frozen=True, slots=True)
class Summary:
    """The result of `run_simulation`: totals, latency percentiles (ms), and the run's shape."""

    devices: int
    duration_s: float
    sim_duration_s: float
    sent: int
    acked: int
    resent: int
    reuploaded: int
    unacked: int
    dropped: int
    rtd_expired: int
    history_requests: int
    history_packets: int
    commands: int
    heartbeats: int
    heartbeats_answered: int
    heartbeats_lost: int
    heartbeats_waiting: int
    connects: int
    reconnects: int
    connect_failures: int
    bad_frames_sent: int
    garbage_sent: int
    split_parts: int
    frames_rejected: int
    bytes_sent: int
    ack_latency_ms: dict[str, float | None]

    @property
    def packets_per_s(self) -> float:
        return (self.sent + self.resent) / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data["packets_per_s"] = round(self.packets_per_s, 1)
        return json.dumps(data, sort_keys=True)

    def to_text(self) -> str:
        lat = self.ack_latency_ms

        def ms(key: str) -> str:
            value = lat.get(key)
            return "-" if value is None else f"{value:.1f}"

        return "\n".join(
            [
                f"devices {self.devices}  wall {self.duration_s:.1f} s  simulated {self.sim_duration_s / 3600:.2f} h",
                f"sent {self.sent}  acked {self.acked}  resent {self.resent}  re-uploaded {self.reuploaded}  "
                f"unacked {self.unacked}  dropped {self.dropped}  ({self.packets_per_s:.0f} packets/s)",
                f"history requests answered {self.history_requests} ({self.history_packets} packets)  "
                f"commands {self.commands}  heartbeats {self.heartbeats} ({self.heartbeats_answered} answered, "
                f"{self.heartbeats_lost} lost with the link, {self.heartbeats_waiting} waiting at the end)",
                f"connects {self.connects}  reconnects {self.reconnects}  connect failures {self.connect_failures}",
                f"ack latency ms  p50 {ms('p50')}  p90 {ms('p90')}  p99 {ms('p99')}  max {ms('max')}",
            ]
        )


def summarize(counters: Counters, *, devices: int, unacked: int, duration_s: float, sim_duration_s: float) -> Summary:
    ordered = sorted(counters.latencies_ms)
    latency = {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }
    return Summary(
        devices=devices,
        duration_s=duration_s,
        sim_duration_s=sim_duration_s,
        sent=counters.sent,
        acked=counters.acked,
        resent=counters.resent,
        reuploaded=counters.reuploaded,
        unacked=unacked,
        dropped=counters.dropped,
        rtd_expired=counters.rtd_expired,
        history_requests=counters.history_requests,
        history_packets=counters.history_packets,
        commands=counters.commands,
        heartbeats=counters.heartbeats,
        heartbeats_answered=counters.heartbeats_answered,
        heartbeats_lost=counters.heartbeats_lost,
        heartbeats_waiting=counters.heartbeats_waiting,
        connects=counters.connects,
        reconnects=counters.reconnects,
        connect_failures=counters.connect_failures,
        bad_frames_sent=counters.bad_frames_sent,
        garbage_sent=counters.garbage_sent,
        split_parts=counters.split_parts,
        frames_rejected=counters.frames_rejected,
        bytes_sent=counters.bytes_sent,
        ack_latency_ms=latency,
    )


def progress_line(counters: Counters, *, connected: int, devices: int, elapsed_s: float, sim_label: str) -> str:
    rate = (counters.sent + counters.resent) / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"[{elapsed_s:6.1f}s sim {sim_label}] connected {connected}/{devices}  sent {counters.sent}  "
        f"acked {counters.acked}  resent {counters.resent}  reuploaded {counters.reuploaded}  "
        f"history {counters.history_requests}  reconnects {counters.reconnects}  {rate:.0f} pkt/s"
    )
