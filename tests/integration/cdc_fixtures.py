"""Helpers and fixtures for the capture's integration tests (``erpcrm cdc`` as a real process).

Every capture a test starts gets its own replication slot, topic prefix and metrics port,
so runs never see each other's events, and its slot is dropped (and its topics deleted)
at the end. Topics are read with confluent-kafka's ``Consumer`` and ``AvroDeserializer``:
what a consumer written for Debezium would use.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from cdc.offsets import OFFSETS_TOPIC

REPO = Path(__file__).resolve().parents[2]
CAPTURE_ROLE = "erpcrm_capture"
PUBLICATION = {"erp": "erpcrm_erp", "crm": "erpcrm_crm"}


def unique_name(prefix: str = "t") -> str:
    """A fresh name that is a legal slot, topic prefix and table name."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_while_progressing(
    condition: Callable[[], Any],
    progress: Callable[[], Any],
    stall: float,
    what: str,
    interval: float = 0.2,
) -> Any:
    """Poll ``condition`` until it returns something truthy, for as long as work moves.

    ``progress()`` says how far the work has come (a count, an offset, a tuple of them):
    while it keeps changing the wait goes on, however long it takes on a busy machine;
    it fails once ``progress()`` has stood still for ``stall`` seconds (the pipeline
    stalled) with the condition still false.
    """
    last = progress()
    moved = time.monotonic()
    while True:
        result = condition()
        if result:
            return result
        now = progress()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise AssertionError(
                f"waiting for {what}: no progress for {stall:.0f}s (stuck at {last!r})"
            )
        time.sleep(interval)


def execute(dsn: str, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one autocommitted statement; returns its rows (empty when it has none)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


# -- slots -------------------------------------------------------------------------------


def slot_row(admin_dsn: str, slot: str) -> tuple[bool, int] | None:
    """``(active, confirmed_flush_lsn as int)`` of ``slot``, None when it does not exist."""
    rows = execute(
        admin_dsn,
        "select active, (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint "
        "from pg_replication_slots where slot_name = %s",
        (slot,),
    )
    return (bool(rows[0][0]), int(rows[0][1] or 0)) if rows else None


def drop_slot(admin_dsn: str, slot: str, timeout: float = 30.0) -> None:
    """Drop ``slot`` once no walsender holds it (missing slots are fine)."""
    deadline = time.monotonic() + timeout
    while True:
        row = slot_row(admin_dsn, slot)
        if row is None:
            return
        if not row[0]:
            try:
                execute(admin_dsn, "select pg_drop_replication_slot(%s)", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                pass
            except psycopg.errors.UndefinedObject:
                return
        if time.monotonic() > deadline:
            # Last resort: a walsender that outlived its client.
            execute(
                admin_dsn,
                "select pg_terminate_backend(active_pid) from pg_replication_slots "
                "where slot_name = %s and active_pid is not null",
                (slot,),
            )
            deadline = time.monotonic() + timeout
        time.sleep(0.1)


# -- the capture process ----------------------------------------------------------------


class CliProcess:
    """An ``erpcrm`` command run as a subprocess, with its own settings, log and port.

    Subclasses name their log file (:attr:`log_path`) and call :meth:`launch`.
    """

    def __init__(self, stack_env: dict[str, str], log_dir: Path) -> None:
        self.stack_env = stack_env
        self.log_dir = log_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def launch(self, args: Iterable[str], settings: dict[str, str]) -> None:
        """Start ``erpcrm <args>`` with the stack's environment plus ``settings``."""
        assert not self.running, "already running"
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERPCRM_")}
        env.update(self.stack_env)
        # The stack's own endpoints, whichever ports it runs on (ERPCRM_STACK_PORT_OFFSET).
        env["ERPCRM_KAFKA__BOOTSTRAP"] = self.stack_env["KAFKA_BOOTSTRAP"]
        env["ERPCRM_REGISTRY__URL"] = self.stack_env["SCHEMA_REGISTRY_URL"]
        env.update(settings)
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "erpcrm.cli", *args],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-60:])

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
        response.raise_for_status()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


