"""`Intake`: the one call a DAS connection makes into ingest per packet (or per rejected frame).

It builds the packet's rows (rows.py: data rows, raw frame; splits.py: a split part's row),
records its device sighting in the side writes, and submits one `IngestItem` to the
`BatchWriter`, whose on-done contract calls back the connection once the rows are committed (or
never will be). A split part's commit is also reported to the `SplitSweeper`, which assembles its
transfer. Nothing here knows sockets, the registry or the policy for bad input.
"""

from collections.abc import Callable
from datetime import UTC, datetime

from hj212gw.ingest.alarms import alarm_rows
from hj212gw.ingest.items import IngestItem, OnDone, QueueShare
from hj212gw.ingest.rows import TimePolicy, data_block, device_seen, frame_row, packet_frame_row
from hj212gw.ingest.side_writes import SideWrites
from hj212gw.ingest.splits import SplitSweeper, split_part_row
from hj212gw.ingest.writer import BatchWriter
from hj212gw.protocol.cp import DataCp
from hj212gw.protocol.framing import Frame
from hj212gw.protocol.models import Packet
from hj212gw.storage.split_parts import SplitKey


class Intake:
    """Packets in, rows queued for the writer; one per gateway process."""

    __slots__ = ("on_time_suspect", "side_writes", "splits", "time_policy", "writer")

    def __init__(
        self,
        writer: BatchWriter,
        splits: SplitSweeper,
        side_writes: SideWrites,
        time_policy: TimePolicy,
        on_time_suspect: Callable[[], object],
    ) -> None:
        self.writer = writer
        self.splits = splits
        self.side_writes = side_writes
        self.time_policy = time_policy
        self.on_time_suspect = on_time_suspect  # a DataTime far from the receive time (a metric)

    @property
    def full(self) -> bool:
        """The write queue is full: the server stops reading sockets until it has room."""
        return self.writer.full

    def submit_packet(
        self,
        packet: Packet,
        frame: Frame,
        *,
        store: bool,
        fragment: bool,
        backfill: bool,
        sighting: str | None,
        connection_id: int | None,
        peer: str,
        share: QueueShare,
        on_done: OnDone,
    ) -> str | None:
        """Queue a good packet: its data rows if `store` (alarm events for an alarm upload; a
        fragment's wait for its transfer), its raw frame, and a split part's row; `on_done` as the
        writer's contract. `sighting`: the device status to record a sighting with, or None for
        none. Returns the MN sighted (None if no sighting was recorded). Raises WriterClosed once
        the writer is shutting down."""
        now = datetime.now(UTC)
        data = None
        data_cp = packet.data
        alarm = isinstance(data_cp, DataCp) and data_cp.data_time is None  # an alarm upload has no DataTime
        alarms = alarm_rows(packet, now, self.time_policy.device_tz) if store and not fragment and alarm else ()
        if store and not fragment and not alarms:
            data = data_block(packet, now, self.time_policy, resend=backfill)
            if data is not None and data.time_suspect:
                self.on_time_suspect()
        seen_mn = None
        if sighting is not None and (seen := device_seen(packet, peer, now, status=sighting)) is not None:
            self.side_writes.record_sighting(seen)
            seen_mn = seen.mn
        item = IngestItem((packet_frame_row(frame, packet, now, connection_id, peer),), data, (), alarms)
        if store and (fragment or (packet.split and data is not None)):
            part = split_part_row(
                packet, fragment=fragment, backfill=backfill, received_at=now, connection_id=connection_id
            )
            if part is not None:  # a split part commits with its row; the sweep assembles its transfer
                item = item._replace(split_parts=(part,))
                on_done = self._reporting_split_part(part.key, on_done)
        self.writer.submit(item, on_done, share)
        return seen_mn

    def submit_reject(
        self,
        frame: Frame | None,
        raw: bytes,
        *,
        verdict: str,
        packet: Packet | None,
        consumed: int = 0,
        connection_id: int | None,
        peer: str,
        share: QueueShare,
        on_done: OnDone,
    ) -> None:
        """Archive a rejected frame (`verdict`: the reason). Without a frame, `raw` holds the bytes
        the framing defect consumed (a header's `##`, junk, a frame without CRC), at most
        FrameLimits.window of the `consumed` ones: a shorter `raw` is marked `raw_truncated` in
        the row's tolerances. Raises WriterClosed like `submit_packet`."""
        row = frame_row(
            frame,
            datetime.now(UTC),
            verdict=verdict,
            connection_id=connection_id,
            peer=peer,
            packet=packet,
            raw=None if frame is not None else raw,
            truncated=frame is None and consumed > len(raw),
        )
        self.writer.submit(IngestItem(frame_rows=(row,)), on_done, share)

    def _reporting_split_part(self, key: SplitKey, on_done: OnDone) -> OnDone:
        splits = self.splits

        def done(error: BaseException | None) -> None:
            if error is None:
                splits.stored(key)
            on_done(error)

        return done
