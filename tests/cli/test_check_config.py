"""`hj212gw check-config`: the effective settings, every password, token and key hidden."""

import json

import pytest

from hj212gw.cli import main

pytestmark = pytest.mark.usefixtures("clean_env")


def test_check_config_prints_effective_settings_with_the_password_hidden(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", "--database-url", "postgresql://gw:s3cret@db.example/hj", "--listen", "0.0.0.0:7000"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    assert shown["listen"] == "0.0.0.0:7000"
    assert shown["database_url"] == "postgresql://gw:***@db.example/hj"
    assert "s3cret" not in json.dumps(shown)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://gw@db.example/hj?password=s3cret", "postgresql://gw@db.example/hj?password=***"),
        (
            "postgresql://gw@db/hj?sslmode=require&PASSWORD=s3cret&sslpassword=s3cret&application_name=x",
            "postgresql://gw@db/hj?sslmode=require&PASSWORD=***&sslpassword=***&application_name=x",
        ),
        (
            "postgresql://gw:s3cret@db.example:5433/hj?password=s3cret",
            "postgresql://gw:***@db.example:5433/hj?password=***",
        ),
        ("postgresql://gw:p%40ss@s3cret@db/hj", "postgresql://gw:***@db/hj"),
        ("host=db user=gw password=s3cret dbname=hj", "host=db user=gw password=*** dbname=hj"),
    ],
)
def test_check_config_hides_passwords_in_the_dsn_query_string_too(
    url: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--database-url", url]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["database_url"] == shown
    assert "s3cret" not in printed


def test_check_config_hides_the_http_token(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HJ212GW_HTTP_TOKEN", "s3cret-token-0123456789")
    assert main(["check-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["http_token"] == "***" and "s3cret" not in json.dumps(shown)
