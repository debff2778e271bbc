"""The worker's Kafka producer: a batch of records out, every acknowledgement awaited once.

A batch's canonical events, dead letters and data-quality entries, and then its state
writes to the tables' changelogs, each go out as one :meth:`BatchSender.send_all`: every
record is handed to librdkafka (``acks=all``, idempotent, so Kafka keeps each
partition's records in the order they were given, retries included), and the call
returns once Kafka acknowledged all of them, with the offset each got. Handing a record
over costs a few microseconds; the acknowledgements are awaited in one executor call.

A record without a partition goes where Kafka's Java client (and every Kafka Streams or
Connect consumer that relies on it) would put it: murmur2 of its key
(``partitioner=murmur2_random``), so an entity's events share one partition.

Nothing is given up on: a broker that is away is waited for (``message.timeout.ms=0``,
librdkafka retries), with a warning every ``warn_after_s``; a record Kafka refuses for
good (too large, topic not authorised) or a fatal producer error raises
:class:`ProduceError`, which stops the worker before its offsets are committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer

from schemas.errors import SyncError
from schemas.settings import KafkaSettings

__all__ = ["BatchSender", "KafkaBatchSender", "ProduceError", "Record"]

log = logging.getLogger(__name__)

Header = tuple[str, bytes]

_UNASSIGNED = -1
"""librdkafka's "no partition given": the partitioner decides (``RD_KAFKA_PARTITION_UA``)."""


@dataclass(slots=True)
class Record:
    """One record to produce; ``partition`` None: murmur2 of the key decides.

    Never changed once made; not frozen, since one is made per output and per changelog
    record and a frozen constructor costs about three times a plain one.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: Sequence[Header] = ()


class ProduceError(SyncError):
    """Kafka refused a record for good, or the producer failed fatally."""


class BatchSender(Protocol):
    """Sends records and returns once Kafka acknowledged every one."""

    async def send_all(self, records: Sequence[Record]) -> list[int]:
        """Send ``records`` (in order per partition); return the offset each got, in order."""
        ...


class KafkaBatchSender:
    """:class:`BatchSender` over one librdkafka producer, created on first use.

    One batch at a time: a call returns before the next starts (the worker's batches are
    sequential); a second concurrent call would wait for the first's records too.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        linger_ms: float,
        batch_bytes: int,
        warn_after_s: float = 30.0,
        factory: Callable[[dict[str, Any]], Any] = Producer,
    ) -> None:
        self._config = kafka.client_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "batch.size": batch_bytes,
                "partitioner": "murmur2_random",
                "message.timeout.ms": 0,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1024 * 1024,
            }
        )
        self._factory = factory
        self._producer: Any = None
        self._warn_after_s = warn_after_s

    def _client(self) -> Any:
        if self._producer is None:
            self._producer = self._factory(self._config)
        return self._producer

    def serve_reports(self) -> None:
        """Hand over the producer's queued log lines, errors and statistics (no wait).

        A producer idle between batches is not polled otherwise: what it reports would
        wait, and pile up, until the next batch.
        """
        if self._producer is not None:
            self._producer.poll(0)

    async def send_all(self, records: Sequence[Record]) -> list[int]:
        """Produce ``records``, wait for every acknowledgement, return their offsets.

        Raises:
            ProduceError: a record was refused for good, or the producer failed fatally.
        """
        if not records:
            return []
        producer = self._client()
        offsets: list[int] = [-1] * len(records)
        errors: list[KafkaError] = []

        def delivered(index: int) -> Callable[[KafkaError | None, Message], None]:
            def report(error: KafkaError | None, message: Message) -> None:
                if error is not None:
                    errors.append(error)
                else:
                    offsets[index] = int(message.offset() or 0)

            return report

        for index, record in enumerate(records):
            self._produce(producer, record, delivered(index))
        await self._flush(producer, len(records))
        if errors:
            first = errors[0]
            raise ProduceError(
                f"Kafka refused {len(errors)} of {len(records)} records: {first.str()}"
                + (" (fatal)" if first.fatal() else "")
            )
        return offsets

    @staticmethod
    def _produce(producer: Any, record: Record, report: Callable[..., None]) -> None:
        """Hand one record to librdkafka; when its queue is full, serve reports and retry."""
        partition = _UNASSIGNED if record.partition is None else record.partition
        while True:
            try:
                producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    partition,
                    headers=list(record.headers) or None,
                    on_delivery=report,
                )
                return
            except BufferError:
                producer.poll(0.1)

    async def _flush(self, producer: Any, count: int) -> None:
        """Wait (off the event loop) until librdkafka has no record of ours left."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        warned = started
        while await loop.run_in_executor(None, producer.flush, 1.0):
            now = time.monotonic()
            if now - warned >= self._warn_after_s:
                warned = now
                log.warning(
                    "streams producer: %d records not acknowledged after %.0fs; waiting for Kafka",
                    count,
                    now - started,
                )
