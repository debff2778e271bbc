"""The sync-state model: what to apply, what to skip, and who wins a field.

Every target keeps, per entity key (``(entity, key)``, see :mod:`sinks.batch`), the
last applied ``(version, payload_hash)`` in ``erpcrm_sync.applied``, and per target row
a :class:`RowClock` in ``erpcrm_sync.row_clock`` (:mod:`sinks.sql`).

1. **Order and duplicates** (:func:`decide`). An event at or below the stored version
   is a duplicate or overtaken: ``skip_stale``, nothing changes. A newer event whose
   payload hashes like the stored one is ``skip_noop`` -- unless it takes part in the
   field-level merge (:func:`schemas.payload.never_noop`): the same values written
   again at a later commit still compete. Anything else is ``apply``. The verdict
   depends only on the stored state and the event, so replaying a partition after a
   crash skips exactly what was already committed.
2. **Field-level merge** (:func:`merge`): a last-writer-wins register per field, with
   the real commit times of both writes. An event names the fields its change changed
   (``changed_fields``); only those compete, so a phone edited in the ERP and an e-mail
   edited in the CRM at the same time both survive. Per changed field:

   - owned by the event's source system: written (the owner's value is the truth);
   - owned by the target system: kept; a different value is recorded (reason
     ``owner``) and the row is re-asserted, so the owner's value flows back;
   - shared: the event's ``source_ts_ms`` against the time of the last write the
     target holds in that field (:meth:`RowClock.times`): the later commit wins, an
     exact tie goes to the ERP (reason ``last_writer`` or ``tie``). A decision against
     a local edit the other side has not seen is recorded: one the sink did not write
     itself, and that the winning change was not made over (``prior_digests``: the
     source's update replaced the very value the target holds, so it saw the local
     edit; an ordinary edit after a sync is no conflict). The audit only: who wins is
     decided by commit times alone, the same way on both sides; a change made over the
     local value that still loses (an older commit: the two clocks disagree, or the
     value was edited away and back meanwhile) is recorded.

   The time of the last write a target field holds is the larger of two clocks kept
   per row: ``written``, the source commit time of each value the sink wrote there,
   and ``local``, the commit time of the last local change of the field, learnt from
   the target system's own canonical events (which name their changed fields). So both
   sides hold, per field, a register of (commit time, system) and take the larger:
   whatever the delivery order, both converge on the last write made to the field.
3. **Knowing every local change** (:func:`last_local_change`, :meth:`RowClock.knows`).
   A local change the sink has not read from the target's own events yet would be
   missing from ``local``. The row's ``xmin`` tells: when it is not the sink's own
   write, the commit time of that transaction is the row's last local change, and the
   clock is complete only once it has seen an own event at least that recent. Until
   then the event waits (deferred); a row the sink never saw starts from its last
   commit time for every field (as a snapshot read does).

4. **Row owners** (:class:`RowOwner`, :func:`taken_by`). Per target row, the source
   record it was written for. An event of another record that resolves to the row
   while its owner is live is not written (``target_row_taken``): a link column moved
   from one record's row onto another's no longer writes one record into the other.

Pure: no database, Kafka or clock access.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from schemas.canonical import PRIOR_DIGESTS
from schemas.mapping import Owner
from schemas.payload import HASH_EXCLUDED, payload_hash, plain, value_digest

__all__ = [
    "HASH_EXCLUDED",
    "LETTERED",
    "TIE_WINNER",
    "Applied",
    "Conflict",
    "Decision",
    "Merge",
    "Reason",
    "RowClock",
    "RowOwner",
    "changed_by",
    "changed_times",
    "clock_wait_since",
    "decide",
    "is_stale",
    "last_local_change",
    "merge",
    "payload_hash",
    "prior_digests",
    "ready_clock",
    "taken_by",
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
    """

    version: int
    payload_hash: str


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


LETTERED: Final = "lettered"
"""The payload hash stored for a version that was dead-lettered, not applied, because it
lost its target row to another source record in a batch (``target_row_contended``): a
re-read of that version (the raw topics read again) is stale like an applied one, and
is not applied over the row's winner; an operator's replay of its letter is not."""


