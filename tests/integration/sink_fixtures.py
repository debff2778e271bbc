"""The whole pipeline on the real stack: both captures, the streams worker, both sinks.

Isolation from the rest of the suite: the captures use their own slots and topic
prefixes, the streams worker its own app id, and each sink its own consumer group and
sync-state schema (made by the test, owned by the sink role), starting at the canonical
topics' current end; so the pipeline applies exactly what it captured itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql

from cdc.settings import DEFAULT_TABLES
from schemas.mapping import load_mappings, ownership
from schemas.topics import CANONICAL_TOPICS
from sinks.postgres import PostgresUpsertSink
from sinks.targets import Direction, build_tables
from tests.integration.cdc_fixtures import (
    Capture,
    CliProcess,
    execute,
    unique_name,
    wait_for,
)
from tests.integration.test_streams import StreamsProcess

__all__ = [
    "Pipeline",
    "SinkProcess",
    "direct_sink",
    "disown",
    "newest_records",
    "read_to_end",
    "sink_source",
    "watermarks",
]


@contextlib.contextmanager
def direct_sink(
    env: dict[str, str],
    target: str,
    entities: tuple[str, ...],
    *,
    announce: bool,
    prefix: str = "sink",
) -> Iterator[PostgresUpsertSink]:
    """A sink in this process applying ``entities`` into ``target`` (no Kafka, no runner).

    Its sync-state schema (``prefix`` and a fresh suffix) and replication origin are its
    own, made for it and dropped afterwards; the rows it wrote to the target are the
    test's to remove.
    """
    admin = env[f"{target.upper()}_ADMIN_DSN"]
    schema = unique_name(prefix)
    execute(
        admin, sql.SQL("CREATE SCHEMA {} AUTHORIZATION erpcrm_sink").format(sql.Identifier(schema))
    )
    flows = load_mappings()
    direction = Direction.ERP_TO_CRM if target == "crm" else Direction.CRM_TO_ERP
    tables = {t.entity: t for t in build_tables(flows).values() if t.direction is direction}
    applying = PostgresUpsertSink(
        target=target,
        dsn=env[f"{target.upper()}_SINK_DSN"],
        tables={e: tables[e] for e in entities},
        ownership={e: ownership(flows, e) for e in entities},
        topics=tuple(f"canonical.{e}" for e in entities),
        origin=unique_name("origin"),
        schema=schema,
        announce=announce,
    )
    applying.setup()
    try:
        yield applying
    finally:
        applying.close()
        execute(admin, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        execute(
            admin,
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin "
            "WHERE roname = %s",
            (applying._origin,),
        )


def disown(admin_dsn: str, sink: PostgresUpsertSink, entity: str, row_id: Any) -> None:
    """Forget the owner of one target row in ``sink``'s sync state.

    As in a sync state made before row owners were kept: the next record written there
    owns the row (:class:`sinks.state.RowOwner`). For tests of what happens on a row
    no live record owns (two records meeting on it in one batch).
    """
    execute(
        admin_dsn,
        sql.SQL("UPDATE {} SET owner_key = NULL WHERE entity = %s AND row_id = %s").format(
            sql.Identifier(sink._schema, "row_clock")
        ),
        (entity, str(row_id)),
    )


def _high(consumer: Consumer, tp: TopicPartition, timeout: float = 60.0) -> int:
    """A partition's high watermark; waits while a new topic's leader is being elected."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def watermarks(
    bootstrap: str, topics: tuple[str, ...] = CANONICAL_TOPICS
) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of ``topics``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("wm")})
    try:
        metadata = consumer.list_topics(timeout=10)
        result = {}
        for topic in topics:
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                continue
            for partition in described.partitions:
                result[(topic, partition)] = _high(consumer, TopicPartition(topic, partition))
        return result
    finally:
        consumer.close()


