"""Dedupe decisions: drop redelivered, out-of-date and no-op canonical events.

Kafka delivers at least once, and a restarted stage re-reads from its last committed
offset, so the same change can arrive twice, and a change can be re-emitted after a
newer one. Two guards, both over a plain dict keyed by entity key
(:data:`DedupeState`: key -> ``(last version, payload hash)``):

1. **Version.** An event whose ``version`` is at or below the last one kept for its
   entity is stale: a duplicate or overtaken. Versions are per entity and source system
   (see :mod:`streams.transform`), so the key must include the source system.
2. **Payload.** An event whose business payload hashes the same as the last one kept
   is a no-op (an update that changed nothing the other side sees, or an echo of our
   own write); its version is still recorded.

:func:`observe` applies both and updates the state; :func:`decide` only decides.
The outcome depends only on the state and the event, never on arrival time, so
replaying a partition after a restart drops exactly what was already emitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeAlias

from schemas.payload import HASH_EXCLUDED, payload_hash

__all__ = [
    "HASH_EXCLUDED",
    "DedupeState",
    "Verdict",
    "decide",
    "observe",
    "payload_hash",
    "remember",
    "seen",
]

DedupeState: TypeAlias = dict[str, tuple[int, str]]
"""Entity key -> (version, payload hash) of the last event kept."""


class Verdict(StrEnum):
    """What to do with an event."""

    EMIT = "emit"
    STALE = "stale"
    """Version at or below the last kept: a duplicate or an overtaken change; drop."""
    NO_OP = "no_op"
    """Newer, but the same payload as the last kept; drop (the version is recorded)."""


def seen(state: Mapping[str, tuple[int, str]], key: str, version: int) -> bool:
    """Whether an event of ``key`` at ``version`` is stale (and so must be dropped)."""
    last = state.get(key)
    return last is not None and version <= last[0]


def decide(state: Mapping[str, tuple[int, str]], key: str, version: int, digest: str) -> Verdict:
    """Decide about one event without changing ``state``."""
    last = state.get(key)
    if last is None:
        return Verdict.EMIT
    if version <= last[0]:
        return Verdict.STALE
    return Verdict.NO_OP if digest == last[1] else Verdict.EMIT


def remember(state: DedupeState, key: str, version: int, digest: str) -> None:
    """Record ``(version, digest)`` as the last event kept for ``key``."""
    state[key] = (version, digest)


def observe(state: DedupeState, key: str, version: int, digest: str) -> Verdict:
    """Decide about one event and record it unless stale; return the verdict.

    Call it before emitting, and persist ``state`` together with the consumer offset
    (a Faust table does), so a replay sees the same state it would have.
    """
    verdict = decide(state, key, version, digest)
    if verdict is not Verdict.STALE:
        remember(state, key, version, digest)
    return verdict
