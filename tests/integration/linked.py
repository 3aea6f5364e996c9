"""A simulated DAS (`SteppedDevice`) on a real socket to the gateway: it answers what the gateway
sends (commands, 9014s) as `simulator.commands` does, or stays mute. Its clock is a FakeClock:
simulated time moves only when a test advances it, network time never (no resends of its own)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hj212gw.protocol.framing import encode_frame
from hj212gw.simulator.testing import SteppedDevice
from tests.integration.das import DasClient

SHANGHAI = ZoneInfo("Asia/Shanghai")


def yesterday() -> datetime:
    """00:00 of yesterday, device time: history recorded from there is within the tolerance window."""
    return (datetime.now(SHANGHAI) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


class LinkedDevice:
    """`das` connected to a gateway's DAS port; `mute`: read everything, answer nothing."""

    def __init__(self, das: SteppedDevice, client: DasClient, *, mute: bool = False) -> None:
        self.das = das
        self.client = client
        self.mute = mute
        self.received: list[str] = []  # the CN of every packet the gateway sent
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, *, hours_recorded: int = 3, mute: bool = False, **spec: object) -> LinkedDevice:
        """A device that recorded `hours_recorded` hours of history (uploaded nothing), connected
        and known to the gateway by a first packet (a 2081 power-on notice)."""
        das = SteppedDevice(start=yesterday(), uploads=frozenset(), **spec)  # type: ignore[arg-type]
        das.advance(hours_recorded * 3600)
        linked = cls(das, await DasClient.connect(port), mute=mute)
        das.connect()
        now = das.local_now().strftime("%Y%m%d%H%M%S")
        hello = das.device.segment(das.device.new_qn(das.clock.sim_now()), "2081", f"DataTime={now};RestartTime={now}",
                                   ack=True)  # fmt: skip
        await linked.client.send(encode_frame(hello))
        reply = await linked.client.reply()  # its 9014: the gateway holds the MN now
        assert reply.packet.cn == "9014"
        linked._task = asyncio.get_running_loop().create_task(linked._relay())
        return linked

    @property
    def mn(self) -> str:
        return self.das.spec.mn

    async def _relay(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                try:
                    reply = await self.client.reply(timeout_s=3600)
                except TimeoutError:
                    continue
                self.received.append(reply.packet.cn)
                if self.mute:
                    continue
                device, clock = self.das.device, self.das.clock
                device.receive(reply.packet, clock.sim_now(), clock.real_now())
                frames = device.frames_due(clock.sim_now(), clock.real_now())
                if frames:
                    await self.client.send(b"".join(frames))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()
