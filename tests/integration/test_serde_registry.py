"""Avro serde against the real schema registry (Apicurio, Confluent-compatible API) and Kafka.

Needs the local stack: the ``stack_env`` fixture (tests/integration/conftest.py) starts
it once per session and yields ``SCHEMA_REGISTRY_URL`` and ``KAFKA_BOOTSTRAP``. Every
test uses subjects and topics of its own, so runs never collide with earlier ones kept
in the registry's persistent storage.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from cdc.envelope import (
    ColumnShape,
    SourceInfo,
    TableShape,
    envelope_record,
    key_record,
    key_schema,
    transaction_begin_record,
    transaction_id,
    transaction_key_record,
    transaction_key_schema,
    transaction_value_schema,
    value_schema,
)
from schemas import topics
from schemas.registry_http import RegistryHttpClient
from schemas.serde import AvroSerde, IncompatibleSchemaError, RegistryClient

pytestmark = pytest.mark.integration


def _shape(system: str, *extra: ColumnShape) -> TableShape:
    return TableShape(
        system,
        "public",
        "product_product",
        (
            ColumnShape("id", "int4", nullable=False, is_key=True),
            ColumnShape("default_code", "varchar", nullable=False),
            ColumnShape("name", "text"),
            ColumnShape("list_price", "numeric", numeric_precision=12, numeric_scale=2),
            ColumnShape("write_date", "timestamptz"),
            *extra,
        ),
    )


def _source(system: str) -> SourceInfo:
    return SourceInfo(
        version="0.1.0",
        name=system,
        ts_ms=1_700_000_000_000,
        db=system,
        schema="public",
        table="product_product",
        tx_id=900,
        lsn=123_456,
    )


def _row() -> dict[str, Any]:
    return {
        "id": 1,
        "default_code": "SKU-1",
        "name": "Widget",
        "list_price": Decimal("19.90"),
        "write_date": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    }


@pytest.fixture
def system() -> str:
    """A system name of this test alone, so its subjects and topics are fresh."""
    return f"it{uuid.uuid4().hex[:10]}"


@pytest.fixture
def registry(stack_env: dict[str, str]) -> Iterator[RegistryClient]:
    with RegistryClient(stack_env["SCHEMA_REGISTRY_URL"]) as client:
        yield client


def test_register_encode_decode_evolve(
    stack_env: dict[str, str], registry: RegistryClient, system: str
) -> None:
    shape = _shape(system)
    subject = topics.value_subject(topics.raw_topic(system, "public", "product_product"))
    serde = AvroSerde(registry)
    v1 = value_schema(shape)
    record = envelope_record(
        shape, op="c", before=None, after=_row(), source=_source(system), ts_ms=1
    )

    data = serde.encode(subject, v1, record)
    assert serde.decode(data) == record
    # A process with empty caches fetches the writer schema by id.
    with RegistryClient(stack_env["SCHEMA_REGISTRY_URL"]) as fresh:
        assert AvroSerde(fresh).decode(data) == record
        assert fresh.register(subject, v1) == AvroSerde.schema_id_of(data)

    raw_client = SchemaRegistryClient({"url": stack_env["SCHEMA_REGISTRY_URL"]})
    assert raw_client.get_compatibility(subject) == "BACKWARD"

    latest = registry.latest(subject)
    assert latest is not None
    assert latest.schema_id == AvroSerde.schema_id_of(data)
    assert latest.schema["name"] == "Envelope"

    # A column added NOT NULL: evolved from the registered schema, it is accepted.
    evolved_shape = _shape(system, ColumnShape("uom", "varchar", nullable=False))
    v2 = value_schema(evolved_shape, previous=latest.schema)
    v2_id = registry.register(subject, v2)
    assert v2_id != latest.schema_id
    assert serde.decode(data, reader_schema=v2)["after"]["uom"] is None
    evolved = envelope_record(
        evolved_shape,
        op="u",
        before=None,
        after={**_row(), "uom": "pcs"},
        source=_source(system),
        ts_ms=2,
    )
    assert serde.decode(serde.encode(subject, v2, evolved)) == evolved

    # Another NOT NULL column without evolving: a required field without default,
    # which BACKWARD forbids.
    breaking_shape = _shape(
        system,
        ColumnShape("uom", "varchar"),
        ColumnShape("weight", "float8", nullable=False),
    )
    with pytest.raises(IncompatibleSchemaError):
        registry.register(subject, value_schema(breaking_shape))


def test_confluent_deserializer_reads_our_bytes(
    stack_env: dict[str, str], registry: RegistryClient, system: str
) -> None:
    shape = _shape(system)
    topic = topics.raw_topic(system, "public", "product_product")
    serde = AvroSerde(registry)
    record = envelope_record(
        shape, op="r", before=None, after=_row(), source=_source(system), ts_ms=1
    )
    key = key_record(shape, _row())
    key_bytes = serde.encode(topics.key_subject(topic), key_schema(shape), key)
    value_bytes = serde.encode(topics.value_subject(topic), value_schema(shape), record)

    client = SchemaRegistryClient({"url": stack_env["SCHEMA_REGISTRY_URL"]})
    deserializer = AvroDeserializer(client)
    assert deserializer(value_bytes, SerializationContext(topic, MessageField.VALUE)) == record
    assert deserializer(key_bytes, SerializationContext(topic, MessageField.KEY)) == key


def test_round_trip_through_kafka(
    stack_env: dict[str, str], registry: RegistryClient, system: str
) -> None:
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    shape = _shape(system)
    topic = topics.raw_topic(system, "public", "product_product")
    tx_topic = topics.transaction_topic(system)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1) for name in (topic, tx_topic)]
    ).values():
        future.result(timeout=30)

    serde = AvroSerde(registry)
    tx = transaction_id(900, 123_456)
    source = replace(_source(system), sequence=None)
    insert = envelope_record(shape, op="c", before=None, after=_row(), source=source, ts_ms=1)
    delete = envelope_record(shape, op="d", before={"id": 1}, after=None, source=source, ts_ms=2)
    key = serde.encode(topics.key_subject(topic), key_schema(shape), key_record(shape, _row()))
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(
        tx_topic,
        key=serde.encode(
            topics.key_subject(tx_topic), transaction_key_schema(), transaction_key_record(tx)
        ),
        value=serde.encode(
            topics.value_subject(tx_topic),
            transaction_value_schema(),
            transaction_begin_record(tx, ts_ms=1),
        ),
    )
    for value in (insert, delete):
        producer.produce(
            topic,
            key=key,
            value=serde.encode(topics.value_subject(topic), value_schema(shape), value),
        )
    producer.produce(topic, key=key, value=None)  # the tombstone after a delete
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{system}-test",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        received: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for _ in range(60):
            if len(received) == 3:
                break
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            key_bytes, value_bytes = message.key(), message.value()
            assert key_bytes is not None
            decoded = None if value_bytes is None else serde.decode(value_bytes)
            received.append((serde.decode(key_bytes), decoded))
    finally:
        consumer.close()
    assert received == [({"id": 1}, insert), ({"id": 1}, delete), ({"id": 1}, None)]


def test_workers_registering_the_same_subjects_at_once_all_succeed(
    stack_env: dict[str, str],
) -> None:
    """Several workers start together and register the same new subjects at the same
    moment (each its own client, as each process has): every one gets the same id and
    the subjects end BACKWARD. Apicurio answers the second of two concurrent first
    compatibility settings with 409 "a rule named 'COMPATIBILITY' already exists",
    which once stopped a capture at start."""
    run = uuid.uuid4().hex[:8]
    subjects = [f"race-{run}-{i}-value" for i in range(6)]
    schema = value_schema(_shape("erp"))
    workers = 8
    barrier = threading.Barrier(workers)
    ids: dict[str, set[int]] = {s: set() for s in subjects}
    failures: list[BaseException] = []

    def worker() -> None:
        with RegistryClient(stack_env["SCHEMA_REGISTRY_URL"]) as client:
            barrier.wait()
            for subject in subjects:
                try:
                    ids[subject].add(client.register(subject, schema))
                except Exception as exc:  # every failure is reported
                    failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert all(len(found) == 1 for found in ids.values()), ids
    with RegistryHttpClient(stack_env["SCHEMA_REGISTRY_URL"]) as http:
        assert {s: http.get_compatibility(s) for s in subjects} == dict.fromkeys(
            subjects, "BACKWARD"
        )
