"""Classify database failures into the project's retriable and permanent errors.

A sink never matches on message text: it asks :func:`classify` which of
:class:`~schemas.errors.RetriableError` or :class:`~schemas.errors.PermanentError` a
failure is, by its PostgreSQL SQLSTATE class first (the way Debezium's
``PostgresErrorHandler`` does) and by psycopg's exception hierarchy when the server
sent no SQLSTATE (a lost connection, a client-side timeout).

Retriable (the same batch is tried again, with backoff, after a rollback):

- ``40`` transaction rollback: ``SerializationFailure`` (40001), ``DeadlockDetected``
  (40P01);
- ``08`` connection exception, ``53`` insufficient resources, ``57`` operator
  intervention (admin shutdown, statement timeout / query cancelled), ``58`` system
  error (I/O), ``55P03`` lock not available, ``55006`` object in use;
- psycopg's ``OperationalError`` without a SQLSTATE (connection lost, server closed
  the connection) and the OS-level :class:`ConnectionError` / :class:`TimeoutError`.

Permanent (retrying cannot help; the runner isolates the offending event and sends it
to the dead-letter topic):

- ``22`` data exception (``DataError``), ``23`` integrity constraint violation
  (``IntegrityError``), and every other SQLSTATE (``42`` syntax / access rule errors,
  ``XX`` internal errors) and unknown exception.

A unique violation (``23505``) becomes :class:`~schemas.errors.KeyTakenError`, a
permanent error whose dead letter says which key of which table another row holds.
A :class:`~schemas.errors.SyncError` keeps its own type when it is one of the two.
Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

import psycopg

from schemas.errors import KeyTakenError, PermanentError, RetriableError, SyncError

__all__ = [
    "RETRIABLE_SQLSTATES",
    "RETRIABLE_SQLSTATE_CLASSES",
    "UNIQUE_VIOLATION",
    "classify",
    "wrap",
]

RETRIABLE_SQLSTATE_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})
"""SQLSTATE classes (first two characters) whose errors are transient."""

UNIQUE_VIOLATION: Final = "23505"
"""The SQLSTATE of a unique key another row holds (:class:`~schemas.errors.KeyTakenError`)."""

RETRIABLE_SQLSTATES: Final = frozenset({"55P03", "55006"})
"""Single transient SQLSTATEs outside the retriable classes (lock not available, object
in use)."""


def classify(exc: BaseException) -> type[RetriableError] | type[PermanentError]:
    """Return the error type ``exc`` counts as: retry it, or dead-letter it.

    The decision depends only on the exception's type and SQLSTATE.
    """
    if isinstance(exc, RetriableError):
        return RetriableError
    if isinstance(exc, PermanentError):
        return PermanentError
    sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    if sqlstate:
        if sqlstate[:2] in RETRIABLE_SQLSTATE_CLASSES or sqlstate in RETRIABLE_SQLSTATES:
            return RetriableError
        return PermanentError
    if isinstance(exc, psycopg.OperationalError | ConnectionError | TimeoutError):
        return RetriableError
    return PermanentError


def wrap(exc: BaseException) -> SyncError:
    """Return a :func:`classify`-typed project error for ``exc`` (``exc`` itself if typed).

    The caller raises it ``from exc`` so the cause (and its SQLSTATE) stays attached.
    """
    if isinstance(exc, RetriableError | PermanentError):
        return exc
    kind = classify(exc)
    sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    where = f" [{sqlstate}]" if sqlstate else ""
    message = f"{type(exc).__name__}{where}: {exc}"
    if sqlstate == UNIQUE_VIOLATION and isinstance(exc, psycopg.Error):
        return KeyTakenError(message, _key_context(exc.diag))
    return kind(message)


def _key_context(diag: psycopg.errors.Diagnostic) -> tuple[tuple[str, str], ...]:
    """The dead letter's context of a unique violation: table, constraint, the key taken."""
    table = ".".join(p for p in (diag.schema_name, diag.table_name) if p)
    found = {"table": table, "constraint": diag.constraint_name, "key": diag.message_detail}
    return tuple((name, value) for name, value in found.items() if value)
