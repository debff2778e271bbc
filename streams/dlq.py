"""Dead letters of the streams stage: the original bytes, and headers that say why.

A dead letter on ``dlq.streams`` carries the key and value exactly as they were read
from the raw topic, so replaying it (``erpcrm dlq replay``) re-publishes the very
message. Its headers (UTF-8 text) say what went wrong and where the message came from:

==========================  ==============================================================
``erpcrm.error.class``      the typed error: ``ValidationError``, ``DecodeError``, ...
``erpcrm.error.message``    one line: ``<reason> [<field>]: <detail>``
``erpcrm.error.reason``     a :class:`~streams.validation.Reason` value, or
                            ``decode_error``
``erpcrm.error.field``      the offending field (``lines[1].sku``), when known
``erpcrm.stage``            ``streams``
``erpcrm.origin.topic``     the raw topic the message was read from
``erpcrm.origin.partition`` its partition
``erpcrm.origin.offset``    its offset
``erpcrm.flow``             the mapping flow (``erp_res_partner__customer``), when known
``erpcrm.output_id``        the dead letter's deterministic id (see :attr:`output_id`)
``erpcrm.app_id``           the streams app that published it (on canonical events too)
``erpcrm.context.<name>``   more context: an order's id and its latest change's LSN
``erpcrm.replay.count``     how many times the message was replayed (absent: never)
==========================  ==============================================================

A replayed message (``erpcrm dlq replay`` puts it back into the worker's control topic
with its original ``erpcrm.origin.*`` headers and ``erpcrm.replay.count``) that fails
again is dead-lettered again with that count, under a new :attr:`DeadLetter.output_id`
(the count is part of it), so the worker's own "never publish an id twice" check does
not take the new failure for the old one.

A message read from the raw topics carries its position itself; only a message of the
worker's control topic takes it from these headers (see :mod:`streams.app`).

Pure: no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from schemas.deadletter import (
    H_APP_ID,
    H_CONTEXT_PREFIX,
    H_ERROR_CLASS,
    H_ERROR_FIELD,
    H_ERROR_MESSAGE,
    H_ERROR_REASON,
    H_FLOW,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_OUTPUT_ID,
    H_REPLAY_COUNT,
    H_STAGE,
    text_headers,
)
from schemas.errors import SyncError
from schemas.topics import dlq_topic
from streams.validation import Failed

__all__ = [
    "DECODE_ERROR",
    "DLQ_TOPIC",
    "H_APP_ID",
    "H_ERROR_CLASS",
    "H_ERROR_FIELD",
    "H_ERROR_MESSAGE",
    "H_ERROR_REASON",
    "H_FLOW",
    "H_ORIGIN_OFFSET",
    "H_ORIGIN_PARTITION",
    "H_ORIGIN_TOPIC",
    "H_OUTPUT_ID",
    "H_REPLAY_COUNT",
    "H_STAGE",
    "STAGE",
    "DeadLetter",
    "Origin",
    "ReadBytes",
    "from_error",
    "from_failure",
    "text_headers",
    "undecodable",
]

STAGE: Final = "streams"
DLQ_TOPIC: Final = dlq_topic(STAGE)

DECODE_ERROR: Final = "decode_error"
"""The reason of a message whose bytes are not a decodable Avro change event."""

_NAMESPACE: Final = uuid.UUID("0b8f7a52-4c1e-5d39-9a6e-2f3c4b5d6e7f")
_MAX_MESSAGE: Final = 2000


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message was read: topic, partition and offset."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}] offset={self.offset}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the stage could not turn into canonical events, and why.

    Attributes:
        key: the original key bytes (None: the message had none).
        value: the original value bytes.
        error_class: the name of the typed error (``ValidationError``, ...).
        message: one line describing the failure.
        reason: the reason code (a ``Reason`` value or :data:`DECODE_ERROR`).
        origin: where the original message was read.
        field: the offending field, when known.
        flow: the mapping flow, when known.
        context: further ``(name, value)`` pairs, sent as ``erpcrm.context.<name>``.
        replays: how many times the message had been replayed when it failed.
    """

    key: bytes | None
    value: bytes | None
    error_class: str
    message: str
    reason: str
    origin: Origin
    field: str | None = None
    flow: str | None = None
    context: tuple[tuple[str, str], ...] = ()
    replays: int = 0

    @property
    def output_id(self) -> str:
        """A deterministic id: the same failure of the same message gets the same id.

        Lets a restarted worker recognise a dead letter it already published.
        """
        parts = [
            self.origin.topic,
            str(self.origin.partition),
            str(self.origin.offset),
            self.reason,
            self.flow or "",
            *(f"{k}={v}" for k, v in self.context),
        ]
        if self.replays:
            parts.append(f"replay={self.replays}")
        return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))

    def headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers of the dead letter (see the module docstring)."""
        pairs: list[tuple[str, str]] = [
            (H_ERROR_CLASS, self.error_class),
            (H_ERROR_MESSAGE, self.message[:_MAX_MESSAGE]),
            (H_ERROR_REASON, self.reason),
            (H_STAGE, STAGE),
            (H_ORIGIN_TOPIC, self.origin.topic),
            (H_ORIGIN_PARTITION, str(self.origin.partition)),
            (H_ORIGIN_OFFSET, str(self.origin.offset)),
            (H_OUTPUT_ID, self.output_id),
        ]
        if self.field:
            pairs.append((H_ERROR_FIELD, self.field))
        if self.flow:
            pairs.append((H_FLOW, self.flow))
        pairs.extend((f"{H_CONTEXT_PREFIX}{name}", value) for name, value in self.context)
        if self.replays:
            pairs.append((H_REPLAY_COUNT, str(self.replays)))
        return [(name, value.encode("utf-8")) for name, value in pairs]


def from_failure(
    failed: Failed,
    *,
    origin: Origin,
    key: bytes | None,
    value: bytes | None,
    flow: str | None = None,
    context: Iterable[tuple[str, str]] = (),
    replays: int = 0,
) -> DeadLetter:
    """Return the dead letter of a record that failed cleansing or validation."""
    return DeadLetter(
        key=key,
        value=value,
        error_class=type(failed.to_error()).__name__,
        message=failed.message,
        reason=failed.reason.value,
        origin=origin,
        field=failed.field,
        flow=flow,
        context=tuple(context),
        replays=replays,
    )


class ReadBytes(Protocol):
    """A message's bytes and where they were read (an inbound message, a held change)."""

    @property
    def key(self) -> bytes | None:
        """The raw key bytes."""
        ...

    @property
    def value(self) -> bytes | None:
        """The raw value bytes (None: a tombstone)."""
        ...

    @property
    def origin(self) -> Origin:
        """Where they were read."""
        ...

    @property
    def replays(self) -> int:
        """How many times an operator replayed them from the dead-letter topic."""
        ...


def undecodable(error: SyncError, read: ReadBytes, flow: str | None) -> DeadLetter:
    """The dead letter (:data:`DECODE_ERROR`) of bytes that do not decode, as read."""
    return from_error(
        error,
        reason=DECODE_ERROR,
        origin=read.origin,
        key=read.key,
        value=read.value,
        flow=flow,
        replays=read.replays,
    )


def from_error(
    error: SyncError,
    *,
    reason: str,
    origin: Origin,
    key: bytes | None,
    value: bytes | None,
    flow: str | None = None,
    context: Iterable[tuple[str, str]] = (),
    replays: int = 0,
) -> DeadLetter:
    """Return the dead letter of a message that raised a typed error (e.g. DecodeError)."""
    return DeadLetter(
        key=key,
        value=value,
        error_class=type(error).__name__,
        message=f"{reason}: {error}",
        reason=reason,
        origin=origin,
        flow=flow,
        context=tuple(context),
        replays=replays,
    )