class Capture:
    """``erpcrm cdc --system …`` as a subprocess with isolated slot, prefix and metrics port."""

    def __init__(
        self,
        stack_env: dict[str, str],
        system: str,
        tables: Iterable[str],
        log_dir: Path,
        **settings: str,
    ) -> None:
        uid = unique_name()
        self.stack_env = stack_env
        self.system = system
        self.tables = tuple(tables)
        self.slot = uid
        self.prefix = uid
        self.port = free_port()
        self.log_dir = log_dir
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log_path = log_dir / f"{uid}-0.log"

    @property
    def admin_dsn(self) -> str:
        return self.stack_env[f"{self.system.upper()}_ADMIN_DSN"]

    def topic(self, table: str) -> str:
        return f"{self.prefix}.public.{table}"

    @property
    def tx_topic(self) -> str:
        return f"{self.prefix}.transaction"

    @property
    def topics(self) -> list[str]:
        return [self.topic(t) for t in self.tables] + [self.tx_topic]

    def start(self) -> Capture:
        assert self.proc is None or self.proc.poll() is not None, "capture already running"
        self.runs += 1
        self.log_path = self.log_dir / f"{self.slot}-{self.runs}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERPCRM_")}
        env.update(self.stack_env)
        env.update(
            {
                "ERPCRM_CDC_SLOT": self.slot,
                "ERPCRM_CDC_TOPIC_PREFIX": self.prefix,
                "ERPCRM_CDC_TABLES": ",".join(self.tables),
                "ERPCRM_CDC_METRICS_PORT": str(self.port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update({f"ERPCRM_CDC_{k.upper()}": v for k, v in self.settings.items()})
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "erpcrm.cli", "cdc", "--system", self.system],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _tail(self) -> str:
        return "\n".join(self.log().splitlines()[-40:])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
        response.raise_for_status()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        labels.setdefault("system", self.system)
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def wait_streaming(self, timeout: float = 90.0) -> Capture:
        """Wait until the snapshot is done and the process streams from an active slot."""

        def streaming() -> bool:
            if not self.running:
                code = None if self.proc is None else self.proc.returncode
                raise AssertionError(f"capture exited with {code}:\n{self._tail()}")
            try:
                if self.metric("erpcrm_cdc_received_lsn") <= 0:
                    return False
                row = slot_row(self.admin_dsn, self.slot)
            except (httpx.HTTPError, psycopg.OperationalError):  # not yet, or the database away
                return False
            return row is not None and row[0]

        wait_for(streaming, timeout, f"capture {self.slot} to stream")
        return self

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"capture did not exit:\n{self._tail()}") from None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def cleanup(self) -> None:
        """Stop the process, drop the slot, forget the offset, delete the topics."""
        self.stop()
        drop_slot(self.admin_dsn, self.slot)
        bootstrap = self.stack_env["KAFKA_BOOTSTRAP"]
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(OFFSETS_TOPIC, key=self.slot.encode(), value=None)
        producer.flush(10)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        existing = admin.list_topics(timeout=10).topics
        mine = [t for t in existing if t.startswith(f"{self.prefix}.")]
        if mine:
            for future in admin.delete_topics(mine, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=30)


@pytest.fixture
def capture_factory(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Capture]]:
    """Make captures (not started); every one is stopped and cleaned up at the end."""
    made: list[Capture] = []

    def make(system: str, tables: Iterable[str], **settings: str) -> Capture:
        capture = Capture(stack_env, system, tables, tmp_path, **settings)
        made.append(capture)
        return capture

    yield make
    for capture in made:
        capture.cleanup()


