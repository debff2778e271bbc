"""Unique keys of a target table, and the rows a batch's update must park first.

PostgreSQL checks a unique index that is not deferrable row by row while one ``UPDATE``
runs (a partial one, such as the CRM's ``accounts_account_number_live_key``, cannot be
deferred at all): when the rows of one multi-row update trade values of a unique key
among themselves (two customers swapping their customer numbers, three rotating them),
the first row written meets a row still holding the value it takes, and the statement
fails with a unique violation although the batch as a whole leaves every value once.

The sink therefore parks such rows first (:func:`rows_to_park`): in the same
transaction, one statement sets a nullable column of the key to NULL in the rows whose
current value another row of the update wants (NULLs never clash in a unique index),
then the update writes every final value. Only a rotation within the batch needs it: a
batch without one runs no extra statement. A value still wanted by two rows at the end,
or held by a row outside the update, is a genuine duplicate: the update fails as before
and the event is dead-lettered (a key of no nullable column cannot be parked, so its
rotations fail that way too; no target written by the sinks has one).

Pure: no I/O. The keys themselves are read from the target's catalog once, at set-up
(:func:`sinks.sql.unique_keys`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["UniqueKey", "rows_to_park"]


@dataclass(frozen=True, slots=True)
class UniqueKey:
    """One unique index of a target table (not its primary key, not an expression).

    Attributes:
        name: the index.
        columns: its key columns, in order.
        nullable: those of them that may hold NULL (the first one parks a row).
    """

    name: str
    columns: tuple[str, ...]
    nullable: tuple[str, ...]


def _value(
    row: Mapping[str, Any], columns: tuple[str, ...], written: Mapping[str, Any] | None = None
) -> tuple[str, ...] | None:
    """The key's value in ``row``, ``written`` over it, as text.

    As text, ids read back match ids from the bus. None when a column is NULL: such a
    row holds no value of the key.
    """
    values = []
    for column in columns:
        value = written[column] if written is not None and column in written else row.get(column)
        if value is None:
            return None
        values.append(str(value))
    return tuple(values)


def rows_to_park(
    keys: Iterable[UniqueKey],
    rows: Iterable[tuple[Any, Mapping[str, Any], Mapping[str, Any]]],
) -> dict[str, list[Any]]:
    """Per column to set NULL first, the rows (their ``pk``) to park before an update.

    Args:
        keys: the table's unique keys.
        rows: per row the update writes: its ``pk``, its current values (every key
            column) and the values written (a key column not among them keeps its
            current value).

    A row is parked on a key when the update changes its value of the key and another
    row of the update is to hold the current one. Keys no written column belongs to,
    and keys without a nullable column, park nothing. Empty: no rotation in the batch.
    """
    listed = list(rows)
    parked: dict[str, dict[Any, None]] = {}
    for key in keys:
        if not key.nullable or not any(
            column in new for _, _, new in listed for column in key.columns
        ):
            continue
        wanted: Counter[tuple[str, ...]] = Counter()
        moving: list[tuple[Any, tuple[str, ...]]] = []
        for pk, current, new in listed:
            old = _value(current, key.columns)
            after = _value(current, key.columns, new)
            if after is not None:
                wanted[after] += 1
            if old is not None and old != after:
                moving.append((pk, old))
        column = key.nullable[0]
        for pk, old in moving:
            # The row itself no longer wants ``old``: any wish for it is another row's.
            if wanted[old]:
                parked.setdefault(column, {})[pk] = None
    return {column: list(pks) for column, pks in parked.items()}
