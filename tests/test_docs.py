"""The documented first hour runs: the README's quick start and try-it commands, and every command of
docs/simulator.md, parsed out of the markdown (as .ci/run extracts the test command, so docs and
test cannot drift) and run against a real gateway (`hj212gw serve` as a process) and PostgreSQL.

Only what CI cannot do is changed: the ports (free ones instead of 9212/9213), the database (the
test server and a fresh schema), and shorter runs (`--duration`, `--count`), appended last so
they override what the document says.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from hj212gw.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
HJ212GW = [sys.executable, "-m", "hj212gw.cli"]
SHORT_RUN = ["--duration", "3", "--count", "20", "--quiet", "--json"]


def sh_blocks(markdown: str, after: str = "") -> list[list[str]]:
    """The commands of each ```sh block (after the text `after`): continuations joined, comments cut."""
    blocks = re.findall(r"```sh\n(.*?)```", markdown[markdown.index(after) :], re.DOTALL)
    commands = []
    for block in blocks:
        lines = block.replace("\\\n", " ").splitlines()
        commands.append([re.sub(r"\s+#\s.*$", "", line).strip() for line in lines if line.strip()])
    return commands


def hj212gw_argv(command: str) -> list[str]:
    """`hj212gw …` or `.venv/bin/hj212gw …` as an argv of this interpreter's hj212gw."""
    words = shlex.split(command)
    assert words[0].endswith("hj212gw"), command
    return [*HJ212GW, *words[1:]]


@dataclass
class Gateway:
    das_port: int
    http_port: int

    def on_test_ports(self, command: str) -> str:
        return command.replace("127.0.0.1:9212", f"127.0.0.1:{self.das_port}").replace(
            "127.0.0.1:9213", f"127.0.0.1:{self.http_port}"
        )

    def simulate(self, argv: list[str]) -> dict[str, object]:
        """Run a documented `hj212gw simulate` shortened and on the test ports; its JSON summary."""
        target = ["--target", f"127.0.0.1:{self.das_port}"]
        done = subprocess.run([*argv, *target, *SHORT_RUN], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
        summary: dict[str, object] = json.loads(done.stdout)
        return summary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(http_port: int, server: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "hj212gw serve exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("hj212gw serve did not become ready")


def _drop_schema(dsn: str, schema: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="module")
def gateway(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The README's quick-start `hj212gw serve`, on free ports, the test PostgreSQL and a fresh schema."""
    (quick_start,) = sh_blocks((ROOT / "README.md").read_text(), "## Quick start")[0]
    serve = quick_start.split("&&")[-1].strip()
    found = Gateway(_free_port(), _free_port())
    schema = f"t_{uuid.uuid4().hex[:12]}"
    argv = [*hj212gw_argv(serve), "--listen", f"127.0.0.1:{found.das_port}", "--http",
            f"127.0.0.1:{found.http_port}", "--database-url", pg_dsn, "--database-schema", schema,
            "--log-level", "WARNING", "--log-format", "json"]  # fmt: skip
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path_factory.mktemp("cwd"))
    try:
        _wait_ready(found.http_port, server)
        yield found
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        _drop_schema(pg_dsn, schema)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's try-it step uses curl")
def test_the_readme_try_it_shows_minute_and_hour_data_and_flagged_values(gateway: Gateway) -> None:
    (commands,) = sh_blocks((ROOT / "README.md").read_text(), "<!-- try-it -->")[:1]
    simulate, *queries = (gateway.on_test_ports(c) for c in commands)
    # 12 s at the documented speed is more than one simulated hour: minute and hour data both arrive.
    argv = [*hj212gw_argv(simulate), "--duration", "12", "--count", "20", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = [subprocess.run(["bash", "-c", q], capture_output=True, text=True, timeout=30) for q in queries]
    assert [o.returncode for o in outputs] == [0] * len(queries), [o.stderr for o in outputs]
    devices, minutes, hours = (json.loads(o.stdout) for o in outputs[:3])
    assert devices["count"] == 20
    assert minutes["count"] > 0 and hours["count"] > 0, (minutes, hours)
    flags = {r["flag"] for r in minutes["rows"]}
    # The first logger is one of the flagged tenth: some of its values carry the fault's flag (M, or D
    # where the simulator rolls flue-gas flags up per HJ 212 §10); which rows fall inside the fault
    # window depends on how fast the run went, so values still N may come with them.
    assert flags & {"M", "D"} and flags <= set("NFMSDCTB"), flags
    assert all(r["unit"] and r["name_zh"] and r["data_time"].endswith("+08:00") for r in minutes["rows"])
    assert "hj212gw_values_stored_total" in outputs[3].stdout


def test_every_command_in_docs_simulator_runs(gateway: Gateway) -> None:
    text = (ROOT / "docs" / "simulator.md").read_text()
    commands = [c for block in sh_blocks(text) for c in block]
    assert len(commands) >= 2 and all(c.startswith("hj212gw simulate") for c in commands), commands
    for command in commands:
        summary = gateway.simulate(hj212gw_argv(gateway.on_test_ports(command)))
        assert (summary["devices"], summary["connects"], summary["frames_rejected"]) == (20, 20, 0), command


def test_the_documented_scenario_file_and_its_command_line_form_run(gateway: Gateway, tmp_path: Path) -> None:
    text = (ROOT / "docs" / "simulator.md").read_text()
    (toml,) = re.findall(r"A file:\n\n```toml\n(.*?)```", text, re.DOTALL)
    config = tmp_path / "sim.toml"
    config.write_text(gateway.on_test_ports(toml))
    from_file = gateway.simulate([*HJ212GW, "simulate", "--config", str(config)])
    (paragraph,) = re.findall(r"The same on the command line: (.*?)\.\n", text, re.DOTALL)
    flags = " ".join(re.findall(r"`([^`]+)`", paragraph.replace("\n", " ")))
    from_flags = gateway.simulate([*HJ212GW, "simulate", *shlex.split(flags)])
    for summary in (from_file, from_flags):  # both sped up: a day's data in 3 s is sent and acked
        assert summary["devices"] == 20 and summary["acked"] > 0 and summary["frames_rejected"] == 0, summary


@pytest.mark.skipif(shutil.which("curl") is None, reason="docs/api.md's examples use curl")
def test_the_api_examples_are_on_the_default_port_and_reach_a_route(gateway: Gateway) -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    default_port = Settings().http.rsplit(":", 1)[1]
    assert set(re.findall(r"127\.0\.0\.1:(\d+)", text)) == {default_port}
    # The one-line examples that need no token, jq or shell variables, as documented but on the test port.
    simple = [c for block in sh_blocks(text) for c in block if c.startswith("curl -s ") and "$" not in c]
    assert len(simple) >= 8, simple
    for command in simple:
        done = subprocess.run(["bash", "-c", gateway.on_test_ports(command)], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout, command
        assert '"not_found"' not in done.stdout and '"internal_error"' not in done.stdout, (command, done.stdout)
