"""The command line: settings errors are usage errors, serve refuses an open admin server, commands dispatch."""

from pathlib import Path

import pytest

from hj212gw.cli import main

STANDARD = (
    "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80"
)


pytestmark = pytest.mark.usefixtures("clean_env")


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


def test_serve_beyond_loopback_without_a_token_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # An unreachable database: had the check not refused first, serve would fail there instead.
    argv = ["serve", "--http", "0.0.0.0:9213", "--database-url", "postgresql://nobody@127.0.0.1:1/none"]
    assert main([*argv, "--log-format", "json"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "beyond loopback, without a token" in line and "http_token_file" in line


def test_serve_refuses_a_short_or_unreadable_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HJ212GW_HTTP_TOKEN_FILE", str(tmp_path / "absent"))
    assert main(["serve", "--http", "0.0.0.0:9213", "--log-format", "json"]) == 2
    assert "cannot read http_token_file" in capsys.readouterr().err
    (tmp_path / "short").write_text("abc\n")
    monkeypatch.setenv("HJ212GW_HTTP_TOKEN_FILE", str(tmp_path / "short"))
    assert main(["serve", "--http", "127.0.0.1:9213", "--log-format", "json"]) == 2
    assert "shorter than 16" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"listen = [\n", "Invalid value"), (b"listen = \xff\n", "codec can't decode")],
)
def test_an_unreadable_config_file_is_one_line_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, needle: str
) -> None:
    config = tmp_path / "hj212gw.toml"
    config.write_bytes(content)
    assert main(["serve", "--config", str(config), "--log-format", "json"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hj212gw: cannot read the settings file: ") and needle in line
