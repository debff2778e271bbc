"""The streams worker's batches against the real stack: a SIGKILL in the middle of a backlog.

A backlog makes the worker take full batches (many messages decided, published and
acknowledged together), so the kill lands between a batch's publish and its commit as
often as anywhere else. After the restart: nothing lost, no event id twice, and each
entity's versions increasing in its partition. The same with two workers of one app
sharing the work, the one that decides killed: the other takes over; and with a second
worker joining mid-backlog, a rebalance while the owner has a batch in flight and more
buffered (streams.intake): the batch finishes, what was buffered is read again. A batch
that fails for good stops the worker with its offset uncommitted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql

from tests.integration.cdc_fixtures import unique_name, wait_for
from tests.integration.test_streams import (  # noqa: F401 (the module's fixture)
    Pipeline,
    StreamsProcess,
    _tag,
    new_customer,
    pipeline,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

UPDATES = 2000
CUSTOMERS = 10
TAKEOVER = {"ERPCRM_STREAMS_SESSION_TIMEOUT_SECONDS": "6"}
"""Settings of every worker these tests start: the group gives a SIGKILLed worker's
partitions away after the shortest session the broker allows (6 s, not the default 15 s)."""


def _backlog(pipeline: Pipeline, updates: int = UPDATES) -> tuple[set[str], list[str]]:  # noqa: F811
    """Customers and, while no worker runs, ``updates`` city changes of them.

    ``updates`` is a multiple of ``CUSTOMERS``: every transaction changes each customer once.
    """
    tag = _tag()
    partners = [
        new_customer(pipeline, email=f"backlog-{tag.lower()}-{i}@example.com")
        for i in range(CUSTOMERS)
    ]
    for partner in partners:
        pipeline.reader.event("customer", f"erp:{partner}")
    cities = [f"Backlog {tag} {i}" for i in range(updates)]
    pipeline.streams.stop()  # the backlog builds up while no worker runs (it leaves the group)
    # As the typist writes: one transaction changes every partner once (no change folded into
    # another of its row), committed by the server in one statement (no round trip each).
    rounds = sql.SQL(
        "do $$ declare partners bigint[] := {partners}; begin"
        " for i in 0..{last} loop"
        " update res_partner set city = {prefix} || i where id = partners[i % {n} + 1];"
        " if i % {n} = {n} - 1 then commit; end if;"
        " end loop; end $$"
    ).format(
        partners=sql.Literal(partners),
        last=sql.Literal(updates - 1),
        prefix=sql.Literal(f"Backlog {tag} "),
        n=sql.Literal(CUSTOMERS),
    )
    with psycopg.connect(pipeline.env["ERP_DSN"], autocommit=True) as conn:
        conn.execute(rounds)
    return {f"erp:{p}" for p in partners}, cities


def _seen_cities(pipeline: Pipeline, keys: set[str], cities: list[str]) -> set[str]:  # noqa: F811
    wanted = set(cities)
    return {
        o.value["city"]
        for o in pipeline.reader.of("canonical.customer")
        if o.value is not None and o.entity_key in keys and o.value["city"] in wanted
    }


def _nothing_lost_nothing_twice(
    pipeline: Pipeline,  # noqa: F811
    keys: set[str],
    cities: list[str],
) -> None:
    pipeline.reader.wait(
        lambda: len(_seen_cities(pipeline, keys, cities)) == len(cities), 300, "every update"
    )
    time.sleep(5)  # let late duplicates, if any, arrive
    pipeline.reader.poll()
    ours = [o for o in pipeline.reader.of("canonical.customer") if o.entity_key in keys]
    per_city = Counter(o.value["city"] for o in ours if o.value is not None)
    assert [c for c in cities if per_city[c] != 1] == []
    every_id = Counter(
        o.value["event_id"]
        for o in pipeline.reader.outputs
        if o.value is not None and o.topic != "dlq.streams"
    )
    assert [event for event, n in every_id.items() if n > 1] == []
    versions: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for o in ours:
        if o.value is not None:
            versions[o.entity_key].append((o.offset, int(o.value["version"])))
    for key, seen in versions.items():
        in_partition_order = [version for _, version in sorted(seen)]
        assert in_partition_order == sorted(set(in_partition_order)), key


class _Typist(threading.Thread):
    """Keeps a backlog growing: city changes of every partner, one transaction per round.

    Each transaction changes every partner once, so no change is folded into another of
    the same row; ``cities`` lists every city committed, in order.
    """

    def __init__(self, dsn: str, keys: set[str], tag: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.partners = sorted(int(key.split(":")[1]) for key in keys)
        self.tag = tag
        self.cities: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn) as conn:
            while not self.stopping.is_set():
                first = len(self.cities)
                batch = [f"Live {self.tag} {first + i}" for i in range(len(self.partners))]
                with conn.transaction():
                    for partner, city in zip(self.partners, batch, strict=True):
                        conn.execute(
                            "update res_partner set city = %s where id = %s", (city, partner)
                        )
                self.cities.extend(batch)

    def stop(self) -> list[str]:
        self.stopping.set()
        self.join(60)
        assert not self.is_alive(), "the typist did not stop"
        return self.cities


def _typing(pipeline: Pipeline, keys: set[str]) -> _Typist:  # noqa: F811
    """A typist, started and past its first commit: the backlog keeps growing from now on."""
    typist = _Typist(pipeline.env["ERP_DSN"], keys, _tag())
    typist.start()
    wait_for(lambda: typist.cities, 30, "the typist's first commit", interval=0.01)
    return typist


def _backlog_left(pipeline: Pipeline, keys: set[str], written: list[str]) -> None:  # noqa: F811
    """The precondition of a kill or rebalance mid-backlog: not everything written is out."""
    pipeline.reader.poll()
    seen = len(_seen_cities(pipeline, keys, written))
    assert seen < len(written), "drained before the kill or rebalance"


def test_a_worker_killed_while_draining_a_backlog_loses_and_repeats_nothing(
    pipeline: Pipeline,  # noqa: F811
) -> None:
    """A typist keeps committing until the kill, so the kill lands mid-backlog."""
    keys, cities = _backlog(pipeline)
    typist: _Typist | None = None
    try:
        pipeline.streams.start(TAKEOVER).wait_ready()
        pipeline.reader.wait(
            lambda: len(_seen_cities(pipeline, keys, cities)) >= UPDATES // 10, 180, "the backlog"
        )
        # From here until after the kill, every partner keeps changing: however much the
        # worker has drained, the kill lands with changes not yet out (a typist started
        # before the worker would write thousands while it starts, all to drain again).
        typist = _typing(pipeline, keys)
        pipeline.streams.kill()  # SIGKILL, mid-backlog
        _backlog_left(pipeline, keys, cities + typist.cities)
        cities += typist.stop()
        pipeline.streams.start(TAKEOVER).wait_ready()
        _nothing_lost_nothing_twice(pipeline, keys, cities)
    finally:
        if typist is not None:
            typist.stop()
        if not pipeline.streams.running:
            pipeline.streams.start(TAKEOVER).wait_ready()


def _decided(worker: StreamsProcess) -> float:
    """How many raw events this worker process has decided since it started."""
    return sum(
        value
        for (name, _), value in worker.metrics().items()
        if name == "erpcrm_streams_events_in_total"
    )


def _rebalances_done(worker: StreamsProcess) -> int:
    """How many rebalances this worker process has completed (Faust logs each)."""
    return worker.log_path.read_text(errors="replace").count("Worker ready")


class _SecondWorker(StreamsProcess):
    """Another process of an existing worker's app: same app id, its own data, port, log."""

    def __init__(self, first: StreamsProcess) -> None:
        super().__init__(first.stack_env, first.prefixes, first.log_dir)
        self.app_id = first.app_id
        self.name = f"second-{_tag()}"  # each test's second worker keeps its own log and data
        self.data_dir = first.log_dir / f"{first.app_id}-data-{self.name}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.app_id}-{self.name}-{self.runs}.log"


