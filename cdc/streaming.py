"""The capture worker: one source database, one slot, every committed change into Kafka.

Session outline (:meth:`CaptureWorker.run` repeats it after retriable failures, with
backoff, resuming from the slot's confirmed position):

1. Describe the captured tables (refusing tables without a key) and make sure the
   publication covers them.
2. If the slot is missing: refuse when the offsets topic says we had streamed before
   (changes may be missing; re-snapshot on purpose). Otherwise create the slot, record
   "snapshot started", read the initial snapshot inside the exported snapshot, wait for
   Kafka to acknowledge every snapshot row, record "snapshot completed".
3. ``START_REPLICATION`` from the slot's confirmed position and stream: decode, drop
   echo transactions (sink's replication origin), build Debezium envelopes, produce.
   Rows of the signal table (:mod:`cdc.signals`) queue incremental snapshots, which
   re-read tables in chunks between the stream's bursts (:mod:`cdc.resnapshot` drives
   the bookkeeping of :mod:`cdc.incremental`):
   low watermark, chunk, high watermark; the rows are published as ``op = "r"`` with
   ``source.snapshot = "incremental"`` when the stream reaches the high watermark,
   counted in that watermark's transaction, so they are acknowledged like its changes.

Safety order for acknowledging WAL (what makes a SIGKILL at any moment lossless):

1. Every record of a transaction is handed to the idempotent producer (``acks=all``)
   with a delivery callback that counts it down in the :class:`~cdc.offsets.AckTracker`.
2. Only when Kafka has acknowledged every record of a transaction and of all older
   ones does the tracker's confirmable LSN move to that transaction's end.
3. Only that confirmable LSN is reported to PostgreSQL as flushed; the slot keeps all
   WAL after it. After a crash the unconfirmed transactions are replayed (at-least-once;
   downstream dedupes by LSN) and nothing is lost.
4. The offsets topic records the acknowledged LSN, with the incremental snapshots' state
   as of that LSN. While a state change (a signal, a closed chunk) is not stored there
   yet, the LSN reported to PostgreSQL stays below it: after a crash the slot replays
   it, so a restarted capture resumes a re-snapshot after its last confirmed chunk and
   never loses a signal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from cdc import catalog, snapshot
from cdc.catalog import CapturedTable
from cdc.decoding import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputDecoder,
    Relation,
    Truncate,
    TupleData,
    Type,
    Update,
    tuple_to_dict,
)
from cdc.envelope import (
    SourceInfo,
    TableShape,
    TransactionBlock,
    data_collection,
    envelope_record,
    key_record,
    key_schema,
    source_sequence,
    transaction_id,
    transaction_key_schema,
    transaction_value_schema,
    value_schema,
)
from cdc.envelope_writer import EnvelopeWriter, SourceTemplate, TransactionWriter, Uncompiled
from cdc.incremental import WATERMARK_PREFIX, ClosedChunk
from cdc.lsn import Lsn
from cdc.metrics import CaptureMetrics
from cdc.offsets import AckTracker, CaptureOffset, OffsetStore, TrackedTx
from cdc.replication import ReplicationStream, XLogData
from cdc.resnapshot import ResnapshotDriver
from cdc.settings import CaptureSettings
from cdc.snapshot import SnapshotRow
from schemas.errors import PermanentError, RetriableError
from schemas.serde import AvroSerde, RegistryClient, WriterSchema
from schemas.topic_admin import create_topics
from schemas.topics import raw_topic, transaction_topic

log = logging.getLogger(__name__)

TRANSACTION_PARTITION: Final = 0
"""Where every ``BEGIN``/``END`` record goes: one partition keeps them in commit order,
however many partitions the transaction topic has: the streams stage reads the
``END`` records in commit order."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)

HEARTBEAT_PREFIX = "erpcrm.heartbeat"
CONNECTOR_VERSION = "erpcrm-0.1.0"
MAX_BACKOFF_SECONDS = 30.0
STOP_FLUSH_SECONDS = 30.0
MAX_BURST = 2000


class _StopRequestedError(RetriableError):
    """Stop was requested while waiting for Kafka; the session ends unconfirmed."""


class SlotLostError(PermanentError):
    """The slot is gone although the capture had already streamed from it."""


@dataclass(slots=True)
class _Table:
    """A captured table with its prepared schemas and Kafka topic."""

    captured: CapturedTable
    topic: str
    key_writer: WriterSchema
    value_writer: WriterSchema
    value_schema: dict[str, Any]
    writer: EnvelopeWriter
    collection: str
    """Debezium's data-collection name, ``<schema>.<table>``."""

    @property
    def shape(self) -> TableShape:
        return self.captured.shape


