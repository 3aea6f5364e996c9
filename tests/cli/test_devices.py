"""`hj212gw devices …` against a real PostgreSQL schema: the registry managed without SQL, PWs
never on the command line and never printed; SM4 keys never printed by `check-config`."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import asyncpg
import pytest

from hj212gw import cli
from hj212gw.cli import serve
from tests.integration.das import DasClient, data_packet, settings_for

pytestmark = pytest.mark.integration

SECRET = "Pw9x7q"


async def devices(
    pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None
) -> tuple[int, str, str]:
    """Run `hj212gw devices ARGV` (in a thread: it runs its own event loop); (exit code, out, err)."""
    args = [*argv, "--database-url", pg_dsn, "--database-schema", schema]

    def call() -> int:
        if stdin is not None:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr("sys.stdin", io.StringIO(stdin))
                return cli.main(["devices", *args])
        return cli.main(["devices", *args])

    code = await asyncio.to_thread(call)
    out, err = capsys.readouterr()
    return code, out, err


async def test_add_reads_the_pw_from_a_file_and_list_never_prints_it(
    pg_dsn: str, schema: str, conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text(SECRET + "\n")
    code, out, _ = await devices(
        pg_dsn, schema, capsys, "add", "MN1", "--name", "Boiler 1", "--site", "North", "--tag", "coal,boiler",
        "--pw-file", str(pw_file),
    )  # fmt: skip
    assert code == 0 and SECRET not in out
    row = await conn.fetchrow("SELECT pw, pw_source, name, site, tags, status FROM devices WHERE mn = 'MN1'")
    assert tuple(row) == (SECRET, "operator", "Boiler 1", "North", ["coal", "boiler"], "accepted")

    code, out, _ = await devices(pg_dsn, schema, capsys, "list")
    assert code == 0 and SECRET not in out
    assert out.splitlines()[1].split()[:3] == ["MN1", "accepted", "set"]
    code, out, _ = await devices(pg_dsn, schema, capsys, "list", "--json")
    (listed,) = json.loads(out)["devices"]
    assert (listed["mn"], listed["pw"], listed["tags"], listed["policy"]) == (
        "MN1",
        "set",
        ["coal", "boiler"],
        "accepted",
    )
    assert SECRET not in out

    code, _, err = await devices(pg_dsn, schema, capsys, "add", "MN1", "--no-pw")
    assert code == 1 and "exists already" in err


async def test_a_pw_is_never_taken_from_the_command_line(
    pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        await devices(pg_dsn, schema, capsys, "add", "MN1", "--pw", SECRET)
    assert exit_.value.code == 2
    code, _, err = await devices(pg_dsn, schema, capsys, "add", "MN1", stdin="")  # no TTY, no source
    assert code == 2 and "--pw-file" in err
    code, _, err = await devices(pg_dsn, schema, capsys, "add", "MN1", "--pw-stdin", stdin="bad;pw\n")
    assert code == 2 and "bad;pw" not in err


async def test_set_pw_from_stdin_clear_and_unknown_mn(
    pg_dsn: str, schema: str, conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await devices(pg_dsn, schema, capsys, "add", "MN1", "--no-pw"))[0] == 0
    assert await conn.fetchval("SELECT pw FROM devices WHERE mn = 'MN1'") is None
    code, out, _ = await devices(pg_dsn, schema, capsys, "set-pw", "MN1", "--pw-stdin", stdin=SECRET + "\n")
    assert code == 0 and SECRET not in out
    assert await conn.fetchval("SELECT pw FROM devices WHERE mn = 'MN1'") == SECRET
    assert (await devices(pg_dsn, schema, capsys, "set-pw", "MN1", "--clear"))[0] == 0
    row = await conn.fetchrow("SELECT pw, pw_source, pw_set_at FROM devices WHERE mn = 'MN1'")
    assert tuple(row) == (None, None, None)
    code, _, err = await devices(pg_dsn, schema, capsys, "set-pw", "NOPE", "--pw-stdin", stdin="123456\n")
    assert code == 1 and "NOPE" in err


async def test_approve_and_reject_set_the_policy(
    pg_dsn: str, schema: str, conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await devices(pg_dsn, schema, capsys, "add", "Q1", "--no-pw", "--policy", "quarantined"))[0] == 0
    assert (await devices(pg_dsn, schema, capsys, "add", "Q2", "--no-pw", "--policy", "quarantined"))[0] == 0
    assert (await devices(pg_dsn, schema, capsys, "approve", "Q1"))[0] == 0
    code, _, err = await devices(pg_dsn, schema, capsys, "reject", "Q2", "GHOST")
    assert code == 1 and "GHOST" in err
    rows = await conn.fetch("SELECT mn, status FROM devices ORDER BY mn")
    assert [tuple(r) for r in rows] == [("Q1", "accepted"), ("Q2", "rejected")]
    code, out, _ = await devices(pg_dsn, schema, capsys, "list", "--status", "rejected")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["Q2"]


async def test_import_adds_and_updates_and_a_bad_line_changes_nothing(
    pg_dsn: str, schema: str, conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (await devices(pg_dsn, schema, capsys, "add", "OLD", "--no-pw", "--name", "kept", "--tag", "t1"))[0] == 0
    good = tmp_path / "devices.csv"
    good.write_text(
        "mn,pw,name,site,tags,policy\n"
        f'NEW1,{SECRET},Stack 1,East,"a,b",quarantined\n'
        "NEW2,,,,,\n"
        "OLD,654321,,West,,rejected\n"
    )
    code, out, _ = await devices(pg_dsn, schema, capsys, "import", str(good))
    assert code == 0 and "2 added, 1 updated" in out and SECRET not in out
    rows = await conn.fetch("SELECT mn, pw, name, site, tags, status FROM devices ORDER BY mn")
    assert [tuple(r) for r in rows] == [
        ("NEW1", SECRET, "Stack 1", "East", ["a", "b"], "quarantined"),
        ("NEW2", None, None, None, [], "accepted"),
        ("OLD", "654321", "kept", "West", ["t1"], "rejected"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("mn,pw\nNEW3,123456\nNEW4,has;semicolon\n")
    code, _, err = await devices(pg_dsn, schema, capsys, "import", str(bad))
    assert code == 2 and "line 3" in err and "has;semicolon" not in err
    assert await conn.fetchval("SELECT count(*) FROM devices WHERE mn = 'NEW3'") == 0


async def test_a_running_gateway_requires_the_pw_an_operator_set_after_its_refresh(
    pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    running = await serve.start(settings_for(pg_dsn, schema))
    try:
        assert running.gateway.port is not None
        das = await DasClient.connect(running.gateway.port)
        await das.send(data_packet("20240315101000001", pw="123456"))
        assert (await das.reply()).packet.cn == "9014"  # pinned on first use
        await das.close()
        code, _, _ = await devices(
            pg_dsn, schema, capsys, "set-pw", "010000A8900016F000169DC0", "--pw-stdin", stdin="654321\n"
        )
        assert code == 0
        await running.gateway.registry.refresh(running.db)
        old = await DasClient.connect(running.gateway.port)
        await old.send(data_packet("20240315101000002", pw="123456", data_time="20240315100100"))
        assert (await old.reply()).packet.cp == "QnRtn=3"
        new = await DasClient.connect(running.gateway.port)
        await new.send(data_packet("20240315101000003", pw="654321", data_time="20240315100200"))
        assert (await new.reply()).packet.cn == "9014"
        await old.close()
        await new.close()
    finally:
        await running.stop()


def test_check_config_and_a_bad_key_never_print_sm4_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HJ212GW_DEVICES__SM4_KEYS", json.dumps({"MN1": "K3yK3yK3yK3yK3y!"}))
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "K3yK3yK3yK3yK3y!" not in out and "sm4_keys" in json.loads(out)["devices"]
    monkeypatch.setenv("HJ212GW_DEVICES__SM4_KEYS", json.dumps({"MN1": "Sh0rtK3y"}))
    assert cli.main(["serve", "--database-url", "postgresql://nowhere/x"]) == 2
    err = capsys.readouterr().err
    assert "MN1" in err and "Sh0rtK3y" not in err


async def test_add_and_set_intervals_fix_the_periods_the_device_state_expects(
    pg_dsn: str, schema: str, conn: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = await devices(pg_dsn, schema, capsys, "add", "MN1", "--no-pw", "--min-interval", "10")
    assert code == 0
    assert tuple(await conn.fetchrow("SELECT min_interval_min, rtd_interval_s FROM devices WHERE mn = 'MN1'")) == (
        10,
        None,
    )
    code, out, _ = await devices(pg_dsn, schema, capsys, "set-intervals", "MN1", "--rtd-interval", "30")
    assert (code, out) == (0, "MN1: minute data every 10 min, real-time data every 30 s\n")
    code, out, _ = await devices(pg_dsn, schema, capsys, "set-intervals", "MN1", "--clear")
    assert (code, out) == (0, "MN1: minute data every (learned) min, real-time data every (learned) s\n")
    assert (await devices(pg_dsn, schema, capsys, "set-intervals", "NOPE", "--min-interval", "5"))[0] == 1
    assert (await devices(pg_dsn, schema, capsys, "set-intervals", "MN1"))[0] == 2
    assert (await devices(pg_dsn, schema, capsys, "set-intervals", "MN1", "--rtd-interval", "0"))[0] == 2
    with pytest.raises(SystemExit):  # not a MinInterval of the standard
        await devices(pg_dsn, schema, capsys, "set-intervals", "MN1", "--min-interval", "7")
