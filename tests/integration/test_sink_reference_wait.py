"""A reference that comes late is waited for; one that never comes is dead-lettered.

Against the real Kafka and the real ERP database: a :class:`~sinks.runner.SinkRunner`
in this process applies CRM contacts and customers from topics of its own (one
partition each), with a reference wait of half a second, in batches of one event so
that a contact and its customer never meet in one batch. The contacts refer to their
customer by its CRM id; the ERP sink fills the partner from the customer's row.

- Upstream behind: a contact is read long before its customer is published (the
  streams worker behind on the customers); no later CRM change is read meanwhile. The
  contact waits for as long as that lasts, and is applied with its customer.
- The sink behind: the customer was published before the contact, but it is behind a
  backlog the sink takes seconds to apply (an earlier customer's row is locked by
  another transaction). Measured in seconds, the contact's wait would be over before
  the customer is applied; measured in the sink's progress, it is not.
- Genuinely missing: a contact whose customer never comes, followed by a later CRM
  change, is dead-lettered with an ``unresolved_reference`` reason naming what it lacks.
- Genuinely missing on a quiet source: no later CRM change comes, but the streams
  stage's decided horizon (on a horizon topic of the test's own) passes the contact's
  commit; a horizon short of it does not end the wait.
- Held suspect: contacts whose customer is held as a suspected duplicate are parked
  (not dead-lettered) and applied, in order, once an operator releases or links it. A
  replayed dead letter (read from the sink's replay topic) parked among them is applied
  in its place by version, once; one whose suspect is gone meanwhile is dead-lettered
  naming its original position and replay count, as when it was read. One whose row
  has a local change the sink has not seen an own event of is parked again until its
  row clock is complete, and counted ``parked`` once, not each time it is tried.
- Row clocks on a quiet target: an event for a row with a local change no own event
  will ever tell (nothing more comes from the ERP) waits until the ERP's decided
  horizon passes the change, then its clock wait, and is applied; a horizon short of
  the change does not end the wait.
- Tombstones only: a batch with no event stores its positions all the same.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry
from psycopg import sql
from pydantic import SecretStr

from erpcrm.suspects import decide, list_suspects
from schemas.canonical import canonical_schema
from schemas.deadletter import (
    H_ENTITY,
    H_ENTITY_KEY,
    H_ERROR_MESSAGE,
    H_ERROR_REASON,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_REPLAY_COUNT,
    text_headers,
)
from schemas.horizon import SourceHorizon, horizon_schema
from schemas.mapping import load_mappings, ownership
from schemas.serde import AvroSerde, LocalSchemaRegistry
from schemas.settings import KafkaSettings
from sinks.metrics import SinkMetrics
from sinks.postgres import PostgresUpsertSink
from sinks.runner import SinkRunner
from sinks.settings import SinkSettings
from sinks.targets import Direction, build_tables
from tests.integration.cdc_fixtures import (
    execute,
    unique_name,
    wait_for,
    wait_while_progressing,
)

pytestmark = pytest.mark.integration

REFERENCE_WAIT = 0.5
ENTITIES = ("customer", "contact")


@dataclass
class Harness:
    """The running sink, its topics, and what the tests made (for the clean-up)."""

    env: dict[str, str]
    uid: str
    runner: SinkRunner
    serde: AvroSerde
    producer: Producer
    thread: threading.Thread | None = None
    crm_ids: list[str] = field(default_factory=list)
    _ts: int = field(default_factory=lambda: int(time.time() * 1000))

    def topic(self, entity: str) -> str:
        return f"{self.uid}.{entity}"

    @property
    def dlq(self) -> str:
        return f"dlq.{self.uid}"

    @property
    def horizons(self) -> str:
        return f"horizon.{self.uid}"

    def horizon(self, commit_ts_ms: int, system: str = "crm") -> None:
        """Publish the streams' decided horizon of ``system``, as the worker does."""
        record = SourceHorizon(system, commit_ts_ms, commit_ts_ms, int(time.time() * 1000))
        value = self.serde.encode(f"{self.horizons}-value", horizon_schema(), record.as_record())
        self.producer.produce(self.horizons, key=system.encode(), value=value)
        self.producer.flush(10)

    def commit_ms(self, after: int = 0) -> int:
        """A fresh CRM commit time, later than every one before (and than ``after``)."""
        self._ts = max(self._ts, after) + 10
        return self._ts

    def publish(
        self,
        entity: str,
        ts: int,
        crm_id: str | None = None,
        *,
        replayed_from: tuple[str, int, int] | None = None,
        replays: int = 1,
        **fields: Any,
    ) -> str:
        """Publish a CRM ``entity`` committed at ``ts``; returns its CRM id.

        ``replayed_from``: put it on the sink's replay topic instead, as ``erpcrm dlq
        replay`` puts back a dead letter first read there, ``replays`` times replayed.
        """
        crm_id = crm_id or str(uuid.uuid4())
        self.crm_ids.append(crm_id)
        schema = canonical_schema(entity)
        record: dict[str, Any] = {f["name"]: None for f in schema["fields"]}
        record.update(
            event_id=str(uuid.uuid4()),
            source_system="crm",
            source_lsn=ts,
            source_tx_id=ts,
            source_ts_ms=ts,
            op="upsert",
            version=ts,
            crm_id=crm_id,
            **fields,
        )
        topic = self.topic(entity)
        value = self.serde.encode(f"{topic}-value", schema, record)
        headers: list[tuple[str, str | bytes | None]] = []
        if replayed_from is not None:
            topic = f"replay.{self.uid}"
            headers = [
                (H_ENTITY, entity),
                (H_ENTITY_KEY, f"crm:{crm_id}"),
                (H_ORIGIN_TOPIC, replayed_from[0]),
                (H_ORIGIN_PARTITION, str(replayed_from[1])),
                (H_ORIGIN_OFFSET, str(replayed_from[2])),
                (H_REPLAY_COUNT, str(replays)),
            ]
        self.producer.produce(topic, key=f"crm:{crm_id}".encode(), value=value, headers=headers)
        self.producer.flush(10)
        return crm_id

    def customer(self, ts: int, crm_id: str, name: str | None = None) -> str:
        name = name or f"Late Ref {crm_id[:6]}"
        return self.publish("customer", ts, crm_id, name=name, is_company=True)

    def contact(self, ts: int, customer_crm_id: str | None) -> str:
        return self.publish(
            "contact", ts, first_name="Ada", last_name="Late", customer_crm_id=customer_crm_id
        )

    def partner_of_contact(self, contact_id: str) -> tuple[Any, ...] | None:
        """The contact's ERP row: (its parent's CRM account id,), or None."""
        rows = execute(
            self.env["ERP_ADMIN_DSN"],
            "SELECT p.crm_account_id::text FROM public.res_partner c "
            "LEFT JOIN public.res_partner p ON p.id = c.parent_id "
            "WHERE c.crm_contact_id = %s",
            (contact_id,),
        )
        return rows[0] if rows else None

    def outcome(self, name: str) -> int:
        return self.runner.stats.outcomes.get(name, 0)

    def stored_position(self, entity: str) -> int | None:
        """The position the sink stored for ``entity``'s topic (one partition), or None."""
        rows = execute(
            self.env["ERP_ADMIN_DSN"],
            sql.SQL('SELECT next_offset FROM {} WHERE topic = %s AND "partition" = 0').format(
                sql.Identifier(self.uid, "offsets")
            ),
            (self.topic(entity),),
        )
        return int(rows[0][0]) if rows else None

    def committed_position(self, entity: str) -> int:
        """The position the sink's Kafka group committed for ``entity``'s topic (-1: none)."""
        consumer = Consumer(
            {"bootstrap.servers": self.env["KAFKA_BOOTSTRAP"], "group.id": self.uid}
        )
        try:
            [tp] = consumer.committed([TopicPartition(self.topic(entity), 0)], timeout=10)
            return int(tp.offset)
        finally:
            consumer.close()

    def dead_letters(self) -> list[dict[str, str]]:
        """The headers of every dead letter of the sink."""
        consumer = Consumer(
            {"bootstrap.servers": self.env["KAFKA_BOOTSTRAP"], "group.id": unique_name("dl")}
        )
        try:
            tp = TopicPartition(self.dlq, 0, 0)
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            consumer.assign([tp])
            letters: list[dict[str, str]] = []
            while len(letters) < high:
                for message in consumer.consume(100, 5):
                    if message.error() is None:
                        letters.append(dict(text_headers(message.headers())))
            return letters
        finally:
            consumer.close()


