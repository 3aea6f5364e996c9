"""Every knob of the gateway, in one pydantic-settings class. Nothing else reads the environment.

Precedence: CLI flags > environment (`HJ212GW_*`, nested with `__`) > TOML file (`--config`,
`HJ212GW_CONFIG`, or `./hj212gw.toml`) > defaults.
"""

import os
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def split_host_port(value: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class ConnectionSettings(BaseModel):
    """Connection policies applied by the server shell."""

    idle_timeout_s: float = Field(default=600.0, gt=0, description="Close a DAS silent this long.")
    first_packet_timeout_s: float = Field(default=60.0, gt=0, description="Close if no valid packet by then.")
    max_consecutive_rejects: int = Field(default=10, ge=1, description="Close after this many bad frames in a row.")
    max_connections: int = Field(default=20000, ge=1, description="Refuse connections beyond this many.")
    max_connections_per_ip: int = Field(default=2000, ge=1, description="Per source IP (DTU pools share NAT).")
    replace_grace_s: float = Field(
        default=2.0, ge=0, description="A replaced connection's time to send its pending acks before closing."
    )
    write_buffer_high_bytes: int = Field(
        default=65536, ge=1024, description="Outgoing buffer per DAS above which its socket is not read."
    )
    max_write_buffer_bytes: int = Field(
        default=131072, ge=2048, description="Abort a DAS (not_reading) whose outgoing buffer passes this."
    )
    write_stall_timeout_s: float = Field(
        default=30.0, gt=0, description="Abort a DAS (not_reading) whose outgoing buffer stays full this long."
    )
    max_unconfirmed_items: int = Field(
        default=32, ge=1, description="Packets of one DAS in the write queue before that socket alone is not read."
    )
    max_unconfirmed_bytes: int = Field(
        default=262144, ge=4096, description="Encoded bytes of one DAS in the write queue before it is not read."
    )

    @model_validator(mode="after")
    def _write_limits(self) -> "ConnectionSettings":
        if self.max_write_buffer_bytes <= self.write_buffer_high_bytes:
            raise ValueError("max_write_buffer_bytes must be above write_buffer_high_bytes")
        return self


class ProtocolSettings(BaseModel):
    """How strictly HJ 212 is read."""

    crc_policy: Literal["strict", "lenient"] = Field(default="strict", description="Reject or mark bad CRCs.")
    crc_variants: list[Literal["modbus", "modbus_swapped"]] = Field(
        default_factory=list, description="MODBUS CRC forms accepted from every device (labelled)."
    )
    max_segment_bytes: int = Field(default=4096, ge=1024, le=9999, description="Longest data segment accepted.")
    max_buffer_bytes: int = Field(default=65536, ge=4096, description="Most buffer bytes one frame may take.")
    max_pending_requests: int = Field(
        default=32, ge=1, description="Platform requests awaiting their answer per connection; more fail at once."
    )
    heartbeat_reply: Literal["9013", "9014", "none"] = Field(default="9013", description="Reply to 9015 with A=1.")
    mn_change: Literal["accept", "reject"] = Field(default="accept", description="A second MN on one connection.")
    time_calibration: bool = Field(default=True, description="Answer 1013 with 9013 then 1012 (platform time).")
    future_tolerance_s: float = Field(default=3600.0, description="DataTime further ahead is marked time_suspect.")
    past_tolerance_days: float = Field(default=400.0, description="DataTime older than this is marked time_suspect.")
    split_timeout_s: float = Field(
        default=120.0, gt=0, description="A split transfer still incomplete this long after its first part expires."
    )
    max_split_groups: int = Field(default=64, ge=1, description="Open split transfers tracked per connection.")
    max_split_parts: int = Field(default=256, ge=2, le=9999, description="Largest PNUM accepted for fragments.")
    max_split_bytes: int = Field(
        default=262144, ge=4096, description="Per connection: split tracking plus fragments awaiting assembly."
    )


class DeviceSettings(BaseModel):
    """Which devices may send, how they are authenticated, and the SM4 keys of 2025 devices."""

    # A misspelt or retired key (`wrong_pw`, replaced by `auth`) is an error, not silently ignored;
    # a field error shows only that field's value, never the keys.
    model_config = ConfigDict(extra="forbid")

    unknown_mn: Literal["accept", "quarantine", "reject"] = Field(
        default="accept", description="accept: register and store; quarantine: raw archive only; reject: close."
    )
    auth: Literal["tofu", "registry", "off"] = Field(
        default="tofu",
        description="tofu: pin the first PW an MN presents, then require it; registry: only PWs an operator "
        "registered (hj212gw devices); off: no PW check.",
    )
    refresh_s: float = Field(default=30.0, gt=0, description="Reload the device registry this often.")
    move_interval_s: float = Field(
        default=30.0, ge=0, description="An MN moves from one live connection to another at most this often."
    )
    max_mns_per_connection: int = Field(default=64, ge=1, description="MNs one connection may carry.")
    wrong_pw_backoff_s: float = Field(
        default=1.0, gt=0, description="First delay after a wrong PW from an IP; doubles per failure."
    )
    wrong_pw_backoff_max_s: float = Field(default=60.0, gt=0, description="Longest wrong-PW delay per IP.")
    sm4_keys_file: Path | None = Field(
        default=None, description="TOML file: MN = key or [current, previous] (32 hex digits or 16 characters)."
    )
    sm4_keys: dict[str, SecretStr | list[SecretStr]] = Field(
        default_factory=dict, description="MN -> SM4 key(s), e.g. from HJ212GW_DEVICES__SM4_KEYS as JSON."
    )


class DeviceStateSettings(BaseModel):
    """When a device counts as silent, and how replicas hand devices over (docs/monitoring.md)."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(
        default=3.0, ge=1, description="A scheduled CN is overdue after its period times this without data."
    )
    floor_s: float = Field(default=600.0, gt=0, description="... and never before this many seconds.")
    lease_s: float = Field(
        default=60.0,
        gt=0,
        description="A replica without a heartbeat this long is lost (its devices go offline: gateway_lost); "
        "a restarted gateway waits this long for the devices it held.",
    )
    scan_interval_s: float = Field(default=1.0, gt=0, description="How often overdue devices are looked for.")
    last_data_interval_s: float = Field(
        default=10.0,
        ge=0,
        description="A device whose only change is new data has its stored last_data rewritten at most this "
        "often (its state changes are stored within a second).",
    )


class WriterSettings(BaseModel):
    """The batch writer between all connections and PostgreSQL."""

    # About 330 ten-value packets (data rows + the raw frame): the batch size measured best at
    # saturation (4,000 rows, about 360 packets, gave 3-4 % fewer packets/s; docs/benchmarks.md).
    max_batch_rows: int = Field(default=3600, ge=1)
    linger_ms: float = Field(default=5.0, ge=0, description="Wait this long for more rows before a commit.")
    # 2, not 3: at 5,000 packets/s the third writer's extra, smaller batches cost gateway and
    # PostgreSQL CPU and ack latency (docs/benchmarks.md, round 4); at saturation it is a wash.
    writers: int = Field(default=2, ge=1, description="Concurrent writer connections.")
    max_pending_items: int = Field(default=50000, ge=1, description="Queued packets before sockets pause.")
    # Counts what the packets hold once encoded (data rows for COPY + raw frames): a packet with a
    # long MN or many factors costs its size, not one slot. 64 MiB is about 30,000 ten-value packets.
    max_pending_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Queued encoded bytes (data rows + raw frames) before sockets pause.",
    )
    pool_size: int = Field(default=8, ge=2)
    # One full batch per writer: enough for each writer's next batch, so admission costs no
    # throughput, while a burst's reads wait as bytes instead of as parsed packets (docs/benchmarks.md).
    admission_rows: int = Field(
        default=7200,
        ge=0,
        description="Parse newly read packets only while fewer rows than this wait for a batch; later reads "
        "wait unparsed, oldest first (a top-of-hour burst keeps its acks flowing). 0: parse every read at once.",
    )


class CommandSettings(BaseModel):
    """The command channel (platform -> DAS requests: API, CLI, backfill): docs/monitoring.md."""

    model_config = ConfigDict(extra="forbid")
    over_time_s: float = Field(
        default=10.0, gt=0, le=99, description="OverTime: wait this long for a 9011, 9012 or the next data packet."
    )
    re_count: int = Field(default=3, ge=0, le=99, description="ReCount: resends when no 9011 comes (HJ 212 Table 1).")
    offline_timeout_s: float = Field(
        default=5.0, gt=0, description="A command no replica holding its MN claims within this ends device_offline."
    )
    settle_s: float = Field(
        default=5.0, ge=0, description="After a fetch's 9012, wait this long at most for its rows to commit."
    )


class BackfillSettings(BaseModel):
    """The automatic backfill (补传) of gaps: docs/monitoring.md, transmission-rate.md §5."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="Fetch the missing periods of online devices' gaps.")
    rate_per_s: float = Field(default=10.0, gt=0, description="History fetches started per second (per replica).")
    burst: int = Field(default=20, ge=1, description="Fetches that may start at once after a quiet spell.")
    settle_s: float = Field(
        default=30.0, ge=0, description="After a device connects, wait this long (its own re-upload) before asking."
    )
    sweep_s: float = Field(default=300.0, gt=0, description="Look at every device with gaps this often.")
    max_attempts: int = Field(default=4, ge=1, description="Passes over a gap before it is given up.")
    retry_initial_s: float = Field(default=300.0, ge=0, description="Wait after a pass that left periods missing.")
    retry_max_s: float = Field(default=3600.0, ge=0, description="Longest wait between passes (doubling).")


class GapSettings(BaseModel):
    """Gaps on the DataTime grid (monitor.gaps; docs/monitoring.md, transmission-rate.md §5)."""

    model_config = ConfigDict(extra="forbid")
    horizon_days: float = Field(
        default=7.0, gt=0, description="Gaps wholly older than this are dormant: reported, never requested."
    )
    grace_minute_s: float = Field(
        default=300.0, ge=0, description="Minute data is missing once its period ended this long ago."
    )
    grace_hour_s: float = Field(default=600.0, ge=0, description="Hour data is missing once its hour ended this long.")
    grace_day_s: float = Field(default=3600.0, ge=0, description="Day data is missing once its day ended this long.")
    flush_s: float = Field(default=1.0, gt=0, description="Write changed series and gaps this often.")
    series_write_s: float = Field(
        default=60.0, gt=0,
        description="Write a series that only got newer data (no gap changed) this often; read back from data.",
    )  # fmt: skip


class AlertSettings(BaseModel):
    """The alert lifecycle, its leader election and reminders (docs/alerts.md)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="Run the rules and store, deliver and show alerts.")
    thresholds_file: Path | None = Field(
        default=None, description="TOML file of rule thresholds (global, per device, per factor); unset: defaults."
    )
    refresh_s: float = Field(
        default=10.0,
        gt=0,
        description="Reload the alerts firing (others' raises and resolutions), the alert gauges and the "
        "reminders due this often.",
    )
    update_interval_s: float = Field(
        default=60.0, ge=0, description="A firing alert's value and details are rewritten at most this often..."
    )
    update_change_ratio: float = Field(
        default=0.1, ge=0, description="... unless its value moved by more than this fraction of the last one written."
    )
    reminder_s: float = Field(
        default=0.0,
        ge=0,
        description="Remind (outbox `reminder`) of a firing alert unacknowledged this long; 0: never.",
    )
    leader_check_s: float = Field(
        default=2.0, gt=0, description="Ping the election's connection (and, when not leader, try the lock) this often."
    )
    scan_s: float = Field(
        default=30.0,
        gt=0,
        description="The elected replica runs the scanning rules (silence, gaps, faults) this often.",
    )
    calendar_file: Path | None = Field(
        default=None,
        description="TOML of working-day overrides (holidays, make-up days) for years the library does not know.",
    )
    max_pending_samples: int = Field(
        default=200_000, ge=1, description="Committed packets waiting for the per-packet rules; beyond: not judged."
    )


class MqttSettings(BaseModel):
    """The MQTT broker alerts, device states and the gateway's status go to (docs/mqtt.md)."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(
        default=None, description="mqtt://HOST[:1883] or mqtts://HOST[:8883] (TLS); unset: no broker, alerts wait."
    )
    root_topic: str = Field(default="hj212gw", description="Every topic starts with it: {root}/v1/...")
    client_id: str | None = Field(default=None, description="Unique per replica; unset: hj212gw-{gateway_id}.")
    username: str | None = Field(default=None, description="Broker user name.")
    password_file: Path | None = Field(default=None, description="File holding the broker password.")
    password: SecretStr | None = Field(default=None, description="The password itself (HJ212GW_MQTT__PASSWORD).")
    tls_ca_file: Path | None = Field(default=None, description="CA bundle for mqtts:// (unset: the system's).")
    tls_cert_file: Path | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    tls_key_file: Path | None = Field(default=None, description="Its private key (PEM).")
    keepalive_s: int = Field(default=30, ge=5, le=65535, description="MQTT keepalive; the Last Will fires 1.5x later.")
    publish_timeout_s: float = Field(default=10.0, gt=0, description="Give up waiting for a PUBACK after this.")
    reconnect_initial_s: float = Field(default=0.5, gt=0, description="First wait before reconnecting (doubles).")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest wait between connection attempts.")
    max_pending_device_states: int = Field(
        default=50000, ge=1, description="Devices whose newest state waits for the broker (one entry per MN)."
    )

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None:
            mqtt_address(value)
        return value

    @field_validator("root_topic")
    @classmethod
    def _root(cls, value: str) -> str:
        levels = value.split("/")
        if value.startswith("$") or any(not lv or any(c in lv for c in "+#%\x00") for lv in levels):
            raise ValueError(f"{value!r}: levels of safe characters, none empty, no + # % NUL, no $ first")
        return value


