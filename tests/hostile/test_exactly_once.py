"""Hostile review: every item is confirmed exactly once under any mix of rows PostgreSQL refuses and
outages. Faults are injected by a thin wrapper around the real `Database` (an outage raised before
or after the real `save_batch`) or by cutting the TCP proxy; refused rows are real refusals."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hj212gw.ingest.items import ItemRejected
from hj212gw.ingest.writer import BatchWriter
from hj212gw.storage.db import Database
from tests.hostile.writer_items import Done, Faulty, item, long_text
from tests.integration.proxy import TcpProxy

# -- exactly once under any mix of refused rows and outages --------------------------------------

OUTAGE = ConnectionResetError("injected outage")


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    poison=st.lists(st.sampled_from(["good", "long_factor", "nul", "long_mn"]), min_size=1, max_size=12),
    faults=st.lists(st.sampled_from(["ok", "before", "after"]), max_size=12),
    batch_rows=st.sampled_from([3, 8, 100]),
)
async def test_every_item_is_confirmed_exactly_once_under_refusals_and_outages(
    db: Database, conn: asyncpg.Connection, poison: list[str], faults: list[str], batch_rows: int
) -> None:
    tag = uuid.uuid4().int % 2**62  # this example's frames: connection_id = tag
    faulty = Faulty(db, [(f, OUTAGE) for f in faults])
    depths: list[tuple[int, int]] = []

    class Depth:
        def batch_committed(self, **_: object) -> None:
            pass

        def queue_depth(self, items: int, nbytes: int) -> None:
            depths.append((items, nbytes))

        def database_up(self, up: bool) -> None:
            pass

        def item_refused(self, **_: object) -> None:
            pass

    writer = BatchWriter(
        faulty,  # type: ignore[arg-type]
        linger_s=0.02,
        max_batch_rows=batch_rows,
        retry_initial_s=0.001,
        retry_max_s=0.005,
        observer=Depth(),
    )
    writer.start()
    done = Done()
    mn = f"P{tag}"
    for n, kind in enumerate(poison):
        factor = {"long_factor": long_text(seed=n), "nul": "w0\x001018"}.get(kind, "w01018")
        frame_mn = long_text(seed=n) if kind == "long_mn" else None
        writer.submit(item(n, mn=mn, factor=factor, frame_mn=frame_mn, tag=tag), done.callback(n))
    with capture_logs():
        async with asyncio.timeout(60):
            while writer.pending:
                await asyncio.sleep(0.005)
        await writer.close()

    assert {n: len(calls) for n, calls in done.calls.items()} == {n: 1 for n in range(len(poison))}
    for n, kind in enumerate(poison):
        (error,) = done.calls[n]
        assert (error is None) == (kind == "good"), (n, kind, error)
        assert error is None or (isinstance(error, ItemRejected) and error.archived)
    assert all(items >= 0 and nbytes >= 0 for items, nbytes in depths)
    assert writer.pending == 0 and writer.pending_bytes == 0
    frames = await conn.fetchval("SELECT count(*) FROM raw_frames WHERE connection_id = $1", tag)
    assert frames == faulty.committed_frames
    if "after" not in faults[: faulty.calls]:  # no COMMIT hidden by an outage: each frame once
        assert frames == len(poison)
    good = sum(kind == "good" for kind in poison)
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", mn) == 2 * good


async def test_a_cut_in_the_middle_of_a_bisection_confirms_each_item_once(
    pg_dsn: str, schema: str, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    # Before: the first half committed, the cut failed the second, and the retry wrote and
    # confirmed the whole batch again (two acks, raw frames twice, the pending count below zero).
    db = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=2, connect_timeout_s=2.0)
    await db.connect()

    class CutAfterFirstCommit:
        commits = 0

        def batch_committed(self, **_: object) -> None:
            self.commits += 1
            if self.commits == 1:  # the first half of the bisection just committed
                proxy.cut()
                asyncio.get_running_loop().call_later(0.5, proxy.restore)

        def queue_depth(self, items: int, nbytes: int) -> None:
            assert items >= 0 and nbytes >= 0

        def database_up(self, up: bool) -> None:
            pass

        def item_refused(self, **_: object) -> None:
            pass

    done = Done()
    writer = BatchWriter(db, linger_s=0.05, retry_initial_s=0.05, retry_max_s=0.2, observer=CutAfterFirstCommit())
    writer.start()
    with capture_logs() as logs:
        for n in range(8):
            writer.submit(item(n, factor=long_text() if n == 7 else "w01018"), done.callback(n))
        async with asyncio.timeout(30):
            while writer.pending:
                await asyncio.sleep(0.01)
        await writer.close()
    await db.close()
    assert {n: len(calls) for n, calls in done.calls.items()} == {n: 1 for n in range(8)}
    assert [done.calls[n] for n in range(7)] == [[None]] * 7
    assert isinstance(done.calls[7][0], ItemRejected)
    assert await conn.fetchval("SELECT count(*) FROM raw_frames") == 8
    assert await conn.fetchval("SELECT count(*) FROM data") == 14
    assert [e["event"] for e in logs if e["event"].startswith("database_")] == ["database_down", "database_up"]
