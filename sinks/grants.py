"""Least privilege for the sink role: exactly what the mapped tables need.

:func:`privileges` derives, from the target tables of one system, which privileges
the sink role needs on which table; the owner of the tables applies them (the local
stack does on every ``stack up``, see :func:`grant_statements`).

- a written table: ``SELECT`` (locate and lock rows), ``UPDATE``; ``INSERT`` unless
  update-only; ``DELETE`` if deletes are hard;
- an order's lines: ``SELECT, INSERT`` (written with the order the sink creates) and
  ``UPDATE`` (touched when that order is announced);
- a referenced table (an order's customer, a line's product): ``SELECT``;
- sequences the inserted columns default to (customer numbers, order names, invoice
  numbers): ``USAGE`` (looked up in the catalog by the caller).

Nothing else: no DDL outside the sink's own schema, no access to unmapped tables.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql as pgsql

from sinks.sql import Table, grant_table
from sinks.targets import DeleteMode, TargetTable

__all__ = ["grant_statements", "inserted_tables", "privileges"]


def privileges(tables: Iterable[TargetTable]) -> dict[Table, frozenset[str]]:
    """The privileges the sink role needs, per table (see module doc)."""
    needed: dict[Table, set[str]] = {}

    def add(table: Table, *names: str) -> None:
        needed.setdefault(table, set()).update(names)

    for target in tables:
        add(target.ref, "SELECT", "UPDATE")
        if not target.update_only:
            add(target.ref, "INSERT")
        if target.delete is DeleteMode.HARD:
            add(target.ref, "DELETE")
        if target.lines is not None:
            add(target.lines.ref, "SELECT", "INSERT", "UPDATE")
        for ref in target.refs:
            add(ref.ref, "SELECT")
    return {table: frozenset(names) for table, names in needed.items()}


def inserted_tables(tables: Iterable[TargetTable]) -> list[Table]:
    """The tables the sink inserts into (whose default sequences it needs)."""
    result: list[Table] = []
    for target in tables:
        if not target.update_only:
            result.append(target.ref)
        if target.lines is not None:
            result.append(target.lines.ref)
    return list(dict.fromkeys(result))


def grant_statements(tables: Iterable[TargetTable], role: str) -> list[pgsql.Composed]:
    """``GRANT`` statements for :func:`privileges`, in a stable order."""
    return [
        grant_table(table, role, sorted(names))
        for table, names in sorted(
            privileges(tables).items(), key=lambda i: (i[0].schema, i[0].name)
        )
    ]
