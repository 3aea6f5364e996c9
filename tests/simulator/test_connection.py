"""DeviceRunner over a real socket against the reference receiver."""

import asyncio
from datetime import UTC, datetime, timedelta

from hj212gw.protocol.models import parse_hj_time
from hj212gw.simulator.clock import VirtualClock
from hj212gw.simulator.config import SimConfig, device_specs
from hj212gw.simulator.connection import DeviceRunner
from hj212gw.simulator.device import SimDevice
from hj212gw.simulator.scenarios import Scenario, for_device
from hj212gw.simulator.stats import Counters
from tests.simulator.receiver import ReferenceReceiver


async def test_a_device_catching_up_keeps_the_data_of_a_past_cut_cut_off(receiver: ReferenceReceiver) -> None:
    # The device booted an hour ago and has generated nothing yet (as when its process fell
    # behind): its cut at 00:10-00:20 is over by the clock, but not by its records' time.
    port = receiver.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = SimConfig(target=f"127.0.0.1:{port}", count=1, versions={"2025": 1.0}, uploads=("2051",),
                       min_interval_min=1, episode_rate=0.0)  # fmt: skip
    # Booted a minute before a full hour (UTC, the simulator's default zone offset is whole hours):
    # its hour record falls due before the cut. Before, the catch-up produced all due minutes
    # before that hour and held its "records' time" at the hour boundary, so the cut was never
    # met (it failed or passed by the time of day the test ran at).
    clock = VirtualClock(speed=1.0, start=datetime(2024, 3, 15, 3, 59, 0, tzinfo=UTC))
    started = clock.sim_now() - timedelta(hours=1)
    cut = Scenario("cut", start_s=600, duration_s=600)
    device = SimDevice(device_specs(config)[0], for_device([cut], 0, started), Counters(), started)
    runner = DeviceRunner(device, clock, "127.0.0.1", port, reconnect_min_s=0.05, generate_until=clock.sim_now())
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(30):
        while runner.generating or not runner.settled(clock.real_now()):
            await asyncio.sleep(0.02)
    runner.stop()
    await task

    def minute(packet_time: str | None) -> float:  # the period's start, in seconds after boot
        local = parse_hj_time(packet_time or "")
        assert local is not None
        return (device.sim_of(local) - started).total_seconds()

    minutes = [(minute(p.data.data_time), p.rf) for p in receiver.packets(cn="2051")]
    assert any(not rf for at, rf in minutes if at < 540)  # live before the cut
    in_cut = [rf for at, rf in minutes if 620 <= at <= 1140]
    assert len(in_cut) >= 8 and all(in_cut)  # stored during the cut, re-uploaded with RF=1 after it
    assert device.counters.reconnects == 1