def test_one_of_two_workers_killed_while_draining_a_backlog_loses_and_repeats_nothing(
    pipeline: Pipeline,  # noqa: F811
) -> None:
    """Two processes of one app share the raw topics; the one deciding is killed mid-backlog."""
    first = pipeline.streams
    second = _SecondWorker(first)
    typist: _Typist | None = None
    try:
        keys, cities = _backlog(pipeline)
        first.start(TAKEOVER)
        second.start(TAKEOVER)  # both join the group at once, before the backlog drains
        first.wait_ready()
        second.wait_ready()
        pipeline.reader.wait(
            lambda: _rebalances_done(first) and _rebalances_done(second), 120, "both in the group"
        )
        pipeline.reader.wait(
            lambda: len(_seen_cities(pipeline, keys, cities)) >= UPDATES // 10, 180, "the backlog"
        )
        typist = _typing(pipeline, keys)  # as in the one-worker test
        deciding = max((first, second), key=_decided)
        deciding.kill()  # SIGKILL, mid-backlog: the other worker takes its partitions over
        _backlog_left(pipeline, keys, cities + typist.cities)
        cities += typist.stop()
        _nothing_lost_nothing_twice(pipeline, keys, cities)
        survivor = second if deciding is first else first
        assert survivor.running
        assert _decided(survivor) > 0, "the surviving worker never took the work over"
    finally:
        if typist is not None:
            typist.stop()
        second.stop()
        if not first.running:
            first.start(TAKEOVER).wait_ready()