def _sink(
    env: dict[str, str],
    schema: str,
    clock_wait_ms: int,
    origin: str | None = None,
    topics: tuple[str, ...] = (),
) -> PostgresUpsertSink:
    flows = load_mappings()
    tables = {
        t.entity: t for t in build_tables(flows).values() if t.direction is Direction.CRM_TO_ERP
    }
    return PostgresUpsertSink(
        target="erp",
        dsn=env["ERP_SINK_DSN"],
        tables={e: tables[e] for e in ENTITIES},
        ownership={e: ownership(flows, e) for e in ENTITIES},
        topics=topics,
        origin=origin or unique_name("origin"),
        schema=schema,
        announce=False,
        clock_wait_ms=clock_wait_ms,
    )


@pytest.fixture
def clock_wait_ms() -> int:
    """The sink's row-clock wait: none (the rows locked below are not waited for)."""
    return 0


@pytest.fixture
def harness(stack_env: dict[str, str], clock_wait_ms: int) -> Iterator[Harness]:
    uid = unique_name("refwait")
    admin = AdminClient({"bootstrap.servers": stack_env["KAFKA_BOOTSTRAP"]})
    topics = [f"{uid}.{entity}" for entity in ENTITIES]
    for future in admin.create_topics([NewTopic(t, num_partitions=1) for t in topics]).values():
        future.result(timeout=30)
    execute(
        stack_env["ERP_ADMIN_DSN"],
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION erpcrm_sink").format(sql.Identifier(uid)),
    )
    settings = SinkSettings(
        target="erp",
        dsn=SecretStr(stack_env["ERP_SINK_DSN"]),
        kafka=KafkaSettings(bootstrap=stack_env["KAFKA_BOOTSTRAP"]),
        sync_schema=uid,
        group_id=uid,
        batch_size=1,
        reference_wait_seconds=REFERENCE_WAIT,
        announce=False,
        dlq_topic=f"dlq.{uid}",
        replay_topic=f"replay.{uid}",
        horizon_topic=f"horizon.{uid}",  # none but the tests' own: no streams stage here
        start_at="earliest",
    )
    serde = AvroSerde(LocalSchemaRegistry())
    sink = _sink(stack_env, uid, clock_wait_ms)
    runner = SinkRunner(
        settings,
        sink,
        serde,
        SinkMetrics.create(CollectorRegistry()),
        (*topics, settings.replay_topic),
    )
    producer = Producer({"bootstrap.servers": stack_env["KAFKA_BOOTSTRAP"], "linger.ms": 0})
    h = Harness(stack_env, uid, runner, serde, producer)
    h.thread = threading.Thread(target=runner.run, name=f"sink-{uid}", daemon=True)
    h.thread.start()
    try:
        yield h
    finally:
        h.runner.stop()  # the one running: a test may have started another
        h.thread.join(60)
        erp = stack_env["ERP_ADMIN_DSN"]
        execute(
            erp,
            "DELETE FROM public.res_partner WHERE crm_contact_id = ANY(%s) "
            "OR parent_id IN (SELECT id FROM public.res_partner WHERE crm_account_id = ANY(%s))",
            (h.crm_ids, h.crm_ids),
        )
        execute(erp, "DELETE FROM public.res_partner WHERE crm_account_id = ANY(%s)", (h.crm_ids,))
        execute(erp, sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(uid)))
        execute(
            erp,
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin "
            "WHERE roname = %s",
            (sink._origin,),
        )
        for future in admin.delete_topics(
            [*topics, settings.dlq_topic, settings.replay_topic, settings.horizon_topic]
        ).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)
        with contextlib.suppress(Exception):
            for future in admin.delete_consumer_groups([uid], request_timeout=30).values():
                future.result(timeout=30)


