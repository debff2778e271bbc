"""SinkBatch: the canonical events a sink applies in one database transaction.

Contract:

- Events are grouped per entity key (``(entity, key)``, the Kafka message key
  ``<source system>:<id>``). Within a key, arrival order is kept: Kafka keeps per-key
  order within a partition, and one key lives in one partition.
- Canonical events are full-state snapshots of an entity (every business field, not a
  diff), so applying only the latest version of a key gives the same table as applying
  every version in order. A soft delete of a customer or contact is one too (the row's
  values with ``active: false``), so the edits before it survive the collapse; a delete
  that removes its record carries only ids and ends it. :meth:`SinkBatch.collapse`
  picks, per key, the event with the highest ``version`` (on a tie, the later arrival:
  a redelivery of the same change) and remembers the others as *superseded*, so they
  can be counted and their offsets still committed.
- The batch tracks, per ``(topic, partition)``, the next offset to consume after it:
  the position the sink stores together with the applied rows (DESIGN.md §5.1).

Pure: no Kafka or database access.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from schemas.payload import Headers, carried_digest

__all__ = [
    "DECIDING_FIELDS",
    "Collapsed",
    "EntityKey",
    "SinkBatch",
    "SinkEvent",
    "TopicPartition",
    "safe_offsets",
]

EntityKey = tuple[str, str]
"""``(entity, key)``: the unit of ordering, versioning and sync state."""

TopicPartition = tuple[str, int]

DECIDING_FIELDS: Final = frozenset({"source_system", "source_ts_ms", "op", "version"})
"""What a sink reads of an event before it knows the event is newer than what it applied
(the canonical schemas lead with them): the rest of a record is decoded only for events
that proceed (:meth:`SinkEvent.complete`)."""


@dataclass(slots=True)
class SinkEvent:
    """One decoded canonical event with its Kafka position; never changed once made.

    Not a frozen dataclass, on purpose: one is made per message read, and a frozen
    dataclass' constructor (one ``object.__setattr__`` per field) costs more than
    deciding a replayed event does. It was never hashable either (``record`` is a dict).

    Attributes:
        topic: the canonical topic (``canonical.<entity>``).
        partition: the Kafka partition.
        offset: the Kafka offset.
        entity: the canonical entity.
        key: the message key, ``<source system>:<entity id in that system>``.
        record: the decoded Avro datum (metadata, ids and business fields).
        raw_key, raw_value: the message bytes as read (what a dead letter carries).
        replays: how many times an operator replayed it from the dead-letter topic.
        replayed_from: for a replayed event (read from ``replay.sinks.<target>``), its
            original canonical ``(topic, partition, offset)``; its dead letter names
            that position, not the replay's.
        rest: for an event decoded lazily, reads the rest of its record into
            ``record``, which until then holds the leading fields only (at least
            :data:`DECIDING_FIELDS`); None: ``record`` is whole. See :meth:`complete`.
        headers: reads the message's Kafka headers; called only by :meth:`digest`, for
            an event the version does not settle (a replay of applied events never
            reads them). None: no headers.
    """

    topic: str
    partition: int
    offset: int
    entity: str
    key: str
    record: Mapping[str, Any]
    raw_key: bytes | None = None
    raw_value: bytes | None = None
    replays: int = 0
    replayed_from: tuple[str, int, int] | None = None
    rest: Callable[[], None] | None = None
    headers: Callable[[], Headers] | None = None

    def complete(self) -> Mapping[str, Any]:
        """The whole record, its rest read first when it was decoded lazily (once).

        Anything beyond :data:`DECIDING_FIELDS` is read only after this.

        Raises:
            DecodeError: the rest of the record does not decode.
        """
        if self.rest is not None:
            self.rest()
        return self.record

    def digest(self) -> str | None:
        """The payload hash the streams stage sent along for this message; None: none.

        Read from the header :data:`~schemas.payload.PAYLOAD_HASH_HEADER` and trusted as
        :func:`~schemas.payload.payload_hash` of ``record`` only when it was made for
        ``raw_value`` (:func:`~schemas.payload.carried_digest`). None when the header is
        absent (a replayed dead letter, an event of an older streams worker), malformed,
        or made for another value (a message produced again, edited, with its headers
        kept), or when ``raw_value`` or ``headers`` is None: the sink computes the hash.
        """
        if self.headers is None:
            return None
        return carried_digest(self.headers(), self.raw_value)

    @property
    def entity_key(self) -> EntityKey:
        """``(entity, key)``."""
        return (self.entity, self.key)

    @property
    def version(self) -> int:
        """The event's version: monotonic per entity key."""
        return int(self.record["version"])

    @property
    def op(self) -> str:
        """``upsert`` or ``delete``."""
        return str(self.record["op"])

    @property
    def source_system(self) -> str:
        """``erp`` or ``crm``: where the change was committed."""
        return str(self.record["source_system"])

    @property
    def source_ts_ms(self) -> int:
        """Commit time in the source system, ms since the epoch."""
        return int(self.record["source_ts_ms"])


