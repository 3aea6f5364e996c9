"""The benchmarks' harness around the real gateway: `hj212gw serve` as a subprocess on free ports
(`GatewayProcess`), the PostgreSQL server under test and the CPU of its processes (`Postgres`),
CPU and memory of any process from /proc, the median of repeated runs, and the machine's
description. Used by bench_gateway, its burst phase, bench_alerts, bench_backfill and attack.
"""

import asyncio
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(count: int = 1) -> int:
    """A free port, and with count > 1 the first of that many free consecutive ports."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = int(s.getsockname()[1])
        if all(_port_free(first + i) for i in range(1, count)):
            return first


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(ppid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    pids.append(int(entry.name))
    return pids


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Postgres:
    """The server under test: a DSN, the postmaster pid, CPU of all its processes, and of the
    backends serving the gateway (found by application_name in pg_stat_activity)."""

    def __init__(self, dsn: str, postmaster: int, application_name: str) -> None:
        self.dsn = dsn
        self.postmaster = postmaster
        self.application_name = application_name

    def cpu(self) -> dict[int, float]:
        pids = [self.postmaster, *children_of(self.postmaster)]
        return {pid: cpu_s(pid) for pid in pids}

    def gateway_backends(self) -> list[int]:
        return asyncio.run(self._backends())

    async def _backends(self) -> list[int]:
        conn = await asyncpg.connect(self.dsn)
        try:
            sql = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
            rows = await conn.fetch(sql, self.application_name)
        finally:
            await conn.close()
        return [r["pid"] for r in rows]

    @staticmethod
    async def find_postmaster(dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        finally:
            await conn.close()


def pg_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    # Backends that exited in the window lose their time; the pool keeps its connections, so rare.
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


class GatewayProcess:
    """`hj212gw serve` on free ports, logging to a file; stop() sends SIGTERM. `module`: another
    program taking the same arguments (bench/floor.py)."""

    def __init__(
        self, dsn: str, schema: str, src: Path | None, env: dict[str, str], log_dir: Path, module: str = "hj212gw.cli"
    ) -> None:
        self.workers = int(env.get("HJ212GW_WORKERS", "1"))  # worker i serves HTTP on self.http + i
        self.port = free_port()
        self.http = free_port(self.workers)
        self.log_path = log_dir / f"gateway-{self.port}.log"
        environ = {
            **os.environ,
            "HJ212GW_CONNECTIONS__MAX_CONNECTIONS": "30000",
            "HJ212GW_CONNECTIONS__MAX_CONNECTIONS_PER_IP": "30000",
            "HJ212GW_LOG_FORMAT": "json",
            **env,
        }
        if src is not None:
            environ["PYTHONPATH"] = str(src)
        cmd = [sys.executable, "-m", module, "serve", "--listen", f"127.0.0.1:{self.port}"]
        cmd += ["--http", f"127.0.0.1:{self.http}", "--database-url", dsn, "--database-schema", schema]
        self.log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=environ, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def http_ports(self) -> range:
        return range(self.http, self.http + self.workers)

    def cpu_s(self) -> float:
        """CPU of the gateway: the process and, with --workers, its worker processes."""
        return cpu_s(self.pid) + sum(cpu_s(child) for child in children_of(self.pid))

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = list(self.http_ports())
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{waiting[0]}/readyz", timeout=1) as resp,
            ):
                if resp.status == 200:
                    waiting.pop(0)
                    if not waiting:
                        return
                    continue
            time.sleep(0.2)
        raise RuntimeError(f"gateway not ready after {timeout_s}s; see {self.log_path}")

    def counters(self) -> dict[str, float]:
        """Acks sent (9014) and the batch histograms' sums and counts, from /metrics."""
        wanted = {
            'hj212gw_replies_total{cn="9014"}': "acks",
            "hj212gw_batch_rows_sum": "batch_rows",
            "hj212gw_batch_rows_count": "batches",
            "hj212gw_batch_commit_seconds_sum": "commit_s",
            'hj212gw_ack_latency_seconds_bucket{le="0.03"}': "acks_within_30ms",
            "hj212gw_ack_latency_seconds_count": "acks_timed",
        }
        found = dict.fromkeys(wanted.values(), 0.0)
        for port in self.http_ports():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                for line in resp.read().decode().splitlines():
                    name, _, value = line.rpartition(" ")
                    if name in wanted:
                        found[wanted[name]] += float(value)
        return found

    def frames_ok(self) -> float:
        """Frames accepted so far (every CN; 2005 uploads ask for no ack), from /metrics."""
        total = 0.0
        for port in self.http_ports():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith("hj212gw_frames_total{") and 'result="ok"' in line:
                        total += float(line.rpartition(" ")[2])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over repeated runs; the samples are kept under `runs`."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        numbers = [r[key] for r in runs if isinstance(r.get(key), int | float) and not isinstance(r[key], bool)]
        out[key] = round(statistics.median(numbers), 2) if len(numbers) == len(runs) else value
    out["runs"] = runs
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")  # fmt: skip
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "kernel": platform.release()}


async def _drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
