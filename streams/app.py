"""The streams worker as a Faust app: topology, batch intake, state tables and web views.

Topology::

    <erp>.public.<table>, <crm>.public.<table>, <system>.transaction   (raw bytes)
    <app_id>-control   (one partition: ticks, dead letters replayed with their origin)
        │  ``process`` (streams.intake): a batch at a time: StreamProcessor -> publish,
        │  wait for acks -> commit state -> ack the batch's messages in Faust's consumer
        ▼
    canonical.<entity>  (key: entity key, UTF-8)       dlq.streams  (original bytes)
    quality.defects     (data-quality log, JSON; see streams.quality)
    horizon.streams     (per source system, how far it is decided: streams.decided;
                         published by a timer once the batches that reached it are done)

Every raw message crosses Faust once: the ``process`` task reads the raw topics
themselves, and a message's position (topic, partition, offset) is its own. The control
topic carries what does not come from a capture: ticks, and dead letters ``erpcrm dlq
replay`` puts back with their original position in the ``erpcrm.origin.*`` headers.

Order. Within one system, decisions follow the source's commit order, not the order in
which Kafka interleaves the table topics and their partitions: :mod:`streams.ordering`
holds each change until its transaction's ``END`` and all its changes are in, and
releases transactions in commit order. Per entity, the raw partitions (by primary key)
keep Kafka's order.

One owner. The state is partly keyed by entity (dedupe, stock per product, orders per
order) and partly needed by every record (crosswalk, customer index, SKUs), and source
order needs every table of a transaction in one place, so one worker reads every
partition and holds every table (one partition each, a batch's writes committed
together, see :mod:`streams.tables`). :class:`~streams.assignment.SingleOwnerAssignor`
gives all partitions to one member of the group; the others stand by and one of them
takes over (tables restored from their changelogs, offsets from the group) when the
owner leaves or dies. Correct with 1..N workers.

Keys and values. Raw messages are read as bytes (``raw`` serializers) and decoded with
:class:`schemas.serde.AvroSerde`. Canonical events are Avro (Confluent wire format)
against :mod:`schemas.canonical`, subject ``canonical.<entity>-value``
(TopicNameStrategy, BACKWARD); the key is the entity key ``<system>:<id>`` as plain
UTF-8 (Kafka's ``StringSerializer`` format), so the default murmur2 partitioner keeps
each entity on one partition and every client can read the key; it needs no schema (the
value carries every id). Each canonical message has header ``erpcrm.output_id`` = its
``event_id``.

Batches. Faust's consumer fetches the messages and hands each fetched set to the intake
whole (:mod:`streams.fetch`); :mod:`streams.intake` keeps them in a bounded buffer
(Faust's backpressure, no per-message ``Event`` or stream loop) and ``process`` takes up
to ``batch_size`` of them at a time (waiting at most ``linger_ms`` for more once the
first is in) and waits for Kafka's acknowledgements once per batch, not per message. It
decides the messages of a batch one after the other, each against the
committed state plus the writes of the ones before it
(:class:`~streams.state.StagedState`), so its decisions are those of one message at a
time. The processor's clock is the time the batch was read (never earlier than the
previous batch's), the moment the worker saw its messages. A batch's messages are
acknowledged in Faust's consumer (their offsets may be committed) only once the batch is
done.

Guarantees and their order (``at_least_once``, the default), per batch:

1. the processor computes outputs and state writes without changing state;
2. the outputs are published and every one acknowledged (``acks=all``);
3. only then are the state writes committed: sent to the tables' changelogs and
   acknowledged, then written to the local stores (:mod:`streams.tables`);
4. the batch's messages are acknowledged in Faust's consumer, so Faust's commit loop
   may commit this batch's offsets (:class:`streams.intake.BatchIntake`).

A rebalance waits for the batch in flight (Faust's ``stream_wait_empty``): it finishes
and is acknowledged, and its offsets are committed before the partitions go; messages
still buffered are dropped and read again by the next owner. A crash before 3 replays
the batch: its outputs are recomputed, nothing is lost. A
crash after 2 (outputs out, state not, or a changelog that lost its tail) would publish
an event again; so when a worker takes the partitions over it reads the last
``recent_outputs`` messages of every canonical and dead-letter partition and never
publishes an ``erpcrm.output_id`` seen there again. Together: no loss, no event id
twice, as long as fewer than ``recent_outputs`` messages per output partition fall
between two offset commits (one second by default, plus a batch). Faust's
``exactly_once`` is refused at start (:data:`streams.settings.EXACTLY_ONCE_REFUSED`):
outputs and changelogs go through the worker's own producer, outside Faust's
transactions, and Faust's transactional mode skips the tables' restore.

Transient failures (schema registry, Kafka) are retried with exponential backoff and
counted; bad data never stops the worker (dead letters, see :mod:`streams.dlq`) unless
the policy is ``fail``.

Local state. Each table is also kept in a local RocksDB store under ``data_dir``, a
cache of its changelog. Before Faust opens them, stores that are ahead of their changelogs
(a reset or restored Kafka cluster, a deleted topic) are removed with a warning and Faust
rebuilds those tables from the changelogs instead of stopping with a ``ConsistencyError``
(see :mod:`streams.stores`).

Web server (Faust's, on ``web_host:web_port``, loopback by default): ``/metrics``
(Prometheus), ``GET /inventory`` (every product's stock) and ``GET /inventory/{sku}``,
read from the inventory table of the worker that owns the partitions.

Run it with ``erpcrm streams`` or ``faust -A streams.app worker``; importing this module
connects nowhere: the module-level ``app`` is built from :class:`StreamsSettings` on
first access.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import faust
from aiokafka.errors import KafkaError, KafkaTimeoutError  # type: ignore[import-untyped]
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient
from faust.types import TP, Message
from faust.web import Request, Response, View
from mode import CrashingSupervisor
from mode.types.signals import BaseSignalT
from prometheus_client import CollectorRegistry, generate_latest

from schemas.canonical import canonical_schema
from schemas.deadletter import replay_count
from schemas.dlq_topics import ensure_dead_letter_topic
from schemas.errors import RetriableError
from schemas.horizon import (
    STREAMS_HORIZON_TOPIC,
    SourceHorizon,
    ensure_horizon_topic,
    horizon_schema,
)
from schemas.mapping import Flow, load_mappings
from schemas.serde import AvroSerde, RegistryClient, WriterSchema
from schemas.settings import KafkaSettings
from schemas.topic_admin import wait_for_broker
from schemas.topics import CANONICAL_TOPICS, QUALITY_TOPIC, value_subject
from streams import dlq
from streams.assignment import SingleOwnerAssignor
from streams.fetch import BatchApp
from streams.intake import BatchIntake, FaustOffsets, InputTopics, IntakeBuffer
from streams.metrics import StreamsMetrics
from streams.outcome import H_KIND, KIND_TICK, Count, Inbound, Kind, Outbound, Outcome, Tally
from streams.processor import StreamProcessor
from streams.producer import BatchSender, KafkaBatchSender, Record
from streams.recovery import StreamsTableManager
from streams.scheduling import ProducedOrder
from streams.settings import StreamsSettings
from streams.state import TABLES, StagedState
from streams.stores import discard_stores_ahead
from streams.tables import CommittedState, FaustState

__all__ = [
    "BatchClock",
    "KafkaPublisher",
    "Publisher",
    "StreamRunner",
    "StreamsApp",
    "build",
    "control_inbound",
    "create_app",
    "load_recent_outputs",
    "raw_inbound",
    "tune_collector",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

OUTPUT_TOPICS = (*CANONICAL_TOPICS, dlq.DLQ_TOPIC, QUALITY_TOPIC)
"""Every topic the ``process`` task writes."""


# ---------------------------------------------------------------------- publishing


class Publisher(Protocol):
    """Sends outbound messages and returns once Kafka acknowledged every one."""

    async def publish(self, messages: Sequence[Outbound]) -> None:
        """Publish ``messages`` (in order per partition) and wait for their acks."""
        ...


class KafkaPublisher:
    """Publishes a batch's outbound messages (``acks=all``), waiting once for every ack.

    Through the worker's :class:`~streams.producer.BatchSender` (librdkafka), not Faust's
    producer: handing a record to librdkafka costs microseconds where Faust's producer
    costs tens of them. Every message also gets header
    ``erpcrm.app_id``: which worker published it. Nothing is sent before :meth:`open`:
    the output topics must exist first (a record for a topic that does not exist yet
    would wait for it).
    """

    def __init__(self, sender: BatchSender, app_id: str) -> None:
        self._sender = sender
        self._stamp = (dlq.H_APP_ID, app_id.encode("utf-8"))
        self._opened = asyncio.Event()

    def open(self) -> None:
        """The output topics exist: publishing may start."""
        self._opened.set()

    async def publish(self, messages: Sequence[Outbound]) -> None:
        """Send every message, then wait until each is acknowledged."""
        await self._opened.wait()
        stamp = self._stamp
        await self._sender.send_all(
            [
                Record(message.topic, message.key, message.value, None, [*message.headers, stamp])
                for message in messages
            ]
        )


def load_recent_outputs(
    kafka: KafkaSettings,
    topics: Sequence[str],
    window: int,
    app_id: str,
    *,
    timeout_s: float = 30.0,
) -> set[str]:
    """Return the ``erpcrm.output_id`` s ``app_id`` published in the last ``window`` messages.

    Reads the tail of every partition of ``topics``; messages other apps published
    there do not count. Blocking (run it in an executor). Topics that do not exist yet
    have published nothing.

    Raises:
        RetriableError: Kafka could not be read within ``timeout_s``.
    """
    if window <= 0:
        return set()
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": "erpcrm-streams-recent-outputs",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                # a tail of every output partition, not librdkafka's default read-ahead
                # (up to 64 MiB), which the process would keep
                "queued.max.messages.kbytes": 1024,
            }
        )
    )
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
        ends: dict[tuple[str, int], int] = {}
        start: list[TopicPartition] = []
        for topic in topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                continue
            for partition in found.partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s
                )
                if high > low:
                    ends[(topic, partition)] = high
                    start.append(TopicPartition(topic, partition, max(low, high - window)))
        ids: set[str] = set()
        if not start:
            return ids
        consumer.assign(start)
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise RetriableError(f"reading recent outputs timed out; {len(ends)} left")
            message = consumer.poll(0.5)
            if message is None:
                continue
            where = (str(message.topic()), int(message.partition() or 0))
            error = message.error()
            if error is not None:
                if error.code() == ConfluentKafkaError._PARTITION_EOF:
                    ends.pop(where, None)
                    continue
                raise RetriableError(f"reading recent outputs: {error}")
            headers = dict(message.headers() or ())
            output_id, publisher = headers.get(dlq.H_OUTPUT_ID), headers.get(dlq.H_APP_ID)
            if isinstance(output_id, bytes) and publisher == app_id.encode("utf-8"):
                ids.add(output_id.decode("ascii", errors="replace"))
            if int(message.offset() or 0) + 1 >= ends.get(where, 0):
                ends.pop(where, None)
        return ids
    except KafkaException as exc:
        raise RetriableError(f"reading recent outputs: {exc}") from exc
    finally:
        consumer.close()


# ------------------------------------------------------------------------ running


def _transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying: registry or Kafka unavailable for a while."""
    if isinstance(exc, RetriableError | KafkaTimeoutError | asyncio.TimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


def raw_inbound(message: Any, now_ms: int) -> Inbound:
    """A message read from a raw topic: its position is its own; ``now_ms``: when read."""
    origin = dlq.Origin(message.topic, message.partition, message.offset)
    return Inbound(origin, message.key, message.value, now_ms)


def control_inbound(message: Any, now_ms: int) -> Inbound:
    """A message of the control topic: a tick, or a raw message put back with its origin.

    A replayed dead letter carries its original position and its replay count (``erpcrm
    dlq replay``); a message without origin headers keeps its own position (and is
    counted as unrouted by the processor).
    """
    headers = dlq.text_headers(message.headers)
    here = dlq.Origin(message.topic, message.partition, message.offset)
    if headers.get(H_KIND) == KIND_TICK.decode():
        return Inbound(here, None, None, now_ms, Kind.TICK)
    try:
        origin = dlq.Origin(
            headers[dlq.H_ORIGIN_TOPIC],
            int(headers[dlq.H_ORIGIN_PARTITION]),
            int(headers[dlq.H_ORIGIN_OFFSET]),
        )
    except (KeyError, ValueError):
        origin = here
    return Inbound(origin, message.key, message.value, now_ms, replays=replay_count(headers))


class BatchClock:
    """The processor's clock: when a batch was read, in ms, never going back."""

    def __init__(self) -> None:
        self._last = 0

    def now_ms(self) -> int:
        """The current time, or the last one returned if the wall clock went back."""
        self._last = max(self._last, int(time.time() * 1000))
        return self._last


@dataclass
class StreamRunner:
    """A batch of inbound messages at a time: process, publish and wait, then commit state.

    See the module docstring for why the steps are in this order.
    """

    processor: StreamProcessor
    state: CommittedState
    publisher: Publisher
    metrics: StreamsMetrics
    generation: Callable[[], int]
    recent_loader: Callable[[], Awaitable[set[str]]] | None = None
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    recent: set[str] = field(default_factory=set)
    loaded_generation: int | None = field(default=None, init=False)

    async def handle(self, message: Inbound) -> None:
        """Process one message completely: a batch of one."""
        await self.handle_batch([message])

    async def handle_batch(self, messages: Sequence[Inbound]) -> None:
        """Process ``messages`` completely (or raise: the worker stops, offsets uncommitted)."""
        started = time.monotonic()
        await self._ready()

        async def decide() -> tuple[list[Outcome], StagedState]:
            staged = StagedState(self.state)
            outcomes = []
            for message in messages:
                outcome = self.processor.process(message, staged)
                staged.stage(outcome.writes)
                outcomes.append(outcome)
            return outcomes, staged

        # 1. decide every message in order, each seeing the writes of those before it;
        #    nothing changes yet, and a transient failure restarts from the first message;
        outcomes, staged = await self.retrying("process", decide, rollback=True)
        to_publish = [self._not_yet_published(outcome) for outcome in outcomes]
        outbound = [message for out in to_publish for message in out]
        # 2. publish all of the batch's outputs and wait for every acknowledgement, once;
        await self.retrying("publish", partial(self.publisher.publish, outbound))
        # 3. only then change state: each key once, to the last value the batch gave it,
        #    in the changelogs (acknowledged), then in the local stores;
        await self.retrying("commit", partial(self.state.commit, staged.text_writes()))
        # 4. what the batch decided may now move the systems' decided horizons;
        self.processor.settle_horizons(int(time.time() * 1000))
        # 5. the offsets follow when the intake acknowledges the batch (see the module doc).
        self.metrics.batch_messages.observe(len(messages))
        self._observe(outcomes, outbound, started)

    async def _ready(self) -> None:
        """After (re)assignment: reload caches from the tables, learn recent outputs."""
        generation = self.generation()
        if self.loaded_generation == generation:
            return

        async def recover() -> None:
            self.state.forget()  # the stores may have been restored meanwhile
            self.processor.load(self.state)
            if self.recent_loader is not None:
                self.recent = await self.recent_loader()

        await self.retrying("recover", recover)
        self.loaded_generation = generation
        log.info(
            "streams state loaded (generation %d); %d recent outputs known",
            generation,
            len(self.recent),
        )

    def _not_yet_published(self, outcome: Outcome) -> list[Outbound]:
        kept = []
        for message in outcome.outbound:
            if message.output_id in self.recent:
                log.info("already published before a restart, not again: %s", message.output_id)
                for counted in message.counts:
                    outcome.tally[counted] -= 1
                if message.counts:
                    continue  # a data-quality entry: its record is accounted for itself
                flow = message.flow or "-"
                if message.event is not None:
                    outcome.tally.add(Count.EVENTS_OUT, flow, n=-1)
                outcome.tally.add(Count.DEDUPED, flow)
                continue
            kept.append(message)
        return kept

    def _observe(
        self, outcomes: Sequence[Outcome], outbound: Sequence[Outbound], started: float
    ) -> None:
        """Count a batch once it is committed: its tallies summed, one metric call per label set."""
        metrics = self.metrics
        tally = Tally()
        for outcome in outcomes:
            tally.update(outcome.tally)
        metrics.record(tally)
        now = time.time()
        observe_lag = metrics.source_to_publish_seconds.observe
        for message in outbound:
            if message.event is not None:
                lag = now - int(message.event.record["source_ts_ms"]) / 1000
                observe_lag(max(0.0, lag))
            elif message.dead_letter is not None:
                letter = message.dead_letter
                log.warning("dead letter %s: %s", letter.origin, letter.message)
        for outcome in outcomes:
            for warning in outcome.warnings:
                log.warning("%s", warning)
        metrics.pending.set(self.processor.pending_count)
        # per inbound message, as before: the batch's wall time is each message's
        elapsed = time.monotonic() - started
        for _ in outcomes:
            metrics.processing_seconds.observe(elapsed)

    async def retrying(
        self, stage: str, step: Callable[[], Awaitable[T]], *, rollback: bool = False
    ) -> T:
        """Run ``step`` until it succeeds, backing off after each transient failure.

        Other failures propagate (the worker stops; the message's offset stays
        uncommitted). ``rollback``: undo the processor's cache changes before a retry.
        """
        delay = self.retry_initial_s
        while True:
            try:
                return await step()
            except Exception as exc:
                if not _transient(exc):
                    raise
                self.metrics.retries.labels(stage).inc()
                log.warning("streams %s: transient failure, retry in %.1fs: %s", stage, delay, exc)
                if rollback:
                    self.processor.rollback(self.state)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)


