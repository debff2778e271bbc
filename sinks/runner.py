"""The sink worker: consume canonical topics, batch, apply, retry, dead-letter.

One :class:`SinkRunner` owns a Kafka consumer and one :class:`~sinks.base.Sink`. Its
loop, and what each step guarantees:

- **Positions come from the target database.** On every partition assignment the
  consumer seeks to the offsets stored with the applied rows (``erpcrm_sync.offsets``);
  the Kafka group's own committed offsets are written afterwards for monitoring only.
  A crash at any point replays from the last committed database transaction, and
  versions make the replay a no-op (DESIGN.md §5.1-2).
- **Batching.** Up to ``batch_size`` events, waiting at most ``linger_ms`` after the
  first; one database transaction per batch.
- **Overlap.** A batch is written in a second thread while the next one is read and
  decoded; the next write starts only once the previous one has committed and been
  accounted for (held events, dead letters, announcements), so batches commit one after
  the other, in order, exactly as without the overlap. Nothing but the writing thread
  uses the database while a write is in flight: a partition assignment first finishes
  it, then reads the stored positions.
- **Transient failures** (:class:`~schemas.errors.RetriableError`: connection lost,
  serialization failure, deadlock, a database that is down) retry the same batch with
  exponential backoff, for as long as it takes; nothing is skipped.
- **Permanent failures** (a constraint violation) split the batch by entity key until
  the failing event is alone; it is dead-lettered, the rest is applied, and the
  positions are stored once every part is in.
- **Decoding as far as needed.** A message's leading fields (:data:`~sinks.batch.
  DECIDING_FIELDS`) are decoded as it is read; the rest of the record too while the
  batches apply most of their events, and otherwise only by the sink, for the events
  newer than the applied version (a replay after a restart decodes no more than the
  versions). What does not decode as it is read is dead-lettered before the batch that
  passes it commits; a rest the sink cannot decode, with that batch, in its transaction.
- **Deferred events** (a reference the target does not have yet) are retried with every
  batch, so each is applied with the batch after the one that brings its reference. How
  long they wait is measured in the sink's progress (:mod:`sinks.progress`): until the
  sink has applied whatever was published before them (known from a later event of their
  system or from the streams' decided horizon, :mod:`schemas.horizon`, read by a consumer
  of its own outside the group and the stored positions), then ``reference_wait_seconds``;
  then they are dead-lettered. The stored positions never pass them. The target's own
  decided horizon, read by the same consumer, tells the sink how far its own changes are
  applied (:class:`~sinks.progress.CaughtUp`): a row-clock wait counts from there too.
- A batch of tombstones only (or of messages dead-lettered as they were read) is written
  all the same: one statement storing its positions.
- Dead letters queued in the database (outbox) are published to ``dlq.sinks.<target>``
  after each commit and at start; created rows, and rows whose owned field the merge
  refused, are announced after each commit.
- **Replayed dead letters** (``erpcrm dlq replay``) arrive on ``replay.sinks.<target>``,
  read like a canonical topic (positions stored with the rows): the event's bytes as
  dead-lettered, its entity, key, original position and replay count in headers. The
  sync state decides as for any event: an event overtaken meanwhile is stale, the
  same event applied twice is a no-op. Only this target reads it, so the canonical
  topics never carry an event twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import cache, partial
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.deadletter import H_ENTITY, H_ERROR_REASON, text_headers
from schemas.dlq_topics import ensure_dead_letter_topic
from schemas.errors import (
    DecodeError,
    KeyTakenError,
    PermanentError,
    RetriableError,
    SyncError,
    UnresolvedReferenceError,
)
from schemas.horizon import SourceHorizon, ensure_horizon_topic
from schemas.serde import AvroSerde
from schemas.topic_admin import create_topics
from sinks.base import WriteResult
from sinks.batch import DECIDING_FIELDS, EntityKey, SinkBatch, SinkEvent, safe_offsets
from sinks.metrics import SinkMetrics
from sinks.postgres import PostgresUpsertSink, Unparked, dead_letter_headers, stored_event
from sinks.progress import CaughtUp, ReadProgress, ReferenceWait
from sinks.replays import replayed
from sinks.settings import SinkSettings

__all__ = ["RunStats", "SinkRunner"]

log = logging.getLogger(__name__)

_HELD_RETRY_MIN_SECONDS: Final = 0.5
_HELD_RETRY_MAX_SECONDS: Final = 2.0
"""Held events are tried again with every new batch; while nothing new arrives, after
0.5 s, then twice as long each time, at most 2 s (an idle sink does not re-apply them
in a loop)."""
_LAG_EVERY_SECONDS: Final = 5.0
_POLL_WHILE_WRITING_SECONDS: Final = 0.005
"""While a batch is written and nothing is there to read, how often the reader looks
whether the write has ended."""
_SUSPECTS_EVERY_SECONDS: Final = 2.0
_HORIZON_TAIL: Final = 16
"""How many of the last horizon records a (re)started sink reads first."""


@dataclass(slots=True)
class RunStats:
    """Totals since start (for logs, the demo and the benchmark)."""

    batches: int = 0
    events: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0
    dead_lettered: int = 0
    announced: int = 0

    def add(self, outcome: str, count: int) -> None:
        """Count ``count`` events of ``outcome``."""
        if count:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count


@dataclass(slots=True)
class _Held:
    """A key's held events (every version newer than the applied one), in order.

    ``wait``: deferred for a reference, dead-lettered once the wait expires; None:
    waiting for a row clock, which the sink ends itself.
    """

    events: tuple[SinkEvent, ...]
    wait: ReferenceWait | None = None

    @property
    def event(self) -> SinkEvent:
        """The latest of them."""
        return self.events[-1]


@dataclass(frozen=True, slots=True)
class _Pending:
    """A batch being written in the writing thread."""

    batch: SinkBatch
    fresh: bool
    """It holds new messages (not only held events tried again)."""
    write: Future[tuple[WriteResult, float]]


def _joined(parts: Sequence[WriteResult]) -> WriteResult:
    """The results of a batch written in parts, as one (offsets: none)."""
    joined: dict[str, Any] = {
        f.name: tuple(x for p in parts for x in getattr(p, f.name))
        for f in fields(WriteResult)
        if f.name != "offsets"
    }
    return WriteResult(**joined)


class SinkRunner:
    """Consume canonical events and apply them with ``sink`` (see module doc).

    Args:
        settings: the sink's settings.
        sink: the target (already configured for ``settings.target``).
        serde: decodes canonical values.
        metrics: the sink's metrics.
        topics: the canonical topics consumed.
        clock: monotonic clock (seconds), injectable.
    """

    def __init__(
        self,
        settings: SinkSettings,
        sink: PostgresUpsertSink,
        serde: AvroSerde,
        metrics: SinkMetrics,
        topics: Sequence[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = settings
        self._sink = sink
        self._serde = serde
        self._metrics = metrics
        self._topics = tuple(topics)
        self._clock = clock
        self._stop = threading.Event()
        self._held: dict[EntityKey, _Held] = {}
        self._taken: dict[EntityKey, KeyTakenError] = {}
        """Held keys whose change met a unique value another row holds: the rest of a
        trade may still come (:meth:`_settle_taken`); lettered with this error if not."""
        self._progress = ReadProgress()
        self._own = CaughtUp(settings.target)
        """How far the target's own changes are applied (the row-clock wait)."""
        self._held_backoff = _HELD_RETRY_MIN_SECONDS
        self._held_retry_at = 0.0
        self._consumer: Consumer | None = None
        self._horizons: Consumer | None = None
        """Reads the decided horizons (assigned, no group: every sink process reads all)."""
        self._started_at = time.time()
        self._producer: Producer | None = None
        self._lag_at = 0.0
        self._suspects_at = 0.0
        self._topics_at_start: set[str] = set()
        self.stats = RunStats()
        self._target = settings.target
        self._writer: ThreadPoolExecutor | None = None
        self._pending: _Pending | None = None
        self._read_whole = True
        """Decode each event whole as it is read (the last batch applied most of its
        events); else only its leading fields, the rest once the sink finds it newer
        than the applied version (a replay reads no more than it needs)."""

    # ------------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its current batch and return."""
        self._stop.set()

    def run(self, *, until: Callable[[RunStats], bool] | None = None) -> RunStats:
        """Run until :meth:`stop` (or ``until(stats)`` is true); return the totals."""
        self._retrying("setup", self._sink.setup)
        self._metrics.parked.labels(self._target).set(self._sink.parked_records)
        # A sink (re)started while Kafka is away waits for it here, as for its database.
        self._retrying(
            "dead-letter topic", partial(ensure_dead_letter_topic, self._s.kafka, self._s.dlq_topic)
        )
        self._retrying("replay topic", partial(self._ensure_topics, self._s.replay_topic))
        self._retrying(
            "horizon topic", partial(ensure_horizon_topic, self._s.kafka, self._s.horizon_topic)
        )
        self._producer = Producer(
            self._s.kafka.client_config(
                **{"enable.idempotence": True, "acks": "all", "linger.ms": 5}
            )
        )
        self._consumer = Consumer(
            self._s.kafka.client_config(
                **{
                    "group.id": self._s.group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "topic.metadata.refresh.interval.ms": 2000,
                    "fetch.wait.max.ms": 50,
                    # A killed sink's partitions go to its restarted self (or another
                    # process) after 10 s, not Kafka's default 45 s.
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 2_000,
                    **({"group.instance.id": self._s.instance_id} if self._s.instance_id else {}),
                }
            )
        )
        self._horizons = Consumer(
            self._s.kafka.client_config(
                **{
                    "group.id": f"{self._s.group_id}-horizon",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "latest",
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 100,
                }
            )
        )
        try:
            self._follow_horizons()
            metadata = self._consumer.list_topics(timeout=30)
            self._topics_at_start = {
                name for name, topic in metadata.topics.items() if topic.error is None
            }
            self._consumer.subscribe(list(self._topics), on_assign=self._on_assign)
            self._after_commit(announce=True, dead=True)
            log.info("sink %s consuming %s", self._target, ", ".join(self._topics))
            self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"sink-{self._target}")
            while not self._stop.is_set() and not (until is not None and until(self.stats)):
                self._step()
            self._finish_pending()
        finally:
            self._abandon_pending()
            if self._writer is not None:
                self._writer.shutdown()
            self._consumer.close()
            self._horizons.close()
            self._producer.flush(10)
            self._sink.close()
        return self.stats

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Seek every assigned partition to the position stored in the target.

        A write in flight is finished first: the positions read are committed ones.
        """
        self._finish_pending()
        positions = self._retrying("read positions", self._sink.positions)
        fresh: dict[tuple[str, int], int] = {}
        for tp in partitions:
            stored = positions.get((tp.topic, tp.partition))
            if stored is not None:
                tp.offset = stored
            elif self._s.start_at == "earliest":
                tp.offset = OFFSET_BEGINNING
            else:
                # "latest" means the end of a topic that existed when the sink started; a
                # topic made since is read from its start. Either way the position is
                # pinned now, so a restart before the first event resumes here.
                low, high = self._watermarks(consumer, tp)
                start = high if tp.topic in self._topics_at_start else low
                tp.offset = fresh[(tp.topic, tp.partition)] = max(start, 0)
        if fresh:
            self._retrying("store start positions", partial(self._sink.store_offsets, fresh))
        # Where each partition is read from; one read from its start, from its low watermark.
        self._progress.assign(
            {
                (tp.topic, tp.partition): tp.offset
                if tp.offset >= 0
                else self._watermarks(consumer, tp)[0]
                for tp in partitions
            }
        )
        assigned = {(p.topic, p.partition) for p in partitions}
        for key in [
            k for k, h in self._held.items() if (h.event.topic, h.event.partition) in assigned
        ]:
            del self._held[key]  # read again from the stored position
        consumer.assign(partitions)
        log.info("sink %s assigned %d partitions", self._target, len(partitions))

    def _watermarks(self, consumer: Consumer, tp: TopicPartition) -> tuple[int, int]:
        """A partition's low and high watermarks, waiting out a leader election."""
        delay = self._s.retry_initial_seconds
        while True:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                return int(low), int(high)
            except KafkaException as exc:
                if self._stop.is_set():
                    raise RetriableError(f"no watermarks for {tp.topic}: {exc}") from exc
                log.info("sink %s: watermarks of %s: %s; retrying", self._target, tp.topic, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self._s.retry_max_seconds)

    # ------------------------------------------------------------------------ step

    def _step(self) -> None:
        batch = self._collect()  # while the previous batch is written
        self._finish_pending()
        marks = cache(self._high_watermarks)  # read at most once a step
        self._read_horizons()
        # No write in flight here: the next one sees how far the own changes are applied.
        self._sink.own_changes_applied(self._own.advance(self._progress, marks))
        self._expire_held(marks)
        # New messages: events, or only tombstones and messages dead-lettered as they
        # were read, whose positions are stored all the same (one statement).
        fresh = batch.moves
        if self._held and (fresh or self._clock() >= self._held_retry_at):
            for held in self._held.values():
                for event in held.events:
                    batch.add(event)
            # The positions stored with it reach what the sink has read and accounted,
            # not only the held events' own: a held event resolved by itself (the sink
            # idle) must not leave them at its offset, with everything read since
            # behind them (read again after a restart or rebalance).
            for (topic, partition), position in self._progress.applied.items():
                if position > 0:
                    batch.advance(topic, partition, position - 1)
        self._lag()
        # The dead-letter producer is idle most of the time: hand over what it reports
        # (log lines, errors, statistics), which would otherwise wait and pile up.
        if self._producer is not None:
            self._producer.poll(0)
        self._carry_out_suspects()
        if not batch.moves:
            return
        assert self._writer is not None
        write = self._writer.submit(self._timed_apply, batch)
        self._pending = _Pending(batch, fresh, write)

    def _timed_apply(self, batch: SinkBatch) -> tuple[WriteResult, float]:
        started = self._clock()
        result = self._apply(batch)
        return result, self._clock() - started

    def _finish_pending(self) -> None:
        """Wait for the batch being written; account for it (an error is raised here)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        result, seconds = pending.write.result()
        self._account(pending.batch, result, seconds)
        self._schedule_held_retry(pending.fresh)
        self._after_commit(announce=result.announces, dead=bool(result.letters))
        self._commit_kafka(result)

    def _abandon_pending(self) -> None:
        """On the way out after an error: let a write in flight end, its result unused.

        Its transaction commits or not; either way the stored positions tell where a
        restart resumes.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.write.result()
            except BaseException:
                log.debug("sink %s: write ended after an error", self._target, exc_info=True)

    def _collect(self) -> SinkBatch:
        """Up to ``batch_size`` decoded events, lingering ``linger_ms`` after the first.

        The first message is awaited with ``poll`` (it returns as soon as one is there;
        ``consume`` would wait for a full batch or its timeout), the rest is gathered
        until the batch is full or the linger is over.
        """
        assert self._consumer is not None
        batch = SinkBatch()
        first = self._first_message()
        if first is None:
            return batch
        self._add(batch, first)
        deadline = self._clock() + self._s.linger_ms / 1000
        while len(batch) < self._s.batch_size and not self._stop.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            messages = self._consumer.consume(self._s.batch_size - len(batch), remaining)
            if not messages:
                break
            for message in messages:
                self._add(batch, message)
        return batch

    def _first_message(self) -> Message | None:
        """The first message of the next batch; None: none came.

        Without a write in flight, waits up to a second (less when held events are due).
        With one, as long as it runs: a write that ends with nothing to read ends the
        wait, so its result is accounted for (and its rows announced) at once.
        """
        assert self._consumer is not None
        pending = self._pending
        if pending is None:
            wait = 1.0
            if self._held:
                wait = min(wait, max(0.05, self._held_retry_at - self._clock()))
            return self._consumer.poll(wait)
        while True:
            message = self._consumer.poll(_POLL_WHILE_WRITING_SECONDS)
            if message is not None or pending.write.done() or self._stop.is_set():
                return message

    def _add(self, batch: SinkBatch, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                log.info("sink %s: %s (waiting for it)", self._target, error.str())
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("sink %s: consumer error: %s", self._target, error)
            return
        topic = message.topic() or ""
        partition = message.partition() or 0
        offset = message.offset() or 0
        value = message.value()
        raw_key = message.key()
        key = raw_key.decode("utf-8", "replace") if raw_key is not None else ""
        if value is None:  # a tombstone (compaction of a deleted entity): nothing to do
            batch.advance(topic, partition, offset)
            return
        entity = topic.rsplit(".", 1)[-1]  # canonical.<entity>
        replays, replayed_from = 0, None
        if topic == self._s.replay_topic:
            context = replayed(text_headers(message.headers()))
            entity, replays, replayed_from = context.entity, context.replays, context.origin
        try:
            if not entity:
                raise DecodeError(f"replayed message without an {H_ENTITY} header")
            # Only the fields that decide whether the event is applied at all: a replay
            # of applied events never reads the rest (SinkEvent.complete).
            record, rest = self._decode(value)
        except DecodeError as exc:
            event = SinkEvent(
                topic, partition, offset, entity, key, {}, raw_key, value, replays, replayed_from
            )
            self._publish_dead_letters([(event, exc)])
            batch.advance(topic, partition, offset)
            return
        position = (topic, partition, offset)
        headers = message.headers  # read only for an event the version does not settle
        batch.add(
            SinkEvent(
                *position,
                entity,
                key,
                record,
                raw_key,
                value,
                replays,
                replayed_from,
                rest,
                headers,
            )
        )

    def _decode(self, value: bytes) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """A message's record, whole or its leading fields and the rest to read (module doc).

        Whole (here, while the previous batch is written, not in the writing thread)
        while batches apply most of their events, and always for the target's own
        events (their fields go into row clocks).
        """
        # Tried first without a closure (one per message otherwise); a retriable failure
        # (the registry away) goes on in _retrying as if it had made the first attempt.
        if self._read_whole:
            try:
                return self._serde.decode(value), None
            except RetriableError as exc:
                whole = partial(self._serde.decode, value)
                return self._retrying("decode", whole, failed=exc), None
        try:
            record, rest = self._serde.decode_lazily(value, DECIDING_FIELDS)
        except RetriableError as exc:
            lazily = partial(self._serde.decode_lazily, value, DECIDING_FIELDS)
            record, rest = self._retrying("decode", lazily, failed=exc)
        if record.get("source_system") == self._target:
            rest()
            return record, None
        return record, rest

    # ----------------------------------------------------------------------- apply

    def _apply(self, batch: SinkBatch) -> WriteResult:
        try:
            result: WriteResult = self._retrying("write", lambda: self._sink.write(batch))
        except PermanentError as exc:
            log.warning(
                "sink %s: batch of %d refused (%s); isolating the event",
                self._target,
                len(batch),
                exc,
            )
            return self._isolate(batch)
        return result

    def _isolate(self, batch: SinkBatch) -> WriteResult:
        """Apply ``batch`` in parts; dead-letter the events that fail alone.

        A key that fails alone on a unique value another row holds may only have met a
        row of the batch that gives the value up (a swap or rotation the bisection cut
        apart): those keys are tried together again before any is lettered
        (:meth:`_settle_taken`).
        """
        parts: list[WriteResult] = []
        dead: list[tuple[SinkEvent, SyncError]] = []
        taken: list[tuple[EntityKey, KeyTakenError]] = []

        def attempt(keys: Sequence[EntityKey]) -> None:
            part = SinkBatch(e for k in keys for e in batch.events(k))
            try:
                parts.append(
                    self._retrying("write", lambda: self._sink.write(part, store_offsets=False))
                )
            except PermanentError as failure:
                if len(keys) > 1:
                    middle = len(keys) // 2
                    attempt(keys[:middle])
                    attempt(keys[middle:])
                    return
                if isinstance(failure, KeyTakenError):
                    taken.append((keys[0], failure))
                    return
                latest = part.collapse().latest[0]
                self._retrying("dead letter", partial(self._sink.dead_letter, latest, failure))
                dead.append((latest, failure))

        attempt(batch.keys())
        held_taken = self._settle_taken(batch, taken, parts) if taken else ()
        deferred = (*(e for p in parts for e in p.deferred), *held_taken)
        waiting = tuple(e for p in parts for e in p.waiting)
        offsets = safe_offsets(batch.next_offsets(), (*deferred, *waiting))
        self._retrying("store offsets", lambda: self._sink.store_offsets(offsets))

        joined = _joined(parts)
        return replace(
            joined, offsets=offsets, deferred=deferred, waiting=waiting, dead=(*joined.dead, *dead)
        )

    def _settle_taken(
        self,
        batch: SinkBatch,
        taken: list[tuple[EntityKey, KeyTakenError]],
        parts: list[WriteResult],
    ) -> tuple[SinkEvent, ...]:
        """Apply the keys that failed alone on a taken unique value; return what waits.

        Together they may trade their values (the sink parks them first), and a part
        applied after a key's own try may have freed its value. If they still fail, the
        first key whose leaving out lets the others apply waits alone (one write per key
        tried, only after a refused batch), else all of them do. A waiting key is held
        as an event waiting for a reference is, with later batches: the rest of a trade
        the sink reads in a later batch (the canonical topics are partitioned by key)
        frees its value; when the wait is over it is dead-lettered with its
        :class:`KeyTakenError` (:meth:`_expire_held`).
        """

        def write(keys: Sequence[EntityKey]) -> bool:
            part = SinkBatch(e for k in keys for e in batch.events(k))
            try:
                parts.append(
                    self._retrying("write", lambda: self._sink.write(part, store_offsets=False))
                )
            except PermanentError:
                return False
            return True

        keys = [k for k, _ in taken]
        waiting = taken
        # Again even alone: a part written after its first try may have freed its value.
        if write(keys):
            waiting = []
        elif len(taken) > 1:
            for index, item in enumerate(taken):
                if write(keys[:index] + keys[index + 1 :]):
                    waiting = [item]
                    break
        for key, failure in waiting:
            self._taken[key] = failure
            log.info(
                "sink %s: %s %s meets a unique value another row holds (%s); held for the"
                " rest of a trade",
                self._target,
                key[0],
                key[1],
                failure,
            )
        return tuple(e for key, _ in waiting for e in batch.events(key))

    def _retrying(
        self, what: str, action: Callable[[], Any], *, failed: RetriableError | None = None
    ) -> Any:
        """Run ``action``, retrying RetriableError with backoff until it succeeds.

        ``failed``: the caller ran ``action`` once already and it failed so (a hot path
        tries first without a closure): counted and waited for as a first failure here.
        """
        delay = self._s.retry_initial_seconds
        while True:
            if failed is None:
                try:
                    return action()
                except RetriableError as exc:
                    failed = exc
            if self._stop.is_set():
                raise failed
            self._metrics.retries.labels(
                self._target, type(failed.__cause__ or failed).__name__
            ).inc()
            log.warning(
                "sink %s: %s failed (%s); retrying in %.1fs", self._target, what, failed, delay
            )
            self._stop.wait(delay)
            delay = min(delay * 2, self._s.retry_max_seconds)
            failed = None

    # ---------------------------------------------------------- suspected duplicates

    def _carry_out_suspects(self) -> None:
        """Apply the suspected duplicates an operator released or linked (``erpcrm suspects``).

        The held event is applied again; the sink finds the decision for its key (see
        :meth:`PostgresUpsertSink._settle_duplicate`: released, it is created; linked, it
        is written into its candidate), then the suspect is marked. A crash in between
        applies it again, which the version makes a no-op. Then the events parked for
        suspects carried out are applied (:meth:`_unpark`).
        """
        now = self._clock()
        if now - self._suspects_at < _SUSPECTS_EVERY_SECONDS:
            return
        self._suspects_at = now
        pending = self._retrying("read suspects", self._sink.pending_suspects)
        if pending:
            self._carry_out(pending)
        self._unpark()

    def _carry_out(self, pending: Sequence[Mapping[str, Any]]) -> None:
        """Apply released or linked suspects and mark them carried out, in one transaction.

        An event that must wait then (a reference, a row clock) is parked in that
        transaction, never held in memory only: its position was stored long ago, and a
        restart would neither apply nor dead-letter it.
        """
        ids = [int(row["id"]) for row in pending]
        # The events as held: the sink finds the operator's decision for their keys.
        events = [e for row in pending if (e := self._stored_event(row)) is not None]
        marked = False
        if events:
            batch = SinkBatch(events)
            started = self._clock()
            try:
                # Their positions were stored long ago: none is stored again.
                result: WriteResult = self._retrying(
                    "write suspects",
                    lambda: self._sink.write(batch, store_offsets=False, carried_out=ids),
                )
                marked = True
            except PermanentError as exc:
                for event in events:
                    self._retrying("dead letter", partial(self._sink.dead_letter, event, exc))
                result = WriteResult(dead=tuple((e, exc) for e in events))
            self._account(batch, result, self._clock() - started)
            self._after_commit(announce=result.announces, dead=bool(result.letters))
            log.info(
                "sink %s: carried out %d suspect decisions (%d applied)",
                self._target,
                len(events),
                len(result.applied),
            )
        if not marked:
            self._retrying("mark suspects", lambda: self._sink.suspects_carried_out(ids))

    def _unpark(self) -> None:
        """Apply the events parked for suspects whose decision is carried out (in order).

        One transaction unparks them and applies them (:class:`~sinks.postgres.Unparked`):
        a crash before it leaves them parked, after it they are applied or dead-lettered.
        """
        rows = self._retrying("read parked", self._sink.ready_parked)
        if not rows:
            return
        events: list[SinkEvent] = []
        suspects: dict[int, tuple[str, str, str | None]] = {}
        ids: dict[int, list[int]] = {}
        for row in rows:
            event = self._stored_event(row)
            if event is None:
                continue  # parked with its bytes: never without
            events.append(event)
            suspects[id(event)] = (row["suspect_entity"], row["suspect_key"], row["status"])
            ids.setdefault(id(event), []).append(int(row["id"]))
        batch = SinkBatch(events)
        started = self._clock()
        try:
            result = self._write_parked(batch, ids, suspects)
        except PermanentError:
            # One key at a time: a key that fails alone is dead-lettered, unparked.
            parts = []
            keys = batch.keys()
            for key in keys:
                part = SinkBatch(batch.events(key))
                try:
                    parts.append(self._write_parked(part, ids, suspects))
                except PermanentError as exc:
                    [latest] = part.collapse().latest
                    key_ids = [i for e in part for i in ids[id(e)]]
                    self._retrying(
                        "dead letter", partial(self._sink.dead_letter, latest, exc, unpark=key_ids)
                    )
                    parts.append(WriteResult(dead=((latest, exc),)))
            result = _joined(parts)
        self._account(batch, result, self._clock() - started, unparked=True)
        self._after_commit(announce=result.announces, dead=bool(result.letters))
        # Parked again, all of them (a row clock still awaited): tried again in a moment,
        # not news each time.
        level = logging.DEBUG if len(result.parked) == len(events) else logging.INFO
        log.log(
            level,
            "sink %s: applied %d parked events (%d applied, %d parked again, %d dead-lettered)",
            self._target,
            len(events),
            len(result.applied),
            len(result.parked),
            len(result.dead),
        )

    def _stored_event(self, row: Mapping[str, Any]) -> SinkEvent | None:
        """An event stored in the sync schema, decoded (:func:`sinks.postgres.stored_event`)."""

        def decode(value: bytes) -> dict[str, Any]:
            record: dict[str, Any] = self._retrying("decode", partial(self._serde.decode, value))
            return record

        return stored_event(row, decode)

    def _write_parked(
        self,
        batch: SinkBatch,
        ids: Mapping[int, Sequence[int]],
        suspects: Mapping[int, tuple[str, str, str | None]],
    ) -> WriteResult:
        """Unpark and apply ``batch`` in one transaction (``ids``, ``suspects`` by event)."""
        unparked = Unparked(
            tuple(i for e in batch for i in ids[id(e)]),
            {id(e): suspects[id(e)] for e in batch},
        )
        # Their positions were stored when they were parked: none is stored again.
        result: WriteResult = self._retrying(
            "write parked",
            lambda: self._sink.write(batch, store_offsets=False, unparked=unparked),
        )
        return result

    # --------------------------------------------------------------- held events

    def _schedule_held_retry(self, fresh: bool) -> None:
        """When held events are tried again without new events (see the constants)."""
        backoff = _HELD_RETRY_MIN_SECONDS if fresh else self._held_backoff * 2
        self._held_backoff = min(backoff, _HELD_RETRY_MAX_SECONDS)
        self._held_retry_at = self._clock() + self._held_backoff

    def _expire_held(self, marks: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        """Dead-letter the events whose reference wait is over (:mod:`sinks.progress`).

        ``marks``: the assigned partitions' high watermarks (read at most once a step).
        """
        now = self._clock()
        expired = []
        for key, held in self._held.items():
            wait = held.wait
            if wait is None:
                continue
            wait.advance(self._progress, now, marks, self._s.reference_behind_max_seconds)
            if wait.expired(now, self._s.reference_wait_seconds):
                expired.append(key)
        # Once they are dead-lettered, their partitions' positions move on to what the
        # sink has read (never past an event still held), in the same transaction as
        # the last letter: an idle sink does not leave them behind, and a restart does
        # not read the lettered events again and letter them twice.
        partitions = {
            (h.event.topic, h.event.partition) for k, h in self._held.items() if k in expired
        }
        for number, key in enumerate(expired, 1):
            event = self._held.pop(key).event
            error: SyncError
            taken = self._taken.pop(key, None)
            if taken is not None:
                error = taken
            else:
                error = self._unresolved(event)
            offsets: dict[tuple[str, int], int] = {}
            if number == len(expired):
                offsets = self._read_positions(partitions)
            self._retrying(
                "dead letter", partial(self._sink.dead_letter, event, error, offsets=offsets)
            )
            self.stats.add("dead_lettered", 1)
            self._metrics.events.labels(self._target, event.entity, "dead_lettered").inc()
            if offsets:
                self._commit_kafka(WriteResult(offsets=offsets))
        if expired:
            self._metrics.deferred.labels(self._target).set(len(self._held))
            self._after_commit(announce=False, dead=True)

    def _unresolved(self, event: SinkEvent) -> UnresolvedReferenceError:
        """The dead-letter error of ``event``, whose reference wait is over."""
        lacking, notes = self._retrying("describe", partial(self._sink.unresolved, event))
        return UnresolvedReferenceError(
            "; ".join(
                (
                    f"unresolved_reference: {event.entity} {event.key} refers to {lacking}, "
                    f"which the {self._target} does not have "
                    f"{self._s.reference_wait_seconds:.0f}s after the sink had applied "
                    "everything published before it",
                    *notes,
                )
            )
        )

    def _follow_horizons(self) -> None:
        """Read the horizon topic from its last few records on (module :mod:`schemas.horizon`).

        Not part of the consumer group and never stored: only the latest horizon matters,
        and a restarted sink learns it again from the tail.
        """
        assert self._horizons is not None
        topic = self._s.horizon_topic
        found = self._horizons.list_topics(topic, timeout=30).topics.get(topic)
        partitions = sorted(found.partitions) if found is not None and found.error is None else [0]
        start = []
        for partition in partitions:
            low, high = self._watermarks(self._horizons, TopicPartition(topic, partition))
            start.append(TopicPartition(topic, partition, max(low, high - _HORIZON_TAIL)))
        self._horizons.assign(start)

    def _read_horizons(self) -> None:
        """Note the decided horizons read since the last step.

        The source system's horizons end the first stage of reference waits; the
        target's own tell how far its own changes are applied (row-clock waits,
        :class:`CaughtUp`).
        """
        assert self._horizons is not None
        for message in self._horizons.consume(64, 0):
            value = message.value()
            if message.error() is not None or value is None:
                continue
            try:
                horizon = SourceHorizon.from_record(self._serde.decode(value))
            except (SyncError, KeyError, TypeError, ValueError) as exc:
                log.debug("sink %s: horizon record not read: %s", self._target, exc)
                continue
            self._progress.horizon(horizon.system, horizon.commit_ts_ms)

    def _read_positions(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where ``partitions`` may be stored now: read and accounted, not past a held event."""
        applied = self._progress.applied
        return safe_offsets(
            {tp: applied[tp] for tp in partitions if applied.get(tp, 0) > 0},
            (e for h in self._held.values() for e in h.events),
        )

    def _high_watermarks(self) -> dict[tuple[str, int], int]:
        """The high watermark of every assigned partition, as last fetched.

        The consumer learns them with every fetch, one request for the partitions of a
        broker: they are at least as recent as the last message read. A partition not
        fetched yet (just assigned, when a horizon read meanwhile ended the first stage)
        is asked of the broker; one whose watermark cannot be had is left out.
        """
        assert self._consumer is not None
        marks: dict[tuple[str, int], int] = {}
        for tp in self._consumer.assignment():
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    _, high = self._consumer.get_watermark_offsets(tp, timeout=5)
            except KafkaException:
                continue
            if high >= 0:
                marks[(tp.topic, tp.partition)] = int(high)
        return marks

    # ------------------------------------------------------------- after commit

    def _account(
        self,
        batch: SinkBatch,
        result: WriteResult,
        seconds: float,
        *,
        unparked: bool = False,
    ) -> None:
        """Count a written batch, hold what it holds back, note the sink's progress.

        ``unparked``: the batch is parked events tried again (:meth:`_unpark`), each
        counted ``parked`` when it was first parked: neither parked again nor superseded
        counts them a second time.
        """
        now_ms = time.time() * 1000
        target = self._target
        m = self._metrics
        self._progress.observe(batch)
        in_batch = batch.keys()
        held_before = {key: self._held.pop(key) for key in in_batch if key in self._held}
        # An event tried again was counted when it was first held: not again.
        again = {id(e) for h in held_before.values() for e in h.events}
        # Parked events tried again were counted when first parked (a held event parked
        # now was counted deferred, not parked: it counts).
        parked_before = {id(e) for e in batch} if unparked else set()
        again |= parked_before
        newly_held = []
        held: dict[EntityKey, list[SinkEvent]] = {}
        for event in (*result.deferred, *result.waiting):
            held.setdefault(event.entity_key, []).append(event)
        for_reference = {e.entity_key for e in result.deferred}
        now = self._clock()
        for key, key_events in held.items():
            previous = held_before.get(key)
            if previous is None:
                newly_held.append(key_events[-1])
            wait = None
            if key in for_reference:
                # The wait goes on from where it was: a newer version does not restart it.
                wait = previous.wait if previous is not None else None
                wait = wait or ReferenceWait.start(key_events, now)
            ordered = tuple(sorted(key_events, key=lambda e: e.version))
            self._held[key] = _Held(ordered, wait)
        for key in [k for k in self._taken if k not in self._held]:
            del self._taken[key]  # applied (or lettered) since
        m.deferred.labels(target).set(len(self._held))
        m.parked.labels(target).set(self._sink.parked_records)
        groups: Mapping[str, tuple[SinkEvent, ...]] = {
            "applied": result.applied,
            "stale": result.stale,
            "noop": result.noop,
            "superseded": tuple(e for e in result.superseded if id(e) not in again),
            "skipped": result.skipped,
            "unknown": result.unknown,
            "deferred": tuple(newly_held),
            "dead_lettered": tuple(e for e, _ in result.dead),
            "held": result.held,
            "parked": tuple(e for e in result.parked if id(e) not in parked_before),
        }
        for outcome, events in groups.items():
            self.stats.add(outcome, len(events))
            per_entity: dict[str, int] = {}
            for event in events:
                per_entity[event.entity] = per_entity.get(event.entity, 0) + 1
            for entity, count in per_entity.items():
                m.events.labels(target, entity, outcome).inc(count)
        latencies: dict[str, Any] = {}
        for event in result.applied:
            histogram = latencies.get(event.entity)
            if histogram is None:
                histogram = latencies[event.entity] = m.end_to_end_seconds.labels(
                    target, event.entity
                )
            histogram.observe(max(0.0, (now_ms - event.source_ts_ms) / 1000))
        for conflict in result.conflicts:
            m.conflicts.labels(target, conflict.entity, conflict.winner, conflict.reason).inc()
        self.stats.conflicts += len(result.conflicts)
        self.stats.batches += 1
        self.stats.events += len(batch)
        m.batches.labels(target).inc()
        m.batch_size.labels(target).observe(len(batch))
        self._read_whole = 2 * len(result.stale) <= len(batch)
        m.apply_seconds.labels(target).observe(seconds)
        if result.dead:
            for event, error in result.dead:
                log.warning(
                    "sink %s: dead letter %s %s: %s", target, event.entity, event.key, error
                )
        for event, error in result.refused_parts:
            log.warning(
                "sink %s: %s %s applied, a part of it dead-lettered: %s",
                target,
                event.entity,
                event.key,
                error,
            )

    def _after_commit(self, *, announce: bool, dead: bool) -> None:
        if dead:
            self._flush_dead_letters()
        if announce and self._s.announce:
            while True:
                done = self._retrying("announce", self._sink.announce)
                for entity, _ in done:
                    self._metrics.announced.labels(self._target, entity).inc()
                self.stats.announced += len(done)
                if not done:
                    break

    def _flush_dead_letters(self) -> None:
        """Publish the dead letters queued in the target, then dequeue them."""
        while True:
            queued = self._retrying("read dead letters", self._sink.queued_dead_letters)
            if not queued:
                return
            self._send_dead_letters((q.key, q.value, q.headers) for q in queued)
            ids = [letter.id for letter in queued]
            self._retrying("dequeue dead letters", partial(self._sink.dead_letters_published, ids))

    def _publish_dead_letters(self, letters: Sequence[tuple[SinkEvent, SyncError]]) -> None:
        """Publish dead letters straight to Kafka (before their offsets can be stored)."""
        for event, _ in letters:
            self._metrics.events.labels(self._target, event.entity, "dead_lettered").inc()
        self._send_dead_letters(
            (event.raw_key, event.raw_value, dead_letter_headers(event, error, self._target))
            for event, error in letters
        )

    def _send_dead_letters(
        self, letters: Iterable[tuple[bytes | None, bytes | None, Mapping[str, str]]]
    ) -> None:
        """Produce ``(key, value, headers)`` dead letters and wait until Kafka has them."""
        producer = self._producer
        assert producer is not None
        sent = 0
        counted = self._metrics.dead_letters
        for key, value, headers in letters:
            counted.labels(
                self._target,
                headers.get(H_ENTITY, ""),
                headers.get(H_ERROR_REASON, ""),
            ).inc()
            producer.produce(
                self._s.dlq_topic,
                key=key,
                value=value,
                headers=[(k, v.encode("utf-8")) for k, v in headers.items()],
            )
            sent += 1
        self._flush_producer()
        self.stats.dead_lettered += sent

    def _flush_producer(self) -> None:
        producer = self._producer
        assert producer is not None
        while producer.flush(5) > 0:
            if self._stop.is_set():
                raise RetriableError("Kafka did not take the dead letters before the stop")
            log.warning("sink %s: waiting for Kafka to take the dead letters", self._target)

    def _commit_kafka(self, result: WriteResult) -> None:
        """Mirror the stored positions into the group (monitoring only; best effort)."""
        if not result.offsets or self._consumer is None:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in result.offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:  # the database holds the truth
            log.debug("sink %s: group commit failed: %s", self._target, exc)

    def _lag(self) -> None:
        now = self._clock()
        if self._consumer is None or now - self._lag_at < _LAG_EVERY_SECONDS:
            return
        self._lag_at = now
        source = self._s.source
        horizon_ms = self._progress.horizon_ms.get(source)
        reached = horizon_ms / 1000 if horizon_ms is not None else self._started_at
        self._metrics.horizon_age_seconds.labels(self._target, source).set(
            max(0.0, time.time() - reached)
        )
        total = 0
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    total += max(0, high - tp.offset)
        except KafkaException:
            return
        self._metrics.lag_events.labels(self._target).set(total)

    def _ensure_topics(self, *names: str) -> None:
        """Create the sink's own one-partition topics (replays) if missing."""
        admin = AdminClient(self._s.kafka.client_config())
        create_topics(admin, [NewTopic(name, num_partitions=1) for name in names])
