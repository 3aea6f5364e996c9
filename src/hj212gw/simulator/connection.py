"""The asyncio shell of one simulated DAS: a TCP client that moves bytes and applies scenarios.

It connects (with a ramp delay, then exponential backoff with jitter after failures), feeds
received bytes through `FrameBuffer` and `decode_frame` into the device, writes what the device
wants written, closes the link while a cut or flap scenario says the network is down, and
injects garbage or bad CRCs at the scenario's rate. All protocol decisions live in the device.
"""

import asyncio
import random
from datetime import UTC, datetime

from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.errors import Hj212Error
from hj212gw.protocol.framing import FrameBuffer
from hj212gw.simulator.clock import VirtualClock
from hj212gw.simulator.device import SimDevice

_MAX_SLEEP_S = 0.5  # re-check scenarios at least this often
_CATCH_UP_RECORDS = 1  # periods produced per step before yielding (one costs ~1 ms of CPU)
_CONNECT_TIMEOUT_S = 5.0


class _Link(asyncio.Protocol):
    def __init__(self, runner: "DeviceRunner") -> None:
        self.runner = runner
        self.frames = FrameBuffer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        runner = self.runner
        self.frames.feed(data)
        sim, now_s = runner.clock.sim_now(), runner.clock.real_now()
        while True:
            try:
                frame = self.frames.next_frame()
                if frame is None:
                    break
                packet = decode_frame(frame)
            except Hj212Error:
                runner.device.counters.frames_rejected += 1
                continue
            runner.device.counters.frames_received += 1
            runner.device.receive(packet, sim, now_s)
        runner.kick()

    def connection_lost(self, exc: Exception | None) -> None:
        self.runner.lost(self)


