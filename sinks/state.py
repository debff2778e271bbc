"""The sync-state model: what to apply, what to skip, and who wins a conflict.

Every target keeps, per entity key (``(entity, key)``, see :mod:`sinks.batch`), the
last applied ``(version, payload_hash, applied_at)`` in ``erpcrm_sync.applied``
(:mod:`sinks.sql`). Versions are monotonic per key (the key names the source system).

1. **Order and duplicates** (:func:`decide`). An event at or below the stored version
   is a duplicate or overtaken: ``skip_stale``, nothing changes. A newer event whose
   payload hashes like the stored one is ``skip_noop``: nothing is written to the
   target, but the version is recorded (:func:`next_state`). Anything else is
   ``apply``. The verdict depends only on the stored state and the event, so replaying
   a partition after a crash skips exactly what was already committed.
2. **Conflicts** (:func:`resolve`). An entity is *changed on both sides* when the
   target row was modified after the sink last wrote it (its modification time is
   later than the key's ``applied_at``; both come from the target database's clock,
   and the sink's own write sets them in one transaction, so an untouched row compares
   equal) or when the key was never synced although the row exists. Then, per field
   whose values differ:

   - owned by the event's source system: written; recorded (reason ``owner``);
   - owned by the target system: kept; recorded (reason ``owner``);
   - shared: last writer wins on commit time: the event's ``source_ts_ms`` against
     the row's modification time (reason ``last_writer``); on an exact tie the ERP,
     the system of record, wins (reason ``tie``).

   Without a change on both sides nothing is a conflict: fields owned by the source
   or shared are written, fields owned by the target never are. A row that does not
   exist yet gets every mapped field (the target's own fields as initial values).
   Fields missing from the ownership map (the crosswalk ids) belong to the source.

Pure: no database, Kafka or clock access.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from schemas.mapping import Owner
from schemas.payload import HASH_EXCLUDED, payload_hash, plain

__all__ = [
    "HASH_EXCLUDED",
    "TIE_WINNER",
    "Applied",
    "Conflict",
    "Decision",
    "Reason",
    "Resolution",
    "TargetView",
    "changed_on_both_sides",
    "decide",
    "next_state",
    "payload_hash",
    "resolve",
]


TIE_WINNER: Final = "erp"
"""The system that wins a shared field when both writes carry the same commit time."""


class Decision(StrEnum):
    """What a sink does with an event, given the key's stored state."""

    APPLY = "apply"
    SKIP_STALE = "skip_stale"
    """At or below the stored version: a duplicate or an overtaken change."""
    SKIP_NOOP = "skip_noop"
    """Newer, but the payload is unchanged: nothing to write; the version is recorded."""


class Reason(StrEnum):
    """Why a conflict went the way it did."""

    OWNER = "owner"
    LAST_WRITER = "last_writer"
    TIE = "tie"


@dataclass(frozen=True, slots=True)
class Applied:
    """The stored sync state of one entity key.

    Attributes:
        version: the last applied (or no-op) version.
        payload_hash: :func:`payload_hash` of that event.
        applied_at_ms: when the sink last wrote it, target clock, ms since the epoch.
    """

    version: int
    payload_hash: str
    applied_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class TargetView:
    """The target row as it is now, in canonical field names.

    Attributes:
        values: the row's current values, by canonical field (see
            :func:`sinks.targets.from_row`).
        modified_ts_ms: the row's last modification (``write_date``,
            ``date_modified``), target clock, ms since the epoch; None if not tracked.
    """

    values: Mapping[str, Any]
    modified_ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    """A field changed on both sides with different values, and how it was settled.

    Attributes:
        entity: the canonical entity.
        entity_key: the event's key.
        field: the canonical field.
        ours: the target's current value.
        theirs: the incoming event's value.
        winner: the system whose value stays: ``erp`` or ``crm``.
        reason: a :class:`Reason` value.
        target: the target system (the owner of ``ours``).
    """

    entity: str
    entity_key: str
    field: str
    ours: Any
    theirs: Any
    winner: str
    reason: str
    target: str

    def values_by_system(self) -> tuple[Any, Any]:
        """``(erp value, crm value)``, as the conflicts audit table stores them."""
        if self.target == "erp":
            return (self.ours, self.theirs)
        return (self.theirs, self.ours)


