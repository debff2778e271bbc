"""Dead letters as an operator sees them: identity, filters, and where a replay goes.

Pure: no Kafka, no clock (times are passed in). :mod:`erpcrm.dlq` reads and writes the
topics.

A dead letter is named by its position, ``<dlq topic>:<partition>:<offset>`` (e.g.
``dlq.streams:0:42``); nothing is ever removed from a dead-letter topic, so the name
stays valid. Replaying one puts its original key and value bytes back into the stage
that failed:

- ``dlq.streams``: into the streams worker's control topic (``<app_id>-control``, the
  app named by the letter's ``erpcrm.app_id``), with the raw message's original
  position in the ``erpcrm.origin.*`` headers. The worker reads that topic together
  with the raw topics and takes such a message for the raw one at its origin, so the
  replay is processed exactly as the original was: an order is re-assembled from its
  stored header and lines, and the worker's dedupe drops whatever was published
  already.
- ``dlq.sinks.<target>``: into ``replay.sinks.<target>``, which only that target's sink
  reads (so the canonical topics never carry an event twice), with the entity, key and
  original canonical position in headers; the sink's versions make it a no-op if the
  entity moved on meanwhile.

Every replay carries ``erpcrm.replay.count`` (the letter's own count plus one); a
replay that fails again comes back as a new dead letter with that count. What was
replayed is recorded in the compacted topic ``dlq.replayed`` (key: the letter's name),
so a second ``replay --all`` skips it unless asked ``--again``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from schemas.deadletter import (
    H_APP_ID,
    H_ENTITY,
    H_ENTITY_KEY,
    H_ERROR_CLASS,
    H_ERROR_FIELD,
    H_ERROR_MESSAGE,
    H_ERROR_REASON,
    H_FLOW,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_REPLAY_COUNT,
    H_STAGE,
    replay_count,
)
from schemas.errors import SyncError
from schemas.topics import dlq_topic, replay_topic
from streams.settings import control_topic

__all__ = [
    "H_REPLAY_OF",
    "STREAMS_STAGE",
    "DeadLetterRecord",
    "LetterFilter",
    "Replay",
    "ReplayMark",
    "entity_of",
    "parse_letter_id",
    "parse_since",
    "plan_replay",
]

STREAMS_STAGE: Final = "streams"
H_REPLAY_OF: Final = "erpcrm.replay.of"
"""Header of a replayed message: the name of the dead letter it came from."""

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_letter_id(text: str) -> tuple[str, int, int]:
    """Split ``<topic>:<partition>:<offset>`` into its parts.

    Raises:
        SyncError: ``text`` is not such a name.
    """
    topic, _, rest = text.strip().partition(":")
    partition, _, offset = rest.partition(":")
    if not topic or not partition.isdigit() or not offset.isdigit():
        raise SyncError(f"{text!r} is not a dead letter id <topic>:<partition>:<offset>")
    return topic, int(partition), int(offset)


def parse_since(text: str, now_ms: int) -> int:
    """A ``--since`` value as ms since the epoch: a duration back from now, or a time.

    ``90s``, ``15m``, ``2h``, ``1d`` (also combined: ``1h30m``) or an ISO 8601 time
    (``2026-12-06T09:00``; UTC when it names no zone).

    Raises:
        SyncError: neither a duration nor a time.
    """
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if parts and _DURATION.sub("", cleaned).strip() == "":
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in parts)
        return now_ms - int(seconds * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SyncError(
            f"--since {text!r}: give a duration (15m, 2h, 1d) or a time (2026-12-06T09:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One message of a dead-letter topic.

    Attributes:
        topic, partition, offset: its position (its name, see :attr:`id`).
        timestamp_ms: when it was written.
        key, value: the original bytes.
        headers: its headers as text.
        entity: the canonical entity it concerns ("" when unknown: a transaction record
            or bytes that did not decode); the caller derives it (see :func:`entity_of`).
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, str]
    entity: str = ""

    @property
    def id(self) -> str:
        """``<topic>:<partition>:<offset>``."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def stage(self) -> str:
        """The stage that dead-lettered it (``streams``, ``sinks.crm``, ...)."""
        return self.headers.get(H_STAGE) or self.topic.removeprefix("dlq.")

    @property
    def reason(self) -> str:
        """The reason code (``unknown_sku``, ``decode_error``, ...)."""
        return self.headers.get(H_ERROR_REASON) or self.headers.get(H_ERROR_CLASS, "")

    @property
    def message(self) -> str:
        """The one-line description of the failure."""
        return self.headers.get(H_ERROR_MESSAGE, "")

    @property
    def origin(self) -> str:
        """Where the failed message was read: ``topic[partition]@offset``."""
        topic = self.headers.get(H_ORIGIN_TOPIC, "?")
        partition = self.headers.get(H_ORIGIN_PARTITION, "?")
        return f"{topic}[{partition}]@{self.headers.get(H_ORIGIN_OFFSET, '?')}"

    @property
    def entity_key(self) -> str:
        """The entity key a sink dead letter names ("" for the streams stage)."""
        return self.headers.get(H_ENTITY_KEY, "")

    @property
    def replays(self) -> int:
        """How many times the failed message had been replayed when it failed."""
        return replay_count(self.headers)

    def age_seconds(self, now_ms: int) -> float:
        """Seconds since it was written."""
        return max(0.0, (now_ms - self.timestamp_ms) / 1000)

    def summary(self, now_ms: int, mark: ReplayMark | None) -> dict[str, Any]:
        """A JSON-ready line of ``erpcrm dlq list``."""
        return {
            "id": self.id,
            "stage": self.stage,
            "reason": self.reason,
            "entity": self.entity,
            "entity_key": self.entity_key or None,
            "field": self.headers.get(H_ERROR_FIELD),
            "origin": self.origin,
            "message": self.message,
            "written_at": datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat(),
            "age_seconds": round(self.age_seconds(now_ms), 1),
            "replay_count": self.replays,
            "replayed": None if mark is None else mark.as_json(),
        }


