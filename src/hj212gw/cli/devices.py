"""`hj212gw devices list|add|set-pw|set-intervals|approve|reject|import`: the device registry without SQL.

Owns the operator's side of the registry: argument parsing, validation of MN, PW, name, site,
tags and status, reading a PW from a prompt, stdin or a file (never from the command line), and
the CSV import format. SQL lives in storage.devices. Never prints a PW: `list` says whether one
is set and by whom. Changes reach running gateways at their next registry refresh
(`devices.refresh_s`). With the embedded PostgreSQL, a server a running gateway holds is used
as it is; otherwise it is started for the command and stopped after. Exit codes: 0 done,
1 refused (unknown or existing MN, database unreachable), 2 bad input.
"""

import argparse
import csv
import getpass
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from hj212gw.cli.database import run_with_connection
from hj212gw.monitor.cadence import MIN_INTERVALS_MIN
from hj212gw.settings import Settings
from hj212gw.storage import devices as store
from hj212gw.storage.devices import DeviceRecord

STATUSES = ("accepted", "quarantined", "rejected")
# MN and PW travel in the header as `MN=…;PW=…;`: printable ASCII without the separators.
_MN = re.compile(r"[!-~]{1,64}")
_PW = re.compile(r"[!-~]{1,64}")
_SEPARATORS = frozenset(";&,=")
_TAG = re.compile(r"[\w.:/-]{1,64}")
MAX_TAGS = 32
MAX_TEXT = 200
CSV_COLUMNS = ("mn", "pw", "name", "site", "tags", "policy")


class InputError(ValueError):
    """Operator input that cannot go into the registry; the message never quotes a PW."""


def check_mn(mn: str) -> str:
    if not _MN.fullmatch(mn) or _SEPARATORS & set(mn):
        raise InputError(f"MN {mn[:64]!r}: 1-64 printable ASCII characters without ; & , =")
    return mn


def check_pw(pw: str) -> str:
    if not _PW.fullmatch(pw) or _SEPARATORS & set(pw):
        raise InputError("PW: 1-64 printable ASCII characters without ; & , = (HJ 212: usually 6)")
    return pw


