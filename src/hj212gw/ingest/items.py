"""What a source hands the batch writer and what it gets back: `IngestItem` (one packet's rows),
the on-done contract (`OnDone`, `ItemRejected`, `WriterClosed`, `evidence_kept`), a source's
`QueueShare` of the write queue, and the `WriterObserver` hooks for metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from hj212gw.storage.alarms import AlarmRow
from hj212gw.storage.rows import DataBlock, FrameRow
from hj212gw.storage.split_parts import SplitPartRow

REFUSED_VERDICT = "refused_by_database"
"""raw_frames.verdict of a packet whose data PostgreSQL refused, as `refused_by_database:<SQLSTATE>`."""


ALARM_ROW_BYTES = 64
"""What an alarm row is counted as in the write queue besides the text of its fields (its key)."""


class WriterClosed(Exception):
    """`submit` after `close()` began."""


class ItemRejected(Exception):
    """PostgreSQL refused this item's rows even alone (a value out of range, an index row too large
    for a 3,000-character factor code, ...). Not retried: the same rows can never succeed.

    `archived`: its raw frame rows were stored on their own (verdict `refused_by_database:<SQLSTATE>`
    for an accepted frame; a rejected frame keeps its reject reason), so the evidence is kept.
    """

    def __init__(self, detail: str, *, sqlstate: str, archived: bool) -> None:
        super().__init__(detail)
        self.sqlstate = sqlstate
        self.archived = archived


class IngestItem(NamedTuple):
    """What ONE packet stores before its ack: its data rows (or, for an alarm upload, its
    `alarm_events` rows), its raw frame(s) and, for a split part, its `split_parts` row. (Its
    device sighting is not part of it: the gateway writes sightings apart, about once a second.)

    NamedTuples here and in storage.rows, not frozen dataclasses: one of each is built per packet,
    and a frozen dataclass's __init__ sets every field through object.__setattr__."""

    frame_rows: Sequence[FrameRow] = ()
    data: DataBlock | None = None  # the packet's data rows, encoded when it arrived
    split_parts: Sequence[SplitPartRow] = ()  # a split part, kept until its transfer is assembled
    alarms: Sequence[AlarmRow] = ()  # an alarm upload's events, at their AlarmTime

    @property
    def row_count(self) -> int:
        return (self.data.rows if self.data is not None else 0) + len(self.frame_rows) + len(self.alarms)


class WriterObserver(Protocol):
    """Metrics hooks; metrics.py provides the Prometheus implementation."""

    def batch_committed(self, *, items: int, rows: int, values: int, latency_s: float) -> None: ...
    def queue_depth(self, items: int, nbytes: int) -> None: ...
    def database_up(self, up: bool) -> None: ...
    def item_refused(self, *, sqlstate_class: str, archived: bool) -> None: ...


class NullObserver:
    """Default observer: records nothing."""

    def batch_committed(self, *, items: int, rows: int, values: int, latency_s: float) -> None:
        pass

    def queue_depth(self, items: int, nbytes: int) -> None:
        pass

    def database_up(self, up: bool) -> None:
        pass

    def item_refused(self, *, sqlstate_class: str, archived: bool) -> None:
        pass


OnDone = Callable[[BaseException | None], object]
"""Called exactly once per item, whatever mix of outages and refused rows its batch met:
- with None after the COMMIT of its rows;
- with ItemRejected if PostgreSQL refused the item's rows even alone (`archived` tells whether
  its raw frames were stored on their own as evidence);
- with WriterClosed if the writer stopped before committing it;
- with the exception itself if its writer task crashed (a bug, logged at ERROR by the supervisor).
Only None and an archived ItemRejected mean that something of the item is stored."""


def evidence_kept(error: BaseException | None) -> bool:
    """`on_done`'s argument says the item's rows, or at least its raw frames, are stored."""
    return error is None or (isinstance(error, ItemRejected) and error.archived)


def encoded_bytes(item: IngestItem) -> int:
    """What an item holds in the write queue: its encoded data rows, raw frames, split segments and
    alarm fields (as sent: a hostile alarm upload is as large as its segment). Runs per packet."""
    nbytes = len(item.data.copy) if item.data is not None else 0
    if not item.split_parts and not item.alarms and len(item.frame_rows) == 1:
        return nbytes + len(item.frame_rows[0].raw)  # a stored packet: its rows and its raw frame
    for row in item.frame_rows:
        nbytes += len(row.raw)
    for part in item.split_parts:
        nbytes += len(part.segment)
    for alarm in item.alarms:
        nbytes += ALARM_ROW_BYTES + sum(len(name) + len(text) for name, text in alarm.fields.items())
    return nbytes


class QueueShare:
    """One source's (a DAS connection's) part of the write queue: its items submitted and not yet
    confirmed, and their bytes. The writer counts; the source decides what `full` means for it
    (the server stops reading a connection whose share is full until it has room again)."""

    __slots__ = ("backlog_items", "items", "max_bytes", "max_items", "nbytes")

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.items = 0
        self.nbytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes
        # With this many items queued, the source's next ones are a backlog (see BatchWriter._take):
        # a quarter of the share, under the half where a full share reads again, so a source that
        # keeps its share full never leaves the backlog, while one whose acks come late does not
        # enter it (a simulated DAS sending 5 packets/s has 8 in flight after 1.6 s without acks).
        self.backlog_items = max(1, max_items // 4)

    @property
    def full(self) -> bool:
        """`max_items` or `max_bytes` reached."""
        return self.items >= self.max_items or self.nbytes >= self.max_bytes

    @property
    def has_room(self) -> bool:
        """At most half of each bound in use: a full share reads again only from here, so a
        flooding source is paused and resumed once per half a share, not once per item."""
        return self.items <= self.max_items // 2 and self.nbytes <= self.max_bytes // 2
