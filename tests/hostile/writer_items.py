"""Shared by the write-path hostile tests: items PostgreSQL refuses, on-done recorders, a fault-injecting
wrapper of the real Database, a running gateway's readiness."""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from hj212gw.api import bound_port
from hj212gw.cli.serve import Running
from hj212gw.ingest.items import IngestItem
from hj212gw.storage import pgcopy
from hj212gw.storage.db import Database
from hj212gw.storage.rows import DataBlock, DataRow, FrameRow, month_of

T0 = datetime(2024, 6, 1, tzinfo=UTC)


def long_text(n: int = 3000, seed: int = 1) -> str:
    """Random characters: PostgreSQL cannot compress them below its index row limit (2,704 bytes)."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def item(
    n: int, *, mn: str = "MN0001", factor: str = "w01018", frame_mn: str | None = None, tag: int = 0
) -> IngestItem:
    """One packet: two factors at minute n (one of them `factor`) and its raw frame."""
    at = T0 + timedelta(minutes=n)
    now = datetime.now(UTC)
    rows = [DataRow(mn=mn, cn="2051", data_time=at, factor=f, received_at=now, avg=n) for f in (factor, "w21003")]
    data = DataBlock(b"".join(pgcopy.data_row(r) for r in rows), len(rows), month_of(at))
    frame = FrameRow(received_at=now, raw=f"frame {n}".encode(), mn=frame_mn or mn, cn="2051", connection_id=tag)
    return IngestItem([frame], data)


class Done:
    """on_done callbacks per item: every call is recorded, so a second one shows."""

    def __init__(self) -> None:
        self.calls: dict[int, list[BaseException | None]] = {}

    def callback(self, n: int) -> Any:
        return lambda error: self.calls.setdefault(n, []).append(error)


async def readyz(running: Running) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{bound_port(running.http_runner)}/readyz"  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


class Faulty:
    """The real Database underneath; `save_batch` raises the queued faults first.

    A fault is ("before", exc): raised instead of calling the real save_batch, or ("after", exc):
    raised after the real save_batch committed (an outage that hides a COMMIT)."""

    def __init__(self, real: Database, faults: Sequence[tuple[str, BaseException]] = ()) -> None:
        self.real = real
        self.faults = list(faults)
        self.committed_frames = 0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def save_batch(self, data_rows: Sequence[DataRow], frame_rows: Sequence[FrameRow] = (), **kw: Any) -> int:
        self.calls += 1
        when, error = self.faults.pop(0) if self.faults else ("", None)
        if when == "before" and error is not None:
            raise error
        changed = await self.real.save_batch(data_rows, frame_rows, **kw)
        self.committed_frames += len(frame_rows)
        if when == "after" and error is not None:
            raise error
        return changed
