"""Snapshot reads: the initial snapshot, and the chunks of incremental snapshots.

The initial snapshot reads every row of the captured tables, as of the slot's creation.

Rows are read inside a REPEATABLE READ transaction that imports the snapshot exported by
``CREATE_REPLICATION_SLOT``, so together with the changes streamed from the slot's
consistent point they form the complete history with no gap and no overlap.

Rows stream through a server-side cursor in batches; memory stays bounded by the batch
size whatever the table size. Every column is read in its text output form (no casts) and converted
by :mod:`cdc.values`, exactly as streamed changes are, so a row looks the same whether it
came from the snapshot or from the WAL.

:func:`read_chunk` reads one chunk of an incremental snapshot (:mod:`cdc.incremental`):
rows in primary-key order, with each row's key text and whether an unfinished
transaction had written it, in a REPEATABLE READ READ ONLY transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from cdc.catalog import CapturedTable
from cdc.incremental import ChunkPlan, ChunkRow, TxSnapshot
from cdc.values import converter_for

SnapshotRow = tuple[dict[str, object], int | None]
"""A row read by a snapshot: ``({column: python value}, commit ms or None)``."""

_COMMIT_MS = sql.SQL(
    "floor(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::bigint::text"
)

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
        selected.append(_COMMIT_MS)
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


def read_chunk(
    conn: psycopg.Connection[tuple[object, ...]],
    table: CapturedTable,
    plan: ChunkPlan,
    *,
    commit_times: bool,
    statement_timeout_ms: int = 0,
) -> tuple[list[ChunkRow[SnapshotRow]], tuple[str, ...] | None]:
    """Read the chunk ``plan`` asks for: its rows, and the range's upper bound.

    The bound is ``plan.until``, or for a plan that
    :attr:`~cdc.incremental.ChunkPlan.needs_bounds` the highest matching key now.

    ``conn`` must be a non-autocommit connection set to REPEATABLE READ and read only:
    the rows and the transaction snapshot that tells which of them an unfinished writer
    holds come from one snapshot. The request's filter is placed as SQL text into the
    ``WHERE`` clause (read only, under the connection's role); keys and positions are
    parameters. A statement over ``statement_timeout_ms`` (0: no limit) fails the read.
    """
    shape = table.shape
    keys = [c.name for c in shape.key_columns]
    key_list = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
    relation = sql.Identifier(shape.schema, shape.table)
    request = plan.request
    with conn.transaction():
        if statement_timeout_ms:
            conn.execute(
                "select set_config('statement_timeout', %s, true)", (str(statement_timeout_ms),)
            )
        row = conn.execute("select pg_current_snapshot()::text").fetchone()
        snapshot = TxSnapshot.parse(str(row[0]) if row else "0:0:")
        conditions: list[sql.Composable] = []
        params: list[str] = []
        if request.where is not None:
            # The operator's SQL, as it is (its "%" escaped: the query takes parameters).
            conditions.append(sql.SQL("({})").format(sql.SQL(request.where.replace("%", "%%"))))
        until = plan.until
        if plan.needs_bounds:
            until = _highest_key(conn, table, conditions)
            if until is None:
                return [], None
        if plan.keys is not None:
            one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(keys)))
            conditions.append(
                sql.SQL("({}) IN ({})").format(key_list, sql.SQL(", ").join([one] * len(plan.keys)))
            )
            params += [k[c] for k in plan.keys for c in keys]
        else:
            placeholders = sql.SQL(", ").join(sql.Placeholder() * len(keys))
            if plan.after is not None:
                conditions.append(sql.SQL("({}) > ({})").format(key_list, placeholders))
                params += plan.after
            assert until is not None
            conditions.append(sql.SQL("({}) <= ({})").format(key_list, placeholders))
            params += until
        names = [c.name for c in shape.columns]
        selected: list[sql.Composable] = [sql.Identifier(n) for n in names]
        selected += [_COMMIT_MS if commit_times else sql.SQL("NULL::text"), sql.SQL("xmax::text")]
        # The key's text, aliased: an output column named like the key would take over
        # ORDER BY (and sort as text).
        selected += [
            sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"erpcrm_key_{i}"))
            for i, k in enumerate(keys)
        ]
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join(selected),
            relation,
            sql.SQL(" AND ").join(conditions),
            key_list,
            sql.Literal(plan.limit),
        )
        rows = _text_rows(conn, table, query, params)
    converters = [converter_for(oid) for oid in table.type_oids]
    width = len(names)
    read: list[ChunkRow[SnapshotRow]] = []
    for raw in rows:
        values = {
            name: None if value is None else convert(str(value))
            for name, convert, value in zip(names, converters, raw[:width], strict=True)
        }
        commit, xmax = raw[width], raw[width + 1]
        key_text = {k: str(v) for k, v in zip(keys, raw[width + 2 :], strict=True)}
        read.append(
            ChunkRow(
                key=tuple(values[k] for k in keys),
                key_text=key_text,
                locked=snapshot.in_progress(int(str(xmax))),
                row=(values, None if commit is None else int(str(commit))),
            )
        )
    return read, until


def _highest_key(
    conn: psycopg.Connection[tuple[object, ...]],
    table: CapturedTable,
    conditions: Sequence[sql.Composable],
) -> tuple[str, ...] | None:
    keys = [c.name for c in table.shape.key_columns]
    query = sql.SQL("SELECT {} FROM {} {} ORDER BY {} LIMIT 1").format(
        sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"erpcrm_key_{i}"))
            for i, k in enumerate(keys)
        ),
        sql.Identifier(table.shape.schema, table.shape.table),
        sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(conditions))
        if conditions
        else sql.SQL(""),
        sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(k)) for k in keys),
    )
    row = conn.execute(query, []).fetchone()
    return None if row is None else tuple(str(v) for v in row)


def _text_rows(
    conn: psycopg.Connection[tuple[object, ...]],
    table: CapturedTable,
    query: sql.Composed,
    params: Sequence[str],
) -> list[tuple[object, ...]]:
    with conn.cursor() as cursor:
        # Values in their text output form, as pgoutput sends them (see read_table).
        for oid in set(table.type_oids):
            cursor.adapters.register_loader(oid, TextLoader)
        cursor.execute(query, params)
        return cursor.fetchall()
