"""Source horizons: how far a stage has decided and published a source system's changes.

A record on ``horizon.streams`` (:data:`STREAMS_HORIZON_TOPIC`) says: *every change of
``system`` committed in a transaction at or before commit LSN ``lsn`` (commit time
``commit_ts_ms``) has been decided by the streams stage, and what it published for
them is acknowledged by Kafka*. The streams worker publishes one per system about every
second, only while it runs and has read that system's topics to their end; the capture's
heartbeats (empty transactions on ``<system>.transaction``) move it on while the source
is quiet. A consumer takes the largest it has read: a stopped worker publishes none, so
its horizon simply stops moving.

Key: the system (``erp``, ``crm``) as plain UTF-8, so a system's records stay in order
on one partition. Value: Avro (:func:`horizon_schema`), Confluent wire format, subject
``horizon.streams-value``. The topic keeps an hour (:data:`HORIZON_TOPIC_CONFIG`): only
its latest records matter.

The one place that says what a horizon record holds and how its topic is made; its I/O
is Kafka's admin API only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.settings import KafkaSettings
from schemas.topic_admin import create_topics
from schemas.topics import horizon_topic

__all__ = [
    "HORIZON_TOPIC_CONFIG",
    "STREAMS_HORIZON_TOPIC",
    "SourceHorizon",
    "ensure_horizon_topic",
    "horizon_schema",
]

STREAMS_HORIZON_TOPIC: Final = horizon_topic("streams")
"""Where the streams stage publishes its source horizons."""

HORIZON_TOPIC_CONFIG: Final[Mapping[str, str]] = {"retention.ms": str(3_600_000)}
"""A horizon topic's settings: an hour of records (readers want the latest only)."""


def horizon_schema() -> dict[str, Any]:
    """The Avro value schema of a horizon record."""
    return {
        "type": "record",
        "name": "SourceHorizon",
        "namespace": "erpcrm.horizon",
        "doc": "Every change of system committed at or before lsn (commit_ts_ms) is decided "
        "and published by stage.",
        "fields": [
            {"name": "system", "type": "string"},
            {"name": "lsn", "type": "long", "doc": "commit LSN of the last transaction passed"},
            {
                "name": "commit_ts_ms",
                "type": "long",
                "doc": "its commit time, ms since the epoch",
            },
            {"name": "published_ms", "type": "long", "doc": "when this record was made"},
        ],
    }


@dataclass(frozen=True, slots=True)
class SourceHorizon:
    """One horizon record (see the module doc)."""

    system: str
    lsn: int
    commit_ts_ms: int
    published_ms: int = 0

    def as_record(self) -> dict[str, Any]:
        """The Avro datum."""
        return {
            "system": self.system,
            "lsn": self.lsn,
            "commit_ts_ms": self.commit_ts_ms,
            "published_ms": self.published_ms,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Read a decoded datum back."""
        return cls(
            str(record["system"]),
            int(record["lsn"]),
            int(record["commit_ts_ms"]),
            int(record.get("published_ms") or 0),
        )


def ensure_horizon_topic(kafka: KafkaSettings, topic: str = STREAMS_HORIZON_TOPIC) -> None:
    """Make ``topic`` exist: one partition, :data:`HORIZON_TOPIC_CONFIG` (one found stays).

    Raises:
        RetriableError: the topic can neither be created nor found.
    """
    admin = AdminClient(kafka.client_config())
    create_topics(admin, [NewTopic(topic, num_partitions=1, config=dict(HORIZON_TOPIC_CONFIG))])
