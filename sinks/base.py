"""The sink lifecycle and its contract.

A sink applies :class:`~sinks.batch.SinkBatch` es of canonical events to one target
database. The runner owns the Kafka consumer and injects one concrete sink per target
(``PostgresUpsertSink`` for the ERP and for the CRM); there are no module globals.

Lifecycle: :meth:`Sink.setup` once (connect, create the ``erpcrm_sync`` schema, set up
the replication origin, return the committed positions the consumer seeks to), then
:meth:`Sink.write` per batch, :meth:`Sink.flush` to make written batches durable,
:meth:`Sink.close` at the end.

Contract of one batch (write + state + offsets in one database transaction), in this
order::

    1. Collapse the batch per entity key (SinkBatch.collapse): latest version per key,
       each changed field keeping the commit time of its own latest change.
    2. BEGIN; tag the session with the replication origin (the capture of the target
       drops our own transactions: no echo).
    3. Record the target's own changes in the batch in the row clocks
       (erpcrm_sync.row_clock ... FOR UPDATE): which fields were edited locally, when.
    4. Lock and read the keys' sync state (erpcrm_sync.applied ... FOR UPDATE) and
       decide per event: apply | skip_stale | skip_noop (sinks.state.decide).
    5. Lock and read the current target rows with the transaction that last wrote each
       (SELECT ..., xmin, its commit time ... FOR UPDATE); wait while a row has a local
       change its clock has not seen yet; merge per changed field (sinks.state.merge):
       owners win, shared fields go to the later real commit of either side.
    6. Write the rows (multi-row insert / update / soft or hard delete, child lines
       of created orders), the row clocks and the conflict audit records; an update
       whose lines the source changed since it last stated them queues that change as
       a dead letter (the target owns the lines of an order it holds: sinks.lines).
    7. Record the new versions (erpcrm_sync.applied, guarded: never downwards).
    8. Store the batch's next offsets (erpcrm_sync.offsets), superseded and skipped
       events included, never past a waiting event.
    9. COMMIT. Only now is the batch applied; only now may the Kafka consumer commit
       the same offsets (optional: on restart the positions come from step 8's table,
       so a crash between 9 and the Kafka commit replays nothing twice).

A failure before step 9 rolls everything back: no row, state or offset of the batch is
visible, and the batch is retried (RetriableError) or split to isolate the event that
fails, which goes to the dead-letter topic (PermanentError), see
:func:`sinks.classify.classify`. Replaying any prefix of the partitions after a crash
yields the same tables (guarantees 1 and 2 of DESIGN.md §5).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from schemas.errors import SyncError
from sinks.batch import SinkBatch, SinkEvent, TopicPartition
from sinks.state import Conflict

__all__ = ["Sink", "WriteResult"]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What :meth:`Sink.write` did with a batch (for metrics and logs).

    Attributes:
        applied: events written to the target.
        stale: events skipped as duplicates or overtaken.
        noop: events skipped as unchanged payloads (version recorded).
        superseded: events collapsed away by a newer version in the same batch.
        rejected: events not written because the target does not take them.
        conflicts: the conflicts resolved.
        offsets: the positions stored with the batch.
        skipped: events this target does not take (the other direction's, entities
            or states it does not map); nothing recorded.
        unknown: deletes of records the target does not have, and updates of
            update-only rows that are not there; recorded as applied.
        waiting: events for rows with a local change whose own event the sink has not
            read yet (see :func:`sinks.state.ready_clock`); not recorded, the stored
            offsets stay at or below them, and they are never dead-lettered for it.
        deferred: events referring to rows the target does not have yet; not
            recorded, and the stored offsets stay at or below them.
        dead: events the target refuses, with the error; queued as dead letters in
            the same transaction.
        created: ``(entity, target primary key)`` of the rows inserted.
        held: new records held as suspected duplicates of a linked record
            (``erpcrm_sync.suspects``) instead of being created; not recorded, so an
            operator's release or link applies them later.
        parked: events referring to a held suspect, or behind one of their key that
            does (``erpcrm_sync.parked``, :mod:`sinks.parking`); not recorded, applied
            once the operator's decision is carried out.
        refused_parts: events applied (they are in ``applied``) with a part the target
            does not take, with the error: the changed lines of an order the target
            created and owns (:mod:`sinks.lines`); that part is queued as a dead letter
            in the same transaction.
        reasserted: ``(entity, target primary key)`` of the rows queued to be announced
            again because the merge refused a change of a field the target owns (the
            owner's value flows back only once they are announced).
    """

    applied: tuple[SinkEvent, ...] = ()
    stale: tuple[SinkEvent, ...] = ()
    noop: tuple[SinkEvent, ...] = ()
    superseded: tuple[SinkEvent, ...] = ()
    rejected: tuple[SinkEvent, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    offsets: Mapping[TopicPartition, int] = field(default_factory=dict)
    skipped: tuple[SinkEvent, ...] = ()
    unknown: tuple[SinkEvent, ...] = ()
    deferred: tuple[SinkEvent, ...] = ()
    waiting: tuple[SinkEvent, ...] = ()
    dead: tuple[tuple[SinkEvent, SyncError], ...] = ()
    created: tuple[tuple[str, str], ...] = ()
    held: tuple[SinkEvent, ...] = ()
    parked: tuple[SinkEvent, ...] = ()
    refused_parts: tuple[tuple[SinkEvent, SyncError], ...] = ()
    reasserted: tuple[tuple[str, str], ...] = ()

    @property
    def announces(self) -> bool:
        """Whether the batch queued rows to announce: rows it created or reasserted."""
        return bool(self.created or self.reasserted)

    @property
    def letters(self) -> tuple[tuple[SinkEvent, SyncError], ...]:
        """Every dead letter the batch queued: refused events and refused parts."""
        return (*self.dead, *self.refused_parts)


class Sink(abc.ABC):
    """One target database: setup, write(batch), flush, close (see module doc)."""

    @abc.abstractmethod
    def setup(self) -> Mapping[TopicPartition, int]:
        """Connect and create what the sink needs; idempotent.

        Returns:
            The committed next offset per ``(topic, partition)``; the consumer seeks
            there (the database, not Kafka, is the authority on positions).

        Raises:
            RetriableError: the database cannot be reached yet.
            ConfigError: a mapped table or a grant is missing.
        """

    @abc.abstractmethod
    def write(self, batch: SinkBatch) -> WriteResult:
        """Apply ``batch`` atomically with its sync state and offsets (steps 1-8).

        When this returns, the batch is committed. Idempotent: writing the same batch,
        or any already-applied event, again changes nothing.

        Raises:
            RetriableError: nothing of the batch was committed; write it again.
            PermanentError: nothing of the batch was committed; the batch holds an
                event the target refuses (the runner isolates and dead-letters it).
        """

    def own_changes_applied(self, through_ms: int) -> None:  # noqa: B027 - a no-op default
        """Every change of the target system committed up to ``through_ms`` is applied.

        The runner knows it from the target's decided horizon (:class:`sinks.progress.
        CaughtUp`) and says so between writes, never while one is in flight. A sink that
        waits for the target's own events (row clocks) may count its wait from there.
        """

    def flush(self) -> None:  # noqa: B027 - a no-op default, not an abstract hook
        """Make every written batch durable; a no-op when ``write`` commits itself."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; an open transaction is rolled back. Idempotent."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
