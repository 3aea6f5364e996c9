"""`hj212gw command MN CN|NAME [KEY=VALUE …] [--wait] [--json]`: send a platform command to a device.

Validates the command against the catalog (`protocol.commands`) before the database is touched,
inserts it `queued` in PostgreSQL (storage.commands; the NOTIFY reaches every running replica, and
the one holding the MN sends it) and prints its id; with `--wait` it polls the row until a final
state and prints the outcome. A command no replica claims within `commands.offline_timeout_s`
ends `device_offline` (if no gateway runs at all, this command ends it itself: never sent later).
Secret items (NewPW, NewSK) are never printed. Exit codes: 0 queued (or, with --wait, succeeded),
1 any other outcome, no outcome within --timeout, database unreachable; 2 bad input.
"""

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from hj212gw.api.commands import command_json
from hj212gw.cli.database import run_with_connection
from hj212gw.protocol.commands import CommandError, CommandSpec, check_params, find_command
from hj212gw.settings import Settings
from hj212gw.storage import commands as store

POLL_S = 0.2


def add_parser(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    settings_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = commands.add_parser(
        "command", help="send a platform command (get/set time, intervals, history fetch, ...) to a device"
    )
    parser.add_argument("mn", help="the device's MN")
    parser.add_argument("what", metavar="CN|NAME", help="a CN (1012) or a name (set_time): docs/protocol.md")
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE", help="CP items, e.g. SystemTime=20240315120000")
    parser.add_argument("--wait", action="store_true", help="wait for the outcome and print it")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits at most (default 300)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--over-time", type=float, help="OverTime in seconds, 1-99 (default commands.over_time_s)")
    parser.add_argument("--re-count", type=int, help="ReCount, 0-99 (default commands.re_count)")
    settings_flags(parser)


class InputError(ValueError):
    """A command line that cannot become a command."""


def prepare(args: argparse.Namespace) -> store.NewCommand:
    """The row to insert; raises InputError naming what is wrong."""
    mn = args.mn
    if not mn or len(mn) > 64 or not mn.isascii() or not mn.isprintable() or set(mn) & set(";&,= "):
        raise InputError(f"MN {mn[:64]!r}: 1-64 printable ASCII characters without ; & , = or spaces")
    params: dict[str, str] = {}
    for item in args.params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{item[:60]!r} is not KEY=VALUE")
        params[key] = value
    if args.over_time is not None and not 1 <= args.over_time <= 99:
        raise InputError("--over-time: 1 to 99 seconds")
    if args.re_count is not None and not 0 <= args.re_count <= 99:
        raise InputError("--re-count: 0 to 99")
    try:
        spec = find_command(args.what)
        check_params(spec, params)
    except CommandError as err:
        raise InputError(str(err)) from None
    return _new(spec, mn, params, args)


def _new(spec: CommandSpec, mn: str, params: dict[str, str], args: argparse.Namespace) -> store.NewCommand:
    return store.NewCommand(mn, spec.cn, spec.name, params, args.over_time, args.re_count, f"cli {getpass.getuser()}")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        new = prepare(args)
    except InputError as err:
        print(f"hj212gw command: {err}", file=sys.stderr)
        return 2
    return await run_with_connection(settings, "command", lambda conn: _send(conn, settings, new, args))


async def _send(conn: asyncpg.Connection, settings: Settings, new: store.NewCommand, args: argparse.Namespace) -> int:
    command_id = await store.insert_command(conn, new, store.channel_of(settings.database_schema))
    if not args.wait:
        _print({"id": command_id, "state": "queued", "mn": new.mn, "cn": new.cn, "name": new.name}, args.json)
        return 0
    row = await _wait(conn, command_id, settings.commands.offline_timeout_s, args.timeout)
    _print(command_json(row), args.json)
    return 0 if row["state"] == "succeeded" else 1


async def _wait(
    conn: asyncpg.Connection, command_id: int, offline_timeout_s: float, timeout_s: float
) -> dict[str, Any]:
    """The row once final, or as it is when `timeout_s` ran out. Still queued after the offline
    timeout (no gateway running to expire it): expired here, as a gateway would."""
    started = time.monotonic()
    while True:
        row = await store.fetch_command(conn, command_id)
        assert row is not None
        waited = time.monotonic() - started
        if row["state"] in store.FINAL_STATES or waited >= timeout_s:
            return row
        if row["state"] == "queued" and waited > offline_timeout_s + 1.0:
            await store.expire_queued(conn, offline_timeout_s)
        await asyncio.sleep(POLL_S)


def _print(command: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(command, ensure_ascii=False, indent=2))
        return
    line = f"command {command['id']} ({command['name']}, CN {command['cn']}) to {_printable(command['mn'])}: "
    line += command["state"]
    codes = [f"{k}={command[k]}" for k in ("qn_rtn", "exe_rtn") if command.get(k) is not None]
    print(" ".join([line, *codes]))
    if command.get("reason"):
        print(f"  reason: {_printable(command['reason'])}")
    if command.get("result"):
        print(f"  result: {_printable(json.dumps(command['result'], ensure_ascii=False))}")


def _printable(text: str) -> str:
    """Text from a device as it may reach a terminal (no escape sequences)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