class DeviceRunner:
    """Runs one SimDevice against HOST:PORT until `stop()`, cancellation or `stop_at_s`.

    It generates data up to simulated `generate_until` (then `generating` turns False) and not
    after real `stop_at_s`. A device that fell behind catches up one period per step and yields
    in between, so an overloaded process stays responsive and its deadlines hold; meanwhile it
    meets the scenarios' network cuts at its records' time, not the clock's.
    """

    def __init__(
        self,
        device: SimDevice,
        clock: VirtualClock,
        host: str,
        port: int,
        *,
        start_delay_s: float = 0.0,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 30.0,
        generate_until: datetime | None = None,
        stop_at_s: float | None = None,
    ) -> None:
        self.device = device
        self.clock = clock
        self.host = host
        self.port = port
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.link: _Link | None = None
        self.generating = True
        self.generate_until = generate_until or datetime.max.replace(tzinfo=UTC)
        self.stop_at_s = stop_at_s if stop_at_s is not None else float("inf")
        self.running = True
        self._backoff_s = reconnect_min_s
        self._connect_at = clock.real_now() + start_delay_s
        self._ever_connected = False
        self._event = asyncio.Event()
        self._rng = random.Random(device.spec.seed)

    @property
    def connected(self) -> bool:
        return self.link is not None

    def settled(self, now_s: float) -> bool:
        """Done generating and, if connected, nothing left to send or waiting for its 9014 or 9013."""
        if self.generating:
            return False
        d = self.device.delivery
        waiting = d.in_flight or d.fresh or d.lane or d.lane_waiting or d.store or self.device.heartbeat_qn
        return self.link is None or not waiting

    def kick(self) -> None:
        self._event.set()

    def stop(self) -> None:
        self.running = False
        self.kick()

    def lost(self, link: _Link) -> None:
        if link is not self.link:
            return
        self.link = None
        self.device.link_down()
        self.device.counters.disconnects += 1
        self._connect_at = self.clock.real_now() + self._jitter(self.reconnect_min_s)
        self.kick()

    def _jitter(self, base_s: float) -> float:
        return base_s * (0.5 + self._rng.random())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.running:
                sim, now_s = self.clock.sim_now(), self.clock.real_now()
                if now_s >= self.stop_at_s:
                    break
                behind = self.generating and self._generate(sim)
                if not self.generating and self.device.delivery.store:
                    self.device.delivery.retry_store_now()  # draining: what failed is retried at once
                # A device catching up lives at its records' time: data of a cut stays cut off.
                at = min(sim, self.device.next_sim_due()) if behind else sim
                down_until = self.device.scenarios.network_down(at)
                if self.link is not None and down_until is not None:
                    self._drop()
                elif self.link is None and down_until is None and now_s >= self._connect_at:
                    await self._connect(loop)
                    continue
                if self.link is not None:
                    self._write(sim, now_s)
                if behind:
                    await asyncio.sleep(0)  # let the other devices, acks and the stop timer run
                    continue
                await self._sleep(loop, self._delay(sim, now_s, down_until))
        finally:
            self.device.stop()
            self._drop()

    def _generate(self, sim: datetime) -> bool:
        """One catch-up step; True if the device is still behind the clock."""
        behind = self.device.tick(min(sim, self.generate_until), max_records=_CATCH_UP_RECORDS)
        if not behind and sim >= self.generate_until:
            self.generating = False
            self.device.heartbeating = False  # the run drains: only the heartbeat waiting is awaited
            self.device.delivery.retry_store_now()  # the run is draining: no point waiting RetryAfter
        return behind

    def _delay(self, sim: datetime, now_s: float, down_until: datetime | None) -> float:
        delays = [_MAX_SLEEP_S]
        if self.generating:
            delays.append(self.clock.real_delay_until(min(self.device.next_sim_due(), self.generate_until)))
        if self.link is not None:
            real_due = self.device.next_real_due()
            if real_due is not None:
                delays.append(real_due - now_s)
            if self.device.delivery.has_work():
                delays.append(0.0)
        elif down_until is not None:
            delays.append(self.clock.real_delay_until(down_until))
        else:
            delays.append(self._connect_at - now_s)
        return max(0.0, min(delays))

    async def _sleep(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        if self._event.is_set():
            self._event.clear()
            await asyncio.sleep(0)
            return
        handle = loop.call_later(delay_s, self._event.set)
        try:
            await self._event.wait()
        finally:
            handle.cancel()
            self._event.clear()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        counters = self.device.counters
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):  # not wait_for: hj212gw.waiting says why
                _, link = await loop.create_connection(lambda: _Link(self), self.host, self.port)
        except (OSError, TimeoutError):
            counters.connect_failures += 1
            self._connect_at = self.clock.real_now() + self._jitter(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, self.reconnect_max_s)
            return
        if not self.running:
            if link.transport is not None:
                link.transport.close()
            return
        self.link = link
        self._backoff_s = self.reconnect_min_s
        counters.connects += 1
        if self._ever_connected:
            counters.reconnects += 1
        self._ever_connected = True
        self.device.link_up(self.clock.real_now())

    def _drop(self) -> None:
        link, self.link = self.link, None
        if link is None:
            return
        self.device.link_down()
        self.device.counters.disconnects += 1
        if link.transport is not None:
            link.transport.abort()

    def _write(self, sim: datetime, now_s: float) -> None:
        frames = self.device.frames_due(sim, now_s)
        if not frames or self.link is None or self.link.transport is None:
            return
        scenarios = self.device.scenarios
        garbage, bad_crc = scenarios.rate("garbage", sim), scenarios.rate("bad_crc", sim)
        if garbage or bad_crc:
            frames = [self._mangle(f, garbage, bad_crc) for f in frames]
        self.link.transport.write(b"".join(frames))

    def _mangle(self, frame: bytes, garbage: float, bad_crc: float) -> bytes:
        counters = self.device.counters
        if bad_crc and self._rng.random() < bad_crc:
            counters.bad_frames_sent += 1
            crc = int(frame[-6:-2], 16)
            frame = frame[:-6] + b"%04X" % (crc ^ 0x0101) + b"\r\n"
        if garbage and self._rng.random() < garbage:
            counters.garbage_sent += 1
            junk = bytes(self._rng.randrange(33, 127) for _ in range(self._rng.randrange(1, 40)))
            frame = junk.replace(b"#", b"*") + frame
        return frame