def test_a_customer_published_late_is_waited_for_however_long(harness: Harness) -> None:
    customer_ts, contact_ts = harness.commit_ms(), harness.commit_ms()
    customer_id = str(uuid.uuid4())
    # The contact arrives; its customer, committed before it, is still upstream.
    contact_id = harness.contact(contact_ts, customer_id)
    wait_for(lambda: harness.outcome("deferred") == 1, 60, "the contact held")
    time.sleep(10 * REFERENCE_WAIT)  # a wait in seconds would be over many times
    assert harness.runner.stats.dead_lettered == 0
    assert harness.partner_of_contact(contact_id) is None
    # The customer comes at last.
    harness.customer(customer_ts, customer_id)
    row = wait_for(lambda: harness.partner_of_contact(contact_id), 60, "the contact applied")
    assert row == (customer_id,)
    assert harness.runner.stats.dead_lettered == 0
    assert harness.dead_letters() == []


def test_positions_pass_a_held_contact_applied_once_the_sink_is_idle(harness: Harness) -> None:
    """A held contact applied on its own, after the sink read and applied a later one:
    the stored position (and the group's) is past both, not at the held contact's."""
    customer_ts, contact_ts, later_ts = (harness.commit_ms() for _ in range(3))
    customer_id = str(uuid.uuid4())
    contact_id = harness.contact(contact_ts, customer_id)  # offset 0: held
    wait_for(lambda: harness.outcome("deferred") == 1, 60, "the contact held")
    later = harness.contact(later_ts, None)  # offset 1: applied, the position held at 0
    wait_for(lambda: harness.partner_of_contact(later) is not None, 60, "the later contact")
    assert harness.stored_position("contact") == 0
    harness.customer(customer_ts, customer_id)
    assert wait_for(lambda: harness.partner_of_contact(contact_id), 60, "the held contact")
    # Nothing more comes: the sink is idle from here on.
    wait_for(lambda: harness.stored_position("contact") == 2, 10, "the position past both")
    wait_for(lambda: harness.committed_position("contact") == 2, 10, "the group's position")