def mqtt_address(url: str) -> tuple[str, int, bool]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` -> (host, port, tls); no credentials in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parts.username or parts.password:
        raise ValueError("put the MQTT user in mqtt.username and the password in mqtt.password_file, not the URL")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


class AlertSinkSettings(BaseModel):
    """Delivery of the alert outbox beyond MQTT, and how every sink retries (docs/mqtt.md)."""

    model_config = ConfigDict(extra="forbid")
    alertmanager_url: str | None = Field(
        default=None, description="Alertmanager base URL (alerts go to {url}/api/v2/alerts); unset: none."
    )
    webhook_url: str | None = Field(default=None, description="URL each CloudEvent is POSTed to; unset: none.")
    batch_size: int = Field(default=200, ge=1, le=10000, description="Outbox entries read and sent per round.")
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="Look at the outbox this often even without a NOTIFY."
    )
    backoff_initial_s: float = Field(default=0.5, gt=0, description="First wait after a failed delivery (doubles).")
    backoff_max_s: float = Field(default=30.0, gt=0, description="Longest wait between delivery attempts.")
    http_timeout_s: float = Field(default=10.0, gt=0, description="Whole-request timeout of an HTTP sink's POST.")
    outbox_retention_days: float = Field(
        default=30.0, gt=0, description="Outbox entries older than this are deleted, delivered or not."
    )


class Settings(BaseSettings):
    """Every knob of the gateway; env HJ212GW_<NAME>, nested fields joined by __."""

    model_config = SettingsConfigDict(env_prefix="HJ212GW_", env_nested_delimiter="__", extra="forbid")

    listen: str = Field(default="0.0.0.0:9212", description="HOST:PORT the data loggers connect to.")
    http: str = Field(default="127.0.0.1:9213", description="HOST:PORT of the admin HTTP server (metrics, API).")
    # Admin HTTP access and its own database pool (api.py): a token is required beyond loopback.
    http_token_file: Path | None = Field(default=None, description="File holding the admin HTTP bearer token.")
    http_token: SecretStr | None = Field(default=None, description="The bearer token itself (HJ212GW_HTTP_TOKEN).")
    http_pool_size: int = Field(default=2, ge=1, le=16, description="PostgreSQL connections for API queries.")
    http_statement_timeout_s: float = Field(default=5.0, gt=0, description="Cancel an API query running longer.")
    http_acquire_timeout_s: float = Field(default=2.0, gt=0, description="503 when no API connection is free by then.")
    database_url: str | None = Field(default=None, description="PostgreSQL DSN; unset: embedded PostgreSQL.")
    database_schema: str = Field(default="hj212gw", description="Schema holding hj212gw's tables.")
    data_dir: Path = Field(default=Path("./hj212gw-data"), description="Embedded PostgreSQL and local state.")
    device_timezone: str = Field(default="Asia/Shanghai", description="Zone of HJ 212 times (they carry none).")
    gateway_id: str = Field(default_factory=socket.gethostname, description="This replica's name in the DB.")
    log_format: Literal["auto", "json", "console"] = Field(default="auto", description="auto: console on a TTY.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    use_uvloop: bool = Field(default=True, description="uvloop when installed, else asyncio's loop.")
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="Time to flush and ack on SIGTERM.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Gateway processes sharing the DAS port (SO_REUSEPORT); worker i serves HTTP on the port + i.",
    )
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings)
    devices: DeviceSettings = Field(default_factory=DeviceSettings)
    writer: WriterSettings = Field(default_factory=WriterSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    device_state: DeviceStateSettings = Field(default_factory=DeviceStateSettings)
    monitoring: bool = Field(
        default=True, description="Track device state and gaps and backfill them (off: the command channel only)."
    )
    gaps: GapSettings = Field(default_factory=GapSettings)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    alert_sinks: AlertSinkSettings = Field(default_factory=AlertSinkSettings)

    @field_validator("listen", "http")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


_CONFIG_OVERRIDE: list[Path] = []


def _config_file() -> Path | None:
    if _CONFIG_OVERRIDE:
        return _CONFIG_OVERRIDE[-1]
    env = os.environ.get("HJ212GW_CONFIG")
    if env:
        return Path(env)
    default = Path("hj212gw.toml")
    return default if default.exists() else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from flags (`overrides`, None values ignored), env, TOML and defaults.

    Raises:
        FileNotFoundError: an explicit config file does not exist.
        pydantic.ValidationError: a value is invalid.
    """
    if config_file is not None and not config_file.exists():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    if config_file is not None:
        _CONFIG_OVERRIDE.append(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        if config_file is not None:
            _CONFIG_OVERRIDE.pop()