# -- reading the topics -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded Kafka record of a capture topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: dict[str, Any] | None
    value: dict[str, Any] | None
    schema_id: int | None

    @property
    def tombstone(self) -> bool:
        return self.value is None

    @property
    def op(self) -> str | None:
        return None if self.value is None else self.value["op"]

    @property
    def source(self) -> dict[str, Any]:
        assert self.value is not None
        return self.value["source"]

    @property
    def before(self) -> dict[str, Any] | None:
        assert self.value is not None
        return self.value["before"]

    @property
    def after(self) -> dict[str, Any] | None:
        assert self.value is not None
        return self.value["after"]

    @property
    def transaction(self) -> dict[str, Any] | None:
        assert self.value is not None
        return self.value["transaction"]

    @property
    def row(self) -> dict[str, Any]:
        """``after``, or ``before`` for deletes."""
        row = self.after if self.after is not None else self.before
        assert row is not None
        return row


def registry_client(stack_env: dict[str, str]) -> SchemaRegistryClient:
    """A Confluent registry client with a request timeout (the default waits forever)."""
    return SchemaRegistryClient({"url": stack_env["SCHEMA_REGISTRY_URL"], "timeout": 10})


def _decode(deserializer: AvroDeserializer, data: bytes, context: SerializationContext) -> Any:
    # The local registry now and then leaves a request unanswered; the client's timeout
    # turns that into an error, and a second request (new connection) gets the answer.
    for attempt in range(3):
        try:
            return deserializer(data, context)
        except Exception:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class TopicReader:
    """Reads topics from the beginning (all partitions) and keeps every decoded event."""

    def __init__(self, stack_env: dict[str, str], topics: Iterable[str]) -> None:
        self.topics = list(topics)
        self._consumer = Consumer(
            {
                "bootstrap.servers": stack_env["KAFKA_BOOTSTRAP"],
                "group.id": f"erpcrm-test-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        registry = registry_client(stack_env)
        self._key = AvroDeserializer(registry)
        self._value = AvroDeserializer(registry)
        metadata = self._consumer.list_topics(timeout=10)
        assignment = []
        for topic in self.topics:
            described = metadata.topics.get(topic)
            assert described is not None, f"no topic {topic}"
            assert described.error is None, described.error
            assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in described.partitions]
        self._consumer.assign(assignment)
        self.events: list[Event] = []

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, timeout: float = 0.2) -> int:
        batch = self._consumer.consume(2000, timeout)
        for message in batch:
            assert message.error() is None, message.error()
            topic = message.topic()
            key_bytes, value_bytes = message.key(), message.value()
            key = None
            if key_bytes is not None:
                key = _decode(self._key, key_bytes, SerializationContext(topic, MessageField.KEY))
            value = None
            schema_id = None
            if value_bytes is not None:
                context = SerializationContext(topic, MessageField.VALUE)
                value = _decode(self._value, value_bytes, context)
                schema_id = int.from_bytes(value_bytes[1:5], "big")
            self.events.append(
                Event(
                    topic,
                    message.partition(),
                    message.offset(),
                    message.timestamp()[1],
                    key,
                    value,
                    schema_id,
                )
            )
        return len(batch)

    def wait(
        self, predicate: Callable[[list[Event]], Any], timeout: float = 30.0, what: str = ""
    ) -> Any:
        """Consume until ``predicate(self.events)`` is truthy; returns its result."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self.events)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what or 'events'} "
                    f"({len(self.events)} events read)"
                )
            self.poll()

    def of(self, topic: str, key: Any = None, field: str = "id") -> list[Event]:
        """Events of ``topic`` (optionally only those whose key ``field`` is ``key``)."""
        return [
            e
            for e in self.events
            if e.topic == topic and (key is None or (e.key is not None and e.key[field] == key))
        ]

    def transaction(self, tid: str) -> list[dict[str, Any]]:
        """BEGIN/END records of transaction ``tid`` in the transaction topics read."""
        return [
            e.value
            for e in self.events
            if e.topic.endswith(".transaction") and e.value is not None and e.value["id"] == tid
        ]


def replay(events: Iterable[Event], field: str = "id") -> dict[Any, dict[str, Any]]:
    """The table as the events describe it: last event per key wins, deletes remove."""
    state: dict[Any, dict[str, Any]] = {}
    for event in events:
        if event.key is None:
            if event.op == "t":
                state.clear()
            continue
        key = event.key[field]
        if event.tombstone or event.op == "d":
            state.pop(key, None)
        else:
            state[key] = event.row
    return state


def wait_replayed(reader: TopicReader, expected: dict[Any, dict[str, Any]], timeout: float) -> None:
    """Consume until the events :func:`replay` to ``expected``; else fail naming the keys."""
    try:
        reader.wait(lambda evs: replay(evs) == expected, timeout=timeout, what="caught up")
    except AssertionError:
        got = replay(reader.events)
        missing = sorted(set(expected) - set(got))[:10]
        wrong = sorted(k for k in expected if k in got and got[k] != expected[k])[:10]
        extra = sorted(set(got) - set(expected))[:10]
        pytest.fail(f"state differs: missing {missing} wrong {wrong} extra {extra}")


def counter_table_state(dsn: str, table: str) -> dict[int, dict[str, Any]]:
    """``public.<table>(id, counter, note)`` as :func:`replay` gives it, by id."""
    rows = execute(
        dsn, sql.SQL("select id, counter, note from {}").format(sql.Identifier("public", table))
    )
    return {int(r[0]): {"id": int(r[0]), "counter": int(r[1]), "note": r[2]} for r in rows}


# -- probe tables ---------------------------------------------------------------------


def insert_notes(dsn: str, table: str, first: int, last: int) -> None:
    """Insert rows ``first``..``last`` into a probe table ``(id int primary key, note text)``,
    one transaction each."""
    for i in range(first, last + 1):
        execute(
            dsn,
            sql.SQL("insert into {} (id, note) values (%s, %s)").format(
                sql.Identifier("public", table)
            ),
            (i, f"row {i}"),
        )


def row_ids(events: list[Any]) -> set[int]:
    """The ``id`` of every row ``events`` carry (tombstones and deletes left out)."""
    return {e.key["id"] for e in events if e.key is not None and e.value is not None}


def create_probe_table(
    stack_env: dict[str, str],
    name: str,
    columns: str,
    *,
    system: str = "erp",
    publish: bool = True,
    rows: str | None = None,
) -> None:
    """As admin: create ``public.<name>`` readable by the capture role, in its publication.

    ``rows`` is an optional ``INSERT`` body (``select …`` or ``values …``).
    """
    admin = stack_env[f"{system.upper()}_ADMIN_DSN"]
    table = sql.Identifier("public", name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} ({})").format(table, sql.SQL(columns)))
        conn.execute(
            sql.SQL("grant select on {} to {}").format(table, sql.Identifier(CAPTURE_ROLE))
        )
        if rows:
            conn.execute(sql.SQL("insert into {} {}").format(table, sql.SQL(rows)))
        if publish:
            conn.execute(
                sql.SQL("alter publication {} add table {}").format(
                    sql.Identifier(PUBLICATION[system]), table
                )
            )


def drop_probe_table(stack_env: dict[str, str], name: str, *, system: str = "erp") -> None:
    execute(
        stack_env[f"{system.upper()}_ADMIN_DSN"],
        sql.SQL("drop table if exists {}").format(sql.Identifier("public", name)),
    )


def commit_ts_ms(dsn: str, xid: int) -> int:
    """The commit time of ``xid`` (track_commit_timestamp is on in the stack)."""
    rows = execute(
        dsn,
        "select floor(extract(epoch from pg_xact_commit_timestamp(%s::text::xid)) * 1000)::bigint",
        (str(xid),),
    )
    return int(rows[0][0])


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def json_list(text: str) -> list[Any]:
    value = json.loads(text)
    assert isinstance(value, list)
    return value
