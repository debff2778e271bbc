"""``erpcrm dlq``: read the dead-letter topics, decode one, replay them.

The Kafka half of :mod:`erpcrm.deadletters` (which says what a dead letter is and where
a replay goes). Reads never commit a consumer group; nothing is removed from a
dead-letter topic.

Replay, in this order::

    1. read the replay record (``dlq.replayed``, compacted) and the chosen letters;
    2. produce each replay into the stage that failed (acks=all, idempotent) and wait
       until Kafka has every one;
    3. only then record them in ``dlq.replayed`` and wait for that too.

A crash between 2 and 3 replays those letters again on the next run: harmless, both
stages drop an event they already applied (streams: version and payload hash; sinks:
the sync state). A crash before 2 completes replays nothing that is recorded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from erpcrm.deadletters import (
    DeadLetterRecord,
    LetterFilter,
    Replay,
    ReplayMark,
    entity_of,
    parse_letter_id,
    plan_replay,
)
from schemas.deadletter import text_headers
from schemas.errors import DecodeError, SyncError
from schemas.mapping import load_mappings
from schemas.serde import MAGIC_BYTE, AvroSerde, RegistryClient
from schemas.settings import KafkaSettings
from schemas.topic_admin import create_topics
from schemas.topics import DLQ_REPLAYED, dlq_topic

__all__ = ["DLQ_TOPICS", "DeadLetterTopics", "ReplayReport", "replay_summary"]

DLQ_TOPICS: Final = (dlq_topic("streams"), dlq_topic("sinks.erp"), dlq_topic("sinks.crm"))
"""Every dead-letter topic: the streams stage's and each sink's."""

_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What ``replay`` did: the replays made, and letters skipped as already replayed."""

    replayed: tuple[Replay, ...]
    already: tuple[DeadLetterRecord, ...]
    failed: tuple[tuple[DeadLetterRecord, str], ...]


