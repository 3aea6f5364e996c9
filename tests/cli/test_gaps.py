"""`hj212gw gaps` against a real PostgreSQL schema: the table, --json and the filters."""

from __future__ import annotations

import asyncio
import json

import pytest

from hj212gw import cli
from hj212gw.storage.db import Database
from tests.api.harness import MN, OTHER
from tests.api.test_gaps import store_gaps

pytestmark = pytest.mark.integration


async def gaps(pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `hj212gw gaps ARGV` (in a thread: it runs its own event loop); (exit code, stdout, stderr)."""
    args = ["gaps", *argv, "--database-url", pg_dsn, "--database-schema", schema]
    code = await asyncio.to_thread(cli.main, args)
    out, err = capsys.readouterr()
    return code, out, err


async def test_gaps_lists_a_table_and_json_filtered_by_mn_and_status(
    db: Database, pg_dsn: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = await store_gaps(db)
    code, out, _ = await gaps(pg_dsn, schema, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["MN", "CN", "START"] and len(lines) == 6
    assert lines[1].split() == [MN, "2061", "2026-12-01", "01:00", "2026-12-01", "02:00", "2", "open", "0", "-"]
    code, out, _ = await gaps(pg_dsn, schema, capsys, "--status", "open", "--json")
    listed = json.loads(out)["gaps"]
    assert code == 0 and [g["id"] for g in listed] == [ids[0], ids[2]]
    assert listed[1] == {
        "id": ids[2], "mn": OTHER, "cn": "2051", "start": "2026-12-01T05:00:00+00:00",
        "end": "2026-12-01T05:00:00+00:00", "periods": 1, "status": "open", "requests": 0, "reason": None,
    }  # fmt: skip
    code, out, _ = await gaps(pg_dsn, schema, capsys, "--mn", OTHER, "--json")
    assert [g["id"] for g in json.loads(out)["gaps"]] == [ids[2]]


async def test_gaps_with_an_unreachable_database_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await gaps("postgresql://postgres@127.0.0.1:1/none", "hj212gw", capsys)
    assert (code, out) == (1, "") and "cannot reach PostgreSQL" in err
