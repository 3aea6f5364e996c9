"""The settings flags: `--mqtt-url` sets `mqtt.url` over env and file, keeps the rest of their [mqtt],
and `hj212gw serve --mqtt-url` connects to that broker."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiomqtt
import pytest

from hj212gw.cli import build_parser, main
from hj212gw.cli.options import settings_from

pytestmark = pytest.mark.usefixtures("clean_env")


def test_mqtt_url_flag_wins_over_env_and_file_and_keeps_their_other_mqtt_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hj212gw.toml"
    config.write_text('[mqtt]\nurl = "mqtt://file.example"\nroot_topic = "plant3"\n')
    monkeypatch.setenv("HJ212GW_MQTT__URL", "mqtt://env.example")
    monkeypatch.setenv("HJ212GW_MQTT__KEEPALIVE_S", "60")
    args = build_parser().parse_args(["serve", "--config", str(config), "--mqtt-url", "mqtts://flag.example:8883"])
    mqtt = settings_from(args).mqtt
    assert (mqtt.url, mqtt.root_topic, mqtt.keepalive_s) == ("mqtts://flag.example:8883", "plant3", 60)


def test_without_the_flag_env_and_file_decide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HJ212GW_MQTT__URL", "mqtt://env.example")
    assert settings_from(build_parser().parse_args(["serve"])).mqtt.url == "mqtt://env.example"


def test_a_bad_mqtt_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--mqtt-url", "mqtt://user:s3cret@broker.example"]) == 2
    assert "invalid settings" in capsys.readouterr().err


@pytest.mark.integration
async def test_serve_with_mqtt_url_publishes_its_status_on_that_broker(pg_dsn: str, schema: str) -> None:
    root = f"test-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "HJ212GW_MQTT__ROOT_TOPIC": root, "HJ212GW_LOG_FORMAT": "json"}
    argv = [sys.executable, "-m", "hj212gw.cli", "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
            "--database-url", pg_dsn, "--database-schema", schema, "--gateway-id", "gw-flag",
            "--mqtt-url", "mqtt://127.0.0.1:1883"]  # fmt: skip
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        await client.subscribe(f"{root}/v1/gateways/gw-flag/status", qos=1)
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            async with asyncio.timeout(60):
                message = await anext(aiter(client.messages))
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
        # Retained messages on a test root would outlive the test: clear it.
        await client.publish(f"{root}/v1/gateways/gw-flag/status", b"", qos=1, retain=True)
    assert message.payload == b"online"
    connected = [json.loads(line) for line in out.decode().splitlines() if "mqtt_connected" in line]
    assert connected and connected[0]["port"] == 1883
