"""What the capture may confirm to PostgreSQL, and where it remembers what it confirmed.

:class:`AckTracker` is pure bookkeeping. Every source transaction is registered in commit
order with the number of Kafka records it produced; Kafka delivery reports count them
down. The confirmable LSN is the end LSN of the newest transaction such that it and every
older transaction are fully acknowledged. That LSN, and never more, is reported to
PostgreSQL as flushed: a crash at any moment loses nothing, and at most replays the
transactions not yet confirmed (downstream dedupes them by LSN).

:class:`OffsetStore` keeps the confirmed position in a compacted Kafka topic. It is a
record of progress, not the source of truth (the slot is): it lets a restarted capture
notice that its slot vanished, which would otherwise silently skip changes. With the
position goes the state of running incremental snapshots (:mod:`cdc.incremental`): the
queue and the position after the last chunk at or below that LSN.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from cdc.lsn import Lsn
from schemas.errors import RetriableError
from schemas.settings import KafkaSettings
from schemas.topic_admin import create_topics

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "_erpcrm.cdc.offsets"


class TrackedTx:
    """A transaction in the :class:`AckTracker`: the token its records carry."""

    __slots__ = ("closed", "end_lsn", "pending", "xid")

    def __init__(self, xid: int) -> None:
        self.xid = xid
        self.pending = 0
        self.closed = False
        self.end_lsn = Lsn.ZERO


class AckTracker:
    """Ordered acknowledgement of transactions (pure: no clock, no I/O, not thread-safe).

    Protocol per transaction: :meth:`begin`, then :meth:`add` once per record handed to
    the producer (the returned token goes with the record), then :meth:`commit` with the
    commit's end LSN. :meth:`ack` is called from delivery reports with the token.
    """

    def __init__(self, start: Lsn = Lsn.ZERO) -> None:
        self._queue: deque[TrackedTx] = deque()
        self._confirmable = start
        self._idle_position = start

    def begin(self, xid: int) -> TrackedTx:
        """Open a transaction; returns the token its records carry."""
        tx = TrackedTx(xid)
        self._queue.append(tx)
        return tx

    @staticmethod
    def add(tx: TrackedTx) -> TrackedTx:
        """Count one more record of ``tx`` in flight."""
        tx.pending += 1
        return tx

    def commit(self, tx: TrackedTx, end_lsn: Lsn) -> bool:
        """Close ``tx``: no more records; it is confirmable at ``end_lsn`` once acked.

        Returns whether every record of ``tx`` is already acknowledged.
        """
        tx.end_lsn = end_lsn
        tx.closed = True
        self._advance()
        return tx.pending == 0

    def ack(self, tx: TrackedTx) -> bool:
        """One record of ``tx`` was acknowledged by Kafka (all in-sync replicas).

        Returns whether that completed ``tx`` (closed, and every record acknowledged).
        """
        tx.pending -= 1
        if tx.pending < 0:
            raise AssertionError(f"transaction {tx.xid} acknowledged more often than sent")
        if tx.pending == 0 and tx.closed:
            self._advance()
            return True
        return False

    def idle(self, server_position: Lsn) -> None:
        """The server reports ``server_position`` with nothing in between for us.

        Once everything before is acknowledged, the slot may advance to it; this keeps
        WAL from piling up while the captured tables are quiet.
        """
        self._idle_position = max(self._idle_position, server_position)
        self._advance()

    def _advance(self) -> None:
        queue = self._queue
        while queue and queue[0].closed and queue[0].pending == 0:
            self._confirmable = max(self._confirmable, queue.popleft().end_lsn)
        if not queue:
            self._confirmable = max(self._confirmable, self._idle_position)

    @property
    def confirmable(self) -> Lsn:
        """Highest LSN up to which every change is acknowledged."""
        return self._confirmable

    @property
    def in_flight(self) -> int:
        """Transactions not yet fully acknowledged."""
        return len(self._queue)


@dataclass(frozen=True, slots=True)
class CaptureOffset:
    """The last confirmed progress of one slot."""

    system: str
    slot: str
    lsn: int
    snapshot_completed: bool
    updated_ms: int
    incremental: dict[str, Any] | None = None
    """Incremental snapshots as of ``lsn`` (:meth:`cdc.incremental.IncrementalSnapshots.state`)."""


class OffsetStore:
    """Capture progress in a compacted topic, keyed by slot name.

    Its clients are configured like the capture's own (``kafka``: security extras, the
    worker's client log).
    """

    def __init__(self, kafka: KafkaSettings, topic: str = OFFSETS_TOPIC) -> None:
        self._kafka = kafka
        self._topic = topic
        self._producer = Producer(
            kafka.client_config(**{"acks": "all", "enable.idempotence": True})
        )

    @property
    def topic(self) -> str:
        """The compacted topic holding the offsets."""
        return self._topic

    def ensure_topic(self) -> None:
        """Create the compacted offsets topic if missing."""
        admin = AdminClient(self._kafka.client_config())
        topic = NewTopic(
            self._topic,
            num_partitions=1,
            replication_factor=-1,
            config={"cleanup.policy": "compact"},
        )
        create_topics(admin, [topic])

    def load(self, slot: str, timeout: float = 10.0) -> CaptureOffset | None:
        """Read the latest offset of ``slot`` (None if it never confirmed anything).

        The whole topic is read, up to its end when asked: an answer from part of it
        would be an older offset (one of a snapshot not completed yet, which has the
        capture drop its slot and snapshot again) or none at all.

        Raises:
            RetriableError: Kafka did not answer, or no record came for ``timeout``
                seconds before the end was reached.
        """
        consumer = Consumer(
            self._kafka.client_config(
                **{
                    "group.id": f"erpcrm-offsets-reader-{slot}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                }
            )
        )
        try:
            partition = TopicPartition(self._topic, 0)
            try:
                low, high = consumer.get_watermark_offsets(partition, timeout=timeout)
            except KafkaException as exc:
                raise RetriableError(f"cannot read the end of {self._topic}: {exc}") from exc
            if high <= low:
                return None
            partition.offset = low
            consumer.assign([partition])
            latest: CaptureOffset | None = None
            deadline = time.monotonic() + timeout
            position = low
            while position < high:
                if time.monotonic() > deadline:
                    raise RetriableError(
                        f"read {self._topic} only up to offset {position} of {high}: "
                        f"nothing came for {timeout:.0f}s"
                    )
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                deadline = time.monotonic() + timeout
                position = (message.offset() or position) + 1
                value = message.value()
                if message.key() == slot.encode():
                    # A tombstone deletes the offset: the way to start over on purpose.
                    latest = CaptureOffset(**json.loads(value)) if value else None
            return latest
        finally:
            consumer.close()

    def save(
        self, offset: CaptureOffset, on_stored: Callable[[CaptureOffset], None] | None = None
    ) -> None:
        """Record ``offset`` (asynchronously; :meth:`flush` waits).

        ``on_stored`` is called with it once Kafka acknowledged it (from :meth:`poll`,
        :meth:`save` or :meth:`flush`, on the calling thread).
        """

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is None and on_stored is not None:
                on_stored(offset)

        self._producer.produce(
            self._topic,
            key=offset.slot.encode(),
            value=json.dumps(asdict(offset)).encode(),
            on_delivery=delivered,
        )
        self._producer.poll(0)

    def poll(self) -> None:
        """Serve delivery reports of saved offsets."""
        self._producer.poll(0)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until saved offsets are acknowledged."""
        self._producer.flush(timeout)
