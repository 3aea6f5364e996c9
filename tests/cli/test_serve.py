"""Process-level tuning done by `hj212gw serve` once it has started."""

import asyncio
import gc
import json
import socket
import subprocess
import sys

from hj212gw.cli.serve import GC_GEN0_THRESHOLD, tune_gc


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_generation_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 1000  # modules, classes, settings: all of start-up
        assert gc.isenabled()  # cycles are still collected, less often
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_serve_on_a_busy_port_fails_in_one_error_line(pg_dsn: str, schema: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "hj212gw.cli", "serve", "--listen", f"127.0.0.1:{port}",
                "--http", "127.0.0.1:0", "--database-url", pg_dsn, "--database-schema", schema,
                "--log-format", "json"]  # fmt: skip
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    (failed,) = [json.loads(line) for line in done.stdout.splitlines() + done.stderr.splitlines()
                 if "gateway_start_failed" in line]  # fmt: skip
    assert f"cannot listen on 127.0.0.1:{port} (listen)" in failed["detail"] and "in use" in failed["detail"]
