"""The command line: settings errors are usage errors, check-config hides secrets, commands dispatch."""

import json
from pathlib import Path

import pytest

from hj212gw.cli import main

STANDARD = (
    "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80"
)


@pytest.fixture(autouse=True)
def in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HJ212GW_CONFIG", raising=False)
    monkeypatch.delenv("HJ212GW_DATABASE_URL", raising=False)


def test_check_config_prints_effective_settings_with_the_password_hidden(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", "--database-url", "postgresql://gw:s3cret@db.example/hj", "--listen", "0.0.0.0:7000"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    assert shown["listen"] == "0.0.0.0:7000"
    assert shown["database_url"] == "postgresql://gw:***@db.example/hj"
    assert "s3cret" not in json.dumps(shown)


def test_invalid_settings_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--listen", "not-an-address"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_a_missing_config_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_command_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_check_dispatches_to_the_packet_explainer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", STANDARD]) == 0
    assert "VALID" in capsys.readouterr().out
    assert main(["check", STANDARD.replace("1C80", "0000")]) == 1