def entity_of(headers: Mapping[str, str], flow_entities: Mapping[str, str]) -> str:
    """The canonical entity a dead letter concerns: its header, else its flow's target."""
    entity = headers.get(H_ENTITY)
    if entity:
        return entity
    return flow_entities.get(headers.get(H_FLOW, ""), "")


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters a command takes; an unset criterion takes every letter.

    Attributes:
        reason: the reason code, exactly.
        entity: the canonical entity.
        since_ms: written at or after this time (ms since the epoch).
        stage: the stage (``streams``, ``sinks.erp``, ``sinks.crm``).
    """

    reason: str | None = None
    entity: str | None = None
    since_ms: int | None = None
    stage: str | None = None

    @property
    def is_empty(self) -> bool:
        """Whether no criterion is set (it takes everything)."""
        return all(v is None for v in (self.reason, self.entity, self.since_ms, self.stage))

    def matches(self, letter: DeadLetterRecord) -> bool:
        """Whether ``letter`` meets every criterion that is set."""
        return (
            (self.reason is None or letter.reason == self.reason)
            and (self.entity is None or letter.entity == self.entity)
            and (self.since_ms is None or letter.timestamp_ms >= self.since_ms)
            and (self.stage is None or letter.stage == self.stage)
        )


@dataclass(frozen=True, slots=True)
class ReplayMark:
    """The record that a dead letter was replayed (a ``dlq.replayed`` message's value)."""

    letter: str
    replayed_at_ms: int
    topic: str
    replay_count: int

    def as_json(self) -> dict[str, Any]:
        """The JSON form (also the message value)."""
        return {
            "letter": self.letter,
            "replayed_at": datetime.fromtimestamp(self.replayed_at_ms / 1000, UTC).isoformat(),
            "replayed_at_ms": self.replayed_at_ms,
            "to": self.topic,
            "replay_count": self.replay_count,
        }

    def encode(self) -> bytes:
        """The message value."""
        return json.dumps(self.as_json(), sort_keys=True).encode("utf-8")

    @classmethod
    def decode(cls, value: bytes) -> ReplayMark | None:
        """Read a message value; None for one that is not a mark (never raises)."""
        try:
            data = json.loads(value)
            return cls(
                str(data["letter"]),
                int(data["replayed_at_ms"]),
                str(data["to"]),
                int(data["replay_count"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Replay:
    """A message to put back into the stage that failed."""

    letter: DeadLetterRecord
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, str], ...]

    def mark(self, now_ms: int) -> ReplayMark:
        """The record that this replay was made."""
        return ReplayMark(self.letter.id, now_ms, self.topic, self.letter.replays + 1)


def plan_replay(letter: DeadLetterRecord, *, default_app_id: str) -> Replay:
    """Where and how ``letter`` goes back (see the module docstring).

    Args:
        letter: the dead letter.
        default_app_id: the streams app for a streams dead letter that names none.

    Raises:
        SyncError: the letter has no value, names no origin, or comes from a stage
            that cannot take replays.
    """
    headers = letter.headers
    if letter.value is None:
        raise SyncError(f"{letter.id} has no value to replay")
    origin = [
        (name, headers[name])
        for name in (H_ORIGIN_TOPIC, H_ORIGIN_PARTITION, H_ORIGIN_OFFSET)
        if headers.get(name)
    ]
    if len(origin) != 3:
        raise SyncError(f"{letter.id} names no origin (erpcrm.origin.* headers)")
    count = [(H_REPLAY_COUNT, str(letter.replays + 1)), (H_REPLAY_OF, letter.id)]
    stage = letter.stage
    if stage == STREAMS_STAGE:
        app_id = headers.get(H_APP_ID) or default_app_id
        return Replay(letter, control_topic(app_id), letter.key, letter.value, (*origin, *count))
    if stage.startswith("sinks.") and letter.topic == dlq_topic(stage):
        entity = [(H_ENTITY, letter.entity)] if letter.entity else []
        key = [(H_ENTITY_KEY, letter.entity_key)] if letter.entity_key else []
        if not entity:
            raise SyncError(f"{letter.id} names no entity (erpcrm.entity header)")
        return Replay(
            letter, replay_topic(stage), letter.key, letter.value, (*origin, *entity, *key, *count)
        )
    raise SyncError(f"{letter.id}: stage {stage!r} takes no replays")
