"""``erpcrm quality``: the data-quality report, read from the ``quality.defects`` log.

The streams worker logs, per record with defects, what it fixed, quarantined, kept as
typed or dead-lettered (:mod:`streams.quality`). This reads the log (all of it, or what
was logged since a moment) and aggregates it with :func:`streams.quality.summarise`:
defects by entity, field, rule and outcome, and the worst records, so the people who own
the source data know what to fix there. The same figures are the streams metric
``erpcrm_streams_quality_defects_total``.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from schemas.errors import ConfigError, RetriableError
from schemas.settings import KafkaSettings
from schemas.topics import QUALITY_TOPIC
from streams.dlq import H_OUTPUT_ID
from streams.quality import QualityEntry, QualityReport, summarise

__all__ = ["parse_since", "quality_report", "read_entries"]

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now_ms: int) -> int:
    """A ``--since`` value as ms since the epoch: a duration back from now, or a time.

    ``90m``, ``24h``, ``7d`` (``s m h d w``), or ISO 8601 (``2026-12-01``,
    ``2026-12-01T08:00:00+01:00``; no zone: UTC).

    Raises:
        ConfigError: neither a duration nor a time.
    """
    found = _DURATION.match(text)
    if found is not None:
        return now_ms - int(float(found[1]) * _UNIT_SECONDS[found[2]] * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a duration (90m, 24h, 7d) nor an ISO time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def read_entries(
    kafka: KafkaSettings,
    since_ms: int | None = None,
    *,
    topic: str = QUALITY_TOPIC,
    timeout_s: float = 30.0,
) -> tuple[list[QualityEntry], int]:
    """Every entry logged (since ``since_ms``) up to now, and how many were unreadable.

    Reads each partition from its start (or the first entry at or after ``since_ms``)
    to the end it had when the read began. A topic that does not exist yet has no entries.

    Raises:
        RetriableError: Kafka could not be read within ``timeout_s``.
    """
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": "erpcrm-quality-report",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    entries: list[QualityEntry] = []
    unreadable = 0
    try:
        found = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if found is None or found.error is not None:
            return entries, unreadable
        partitions = [TopicPartition(topic, p) for p in found.partitions]
        if since_ms is not None:
            wanted = [TopicPartition(topic, p, since_ms) for p in found.partitions]
            partitions = consumer.offsets_for_times(wanted, timeout=timeout_s)
        ends: dict[int, int] = {}
        start: list[TopicPartition] = []
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=timeout_s
            )
            first = low if tp.offset < 0 and since_ms is None else tp.offset
            if first < 0:  # nothing logged at or after since_ms
                continue
            first = max(first, low)
            if high > first:
                ends[tp.partition] = high
                start.append(TopicPartition(topic, tp.partition, first))
        if not start:
            return entries, unreadable
        consumer.assign(start)
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise RetriableError(f"reading {topic} timed out; {len(ends)} partitions left")
            message = consumer.poll(0.5)
            if message is None:
                continue
            partition = int(message.partition() or 0)
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ends.pop(partition, None)
                    continue
                raise RetriableError(f"reading {topic}: {error}")
            value = message.value()
            headers = dict(message.headers() or ())
            output_id = headers.get(H_OUTPUT_ID) or b""
            if isinstance(output_id, bytes):
                output_id = output_id.decode("utf-8", errors="replace")
            if value is not None:
                try:
                    entries.append(QualityEntry.from_json(value, output_id))
                except ValueError:
                    unreadable += 1
            if int(message.offset() or 0) + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
        return entries, unreadable
    except KafkaException as exc:
        raise RetriableError(f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()


def quality_report(
    kafka: KafkaSettings, since_ms: int | None = None, *, worst: int = 10
) -> tuple[QualityReport, int]:
    """The report of the log (since ``since_ms``), and the number of unreadable entries."""
    entries, unreadable = read_entries(kafka, since_ms)
    return summarise(entries, worst), unreadable
