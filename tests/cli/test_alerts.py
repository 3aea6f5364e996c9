"""`hj212gw alerts` against a real PostgreSQL schema: the table, --json, the filters, and --follow
tailing changes committed while it runs (a real process, stopped with Ctrl-C)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import timedelta

import pytest

from hj212gw import cli
from hj212gw.alerts.acks import AlertAcks
from hj212gw.alerts.engine import AlertEngine
from hj212gw.rules.model import AlertKey, Clear, Severity
from hj212gw.settings import AlertSettings
from hj212gw.storage.db import Database
from tests.api.harness import MN, OTHER
from tests.api.test_alerts import T0, fire, store_alerts

pytestmark = pytest.mark.integration


async def alerts(pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `hj212gw alerts ARGV` (in a thread: it runs its own event loop); (exit code, stdout, stderr)."""
    code = await asyncio.to_thread(cli.main, ["alerts", *argv, "--database-url", pg_dsn, "--database-schema", schema])
    out, err = capsys.readouterr()
    return code, out, err


async def test_alerts_lists_a_table_and_json_filtered(
    db: Database, pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = await store_alerts(db)
    code, out, _ = await alerts(pg_dsn, schema, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["ID", "STATUS", "SEVERITY", "RULE"] and len(lines) == 6
    assert lines[5].split() == [
        str(ids[0]), "resolved", "critical", "over_limit", MN, "a21026", "2026-12-01", "08:00", "2026-12-01", "08:30",
        "-", "over_limit", "alert",
    ]  # fmt: skip
    assert lines[1].split()[:6] == [str(ids[4]), "firing", "warning", "device_silent", MN, "2051"]
    code, out, _ = await alerts(pg_dsn, schema, capsys, "--status", "firing", "--mn", OTHER, "--json")
    listed = json.loads(out)["alerts"]
    assert code == 0 and [a["id"] for a in listed] == [ids[3], ids[2]]
    assert listed[1]["rule"] == "flatline" and listed[1]["severity"] == "info" and listed[1]["ends_at"] is None
    code, out, _ = await alerts(pg_dsn, schema, capsys, "--rule", "over_limit", "--severity", "critical", "--json")
    assert [a["id"] for a in json.loads(out)["alerts"]] == [ids[3], ids[0]]


async def test_follow_prints_each_change_committed_while_it_runs(db: Database, pg_dsn: str, schema: str) -> None:
    await store_alerts(db)  # before the start: not printed
    argv = [sys.executable, "-m", "hj212gw.cli", "alerts", "--follow", "--json", "--poll-s", "0.1", "--mn", MN,
            "--database-url", pg_dsn, "--database-schema", schema]  # fmt: skip
    follower = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert follower.stderr is not None
        while b"following the alert stream" not in await asyncio.wait_for(follower.stderr.readline(), 30):
            pass  # started and positioned at the end of the outbox
        engine = AlertEngine(db, "gw-test", AlertSettings(), clock=lambda: T0 + timedelta(hours=20))
        key = AlertKey("flatline", MN, "a21002")
        (alert_id,) = (await engine.apply([fire(key, Severity.WARNING, T0)])).raised
        await engine.apply([fire(AlertKey("flatline", OTHER, "a21002"), Severity.WARNING, T0)])  # filtered out
        await AlertAcks(db).acknowledge(alert_id, by="王工", note=None)
        await engine.apply([Clear(key, at=T0 + timedelta(hours=1))])
        assert follower.stdout is not None
        lines = [json.loads(await asyncio.wait_for(follower.stdout.readline(), 10)) for _ in range(3)]
    finally:
        follower.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(follower.wait(), 10)
    assert code == 0
    assert [(e["type"], e["data"]["alertId"], e["data"]["labels"]["mn"]) for e in lines] == [
        ("firing", alert_id, MN),
        ("acknowledged", alert_id, MN),
        ("resolved", alert_id, MN),
    ]
    assert lines[1]["data"]["acknowledgement"]["by"] == "王工" and len({e["event_id"] for e in lines}) == 3


async def test_alerts_with_an_unreachable_database_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await alerts("postgresql://postgres@127.0.0.1:1/none", "hj212gw", capsys)
    assert (code, out) == (1, "") and "cannot reach PostgreSQL" in err