def check_text(what: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_TEXT or not value.isprintable():
        raise InputError(f"{what}: at most {MAX_TEXT} printable characters")
    return value


def check_tags(values: Sequence[str]) -> tuple[str, ...]:
    tags = tuple(t.strip() for value in values for t in value.split(",") if t.strip())
    if len(tags) > MAX_TAGS or not all(_TAG.fullmatch(t) for t in tags):
        raise InputError(f"tags: at most {MAX_TAGS}, each 1-64 letters, digits or . : / - _")
    return tags


def check_status(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in STATUSES:
        raise InputError(f"policy {value[:20]!r}: one of {', '.join(STATUSES)}")
    return value


def read_pw(args: argparse.Namespace, *, optional: bool) -> str | None:
    """The PW from --pw-file, --pw-stdin or a prompt; None with --no-pw (where allowed)."""
    if getattr(args, "no_pw", False) or getattr(args, "clear", False):
        return None
    if args.pw_file is not None:
        try:
            text = args.pw_file.read_text(encoding="utf-8")
        except OSError as err:
            raise InputError(f"--pw-file {str(args.pw_file)!r}: {err.strerror}") from None
        return check_pw(text.splitlines()[0] if text else "")
    if args.pw_stdin:
        return check_pw(sys.stdin.readline().rstrip("\r\n"))
    if not sys.stdin.isatty():
        hint = " or --no-pw" if optional else " (or --clear)"
        raise InputError(f"no PW given: use --pw-file FILE or --pw-stdin{hint}")
    pw = check_pw(getpass.getpass(f"PW for {args.mn}: "))
    if getpass.getpass("again: ") != pw:
        raise InputError("the two PWs differ")
    return pw


def _pw_sources(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pw-file", type=Path, help="read the PW from the first line of this file")
    group.add_argument("--pw-stdin", action="store_true", help="read the PW from the first line of stdin")
    return group


def add_parser(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    settings_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    """`devices` and its subcommands on the main parser; each takes the usual settings flags."""
    devices = commands.add_parser("devices", help="manage the device registry (MN, PW, name, site, tags, policy)")
    sub = devices.add_subparsers(dest="devices_command", required=True)
    listing = sub.add_parser("list", help="list devices (never their PWs)")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--json", action="store_true", help="one JSON document")
    add = sub.add_parser("add", help="register a device; the PW is prompted for or read from a file/stdin")
    add.add_argument("mn")
    add.add_argument("--name")
    add.add_argument("--site")
    add.add_argument("--tag", action="append", default=[], help="repeatable, or comma-separated")
    add.add_argument("--policy", choices=STATUSES, default="accepted")
    _pw_sources(add).add_argument("--no-pw", action="store_true", help="no PW: pinned on first use (auth=tofu)")
    _interval_flags(add)
    set_pw = sub.add_parser("set-pw", help="set a device's PW (prompt, --pw-file, --pw-stdin) or --clear it")
    set_pw.add_argument("mn")
    _pw_sources(set_pw).add_argument("--clear", action="store_true", help="unpin: the next PW presented is pinned")
    intervals = sub.add_parser(
        "set-intervals", help="fix the periods its device state expects (docs/monitoring.md), or --clear them"
    )
    intervals.add_argument("mn")
    _interval_flags(intervals)
    intervals.add_argument("--clear", action="store_true", help="learn both from its DataTimes again")
    for verb, meaning in (("approve", "policy accepted: store its data"), ("reject", "policy rejected: refuse it")):
        cmd = sub.add_parser(verb, help=meaning)
        cmd.add_argument("mn", nargs="+")
    importing = sub.add_parser("import", help=f"upsert devices from a CSV file with columns {','.join(CSV_COLUMNS)}")
    importing.add_argument("file", type=Path)
    for parser in (listing, add, set_pw, intervals, importing, *(sub.choices[v] for v in ("approve", "reject"))):
        settings_flags(parser)


def _interval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-interval", type=int, choices=MIN_INTERVALS_MIN, metavar="MINUTES",
        help="MinInterval of its minute data (2051): one of 1-6, 10, 12, 15, 20, 30",
    )  # fmt: skip
    parser.add_argument("--rtd-interval", type=int, metavar="SECONDS", help="RtdInterval of its real-time data (2011)")


def check_rtd_interval(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 3600:
        raise InputError(f"--rtd-interval {value}: 1 to 3600 seconds (HJ 212-2017: 30 to 3600)")
    return value


def read_csv(path: Path) -> list[DeviceRecord]:
    """Devices from a CSV file: header row with `mn` and any of pw, name, site, tags, policy.

    An empty cell leaves that field as the registry has it. Raises InputError naming the line.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = tuple(h.strip().lower() for h in (rows[0].keys() if rows else ()))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: {err}") from None
    unknown = set(header) - set(CSV_COLUMNS) - {"status"}
    if rows and ("mn" not in header or unknown):
        raise InputError(f"{path}: the header needs mn, and only {', '.join(CSV_COLUMNS)} (got {sorted(unknown)})")
    found: list[DeviceRecord] = []
    seen: set[str] = set()
    for line, raw in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        try:
            mn = check_mn(row.get("mn", ""))
            if mn in seen:
                raise InputError(f"MN {mn!r} appears twice")
            seen.add(mn)
            pw = check_pw(row["pw"]) if row.get("pw") else None
            status = check_status(row.get("policy") or row.get("status"))
            tags = check_tags([row.get("tags", "")])
            record = DeviceRecord(
                mn, pw, check_text("name", row.get("name")), check_text("site", row.get("site")), tags, status
            )
        except InputError as err:
            raise InputError(f"{path}, line {line}: {err}") from None
        found.append(record)
    return found


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one `devices` subcommand against the configured database."""
    try:
        request = _prepare(args)
    except InputError as err:
        print(f"hj212gw devices: {err}", file=sys.stderr)
        return 2
    return await run_with_connection(settings, "devices", lambda conn: _execute(conn, args, request))


def _prepare(args: argparse.Namespace) -> Any:
    """Validate the input before the database is touched (a bad CSV line changes nothing)."""
    command = args.devices_command
    if command in ("add", "set-pw", "set-intervals"):
        check_mn(args.mn)
    if command in ("add", "set-intervals"):
        check_rtd_interval(args.rtd_interval)
    if command == "add":
        record = DeviceRecord(
            args.mn,
            read_pw(args, optional=True),
            check_text("name", args.name),
            check_text("site", args.site),
            check_tags(args.tag),
            args.policy,
            args.min_interval,
            args.rtd_interval,
        )
        return record
    if command == "set-pw":
        return read_pw(args, optional=False)
    if command in ("approve", "reject"):
        return [check_mn(mn) for mn in args.mn]
    if command == "import":
        return read_csv(args.file)
    return None


async def _execute(conn: asyncpg.Connection, args: argparse.Namespace, request: Any) -> int:
    command = args.devices_command
    if command == "list":
        _print_list(await store.fetch_device_list(conn, args.status), as_json=args.json)
        return 0
    if command == "add":
        if not await store.add_device(conn, request):
            print(f"hj212gw devices: MN {args.mn!r} exists already (use set-pw or import)", file=sys.stderr)
            return 1
        print(f"added {args.mn} ({'PW set' if request.pw is not None else 'no PW: pinned on first use'})")
        return 0
    if command == "set-pw":
        if not await store.set_pw(conn, args.mn, request):
            print(f"hj212gw devices: no device with MN {args.mn!r}", file=sys.stderr)
            return 1
        print(f"{args.mn}: PW {'cleared: the next PW presented is pinned' if request is None else 'set'}")
        return 0
    if command == "set-intervals":
        return await _set_intervals(conn, args)
    if command in ("approve", "reject"):
        status = "accepted" if command == "approve" else "rejected"
        updated = await store.set_status(conn, request, status)
        for mn in request:
            if mn in updated:
                print(f"{mn}: {status}")
            else:
                print(f"hj212gw devices: no device with MN {mn!r}", file=sys.stderr)
        return 0 if len(updated) == len(set(request)) else 1
    added, changed = await store.import_devices(conn, request)
    print(f"imported {args.file}: {added} added, {changed} updated")
    return 0


async def _set_intervals(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    if not args.clear and args.min_interval is None and args.rtd_interval is None:
        print("hj212gw devices: give --min-interval, --rtd-interval or --clear", file=sys.stderr)
        return 2
    now = await store.set_intervals(
        conn, args.mn, min_interval_min=args.min_interval, rtd_interval_s=args.rtd_interval, clear=args.clear
    )
    if now is None:
        print(f"hj212gw devices: no device with MN {args.mn!r}", file=sys.stderr)
        return 1
    minutes, seconds = (str(v) if v is not None else "(learned)" for v in now)
    print(f"{args.mn}: minute data every {minutes} min, real-time data every {seconds} s")
    return 0


def _pw_state(row: dict[str, Any]) -> str:
    if not row["pw_set"]:
        return "none"
    if row["pw_empty"]:
        return "empty"
    return "pinned" if row["pw_source"] == "first_use" else "set"


def _print_list(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        out = [
            {
                "mn": r["mn"], "name": r["name"], "site": r["site"], "tags": list(r["tags"]), "policy": r["status"],
                "enabled": r["enabled"], "pw": _pw_state(r), "pw_set_at": _iso(r["pw_set_at"]),
                "last_seen": _iso(r["last_seen"]), "last_peer": r["last_peer"],
            }
            for r in rows
        ]  # fmt: skip
        print(json.dumps({"devices": out}, ensure_ascii=False, indent=2))
        return
    table: list[tuple[str, ...]] = [("MN", "POLICY", "PW", "NAME", "SITE", "TAGS", "LAST SEEN")]
    for r in rows:
        seen = r["last_seen"].strftime("%Y-%m-%d %H:%M") if r["last_seen"] else "-"
        cells = (
            r["mn"],
            r["status"],
            _pw_state(r),
            r["name"] or "-",
            r["site"] or "-",
            ",".join(r["tags"]) or "-",
            seen,
        )
        table.append(tuple(printable(cell) for cell in cells))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def printable(text: str) -> str:
    """A cell as it may reach a terminal: an MN comes from a device and may hold escape sequences."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())