def test_a_worker_joining_while_a_backlog_drains_loses_and_repeats_nothing(
    pipeline: Pipeline,  # noqa: F811
) -> None:
    """A rebalance mid-backlog: the owner finishes its batch in flight, reads its buffer again.

    A typist keeps committing changes until the rebalance is done, so the owner still has
    work in flight and buffered when the second worker joins, however fast it drains.
    """
    first = pipeline.streams
    second = _SecondWorker(first)
    typist: _Typist | None = None
    try:
        keys, cities = _backlog(pipeline)
        first.start(TAKEOVER).wait_ready()
        pipeline.reader.wait(
            lambda: len(_seen_cities(pipeline, keys, cities)) >= UPDATES // 20, 180, "the backlog"
        )
        typist = _typing(pipeline, keys)
        before = _rebalances_done(first)
        second.start(TAKEOVER).wait_ready()
        pipeline.reader.wait(lambda: _rebalances_done(first) > before, 120, "the rebalance")
        _backlog_left(pipeline, keys, cities + typist.cities)
        cities += typist.stop()
        _nothing_lost_nothing_twice(pipeline, keys, cities)
        assert first.running
        assert second.running
    finally:
        if typist is not None:
            typist.stop()
        second.stop()


def test_a_batch_that_fails_stops_the_worker_with_its_offset_uncommitted(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    """Dead-letter policy ``fail``: a record that cannot be decoded stops the worker."""
    prefixes = {"erp": unique_name("erp"), "crm": unique_name("crm")}
    topic = f"{prefixes['erp']}.public.res_partner"
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"\x00bad", value=b"\x00not avro")
    assert producer.flush(30) == 0
    streams = StreamsProcess(stack_env, prefixes, tmp_path)
    try:
        streams.start({"ERPCRM_STREAMS_DLQ_POLICY": "fail"})
        assert streams.exit_code(120, "the worker went on after a failed batch") != 0
        assert "DeadLetterError" in streams.log_path.read_text(errors="replace")
        group = Consumer({"bootstrap.servers": bootstrap, "group.id": streams.app_id})
        try:
            (committed,) = group.committed([TopicPartition(topic, 0)], timeout=30)
        finally:
            group.close()
        assert committed.offset < 0, "the failed record's offset was committed"
    finally:
        streams.cleanup()
        for future in admin.delete_topics([topic], operation_timeout=30).values():
            future.result(timeout=30)
