"""The streams worker's producer against the real broker.

Keyed records land where Kafka's Java client (and aiokafka) would put them, murmur2 of
the key, so an entity's events stay on one partition whichever client published them;
every record is acknowledged with the offset it really got, headers included.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from erpcrm.stack import LocalStack
from schemas.settings import KafkaSettings
from streams.producer import KafkaBatchSender, Record

pytestmark = pytest.mark.integration

PARTITIONS = 3


def java_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for a keyed record (``Utils.toPositive(murmur2) % n``)."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def test_records_land_on_the_java_clients_partition_with_their_offsets(
    local_stack: LocalStack,
) -> None:
    bootstrap = local_stack.kafka.bootstrap
    topic = f"test-streams-producer-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    try:
        kafka = KafkaSettings(bootstrap=bootstrap)
        sender = KafkaBatchSender(kafka, linger_ms=2, batch_bytes=65536)
        keys = [f"erp:{n}".encode() for n in range(300)] + [b"crm:\xc3\xa9", b""]
        records = [Record(topic, key, b"v" + key, None, [("n", key)]) for key in keys]
        records.append(Record(topic, b"pinned", b"p", 2))
        offsets = asyncio.run(sender.send_all(records))

        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": topic, "enable.partition.eof": True}
        )
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
            found: dict[bytes, tuple[int, int, list[tuple[str, object]]]] = {}
            ended: set[int] = set()
            while len(ended) < PARTITIONS:
                message = consumer.poll(5)
                assert message is not None, "the topic was not read to its end"
                if message.error():
                    ended.add(int(message.partition() or 0))
                    continue
                headers = message.headers() or []
                assert isinstance(headers, list)
                found[bytes(message.value() or b"")] = (
                    int(message.partition() or 0),
                    int(message.offset() or 0),
                    list(headers),
                )
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic])[topic].result(30)

    assert len(found) == len(records)
    for record, offset in zip(records, offsets, strict=True):
        partition, real_offset, got = found[bytes(record.value or b"")]
        expected = record.partition
        if expected is None:
            expected = java_partition(record.key or b"", PARTITIONS)
        assert (partition, real_offset) == (expected, offset), record.key
        assert got == list(record.headers)
    assert len({found[b"v" + key][0] for key in keys}) == PARTITIONS