def decide(
    stored: Applied | None,
    version: int,
    digest: str | Callable[[], str],
    *,
    merged: bool = False,
    replays: int = 0,
) -> Decision:
    """Apply, or skip as stale or no-op, an event of ``version`` with payload ``digest``.

    ``digest`` may be a function computing it: it is called only when the version does
    not settle the decision (a replay of applied events hashes nothing).
    ``merged``: the event takes part in the field-level merge and is never a no-op.
    ``replays``: how many times an operator replayed the event from its dead letter.
    """
    if stored is None:
        return Decision.APPLY
    if is_stale(stored, version, replays):
        return Decision.SKIP_STALE
    if merged:
        return Decision.APPLY
    if (digest if isinstance(digest, str) else digest()) == stored.payload_hash:
        return Decision.SKIP_NOOP
    return Decision.APPLY


def is_stale(stored: Applied | None, version: int, replays: int = 0) -> bool:
    """An event of ``version`` is at or below the stored version: :attr:`Decision.SKIP_STALE`.

    Except an operator's replay (``replays``) of the very version stored as
    :data:`LETTERED`: its letter is what the replay carries out. Asked on its own where a
    caller can skip preparing :func:`decide`'s other arguments (a replay of applied
    events).
    """
    if stored is None or version > stored.version:
        return False
    return not (replays and version == stored.version and stored.payload_hash == LETTERED)


_OWNER_BY_VALUE: Final = {owner.value: owner for owner in Owner}
_SHARED: Final = Owner.SHARED
_LAST_WRITER: Final = Reason.LAST_WRITER.value
_TIE: Final = Reason.TIE.value
_OWNER: Final = Reason.OWNER.value


def _same(ours: Any, theirs: Any) -> bool:
    return bool(plain(ours) == plain(theirs))


def _made_over(prior: Mapping[str, str], name: str, ours: Any) -> bool:
    """Whether the source changed ``name`` from the value ``ours`` (its digest matches)."""
    digest = prior.get(name)
    return digest is not None and digest == value_digest(ours)


@dataclass(frozen=True, slots=True)
class RowClock:
    """What the sink knows about the times of one target row's fields.

    Attributes:
        written: field -> source commit time (ms) of the value the sink last wrote there.
        local: field -> commit time (ms) of the last local change of the field, from the
            target system's own canonical events.
        horizon_ms: commit time of the newest own event seen for the row; None: none.
        sink_xid: the transaction id (32-bit ``xid``) of the sink's last write to the
            row, to tell the sink's own write from a local change by ``xmin``.
        local_at_write_ms: the row's last local change when the sink last wrote it.
    """

    written: Mapping[str, int] = field(default_factory=dict)
    local: Mapping[str, int] = field(default_factory=dict)
    horizon_ms: int | None = None
    sink_xid: int | None = None
    local_at_write_ms: int | None = None

    def knows(self, last_local_ms: int) -> bool:
        """Whether every local change up to ``last_local_ms`` (0: none) is in ``local``."""
        return last_local_ms <= (self.horizon_ms or 0)

    def times(self, fields: Iterable[str]) -> dict[str, int]:
        """Per field: the commit time of the last write the target holds (-1: unknown)."""
        return {f: max(self.written.get(f, -1), self.local.get(f, -1)) for f in fields}

    def seen_locally(self, changed: Iterable[str], ts_ms: int) -> RowClock:
        """The clock after an own event of the target, committed at ``ts_ms``."""
        local = dict(self.local)
        for name in changed:
            local[name] = max(local.get(name, -1), ts_ms)
        horizon = ts_ms if self.horizon_ms is None else max(self.horizon_ms, ts_ms)
        return replace(self, local=local, horizon_ms=horizon)

    def assume_local(self, values: Mapping[str, Any], ts_ms: int, *, first_seen: bool) -> RowClock:
        """Each field last changed locally at ``ts_ms`` at the latest.

        ``first_seen``: the row's values are where the sync starts from, as a snapshot
        read: written at ``ts_ms`` by nobody the other side has not heard of (so the
        next change from there is an update, not a conflict), and an empty field by
        nobody at all (any value fills it, as the streams stage does not count the
        empty fields of a new row as changed either). Otherwise a local change whose
        own event never came: every field counts, the empty ones too.
        """
        changed = [f for f, v in values.items() if not first_seen or v is not None]
        clock = self.seen_locally(changed, ts_ms)
        return clock.synced(changed, ts_ms) if first_seen else clock

    def synced(self, fields: Iterable[str], ts_ms: int) -> RowClock:
        """The clock with ``fields`` as of ``ts_ms`` counted as known to both sides.

        For the values a sync starts from (a snapshot read, a row first seen): a later
        change from the other side then updates them without a conflict. Which write is
        later does not change (:meth:`times` takes the larger clock).
        """
        written = dict(self.written)
        for name in fields:
            written[name] = max(written.get(name, -1), ts_ms)
        return replace(self, written=written)

    def after_write(
        self, times: Mapping[str, int], *, xid: int | None, last_local_ms: int
    ) -> RowClock:
        """The clock after the sink wrote fields with source commit ``times``.

        ``xid`` is None when the write changed nothing in the row (its ``xmin`` stays).
        """
        written = dict(self.written)
        for name, ts in times.items():
            written[name] = max(written.get(name, -1), ts)
        # The constructor, not dataclasses.replace: a few times faster, once per row.
        if xid is None:
            return RowClock(
                written, self.local, self.horizon_ms, self.sink_xid, self.local_at_write_ms
            )
        return RowClock(written, self.local, self.horizon_ms, xid, last_local_ms)


