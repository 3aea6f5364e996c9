"""`hj212gw simulate`: run N simulated DAS units against a gateway and print what happened.

`run_simulation(config)` is the API (tests and the main CLI call it); `main(argv)` parses flags,
optionally on top of a TOML/JSON file, prints a progress line to stderr every few seconds and a
summary (text or `--json`) to stdout. Exit code 0, or 2 for bad arguments.
"""

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hj212gw.simulator.clock import VirtualClock, parse_start
from hj212gw.simulator.config import (
    VERSION_LABELS,
    SimConfig,
    device_specs,
    load_file,
    parse_ratio,
    with_overrides,
)
from hj212gw.simulator.connection import DeviceRunner
from hj212gw.simulator.device import AckHook, SimDevice
from hj212gw.simulator.scenarios import for_device, parse_scenario
from hj212gw.simulator.stats import Counters, Summary, progress_line, summarize


def build_devices(
    config: SimConfig, clock: VirtualClock, counters: Counters, on_ack: AckHook | None = None
) -> list[SimDevice]:
    started = clock.sim_now()
    return [
        SimDevice(spec, for_device(config.scenarios, spec.index, started), counters, started, on_ack=on_ack)
        for spec in device_specs(config)
    ]


async def run_simulation(config: SimConfig, *, progress: bool = False, on_ack: AckHook | None = None) -> Summary:
    """Run the simulation until its duration (real or simulated) is over, then drain and summarise.

    The duration is enforced hard: data is generated up to the simulated end, outstanding acks
    are awaited for at most `drain_s`, then every device task is cancelled. An overloaded run
    (more devices or speed than this process can generate) ends on time with the data it made.
    `on_ack(mn, packet)` is called for every data packet the platform acknowledged.
    """
    host, port = config.host_port()
    clock = VirtualClock(speed=config.speed, start=parse_start(config.start, datetime.now(UTC)))
    counters = Counters()
    devices = build_devices(config, clock, counters, on_ack)
    run_s = run_seconds(config)
    began, sim_began = time.monotonic(), clock.start  # building the devices took some simulated time
    sim_end = None if run_s is None else sim_began + timedelta(seconds=run_s * config.speed)
    hard_stop_s = None if run_s is None else began + run_s + config.drain_s
    runners = [
        DeviceRunner(
            device,
            clock,
            host,
            port,
            start_delay_s=device.spec.index / config.ramp if config.ramp > 0 else 0.0,
            reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s,
            generate_until=sim_end,
            stop_at_s=hard_stop_s,
        )
        for device in devices
    ]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    reporter = asyncio.create_task(_report(runners, counters, clock, began, config.progress_s)) if progress else None
    try:
        if run_s is None or hard_stop_s is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(run_s)
            await _drain(runners, hard_stop_s)
    finally:
        sim_now = clock.sim_now() if sim_end is None else min(clock.sim_now(), sim_end)
        for task in [*tasks, *([reporter] if reporter else [])]:
            task.cancel()
        await asyncio.gather(*tasks, *([reporter] if reporter else []), return_exceptions=True)
    return summarize(
        counters,
        devices=len(devices),
        unacked=sum(d.unacked for d in devices),
        duration_s=time.monotonic() - began,
        sim_duration_s=(sim_now - sim_began).total_seconds(),
    )


def run_seconds(config: SimConfig) -> float | None:
    """Real seconds of data generation: the shorter of `duration_s` and `sim_duration_s / speed`."""
    limits = [d for d in (config.duration_s, config.sim_duration_s and config.sim_duration_s / config.speed) if d]
    return min(limits) if limits else None


async def _drain(runners: list[DeviceRunner], hard_stop_s: float) -> None:
    """Wait until every device has generated up to the end and has no acks outstanding, or the hard stop."""
    while time.monotonic() < hard_stop_s and not all(r.settled(time.monotonic()) for r in runners):
        await asyncio.sleep(0.05)