# ---------------------------------------------------------------------------- app


@dataclass
class StreamsApp:
    """The Faust app and the parts tests and the CLI need to reach."""

    app: faust.App
    settings: StreamsSettings
    processor: StreamProcessor
    runner: StreamRunner
    metrics: StreamsMetrics
    registry: CollectorRegistry
    state: CommittedState
    tables: Mapping[str, Any]
    control: Any
    inputs: InputTopics
    process_batch: Callable[[Sequence[Message]], Awaitable[None]]

    def run(self) -> None:
        """Run the Faust worker until SIGTERM/SIGINT (which stop it cleanly); exits the process.

        Prepares the app the way ``faust -A streams.app worker`` does. Started while
        Kafka is away, it waits for the broker first (Faust's consumer would give up on
        its first bootstrap and the process exit).
        """
        # our own warnings say the broker is away; not librdkafka's per connect attempt
        probe = AdminClient(self.settings.kafka.client_config(log_level=2))
        wait_for_broker(probe, "streams", log)
        probe.poll(0)  # what it reported, before it goes (unpolled, it would pile up)
        del probe
        # Faust creates only the last level of its data directory.
        self.settings.table_dir.mkdir(parents=True, exist_ok=True)
        self.app.finalize()
        self.app.worker_init()
        self.app.worker_init_post_autodiscover()
        tune_collector(self.settings.gc_threshold)
        worker = faust.Worker(
            self.app,
            loglevel=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            override_logging=False,
            redirect_stdouts=False,
        )
        worker.execute_from_commandline()