@dataclass(frozen=True, slots=True)
class RowOwner:
    """The source record a target row was written for: the row's owner.

    Kept per target row beside its clock (``erpcrm_sync.row_clock``, same entity), set
    by every write of the sink to the row: the record that made the row, or the first
    one that wrote an existing row (the rows of a first sync, or of a sync state made
    before owners were kept). A record's identity, never its values: a renamed order or
    an owned field edited on the other side is the same record.

    Attributes:
        key: the source record's entity key (``erp:17``).
        gone: the record's last event written there ended it at its source (deleted,
            archived: a delete, or ``active`` false); it gives the row up.
    """

    key: str
    gone: bool = False


def taken_by(owner: RowOwner | None, key: str, *, ended: Collection[str] = ()) -> str | None:
    """The owner that keeps the record ``key`` out of a row; None: ``key`` may write it.

    A row with no owner yet is free, and so is one whose owner is gone, stored so or
    ending in the batch at hand (``ended``: the keys whose events there end their
    record): as a holder gone gives its counterpart up in the crosswalk, the survivor of
    a merge at the source takes the row over. Only a
    different, live owner takes it: the record's event resolves to another record's
    row (a link column moved onto it).
    """
    if owner is None or owner.key == key or owner.gone or owner.key in ended:
        return None
    return owner.key


def last_local_change(clock: RowClock | None, xmin: int, commit_ms: int | None) -> int:
    """The commit time of a row's last local change (0: none known).

    The row's ``xmin`` is the last transaction that wrote it: when it is the sink's own
    write, the last local change is the one the sink saw then; otherwise ``xmin``'s
    commit time (``commit_ms``; None when PostgreSQL no longer knows it: an old row).
    """
    if clock is not None and clock.sink_xid == xmin:
        return clock.local_at_write_ms or 0
    return commit_ms or 0


