"""`BatchWriter`: coalesces packets from all connections into batches and confirms each after COMMIT.

Owns the write queue between the server and storage: batching (`max_batch_rows`, `linger_s`), a
few writer tasks so one batch commits while the next is gathered, retry with backoff while
PostgreSQL is down (one `database_down` WARNING, one `database_up` INFO), the bounded queue that
tells the server to stop reading sockets (`full`, `wait_for_room`), and the `WriterObserver` hooks
for metrics. An item's future resolves only after its batch committed; nothing is dropped.
Imports no protocol, prometheus_client or settings.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import structlog

from hj212gw.storage.db import OUTAGE_ERRORS, RETRYABLE_ERRORS, ROW_ERRORS, Database
from hj212gw.storage.rows import DataBlock, FrameRow
from hj212gw.storage.split_parts import SplitPartRow


class WriterClosed(Exception):
    """`submit` after `close()` began."""


class ItemRejected(Exception):
    """PostgreSQL refused this item's rows even alone (e.g. a value out of range). Not retried."""


class IngestItem(NamedTuple):
    """What ONE packet stores before its ack: its data rows, its raw frame(s) and, for a split
    part, its `split_parts` row. (Its device sighting is not part of it: the gateway writes
    sightings apart, about once a second.)

    NamedTuples here and in storage.rows, not frozen dataclasses: one of each is built per packet,
    and a frozen dataclass's __init__ sets every field through object.__setattr__."""

    frame_rows: Sequence[FrameRow] = ()
    data: DataBlock | None = None  # the packet's data rows, encoded when it arrived
    split_parts: Sequence[SplitPartRow] = ()  # a split part, kept until its transfer is assembled

    @property
    def row_count(self) -> int:
        return (self.data.rows if self.data is not None else 0) + len(self.frame_rows)


class WriterObserver(Protocol):
    """Metrics hooks; metrics.py provides the Prometheus implementation."""

    def batch_committed(self, *, items: int, rows: int, values: int, latency_s: float) -> None: ...
    def queue_depth(self, items: int) -> None: ...
    def database_up(self, up: bool) -> None: ...


class NullObserver:
    """Default observer: records nothing."""

    def batch_committed(self, *, items: int, rows: int, values: int, latency_s: float) -> None:
        pass

    def queue_depth(self, items: int) -> None:
        pass

    def database_up(self, up: bool) -> None:
        pass


OnDone = Callable[[BaseException | None], object]
"""Called once per item: with None after COMMIT, with ItemRejected if PostgreSQL refused the
item's rows, with WriterClosed if the writer stopped before committing it."""


@dataclass(slots=True)
class _Pending:
    item: IngestItem
    on_done: OnDone | None = None


@dataclass(slots=True)
class _Batch:
    entries: list[_Pending] = field(default_factory=list)
    rows: int = 0