class SinkProcess(CliProcess):
    """``erpcrm sink --target …`` as a subprocess with its own group, schema and port."""

    def __init__(self, stack_env: dict[str, str], target: str, log_dir: Path) -> None:
        super().__init__(stack_env, log_dir)
        self.target = target
        self.uid = unique_name(f"sink{target}")
        self.schema = self.uid

    @property
    def admin_dsn(self) -> str:
        return self.stack_env[f"{self.target.upper()}_ADMIN_DSN"]

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.uid}-{self.runs}.log"

    def create_schema(self) -> None:
        execute(
            self.admin_dsn,
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION erpcrm_sink").format(
                sql.Identifier(self.schema)
            ),
        )

    def start(self) -> SinkProcess:
        self.launch(
            ["sink", "--target", self.target],
            {
                "ERPCRM_KAFKA__BOOTSTRAP": self.stack_env["KAFKA_BOOTSTRAP"],
                "ERPCRM_REGISTRY__URL": self.stack_env["SCHEMA_REGISTRY_URL"],
                "ERPCRM_SINK_DSN": self.stack_env[f"{self.target.upper()}_SINK_DSN"],
                "ERPCRM_SINK_SYNC_SCHEMA": self.schema,
                "ERPCRM_SINK_GROUP_ID": self.uid,
                "ERPCRM_SINK_METRICS_PORT": str(self.port),
                "ERPCRM_SINK_START_AT": "latest",
                "ERPCRM_SINK_REFERENCE_WAIT_SECONDS": self.stack_env.get(
                    "ERPCRM_SINK_REFERENCE_WAIT_SECONDS", "20"
                ),
                "ERPCRM_SINK_CLOCK_WAIT_SECONDS": self.stack_env.get(
                    "ERPCRM_SINK_CLOCK_WAIT_SECONDS", "45"
                ),
            },
        )
        return self

    def wait_assigned(self, timeout: float = 90.0) -> SinkProcess:
        def assigned() -> bool:
            if not self.running:
                raise AssertionError(f"sink {self.target} exited:\n{self.tail()}")
            return "assigned" in self.log_path.read_text(errors="replace")

        wait_for(assigned, timeout, f"the {self.target} sink's partitions", interval=0.3)
        return self

    def total(self, outcome: str) -> float:
        """Events of ``outcome`` over every entity (0 while the worker is down)."""
        try:
            samples = self.metrics()
        except httpx.HTTPError:
            return 0.0
        return sum(
            value
            for (name, labels), value in samples.items()
            if name == "erpcrm_sink_events_total" and ("outcome", outcome) in labels
        )

    def held(self) -> float:
        """Events the sink holds back (waiting for a row clock or a reference); -1 while
        the worker is down."""
        try:
            return self.metric("erpcrm_sink_deferred_events", target=self.target)
        except httpx.HTTPError:
            return -1.0

    def query(self, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
        """Run ``query`` on the target as admin; ``{schema}`` is this sink's sync schema."""
        if isinstance(query, str):
            query = sql.SQL(query).format(schema=sql.Identifier(self.schema))
        return execute(self.admin_dsn, query, params)

    def cleanup(self) -> None:
        self.stop(timeout=30)
        with contextlib.suppress(Exception):
            execute(
                self.admin_dsn,
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)),
            )
        admin = AdminClient({"bootstrap.servers": self.stack_env["KAFKA_BOOTSTRAP"]})
        for future in admin.delete_consumer_groups([self.uid], request_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)


