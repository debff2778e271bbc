import psycopg
import pytest
from psycopg import errors

from schemas.errors import KeyTakenError, PermanentError, RetriableError
from sinks.classify import classify, wrap


@pytest.mark.parametrize(
    "exc",
    [
        errors.SerializationFailure(),
        errors.DeadlockDetected(),
        errors.AdminShutdown(),
        errors.QueryCanceled(),
        errors.LockNotAvailable(),
        errors.ConnectionFailure(),
        errors.TooManyConnections(),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        ConnectionResetError(),
        TimeoutError(),
        RetriableError("x"),
    ],
)
def test_retriable(exc: BaseException) -> None:
    assert classify(exc) is RetriableError


@pytest.mark.parametrize(
    "exc",
    [
        errors.UniqueViolation(),
        errors.ForeignKeyViolation(),
        errors.CheckViolation(),
        errors.NotNullViolation(),
        errors.NumericValueOutOfRange(),
        errors.InvalidTextRepresentation(),
        psycopg.IntegrityError(),
        psycopg.DataError(),
        errors.UndefinedTable(),
        errors.InsufficientPrivilege(),
        ValueError("bad"),
        PermanentError("x"),
    ],
)
def test_permanent(exc: BaseException) -> None:
    assert classify(exc) is PermanentError


def test_wrap_keeps_type_and_sqlstate() -> None:
    wrapped = wrap(errors.DeadlockDetected("boom"))
    assert isinstance(wrapped, RetriableError)
    assert "40P01" in str(wrapped)
    typed = PermanentError("p")
    assert wrap(typed) is typed


def test_a_unique_violation_is_a_key_taken_letter_with_its_context() -> None:
    wrapped = wrap(errors.UniqueViolation("duplicate key value"))
    assert isinstance(wrapped, KeyTakenError)
    assert isinstance(wrapped, PermanentError)
    assert wrapped.reason == "key_taken"
    assert "23505" in str(wrapped)
    assert wrapped.context == ()  # no diagnostics from the server: none invented
    assert type(wrap(errors.ForeignKeyViolation())) is PermanentError
