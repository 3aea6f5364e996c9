"""`BatchWriter`: coalesces packets from all connections into batches and confirms each after COMMIT.

Owns the write queue between the server and storage: batching (`max_batch_rows`, `linger_s`), a
few supervised writer tasks so one batch commits while the next is gathered, retry with backoff
while PostgreSQL is down (one `database_down` WARNING, one `database_up` INFO), bisection that
isolates an item PostgreSQL refuses and archives its raw frames as evidence, the queue bounded in
items and bytes that tells the server to stop reading sockets (`full`, `wait_for_room`), and the
`WriterObserver` hooks for metrics (items.py: what goes in and comes out). Every item is
confirmed exactly once (see `OnDone`), only after its batch committed; nothing is dropped.
Imports no protocol, prometheus_client or settings.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from hj212gw.ingest.items import (
    REFUSED_VERDICT,
    IngestItem,
    ItemRejected,
    NullObserver,
    OnDone,
    QueueShare,
    WriterClosed,
    WriterObserver,
    encoded_bytes,
)
from hj212gw.storage.db import DATABASE_ERRORS, Database, is_outage, is_retryable, sqlstate_of
from hj212gw.storage.rows import DataBlock, FrameRow
from hj212gw.supervisor import Supervisor
from hj212gw.waiting import wait_set


@dataclass(slots=True)
class _Pending:
    item: IngestItem
    on_done: OnDone | None
    nbytes: int
    rows: int  # item.row_count, counted once at submit
    share: QueueShare | None
    done: bool = False  # on_done was called: never again
    refusal: BaseException | None = None  # PostgreSQL refused the item alone: only its evidence is left
    anonymous: bool = False  # the evidence without mn/cn/qn (PostgreSQL refused those too)


@dataclass(slots=True)
class _Batch:
    entries: list[_Pending] = field(default_factory=list)
    rows: int = 0


def _evidence(entry: _Pending) -> list[FrameRow]:
    """The raw frame rows of a refused item, to be archived on their own."""
    verdict = f"{REFUSED_VERDICT}:{sqlstate_of(entry.refusal)}" if entry.refusal is not None else REFUSED_VERDICT
    rows = [r._replace(verdict=verdict) if r.verdict == "ok" else r for r in entry.item.frame_rows]
    if entry.anonymous:  # the raw bytes still hold the MN; the columns are what PostgreSQL refused
        rows = [r._replace(mn=None, cn=None, qn=None) for r in rows]
    return rows


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
        max_pending_bytes: int = 64 * 1024 * 1024,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 5.0,
        observer: WriterObserver | None = None,
        supervisor: Supervisor | None = None,
        on_committed: Callable[[list[DataBlock]], object] | None = None,
    ) -> None:
        self.db = db
        self.max_batch_rows = max_batch_rows
        self.linger_s = linger_s
        self.writers = writers
        self.max_pending_items = max_pending_items
        self.max_pending_bytes = max_pending_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.observer: WriterObserver = observer or NullObserver()
        self.supervisor = supervisor or Supervisor()
        # Told the data blocks of each committed batch, after their items are confirmed (the acks
        # first): monitoring's device state and gaps. Once per batch, not a callback per packet.
        self.on_committed = on_committed
        self.log = structlog.get_logger("hj212gw.ingest")
        self.ready = True  # False while PostgreSQL is down
        # Two queues, so that a flood does not delay everyone (see `_take`): the items of sources
        # with few queued (a DAS waiting for its ack has one) and the backlogs of those with more.
        self._first: deque[_Pending] = deque()
        self._rest: deque[_Pending] = deque()
        self._pending = 0  # submitted, on_done not called yet (queued + in a batch being written)
        # Rows waiting in the first queue (sources with few queued: the DAS that wait for their
        # acks), which no batch has taken yet. The server's read admission compares it with its mark
        # for every socket read, so a plain attribute. Backlogs of floods (the second queue) do not
        # count: their queue shares bound them, and counting them would make every DAS's read wait
        # behind a flood.
        self.queued_rows = 0
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._gather_lock = asyncio.Lock()
        self._names: list[str] = []
        self._active: list[_Batch] = []
        self._closing = False

    @property
    def pending(self) -> int:
        """Items submitted and not yet confirmed (queued + in a batch being written)."""
        return self._pending

    @property
    def pending_bytes(self) -> int:
        """Encoded bytes (data rows + raw frames) of the pending items."""
        return self._pending_bytes

    @property
    def full(self) -> bool:
        """True when the server should stop reading sockets until `wait_for_room()` returns:
        `max_pending_items` or `max_pending_bytes` is reached."""
        return self._pending >= self.max_pending_items or self._pending_bytes >= self.max_pending_bytes

    def start(self) -> None:
        """Start the writer tasks under the supervisor (call inside the running loop)."""
        for n in range(self.writers):
            name = f"batch-writer-{n}"
            self._names.append(name)
            self.supervisor.start(name, self._run)

    def submit(self, item: IngestItem, on_done: OnDone | None = None, share: QueueShare | None = None) -> None:
        """Queue one packet's rows; `on_done(None)` runs right after their batch's COMMIT.

        `share`: the source's counts, updated here and just before `on_done` runs.

        Never refuses for lack of room (the rows would be lost): callers check `full` and pause
        reading. A callback, not a Future: a Future per packet costs an extra event-loop turn.

        Raises:
            WriterClosed: close() has begun.
        """
        if self._closing:
            raise WriterClosed("batch writer is closing")
        nbytes = encoded_bytes(item)
        rows = item.row_count
        if share is None or share.items < share.backlog_items:
            self._first.append(_Pending(item, on_done, nbytes, rows, share))
            self.queued_rows += rows
        else:
            self._rest.append(_Pending(item, on_done, nbytes, rows, share))
        if share is not None:
            share.items += 1
            share.nbytes += nbytes
        self._pending += 1
        self._pending_bytes += nbytes
        if self._pending >= self.max_pending_items or self._pending_bytes >= self.max_pending_bytes:
            self._room.clear()  # the queue only grows here: no set() needed
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
        """Return once the queue is below both `max_pending_items` and `max_pending_bytes`."""
        while self.full:
            await self._room.wait()

    async def close(self, timeout_s: float | None = 30.0) -> None:
        """Flush what is pending (up to timeout_s), then stop; unflushed items get WriterClosed."""
        self._closing = True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.pending and (deadline is None or time.monotonic() < deadline):
            self._wakeup.set()
            await asyncio.sleep(0.005)
        unflushed = [e for b in self._active for e in b.entries] + list(self._first) + list(self._rest)
        self._first.clear()
        self._rest.clear()
        self.queued_rows = 0
        await self.supervisor.stop(self._names)
        for entry in unflushed:  # never committed: no ack, the DAS sends it again
            self._finish(entry, WriterClosed("closed before commit"))
        self._update_room()

    def _update_room(self) -> None:
        # Per item on both ends of the queue, so no metric here: the depth is published per batch.
        if self.full:
            self._room.clear()
        else:
            self._room.set()

    async def _run(self) -> None:
        while True:
            batch = _Batch()
            self._active.append(batch)  # from its first item on: close() and a crash must see it
            try:
                async with self._gather_lock:
                    await self._gather(batch)
                await self._commit_with_retry(batch)
            except BaseException as err:
                # close() cancelled us, or a bug: no ack for what did not commit, the DAS sends it
                # again; the supervisor logs a bug with its traceback and restarts this task.
                closed = isinstance(err, asyncio.CancelledError)
                for entry in batch.entries:
                    self._finish(entry, WriterClosed("closed before commit") if closed else err)
                self._update_room()
                raise
            finally:
                self._active.remove(batch)

    async def _gather(self, batch: _Batch) -> None:
        """Wait for a first item, then collect for up to linger_s or max_batch_rows."""
        while not self._first and not self._rest:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = time.monotonic() + self.linger_s
        while True:
            self._take(batch)
            left = deadline - time.monotonic()
            if batch.rows >= self.max_batch_rows or left <= 0 or self._closing:
                return
            self._wakeup.clear()
            if not await wait_set(self._wakeup, left):
                self._take(batch)
                return

    def _take(self, batch: _Batch) -> None:
        """Items of sources with few queued fill up to half a batch, then backlogs, then the former
        again: a DAS that waits for its ack is in one of the next batches however many packets a
        flood queued before it, and a backlog still gets at least half of every full batch."""
        full = self.max_batch_rows
        for queue, rows in ((self._first, full // 2), (self._rest, full), (self._first, full)):
            first = queue is self._first
            while queue and batch.rows < rows:
                entry = queue.popleft()
                batch.entries.append(entry)
                batch.rows += entry.rows
                if first:
                    self.queued_rows -= entry.rows
        self.observer.queue_depth(self._pending, self._pending_bytes)

    async def _commit_with_retry(self, batch: _Batch) -> None:
        """Write the batch; retry what an outage or conflict interrupted, bisect what PostgreSQL refused.

        `groups` is a stack of entry lists not written yet. A group is confirmed right after its own
        COMMIT and never pushed again, so an outage in the middle of a bisection retries only the
        groups still on the stack: every item is confirmed exactly once. (An outage that hides a
        COMMIT that did happen makes the writer write that group again: its data rows are keyed and
        unchanged, its raw frames are archived a second time; it is still confirmed once.)
        """
        groups = [batch.entries]
        delay = self.retry_initial_s
        while groups:
            group = groups.pop()
            try:
                await self._commit(group)
            except DATABASE_ERRORS as err:
                if is_retryable(err):
                    groups.append(group)
                    if is_outage(err):  # a deadlock between replicas is no outage
                        self._mark_down(err)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.retry_max_s)
                    continue
                self._mark_up()  # PostgreSQL answered
                groups.extend(self._isolate(group, err))
                continue
            self._mark_up()
            delay = self.retry_initial_s

    def _isolate(self, group: list[_Pending], err: BaseException) -> list[list[_Pending]]:
        """The groups to write after PostgreSQL refused `group` (pushed on the stack in this order)."""
        if len(group) > 1:  # one bad value fails the whole batch: split to find it
            half = len(group) // 2
            return [group[half:], group[:half]]
        entry = group[0]
        if entry.refusal is None:  # refused alone: archive its raw frames on their own
            entry.refusal = err
            entry.anonymous = entry.item.data is None  # its frame rows alone were refused
        elif not entry.anonymous:  # even its frame rows were refused (a 3,000-character MN)
            entry.anonymous = True
        else:
            self._refuse(entry, archived=False)
            return []
        if not entry.item.frame_rows:
            self._refuse(entry, archived=False)
            return []
        return [group]

    async def _commit(self, entries: list[_Pending]) -> None:
        """Save entries in one transaction and confirm them; a refused item's evidence alone."""
        if len(entries) == 1 and entries[0].refusal is not None:
            await self.db.save_batch((), _evidence(entries[0]))
            self._refuse(entries[0], archived=True)
            return
        started = time.monotonic()
        blocks = [e.item.data for e in entries if e.item.data is not None]
        frames = [r for e in entries for r in e.item.frame_rows]
        splits = [r for e in entries for r in e.item.split_parts]
        alarms = [r for e in entries for r in e.item.alarms]
        await self.db.save_batch((), frames, data_blocks=blocks, split_parts=splits, alarms=alarms)
        values = sum(b.rows for b in blocks)
        self.observer.batch_committed(
            items=len(entries), rows=values + len(frames), values=values, latency_s=time.monotonic() - started
        )
        for entry in entries:
            self._finish(entry, None)
        self._update_room()
        self.observer.queue_depth(self._pending, self._pending_bytes)
        if self.on_committed is not None and blocks:
            try:
                self.on_committed(blocks)
            except Exception:  # a bug in monitoring: the batch is committed and confirmed regardless
                self.log.exception("on_committed_failed")

    def _finish(self, entry: _Pending, error: BaseException | None) -> None:
        """Confirm one item: exactly once, whatever path reaches it."""
        if entry.done:
            return
        entry.done = True
        self._pending -= 1
        self._pending_bytes -= entry.nbytes
        share = entry.share
        if share is not None:
            share.items -= 1
            share.nbytes -= entry.nbytes
        if entry.on_done is None:
            return
        try:
            entry.on_done(error)
        except Exception:
            # A failing callback is a bug in the caller; the rows are committed regardless.
            self.log.exception("on_done_failed")

    def _refuse(self, entry: _Pending, *, archived: bool) -> None:
        err = entry.refusal
        assert err is not None
        sqlstate = sqlstate_of(err)
        mn = next((r.mn for r in entry.item.frame_rows if r.mn), None)
        self.observer.item_refused(sqlstate_class=sqlstate if sqlstate == "client" else sqlstate[:2], archived=archived)
        self.log.warning(
            "item_rejected_by_database",
            mn=mn[:64] if mn else None,  # an MN can be as long as a frame: not in full in a log line
            sqlstate=sqlstate,
            error=type(err).__name__,
            detail=str(err)[:200],
            archived=archived,
        )
        self._finish(entry, ItemRejected(str(err)[:200], sqlstate=sqlstate, archived=archived))
        self._update_room()

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
