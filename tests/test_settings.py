"""Settings precedence: flags > environment > TOML file > defaults, and validation."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from hj212gw.settings import Settings, load_settings, mqtt_address, split_host_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HJ212GW_LISTEN", "HJ212GW_HTTP", "HJ212GW_CONFIG", "HJ212GW_CONNECTIONS__IDLE_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./hj212gw.toml unless a test writes one


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert settings.listen == "0.0.0.0:9212"
    assert settings.http == "127.0.0.1:9213"
    assert settings.database_url is None
    assert settings.data_dir == Path("hj212gw-data")
    assert settings.device_timezone == "Asia/Shanghai"
    assert settings.protocol.crc_policy == "strict"
    assert settings.devices.unknown_mn == "accept"


def test_toml_then_env_then_flags_each_override_the_one_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        'listen = "0.0.0.0:1000"\nhttp = "127.0.0.1:1001"\ndevice_timezone = "UTC"\n'
        "[connections]\nidle_timeout_s = 30\nmax_connections = 5\n"
    )
    monkeypatch.setenv("HJ212GW_HTTP", "127.0.0.1:2001")
    monkeypatch.setenv("HJ212GW_CONNECTIONS__IDLE_TIMEOUT_S", "40")
    settings = load_settings(config, listen="127.0.0.1:3000")
    assert settings.listen == "127.0.0.1:3000"  # flag beats TOML
    assert settings.http == "127.0.0.1:2001"  # env beats TOML
    assert settings.connections.idle_timeout_s == 40  # nested env beats TOML
    assert settings.connections.max_connections == 5  # TOML beats default
    assert settings.device_timezone == "UTC"


def test_config_file_from_env_and_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hj212gw.toml").write_text('listen = "0.0.0.0:4000"\n')
    assert load_settings().listen == "0.0.0.0:4000"
    other = tmp_path / "other.toml"
    other.write_text('listen = "0.0.0.0:5000"\n')
    monkeypatch.setenv("HJ212GW_CONFIG", str(other))
    assert load_settings().listen == "0.0.0.0:5000"


def test_flags_left_unset_do_not_override(tmp_path: Path) -> None:
    (tmp_path / "hj212gw.toml").write_text('listen = "0.0.0.0:4000"\n')
    assert load_settings(listen=None).listen == "0.0.0.0:4000"


def test_a_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize("field,value", [("listen", "nope"), ("http", "host:port")])
def test_addresses_must_be_host_port(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('lisen = "0.0.0.0:1"\n')
    with pytest.raises(ValidationError):
        load_settings(config)


@pytest.mark.parametrize(
    "text,expected", [("0.0.0.0:9212", ("0.0.0.0", 9212)), (":9212", ("0.0.0.0", 9212)), ("[::1]:80", ("::1", 80))]
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    "url,expected",
    [("mqtt://broker", ("broker", 1883, False)), ("mqtts://broker", ("broker", 8883, True)),
     ("mqtt://10.0.0.5:2883", ("10.0.0.5", 2883, False))],
)  # fmt: skip
def test_mqtt_urls_give_host_port_and_tls(url: str, expected: tuple[str, int, bool]) -> None:
    assert mqtt_address(url) == expected
    assert Settings(mqtt={"url": url}).mqtt.url == url


@pytest.mark.parametrize("url", ["http://broker", "mqtt://", "mqtt://user:secret@broker", "mqtt://user@broker"])
def test_mqtt_urls_without_a_host_with_credentials_or_another_scheme_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        Settings(mqtt={"url": url})


def test_no_broker_and_no_http_sink_by_default_and_the_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().mqtt.url is None and Settings().alert_sinks.alertmanager_url is None
    monkeypatch.setenv("HJ212GW_MQTT__PASSWORD", "s3cret")
    password = Settings().mqtt.password
    assert password is not None and password.get_secret_value() == "s3cret"
    with pytest.raises(ValidationError):
        Settings(mqtt={"root_topic": "a/+/b"})