STALL_SECONDS = 60.0
"""A sink that applies, defers or skips nothing for this long is stuck, not slow."""


def _progress(harness: Harness) -> tuple[Any, ...]:
    """How far the sink has come: batches, events and their outcomes."""
    stats = harness.runner.stats
    return (stats.batches, stats.events, sorted(stats.outcomes.items()), stats.dead_lettered)


def _sink_waits_for_a_lock(admin_dsn: str) -> bool:
    """Whether a sink session of the ERP waits for a row lock another session holds."""
    rows = execute(
        admin_dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'erpcrm_sink' "
        "AND cardinality(pg_blocking_pids(pid)) > 0",
    )
    return bool(rows[0][0])


def test_a_customer_behind_a_slow_backlog_is_waited_for(harness: Harness) -> None:
    erp = harness.env["ERP_ADMIN_DSN"]
    # Two customers the ERP already has; their rows are locked below, so the sink takes
    # seconds to apply the backlog they are in.
    blockers = [str(uuid.uuid4()) for _ in range(2)]
    harness.crm_ids.extend(blockers)
    for crm_id in blockers:
        execute(
            erp,
            "INSERT INTO public.res_partner (name, crm_account_id, is_company) "
            "VALUES (%s, %s, true)",
            (f"Blocker {crm_id[:6]}", crm_id),
        )
    with psycopg.connect(erp) as first, psycopg.connect(erp) as second:
        first.execute(
            "SELECT 1 FROM public.res_partner WHERE crm_account_id = %s FOR UPDATE", (blockers[0],)
        )
        second.execute(
            "SELECT 1 FROM public.res_partner WHERE crm_account_id = %s FOR UPDATE", (blockers[1],)
        )

        # The sink stops at the first blocker; meanwhile it reads the contact.
        harness.customer(harness.commit_ms(), blockers[0], f"Blocker {blockers[0][:6]} edited")
        # Only once it waits there (it has its partitions and fetches) does what follows
        # reach its queue in the order published: a sink still joining its group on a
        # busy machine fetched the three topics at once, in any order.
        wait_for(lambda: _sink_waits_for_a_lock(erp), 120, "the sink at the first blocker")
        customer_ts, contact_ts, later_ts = (harness.commit_ms() for _ in range(3))
        contact_customer = str(uuid.uuid4())
        contact_id = harness.contact(contact_ts, contact_customer)
        # A later CRM change: the streams have published everything before the contact.
        harness.contact(later_ts, None)
        time.sleep(1.5)  # both read into the consumer's queue before the customers below
        # The contact's customer, published before it (as the streams order them), sits
        # behind the second blocker.
        harness.customer(harness.commit_ms(), blockers[1], f"Blocker {blockers[1][:6]} edited")
        harness.customer(customer_ts, contact_customer)
        time.sleep(1.0)
        first.rollback()  # the sink moves on: the contact is held, the backlog blocked
        wait_while_progressing(
            lambda: harness.outcome("deferred") >= 1,
            lambda: _progress(harness),
            STALL_SECONDS,
            "the contact held",
        )
        time.sleep(10 * REFERENCE_WAIT)
        second.rollback()
    row = wait_while_progressing(
        lambda: harness.partner_of_contact(contact_id),
        lambda: _progress(harness),
        STALL_SECONDS,
        "the contact applied",
    )
    assert row == (contact_customer,)
    assert harness.runner.stats.dead_lettered == 0
    assert harness.dead_letters() == []


def test_a_customer_that_never_comes_ends_as_a_dead_letter(harness: Harness) -> None:
    missing = str(uuid.uuid4())
    contact_id = harness.contact(harness.commit_ms(), missing)
    harness.contact(harness.commit_ms(), None)  # the source has moved on
    wait_for(lambda: harness.runner.stats.dead_lettered == 1, 60, "the dead letter")
    [letter] = harness.dead_letters()
    assert letter[H_ENTITY_KEY] == f"crm:{contact_id}"
    assert letter[H_ERROR_MESSAGE].startswith("unresolved_reference: contact ")
    assert f"customer_erp_id (crm_account_id={missing})" in letter[H_ERROR_MESSAGE]
    assert "everything published before it" in letter[H_ERROR_MESSAGE]
    assert letter[H_ERROR_REASON] == "unresolved_reference"
    assert harness.partner_of_contact(contact_id) is None
    # Given up on, it no longer holds the position back, though nothing more is read:
    # a restart does not read it again (and letter it twice).
    wait_for(lambda: harness.stored_position("contact") == 2, 10, "the position past it")
    wait_for(lambda: harness.committed_position("contact") == 2, 10, "the group's position")