def ready_clock(
    stored: RowClock | None,
    *,
    xmin: int,
    commit_ms: int | None,
    now_ms: int,
    values: Mapping[str, Any],
    waited_ms: int,
    wait_ms: int,
) -> tuple[RowClock | None, int, bool]:
    """A row's clock, complete, before :func:`merge` decides on it.

    Args:
        stored: the row's stored clock; None: the sink never saw the row.
        xmin, commit_ms: the transaction that last wrote the row and its commit time.
        now_ms: the target database's clock now.
        values: the row's current values of the merged fields.
        waited_ms: how long an event for this row has been waiting for the clock so
            far (0 the first time).
        wait_ms: how long to wait for the target's own event of a local change.

    Returns:
        ``(clock, last local change, assumed)``: the clock is None while the event must
        wait for the target's own event of a local change the clock has not seen (own
        events travel the same pipeline, so a sink that restarts or catches up finds
        them a moment later). A row first seen whose last change is older than
        ``wait_ms`` starts at once with every field that has a value changed at that
        commit, like a snapshot read. After ``wait_ms`` of waiting a missing own event
        is taken to have changed every field, empty ones included (``assumed``: the
        returned clock must then be stored).
    """
    local_ms = last_local_change(stored, xmin, commit_ms)
    clock = stored if stored is not None else RowClock()
    if clock.knows(local_ms):
        return clock, local_ms, False
    if stored is None and now_ms - local_ms >= wait_ms:
        return clock.assume_local(values, local_ms, first_seen=True), local_ms, True
    if waited_ms < wait_ms:
        return None, local_ms, False
    return clock.assume_local(values, local_ms, first_seen=stored is None), local_ms, True


def clock_wait_since(
    first_ms: int,
    since_ms: int | None,
    *,
    now_ms: int,
    local_ms: int,
    own_seen_ms: int,
    behind_max_ms: int,
) -> int | None:
    """Since when an event has waited for the own event of its row's local change.

    The wait (``wait_ms`` of :func:`ready_clock`) counts only once the sink has read
    own events committed at or after that change (``own_seen_ms``, the latest commit
    time of those read, of any entity: the streams stage decides a system's changes in
    commit order; or how far every own change is applied, from the target's decided
    horizon, :class:`sinks.progress.CaughtUp`): until then the own event may be on its way
    (a capture or the streams worker is down or catching up), and taking the change
    for every field would let it beat later writes of the other side to fields it
    never touched. A pipeline behind for ``behind_max_ms`` since the event first
    waited (``first_ms``) no longer holds the wait back.

    Args:
        first_ms: when an event for the row first waited.
        since_ms: when the wait started counting so far (None: not yet).
        now_ms, local_ms: now and the commit time of the row's last local change.
        own_seen_ms: how far the target's own events are read: the latest commit time of
            those read, or of the target's horizon applied (-1: neither).
        behind_max_ms: the longest the wait is held back by a pipeline behind.

    Returns:
        The start of the counted wait; None while the own events are behind.
    """
    behind = own_seen_ms < local_ms and now_ms - first_ms < behind_max_ms
    if behind:
        return None
    return since_ms if since_ms is not None else now_ms