@dataclass(frozen=True, slots=True)
class Collapsed:
    """The result of :meth:`SinkBatch.collapse`.

    Attributes:
        latest: per entity key, the event to apply; keys in first-arrival order.
        superseded: the other events of the batch, by (topic, partition, offset); never
            applied, but their offsets are committed with the batch.
    """

    latest: tuple[SinkEvent, ...]
    superseded: tuple[SinkEvent, ...]


class SinkBatch:
    """Canonical events grouped per entity key, in per-key arrival order."""

    def __init__(self, events: Iterable[SinkEvent] = ()) -> None:
        self._by_key: dict[EntityKey, list[SinkEvent]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._count = 0
        for event in events:
            self.add(event)

    def add(self, event: SinkEvent) -> None:
        """Append ``event`` to its key's sequence and advance its partition's position.

        An offset at or below one already seen for the partition (a redelivery) is
        accepted; the position never moves backwards.
        """
        self._by_key.setdefault(event.entity_key, []).append(event)
        position = (event.topic, event.partition)
        self._next[position] = max(self._next.get(position, 0), event.offset + 1)
        self._count += 1

    def advance(self, topic: str, partition: int, offset: int) -> None:
        """Move a partition's position past a message that is not an event.

        For a tombstone, or a message dead-lettered before the batch.
        """
        position = (topic, partition)
        self._next[position] = max(self._next.get(position, 0), offset + 1)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    @property
    def moves(self) -> bool:
        """Whether it moves a position: it has events, or messages passed (:meth:`advance`).

        A batch of tombstones only has no event and is written all the same, for the
        positions it stores.
        """
        return bool(self._next)

    def __iter__(self) -> Iterator[SinkEvent]:
        """Every event, grouped by key (keys in first-arrival order), per-key order kept."""
        for events in self._by_key.values():
            yield from events

    def keys(self) -> tuple[EntityKey, ...]:
        """The entity keys of the batch, in first-arrival order."""
        return tuple(self._by_key)

    def entities(self) -> tuple[str, ...]:
        """The entities of the batch, in first-arrival order, each once."""
        return tuple(dict.fromkeys(entity for entity, _ in self._by_key))

    def events(self, entity_key: EntityKey) -> tuple[SinkEvent, ...]:
        """The events of one key, in arrival order."""
        return tuple(self._by_key.get(entity_key, ()))

    def next_offsets(self) -> dict[TopicPartition, int]:
        """Per ``(topic, partition)``: the offset after the last event of the batch."""
        return dict(self._next)

    def collapse(self) -> Collapsed:
        """Per key, the highest version (later arrival on a tie); the rest superseded."""
        latest: list[SinkEvent] = []
        winners: set[int] = set()
        for events in self._by_key.values():
            best = 0
            for index, event in enumerate(events):
                if event.version >= events[best].version:
                    best = index
            latest.append(events[best])
            winners.add(id(events[best]))
        superseded = [e for events in self._by_key.values() for e in events if id(e) not in winners]
        superseded.sort(key=lambda e: (e.topic, e.partition, e.offset))
        return Collapsed(latest=tuple(latest), superseded=tuple(superseded))


def safe_offsets(
    next_offsets: Mapping[TopicPartition, int], held: Iterable[SinkEvent]
) -> dict[TopicPartition, int]:
    """The positions that may be stored while ``held`` events are not applied yet.

    Per partition, the batch's next offset, but never past a held event: a restart then
    reads the held events again (and skips, by version, whatever after them was
    applied).
    """
    result = dict(next_offsets)
    for event in held:
        position = (event.topic, event.partition)
        if position in result:
            result[position] = min(result[position], event.offset)
    return result
