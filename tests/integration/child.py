"""`hj212gw serve` run as a real child process (the console script), for crash and supervisor tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

HJ212GW = Path(sys.executable).parent / "hj212gw"


def free_port(count: int = 1) -> int:
    """A free loopback port; with count > 1, the first of that many free consecutive ports."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            first = int(sock.getsockname()[1])
        if all(_free(first + i) for i in range(1, count)):
            return first


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class GatewayChild:
    """`hj212gw serve` as a child process on fixed loopback ports (with `--workers N`, worker i
    serves HTTP on `http + i`: N free ports in a row are reserved for it)."""

    def __init__(self, dsn: str, schema: str, log: Path, *extra_args: str, workers: int = 1) -> None:
        self.port = free_port()
        self.http = free_port(workers)
        if workers > 1:
            extra_args = ("--workers", str(workers), *extra_args)
        self.args = [
            str(HJ212GW),
            "serve",
            "--database-url",
            dsn,
            "--database-schema",
            schema,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--http",
            f"127.0.0.1:{self.http}",
            "--log-format",
            "json",
            *extra_args,
        ]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        async with asyncio.timeout(30):
            while not await self._ready():
                assert self.process.poll() is None, self.log.read_text()
                await asyncio.sleep(0.1)

    async def _ready(self, http_port: int | None = None) -> bool:
        url = f"http://127.0.0.1:{http_port or self.http}/readyz"
        try:
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)