@dataclass(slots=True)
class _OpenTx:
    """The transaction being decoded."""

    xid: int
    final_lsn: Lsn
    commit_ts: datetime
    delivery: _Delivery
    dropped: bool = False
    progress: bool = False
    """The transaction changed the incremental snapshots' state (a signal, a chunk)."""
    heartbeat: bool = False
    """The transaction carries the capture's heartbeat message (see :meth:`_commit`)."""
    total: int = 0
    per_collection: Counter[str] = field(default_factory=Counter)
    # Per-table ``source`` datum of this transaction: only lsn and sequence vary by event.
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    templates: dict[str, SourceTemplate] = field(default_factory=dict)

    @property
    def token(self) -> TrackedTx:
        """The transaction's token in the ack tracker."""
        return self.delivery.token

    @property
    def tid(self) -> str:
        """Debezium's transaction id: ``<txId>:<commit lsn>``."""
        return transaction_id(self.xid, int(self.final_lsn))

    @property
    def commit_ms(self) -> int:
        """Commit time, whole ms since the epoch (``source.ts_ms``), rounded down exactly.

        The sinks compare it with ``pg_xact_commit_timestamp`` read the same way, so it
        is computed in integers (a float product can land a millisecond low).
        """
        return (self.commit_ts - _EPOCH) // _MILLISECOND


class _Delivery:
    """Kafka's delivery reports for the records of one transaction (or one snapshot).

    One callable per transaction, not one closure per record: each report counts a
    record down in the tracker; the transaction's latency (source commit to its last
    acknowledgement) is observed once, when it completes.
    """

    __slots__ = ("commit_ms", "token", "tracker", "worker")

    def __init__(
        self, worker: CaptureWorker, tracker: AckTracker, token: TrackedTx, commit_ms: int | None
    ) -> None:
        self.worker = worker
        self.tracker = tracker
        self.token = token
        self.commit_ms = commit_ms

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.worker._delivery_failed(err)
            return
        if self.tracker.ack(self.token):
            self.completed()

    def completed(self) -> None:
        """Every record is acknowledged: observe the commit-to-Kafka latency."""
        if self.commit_ms is not None:
            self.worker._latency.observe(max(0.0, time.time() - self.commit_ms / 1000))