@dataclass(frozen=True, slots=True)
class Resolution:
    """What :func:`resolve` decided for one event.

    Attributes:
        writes: the fields to write, with the incoming values.
        kept: the fields not written (the target's value stays).
        conflicts: the conflicts found, in field order.
    """

    writes: dict[str, Any]
    kept: tuple[str, ...] = ()
    conflicts: tuple[Conflict, ...] = field(default_factory=tuple)

    def merged(self, current: TargetView | None) -> dict[str, Any]:
        """A full row: ``writes`` over the current values of the kept fields.

        Lets one multi-row upsert write every row with the same columns.
        """
        row = {f: current.values.get(f) for f in self.kept} if current is not None else {}
        row.update(self.writes)
        return row


def decide(stored: Applied | None, version: int, digest: str) -> Decision:
    """Apply, or skip as stale or no-op, an event of ``version`` with payload ``digest``."""
    if stored is None:
        return Decision.APPLY
    if version <= stored.version:
        return Decision.SKIP_STALE
    if digest == stored.payload_hash:
        return Decision.SKIP_NOOP
    return Decision.APPLY


def next_state(
    stored: Applied | None, decision: Decision, version: int, digest: str, now_ms: int | None
) -> Applied | None:
    """The key's state after ``decision``: unchanged when stale, else the new version.

    A no-op keeps the stored ``applied_at_ms`` (nothing was written to the target row).
    """
    if decision is Decision.SKIP_STALE:
        return stored
    if decision is Decision.SKIP_NOOP:
        return Applied(version, digest, stored.applied_at_ms if stored is not None else None)
    return Applied(version, digest, now_ms)


def changed_on_both_sides(current: TargetView | None, stored: Applied | None) -> bool:
    """Whether the target row changed since the sink last wrote it (see module doc)."""
    if current is None:
        return False
    if stored is None or stored.applied_at_ms is None:
        return True
    if current.modified_ts_ms is None:
        return False
    return current.modified_ts_ms > stored.applied_at_ms


def _same(ours: Any, theirs: Any) -> bool:
    return bool(plain(ours) == plain(theirs))


def resolve(
    entity: str,
    entity_key: str,
    incoming: Mapping[str, Any],
    *,
    target: str,
    ownership: Mapping[str, Owner],
    fields: Collection[str],
    current: TargetView | None,
    stored: Applied | None,
) -> Resolution:
    """Decide, per field in ``fields``, whether the incoming value is written.

    Args:
        entity: the canonical entity.
        entity_key: the event's key.
        incoming: the canonical record (``source_system`` and ``source_ts_ms`` read).
        target: the system written to (``erp`` or ``crm``).
        ownership: canonical field -> owner (:func:`schemas.mapping.ownership`).
        fields: the canonical fields the target table maps.
        current: the target row now, or None when it does not exist.
        stored: the key's sync state, or None when never synced.

    Returns:
        The fields to write, the fields kept, and the conflicts (see module doc).
    """
    source = str(incoming["source_system"])
    if current is None:
        return Resolution(writes={f: incoming.get(f) for f in fields})
    both = changed_on_both_sides(current, stored)
    theirs_ts = int(incoming["source_ts_ms"])
    ours_ts = current.modified_ts_ms
    writes: dict[str, Any] = {}
    kept: list[str] = []
    conflicts: list[Conflict] = []
    for name in fields:
        theirs = incoming.get(name)
        ours = current.values.get(name)
        owner = ownership.get(name, Owner(source))
        # Filling a field the target never had is no conflict on a first sync.
        differs = both and not _same(ours, theirs) and not (stored is None and ours is None)
        if owner is Owner.SHARED:
            if not differs:
                writes[name] = theirs
                continue
            if ours_ts is None or theirs_ts > ours_ts:
                winner, reason = source, Reason.LAST_WRITER
            elif theirs_ts < ours_ts:
                winner, reason = target, Reason.LAST_WRITER
            else:
                winner, reason = TIE_WINNER, Reason.TIE
        else:
            winner, reason = owner.value, Reason.OWNER
            if not differs:
                if winner == source:
                    writes[name] = theirs
                else:
                    kept.append(name)
                continue
        if winner == source:
            writes[name] = theirs
        else:
            kept.append(name)
        conflicts.append(
            Conflict(entity, entity_key, name, ours, theirs, winner, reason.value, target)
        )
    return Resolution(writes=writes, kept=tuple(kept), conflicts=tuple(conflicts))
