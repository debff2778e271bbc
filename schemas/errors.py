"""The project's exception hierarchy.

One root, a few meaningful subclasses. Callers decide what to do by type (retry, dead
letter, stop), never by matching message text.
"""


class SyncError(Exception):
    """Root of every error raised by erp-crm-sync."""


class ConfigError(SyncError):
    """Settings or a mapping file are invalid; raised at start-up, never mid-stream."""


class DecodeError(SyncError):
    """Bytes from the wire (pgoutput, Avro, Kafka) could not be decoded."""


class ValidationError(SyncError):
    """A record is well-formed but violates a business rule; it belongs in a dead-letter topic."""


class _ContextualError(SyncError):
    """An error whose dead letter names what it concerns.

    ``context``: ``(name, value)`` pairs for the letter's ``erpcrm.context.*`` headers.
    """

    def __init__(self, message: str, context: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.context = context


class ContextualValidationError(_ContextualError, ValidationError):
    """A refusal whose letter names what it concerns (``context``: :class:`_ContextualError`)."""


class UnresolvedReferenceError(ValidationError):
    """A record refers to a row the target does not have, and waiting for it is over."""

    reason = "unresolved_reference"


class LinesLockedError(ContextualValidationError):
    """The source changed the lines of an order its target created and now owns.

    The order's own fields are applied; the line change is dead-lettered for someone to
    make it in the target. ``context``: ``(name, value)`` pairs for the dead letter's
    ``erpcrm.context.*`` headers (the order, its row in the target, the lines that
    differ).
    """

    reason = "order_lines_locked"


class TargetRowContendedError(ContextualValidationError):
    """Two different source records resolve to one target row in the same batch.

    The later commit is written; the other is dead-lettered with ``context``,
    ``(name, value)`` pairs for the letter's ``erpcrm.context.*`` headers: the target
    row and the key and version of the record written.
    """

    reason = "target_row_contended"


class TargetRowTakenError(ContextualValidationError):
    """A record's event resolves to a target row another live source record owns.

    Each sink remembers which source record (entity and key) every target row was
    written for (its row owner); a link column moved onto another record's row (an
    ERP order given another order's quote id, a contact person given another
    contact's id) makes a different record's event find it: the event is not written.
    ``context``: ``(name, value)`` pairs for the letter's ``erpcrm.context.*`` headers
    (the row, its owner, the record refused).
    """

    reason = "target_row_taken"


class TargetRowGoneError(ContextualValidationError):
    """A record's target row, made for it by the sink, is gone from the target.

    The sink remembers the row it created for each source record of a table that keeps
    its rows (a won quote's ERP order). When that row was deleted in the target, the
    record's later change is not made into a second row behind anyone's back: it is
    dead-lettered with ``context``, ``(name, value)`` pairs for the letter's
    ``erpcrm.context.*`` headers (the table and the row that is gone).
    """

    reason = "target_row_gone"


class RetriableError(SyncError):
    """A transient failure (connection loss, serialization failure): retry with backoff."""


class PermanentError(SyncError):
    """A failure that retrying cannot fix (constraint violation, bad data)."""


class KeyTakenError(_ContextualError, PermanentError):
    """A write would give a row a unique key another row holds (SQLSTATE 23505).

    Never retried and never skipped: the event is dead-lettered (reason ``key_taken``)
    with ``context``, ``(name, value)`` pairs for the letter's ``erpcrm.context.*``
    headers: the table, the unique constraint and the key that is taken (a CRM
    account's customer number another live account carries).
    """

    reason = "key_taken"


class StackError(SyncError):
    """A local-stack component could not be installed, started, reached or stopped."""
