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

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, TypeAlias

from schemas.canonical import METADATA_FIELDS

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

HASH_EXCLUDED: Final = frozenset(METADATA_FIELDS) - {"op"}
"""Fields left out of the payload hash: the event's metadata, except ``op`` (a delete is
never a no-op of an upsert with the same fields)."""


class Verdict(StrEnum):
    """What to do with an event."""

    EMIT = "emit"
    STALE = "stale"
    """Version at or below the last kept: a duplicate or an overtaken change; drop."""
    NO_OP = "no_op"
    """Newer, but the same payload as the last kept; drop (the version is recorded)."""


def _plain(value: Any) -> Any:
    """A JSON-able form of a canonical value; equal values give equal forms."""
    if isinstance(value, Decimal):
        normal = value.normalize()
        return {"$decimal": format(normal if normal != 0 else Decimal(0), "f")}
    if isinstance(value, datetime | date):
        return {"$time": value.isoformat()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def payload_hash(record: Mapping[str, Any], exclude: Iterable[str] = HASH_EXCLUDED) -> str:
    """Return the SHA-256 hex digest of a canonical record's payload.

    The payload is every field except ``exclude`` (by default the event metadata but
    ``op``). Decimals hash by value (``1.2`` = ``1.20``), key order does not matter.
    """
    skipped = frozenset(exclude)
    payload = {k: _plain(v) for k, v in record.items() if k not in skipped}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