class CaptureWorker:
    """Streams one database's committed changes into Kafka; see the module docstring.

    Thread-safety: :meth:`run` runs on one thread; :meth:`stop` may be called from any
    thread (or a signal handler) and makes :meth:`run` return after a clean shutdown:
    flush the producer, confirm what Kafka acknowledged, record the offset.
    """

    def __init__(
        self,
        settings: CaptureSettings,
        metrics: CaptureMetrics,
        serde: AvroSerde,
        registry: RegistryClient | None = None,
    ) -> None:
        self._s = settings
        self._registry = registry
        self._m = metrics
        self._serde = serde
        self._stop = threading.Event()
        self._system = settings.system
        self._offsets = OffsetStore(settings.kafka)
        self._producer = Producer(
            settings.kafka.client_config(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": settings.linger_ms,
                    "compression.type": "lz4",
                    # Never give up on a record: a broker outage blocks the capture (and
                    # holds the slot) instead of dropping changes.
                    "message.timeout.ms": 0,
                    "queue.buffering.max.messages": 500_000,
                    "queue.buffering.max.kbytes": 512 * 1024,
                    "batch.size": 1_000_000,
                }
            )
        )
        self._fatal: KafkaException | None = None
        self._tables: dict[str, _Table] = {}
        self._by_oid: dict[int, _Table] = {}
        self._tracker = AckTracker()
        self._tx: _OpenTx | None = None
        self._last_commit_lsn: int | None = None
        self._tx_key_writer: WriterSchema | None = None
        self._tx_value_writer: WriterSchema | None = None
        self._transactions: TransactionWriter | None = None
        self._tx_topic = transaction_topic(settings.server_name)
        self._last_offset_save = 0.0
        self._published_at = 0.0
        """When the last ``END`` was sent (monotonic): heartbeats fill the silences."""
        self._saved_lsn = Lsn.ZERO
        self._type_names: dict[int, str] = {}
        self._decoder = PgOutputDecoder()
        self._dbname: str = settings.system
        self._live_stream: ReplicationStream | None = None
        self._counters: dict[tuple[str, str], Any] = {}
        # Events and bytes sent since the metrics were last updated (once per burst).
        self._unreported: Counter[tuple[str, str]] = Counter()
        self._unreported_bytes = 0
        self._latency = metrics.commit_to_ack_seconds.labels(settings.system)
        self._bytes = metrics.event_bytes.labels(settings.system)
        self._resnapshots = ResnapshotDriver(settings, metrics, self._captured_table)

    # -- lifecycle --------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish cleanly."""
        self._stop.set()

    def run(self) -> None:
        """Capture until :meth:`stop`; retriable failures reconnect with backoff."""
        backoff = 1.0
        while not self._stop.is_set():
            try:
                # Every session: a capture started, or reconnected, while Kafka is away
                # waits here for it like for its database.
                self._offsets.ensure_topic()
                self._session()
                backoff = 1.0
            except RetriableError as exc:
                self._m.reconnects.labels(self._system).inc()
                log.warning("%s: %s; reconnecting in %.0fs", self._system, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        # Whatever Kafka has not acknowledged by now was never confirmed to PostgreSQL:
        # the slot still holds it and the next run sends it again.
        unsent = self._producer.flush(STOP_FLUSH_SECONDS)
        if unsent:
            log.warning("%s: stopped with %d records unacknowledged by Kafka", self._system, unsent)
        self._offsets.flush(STOP_FLUSH_SECONDS)

    def _session(self) -> None:
        dsn = self._s.dsn.get_secret_value()
        try:
            with (
                psycopg.connect(dsn, autocommit=True, application_name="erpcrm-cdc") as conn,
                ReplicationStream(dsn, status_interval=self._s.status_interval_seconds) as stream,
            ):
                start = self._prepare(conn, stream)
                if self._stop.is_set():
                    return
                stream.start(self._s.slot, self._s.publication, start)
                self._live_stream = stream
                try:
                    self._stream(conn, stream, start)
                finally:
                    self._live_stream = None
                    self._resnapshots.close_reader()
        except psycopg.OperationalError as exc:
            raise RetriableError(f"database connection lost: {exc}") from exc

    # -- set-up, slot, snapshot -------------------------------------------------------

    def _prepare(
        self, conn: psycopg.Connection[tuple[object, ...]], stream: ReplicationStream
    ) -> Lsn:
        s = self._s
        self._dbname = stream.identify_system().dbname or self._system
        described = catalog.describe_tables(conn, s.server_name, s.source_schema, s.tables)
        catalog.ensure_publication(conn, s.publication, s.source_schema, s.tables)
        self._resnapshots.prepare(conn)
        self._ensure_topics()
        for name, captured in described.items():
            self._install(captured)
            log.debug("%s: capturing %s", self._system, name)
        state = catalog.slot_state(conn, s.slot)
        offset = self._offsets.load(s.slot)
        redo = offset is not None and not offset.snapshot_completed
        if state.exists and redo and s.snapshot_mode == "initial":
            log.warning("%s: previous snapshot did not complete; taking it again", s.slot)
            stream.drop_slot(s.slot)
            state = catalog.slot_state(conn, s.slot)
        if state.exists:
            if offset is None:
                log.warning(
                    "%s: slot %s exists but no offset was recorded; streaming from the slot",
                    self._system,
                    s.slot,
                )
            log.info("%s: resuming slot %s at %s", self._system, s.slot, state.confirmed_flush)
            self._tracker = AckTracker(state.confirmed_flush)
            self._resnapshots.resume(offset, state.confirmed_flush)
            return state.confirmed_flush
        if offset is not None and offset.snapshot_completed:
            raise SlotLostError(
                f"replication slot {s.slot} is missing although this capture already streamed "
                f"up to {Lsn(offset.lsn)}: changes since then may be missing. To start over on "
                f"purpose, delete the offset (key {s.slot!r} in topic {self._offsets.topic}) so "
                "a fresh snapshot is taken, and reconcile the targets."
            )
        with_snapshot = s.snapshot_mode == "initial"
        info = stream.create_slot(s.slot, export_snapshot=with_snapshot)
        self._resnapshots.start_fresh(info.consistent_point)
        log.info("%s: created slot %s at %s", self._system, s.slot, info.consistent_point)
        self._save_offset(info.consistent_point, snapshot_completed=False, wait=True)
        if with_snapshot and info.snapshot_name:
            self._snapshot(info.snapshot_name, info.consistent_point)
        self._save_offset(info.consistent_point, snapshot_completed=True, wait=True)
        self._tracker = AckTracker(info.consistent_point)
        return info.consistent_point

    def _snapshot(self, snapshot_name: str, at: Lsn) -> None:
        """Read every captured table in the exported snapshot; wait for Kafka's acks."""
        dsn = self._s.dsn.get_secret_value()
        tables = list(self._tables.values())
        remaining = self._m.snapshot_tables_remaining.labels(self._system)
        remaining.set(len(tables))
        started = time.monotonic()
        total = 0
        ts_ms = int(time.time() * 1000)
        tracker = AckTracker(at)
        token = tracker.begin(0)
        delivery = _Delivery(self, tracker, token, None)
        with psycopg.connect(dsn, application_name="erpcrm-snapshot") as conn:
            snapshot.begin_snapshot(conn, snapshot_name)
            commit_times = snapshot.commit_times_available(conn)
            for index, table in enumerate(tables):
                estimate = snapshot.count_rows(conn, table.captured)
                log.info("snapshot %s: reading ~%d rows", table.captured.qualified, estimate)
                rows = self._m.snapshot_rows.labels(self._system, table.shape.table)
                last_table = index == len(tables) - 1
                pending: tuple[dict[str, object], int | None] | None = None
                for read in snapshot.read_table(
                    conn, table.captured, self._s.snapshot_batch_rows, commit_times=commit_times
                ):
                    if pending is not None:
                        row, written_ms = pending
                        self._emit_read(table, row, at, written_ms or ts_ms, delivery, last=False)
                        rows.inc()
                        total += 1
                    pending = read
                    if self._stop.is_set():
                        raise RetriableError("stopped during the snapshot; it restarts next time")
                if pending is not None:
                    row, written_ms = pending
                    self._emit_read(table, row, at, written_ms or ts_ms, delivery, last=last_table)
                    rows.inc()
                    total += 1
                remaining.dec()
                self._report_sent()
            conn.rollback()
        tracker.commit(token, at)
        self._flush_or_fail()
        log.info(
            "snapshot of %s complete: %d rows in %.1fs",
            self._system,
            total,
            time.monotonic() - started,
        )

    def _emit_read(
        self,
        table: _Table,
        row: dict[str, object],
        at: Lsn,
        ts_ms: int,
        delivery: _Delivery,
        *,
        last: bool,
    ) -> None:
        source = self._source(
            table.shape, ts_ms, lsn=int(at), tx_id=None, snapshot="last" if last else "true"
        )
        value = envelope_record(
            table.shape, op="r", before=None, after=row, source=source, ts_ms=ts_ms
        )
        self._produce(table, row, value, delivery)

    # -- schemas and topics -----------------------------------------------------------

    def _ensure_topics(self) -> None:
        admin = AdminClient(self._s.kafka.client_config())
        topics = [
            NewTopic(
                raw_topic(self._s.server_name, self._s.source_schema, t),
                num_partitions=self._s.topic_partitions,
            )
            for t in self._s.tables
        ]
        topics.append(NewTopic(transaction_topic(self._s.server_name), num_partitions=1))
        create_topics(admin, topics)
        self._warn_if_transactions_spread(admin)
        self._transactions = None
        self._tx_key_writer = self._serde.prepare(
            f"{transaction_topic(self._s.server_name)}-key", transaction_key_schema()
        )
        self._tx_value_writer = self._serde.prepare(
            f"{transaction_topic(self._s.server_name)}-value", transaction_value_schema()
        )

    def _warn_if_transactions_spread(self, admin: AdminClient) -> None:
        """Say so when the transaction topic was made with more than one partition.

        A broker that creates topics on first use (``auto.create.topics.enable``) makes
        it with its default partition count when a consumer asks for it before this
        capture creates it. Every ``BEGIN``/``END`` still goes to partition
        :data:`TRANSACTION_PARTITION`, so they stay in commit order; the other
        partitions stay empty.
        """
        name = transaction_topic(self._s.server_name)
        try:
            found = admin.list_topics(name, timeout=30).topics.get(name)
        except KafkaException as exc:
            raise RetriableError(f"cannot describe topic {name}: {exc}") from exc
        if found is not None and found.error is None and len(found.partitions) > 1:
            log.warning(
                "topic %s has %d partitions; transaction records all go to partition %d, "
                "in commit order (create it with one partition to keep the others unused)",
                name,
                len(found.partitions),
                TRANSACTION_PARTITION,
            )

    def _install(self, captured: CapturedTable, oid: int | None = None) -> _Table:
        """Register (or re-register, after DDL) a table's key and value schemas."""
        shape = captured.shape
        topic = raw_topic(self._s.server_name, shape.schema, shape.table)
        previous = self._tables.get(shape.table)
        if previous is not None:
            schema = value_schema(shape, previous=previous.value_schema)
        else:
            # Evolve from what consumers already know, so a column added while the capture
            # was down still yields a BACKWARD-compatible version.
            registered = self._registry.latest(f"{topic}-value") if self._registry else None
            schema = value_schema(shape, previous=registered.schema if registered else None)
        if previous is not None and previous.captured == captured:
            table = previous
        else:
            key_writer = self._serde.prepare(f"{topic}-key", key_schema(shape))
            value_writer = self._serde.prepare(f"{topic}-value", schema)
            table = _Table(
                captured=captured,
                topic=topic,
                key_writer=key_writer,
                value_writer=value_writer,
                value_schema=schema,
                writer=EnvelopeWriter(shape, captured.type_oids, key_writer, value_writer, schema),
                collection=data_collection(shape),
            )
            self._m.schema_versions.labels(self._system, shape.table).inc()
        self._tables[shape.table] = table
        if oid is not None:
            self._by_oid[oid] = table
        return table

    def _on_relation(
        self, conn: psycopg.Connection[tuple[object, ...]], relation: Relation
    ) -> None:
        if self._resnapshots.is_signal_relation(relation):
            return
        if relation.name not in self._tables:
            return
        old = self._tables[relation.name].captured
        nullable = {c.name: c.nullable for c in old.shape.columns}
        missing_types = [c.type_oid for c in relation.columns if c.type_oid not in self._type_names]
        if missing_types:
            for oid, name in conn.execute(
                "select oid::int, typname from pg_type where oid = any(%s)", (missing_types,)
            ).fetchall():
                self._type_names[int(str(oid))] = str(name)
        # Under REPLICA IDENTITY FULL every column is flagged as identity; the message
        # key stays the primary key the catalog found (as Debezium keys such tables).
        keys = {c.name for c in old.shape.columns if c.is_key}
        flagged_all = all(c.is_key for c in relation.columns)
        columns = tuple(
            catalog.column_shape(
                c.name,
                self._type_names.get(c.type_oid, "text"),
                c.type_modifier,
                not nullable.get(c.name, True),
                c.name in keys if flagged_all and keys else c.is_key,
            )
            for c in relation.columns
        )
        shape = TableShape(
            server=self._s.server_name,
            schema=relation.namespace,
            table=relation.name,
            columns=columns,
        )
        captured = CapturedTable(shape, tuple(c.type_oid for c in relation.columns))
        if captured != old:
            log.info(
                "%s: schema of %s changed; registering a new version", self._system, relation.name
            )
        self._install(captured, relation.oid)

    # -- streaming --------------------------------------------------------------------

    def _stream(
        self, conn: psycopg.Connection[tuple[object, ...]], stream: ReplicationStream, start: Lsn
    ) -> None:
        decoder = self._decoder = PgOutputDecoder()
        self._by_oid.clear()
        self._tx = None
        last_activity = time.monotonic()
        last_lag = 0.0
        received = self._m.received_lsn.labels(self._system)
        confirmed = self._m.confirmed_lsn.labels(self._system)
        while not self._stop.is_set():
            frame = stream.read(timeout=0.1)
            # Handle what is already buffered in one burst; housekeeping runs between bursts.
            burst = 0
            while frame is not None:
                if isinstance(frame, XLogData):
                    self._handle(conn, decoder.decode(frame.payload), frame)
                    burst += 1
                elif self._tx is None:
                    self._tracker.idle(frame.wal_end)
                if burst >= MAX_BURST:
                    break
                frame = stream.read(timeout=0)
            self._producer.poll(0)
            self._report_sent()
            self._offsets.poll()
            if self._fatal is not None:
                raise PermanentError(f"Kafka refused a change event: {self._fatal}")
            self._resnapshots.next_chunk(conn, stream)
            now = time.monotonic()
            # Measured from the last END sent or heartbeat written, not from the last
            # frame read: a database busy only with transactions the capture drops (the
            # sinks' own writes) still gets heartbeats, and its readers a moving horizon.
            quiet_since = max(last_activity, self._published_at)
            if self._tx is None and now - quiet_since >= self._s.heartbeat_seconds:
                catalog.emit_heartbeat(conn, HEARTBEAT_PREFIX)
                self._m.heartbeats.labels(self._system).inc()
                last_activity = now
            stream.send_status(self._confirmable())
            received.set(int(stream.received))
            confirmed.set(int(stream.flushed))
            if now - last_lag >= 5:
                self._measure_lag(conn)
                last_lag = now
            self._maybe_save_offset(self._tracker.confirmable)
        # Clean stop: 1. flush the producer, 2. record what Kafka acknowledged (the
        # tracker never counts a record Kafka did not acknowledge) with the incremental
        # snapshots' state, 3. confirm it to PostgreSQL.
        self._flush_or_fail(STOP_FLUSH_SECONDS)
        acked = self._tracker.confirmable
        if acked > self._saved_lsn:
            self._save_offset(acked, snapshot_completed=True, wait=True)
        stream.send_status(self._confirmable(), force=True)
        log.info("%s: stopped cleanly at %s", self._system, stream.flushed)

    def _handle(
        self, conn: psycopg.Connection[tuple[object, ...]], message: object, frame: XLogData
    ) -> None:
        tx = self._tx
        if isinstance(message, Begin):
            token = self._tracker.begin(message.xid)
            commit_ms = (message.commit_ts - _EPOCH) // _MILLISECOND
            delivery = _Delivery(self, self._tracker, token, commit_ms)
            self._tx = _OpenTx(message.xid, message.final_lsn, message.commit_ts, delivery)
        elif isinstance(message, Commit):
            if tx is not None:
                self._commit(tx, message)
            self._tx = None
        elif isinstance(message, Origin):
            if tx is not None and message.name in self._s.echo_origins:
                tx.dropped = True
                self._m.echo_transactions_dropped.labels(self._system, message.name).inc()
        elif isinstance(message, Relation):
            self._on_relation(conn, message)
        elif isinstance(message, (Insert, Update, Delete)):
            if self._resnapshots.is_signal(message.relation_oid):
                if isinstance(message, Insert) and tx is not None and not tx.dropped:
                    self._on_signal(message, tx)
                return
            if self._resnapshots.snapshots.window_pending:
                # Also for echo transactions: a row the sink wrote in the window is newer
                # than the chunk's image of it.
                self._window_change(message)
            if tx is not None and not tx.dropped:
                self._change(message, frame.wal_start, tx)
        elif isinstance(message, Truncate):
            for oid in message.relation_oids:
                if oid in self._by_oid:
                    shape = self._by_oid[oid].shape
                    self._resnapshots.snapshots.truncated(shape.schema, shape.table)
            if tx is not None and not tx.dropped:
                self._truncate(message, frame.wal_start, tx)
        elif isinstance(message, LogicalMessage):
            if message.transactional and message.prefix == WATERMARK_PREFIX:
                if tx is not None:
                    self._on_watermark(message, tx)
            elif message.transactional and message.prefix == HEARTBEAT_PREFIX:
                if tx is not None:
                    tx.heartbeat = True
            elif not message.transactional and tx is None:
                self._tracker.idle(message.lsn)
        elif isinstance(message, Type):
            self._type_names[message.oid] = message.name

    def _change(self, message: Insert | Update | Delete, lsn: Lsn, tx: _OpenTx) -> None:
        table = self._by_oid.get(message.relation_oid)
        if table is None:
            return
        try:
            self._change_compiled(table, message, lsn, tx)
        except Uncompiled:
            self._change_generic(table, message, lsn, tx)

    def _change_compiled(
        self, table: _Table, message: Insert | Update | Delete, lsn: Lsn, tx: _OpenTx
    ) -> None:
        """The hot path: bytes straight from the tuples (:mod:`cdc.envelope_writer`).

        Everything is encoded before anything is sent or counted, so :class:`Uncompiled`
        leaves no trace and the generic path starts from scratch.
        """
        writer = table.writer
        before: TupleData | None
        after: TupleData | None
        if isinstance(message, Insert):
            op, before, after = "c", None, message.new
        elif isinstance(message, Delete):
            op, before, after = "d", message.old or message.old_key, None
            if before is None:
                raise Uncompiled
        else:
            if message.old_key is not None and writer.key_changed(message.old_key, message.new):
                raise Uncompiled  # primary-key update: rare, the generic path splits it
            op, before, after = "u", message.old, message.new
        collection = table.collection
        template = tx.templates.get(collection)
        if template is None:
            info = self._source(table.shape, tx.commit_ms, lsn=0, tx_id=tx.xid, snapshot="false")
            template = writer.source_template(info.as_record())
            tx.templates[collection] = template
        lsn_value = int(lsn)
        row = after if after is not None else before
        assert row is not None
        key = writer.key(row)
        value = writer.value(
            op,
            before,
            after,
            template,
            source_sequence(self._last_commit_lsn, lsn_value),
            lsn_value,
            tx.tid,
            tx.total + 1,
            tx.per_collection[collection] + 1,
            int(time.time() * 1000),
        )
        self._begin_metadata(tx)
        tx.total += 1
        tx.per_collection[collection] += 1
        self._send(table.topic, key, value, tx.delivery)
        if op == "d":
            self._send(table.topic, key, None, tx.delivery)
        self._unreported[(table.shape.table, op)] += 1

    def _change_generic(
        self, table: _Table, message: Insert | Update | Delete, lsn: Lsn, tx: _OpenTx
    ) -> None:
        relation = self._decoder.relation(message.relation_oid)
        new = None if isinstance(message, Delete) else tuple_to_dict(relation, message.new)
        old_tuple = None if isinstance(message, Insert) else (message.old or message.old_key)
        old = None if old_tuple is None else tuple_to_dict(relation, old_tuple)
        if isinstance(message, Insert):
            self._event(table, "c", None, new, lsn, tx)
        elif isinstance(message, Delete):
            if old is None:
                raise PermanentError(f"delete on {table.topic} carries no key")
            self._event(table, "d", old, None, lsn, tx)
            self._tombstone(table, old, tx)
        else:
            assert new is not None
            if (
                message.old_key is not None
                and old is not None
                and self._key_changed(table, old, new)
            ):
                # Primary-key update: delete the old key, then create the new one.
                self._event(table, "d", old, None, lsn, tx)
                self._tombstone(table, old, tx)
                self._event(table, "c", None, new, lsn, tx)
            else:
                self._event(table, "u", old if message.old is not None else None, new, lsn, tx)

    @staticmethod
    def _key_changed(table: _Table, old: dict[str, object], new: dict[str, object]) -> bool:
        return any(old.get(c.name) != new.get(c.name) for c in table.shape.key_columns)

    def _truncate(self, message: Truncate, lsn: Lsn, tx: _OpenTx) -> None:
        for oid in message.relation_oids:
            table = self._by_oid.get(oid)
            if table is None:
                continue
            self._begin_metadata(tx)
            tx.total += 1
            tx.per_collection[data_collection(table.shape)] += 1
            source = self._source(
                table.shape, tx.commit_ms, lsn=int(lsn), tx_id=tx.xid, snapshot="false"
            )
            value = envelope_record(
                table.shape,
                op="t",
                before=None,
                after=None,
                source=source,
                ts_ms=int(time.time() * 1000),
                transaction=self._tx_block(tx, table),
            )
            self._send(
                table.topic, None, self._serde.encode_with(table.value_writer, value), tx.delivery
            )
            self._unreported[(table.shape.table, "t")] += 1

    def _event(
        self,
        table: _Table,
        op: str,
        before: dict[str, object] | None,
        after: dict[str, object] | None,
        lsn: Lsn,
        tx: _OpenTx,
    ) -> None:
        self._begin_metadata(tx)
        tx.total += 1
        collection = table.collection
        tx.per_collection[collection] += 1
        commit_ms = tx.commit_ms
        template = tx.sources.get(collection)
        if template is None:
            info = self._source(table.shape, commit_ms, lsn=0, tx_id=tx.xid, snapshot="false")
            template = tx.sources[collection] = info.as_record()
        lsn_value = int(lsn)
        source = dict(template)
        source["lsn"] = lsn_value
        source["sequence"] = source_sequence(self._last_commit_lsn, lsn_value)
        value = envelope_record(
            table.shape,
            op=op,  # type: ignore[arg-type]
            before=before,
            after=after,
            source=source,
            ts_ms=int(time.time() * 1000),
            transaction={
                "id": tx.tid,
                "total_order": tx.total,
                "data_collection_order": tx.per_collection[collection],
            },
            unchanged_toast=UNCHANGED_TOAST,
        )
        row = after if after is not None else before
        assert row is not None
        self._produce(table, row, value, tx.delivery)

    def _tombstone(self, table: _Table, row: dict[str, object], tx: _OpenTx) -> None:
        key = self._serde.encode_with(
            table.key_writer, key_record(table.shape, row, unchanged_toast=UNCHANGED_TOAST)
        )
        self._send(table.topic, key, None, tx.delivery)

    def _produce(
        self, table: _Table, row: dict[str, object], value: dict[str, Any], delivery: _Delivery
    ) -> None:
        key = self._serde.encode_with(
            table.key_writer, key_record(table.shape, row, unchanged_toast=UNCHANGED_TOAST)
        )
        encoded = self._serde.encode_with(table.value_writer, value)
        self._send(table.topic, key, encoded, delivery)
        self._unreported[(table.shape.table, value["op"])] += 1

    def _report_sent(self) -> None:
        """Add the events and bytes sent since the last call to the metrics."""
        for (table, op), count in self._unreported.items():
            counter = self._counters.get((table, op))
            if counter is None:
                counter = self._m.events.labels(self._system, table, op)
                self._counters[(table, op)] = counter
            counter.inc(count)
        self._unreported.clear()
        if self._unreported_bytes:
            self._bytes.inc(self._unreported_bytes)
            self._unreported_bytes = 0

    def _delivery_failed(self, err: KafkaError) -> None:
        self._m.producer_errors.labels(self._system, err.name()).inc()
        self._fatal = KafkaException(err)

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        delivery: _Delivery,
        partition: int = -1,
    ) -> None:
        """Produce a record (``partition`` -1: by its key), waiting while the queue is full."""
        delivery.tracker.add(delivery.token)
        self._unreported_bytes += len(key or b"") + len(value or b"")
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, on_delivery=delivery, partition=partition
                )
                return
            except BufferError:
                # Kafka is slow or away: wait here, holding the slot, rather than drop.
                # The walsender keeps hearing from us, with the old confirmed position.
                self._producer.poll(0.5)
                if self._live_stream is not None:
                    self._live_stream.send_status(self._confirmable())
                if self._stop.is_set():
                    raise _StopRequestedError(
                        "stop requested while Kafka was not accepting"
                    ) from None

    # -- transactions -----------------------------------------------------------------

    def _source(
        self, shape: TableShape, ts_ms: int, *, lsn: int, tx_id: int | None, snapshot: str
    ) -> SourceInfo:
        return SourceInfo(
            version=CONNECTOR_VERSION,
            name=self._s.server_name,
            ts_ms=ts_ms,
            snapshot=snapshot,  # type: ignore[arg-type]
            db=self._dbname,
            sequence=source_sequence(self._last_commit_lsn, lsn),
            schema=shape.schema,
            table=shape.table,
            tx_id=tx_id,
            lsn=lsn,
        )

    def _tx_block(self, tx: _OpenTx, table: _Table) -> TransactionBlock:
        return TransactionBlock(
            id=tx.tid,
            total_order=tx.total,
            data_collection_order=tx.per_collection[data_collection(table.shape)],
        )

    def _begin_metadata(self, tx: _OpenTx) -> None:
        """Emit the transaction's BEGIN record before its first event (or its heartbeat END)."""
        if tx.total:
            return
        tid = tx.tid
        writer = self._tx_writer()
        begin = writer.begin(tid, tx.commit_ms)
        self._send(self._tx_topic, writer.key(tid), begin, tx.delivery, TRANSACTION_PARTITION)

    def _tx_writer(self) -> TransactionWriter:
        if self._tx_key_writer is None or self._tx_value_writer is None:
            raise RetriableError("transaction metadata schemas are not registered yet")
        if self._transactions is None:
            self._transactions = TransactionWriter(self._tx_key_writer, self._tx_value_writer)
        return self._transactions

    def _commit(self, tx: _OpenTx, commit: Commit) -> None:
        """Close a transaction: its ``END``, then its place in the ack tracker.

        A heartbeat's transaction (no captured change) gets a ``BEGIN`` and an ``END``
        counting no events: on the transaction topic, in commit order after every
        transaction committed before it, it tells readers how far the source has been
        captured while nothing else is committed (the streams stage's horizon,
        :mod:`schemas.horizon`).
        """
        if tx.heartbeat and not tx.total and not tx.dropped:
            tx.delivery.commit_ms = None  # not a change: no commit-to-ack latency
            self._begin_metadata(tx)
        if (tx.total or tx.heartbeat) and not tx.dropped:
            tid = tx.tid
            writer = self._tx_writer()
            end = writer.end(tid, tx.commit_ms, tx.per_collection)
            self._send(self._tx_topic, writer.key(tid), end, tx.delivery, TRANSACTION_PARTITION)
            self._published_at = time.monotonic()
        self._m.transactions.labels(self._system).inc()
        self._last_commit_lsn = int(commit.commit_lsn)
        if tx.progress:
            self._resnapshots.record(int(commit.end_lsn))
        if self._tracker.commit(tx.token, commit.end_lsn) and tx.total:
            tx.delivery.completed()

    # -- incremental snapshots (driven by cdc.resnapshot) ------------------------------

    def _captured_table(self, name: str) -> CapturedTable | None:
        table = self._tables.get(name)
        return None if table is None else table.captured

    def _on_signal(self, message: Insert, tx: _OpenTx) -> None:
        row = tuple_to_dict(self._decoder.relation(message.relation_oid), message.new)
        if self._resnapshots.on_signal(row):
            tx.progress = True

    def _window_change(self, message: Insert | Update | Delete) -> None:
        table = self._by_oid.get(message.relation_oid)
        if table is None:
            return
        relation = self._decoder.relation(message.relation_oid)
        self._resnapshots.window_change(table.shape, relation, message)

    def _on_watermark(self, message: LogicalMessage, tx: _OpenTx) -> None:
        closed = self._resnapshots.watermark(message, int(tx.final_lsn))
        if closed is not None:
            self._emit_chunk(closed, tx)

    def _emit_chunk(self, closed: ClosedChunk[SnapshotRow], tx: _OpenTx) -> None:
        """Publish a closed chunk's rows in the high watermark's transaction."""
        request = closed.request
        table = self._tables.get(request.table)
        now_ms = int(time.time() * 1000)
        if table is not None:
            rows = self._m.incremental_rows.labels(self._system, request.table)
            for row, written_ms in closed.rows:
                source = self._source(
                    table.shape,
                    written_ms or now_ms,
                    lsn=closed.version,
                    tx_id=None,
                    snapshot="incremental",
                )
                value = envelope_record(
                    table.shape, op="r", before=None, after=row, source=source, ts_ms=now_ms
                )
                self._produce(table, row, value, tx.delivery)
                rows.inc()
        tx.progress = True
        self._resnapshots.chunk_published(closed, now_ms)

    # -- progress ---------------------------------------------------------------------

    def _flush_or_fail(self, timeout: float | None = None) -> None:
        """Wait for Kafka's acknowledgements (all of them, or until ``timeout``)."""
        self._report_sent()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._producer.flush(1.0) > 0:
            if self._fatal is not None:
                break
            if deadline is not None and time.monotonic() > deadline:
                log.warning("%s: Kafka still has records in flight at stop", self._system)
                break
        if self._fatal is not None:
            raise PermanentError(f"Kafka refused a change event: {self._fatal}")

    def _measure_lag(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        row = conn.execute(
            "select (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint from pg_replication_slots "
            "where slot_name = %s",
            (self._s.slot,),
        ).fetchone()
        if row and row[0] is not None:
            self._m.slot_lag_bytes.labels(self._system).set(int(str(row[0])))

    def _maybe_save_offset(self, lsn: Lsn) -> None:
        now = time.monotonic()
        if lsn > self._saved_lsn and now - self._last_offset_save >= 1.0:
            self._save_offset(lsn, snapshot_completed=True, wait=False)

    def _confirmable(self) -> Lsn:
        """What may be confirmed to PostgreSQL.

        Acknowledged by Kafka, and no state change of the incremental snapshots at or
        below it missing from the offsets topic.
        """
        return self._resnapshots.confirmable(self._tracker.confirmable)

    def _save_offset(self, lsn: Lsn, *, snapshot_completed: bool, wait: bool) -> None:
        progress = self._resnapshots.progress
        self._offsets.save(
            CaptureOffset(
                system=self._system,
                slot=self._s.slot,
                lsn=int(lsn),
                snapshot_completed=snapshot_completed,
                updated_ms=int(time.time() * 1000),
                incremental=progress.at(int(lsn)),
            ),
            on_stored=lambda offset: progress.stored(offset.lsn),
        )
        if wait:
            self._offsets.flush()
        self._saved_lsn = lsn
        self._last_offset_save = time.monotonic()