class DeadLetterTopics:
    """The dead-letter topics of one Kafka cluster.

    Args:
        kafka: where the brokers are.
        registry_url: the schema registry (to decode Avro payloads).
        topics: the dead-letter topics read (default: :data:`DLQ_TOPICS`).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        registry_url: str,
        topics: Sequence[str] = DLQ_TOPICS,
    ) -> None:
        self._kafka = kafka
        self._registry_url = registry_url
        self._topics = tuple(topics)
        self._flow_entities = {name: flow.target for name, flow in load_mappings().items()}

    # ------------------------------------------------------------------- reading

    def _consumer(self) -> Consumer:
        return Consumer(
            self._kafka.client_config(
                **{
                    "group.id": f"erpcrm-dlq-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "isolation.level": "read_committed",
                }
            )
        )

    def _read(self, topics: Iterable[str]) -> Iterator[Message]:
        """Every message of ``topics`` (those that exist), up to their current end."""
        consumer = self._consumer()
        try:
            metadata = consumer.list_topics(timeout=_TIMEOUT)
            assignment = []
            for topic in topics:
                described = metadata.topics.get(topic)
                if described is None or described.error is not None:
                    continue
                for partition in described.partitions:
                    tp = TopicPartition(topic, partition)
                    low, high = consumer.get_watermark_offsets(tp, timeout=_TIMEOUT)
                    if high > low:
                        assignment.append(TopicPartition(topic, partition, low))
            if not assignment:
                return
            ends = {}
            for tp in assignment:
                ends[(tp.topic, tp.partition)] = consumer.get_watermark_offsets(
                    tp, timeout=_TIMEOUT
                )[1]
            consumer.assign(assignment)
            remaining = set(ends)
            deadline = time.monotonic() + _TIMEOUT
            while remaining:
                if time.monotonic() > deadline:
                    raise SyncError(f"Kafka did not deliver {sorted(remaining)} in time")
                for message in consumer.consume(500, 1.0):
                    position = (message.topic() or "", message.partition() or 0)
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            remaining.discard(position)
                            continue
                        raise SyncError(f"reading {position[0]}: {error}")
                    if (message.offset() or 0) + 1 >= ends[position]:
                        remaining.discard(position)
                    deadline = time.monotonic() + _TIMEOUT
                    yield message
        except KafkaException as exc:
            raise SyncError(f"cannot read the dead-letter topics: {exc}") from exc
        finally:
            consumer.close()

    def _letter(self, message: Message) -> DeadLetterRecord:
        headers = text_headers(message.headers())
        _, timestamp = message.timestamp()
        return DeadLetterRecord(
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            timestamp_ms=int(timestamp),
            key=message.key(),
            value=message.value(),
            headers=headers,
            entity=entity_of(headers, self._flow_entities),
        )

    def letters(self, where: LetterFilter | None = None) -> list[DeadLetterRecord]:
        """Every dead letter that ``where`` takes (default: all), oldest first per topic."""
        found = [self._letter(m) for m in self._read(self._topics)]
        return [letter for letter in found if where is None or where.matches(letter)]

    def letter(self, letter_id: str) -> DeadLetterRecord:
        """One dead letter by its name.

        Raises:
            SyncError: no such dead letter.
        """
        topic, partition, offset = parse_letter_id(letter_id)
        if topic not in self._topics:
            raise SyncError(f"{topic} is not a dead-letter topic ({', '.join(self._topics)})")
        consumer = self._consumer()
        try:
            consumer.assign([TopicPartition(topic, partition, offset)])
            deadline = time.monotonic() + _TIMEOUT
            while time.monotonic() < deadline:
                message = consumer.poll(1.0)
                if message is None:
                    continue
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    break
                if error is not None:
                    raise SyncError(f"reading {letter_id}: {error}")
                if message.offset() == offset:
                    return self._letter(message)
                break
        except KafkaException as exc:
            raise SyncError(f"cannot read {letter_id}: {exc}") from exc
        finally:
            consumer.close()
        raise SyncError(f"no dead letter {letter_id}")

    def marks(self) -> dict[str, ReplayMark]:
        """What was replayed: per letter name, its latest replay."""
        found: dict[str, ReplayMark] = {}
        for message in self._read([DLQ_REPLAYED]):
            value = message.value()
            mark = None if value is None else ReplayMark.decode(value)
            if mark is not None:
                found[mark.letter] = mark
        return found

    def decode(self, letter: DeadLetterRecord) -> dict[str, Any]:
        """The letter's key and value, each decoded from Avro where it is Avro.

        Returns ``{"key": …, "value": record | None, "value_error": str | None}``. A key in
        Confluent's wire format (a raw change event's primary key) is its record; any other
        key (a canonical entity key) is UTF-8 text. A value that does not decode is hex,
        with the reason in ``value_error``.
        """
        with RegistryClient(self._registry_url) as client:
            serde = AvroSerde(client)
            key = _decoded_key(serde, letter.key)
            if letter.value is None:
                return {"key": key, "value": None, "value_error": None}
            try:
                record = serde.decode(letter.value)
            except DecodeError as exc:
                return {"key": key, "value": letter.value.hex(), "value_error": str(exc)}
        return {"key": key, "value": record, "value_error": None}

    # ------------------------------------------------------------------ replaying

    def replay(
        self,
        letters: Sequence[DeadLetterRecord],
        *,
        again: bool,
        default_app_id: str,
        now_ms: int,
    ) -> ReplayReport:
        """Replay ``letters`` into the stages that failed (module docstring's order).

        Letters already replayed are skipped unless ``again``; a letter that cannot be
        replayed (no value, no origin, a destination no worker made) is reported, the
        others go on.
        """
        marks = self.marks()
        plans: list[Replay] = []
        already: list[DeadLetterRecord] = []
        failed: list[tuple[DeadLetterRecord, str]] = []
        for letter in letters:
            if letter.id in marks and not again:
                already.append(letter)
                continue
            try:
                plans.append(plan_replay(letter, default_app_id=default_app_id))
            except SyncError as exc:
                failed.append((letter, str(exc)))
        missing = self._missing_topics({p.topic for p in plans})
        failed.extend(
            (p.letter, f"nothing reads {p.topic} (start the worker that owns it first)")
            for p in plans
            if p.topic in missing
        )
        plans = [p for p in plans if p.topic not in missing]
        if plans:
            # 1. the replays, every one acknowledged ...
            self._produce((p.topic, p.key, p.value, list(p.headers)) for p in plans)
            # 2. ... only then the record of them.
            self._ensure_marks_topic()
            self._produce(
                (DLQ_REPLAYED, p.letter.id.encode(), p.mark(now_ms).encode(), []) for p in plans
            )
        return ReplayReport(tuple(plans), tuple(already), tuple(failed))

    def _missing_topics(self, topics: set[str]) -> set[str]:
        """The ones of ``topics`` no worker made: a replay there would reach nobody.

        (A streams app that is gone, or a sink that never ran.)
        """
        if not topics:
            return set()
        admin = AdminClient(self._kafka.client_config())
        try:
            existing = set(admin.list_topics(timeout=_TIMEOUT).topics)
        except KafkaException as exc:
            raise SyncError(f"cannot list topics: {exc}") from exc
        return topics - existing

    def _ensure_marks_topic(self) -> None:
        admin = AdminClient(self._kafka.client_config())
        topic = NewTopic(DLQ_REPLAYED, num_partitions=1, config={"cleanup.policy": "compact"})
        create_topics(admin, [topic])

    def _produce(
        self,
        messages: Iterable[
            tuple[str, bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]
        ],
    ) -> None:
        """Produce ``(topic, key, value, headers)`` and wait until Kafka has every one."""
        errors: list[str] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(str(error))

        producer = Producer(self._kafka.client_config(**{"enable.idempotence": True}))
        for topic, key, value, headers in messages:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
            producer.poll(0)
        if producer.flush(_TIMEOUT) > 0:
            raise SyncError("Kafka did not acknowledge every message in time")
        if errors:
            raise SyncError(f"Kafka refused {len(errors)} messages: {errors[0]}")


def _decoded_key(serde: AvroSerde, key: bytes | None) -> Any:
    """A key's Avro record where it is in the wire format, else its UTF-8 text."""
    if key is None:
        return None
    if key[:1] == bytes([MAGIC_BYTE]):
        try:
            return serde.decode(key)
        except DecodeError:
            pass  # text that happens to start with NUL: shown as text below
    return key.decode("utf-8", "replace")


def replay_summary(report: ReplayReport) -> Mapping[str, Any]:
    """The JSON form of a :class:`ReplayReport`."""
    return {
        "replayed": [
            {"id": p.letter.id, "to": p.topic, "replay_count": p.letter.replays + 1}
            for p in report.replayed
        ],
        "already_replayed": [letter.id for letter in report.already],
        "failed": [{"id": letter.id, "error": error} for letter, error in report.failed],
    }
