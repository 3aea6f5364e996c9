"""The gateway's per-packet CPU on one core, without sockets or PostgreSQL: a fixed stream of data
packets through `DasConnection.data_received` → session → registry → `Intake.submit_packet` →
`BatchWriter.submit`, then each item confirmed as its batch's COMMIT would (`on_done` → 9014
queued → one write per connection and round).

The transport is an in-memory stand-in and `Database.save_batch` returns at once (the writer's own
`_take` and `_commit` run, nothing reaches PostgreSQL), so the figure is the Python work the
gateway adds per packet, apart from asyncpg and the kernel: the part a change to server/, ingest/
or protocol/ moves. Compare two trees in one run with `--src` (each tree runs in its own process,
alternately, several times; medians); trees from before the issue #10 layout (ba6d1ba) work too:

    .venv/bin/python -m bench.bench_path --runs 7 --src /path/to/other/src
"""

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class MemoryTransport(asyncio.Transport):
    """Keeps what is written; reading is paused and resumed by flag only."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.written = 0
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _frames(mn: str, count: int) -> list[bytes]:
    """`count` minute packets of `mn`, one minute apart, ending an hour ago (inside the tolerance
    window): every packet is the device's next period, as in the field."""
    from bench.packets import MINUTE_VARIANTS, segment
    from hj212gw.protocol.framing import encode_frame

    start = datetime.now().replace(second=0, microsecond=0) - timedelta(minutes=count + 60)
    times = [(start + timedelta(minutes=n)).strftime("%Y%m%d%H%M%S") for n in range(count)]
    return [
        encode_frame(segment("2051", f"{t}{n % 1000:03d}", t, MINUTE_VARIANTS[n % 10], mn=mn))
        for n, t in enumerate(times)
    ]


def _gateway_classes() -> tuple[type, type]:
    """(Gateway, DasConnection) of this tree or of one from before the issue #10 layout."""
    try:
        from hj212gw.server.connection import DasConnection
        from hj212gw.server.listener import Gateway
    except ImportError:
        from hj212gw.gateway import Gateway  # type: ignore[no-redef]

        from hj212gw.server import DasConnection  # type: ignore[attr-defined,no-redef]
    return Gateway, DasConnection


async def _no_commit(*args: object, **kwargs: object) -> None:
    return None


async def _measure(
    connections: int, per_connection: int, rounds: int, monitoring: bool, alerts: bool
) -> dict[str, float]:
    from hj212gw.settings import DeviceSettings, Settings
    from hj212gw.storage.db import Database

    gateway_class, connection_class = _gateway_classes()
    devices = {"auth": "off"} if "auth" in DeviceSettings.model_fields else {}
    tracking: dict[str, Any] = {"monitoring": monitoring} if "monitoring" in Settings.model_fields else {}
    if "alerts" in Settings.model_fields:
        tracking["alerts"] = {"enabled": alerts}
    settings = Settings(database_url="postgresql://unused/none", devices=devices, **tracking)  # type: ignore[call-arg]
    db = Database(settings.database_url or "")
    db.save_batch = _no_commit  # type: ignore[method-assign]
    gateway = gateway_class(settings, db)
    writer = gateway.writer
    rules = getattr(gateway, "alerts", None)
    judge = rules.runner.judge if rules is not None else None
    if rules is not None:
        rules.engine.apply = _no_commit  # what the rules raise (constant values: flatline) is not written
    DasConnection = connection_class
    conns = []
    streams = []
    for i in range(connections):
        conn = DasConnection(gateway.deps)
        conn.connection_made(MemoryTransport(("127.0.0.1", 10_000 + i)))
        conns.append(conn)
        streams.append(_frames(f"BENCH{i:019d}", 1 + per_connection * rounds))
    for conn, frames in zip(conns, streams, strict=True):  # warm-up: bind the MNs, compile layouts
        conn.data_received(frames[0])
    await _confirm_all(writer)
    if judge is not None:
        await judge()
    await asyncio.sleep(0)
    gc.collect()  # as `serve` does once started (cli/serve.py tune_gc, the same in both trees)
    gc.freeze()
    gc.set_threshold(50_000, *gc.get_threshold()[1:])
    receive = confirm = 0.0
    packets = 0
    for r in range(rounds):
        started = time.process_time()
        for k in range(1 + r * per_connection, 1 + (r + 1) * per_connection):
            for conn, frames in zip(conns, streams, strict=True):
                conn.data_received(frames[k])
        receive += time.process_time() - started
        started = time.process_time()
        await _confirm_all(writer)
        await asyncio.sleep(0)  # the acks of the round are written
        if judge is not None:  # the per-packet rules, after commit (their own task in the gateway)
            await judge()
        confirm += time.process_time() - started
        packets += connections * per_connection
    return {"receive_us": receive / packets * 1e6, "confirm_us": confirm / packets * 1e6, "packets": packets}


async def _confirm_all(writer: Any) -> None:
    """Batches taken and "committed" by the writer's own code until its queue is empty."""
    batch_class = sys.modules[type(writer).__module__]._Batch
    while writer.pending:
        batch = batch_class()
        writer._take(batch)
        await writer._commit(batch.entries)


def _child(args: argparse.Namespace) -> None:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    result = asyncio.run(
        _measure(args.connections, args.per_connection, args.rounds, args.monitoring == "on", args.alerts == "on")
    )
    print(json.dumps(result))


def _run(src: Path | None, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ)
    path = [str(ROOT)] + ([str(src)] if src is not None else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    cmd = [sys.executable, "-m", "bench.bench_path", "--child", "--connections", str(args.connections),
           "--per-connection", str(args.per_connection), "--rounds", str(args.rounds),
           "--monitoring", args.monitoring, "--alerts", args.alerts]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--per-connection", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--src", type=Path, help="another tree's src/ to compare with, alternately")
    parser.add_argument("--monitoring", choices=("on", "off"), default="on", help="state and gap tracking")
    parser.add_argument("--alerts", choices=("on", "off"), default="on", help="the per-packet rules")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    sides: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    for _ in range(args.runs):
        sides["this"].append(_run(None, args))
        if args.src is not None:
            sides["other"].append(_run(args.src, args))
    for side, runs in sides.items():
        if not runs:
            continue
        receive = statistics.median(r["receive_us"] for r in runs)
        confirm = statistics.median(r["confirm_us"] for r in runs)
        totals = ", ".join(f"{r['receive_us'] + r['confirm_us']:.1f}" for r in runs)
        print(f"{side}: receive {receive:.1f} µs/packet, confirm {confirm:.1f} µs/packet, "
              f"total {receive + confirm:.1f} (median of {len(runs)}; runs: {totals})")  # fmt: skip


if __name__ == "__main__":
    main()