def changed_by(record: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
    """The fields a canonical record changed, of ``fields``.

    Its ``changed_fields`` (absent: every field), less its ``quarantined_fields`` (left
    out as invalid: the target keeps what it has there).
    """
    changed = record.get("changed_fields")
    left_out = record.get("quarantined_fields")
    names = fields if changed is None else changed
    if not left_out:  # the common case: nothing quarantined, no test per field
        return list(names)
    return [name for name in names if name not in left_out]


def prior_digests(history: Iterable[Mapping[str, Any]], fields: Iterable[str]) -> dict[str, str]:
    """Per field some record of ``history`` (in version order) changed: its prior digest.

    The digest of the value the first of them replaced, where that record carries it:
    the value the source held before the batch's changes of the field: a target holding
    it was the base of those changes (:func:`merge`). A field whose first change carries
    no digest (an insert, a touch, an older event) has none.
    """
    every = tuple(fields)
    priors: dict[str, str] = {}
    first: set[str] = set()
    for record in history:
        digests = record.get(PRIOR_DIGESTS) or {}
        for name in changed_by(record, every):
            if name in first:
                continue
            first.add(name)
            digest = digests.get(name)
            if digest is not None:
                priors[name] = digest
    return priors


def changed_times(history: Iterable[Mapping[str, Any]], fields: Iterable[str]) -> dict[str, int]:
    """Per field some record of ``history`` (in version order) changed: its latest commit.

    Collapsing a key's events to the latest keeps each field's own time, so an older
    change of one field does not borrow the newer commit time of another. The fields a
    record changed are :func:`changed_by`.
    """
    every = tuple(fields)
    times: dict[str, int] = {}
    for record in history:
        names = changed_by(record, every)
        if names:
            times.update(dict.fromkeys(names, int(record["source_ts_ms"])))
    return times


@dataclass(frozen=True, slots=True)
class Merge:
    """What :func:`merge` decided for one event and one existing target row.

    Attributes:
        writes: the fields to write, with the incoming values.
        written_at: the source commit time of each written field (for the row clock).
        conflicts: the decisions between two writers, in field order.
        reassert: a field the target owns was refused: re-announce the row, so the
            owner's value flows back to the source system.
    """

    writes: dict[str, Any]
    written_at: dict[str, int]
    conflicts: tuple[Conflict, ...] = ()
    reassert: bool = False


def merge(
    entity: str,
    entity_key: str,
    incoming: Mapping[str, Any],
    *,
    target: str,
    ownership: Mapping[str, Owner],
    fields: Collection[str],
    changed: Mapping[str, int],
    current: Mapping[str, Any],
    clock: RowClock,
    prior: Callable[[], Mapping[str, str]] | None = None,
) -> Merge:
    """Decide, per field, whether the incoming value is written (see the module doc).

    Args:
        entity: the canonical entity.
        entity_key: the event's key.
        incoming: the canonical record (``source_system`` read).
        target: the system written to (``erp`` or ``crm``).
        ownership: canonical field -> owner (:func:`schemas.mapping.ownership`).
        fields: the canonical fields the target table maps (ids excluded).
        changed: the fields the source changed -> the commit time of that change (the
            events of one key collapsed in a batch keep each field's own time).
        current: the target row's current values, by canonical field.
        clock: the row's clock, complete (:meth:`RowClock.knows`).
        prior: per changed field, the digest of the value the source's change replaced
            (:func:`prior_digests`), where known; called once, only when a field's
            decision goes against a local edit (rare), as working it out costs.
    """
    source = str(incoming["source_system"])
    # Once per event, not per field (an enum lookup costs more than the rest of a field).
    default = _OWNER_BY_VALUE.get(source)
    written, local = clock.written, clock.local
    writes: dict[str, Any] = {}
    written_at: dict[str, int] = {}
    conflicts: list[Conflict] = []
    reassert = False
    priors: Mapping[str, str] | None = None
    for name in fields:
        ts = changed.get(name)
        if ts is None:
            continue
        theirs = incoming.get(name)
        owner = ownership.get(name, default)
        if owner is None:
            owner = Owner(source)  # not a system: refused as before
        if owner is not _SHARED:
            if owner is default:  # the source system's own field
                writes[name], written_at[name] = theirs, ts
            elif not _same(ours := current.get(name), theirs):
                reassert = True
                conflicts.append(
                    Conflict(entity, entity_key, name, ours, theirs, target, _OWNER, target)
                )
            continue
        # The last write the target holds in the field: the sink's own or a local edit.
        by_sink, by_target = written.get(name, -1), local.get(name, -1)
        mine = by_sink if by_sink > by_target else by_target
        if ts != mine:
            winner, reason = (source if ts > mine else target), _LAST_WRITER
        else:
            winner, reason = TIE_WINNER, _TIE
        if winner == source:
            writes[name], written_at[name] = theirs, ts
        # A decision against a local edit the source has not seen is a conflict; a
        # field last written by the sink itself is just an update, and so is a change the
        # source made over the value the target holds (it had seen the local edit) and
        # that wins. One made over it that still loses is recorded: an older commit
        # after the local edit was seen means the edit was made again in between (A, B,
        # A) or the two databases' clocks disagree, and an operator has to know.
        if by_target > by_sink and not _same(ours := current.get(name), theirs):
            if winner == source:
                if priors is None:
                    priors = prior() if prior is not None else {}
                if _made_over(priors, name, ours):
                    continue
            conflicts.append(
                Conflict(entity, entity_key, name, ours, theirs, winner, reason, target)
            )
    return Merge(writes, written_at, tuple(conflicts), reassert)
