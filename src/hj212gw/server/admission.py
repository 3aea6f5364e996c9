"""`ReadAdmission`: what sockets send is parsed only as fast as the batch writers take it.

At the top of every hour a whole fleet sends at the same second. One event-loop turn reads every
socket that is ready, so without admission the gateway would parse ten thousand packets (a second
and more of CPU) before any writer could send its next batch to PostgreSQL or any ack could go
out: PostgreSQL idles, no DAS hears back, and the acks of the first packets wait for the parsing
of the last.

While the writers have `ahead_rows` rows queued that no batch has taken yet (one full batch per
writer by default), a read is kept as bytes, in the order the reads came (`flow.SocketFlow._defer`:
its socket is paused only once it keeps more than 16 KiB, so a connection keeps at most that plus
one read). `run` parses the backlog, oldest first, whenever the writers have taken rows:
PostgreSQL commits while the gateway parses, acks flow through the burst, and a DAS's next packet
(sent when its ack arrives) queues behind the packets that came before it. Reads of connections
with nothing waiting for a commit (a DAS sends its next packet when its ack came) go before reads
of connections that still have packets queued (a flood), as in the writer's two queues. In steady traffic the
writers keep the queue below the mark and nothing is deferred. While the writers cannot take
anything (PostgreSQL down), `run` looks again at most every `max_poll_s`.
"""

import asyncio
import sys
from collections import deque
from typing import Protocol

__all__ = ["Deferred", "ReadAdmission"]

# Connections parsed in one turn of `run` before it yields to the event loop (the writers' batches
# and the acks of what committed), whatever the writers' queue says.
_PER_TURN = 256


class WriterQueue(Protocol):
    queued_rows: int  # rows submitted that no batch has taken yet


class Deferred(Protocol):
    def parse_deferred(self) -> None:
        """Parse the read kept while admission was behind (a no-op if there is none any more)."""
        ...


class ReadAdmission:
    """The backlog of reads waiting to be parsed, and the task that parses it as the writers take rows."""

    __slots__ = ("_backlog", "_busy", "_mark", "_wakeup", "_writer", "deferred", "max_poll_s", "poll_s")

    def __init__(
        self, writer: WriterQueue, *, ahead_rows: int, poll_s: float = 0.001, max_poll_s: float = 0.05
    ) -> None:
        """`writer.queued_rows`: rows the writers hold that no batch has taken yet; `ahead_rows` 0:
        never defer. `poll_s`: the first wait for the writers to take rows, doubled up to
        `max_poll_s` while they take none."""
        self._writer = writer
        self._mark = ahead_rows or sys.maxsize  # `behind` runs for every read: one comparison
        self.poll_s = poll_s
        self.max_poll_s = max_poll_s
        self._backlog: deque[Deferred] = deque()  # connections with nothing waiting for a commit
        self._busy: deque[Deferred] = deque()  # connections with packets queued: after the others
        self._wakeup = asyncio.Event()
        self.deferred = 0  # reads deferred so far (a counter for the metrics)

    @property
    def behind(self) -> bool:
        """True when a new read must wait: reads are already waiting (they come first), or the
        writers have enough rows queued."""
        return bool(self._backlog or self._busy) or self._writer.queued_rows >= self._mark

    @property
    def backlog(self) -> int:
        """Connections whose read waits to be parsed."""
        return len(self._backlog) + len(self._busy)

    def defer(self, conn: Deferred, *, busy: bool = False) -> None:
        """`conn` kept a read: parse it after those before it (`busy`: it has packets waiting for
        a commit; after every connection that has none)."""
        (self._busy if busy else self._backlog).append(conn)
        self.deferred += 1
        self._wakeup.set()

    def parse_some(self) -> int:
        """Parse waiting reads, oldest first, while the writers' queue is below the mark (at most
        `_PER_TURN`); how many were parsed."""
        parsed = 0
        writer, mark = self._writer, self._mark
        for backlog in (self._backlog, self._busy):
            while backlog and parsed < _PER_TURN and writer.queued_rows < mark:
                backlog.popleft().parse_deferred()
                parsed += 1
        return parsed

    async def run(self) -> None:
        """Parse the backlog as the writers take rows (supervised by the gateway)."""
        wait_s = self.poll_s
        while True:
            if not self._backlog and not self._busy:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.parse_some():
                wait_s = self.poll_s
                await asyncio.sleep(0)  # let the writers and the acks run between slices
            else:  # the writers' queue is full: wait for a batch (longer while none is taken)
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, self.max_poll_s)