def tune_collector(threshold: int) -> None:
    """Set up Python's garbage collector for a worker that is about to start processing.

    What start-up made (modules, the app, its tables) is frozen out of the collections
    (``gc.freeze``): it lives as long as the process, and every full collection walked
    it again. ``threshold`` (0: Python's own) becomes the youngest generation's
    threshold: records, dictionaries and tuples are made and dropped by the thousand per
    batch, and at Python's 700 the collector ran every few records, its older
    generations walking everything the worker holds (see
    :attr:`~streams.settings.StreamsSettings.gc_threshold`). Only cyclic garbage waits
    longer for its collection; reference counting frees the rest as before.
    """
    gc.collect()
    gc.freeze()
    if threshold > 0:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(threshold, older, oldest)


def _encoder(serde: AvroSerde) -> Callable[[str, dict[str, Any]], bytes]:
    writers: dict[str, WriterSchema] = {}

    def encode(entity: str, record: dict[str, Any]) -> bytes:
        writer = writers.get(entity)
        if writer is None:
            topic = f"canonical.{entity}"
            writer = writers[entity] = serde.prepare(value_subject(topic), canonical_schema(entity))
        return AvroSerde.encode_with(writer, record)

    return encode


def _check_stores_at_start(app: faust.App, kafka: KafkaSettings, tables: Mapping[str, Any]) -> None:
    """Before Faust opens the tables' stores, discard those ahead of their changelogs.

    Runs on ``on_worker_init``, which both ``StreamsApp.run`` and ``faust -A streams.app
    worker`` send before the worker starts (see :mod:`streams.stores`).
    """

    def discard(_sender: Any, /, *_args: Any, signal: BaseSignalT[Any], **_kwargs: Any) -> None:
        changelogs = {
            name: table.changelog_topic.get_topic_name() for name, table in tables.items()
        }
        discard_stores_ahead(Path(app.conf.tabledir), changelogs, kafka)

    app.on_worker_init.connect(discard)