def test_a_customer_that_never_comes_on_a_quiet_source_ends_once_the_horizon_passes(
    harness: Harness,
) -> None:
    before_ts, contact_ts = harness.commit_ms(), harness.commit_ms()
    missing = str(uuid.uuid4())
    contact_id = harness.contact(contact_ts, missing)
    wait_for(lambda: harness.outcome("deferred") == 1, 60, "the contact held")
    # A horizon short of the contact's commit says nothing about what came before it.
    harness.horizon(before_ts)
    harness.horizon(contact_ts)
    time.sleep(10 * REFERENCE_WAIT)
    assert harness.runner.stats.dead_lettered == 0
    # No later CRM change comes; the streams' horizon passes the contact's commit.
    harness.horizon(harness.commit_ms())
    wait_for(lambda: harness.runner.stats.dead_lettered == 1, 60, "the dead letter")
    [letter] = harness.dead_letters()
    assert letter[H_ENTITY_KEY] == f"crm:{contact_id}"
    assert letter[H_ERROR_REASON] == "unresolved_reference"
    assert harness.partner_of_contact(contact_id) is None


def _hold_twin(harness: Harness) -> tuple[str, int, str]:
    """A CRM customer held as a suspected duplicate of an ERP partner.

    Returns the partner's CRM account id, its ERP id, and the held customer's CRM id.
    """
    holder = str(uuid.uuid4())
    harness.crm_ids.append(holder)
    [(candidate,)] = execute(
        harness.env["ERP_ADMIN_DSN"],
        "INSERT INTO public.res_partner (name, crm_account_id, is_company) "
        "VALUES ('Suspect Twin', %s, true) RETURNING id",
        (holder,),
    )
    twin = harness.publish(
        "customer",
        harness.commit_ms(),
        name="Suspect Twin",
        is_company=True,
        duplicate_of=str(candidate),
        duplicate_rule="name_country=SUSPECT TWIN|DE",
    )
    return holder, int(candidate), twin


def _parked(harness: Harness) -> list[tuple[Any, ...]] | None:
    """The parked events' keys and suspects, in order; None before the sink made its schema."""
    try:
        return execute(
            harness.env["ERP_ADMIN_DSN"],
            sql.SQL("SELECT entity_key, suspect_key FROM {} ORDER BY id").format(
                sql.Identifier(harness.uid, "parked")
            ),
        )
    except psycopg.errors.UndefinedTable:
        return None


def _contact_row(harness: Harness, contact_id: str) -> tuple[Any, ...] | None:
    """The contact's ERP row: (its parent's id, its last name), or None."""
    rows = execute(
        harness.env["ERP_ADMIN_DSN"],
        "SELECT parent_id, name FROM public.res_partner WHERE crm_contact_id = %s",
        (contact_id,),
    )
    return rows[0] if rows else None


def _park_two_versions(harness: Harness, twin: str) -> str:
    """A contact of ``twin`` changed twice, both parked (no dead letter after the wait)."""
    contact_id = harness.contact(harness.commit_ms(), twin)
    harness.publish(
        "contact",
        harness.commit_ms(),
        contact_id,
        first_name="Ada",
        last_name="Later",
        customer_crm_id=twin,
    )
    harness.crm_ids.remove(contact_id)  # published twice, cleaned up once
    harness.contact(harness.commit_ms(), None)  # the source has moved on
    wait_for(lambda: len(_parked(harness) or ()) == 2, 60, "both versions parked")
    time.sleep(REFERENCE_WAIT * 4)  # well past the reference wait
    assert _parked(harness) == [(f"crm:{contact_id}", f"crm:{twin}")] * 2
    assert harness.runner.stats.dead_lettered == 0
    assert harness.outcome("parked") == 2
    [suspect] = list_suspects(harness.env["ERP_SINK_DSN"], harness.uid)
    assert (suspect.entity_key, suspect.status, suspect.waiting) == (f"crm:{twin}", "held", 2)
    assert _contact_row(harness, contact_id) is None
    return contact_id


