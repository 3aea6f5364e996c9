"""A simulated DAS you drive by hand, for tests: a SimDevice on a FakeClock, no sockets.

    das = SteppedDevice(st="32", version="2017")
    das.connect()
    packets = das.advance(600)            # ten simulated minutes; returns what the DAS sent
    das.feed(build_data_ack(packets[0]))   # the platform answers; returns what the DAS sends back

Every frame the device writes is decoded with the protocol core, so tests assert on `Packet`s.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hj212gw.protocol.builders import build_data_ack
from hj212gw.protocol.models import Packet
from hj212gw.protocol.packets import iter_packets
from hj212gw.simulator.clock import FakeClock
from hj212gw.simulator.config import VERSION_LABELS, DeviceSpec, make_mn
from hj212gw.simulator.device import SimDevice
from hj212gw.simulator.profiles import profile_for
from hj212gw.simulator.scenarios import Scenario, for_device
from hj212gw.simulator.stats import Counters

SHANGHAI = ZoneInfo("Asia/Shanghai")
DEFAULT_START = datetime(2024, 3, 15, 0, 0, 0, tzinfo=SHANGHAI)


def decode_all(data: bytes) -> list[Packet]:
    """Every packet in a byte string (raises on a bad frame: the simulator must send good ones)."""
    return list(iter_packets(data))


class SteppedDevice:
    """One SimDevice on a FakeClock. `sent` keeps every packet it wrote, in order."""

    def __init__(
        self,
        *,
        st: str = "32",
        version: str = "2017",
        start: datetime = DEFAULT_START,
        scenarios: Iterable[Scenario] = (),
        seed: int = 1,
        index: int = 0,
        **spec: object,
    ) -> None:
        self.clock = FakeClock(start)
        self.counters = Counters()
        fields: dict[str, object] = {
            "index": index,
            "mn": make_mn(seed, index),
            "pw": "123456",
            "st": st,
            "version": VERSION_LABELS[version],
            "factors": profile_for(st),
            "seed": seed,
            "tz": SHANGHAI,
            "uploads": frozenset({"2051", "2061", "2031"}),
            "episode_rate": 0.0,
        }
        fields.update(spec)
        self.spec = DeviceSpec(**fields)  # type: ignore[arg-type]
        started = self.clock.sim_now()
        self.device = SimDevice(self.spec, for_device(scenarios, index, started), self.counters, started)
        self.sent: list[Packet] = []

    def connect(self) -> list[Packet]:
        self.device.link_up(self.clock.real_now())
        return self._flush()

    def disconnect(self) -> None:
        self.device.link_down()

    def local_now(self) -> datetime:
        return self.device.local(self.clock.sim_now())

    def advance(self, sim_seconds: float, *, real_seconds: float | None = None) -> list[Packet]:
        """Move time forward, stopping at every due moment; returns the packets written meanwhile."""
        end = self.clock.sim_now() + timedelta(seconds=sim_seconds)
        real_step = None if real_seconds is None else real_seconds
        out: list[Packet] = []
        while True:
            due = min(self.device.next_sim_due(), end)
            step = max((due - self.clock.sim_now()).total_seconds(), 0.0)
            share = None if real_step is None or sim_seconds == 0 else real_step * step / sim_seconds
            self.clock.advance(step, real_seconds=share)
            self.device.tick(self.clock.sim_now())
            out += self._flush()
            if self.clock.sim_now() >= end:
                return out

    def wait_real(self, seconds: float) -> list[Packet]:
        """Only network time passes (for OverTime resends and heartbeats)."""
        self.clock.advance(0, real_seconds=seconds)
        return self._flush()

    def feed(self, data: bytes) -> list[Packet]:
        """Bytes from the platform; returns what the device writes in response."""
        for packet in decode_all(data):
            self.device.receive(packet, self.clock.sim_now(), self.clock.real_now())
        return self._flush()

    def ack(self, packets: Iterable[Packet]) -> list[Packet]:
        """Answer every packet that asked for it with 9014."""
        return self.feed(
            b"".join(build_data_ack(p) for p in packets if p.ack_requested and p.cn.startswith(("2", "3")))
        )

    def _flush(self) -> list[Packet]:
        frames = self.device.frames_due(self.clock.sim_now(), self.clock.real_now())
        packets = decode_all(b"".join(frames))
        self.sent += packets
        return packets
