"""Targeted re-snapshots of one capture: signal rows in, chunks between watermarks out.

The glue between the capture worker (:mod:`cdc.streaming`) and the pure bookkeeping of
:mod:`cdc.incremental`, with the I/O that bookkeeping leaves out: finding the signal
table, reading a chunk on its own connection between a low and a high watermark, and
knowing which re-snapshot state belongs to which LSN. The worker owns the stream and the
producer; it hands this class what the stream meets and publishes the rows of each
chunk it gets back.

Per capture session, from the worker's thread only:

1. :meth:`ResnapshotDriver.prepare` on the session's connection; then
   :meth:`~ResnapshotDriver.start_fresh` on a new slot or
   :meth:`~ResnapshotDriver.resume` on an existing one.
2. While streaming: :meth:`~ResnapshotDriver.on_signal` for a committed signal row,
   :meth:`~ResnapshotDriver.window_change` for a change met while a chunk's window may
   be open, :meth:`~ResnapshotDriver.watermark` for a watermark message (a closed chunk
   comes back; the worker publishes its rows in the high watermark's transaction, then
   calls :meth:`~ResnapshotDriver.chunk_published`), and between bursts
   :meth:`~ResnapshotDriver.next_chunk`.
3. :meth:`~ResnapshotDriver.record` at the commit of a transaction that changed the
   state (a signal queued, a chunk published); :meth:`~ResnapshotDriver.confirmable`
   keeps the LSN confirmed to PostgreSQL below any such state the offsets topic does
   not hold yet (:attr:`~ResnapshotDriver.progress`).
4. :meth:`~ResnapshotDriver.close_reader` when the session ends.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping

import psycopg

from cdc import catalog, snapshot
from cdc.catalog import CapturedTable
from cdc.decoding import Delete, Insert, LogicalMessage, Relation, Update, tuple_to_dict
from cdc.envelope import TableShape
from cdc.incremental import (
    WATERMARK_PREFIX,
    ChunkPlan,
    ClosedChunk,
    IncrementalSnapshots,
    ProgressLog,
    Watermark,
)
from cdc.lsn import Lsn
from cdc.metrics import CaptureMetrics
from cdc.offsets import CaptureOffset
from cdc.replication import ReplicationStream
from cdc.settings import CaptureSettings
from cdc.signals import SignalError, parse_signal, split_table
from cdc.snapshot import SnapshotRow
from schemas.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ResnapshotDriver"]


class ResnapshotDriver:
    """Runs one capture's incremental snapshots; see the module docstring.

    ``captured`` looks up a captured table by name (None: not captured here); the
    worker's answer may change as DDL re-registers tables. Not thread-safe: every call
    comes from the worker's thread.
    """

    def __init__(
        self,
        settings: CaptureSettings,
        metrics: CaptureMetrics,
        captured: Callable[[str], CapturedTable | None],
    ) -> None:
        self._s = settings
        self._m = metrics
        self._system = settings.system
        self._captured = captured
        self._signal_table = split_table(settings.signal_table) if settings.signal_table else None
        self._signal_oid: int | None = None
        self.snapshots: IncrementalSnapshots[SnapshotRow] = IncrementalSnapshots(
            settings.incremental_chunk_rows, self._key_columns
        )
        self.progress = ProgressLog()
        """Which re-snapshot state belongs to which LSN; stored with each saved offset."""
        self._progress_known = False
        self._reader: psycopg.Connection[tuple[object, ...]] | None = None
        self._commit_times = False

    def _key_columns(self, table: str) -> list[str]:
        captured = self._captured(table)
        if captured is None:
            raise KeyError(table)
        return [c.name for c in captured.shape.key_columns]

    # -- session set-up ---------------------------------------------------------------

    def prepare(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """Find the signal table and make sure it is published; without, no signals.

        Also notes whether commit timestamps can be read for the chunks' rows.
        """
        self._signal_oid = None
        if self._signal_table is not None:
            schema, name = self._signal_table
            if not catalog.table_exists(conn, schema, name):
                log.warning(
                    "%s: no signal table %s.%s: re-snapshot signals are off (see "
                    "deploy/sql/signal.sql)",
                    self._system,
                    schema,
                    name,
                )
            else:
                try:
                    catalog.ensure_publication(conn, self._s.publication, schema, (name,))
                except ConfigError as exc:
                    log.warning("%s: re-snapshot signals are off: %s", self._system, exc)
        self._commit_times = snapshot.commit_times_available(conn)

    def start_fresh(self, consistent_point: Lsn) -> None:
        """A new slot: nothing to re-read (a fresh snapshot reads everything)."""
        self.snapshots.restore(None)
        self.progress = ProgressLog(None, int(consistent_point))
        self._progress_known = True

    def resume(self, offset: CaptureOffset | None, confirmed: Lsn) -> None:
        """Continue re-snapshots where the slot resumes (chunks after it are read again)."""
        if self._progress_known:  # a new session of this process: its own record
            state = self.progress.at(int(confirmed))
            self.progress = ProgressLog(state, int(confirmed))
        else:
            state = None if offset is None else offset.incremental
            lsn = int(confirmed) if offset is None else min(offset.lsn, int(confirmed))
            self.progress = ProgressLog(state, lsn)
            self._progress_known = True
        self.snapshots.restore(state)
        for request in self.snapshots.pending:
            log.info(
                "%s: resuming re-snapshot %s of %s",
                self._system,
                request.signal_id,
                request.collection,
            )

    # -- what the stream meets --------------------------------------------------------

    def is_signal_relation(self, relation: Relation) -> bool:
        """Whether ``relation`` is the signal table (its oid is then remembered)."""
        if self._signal_table == (relation.namespace, relation.name):
            self._signal_oid = relation.oid
            return True
        return False

    def is_signal(self, relation_oid: int) -> bool:
        """Whether a row change is the signal table's."""
        return relation_oid == self._signal_oid

    def on_signal(self, row: Mapping[str, object]) -> bool:
        """Queue the re-snapshots a committed signal row asks for.

        Returns whether the state changed (the transaction must then be recorded, see
        :meth:`record`). An invalid signal, or one for a table not captured here, is
        logged, counted and ignored.
        """
        signal_id = str(row.get("id"))
        signals = self._m.signals
        changed = False
        try:
            requests = parse_signal(signal_id, str(row.get("type")), _text(row.get("data")))
        except SignalError as exc:
            log.error("%s: %s", self._system, exc)
            signals.labels(self._system, "invalid").inc()
            return False
        for request in requests:
            if request.schema != self._s.source_schema or self._captured(request.table) is None:
                log.info(
                    "%s: signal %s: %s is not captured here; ignored",
                    self._system,
                    signal_id,
                    request.collection,
                )
                signals.labels(self._system, "ignored").inc()
            elif self.snapshots.enqueue(request):
                changed = True
                signals.labels(self._system, "queued").inc()
                log.info(
                    "%s: signal %s: re-snapshot of %s queued (%s%s)",
                    self._system,
                    signal_id,
                    request.collection,
                    "every row" if request.keys is None else f"{len(request.keys)} keys",
                    "" if request.where is None else f" where {request.where}",
                )
        return changed

    def window_change(
        self, shape: TableShape, relation: Relation, message: Insert | Update | Delete
    ) -> None:
        """A change of a captured table: its keys leave an open window's chunk buffer.

        The streamed change is at least as new as what the chunk read. Call it for every
        change while :attr:`IncrementalSnapshots.window_pending`, echo transactions too.
        """
        keys = [c.name for c in shape.key_columns]
        images = (
            [message.new]
            if isinstance(message, Insert)
            else [message.old or message.old_key]
            if isinstance(message, Delete)
            else [message.new, message.old or message.old_key]
        )
        for image in images:
            if image is not None:
                row = tuple_to_dict(relation, image)
                key = tuple(row.get(k) for k in keys)
                self.snapshots.changed(shape.schema, shape.table, key)

    def watermark(
        self, message: LogicalMessage, commit_lsn: int
    ) -> ClosedChunk[SnapshotRow] | None:
        """A watermark of this capture's: the chunk it closes, if any, to publish.

        ``commit_lsn`` is the final LSN of the watermark's transaction; a watermark of
        another capture (another slot) is ignored.
        """
        mark = Watermark.decode(message.content)
        if mark is None or mark.slot != self._s.slot:
            return None  # another capture's chunk
        return self.snapshots.watermark(mark, commit_lsn)

    def chunk_published(self, closed: ClosedChunk[SnapshotRow], now_ms: int) -> None:
        """The worker has handed a closed chunk's rows to the producer.

        A finished request is counted and logged; otherwise deferred rows are retried
        after ``now_ms``.
        """
        request = closed.request
        if closed.finished:
            self._m.signals.labels(self._system, "done").inc()
            log.info(
                "%s: re-snapshot %s of %s done", self._system, request.signal_id, request.collection
            )
        else:
            self.snapshots.retry_after(now_ms)

    # -- reading chunks ---------------------------------------------------------------

    def next_chunk(
        self, conn: psycopg.Connection[tuple[object, ...]], stream: ReplicationStream
    ) -> None:
        """Read the next chunk, between its low and high watermark, if one is due.

        The watermarks are written on ``conn`` (the session's connection), the chunk is
        read on a connection of its own. A request that cannot be read (its table no
        longer captured, its filter failing or too slow) is dropped, the capture goes
        on; a lost connection raises ``psycopg.OperationalError``.
        """
        plan = self.snapshots.plan(int(time.time() * 1000))
        if plan is None:
            return
        captured = self._captured(plan.request.table)
        if captured is None:
            self._give_up(plan, stream, f"{plan.request.collection} is no longer captured")
            return
        chunk_id = uuid.uuid4().hex
        self.snapshots.begin_chunk(chunk_id, plan)
        try:
            low = Watermark(self._s.slot, chunk_id, "open")
            catalog.emit_watermark(conn, WATERMARK_PREFIX, low.encode())
            rows, until = snapshot.read_chunk(
                self._chunk_reader(),
                captured,
                plan,
                commit_times=self._commit_times,
                statement_timeout_ms=self._s.incremental_statement_timeout_ms,
            )
            self.snapshots.chunk_read(plan, rows, until=until)
            high = Watermark(self._s.slot, chunk_id, "close")
            catalog.emit_watermark(conn, WATERMARK_PREFIX, high.encode())
        except psycopg.errors.QueryCanceled as exc:  # statement timeout: the filter is too slow
            self.snapshots.chunk_failed()
            self._give_up(plan, stream, f"{type(exc).__name__}: {exc}")
        except psycopg.OperationalError:
            self.snapshots.chunk_failed()
            raise
        except psycopg.Error as exc:
            # The filter (operator's SQL) or the table cannot be read: this request fails,
            # the capture goes on.
            self.snapshots.chunk_failed()
            self._give_up(plan, stream, f"{type(exc).__name__}: {exc}")

    def _give_up(self, plan: ChunkPlan, stream: ReplicationStream, reason: str) -> None:
        request = self.snapshots.drop_running()
        self.progress.record(int(stream.received), self.snapshots.state())
        self._m.signals.labels(self._system, "failed").inc()
        log.error(
            "%s: re-snapshot %s of %s failed and is dropped: %s",
            self._system,
            request.signal_id if request else plan.request.signal_id,
            plan.request.collection,
            reason,
        )

    def _chunk_reader(self) -> psycopg.Connection[tuple[object, ...]]:
        """The connection chunks are read on: REPEATABLE READ, READ ONLY, not autocommit."""
        if self._reader is None or self._reader.closed:
            reader = psycopg.connect(
                self._s.dsn.get_secret_value(), application_name="erpcrm-incremental"
            )
            reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            reader.read_only = True
            self._reader = reader
        return self._reader

    def close_reader(self) -> None:
        """Close the chunks' connection (the session is over); the next chunk opens one."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- progress ---------------------------------------------------------------------

    def record(self, end_lsn: int) -> None:
        """The state as of a committed transaction that changed it, ending at ``end_lsn``."""
        self.progress.record(end_lsn, self.snapshots.state())

    def confirmable(self, acked: Lsn) -> Lsn:
        """The highest LSN up to ``acked`` whose re-snapshot state the offsets topic holds."""
        return Lsn(self.progress.confirmable(int(acked)))


def _text(value: object) -> str | None:
    """A text column's value (the signal's ``data``) as ``str``."""
    return None if value is None else str(value)
