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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayChild:
    """`hj212gw serve` as a child process on fixed loopback ports."""

    def __init__(self, dsn: str, schema: str, log: Path, *extra_args: str) -> None:
        self.port = free_port()
        self.http = free_port()
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
