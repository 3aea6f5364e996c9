"""The settings flags every settings-reading subcommand takes, and the one place Settings are loaded.

Precedence: flags > env (HJ212GW_*) > TOML file > defaults (settings.py).
"""

import argparse
from pathlib import Path

from hj212gw.settings import Settings, load_settings


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (also HJ212GW_CONFIG, ./hj212gw.toml)")
    parser.add_argument("--listen", help="HOST:PORT for data loggers (default 0.0.0.0:9212)")
    parser.add_argument("--http", help="HOST:PORT of the admin HTTP server (default 127.0.0.1:9213)")
    parser.add_argument("--database-url", help="PostgreSQL DSN; omitted: embedded PostgreSQL in --data-dir")
    parser.add_argument("--database-schema", help="schema for hj212gw's tables (default hj212gw)")
    parser.add_argument("--data-dir", type=Path, help="local state and embedded PostgreSQL (default ./hj212gw-data)")
    parser.add_argument("--device-timezone", help="zone of HJ 212 times (default Asia/Shanghai)")
    parser.add_argument("--gateway-id", help="this replica's name (default: host name)")
    parser.add_argument("--workers", type=int, help="gateway processes sharing the DAS port (default 1)")
    parser.add_argument("--mqtt-url", help="alert broker, mqtt://HOST[:1883] or mqtts://HOST[:8883] (default: none)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings for `args`; raises pydantic's ValidationError or FileNotFoundError (a usage error)."""
    return load_settings(
        args.config,
        listen=args.listen,
        http=args.http,
        database_url=args.database_url,
        database_schema=args.database_schema,
        data_dir=args.data_dir,
        device_timezone=args.device_timezone,
        gateway_id=args.gateway_id,
        workers=args.workers,
        mqtt=None if args.mqtt_url is None else {"url": args.mqtt_url},  # merged with the [mqtt] of env and file
        log_format=args.log_format,
        log_level=args.log_level,
    )
