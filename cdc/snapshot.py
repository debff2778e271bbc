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


def read_table(
    conn: psycopg.Connection[tuple[object, ...]], table: CapturedTable, batch_rows: int
) -> Iterator[dict[str, object]]:
    """Yield every row of ``table`` as ``{column: python value}``, ``batch_rows`` at a time.

    Must run inside :func:`begin_snapshot`'s transaction.
    """
    columns = table.shape.columns
    converters = [converter_for(oid) for oid in table.type_oids]
    names = [c.name for c in columns]
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.Identifier(table.shape.schema, table.shape.table),
    )
    cursor_name = f"erpcrm_snapshot_{table.shape.table}"
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
                yield {
                    name: None if value is None else convert(str(value))
                    for name, convert, value in zip(names, converters, row, strict=True)
                }
