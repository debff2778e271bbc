"""KafkaBatchSender without Kafka: offsets in order, refusals raised, a full queue served.

The librdkafka producer is replaced by a recorder that acknowledges on ``flush``; the
real one is exercised by the streams integration tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError

from schemas.settings import KafkaSettings
from streams.producer import KafkaBatchSender, ProduceError, Record


class FakeMessage:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """Queues produced records; ``flush`` acknowledges them with offsets per partition."""

    def __init__(self, *, full_once: bool = False) -> None:
        self.config: dict[str, Any] = {}
        self.produced: list[tuple[str, bytes | None, bytes | None, int | None, Any]] = []
        self.queue: list[tuple[str, Any]] = []
        self.refuse: set[bytes] = set()
        self.full_once = full_once
        self.polled = 0
        self.next_offset: dict[str, int] = {}

    def produce(self, topic: str, value: Any, key: Any, *args: Any, **kwargs: Any) -> None:
        if self.full_once:
            self.full_once = False
            raise BufferError("queue full")
        partition = None if not args or args[0] == -1 else args[0]
        self.produced.append((topic, key, value, partition, kwargs.get("headers")))
        self.queue.append((topic, (key, kwargs["on_delivery"])))

    def poll(self, timeout: float) -> int:
        self.polled += 1
        return 0

    def flush(self, timeout: float) -> int:
        for topic, (key, report) in self.queue:
            if key in self.refuse:
                report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
                continue
            offset = self.next_offset.get(topic, 0)
            self.next_offset[topic] = offset + 1
            report(None, FakeMessage(offset))
        self.queue.clear()
        return 0


def sender_with(producer: FakeProducer) -> KafkaBatchSender:
    def factory(config: dict[str, Any]) -> FakeProducer:
        producer.config = config
        return producer

    return KafkaBatchSender(
        KafkaSettings(bootstrap="127.0.0.1:1"), linger_ms=2, batch_bytes=65536, factory=factory
    )


def test_every_record_is_acknowledged_and_its_offset_returned_in_order() -> None:
    producer = FakeProducer()
    sender = sender_with(producer)
    records = [
        Record("canonical.customer", b"erp:1", b"a", None, [("h", b"1")]),
        Record("t-changelog", b'"k"', None, 0),
        Record("canonical.customer", b"erp:2", b"b"),
    ]
    assert asyncio.run(sender.send_all(records)) == [0, 0, 1]
    assert producer.produced == [
        ("canonical.customer", b"erp:1", b"a", None, [("h", b"1")]),
        ("t-changelog", b'"k"', None, 0, None),
        ("canonical.customer", b"erp:2", b"b", None, None),
    ]
    assert producer.config["acks"] == "all"
    assert producer.config["enable.idempotence"] is True
    assert producer.config["partitioner"] == "murmur2_random"


def test_nothing_to_send_creates_no_producer() -> None:
    created: list[object] = []
    sender = KafkaBatchSender(
        KafkaSettings(bootstrap="127.0.0.1:1"),
        linger_ms=2,
        batch_bytes=65536,
        factory=lambda config: created.append(config),
    )
    assert asyncio.run(sender.send_all([])) == []
    assert created == []


def test_a_record_kafka_refuses_for_good_raises() -> None:
    producer = FakeProducer()
    producer.refuse.add(b"erp:2")
    sender = sender_with(producer)
    records = [Record("c", b"erp:1", b"a"), Record("c", b"erp:2", b"b" * 10)]
    with pytest.raises(ProduceError, match="refused 1 of 2 records"):
        asyncio.run(sender.send_all(records))


def test_a_full_queue_is_served_and_the_record_handed_over_again() -> None:
    producer = FakeProducer()
    sender = sender_with(producer)

    async def send() -> list[int]:
        producer.full_once = True
        return await sender.send_all([Record("c", b"erp:1", b"a")])

    assert asyncio.run(send()) == [0]
    assert producer.polled == 1
    assert len(producer.produced) == 1
