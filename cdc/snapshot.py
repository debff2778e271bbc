"""The initial snapshot: every row of the captured tables, as of the slot's creation.

Rows are read inside a REPEATABLE READ transaction that imports the snapshot exported by
``CREATE_REPLICATION_SLOT``, so together with the changes streamed from the slot's
consistent point they form the complete history with no gap and no overlap.

Rows stream through a server-side cursor in batches; memory stays bounded by the batch
size whatever the table size. Every column is read in its text output form (no casts) and converted
by :mod:`cdc.values`, exactly as streamed changes are, so a row looks the same whether it
came from the snapshot or from the WAL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from cdc.catalog import CapturedTable
from cdc.values import converter_for

log = logging.getLogger(__name__)


def count_rows(conn: psycopg.Connection[tuple[object, ...]], table: CapturedTable) -> int:
    """Planner's row estimate (cheap), used only for progress display."""
    row = conn.execute(
        "select greatest(reltuples, 0)::bigint from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s and c.relname = %s",
        (table.shape.schema, table.shape.table),
    ).fetchone()
    return int(str(row[0])) if row else 0


def begin_snapshot(conn: psycopg.Connection[tuple[object, ...]], snapshot_name: str) -> None:
    """Open a read-only REPEATABLE READ transaction on the exported snapshot."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))


def commit_times_available(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Whether the server records commit times (``track_commit_timestamp``)."""
    row = conn.execute("select current_setting('track_commit_timestamp') = 'on'").fetchone()
    return bool(row and row[0])


def read_table(
    conn: psycopg.Connection[tuple[object, ...]],
    table: CapturedTable,
    batch_rows: int,
    *,
    commit_times: bool = False,
) -> Iterator[tuple[dict[str, object], int | None]]:
    """Yield every row of ``table`` as ``({column: python value}, commit ms)``.

    Rows are read ``batch_rows`` at a time. With ``commit_times`` (the server tracks
    them, see :func:`commit_times_available`), the second item is the commit time of
    the transaction that wrote the row version (ms since the epoch; None when too old
    to be known): a snapshot row's ``source.ts_ms``, so a last-writer-wins consumer
    compares the row's real write time, not the moment the snapshot read it.

    Must run inside :func:`begin_snapshot`'s transaction.
    """
    columns = table.shape.columns
    converters = [converter_for(oid) for oid in table.type_oids]
    names = [c.name for c in columns]
    selected: list[sql.Composable] = [sql.Identifier(n) for n in names]
    if commit_times:
        selected.append(
            sql.SQL(
                "floor(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint::text"
            )
        )
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(selected),
        sql.Identifier(table.shape.schema, table.shape.table),
    )
    cursor_name = f"erpcrm_snapshot_{table.shape.table}"
    width = len(names)
    with conn.cursor(name=cursor_name) as cursor:
        # Keep every value in its text output form (what pgoutput sends), not psycopg's
        # Python types: casting to ::text is not the same (bool::text is 'true', not 't').
        for oid in set(table.type_oids):
            cursor.adapters.register_loader(oid, TextLoader)
        cursor.itersize = batch_rows
        cursor.execute(query)
        while True:
            batch = cursor.fetchmany(batch_rows)
            if not batch:
                return
            for row in batch:
                values = {
                    name: None if value is None else convert(str(value))
                    for name, convert, value in zip(names, converters, row[:width], strict=True)
                }
                commit = row[width] if commit_times and row[width] is not None else None
                yield values, int(str(commit)) if commit is not None else None