def test_contacts_of_a_held_suspect_are_parked_and_applied_once_it_is_released(
    harness: Harness,
) -> None:
    """Not dead-lettered: parked, in order, and applied against the row the release made."""
    _, candidate, twin = _hold_twin(harness)
    contact_id = _park_two_versions(harness, twin)
    [suspect] = list_suspects(harness.env["ERP_SINK_DSN"], harness.uid)
    assert decide(harness.env["ERP_SINK_DSN"], harness.uid, suspect.id, "release")

    wait_for(lambda: _contact_row(harness, contact_id) is not None, 60, "the contact applied")
    [(created,)] = execute(
        harness.env["ERP_ADMIN_DSN"],
        "SELECT id FROM public.res_partner WHERE crm_account_id = %s",
        (twin,),
    )
    assert created != candidate
    assert _contact_row(harness, contact_id) == (created, "Ada Later")
    assert harness.partner_of_contact(contact_id) == (twin,)
    assert _parked(harness) == []
    assert harness.runner.stats.dead_lettered == 0


def test_contacts_of_a_linked_suspect_are_applied_against_its_candidate(
    harness: Harness,
) -> None:
    """The candidate keeps its own CRM id: the parked contacts are pointed at it."""
    holder, candidate, twin = _hold_twin(harness)
    contact_id = _park_two_versions(harness, twin)
    [suspect] = list_suspects(harness.env["ERP_SINK_DSN"], harness.uid)
    assert decide(harness.env["ERP_SINK_DSN"], harness.uid, suspect.id, "link")

    wait_for(lambda: _contact_row(harness, contact_id) is not None, 60, "the contact applied")
    assert _contact_row(harness, contact_id) == (candidate, "Ada Later")
    assert harness.partner_of_contact(contact_id) == (holder,)
    assert _parked(harness) == []
    # A later contact of the linked customer finds the candidate at once.
    later = harness.contact(harness.commit_ms(), twin)
    wait_for(lambda: _contact_row(harness, later) is not None, 60, "a later contact applied")
    assert _contact_row(harness, later) == (candidate, "Ada Late")
    assert harness.runner.stats.dead_lettered == 0


def test_a_parked_replayed_event_keeps_its_original_position_and_replay_count(
    harness: Harness,
) -> None:
    """Its dead letter names where it was first read, not the replay topic, and its count."""
    _, _, twin = _hold_twin(harness)
    contact_id = str(uuid.uuid4())
    origin = (harness.topic("contact"), 0, 4242)
    harness.publish(
        "contact",
        harness.commit_ms(),
        contact_id,
        replayed_from=origin,
        replays=2,
        first_name="Ada",
        last_name="Replayed",
        customer_crm_id=twin,
    )
    wait_for(lambda: _parked(harness) == [(f"crm:{contact_id}", f"crm:{twin}")], 60, "parked")
    assert harness.runner.stats.dead_lettered == 0
    # The suspect is gone (no decision will come): the parked event is tried once more,
    # in vain, and dead-lettered.
    execute(
        harness.env["ERP_ADMIN_DSN"],
        sql.SQL("DELETE FROM {} WHERE entity_key = %s").format(
            sql.Identifier(harness.uid, "suspects")
        ),
        (f"crm:{twin}",),
    )
    wait_for(lambda: harness.runner.stats.dead_lettered == 1, 60, "the dead letter")
    [letter] = harness.dead_letters()
    assert letter[H_ENTITY_KEY] == f"crm:{contact_id}"
    assert letter[H_ERROR_REASON] == "unresolved_reference"
    assert "was parked until the suspected duplicate" in letter[H_ERROR_MESSAGE]
    assert (letter[H_ORIGIN_TOPIC], letter[H_ORIGIN_PARTITION], letter[H_ORIGIN_OFFSET]) == (
        origin[0],
        str(origin[1]),
        str(origin[2]),
    )
    assert letter[H_REPLAY_COUNT] == "2"
    assert _parked(harness) == []
    assert _contact_row(harness, contact_id) is None


def test_a_replayed_event_parked_among_others_is_applied_in_order_once(harness: Harness) -> None:
    """An older version replayed after a newer one: the newer one stays, each applied once."""
    _, _, twin = _hold_twin(harness)
    contact_id = str(uuid.uuid4())
    first, second, third = (harness.commit_ms() for _ in range(3))
    for ts, last_name, replayed_from in (
        (first, "First", None),
        (third, "Third", None),
        (second, "Second", (harness.topic("contact"), 0, 7)),  # replayed after "Third"
    ):
        harness.publish(
            "contact",
            ts,
            contact_id,
            replayed_from=replayed_from,
            first_name="Ada",
            last_name=last_name,
            customer_crm_id=twin,
        )
    wait_for(lambda: len(_parked(harness) or ()) == 3, 60, "every version parked")
    [suspect] = list_suspects(harness.env["ERP_SINK_DSN"], harness.uid)
    assert suspect.waiting == 3
    assert decide(harness.env["ERP_SINK_DSN"], harness.uid, suspect.id, "release")

    wait_for(lambda: _contact_row(harness, contact_id) is not None, 60, "the contact applied")
    wait_for(lambda: _parked(harness) == [], 60, "unparked")
    assert _contact_row(harness, contact_id)[1] == "Ada Third"  # type: ignore[index]
    [(version,)] = execute(
        harness.env["ERP_ADMIN_DSN"],
        sql.SQL("SELECT version FROM {} WHERE entity = 'contact' AND entity_key = %s").format(
            sql.Identifier(harness.uid, "applied")
        ),
        (f"crm:{contact_id}",),
    )
    assert version == third
    [(rows,)] = execute(
        harness.env["ERP_ADMIN_DSN"],
        "SELECT count(*) FROM public.res_partner WHERE crm_contact_id = %s",
        (contact_id,),
    )
    assert rows == 1
    assert harness.runner.stats.dead_lettered == 0
    assert harness.dead_letters() == []