class BatchWriter:
    """Batches IngestItems from every connection into `Database.save_batch` calls."""

    def __init__(
        self,
        db: Database,
        *,
        max_batch_rows: int = 2000,
        linger_s: float = 0.01,
        writers: int = 2,
        max_pending_items: int = 10_000,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        observer: WriterObserver | None = None,
    ) -> None:
        self.db = db
        self.max_batch_rows = max_batch_rows
        self.linger_s = linger_s
        self.writers = writers
        self.max_pending_items = max_pending_items
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.observer: WriterObserver = observer or NullObserver()
        self.log = structlog.get_logger("hj212gw.ingest")
        self.ready = True
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._gather_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._active: list[_Batch] = []
        self._closing = False

    @property
    def pending(self) -> int:
        """Items submitted and not yet committed (queued + in a batch being written)."""
        return len(self._queue) + self._in_flight

    @property
    def full(self) -> bool:
        """True when the server should stop reading sockets until `wait_for_room()` returns."""
        return self.pending >= self.max_pending_items

    def start(self) -> None:
        """Start the writer tasks (call inside the running loop)."""
        for n in range(self.writers):
            self._tasks.append(asyncio.create_task(self._run(), name=f"batch-writer-{n}"))

    def submit(self, item: IngestItem, on_done: OnDone | None = None) -> None:
        """Queue one packet's rows; `on_done(None)` runs right after their batch's COMMIT.

        Never refuses for lack of room (the rows would be lost): callers check `full` and pause
        reading. A callback, not a Future: a Future per packet costs an extra event-loop turn.

        Raises:
            WriterClosed: close() has begun.
        """
        if self._closing:
            raise WriterClosed("batch writer is closing")
        self._queue.append(_Pending(item, on_done))
        self._update_room()
        self._wakeup.set()

    def submit_future(self, item: IngestItem) -> asyncio.Future[None]:
        """`submit()` for callers that await: the future resolves after COMMIT, fails with
        ItemRejected, or is cancelled if the writer closes first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            elif isinstance(error, WriterClosed):
                future.cancel()
            else:
                future.set_exception(error)

        self.submit(item, settle)
        return future

    async def wait_for_room(self) -> None:
        """Return once the queue is below `max_pending_items`."""
        while self.full:
            await self._room.wait()

    async def close(self, timeout_s: float | None = 30.0) -> None:
        """Flush what is pending (up to timeout_s), then stop; unflushed items get WriterClosed."""
        self._closing = True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.pending and (deadline is None or time.monotonic() < deadline):
            self._wakeup.set()
            await asyncio.sleep(0.005)
        unflushed = [e for b in self._active for e in b.entries] + list(self._queue)
        self._queue.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for entry in unflushed:  # never committed: no ack, the DAS sends it again
            self._done(entry, WriterClosed("closed before commit"))

    def _update_room(self) -> None:
        # Per item on both ends of the queue, so no metric here: the depth is published per batch.
        if self.full:
            self._room.clear()
        else:
            self._room.set()

    async def _run(self) -> None:
        while True:
            async with self._gather_lock:
                batch = await self._gather()
            self._active.append(batch)
            try:
                await self._commit_with_retry(batch)
            finally:
                self._active.remove(batch)

    async def _gather(self) -> _Batch:
        """Wait for a first item, then collect for up to linger_s or max_batch_rows."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = _Batch()
        deadline = time.monotonic() + self.linger_s
        while True:
            self._take(batch)
            left = deadline - time.monotonic()
            if batch.rows >= self.max_batch_rows or left <= 0 or self._closing:
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                self._take(batch)
                return batch

    def _take(self, batch: _Batch) -> None:
        while self._queue and batch.rows < self.max_batch_rows:
            entry = self._queue.popleft()
            batch.entries.append(entry)
            batch.rows += entry.item.row_count
            self._in_flight += 1
        self.observer.queue_depth(self.pending)

    async def _commit_with_retry(self, batch: _Batch) -> None:
        delay = self.retry_initial_s
        while True:
            try:
                await self._commit(batch.entries)
            except RETRYABLE_ERRORS as err:
                if isinstance(err, OUTAGE_ERRORS):  # a deadlock between replicas is no outage
                    self._mark_down(err)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.retry_max_s)
                continue
            self._mark_up()
            return

    async def _commit(self, entries: list[_Pending]) -> None:
        """Save entries in one transaction; on a row error split to isolate the bad item."""
        started = time.monotonic()
        blocks = [e.item.data for e in entries if e.item.data is not None]
        frames = [r for e in entries for r in e.item.frame_rows]
        splits = [r for e in entries for r in e.item.split_parts]
        try:
            await self.db.save_batch((), frames, data_blocks=blocks, split_parts=splits)
        except ROW_ERRORS as err:  # one bad value fails the whole batch: split to find it
            if len(entries) == 1:
                self._reject(entries[0], err)
                return
            half = len(entries) // 2
            await self._commit(entries[:half])
            await self._commit(entries[half:])
            return
        values = sum(b.rows for b in blocks)
        self.observer.batch_committed(
            items=len(entries), rows=values + len(frames), values=values, latency_s=time.monotonic() - started
        )
        self._in_flight -= len(entries)
        self._update_room()
        self.observer.queue_depth(self.pending)
        for entry in entries:
            self._done(entry, None)

    def _done(self, entry: _Pending, error: BaseException | None) -> None:
        if entry.on_done is None:
            return
        try:
            entry.on_done(error)
        except Exception:
            # A failing callback is a bug in the caller; the rows are committed regardless.
            self.log.exception("on_done_failed")

    def _reject(self, entry: _Pending, err: Exception) -> None:
        self._in_flight -= 1
        self._update_room()
        mn = next((r.mn for r in entry.item.frame_rows if r.mn), None)
        self.log.warning("item_rejected_by_database", mn=mn, error=type(err).__name__, detail=str(err)[:200])
        self._done(entry, ItemRejected(str(err)))

    def _mark_down(self, err: BaseException) -> None:
        if self.ready:
            self.ready = False
            self.observer.database_up(False)
            self.log.warning("database_down", error=type(err).__name__, detail=str(err)[:200])

    def _mark_up(self) -> None:
        if not self.ready:
            self.ready = True
            self.observer.database_up(True)
            self.log.info("database_up")
