"""A failed database call, told in one line: its class and SQLSTATE, not the server's words.

A libpq message may carry the DSN's host, port, user or database (``connection to
server at "10.0.0.5", port 5432 failed: FATAL: password authentication failed for user
"erp"``). The operator commands name a database failure by what it is instead
(:func:`database_failure`), and print no traceback.
"""

from __future__ import annotations

import psycopg

__all__ = ["database_failure"]


def database_failure(exc: psycopg.Error) -> str:
    """The failure's class, and its SQLSTATE when the server sent one.

    ``OperationalError``, ``UndefinedTable, SQLSTATE 42P01``: nothing of the DSN or of
    the server's message.
    """
    state = f", SQLSTATE {exc.sqlstate}" if exc.sqlstate else ""
    return f"{type(exc).__name__}{state}"
