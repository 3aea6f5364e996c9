"""`hj212gw serve | migrate | check-config | devices | command | gaps | alerts | check | replay | simulate`.

One module per subcommand: serve.py (with workers.py for `--workers N`, database.py for the
embedded PostgreSQL), migrate.py, check_config.py, devices.py, command.py, gaps.py, alerts.py,
check.py, replay.py; `simulate` is hj212gw.simulator.cli. Settings are loaded once here
(options.py: flags > env > TOML > defaults) and plain objects are handed down. The top layer:
nothing of the package imports it.
Exit codes: 0 success, 1 failure (invalid packet, unreachable database, unacked replay), 2 usage.
"""

import argparse
import asyncio
import sys
import tomllib

from pydantic import ValidationError

from hj212gw import __version__
from hj212gw.cli import alerts, check_config, command, devices, gaps, migrate, replay
from hj212gw.cli.options import add_settings_flags, settings_from
from hj212gw.logs import configure_logging
from hj212gw.server.auth import Sm4KeysError, load_sm4_keys
from hj212gw.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hj212gw", description="HJ 212 gateway for pollution-source data loggers.")
    parser.add_argument("--version", action="version", version=f"hj212gw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    add_settings_flags(commands.add_parser("serve", help="run the gateway"))
    migrate.add_parser(commands, add_settings_flags)
    check_config.add_parser(commands, add_settings_flags)
    devices.add_parser(commands, add_settings_flags)
    command.add_parser(commands, add_settings_flags)
    gaps.add_parser(commands, add_settings_flags)
    alerts.add_parser(commands, add_settings_flags)
    check = commands.add_parser("check", help="decode and explain HJ 212 packets", add_help=False)
    check.add_argument("rest", nargs=argparse.REMAINDER)
    replay.add_parser(commands)
    simulate = commands.add_parser("simulate", help="simulated DAS fleet (see hj212gw simulate --help)", add_help=False)
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `check` and `simulate` parse their own flags: argparse.REMAINDER drops a leading `--flag`
    # ("unrecognized arguments"), so they get everything after their name untouched.
    if argv and argv[0] == "check":
        from hj212gw.cli.check import main as check_main

        return check_main(argv[1:])
    if argv and argv[0] == "simulate":
        from hj212gw.simulator.cli import main as simulate_main

        return simulate_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        return replay.run(args)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"hj212gw: invalid settings: {exc}", file=sys.stderr)
        return 2
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # a config file it cannot read
        print(f"hj212gw: cannot read the settings file: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        return check_config.run(settings)
    if args.command == "devices":
        return asyncio.run(devices.run(settings, args))
    if args.command == "command":
        return asyncio.run(command.run(settings, args))
    if args.command == "gaps":
        return asyncio.run(gaps.run(settings, args))
    if args.command == "alerts":
        try:
            return asyncio.run(alerts.run(settings, args))
        except KeyboardInterrupt:  # the end of `alerts --follow`
            return 0
    try:
        load_sm4_keys(settings.devices)  # checked before anything starts; the message names no key
    except Sm4KeysError as exc:
        print(f"hj212gw: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve" and (refused := _check_http_access(settings)) is not None:
        return refused
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "migrate":
        return asyncio.run(migrate.run(settings))
    return _serve(settings)


def _one_line(exc: Exception) -> str:
    """An exception's message on one line (TOML errors name the line and column)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_http_access(settings: Settings) -> int | None:
    """Exit code 2 with one line when the admin HTTP server must not start as configured."""
    from hj212gw.api.auth import HttpAccessError, http_access_token

    try:
        http_access_token(settings)
    except HttpAccessError as err:
        print(f"hj212gw: {err}", file=sys.stderr)
        return 2
    return None


def _serve(settings: Settings) -> int:
    """One gateway in this process, or a supervisor of `workers` processes (imported only as needed)."""
    if settings.workers > 1:
        from hj212gw.cli.workers import supervise

        return supervise(settings)
    from hj212gw.cli.serve import run

    return run(settings)
