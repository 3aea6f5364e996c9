"""`hj212gw gaps [--mn MN] [--cn CN] [--status STATUS] [--limit N] [--json]`: the gaps in stored data.

Lists what the gap tracker wrote (storage.gaps: runs of missing minute, hour and day periods,
oldest first; start and end are the first and the last missing period, both inclusive, in UTC),
read-only. With the embedded PostgreSQL, a server a running gateway holds is used as it is;
otherwise it is started for the command and stopped after. Exit codes: 0 listed (even none),
1 database unreachable.
"""

import argparse
import json
from collections.abc import Callable
from typing import Any

import asyncpg

from hj212gw.cli.database import run_with_connection
from hj212gw.cli.devices import printable
from hj212gw.settings import Settings
from hj212gw.storage.gaps import GAP_STATUSES, fetch_gaps
from hj212gw.storage.queries import DataPage, fetch_up_to

GAP_CNS = ("2051", "2061", "2031")
PAGE = 1000


def add_parser(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    settings_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    gaps = commands.add_parser("gaps", help="list the gaps in minute, hour and day data (oldest first)")
    gaps.add_argument("--mn", help="only this device")
    gaps.add_argument("--cn", choices=GAP_CNS, help="only minute (2051), hour (2061) or day (2031) data")
    gaps.add_argument("--status", choices=GAP_STATUSES, help="only gaps in this status")
    gaps.add_argument("--limit", type=int, default=10_000, help="at most this many gaps (default 10000)")
    gaps.add_argument("--json", action="store_true", help="one JSON document")
    settings_flags(gaps)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """List the gaps the filters select."""
    return await run_with_connection(settings, "gaps", lambda conn: _list(conn, args))


async def _list(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    _print(await _fetch_all(conn, args), as_json=args.json)
    return 0


async def _fetch_all(conn: asyncpg.Connection, args: argparse.Namespace) -> list[dict[str, Any]]:
    async def page(limit: int, cursor: str | None) -> DataPage:
        return await fetch_gaps(conn, mn=args.mn, cn=args.cn, status=args.status, limit=limit, cursor=cursor)

    return await fetch_up_to(page, args.limit, PAGE)


def _print(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        out = [
            {
                "id": r["id"], "mn": r["mn"], "cn": r["cn"], "start": r["start_time"].isoformat(),
                "end": r["end_time"].isoformat(), "periods": r["periods"], "status": r["status"],
                "requests": r["requests"], "reason": r["reason"],
            }
            for r in rows
        ]  # fmt: skip
        print(json.dumps({"gaps": out}, ensure_ascii=False, indent=2))
        return
    table: list[tuple[str, ...]] = [("MN", "CN", "START (UTC)", "END (UTC)", "PERIODS", "STATUS", "REQUESTS", "REASON")]
    for r in rows:
        cells = (
            r["mn"], r["cn"], r["start_time"].strftime("%Y-%m-%d %H:%M"), r["end_time"].strftime("%Y-%m-%d %H:%M"),
            str(r["periods"]), r["status"], str(r["requests"]), r["reason"] or "-",
        )  # fmt: skip
        table.append(tuple(printable(cell) for cell in cells))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
