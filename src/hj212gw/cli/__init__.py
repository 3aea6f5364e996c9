"""`hj212gw serve | migrate | check-config | devices | check | replay | simulate`.

Loads Settings once (flags > env > TOML > defaults) and hands plain objects down. Exit codes:
0 success, 1 failure (invalid packet, unreachable database, unacked replay), 2 usage.
"""

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hj212gw import __version__, devices_cli
from hj212gw.auth import Sm4KeysError, load_sm4_keys
from hj212gw.logs import configure_logging
from hj212gw.settings import Settings, load_settings, split_host_port


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (also HJ212GW_CONFIG, ./hj212gw.toml)")
    parser.add_argument("--listen", help="HOST:PORT for data loggers (default 0.0.0.0:9212)")
    parser.add_argument("--http", help="HOST:PORT of the admin HTTP server (default 127.0.0.1:9213)")
    parser.add_argument("--database-url", help="PostgreSQL DSN; omitted: embedded PostgreSQL in --data-dir")
    parser.add_argument("--database-schema", help="schema for hj212gw's tables (default hj212gw)")
    parser.add_argument("--data-dir", type=Path, help="local state and embedded PostgreSQL (default ./hj212gw-data)")
    parser.add_argument("--device-timezone", help="zone of HJ 212 times (default Asia/Shanghai)")
    parser.add_argument("--gateway-id", help="this replica's name (default: host name)")
    parser.add_argument("--workers", type=int, help="gateway processes sharing the DAS port (default 1)")
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _settings(args: argparse.Namespace) -> Settings:
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
        log_format=args.log_format,
        log_level=args.log_level,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hj212gw", description="HJ 212 gateway for pollution-source data loggers.")
    parser.add_argument("--version", action="version", version=f"hj212gw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    _add_settings_flags(serve)
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    _add_settings_flags(migrate)
    check_config = commands.add_parser("check-config", help="print the effective settings (secrets hidden)")
    _add_settings_flags(check_config)
    devices_cli.add_parser(commands, _add_settings_flags)
    check = commands.add_parser("check", help="decode and explain HJ 212 packets", add_help=False)
    check.add_argument("rest", nargs=argparse.REMAINDER)
    replay = commands.add_parser("replay", help="re-send a capture file (one frame per line) to a gateway")
    replay.add_argument("file", type=Path)
    replay.add_argument("--target", required=True, help="HOST:PORT of the gateway")
    replay.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each 9014")
    replay.add_argument("--json", action="store_true", help="machine-readable report")
    simulate = commands.add_parser("simulate", help="simulated DAS fleet (see hj212gw simulate --help)", add_help=False)
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


# Setting names whose values are secrets wherever they appear (a password, token or key).
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|key", re.IGNORECASE)
# libpq query parameters that carry a secret: `?password=`, and `sslpassword=` for the client key.
# Also the `key=value` form (`host=db password=x`).
_SECRET_DSN_PARAM = re.compile(r"((?:^|[?&\s])(?:ssl)?password=)[^&#\s]*", re.IGNORECASE)


def redact_dsn(url: str) -> str:
    """`url` with the password of its user-info and of its query string shown as ***."""
    scheme, sep, rest = url.partition("//")
    if sep:
        authority, slash, tail = rest.partition("/")
        userinfo, at, host = authority.rpartition("@")
        if at and ":" in userinfo:
            authority = f"{userinfo.split(':', 1)[0]}:***@{host}"
        url = f"{scheme}//{authority}{slash}{tail}"
    return _SECRET_DSN_PARAM.sub(r"\1***", url)


def _redact_secrets(data: Any) -> Any:
    """Every value under a secret-looking name, at any depth, as ***; *_file names stay (a path)."""
    if isinstance(data, dict):
        return {
            key: "***" if _SECRET_NAME.search(key) and not key.endswith("_file") and value else _redact_secrets(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_redact_secrets(value) for value in data]
    return data


def _redacted(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = _redact_secrets(settings.model_dump(mode="json"))
    if data.get("database_url"):
        data["database_url"] = redact_dsn(data["database_url"])
    return data


async def _migrate(settings: Settings) -> int:
    """Migrate and exit; an embedded server in use by a running gateway is refused, not stopped."""
    from hj212gw.app import resolve_database_url
    from hj212gw.storage.embedded import EmbeddedInUse, EmbeddedPostgresError, stop_embedded
    from hj212gw.storage.migrate import migrate_dsn

    try:
        dsn, embedded = await resolve_database_url(settings)
    except EmbeddedPostgresError as err:
        hint = (
            "; stop it first (serve applies migrations itself at every start)" if isinstance(err, EmbeddedInUse) else ""
        )
        print(f"hj212gw: {err}{hint}", file=sys.stderr)
        return 1
    try:
        applied = await migrate_dsn(dsn, settings.database_schema)
    finally:
        if embedded is not None:
            await asyncio.to_thread(stop_embedded, embedded.data_dir)
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0


def _check_http_access(settings: Settings) -> int | None:
    """Exit code 2 with one line when the admin HTTP server must not start as configured."""
    from hj212gw.api_auth import HttpAccessError, http_access_token

    try:
        http_access_token(settings)
    except HttpAccessError as err:
        print(f"hj212gw: {err}", file=sys.stderr)
        return 2
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `check` and `simulate` parse their own flags: argparse.REMAINDER drops a leading `--flag`
    # ("unrecognized arguments"), so they get everything after their name untouched.
    if argv and argv[0] == "check":
        from hj212gw.check import main as check_main

        return check_main(argv[1:])
    if argv and argv[0] == "simulate":
        from hj212gw.simulator.cli import main as simulate_main

        return simulate_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "replay":
        from hj212gw.replay import print_report, replay

        host, port = split_host_port(args.target)
        report = asyncio.run(replay(args.file, host, port, timeout_s=args.timeout))
        print_report(report, args.json)
        return 0 if not report.unacked_qns else 1
    try:
        settings = _settings(args)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"hj212gw: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps(_redacted(settings), indent=2, ensure_ascii=False))
        return 0
    if args.command == "devices":
        return asyncio.run(devices_cli.run(settings, args))
    try:
        load_sm4_keys(settings.devices)  # checked before anything starts; the message names no key
    except Sm4KeysError as exc:
        print(f"hj212gw: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve" and (refused := _check_http_access(settings)) is not None:
        return refused
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if settings.workers > 1:
        from hj212gw.workers import supervise

        return supervise(settings)
    from hj212gw.app import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
