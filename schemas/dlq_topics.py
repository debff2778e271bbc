"""Dead-letter topics keep every letter: made, or set, with unlimited retention.

Nothing is ever removed from a dead-letter topic: a letter is named by its position
(``erpcrm dlq``) and may be replayed at any later time. Kafka's default retention (seven
days on the local stack) would delete letters nobody has looked at yet, so each stage
that writes dead letters calls :func:`ensure_dead_letter_topic` at start: a missing topic
is created with :data:`KEPT`, an existing one with a finite retention is set to it.

The one place that says how a dead-letter topic is configured; its I/O is Kafka's admin
API only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from schemas.errors import RetriableError
from schemas.settings import KafkaSettings
from schemas.topic_admin import create_topics

log = logging.getLogger(__name__)

__all__ = ["KEPT", "ensure_dead_letter_topic", "missing_settings"]

KEPT: Final[Mapping[str, str]] = {"retention.ms": "-1", "retention.bytes": "-1"}
"""A dead-letter topic's settings: no time or size limit, never compacted away."""

_TIMEOUT: Final = 30.0


def missing_settings(current: Mapping[str, str | None]) -> dict[str, str]:
    """The settings of :data:`KEPT` that ``current`` (a topic's config) does not hold."""
    return {name: value for name, value in KEPT.items() if current.get(name) != value}


def ensure_dead_letter_topic(kafka: KafkaSettings, topic: str, *, partitions: int = 1) -> None:
    """Make ``topic`` exist with :data:`KEPT` (created, or its retention set).

    A topic that exists keeps its partitions. Where the broker refuses to change the
    settings (no ``AlterConfigs`` right), a warning names the topic and what is missing,
    and the stage goes on: losing letters to retention later is better than stopping now.

    Raises:
        RetriableError: the topic can neither be created nor found.
    """
    admin = AdminClient(kafka.client_config())
    if create_topics(admin, [NewTopic(topic, num_partitions=partitions, config=dict(KEPT))]):
        return
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        described = admin.describe_configs([resource])[resource].result(timeout=_TIMEOUT)
        missing = missing_settings({name: entry.value for name, entry in described.items()})
        if not missing:
            return
        entries = [
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in missing.items()
        ]
        wanted = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
        admin.incremental_alter_configs([wanted])[wanted].result(timeout=_TIMEOUT)
        log.info("dead-letter topic %s: %s set (letters are kept forever)", topic, missing)
    except TimeoutError as exc:
        raise RetriableError(
            f"cannot read the settings of topic {topic}: Kafka did not answer within "
            f"{_TIMEOUT:.0f}s"
        ) from exc
    except KafkaException as exc:
        log.warning(
            "dead-letter topic %s keeps letters only as long as its retention allows; "
            "set %s on it (%s)",
            topic,
            dict(KEPT),
            exc,
        )
