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


class UnresolvedReferenceError(ValidationError):
    """A record refers to a row the target does not have, and waiting for it is over."""

    reason = "unresolved_reference"


class RetriableError(SyncError):
    """A transient failure (connection loss, serialization failure): retry with backoff."""


class PermanentError(SyncError):
    """A failure that retrying cannot fix (constraint violation, bad data)."""


class StackError(SyncError):
    """A local-stack component could not be installed, started, reached or stopped."""