class Pipeline:
    """Both captures, the streams worker and both sinks, started in dependency order."""

    def __init__(self, stack_env: dict[str, str], log_dir: Path) -> None:
        self.stack_env = stack_env
        self.erp = Capture(stack_env, "erp", (), log_dir)
        self.crm = Capture(stack_env, "crm", (), log_dir)
        # The captures take their default tables; their prefix is their slot name.
        self.erp.tables = ()
        self.crm.tables = ()
        self.streams = StreamsProcess(
            stack_env, {"erp": self.erp.prefix, "crm": self.crm.prefix}, log_dir
        )
        self.sinks = {t: SinkProcess(stack_env, t, log_dir) for t in ("crm", "erp")}
        self.start_positions: dict[tuple[str, int], int] = {}

    @property
    def crm_sink(self) -> SinkProcess:
        return self.sinks["crm"]

    @property
    def erp_sink(self) -> SinkProcess:
        return self.sinks["erp"]

    def start(self) -> Pipeline:
        # The streams worker makes the canonical topics; on a fresh stack they do not
        # exist yet, and the sinks' positions are pinned when they are first assigned.
        admin = AdminClient({"bootstrap.servers": self.stack_env["KAFKA_BOOTSTRAP"]})
        missing = set(CANONICAL_TOPICS) - set(admin.list_topics(timeout=10).topics)
        if missing:
            created = admin.create_topics([NewTopic(t, num_partitions=3) for t in missing])
            for future in created.values():
                with contextlib.suppress(Exception):  # made meanwhile by someone else
                    future.result(timeout=30)
        self.start_positions = watermarks(self.stack_env["KAFKA_BOOTSTRAP"])
        for sink in self.sinks.values():
            sink.create_schema()
            sink.start()
        for sink in self.sinks.values():
            sink.wait_assigned()
        self.erp.start()
        self.crm.start()
        self.erp.wait_streaming()
        self.crm.wait_streaming()
        self.streams.start().wait_ready()
        return self

    def settled(self, timeout: float = 120.0, quiet: float = 4.0) -> None:
        """Wait until neither sink applied anything for ``quiet`` seconds nor holds an event.

        The sinks may take as long as they need while they apply; they fail to settle
        when nothing moved for ``timeout`` seconds (events held all that time, or no
        event at all).
        """
        import time

        last: tuple[float, ...] = ()
        since = moved = time.monotonic()
        while time.monotonic() - moved < timeout:
            now = tuple(
                s.total(o)
                for s in self.sinks.values()
                for o in ("applied", "noop", "stale", "skipped")
            )
            if now != last:
                last, since, moved = now, time.monotonic(), time.monotonic()
            elif any(s.held() for s in self.sinks.values()):
                # Held events (a row clock or a reference still awaited) are work to come.
                since = time.monotonic()
            elif time.monotonic() - since >= quiet and any(last):
                return
            time.sleep(0.5)
        raise AssertionError(f"the sinks did not settle: nothing moved for {timeout:.0f}s")

    def cleanup(self) -> None:
        for sink in self.sinks.values():
            sink.stop()
        self.streams.cleanup()
        self.erp.cleanup()
        self.crm.cleanup()
        for sink in self.sinks.values():
            sink.cleanup()

    def __iter__(self) -> Iterator[SinkProcess]:
        return iter(self.sinks.values())


def sink_source(sink: SinkProcess) -> str:
    """The system whose events ``sink`` applies."""
    return "crm" if sink.target == "erp" else "erp"


def newest_records(
    stack_env: dict[str, str],
    start: dict[tuple[str, int], int],
    *,
    source: str,
    topics: tuple[str, ...] = CANONICAL_TOPICS,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per ``(entity, key)``: the newest canonical record from ``source`` since ``start``."""
    from schemas.serde import AvroSerde, RegistryClient

    serde = AvroSerde(RegistryClient(stack_env["SCHEMA_REGISTRY_URL"]))
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for message in read_to_end(stack_env["KAFKA_BOOTSTRAP"], topics, start):
        value = message.value()
        if value is None:
            continue
        record = serde.decode(value)
        if record["source_system"] != source:
            continue
        topic = str(message.topic())
        key = (topic.removeprefix("canonical."), (message.key() or b"").decode())
        if key not in newest or record["version"] >= newest[key]["version"]:
            newest[key] = record
    return newest


def read_to_end(
    bootstrap: str,
    topics: tuple[str, ...],
    start: dict[tuple[str, int], int],
    timeout: float = 120.0,
) -> Iterator[Message]:
    """Every message of ``topics`` from the positions in ``start`` (0 where none) up to
    the high watermarks when called."""
    ends = watermarks(bootstrap, topics)
    assignment = [
        TopicPartition(t, p, start.get((t, p), 0))
        for (t, p), end in ends.items()
        if end > start.get((t, p), 0)
    ]
    if not assignment:
        return
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("read"),
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign(assignment)
        remaining = {(tp.topic, tp.partition) for tp in assignment}
        deadline = time.monotonic() + timeout
        while remaining:
            assert time.monotonic() < deadline, f"could not read {sorted(remaining)} to their end"
            for message in consumer.consume(1000, 1.0):
                assert message.error() is None, message.error()
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                assert topic is not None
                assert partition is not None
                assert offset is not None
                if offset + 1 >= ends[(topic, partition)]:
                    remaining.discard((topic, partition))
                yield message
    finally:
        consumer.close()


@contextlib.contextmanager
def demo_pipeline(
    stack_env: dict[str, str],
    log_dir: Path,
    settle: Callable[[Pipeline], None] = lambda p: p.settled(timeout=180),
) -> Iterator[Pipeline]:
    """A started pipeline over the demo tables, settled by ``settle``; cleaned up after."""
    running = Pipeline(stack_env, log_dir)
    running.erp.tables = DEFAULT_TABLES["erp"]
    running.crm.tables = DEFAULT_TABLES["crm"]
    try:
        running.start()
        settle(running)
        yield running
    finally:
        running.cleanup()
