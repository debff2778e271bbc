"""What the capture learns from the source database's catalog (regular connection).

* :func:`describe_tables`: each captured table's columns, types and replica-identity key,
  as :class:`~cdc.envelope.TableShape` plus the type OIDs the value converters need.
  A table that cannot be captured (missing, or with no key to identify its rows) is
  reported with the fix, before anything is streamed.
* :func:`ensure_publication`: the publication exists and covers every captured table.
* :func:`slot_state`, :func:`wal_position`: slot bookkeeping for lag and recovery.
* :func:`emit_heartbeat`, :func:`emit_watermark`: logical messages the slots decode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdc.envelope import ColumnShape, TableShape
from cdc.lsn import Lsn
from schemas.errors import ConfigError

log = logging.getLogger(__name__)

_COLUMNS = """
select a.attname, a.atttypid::int, t.typname, a.atttypmod, a.attnotnull,
       coalesce(a.attnum = any(ident.indkey), c.relreplident = 'f') as is_key
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
join pg_type t on t.oid = a.atttypid
left join lateral (
    select i.indkey from pg_index i
    where i.indrelid = c.oid
      and ((c.relreplident in ('d', 'f') and i.indisprimary)
           or (c.relreplident = 'i' and i.indisreplident))
) ident on true
where n.nspname = %s and c.relname = %s
order by a.attnum
"""


@dataclass(frozen=True, slots=True)
class CapturedTable:
    """A table's shape plus the column type OIDs, in column order."""

    shape: TableShape
    type_oids: tuple[int, ...]

    @property
    def qualified(self) -> str:
        """``schema.table``."""
        return f"{self.shape.schema}.{self.shape.table}"


def column_shape(name: str, typname: str, typmod: int, notnull: bool, is_key: bool) -> ColumnShape:
    """One column's shape from catalog facts (``atttypmod`` decoded for numeric/time types)."""
    precision: int | None = None
    scale: int | None = None
    if typname == "numeric" and typmod >= 4:
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
    elif typname in ("timestamptz", "timetz") and typmod >= 0:
        scale = typmod
    return ColumnShape(
        name=name,
        pg_type=typname,
        nullable=not notnull,
        is_key=is_key,
        numeric_precision=precision,
        numeric_scale=scale,
    )


def describe_tables(
    conn: psycopg.Connection[tuple[object, ...]], server: str, schema: str, tables: tuple[str, ...]
) -> dict[str, CapturedTable]:
    """Shapes of ``tables``; raises :class:`ConfigError` naming a table and its fix."""
    described: dict[str, CapturedTable] = {}
    for table in tables:
        rows = conn.execute(_COLUMNS, (schema, table)).fetchall()
        if not rows:
            raise ConfigError(f"captured table {schema}.{table} does not exist")
        columns = tuple(
            column_shape(str(r[0]), str(r[2]), int(str(r[3])), bool(r[4]), bool(r[5])) for r in rows
        )
        if not any(c.is_key for c in columns):
            raise ConfigError(
                f"table {schema}.{table} has no primary key (or replica identity index): "
                "changes to it cannot be keyed. Add one with "
                f"ALTER TABLE {schema}.{table} ADD PRIMARY KEY (...), or use "
                f"ALTER TABLE {schema}.{table} REPLICA IDENTITY FULL"
            )
        shape = TableShape(server=server, schema=schema, table=table, columns=columns)
        described[table] = CapturedTable(shape, tuple(int(str(r[1])) for r in rows))
    return described


def ensure_publication(
    conn: psycopg.Connection[tuple[object, ...]], name: str, schema: str, tables: tuple[str, ...]
) -> None:
    """Create ``name`` for ``tables``, or add the tables it lacks.

    Creating or altering a publication needs ownership of the tables; a least-privilege
    capture role normally finds the publication already made by the tables' owner. When
    it cannot, the error says what the owner has to run.
    """
    present = {
        str(r[0])
        for r in conn.execute(
            "select tablename from pg_publication_tables where pubname = %s and schemaname = %s",
            (name, schema),
        ).fetchall()
    }
    exists = conn.execute("select 1 from pg_publication where pubname = %s", (name,)).fetchone()
    missing = [t for t in tables if t not in present]
    if exists and not missing:
        return
    targets = sql.SQL(", ").join(sql.Identifier(schema, t) for t in missing)
    if exists:
        statement = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(name), targets
        )
    else:
        statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(name), targets
        )
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"publication {name} is missing tables {missing} and this role may not change it; "
            f"as the tables' owner run: {statement.as_string(conn)}"
        ) from exc
    log.info("publication %s now covers %s", name, ", ".join(tables))


@dataclass(frozen=True, slots=True)
class SlotState:
    """A replication slot as ``pg_replication_slots`` shows it."""

    exists: bool
    confirmed_flush: Lsn
    active: bool
    plugin: str | None


def slot_state(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> SlotState:
    """Look up ``slot`` (``exists=False`` when there is none)."""
    row = conn.execute(
        "select confirmed_flush_lsn::text, active, plugin from pg_replication_slots "
        "where slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return SlotState(False, Lsn.ZERO, False, None)
    return SlotState(True, Lsn.parse(str(row[0] or "0/0")), bool(row[1]), str(row[2]))


def wal_position(conn: psycopg.Connection[tuple[object, ...]]) -> Lsn:
    """The server's current WAL write position."""
    row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
    return Lsn.parse(str(row[0])) if row else Lsn.ZERO


def emit_heartbeat(conn: psycopg.Connection[tuple[object, ...]], prefix: str) -> Lsn:
    """Write a transactional logical message in its own transaction; returns its LSN.

    It goes through every slot's decoding, so an idle slot sees traffic and can confirm;
    as a transaction of its own (autocommit ``conn``) it comes in commit order, after
    every transaction committed before it, with its commit LSN and time.
    """
    row = conn.execute(
        "select pg_logical_emit_message(true, %s, now()::text)::text", (prefix,)
    ).fetchone()
    return Lsn.parse(str(row[0])) if row else Lsn.ZERO


def emit_watermark(conn: psycopg.Connection[tuple[object, ...]], prefix: str, content: str) -> None:
    """Write a transactional logical message in its own transaction (autocommit ``conn``).

    It reaches every slot of the database at its commit's place in the WAL, between the
    changes committed before and after it; an incremental snapshot's watermarks.
    """
    conn.execute("select pg_logical_emit_message(true, %s, %s)", (prefix, content))


def table_exists(conn: psycopg.Connection[tuple[object, ...]], schema: str, table: str) -> bool:
    """Whether ``schema.table`` exists (and this role may see it)."""
    row = conn.execute(
        "select to_regclass(format('%%I.%%I', %s::text, %s::text)) is not null", (schema, table)
    ).fetchone()
    return bool(row and row[0])
