"""`hj212gw command …` against a real gateway and PostgreSQL: the command goes through the table,
the gateway holding the device sends it, `--wait` prints the outcome; bad input changes nothing."""

from __future__ import annotations

import asyncio
import json
import re

import asyncpg
import pytest

from hj212gw import cli
from tests.conftest import StartGateway
from tests.integration.linked import LinkedDevice

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")  # the in-process gateway's log on stdout
FAST = {"over_time_s": 1.0, "re_count": 1, "offline_timeout_s": 0.5, "settle_s": 2.0}


async def command(pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `hj212gw command ARGV` (in a thread: it runs its own event loop); (exit code, out, err)."""
    args = ["command", *argv, "--database-url", pg_dsn, "--database-schema", schema]
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, args)
    out, err = capsys.readouterr()
    return code, "".join(line for line in out.splitlines(keepends=True) if not LOG_LINE.match(line)), err


async def test_wait_prints_the_outcome_of_a_command_the_gateway_sent(
    start_gateway: StartGateway, pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    running = await start_gateway(commands=FAST)
    assert running.gateway.port is not None
    device = await LinkedDevice.connect(running.gateway.port)
    try:
        code, out, _ = await command(pg_dsn, schema, capsys, device.mn, "set_rtd_interval", "RtdInterval=60", "--wait")
        assert code == 0 and out.startswith("command 1 (set_rtd_interval, CN 1062) to ")
        assert ": succeeded qn_rtn=1 exe_rtn=1" in out
        assert device.das.device.rtd_interval_s == 60
        code, out, _ = await command(pg_dsn, schema, capsys, device.mn, "1063", "--wait", "--json")
        shown = json.loads(out)
        assert code == 0 and shown["state"] == "succeeded" and shown["result"] == {"cp": {"MinInterval": "10"}}
        code, out, _ = await command(pg_dsn, schema, capsys, device.mn, "get_site_info", "InfoId=i12001", "--wait")
        assert code == 1 and "refused qn_rtn=8" in out and "reason: QnRtn=8 (cn_error)" in out
    finally:
        await device.close()


async def test_without_a_gateway_the_command_is_queued_and_with_wait_ends_device_offline(
    pg_dsn: str, schema: str, conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await command(pg_dsn, schema, capsys, "MN1", "set_password", "NewPW=654321", "--json")
    assert code == 0 and json.loads(out) == {
        "id": 1,
        "state": "queued",
        "mn": "MN1",
        "cn": "1072",
        "name": "set_password",
    }
    code, out, _ = await command(pg_dsn, schema, capsys, "MN1", "get_time", "--wait")
    assert code == 1 and ": device_offline" in out  # expired after the offline timeout (5 s by default)
    assert "654321" not in out
    # The expiry ends every unclaimed command, the first one too: nothing is sent later.
    states = await conn.fetch("SELECT state FROM commands ORDER BY id")
    assert [r["state"] for r in states] == ["device_offline", "device_offline"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["MN1", "9999"], "no platform command with CN or name '9999'"),
        (["MN1", "set_time", "SystemTime=2024"], "SystemTime must be YYYYMMDDhhmmss"),
        (["MN1", "get_time", "PolId"], "'PolId' is not KEY=VALUE"),
        (["MN;1", "get_time"], "MN 'MN;1'"),
        (["MN1", "get_time", "--over-time", "0"], "--over-time: 1 to 99 seconds"),
    ],
)
async def test_bad_input_is_exit_2_and_stores_nothing(
    pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, _, err = await command(pg_dsn, schema, capsys, *argv)
    assert code == 2 and says in err