async def _report(
    runners: list[DeviceRunner], counters: Counters, clock: VirtualClock, began: float, every_s: float
) -> None:
    while True:
        await asyncio.sleep(every_s)
        connected = sum(r.connected for r in runners)
        sim_label = clock.sim_now().strftime("%Y-%m-%d %H:%M")
        line = progress_line(counters, connected=connected, devices=len(runners), elapsed_s=time.monotonic() - began,
                             sim_label=sim_label)  # fmt: skip
        print(line, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hj212gw simulate", description="Simulate HJ 212 data loggers (DAS).")
    p.add_argument("--config", type=Path, help="TOML or JSON file: [simulation] settings and [[scenario]] tables")
    p.add_argument("--target", help="HOST:PORT of the gateway (default 127.0.0.1:9212)")
    p.add_argument("--count", type=int, help="number of devices (default 10)")
    p.add_argument("--duration", type=float, help="real seconds to run (default 60; 0 = until Ctrl-C)")
    p.add_argument("--sim-duration", type=float, help="simulated seconds to run instead")
    p.add_argument("--speed", type=float, help="virtual clock speed: 1440 = a day per minute (default 1)")
    p.add_argument("--start", help="simulated start: ISO 8601, or a span ago such as -6h (default now)")
    p.add_argument("--ramp", type=float, help="connects per second (default all at once)")
    p.add_argument("--seed", type=int, help="seed for MNs, values and episodes (default 1)")
    p.add_argument("--versions", help="protocol mix, e.g. 2017=0.8,2025=0.15,2005=0.05")
    p.add_argument("--kinds", help="site mix by ST, e.g. 31=0.5,32=0.5 (air / water source)")
    p.add_argument("--tz", help="device time zone (default Asia/Shanghai)")
    p.add_argument("--rtd-interval", type=int, help="RtdInterval in seconds (default 30)")
    p.add_argument("--min-interval", type=int, help="MinInterval in minutes (default 10)")
    p.add_argument("--uploads", help="CNs uploaded on their own, e.g. 2011,2051,2061,2031")
    p.add_argument("--no-ack", action="store_true", help="send data without the ack bit (Flag 4 / 8)")
    p.add_argument("--over-time", type=float, help="OverTime seconds before a resend (default 10)")
    p.add_argument("--re-count", type=int, help="ReCount resends (default 3)")
    p.add_argument("--window", type=int, help="unacknowledged packets in flight per device (default 8)")
    p.add_argument("--heartbeat", type=float, help="idle seconds before a 2025 heartbeat (default 60)")
    p.add_argument("--scenario", action="append", default=[], metavar="KIND:key=value,...",
                   help="add a scenario, e.g. cut:devices=0;1,start_s=600,duration_s=1800")  # fmt: skip
    p.add_argument("--progress", type=float, help="seconds between progress lines (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def parse_scenario_flag(text: str) -> dict[str, object]:
    """`cut:devices=0;1,start_s=600,duration_s=1800` -> a scenario table.

    `devices` is `all`, a fraction (`0.1`: every tenth device) or indices separated by `;`.
    Raises ValueError for a value that is none of these.
    """
    kind, _, rest = text.partition(":")
    table: dict[str, object] = {"kind": kind}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key == "devices":
            table[key] = _device_selector(value)
        elif key == "factors":
            table[key] = value.split(";")
        elif key == "flag":
            table[key] = value
        else:
            table[key] = float(value)
    return table


def _device_selector(value: str) -> str | float | list[int]:
    if value == "all":
        return value
    try:
        return float(value) if "." in value else [int(v) for v in value.split(";")]
    except ValueError:
        raise ValueError(f"devices={value!r}: use all, a fraction (0.1) or indices separated by ; (0;3)") from None


def config_from_args(args: argparse.Namespace) -> SimConfig:
    settings, scenarios = load_file(args.config) if args.config else ({}, ())
    flags = {
        "target": args.target, "count": args.count, "speed": args.speed, "start": args.start, "ramp": args.ramp,
        "seed": args.seed, "tz": args.tz, "rtd_interval_s": args.rtd_interval, "min_interval_min": args.min_interval,
        "over_time_s": args.over_time, "re_count": args.re_count, "window": args.window,
        "heartbeat_s": args.heartbeat, "progress_s": args.progress, "sim_duration_s": args.sim_duration,
    }  # fmt: skip
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.duration is not None:
        settings["duration_s"] = args.duration or None
    if args.versions:
        settings["versions"] = parse_ratio(args.versions, VERSION_LABELS)
    elif "versions" in settings and isinstance(settings["versions"], str):
        settings["versions"] = parse_ratio(settings["versions"], VERSION_LABELS)
    if args.kinds:
        settings["kinds"] = parse_ratio(args.kinds, {"31": 1, "32": 1})
    if args.uploads:
        settings["uploads"] = tuple(args.uploads.split(","))
    if args.no_ack:
        settings["ack"] = False
    extra = tuple(parse_scenario(parse_scenario_flag(s)) for s in args.scenario)
    settings["scenarios"] = (*scenarios, *extra)
    config = with_overrides(SimConfig(), **settings)
    config.host_port()
    parse_start(config.start, datetime.now(UTC))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"hj212gw simulate: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop  # optional: faster event loop where available
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        summary = runner(run_simulation(config, progress=not args.quiet))
    except KeyboardInterrupt:
        return 130
    print(summary.to_json() if args.json else summary.to_text())
    return 0