CLOCK_WAIT_MS = 1_500


def _edit_locally(harness: Harness, contact_id: str) -> int:
    """Change the contact's ERP row as an ERP user would; its commit time (ms).

    No own event of it is published here: the sink's row clock does not learn it.
    """
    execute(
        harness.env["ERP_ADMIN_DSN"],
        "UPDATE public.res_partner SET function = 'Edited in the ERP' WHERE crm_contact_id = %s",
        (contact_id,),
    )
    [(committed,)] = execute(
        harness.env["ERP_ADMIN_DSN"],
        "SELECT floor(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint"
        " FROM public.res_partner WHERE crm_contact_id = %s",
        (contact_id,),
    )
    return int(committed)


def _contact_named(harness: Harness, contact_id: str, name: str) -> bool:
    row = _contact_row(harness, contact_id)
    return row is not None and row[1] == name


@pytest.mark.parametrize("clock_wait_ms", [CLOCK_WAIT_MS])
def test_a_row_changed_locally_on_a_quiet_target_waits_for_the_targets_horizon(
    harness: Harness,
) -> None:
    """No own event will come: the ERP's decided horizon past the change ends the wait."""
    contact_id = harness.contact(harness.commit_ms(), None)
    wait_for(lambda: _contact_row(harness, contact_id) is not None, 60, "the contact applied")
    local_ms = _edit_locally(harness, contact_id)
    # A change from the CRM, committed after the local one.
    harness.publish(
        "contact",
        harness.commit_ms(after=local_ms),
        contact_id,
        first_name="Ada",
        last_name="Later",
        customer_crm_id=None,
    )
    harness.crm_ids.remove(contact_id)  # published twice, cleaned up once
    wait_for(lambda: harness.runner.stats.outcomes.get("deferred", 0) >= 1, 60, "held")
    # A horizon of the ERP short of the local change says nothing about its own event.
    harness.horizon(local_ms - 5, system="erp")
    time.sleep(4 * CLOCK_WAIT_MS / 1000)
    assert _contact_named(harness, contact_id, "Ada Late")
    # The ERP's horizon passes the change: every own change before it is out and read.
    passed = time.monotonic()
    harness.horizon(local_ms + 5, system="erp")
    wait_for(lambda: _contact_named(harness, contact_id, "Ada Later"), 30, "the change applied")
    waited = time.monotonic() - passed
    print(f"\nhorizon past the local change -> applied: {waited:.1f} s")
    assert waited >= CLOCK_WAIT_MS / 1000  # the clock wait counted in full from there
    assert harness.runner.stats.dead_lettered == 0


@pytest.mark.parametrize("clock_wait_ms", [CLOCK_WAIT_MS])
def test_parked_events_waiting_for_a_row_clock_are_counted_once_and_applied_once(
    harness: Harness,
) -> None:
    """Their suspect released, they wait for the row clock: parked again, not re-counted."""
    _, _, twin = _hold_twin(harness)
    contact_id = harness.contact(harness.commit_ms(), None)
    wait_for(lambda: _contact_row(harness, contact_id) is not None, 60, "the contact applied")
    local_ms = _edit_locally(harness, contact_id)
    # Two later changes from the CRM, to the held customer.
    for last_name in ("Parked", "Later"):
        harness.publish(
            "contact",
            harness.commit_ms(after=local_ms),
            contact_id,
            first_name="Ada",
            last_name=last_name,
            customer_crm_id=twin,
        )
        harness.crm_ids.remove(contact_id)
    wait_for(lambda: len(_parked(harness) or ()) == 2, 60, "both versions parked")
    [suspect] = list_suspects(harness.env["ERP_SINK_DSN"], harness.uid)
    assert decide(harness.env["ERP_SINK_DSN"], harness.uid, suspect.id, "release")
    wait_for(
        lambda: list_suspects(harness.env["ERP_SINK_DSN"], harness.uid)[0].status == "released",
        60,
        "the release carried out",
    )
    time.sleep(8)  # parked events are tried every 2 s
    # Still waiting for the row's clock, parked, and counted when first parked only.
    assert len(_parked(harness) or ()) == 2
    assert _contact_named(harness, contact_id, "Ada Late")
    assert harness.outcome("parked") == 2
    assert harness.outcome("superseded") == 0
    # The ERP's horizon passes the local change: the clock wait counts, then they apply.
    harness.horizon(local_ms + 5, system="erp")
    wait_for(lambda: _contact_named(harness, contact_id, "Ada Later"), 30, "the contact applied")
    wait_for(lambda: _parked(harness) == [], 10, "unparked")
    assert harness.outcome("parked") == 2
    assert harness.outcome("superseded") == 0
    assert harness.runner.stats.dead_lettered == 0


