"""`hj212gw alerts [--status S] [--mn MN] [--rule R] [--severity S] [--limit N] [--json] [--follow]`.

Lists the alerts the rules raised (storage.alerts: newest first, times in UTC), read-only, the
same rows as GET /api/v1/alerts. `--follow` instead tails the alert stream from the database:
every change (firing, resolved, acknowledged, reminder) committed from now on, polled every
`--poll-s`, in delivery order, as a line each (with `--json`: the outbox entry as one JSON
object per line); it runs until interrupted (Ctrl-C: exit 0). It needs no broker. With the
embedded PostgreSQL, a server a running gateway holds is used as it is. Exit codes: 0 listed
(even none), 1 database unreachable.
"""

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import asyncpg

from hj212gw.api.alerts import alert_json
from hj212gw.cli.database import run_with_connection
from hj212gw.cli.devices import printable
from hj212gw.settings import Settings
from hj212gw.storage.alerts import ALERT_STATUSES, SEVERITIES, fetch_alerts, fetch_outbox_after, fetch_outbox_end
from hj212gw.storage.queries import DataPage, fetch_up_to

PAGE = 1000


def add_parser(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    settings_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    alerts = commands.add_parser("alerts", help="list the alerts (newest first), or --follow the alert stream")
    alerts.add_argument("--status", choices=ALERT_STATUSES, help="only alerts in this status")
    alerts.add_argument("--mn", help="only this device")
    alerts.add_argument("--rule", help="only this rule, e.g. over_limit")
    alerts.add_argument("--severity", choices=SEVERITIES, help="only this severity")
    alerts.add_argument("--limit", type=int, default=1000, help="at most this many alerts (default 1000)")
    alerts.add_argument("--json", action="store_true", help="one JSON document (with --follow: one object a line)")
    alerts.add_argument("--follow", action="store_true", help="print every alert change from now on, until Ctrl-C")
    alerts.add_argument("--poll-s", type=float, default=1.0, help="with --follow: look for changes this often")
    settings_flags(alerts)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """List the alerts the filters select, or follow the stream."""
    return await run_with_connection(settings, "alerts", lambda conn: _run(conn, args))


async def _run(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    if args.follow:
        await _follow(conn, args)
    else:
        _print(await _fetch_all(conn, args), as_json=args.json)
    return 0


async def _fetch_all(conn: asyncpg.Connection, args: argparse.Namespace) -> list[dict[str, Any]]:
    async def page(limit: int, cursor: str | None) -> DataPage:
        return await fetch_alerts(
            conn, status=args.status, mn=args.mn, rule=args.rule, severity=args.severity, limit=limit, cursor=cursor
        )

    return await fetch_up_to(page, args.limit, PAGE)


def _print(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"alerts": [alert_json(r) for r in rows]}, ensure_ascii=False, indent=2))
        return
    table: list[tuple[str, ...]] = [
        ("ID", "STATUS", "SEVERITY", "RULE", "MN", "FACTOR", "START (UTC)", "END (UTC)", "ACKED BY", "SUMMARY")
    ]
    for r in rows:
        cells = (
            str(r["id"]), r["status"], r["severity"], r["rule"], r["mn"], r["factor"] or r["detail"] or "-",
            r["starts_at"].strftime("%Y-%m-%d %H:%M"), r["ends_at"].strftime("%Y-%m-%d %H:%M") if r["ends_at"] else "-",
            r["acked_by"] or "-", r["summary_en"],
        )  # fmt: skip
        table.append(tuple(printable(cell) for cell in cells))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


async def _follow(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    """Print every outbox entry committed after the start, in delivery order, until cancelled."""
    position = await fetch_outbox_end(conn)
    print("hj212gw alerts: following the alert stream from now on (Ctrl-C to stop)", file=sys.stderr, flush=True)
    while True:
        entries = await fetch_outbox_after(conn, position, PAGE)
        for entry in entries:
            if _selected(entry["payload"], args):
                print(_entry_line(entry, as_json=args.json), flush=True)
        if entries:
            position = (entries[-1]["txid"], entries[-1]["id"])
        if len(entries) < PAGE:
            await asyncio.sleep(args.poll_s)


def _selected(payload: dict[str, Any], args: argparse.Namespace) -> bool:
    labels = payload.get("labels", {})
    wanted = {"mn": args.mn, "alertname": args.rule, "severity": args.severity}
    return all(value is None or labels.get(key) == value for key, value in wanted.items()) and (
        args.status is None or payload.get("status") == args.status
    )


def _entry_line(entry: dict[str, Any], *, as_json: bool) -> str:
    payload = entry["payload"]
    time = entry["created_at"].isoformat().replace("+00:00", "Z")
    if as_json:
        record = {"event_id": str(entry["event_id"]), "type": entry["type"], "time": time, "data": payload}
        return json.dumps(record, ensure_ascii=False)
    labels = payload["labels"]
    cells = (
        time, entry["type"], labels["severity"], labels["alertname"], labels["mn"],
        labels.get("factor") or labels.get("detail") or "-", f"#{payload['alertId']}",
        payload["annotations"]["summary_en"],
    )  # fmt: skip
    return "  ".join(printable(str(cell)) for cell in cells)
