"""Replayed dead letters, as a sink reads them back (``replay.sinks.<target>``).

``erpcrm dlq replay`` puts a sink's dead letter back on the sink's replay topic: the
canonical event's bytes as they were dead-lettered, and in headers its entity
(``erpcrm.entity``), its original canonical position (``erpcrm.origin.*``) and how many
times it has been replayed (``erpcrm.replay.count``). The sink applies it like any
canonical event; its dead letter, if it fails again, names the original position and
the count.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas.deadletter import (
    H_ENTITY,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    replay_count,
)

__all__ = ["Replayed", "replayed"]


@dataclass(frozen=True, slots=True)
class Replayed:
    """What the headers of a replayed event say.

    Attributes:
        entity: the canonical entity ("" when the header is missing: not decodable).
        replays: its replay count.
        origin: its original canonical ``(topic, partition, offset)``, when named.
    """

    entity: str
    replays: int
    origin: tuple[str, int, int] | None


def replayed(headers: Mapping[str, str]) -> Replayed:
    """Read a replayed event's headers (never raises; what is missing stays empty)."""
    topic = headers.get(H_ORIGIN_TOPIC)
    partition, offset = headers.get(H_ORIGIN_PARTITION, ""), headers.get(H_ORIGIN_OFFSET, "")
    origin = None
    if topic and partition.isdigit() and offset.isdigit():
        origin = (topic, int(partition), int(offset))
    return Replayed(headers.get(H_ENTITY, ""), replay_count(headers), origin)