def build(
    settings: StreamsSettings,
    *,
    serde: AvroSerde | None = None,
    registry: CollectorRegistry | None = None,
    flows: Mapping[str, Flow] | None = None,
    state: CommittedState | None = None,
    publisher: Publisher | None = None,
    changelog: BatchSender | None = None,
    read_recent_outputs: bool = True,
) -> StreamsApp:
    """Build the worker: Faust app, tables, batch intake, timer and web views.

    Builds only; nothing connects until the app runs. ``state`` replaces the Faust
    tables, ``publisher`` the publishing of outputs and ``changelog`` the sender of the
    tables' changelog records (tests); ``read_recent_outputs`` False skips reading the
    output topics on assignment (tests).
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = StreamsMetrics.create(registry)
    if serde is None:
        serde = AvroSerde(RegistryClient(settings.registry.url))
    processor = StreamProcessor(
        flows if flows is not None else load_mappings(),
        decode=serde.decode,
        encode=_encoder(serde),
        prefixes=settings.topic_prefixes,
        dlq_policy=settings.dlq_policy,
        echo_origins=settings.echo_origins,
        assembly_timeout_ms=int(settings.assembly_timeout_seconds * 1000),
        snapshot_settle_ms=int(settings.snapshot_settle_seconds * 1000),
        reference_wait_ms=int(settings.reference_wait_seconds * 1000),
        tick_limit=settings.tick_limit,
    )
    app = BatchApp(
        settings.app_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka.bootstrap.split(",")],
        store=settings.store,
        datadir=str(settings.table_dir),
        processing_guarantee=settings.processing_guarantee,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_seconds,
        consumer_metadata_max_age_ms=int(settings.metadata_refresh_seconds * 1000),
        consumer_group_instance_id=settings.instance_id or None,
        broker_session_timeout=settings.session_timeout_seconds,
        producer_acks=-1,
        producer_linger=settings.producer_linger_ms / 1000,
        producer_max_batch_size=settings.producer_batch_bytes,
        agent_supervisor=CrashingSupervisor,
        PartitionAssignor=SingleOwnerAssignor,
        ConsumerScheduler=ProducedOrder,
        stream_buffer_maxsize=settings.buffer_size,
        consumer_max_fetch_size=settings.fetch_bytes,
        TableManager=StreamsTableManager,
        autodiscover=False,
    )
    # One partition each: one worker owns every partition (see streams.assignment).
    rocksdb = settings.store.startswith("rocksdb")
    tables = {
        name: app.Table(
            name,
            partitions=1,
            key_type=str,
            help=f"streams state: {name}",
            options={"driver": "rocksdict", **settings.rocksdb_options} if rocksdb else None,
        )
        for name in TABLES
    }
    if rocksdb:
        _check_stores_at_start(app, settings.kafka, tables)
    sender = KafkaBatchSender(
        settings.kafka,
        linger_ms=settings.producer_linger_ms,
        batch_bytes=settings.producer_batch_bytes,
    )
    committed: CommittedState = (
        FaustState(tables, sender if changelog is None else changelog, shared_values=not rocksdb)
        if state is None
        else state
    )
    kafka_publisher = KafkaPublisher(sender, settings.app_id) if publisher is None else None
    outbound: Publisher = kafka_publisher or cast(Publisher, publisher)
    control = app.topic(
        settings.control_topic,
        partitions=1,
        internal=True,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    buffer: IntakeBuffer[Message] = IntakeBuffer(settings.buffer_size)
    inputs = InputTopics(
        app,
        buffer=buffer,
        topics=[*processor.topics, settings.control_topic],
        internal=True,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.topics.add(inputs)  # subscribed by Faust's conductor; read by ``process`` below
    app.intake = inputs  # fetched sets of its topics go into its buffer whole (streams.fetch)
    outputs = [
        app.topic(name, partitions=settings.partitions, internal=True) for name in OUTPUT_TOPICS
    ]

    async def recent_outputs() -> set[str]:
        loop = asyncio.get_running_loop()
        read = partial(
            load_recent_outputs,
            settings.kafka,
            OUTPUT_TOPICS,
            settings.recent_outputs,
            settings.app_id,
        )
        return await loop.run_in_executor(None, read)

    runner = StreamRunner(
        processor=processor,
        state=committed,
        publisher=outbound,
        metrics=metrics,
        generation=lambda: int(app.consumer_generation_id),
        recent_loader=recent_outputs if read_recent_outputs else None,
        retry_initial_s=settings.retry_initial_seconds,
        retry_max_s=settings.retry_max_seconds,
    )

    clock = BatchClock()
    busy = False
    """A batch is being decided, published or committed."""
    horizon_writer: list[WriterSchema] = []
    published: dict[str, SourceHorizon] = {}

    async def send_tick() -> None:
        """Put a tick into the control topic (decided in turn with the data)."""
        await control.send(key=b"tick", value=b"", headers=[(H_KIND, KIND_TICK)])

    async def process_batch(batch: Sequence[Message]) -> None:
        """Decide, publish and commit one batch of raw and control messages (StreamRunner)."""
        nonlocal busy
        now_ms = clock.now_ms()
        messages = [
            control_inbound(message, now_ms)
            if message.topic == settings.control_topic
            else raw_inbound(message, now_ms)
            for message in batch
        ]
        busy = True
        try:
            await runner.handle_batch(messages)
        finally:
            busy = False
        metrics.count_consumed(messages)
        if processor.round_unfinished and any(m.kind is Kind.TICK for m in messages):
            await send_tick()  # the round's next keys, at once

    async def process() -> None:
        """Take the raw and control messages a batch at a time (see :mod:`streams.intake`)."""
        # cleared with Faust's stream queues on every rebalance (and when the flow resumes,
        # see streams.recovery); nothing is delivered before the first resume (Faust's
        # flow control starts suspended), so registering here misses no clear
        app.flow_control.manage_queue(cast(Any, buffer))
        intake = BatchIntake(
            buffer,
            FaustOffsets(app),
            app.flow_control,
            lambda: int(app.consumer_generation_id),
            batch_size=settings.batch_size,
            linger_s=settings.linger_ms / 1000,
        )
        await intake.run(process_batch)

    async def tick() -> None:
        """Put a tick into the control topic while this worker owns pending work.

        Also right after the worker took the partitions over, so the state is loaded (and
        what was pending resumes) even when no change arrives.
        """
        owner = TP(settings.control_topic, 0) in app.assignor.assigned_actives()
        unloaded = runner.loaded_generation != app.consumer_generation_id
        if owner and (processor.has_pending or unloaded):
            await send_tick()

    async def caught_up(topics: frozenset[str]) -> bool:
        """Whether every assigned partition of ``topics`` is decided up to its end.

        The ends are asked of the broker now; every record the consumer handed over is
        decided once the buffer is empty and no batch is in flight.
        """
        if busy or not buffer.empty():
            return False
        consumer = app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in topics]
        if not tps:
            return False
        ends = await consumer.highwaters(*tps)
        for tp in tps:
            end = ends.get(tp)
            position = await consumer.position(tp)
            if end is None or position is None or position < end:
                return False
        return not busy and buffer.empty()

    async def publish_horizons() -> None:
        """Publish each source system's ripe decided horizon while caught up on it."""
        sender.serve_reports()  # every turn (a second), whether or not it publishes
        owner = TP(settings.control_topic, 0) in app.assignor.assigned_actives()
        if not owner or not horizon_writer or runner.loaded_generation is None:
            return
        now = time.time()
        topics = processor.system_topics
        records = []
        for system, horizon in processor.ripe_horizons(int(now * 1000)).items():
            if not await caught_up(topics.get(system, frozenset())):
                continue
            stamped = SourceHorizon(system, horizon.lsn, horizon.commit_ts_ms, int(now * 1000))
            value = AvroSerde.encode_with(horizon_writer[0], stamped.as_record())
            records.append(Record(STREAMS_HORIZON_TOPIC, system.encode("utf-8"), value))
            published[system] = stamped
        if records:
            try:
                await sender.send_all(records)
            except Exception as exc:  # the next turn publishes a newer one
                log.warning("streams: horizons not published: %s", exc)
        for system, horizon in published.items():
            age = max(0.0, now - horizon.commit_ts_ms / 1000)
            metrics.horizon_age_seconds.labels(system).set(age)

    async def prepare() -> None:
        """Create the output topics and register the canonical schemas, retrying."""

        async def declare() -> None:
            # The dead-letter topic first, so Faust finds it made with unlimited retention.
            await asyncio.get_running_loop().run_in_executor(
                None,
                partial(
                    ensure_dead_letter_topic,
                    settings.kafka,
                    dlq.DLQ_TOPIC,
                    partitions=settings.partitions,
                ),
            )
            for topic in outputs:
                await topic.maybe_declare()
            for name in CANONICAL_TOPICS:
                serde.prepare(value_subject(name), canonical_schema(name.split(".", 1)[1]))
            if kafka_publisher is not None:
                await asyncio.get_running_loop().run_in_executor(
                    None, ensure_horizon_topic, settings.kafka
                )
                horizon_writer[:] = [
                    serde.prepare(value_subject(STREAMS_HORIZON_TOPIC), horizon_schema())
                ]

        await runner.retrying("prepare", declare)
        if kafka_publisher is not None:
            kafka_publisher.open()

    # Faust's task and timer decorators are untyped; registered by call instead.
    app.timer(settings.tick_seconds)(tick)
    app.timer(settings.horizon_seconds)(publish_horizons)
    app.task(prepare)
    app.task(process)

    @app.page("/metrics")
    async def metrics_view(view: View, request: Request) -> Response:
        """Prometheus metrics of this worker."""
        return view.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    @app.page("/inventory")
    async def inventory_list(view: View, request: Request) -> Response:
        """Every product's stock: on hand, reserved, available, per location."""
        return view.json({"items": processor.inventory(committed)})

    @app.page("/inventory/{sku}")
    async def inventory_item(view: View, request: Request, sku: str) -> Response:
        """One product's stock, by SKU (404 when the worker knows no stock for it)."""
        items = processor.inventory(committed, sku)
        if not items:
            return view.json({"error": "no stock known for this SKU", "sku": sku}, status=404)
        return view.json(items[0])

    return StreamsApp(
        app=app,
        settings=settings,
        processor=processor,
        runner=runner,
        metrics=metrics,
        registry=registry,
        state=committed,
        tables=tables,
        control=control,
        inputs=inputs,
        process_batch=process_batch,
    )


def create_app(settings: StreamsSettings | None = None) -> faust.App:
    """Return the Faust app for ``settings`` (default: read from the environment)."""
    return build(settings if settings is not None else StreamsSettings()).app


_app: faust.App | None = None


def __getattr__(name: str) -> Any:
    """Build the module-level ``app`` on first access (``faust -A streams.app worker``)."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