def _runner(harness: Harness, clock_wait_ms: int) -> SinkRunner:
    """A new sink on the harness's schema, group and replication origin (not running).

    It resumes from the positions it stored, as a restarted sink does.
    """
    runner = harness.runner
    sink = _sink(
        harness.env, harness.uid, clock_wait_ms, runner._sink._origin, topics=runner._topics
    )
    return SinkRunner(
        runner._s, sink, harness.serde, SinkMetrics.create(CollectorRegistry()), runner._topics
    )


def _stop(harness: Harness) -> None:
    harness.runner.stop()
    assert harness.thread is not None
    harness.thread.join(60)


LINK_CLOCK_WAIT_MS = 10_000
"""Long enough for the link to be carried out while the candidate's clock is awaited."""


@pytest.mark.parametrize("clock_wait_ms", [LINK_CLOCK_WAIT_MS])
def test_a_linked_suspect_that_must_wait_survives_a_sink_killed_right_after_carrying_it_out(
    harness: Harness,
) -> None:
    """Parked in the transaction that marks it carried out, not held in memory only.

    Its position was stored when it was held: kept in memory only, a sink killed before
    trying it again (nothing else runs after the carry-out here) loses it for good.
    """
    _, candidate, _ = _hold_twin(harness)
    wait_for(lambda: harness.outcome("held") == 1, 60, "the suspect held")
    _stop(harness)
    # The candidate's row changed in the ERP just now, no own event of it read: written
    # into it, the suspect waits for the row's clock.
    execute(
        harness.env["ERP_ADMIN_DSN"],
        "UPDATE public.res_partner SET function = 'Edited in the ERP' WHERE id = %s",
        (candidate,),
    )
    [suspect] = list_suspects(harness.env["ERP_SINK_DSN"], harness.uid)
    assert decide(harness.env["ERP_SINK_DSN"], harness.uid, suspect.id, "link")
    # A sink carries the link out, then is gone before its next step.
    crashing = _runner(harness, LINK_CLOCK_WAIT_MS)
    crashing._sink.setup()
    crashing._carry_out(crashing._sink.pending_suspects())
    crashing._sink.close()
    assert list_suspects(harness.env["ERP_SINK_DSN"], harness.uid)[0].status == "linked"
    assert crashing.stats.outcomes.get("applied", 0) == 0, "carried out while the clock waits"
    # Restarted, the sink applies it once the clock wait is over (a row first seen: from
    # its local change), once, and never reads the topic again from the suspect on.
    harness.runner = _runner(harness, LINK_CLOCK_WAIT_MS)
    harness.thread = threading.Thread(target=harness.runner.run, daemon=True)
    harness.thread.start()
    wait_for(lambda: harness.outcome("applied") == 1, 60, "the linked suspect applied")
    wait_for(lambda: _parked(harness) == [], 10, "unparked")
    assert harness.runner.stats.dead_lettered == 0
    assert harness.stored_position("customer") == 1


def test_a_batch_of_tombstones_only_stores_its_positions(harness: Harness) -> None:
    contact_id = harness.contact(harness.commit_ms(), None)  # offset 0
    wait_for(lambda: _contact_row(harness, contact_id) is not None, 60, "the contact applied")
    wait_for(lambda: harness.stored_position("contact") == 1, 10, "the position past it")
    for _ in range(2):  # offsets 1 and 2: nothing to apply, no event in their batch
        harness.producer.produce(harness.topic("contact"), key=b"crm:gone", value=None)
    harness.producer.flush(10)
    wait_for(lambda: harness.stored_position("contact") == 3, 10, "the position past them")
    wait_for(lambda: harness.committed_position("contact") == 3, 10, "the group's position")
