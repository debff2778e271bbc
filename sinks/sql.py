"""SQL text of the sinks, built with :mod:`psycopg.sql` only.

Every identifier is an :class:`~psycopg.sql.Identifier`, every value a ``%s``
placeholder; nothing is interpolated. Column types (for the ``unnest`` casts) are
checked against :data:`PG_TYPES`. The builders return
:class:`~psycopg.sql.Composed`; the runner passes one list per column as parameters.

Multi-row writes use ``INSERT ... SELECT ... FROM (SELECT (e->>0)::type AS column, ...
FROM jsonb_array_elements(%s::jsonb) AS e OFFSET 0) AS u``: one round trip and one plan
per batch, whatever its size, and the whole batch in one parameter, the rows as a JSON
array of arrays (:func:`records`). orjson writes it in C and PostgreSQL reads it in C,
each value with its column type's input function: a tenth of the client time of one
binary array per column (psycopg dumps array elements one by one in Python: 2.6 ms
against 0.3 ms for 500 rows of 13 columns) for the same server time (4.0 ms against
``unnest``'s 3.8-4.3 for reading those rows; ``json_to_recordset``, which hashes every
object's keys, took 5.5, and ``json`` rather than ``jsonb`` elements, each ``->>``
parsing its element again from the start, 17). ``OFFSET 0`` keeps the subquery whole:
pulled up into the statement, each ``u.column`` would extract its value again wherever
it is named (an update names each twice). A ``COPY`` into a staging table would also
bind in C, but cannot run inside the write's pipeline. Lookups (``= ANY(%b::type[])``)
and the statements that store event bytes (``bytea``) keep binary arrays (:func:`array`).
Updates carry an ``IS DISTINCT FROM`` guard so an unchanged row is not rewritten (no
trigger fires, no WAL, no echo).

The sync-state schema (default ``erpcrm_sync``, owned by ``erpcrm_sink``):

- ``applied(entity, entity_key, version, payload_hash, applied_at)``: per entity key,
  the last applied version; a version never goes down (guarded upsert);
- ``offsets(topic, partition, next_offset)``: the consumer position committed in the
  same transaction as the rows it covers;
- ``conflicts(id, entity, entity_key, field, erp_value, crm_value, winner, reason,
  at)``: the conflict audit trail;
- ``row_clock(entity, row_id, written, local, horizon_ms, sink_xid, local_at_write_ms,
  owner_key, owner_gone)``: per target row, the commit times of its fields' last writes
  (:class:`sinks.state.RowClock`) and the source record it was written for
  (:class:`sinks.state.RowOwner`);
- ``announce(entity, entity_key, pk)``: rows the sink created and has still to announce
  (an outbox, written in the batch's transaction; see :mod:`sinks.postgres`);
- ``dead_letters(id, topic, partition, offset, key, value, headers)``: events the
  target refused, written in the batch's transaction and then published to
  ``dlq.sinks.<target>`` (an outbox: a crash between the two loses no dead letter).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

import orjson
from psycopg import sql
from psycopg.adapt import PyFormat

__all__ = [
    "CLOCK_COLUMNS",
    "DECISIONS_SCHEMA",
    "PG_TYPES",
    "PRIVILEGES",
    "ROW_CLOCK",
    "ROW_LOOKUP",
    "SYNC_SCHEMA",
    "Column",
    "Key",
    "Table",
    "announce_done",
    "announce_insert",
    "announce_select",
    "applied_upsert",
    "array",
    "clock_column",
    "conflicts_insert",
    "create_decisions",
    "create_sync_schema",
    "dead_letter_delete",
    "dead_letter_insert",
    "dead_letter_select",
    "decisions_of",
    "default_sequences",
    "delete_rows",
    "grant_sequence",
    "grant_table",
    "insert_children",
    "offsets_select",
    "offsets_upsert",
    "origin_create",
    "origin_session_setup",
    "origin_xact_setup",
    "records",
    "revoke_table",
    "select_applied",
    "select_current",
    "soft_delete_rows",
    "touch_children",
    "touch_rows",
    "update_rows",
    "upsert_rows",
]

SYNC_SCHEMA: Final = "erpcrm_sync"
DECISIONS_SCHEMA: Final = "erpcrm_decisions"
"""Where the suspects' decisions outlive the sync state (:func:`create_decisions`)."""

PG_TYPES: Final = frozenset(
    {
        "text",
        "uuid",
        "bigint",
        "integer",
        "numeric",
        "boolean",
        "date",
        "timestamptz",
        "bytea",
        "jsonb",
    }
)
"""The column types the builders cast parameter arrays to."""

_NAME: Final = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Column:
    """A target column and the type its parameter array is cast to."""

    name: str
    pg_type: str

    def __post_init__(self) -> None:
        if self.pg_type not in PG_TYPES:
            raise ValueError(f"column {self.name}: type {self.pg_type!r} not in {PG_TYPES}")


@dataclass(frozen=True, slots=True)
class Table:
    """A schema-qualified table."""

    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        """``"schema"."name"``."""
        return sql.Identifier(self.schema, self.name)


_ARRAY: Final = sql.Placeholder(format=PyFormat.BINARY)
"""A parameter array: sent in binary (``%b``), each element dumped without quoting."""


def _type(pg_type: str) -> sql.SQL:
    # The only non-Identifier SQL fragment: a type name, checked against a fixed set.
    if pg_type not in PG_TYPES or not _NAME.fullmatch(pg_type):
        raise ValueError(f"unsupported type {pg_type!r}")
    return sql.SQL(pg_type)


def array(pg_type: str, values: Iterable[Any]) -> list[Any]:
    """``values`` as the parameter array of a ``pg_type`` column: one Python type each.

    A parameter array holds one element type: numbers for a ``numeric`` column become
    :class:`~decimal.Decimal` (a default of ``0`` beside decimals), UUIDs become text
    (ids read back from rows beside ids from the bus), digit strings for an integer
    column become integers (ids travel as text on the bus). Anything else passes
    unchanged, and a value the column cannot take is refused by the database as before.
    """
    if pg_type == "numeric":
        return [_decimal(v) for v in values]
    if pg_type in ("uuid", "text"):
        return [str(v) if isinstance(v, uuid.UUID) else v for v in values]
    if pg_type in ("bigint", "integer"):
        return [_integer(v) for v in values]
    return list(values)


def _decimal(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


def _integer(value: Any) -> Any:
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        return int(value)
    return value


def records(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as the JSON parameter of a multi-row write (:func:`_recordset`).

    Each row holds its values in the order of the statement's columns. Each value reaches
    PostgreSQL as JSON and is read by its column's input function: text as a string,
    numbers and booleans as JSON literals, decimals as their exact text, UUIDs and times in
    ISO form, a mapping as a JSON object (a ``jsonb`` column), None as null (SQL NULL).
    orjson writes the text; what it refuses
    (integers beyond 64 bits) the standard library does. Rows hold no floats that are not
    finite (JSON has no form for them; orjson would write null): canonical records carry
    decimals, never floats, and the sinks' defaults are decimals or integers.

    Raises:
        TypeError: a value with no JSON form (bytes: store them with :func:`array`).
    """
    listed = rows if isinstance(rows, list) else list(rows)
    try:
        return orjson.dumps(listed, default=_json_default).decode("utf-8")
    except TypeError:
        return json.dumps(listed, default=_json_default, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, date | datetime):  # the standard library's fallback; orjson's own
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _idents(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _unnest(columns: Sequence[Column]) -> sql.Composed:
    """``unnest(%b::t1[], %b::t2[], ...) AS u(c1, c2, ...)``."""
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(_ARRAY, _type(c.pg_type)) for c in columns
    )
    return sql.SQL("unnest({}) AS {}({})").format(
        arrays, sql.Identifier("u"), _idents([c.name for c in columns])
    )


_RECORDS: Final = sql.Placeholder()
"""The rows of a multi-row write: one JSON text (:func:`records`)."""


def _recordset(columns: Sequence[Column]) -> sql.Composed:
    """The rows of :func:`records` as the relation ``u(c1, c2, ...)``, typed.

    ``(SELECT (e->>0)::t1 AS c1, (e->>1)::t2 AS c2, ... FROM jsonb_array_elements(%s::jsonb)
    AS e OFFSET 0) AS u``: each value's text is read by its type's input function (a
    ``jsonb`` column takes the value as it is); a JSON null is NULL.
    """
    parts: list[sql.Composable] = []
    for index, c in enumerate(columns):
        if c.pg_type == "bytea":
            raise ValueError(f"column {c.name}: bytea has no JSON form; use unnest")
        position = sql.SQL(str(int(index)))
        if c.pg_type == "jsonb":
            value = sql.SQL("{}->{}").format(sql.Identifier("e"), position)
        else:
            value = sql.SQL("({}->>{})::{}").format(sql.Identifier("e"), position, _type(c.pg_type))
        parts.append(sql.SQL("{} AS {}").format(value, sql.Identifier(c.name)))
    return sql.SQL("(SELECT {} FROM jsonb_array_elements({}::jsonb) AS {} OFFSET 0) AS {}").format(
        sql.SQL(", ").join(parts), _RECORDS, sql.Identifier("e"), sql.Identifier("u")
    )


def _distinct(left: str, right: str, names: Sequence[str]) -> sql.Composed:
    """``(l.a, l.b) IS DISTINCT FROM (r.a, r.b)``."""
    return sql.SQL("({}) IS DISTINCT FROM ({})").format(
        sql.SQL(", ").join(sql.Identifier(left, n) for n in names),
        sql.SQL(", ").join(sql.Identifier(right, n) for n in names),
    )


# ----------------------------------------------------------------------- sync state


def create_sync_schema(schema: str = SYNC_SCHEMA) -> list[sql.Composed]:
    """DDL of the sync-state schema; idempotent (``IF NOT EXISTS``), run by ``setup``.

    ``applied`` and ``row_clock``, rewritten by every batch, leave room in their pages
    (``fillfactor = 70``): a new row version fits beside the old one, so an update is
    HOT (no index entry, half the WAL records) instead of moving to another page.
    """
    s = sql.Identifier(schema)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "entity text NOT NULL, entity_key text NOT NULL, version bigint NOT NULL, "
            "payload_hash text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (entity, entity_key)) WITH (fillfactor = 70)"
        ).format(sql.Identifier(schema, "applied")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            'topic text NOT NULL, "partition" integer NOT NULL, next_offset bigint NOT NULL, '
            'updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (topic, "partition"))'
        ).format(sql.Identifier(schema, "offsets")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, entity text NOT NULL, "
            "entity_key text NOT NULL, field text NOT NULL, erp_value text, crm_value text, "
            "winner text NOT NULL, reason text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
        ).format(sql.Identifier(schema, "conflicts")),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (entity, entity_key)").format(
            sql.Identifier("conflicts_entity_key_idx"), sql.Identifier(schema, "conflicts")
        ),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "entity text NOT NULL, entity_key text NOT NULL, pk text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (entity, entity_key))"
        ).format(sql.Identifier(schema, "announce")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, entity text NOT NULL, "
            "entity_key text NOT NULL, candidate text NOT NULL, evidence text, "
            "status text NOT NULL, "
            'topic text NOT NULL, "partition" integer NOT NULL, "offset" bigint NOT NULL, '
            "key bytea, value bytea, origin_topic text, origin_partition integer, "
            "origin_offset bigint, replays integer NOT NULL DEFAULT 0, "
            "first_seen timestamptz NOT NULL DEFAULT now(), "
            "last_seen timestamptz NOT NULL DEFAULT now(), decided_at timestamptz, "
            "UNIQUE (entity, entity_key))"
        ).format(sql.Identifier(schema, "suspects")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "entity text NOT NULL, row_id text NOT NULL, "
            "written jsonb NOT NULL DEFAULT jsonb_build_object(), "
            "local jsonb NOT NULL DEFAULT jsonb_build_object(), "
            "horizon_ms bigint, sink_xid bigint, local_at_write_ms bigint, "
            "owner_key text, owner_gone boolean NOT NULL DEFAULT false, "
            "PRIMARY KEY (entity, row_id)) WITH (fillfactor = 70)"
        ).format(sql.Identifier(schema, "row_clock")),
        # Row clocks made before they kept the row's owner: no owner yet (the next
        # record written there becomes it). A constant default: no table rewrite.
        sql.SQL(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS owner_key text, "
            "ADD COLUMN IF NOT EXISTS owner_gone boolean NOT NULL DEFAULT false"
        ).format(sql.Identifier(schema, "row_clock")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text NOT NULL, "
            '"partition" integer NOT NULL, "offset" bigint NOT NULL, key bytea, value bytea, '
            "headers jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now())"
        ).format(sql.Identifier(schema, "dead_letters")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, entity text NOT NULL, "
            "entity_key text NOT NULL, suspect_entity text NOT NULL, "
            "suspect_key text NOT NULL, "
            'topic text NOT NULL, "partition" integer NOT NULL, "offset" bigint NOT NULL, '
            "key bytea, value bytea, origin_topic text, origin_partition integer, "
            "origin_offset bigint, replays integer NOT NULL DEFAULT 0, "
            "at timestamptz NOT NULL DEFAULT now())"
        ).format(sql.Identifier(schema, "parked")),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (entity, entity_key)").format(
            sql.Identifier("parked_entity_key_idx"), sql.Identifier(schema, "parked")
        ),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (suspect_entity, suspect_key)").format(
            sql.Identifier("parked_suspect_idx"), sql.Identifier(schema, "parked")
        ),
        # Stored events made before they kept a replayed event's origin.
        *(
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS origin_topic text, "
                "ADD COLUMN IF NOT EXISTS origin_partition integer, "
                "ADD COLUMN IF NOT EXISTS origin_offset bigint, "
                "ADD COLUMN IF NOT EXISTS replays integer NOT NULL DEFAULT 0"
            ).format(sql.Identifier(schema, table))
            for table in ("suspects", "parked")
        ),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "entity text NOT NULL, entity_key text NOT NULL, row_id text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (entity, entity_key))"
        ).format(sql.Identifier(schema, "made")),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "entity text NOT NULL, entity_key text NOT NULL, lines jsonb NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (entity, entity_key))"
        ).format(sql.Identifier(schema, "source_lines")),
    ]


def announce_insert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Queue created rows for announcement.

    Parameter: :func:`records` of ``entity, entity_key, pk``.
    """
    cols = [Column("entity", "text"), Column("entity_key", "text"), Column("pk", "text")]
    return sql.SQL(
        "INSERT INTO {} (entity, entity_key, pk) SELECT u.entity, u.entity_key, u.pk FROM {} "
        "ON CONFLICT (entity, entity_key) DO UPDATE SET pk = EXCLUDED.pk"
    ).format(sql.Identifier(schema, "announce"), _recordset(cols))


def announce_select(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """The queued announcements, oldest first, locked. Parameter: a limit.

    Rows: ``entity, entity_key, pk``.
    """
    return sql.SQL(
        "SELECT entity, entity_key, pk FROM {} ORDER BY at LIMIT %s FOR UPDATE SKIP LOCKED"
    ).format(sql.Identifier(schema, "announce"))


def announce_done(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Dequeue announcements. Parameters: two lists, ``entity, entity_key``."""
    keys = _unnest([Column("entity", "text"), Column("entity_key", "text")])
    return sql.SQL(
        "DELETE FROM {} AS t USING {} WHERE t.entity = u.entity AND t.entity_key = u.entity_key"
    ).format(sql.Identifier(schema, "announce"), keys)


def row_clock_select(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Row clocks of some rows of one entity, locked for the transaction.

    Parameters: ``entity``, ``row_ids`` (list). Rows: ``row_id, written, local,
    horizon_ms, sink_xid, local_at_write_ms`` (see :class:`sinks.state.RowClock`),
    ``owner_key, owner_gone`` (the row's owner, :class:`sinks.state.RowOwner`);
    ``written`` and ``local`` as JSON text (the sink parses them itself, faster than
    the driver's ``jsonb`` loader).
    """
    return sql.SQL(
        "SELECT row_id, written::text AS written, local::text AS local, horizon_ms, "
        "sink_xid, local_at_write_ms, owner_key, owner_gone FROM {} "
        "WHERE entity = %s AND row_id = ANY(%b::text[]) FOR UPDATE"
    ).format(sql.Identifier(schema, "row_clock"))


def row_clock_upsert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Store row clocks whole (they were read locked in the same transaction).

    Parameter: :func:`records` of ``entity, row_id, written, local`` (field -> ms
    mappings), ``horizon_ms, sink_xid, local_at_write_ms, owner_key, owner_gone``
    (the row's owner as read with the clock, or the record the batch wrote there).
    """
    cols = [
        Column("entity", "text"),
        Column("row_id", "text"),
        Column("written", "jsonb"),
        Column("local", "jsonb"),
        Column("horizon_ms", "bigint"),
        Column("sink_xid", "bigint"),
        Column("local_at_write_ms", "bigint"),
        Column("owner_key", "text"),
        Column("owner_gone", "boolean"),
    ]
    return sql.SQL(
        "INSERT INTO {} (entity, row_id, written, local, horizon_ms, sink_xid, "
        "local_at_write_ms, owner_key, owner_gone) SELECT u.entity, u.row_id, u.written, "
        "u.local, u.horizon_ms, u.sink_xid, u.local_at_write_ms, u.owner_key, "
        "coalesce(u.owner_gone, false) FROM {} "
        "ON CONFLICT (entity, row_id) DO UPDATE SET written = EXCLUDED.written, "
        "local = EXCLUDED.local, horizon_ms = EXCLUDED.horizon_ms, "
        "sink_xid = EXCLUDED.sink_xid, local_at_write_ms = EXCLUDED.local_at_write_ms, "
        "owner_key = EXCLUDED.owner_key, owner_gone = EXCLUDED.owner_gone"
    ).format(sql.Identifier(schema, "row_clock"), _recordset(cols))


STORED_EVENT: Final = (
    Column("topic", "text"),
    Column("partition", "integer"),
    Column("offset", "bigint"),
    Column("key", "bytea"),
    Column("value", "bytea"),
    Column("origin_topic", "text"),
    Column("origin_partition", "integer"),
    Column("origin_offset", "bigint"),
    Column("replays", "integer"),
)
"""The columns a stored event keeps: suspects, parked events. Its position as read and
its bytes; for a replayed dead letter (read from ``replay.sinks.<target>``) also its
original canonical position (``origin_*``, null for any other event) and its replay
count, so the event taken back out is the one that was read (its dead letter names
where it came from, and how often it was replayed)."""

_STORED: Final = sql.SQL(", ").join(sql.Identifier(c.name) for c in STORED_EVENT)
_STORED_U: Final = sql.SQL(", ").join(sql.Identifier("u", c.name) for c in STORED_EVENT)


SUSPECT_STATUSES: Final = ("held", "release", "released", "link", "linked")
"""A suspected duplicate is ``held``; an operator asks to ``release`` (create it) or to
``link`` it to its candidate, and the sink marks it ``released`` or ``linked``."""


def suspects_hold(schema: str = SYNC_SCHEMA, decisions: str = DECISIONS_SCHEMA) -> sql.Composed:
    """Hold suspected duplicates (the latest event of each key; decided ones stay).

    Parameters: lists ``entity, entity_key, candidate, evidence``, then those of
    :data:`STORED_EVENT`. What is held is kept in ``decisions`` too (:func:`_kept`).
    """
    cols = [
        Column("entity", "text"),
        Column("entity_key", "text"),
        Column("candidate", "text"),
        Column("evidence", "text"),
        *STORED_EVENT,
    ]
    stored_again = sql.SQL(", ").join(
        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c.name), sql.Identifier(c.name))
        for c in STORED_EVENT
    )
    hold = sql.SQL(
        "INSERT INTO {} AS t (entity, entity_key, candidate, evidence, {}, status) "
        "SELECT u.entity, u.entity_key, u.candidate, u.evidence, {}, 'held' FROM {} "
        "ON CONFLICT (entity, entity_key) DO UPDATE SET candidate = EXCLUDED.candidate, "
        "evidence = EXCLUDED.evidence, {}, last_seen = now() WHERE t.status = 'held'"
    ).format(sql.Identifier(schema, "suspects"), _STORED, _STORED_U, _unnest(cols), stored_again)
    return _kept(hold, schema, decisions)


def suspects_decided(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """What operators decided about some keys. Parameters: ``entity``, ``entity_keys``.

    Rows: ``entity_key, status, candidate``.
    """
    return sql.SQL(
        "SELECT entity_key, status, candidate FROM {} "
        "WHERE entity = %s AND entity_key = ANY(%s::text[])"
    ).format(sql.Identifier(schema, "suspects"))


def suspects_held(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Keys held for an operator, of some. Parameter: ``entity_keys``.

    Rows: ``entity, entity_key, candidate``.
    """
    return sql.SQL(
        "SELECT entity, entity_key, candidate FROM {} "
        "WHERE entity_key = ANY(%s::text[]) AND status = 'held' ORDER BY entity, entity_key"
    ).format(sql.Identifier(schema, "suspects"))


def suspects_pending(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Suspects an operator released or linked, not carried out yet. Parameter: a limit.

    Rows: ``id, entity, entity_key, status, candidate``, then :data:`STORED_EVENT`.
    """
    return sql.SQL(
        "SELECT id, entity, entity_key, status, candidate, {} FROM {} "
        "WHERE status IN ('release', 'link') ORDER BY id LIMIT %s"
    ).format(_STORED, sql.Identifier(schema, "suspects"))


def suspects_carried_out(
    schema: str = SYNC_SCHEMA, decisions: str = DECISIONS_SCHEMA
) -> sql.Composed:
    """Mark released or linked suspects as carried out (in ``decisions`` too).

    Parameter: a list of ids.
    """
    done = sql.SQL(
        "UPDATE {} SET status = CASE status WHEN 'release' THEN 'released' "
        "WHEN 'link' THEN 'linked' ELSE status END, decided_at = now() "
        "WHERE id = ANY(%s::bigint[])"
    ).format(sql.Identifier(schema, "suspects"))
    return _kept(done, schema, decisions)


def suspects_list(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Every suspect, newest first (for people). Parameter: a status or null for all.

    Rows: ``id, entity, entity_key, candidate, evidence, status, first_seen, last_seen,
    waiting`` (the events parked until the suspect is decided, see :func:`parked_insert`).
    """
    return sql.SQL(
        "SELECT s.id, s.entity, s.entity_key, s.candidate, s.evidence, s.status, "
        "s.first_seen, s.last_seen, (SELECT count(*) FROM {} AS p "
        "WHERE p.suspect_entity = s.entity AND p.suspect_key = s.entity_key) AS waiting "
        "FROM {} AS s WHERE %s::text IS NULL OR s.status = %s::text ORDER BY s.id DESC"
    ).format(sql.Identifier(schema, "parked"), sql.Identifier(schema, "suspects"))


def suspects_of(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """The suspects among some customer keys, whatever their status. Parameter: keys.

    Rows: ``entity, entity_key, status, candidate``.
    """
    return sql.SQL(
        "SELECT entity, entity_key, status, candidate FROM {} WHERE entity_key = ANY(%s::text[])"
    ).format(sql.Identifier(schema, "suspects"))


def parked_insert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Park events until a suspect is decided (in order: ids follow the lists).

    Parameters: lists ``entity, entity_key, suspect_entity, suspect_key``, then those
    of :data:`STORED_EVENT`.
    """
    cols = [
        Column("entity", "text"),
        Column("entity_key", "text"),
        Column("suspect_entity", "text"),
        Column("suspect_key", "text"),
        *STORED_EVENT,
    ]
    return sql.SQL(
        "INSERT INTO {} (entity, entity_key, suspect_entity, suspect_key, {}) "
        "SELECT u.entity, u.entity_key, u.suspect_entity, u.suspect_key, {} FROM {}"
    ).format(sql.Identifier(schema, "parked"), _STORED, _STORED_U, _unnest(cols))


def source_lines_select(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """The lines the source last stated for some orders (:mod:`sinks.lines`).

    Parameters: ``entity``, ``entity_keys`` (list). Rows: ``entity_key, lines`` (JSON
    text: the sink parses it itself).
    """
    return sql.SQL(
        "SELECT entity_key, lines::text AS lines FROM {} "
        "WHERE entity = %s AND entity_key = ANY(%b::text[])"
    ).format(sql.Identifier(schema, "source_lines"))


def source_lines_upsert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Store the lines the source now states for some orders.

    Parameter: :func:`records` of ``entity, entity_key, lines`` (JSON text).
    """
    cols = [Column("entity", "text"), Column("entity_key", "text"), Column("lines", "text")]
    return sql.SQL(
        "INSERT INTO {} (entity, entity_key, lines) "
        "SELECT u.entity, u.entity_key, u.lines::jsonb FROM {} "
        "ON CONFLICT (entity, entity_key) DO UPDATE SET lines = EXCLUDED.lines, "
        "updated_at = now()"
    ).format(sql.Identifier(schema, "source_lines"), _recordset(cols))


def made_upsert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Remember the row the sink created for each of some source records.

    Parameter: :func:`records` of ``entity, entity_key, row_id`` (text).
    """
    cols = [Column("entity", "text"), Column("entity_key", "text"), Column("row_id", "text")]
    return sql.SQL(
        "INSERT INTO {} (entity, entity_key, row_id) "
        "SELECT u.entity, u.entity_key, u.row_id FROM {} "
        "ON CONFLICT (entity, entity_key) DO UPDATE SET row_id = EXCLUDED.row_id, at = now()"
    ).format(sql.Identifier(schema, "made"), _recordset(cols))


def made_select(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """The rows the sink created for some source records of one entity.

    Parameters: ``entity``, ``entity_keys`` (list). Rows: ``entity_key, row_id``.
    """
    return sql.SQL(
        "SELECT entity_key, row_id FROM {} WHERE entity = %s AND entity_key = ANY(%b::text[])"
    ).format(sql.Identifier(schema, "made"))


def made_backfill(table: Table, pk: Column, key: Column, schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Learn the rows made before :func:`made_upsert` existed from their link column.

    Run only while nothing of the entity is remembered (a new sync state, or the first
    start of a build that remembers): every row whose ``key`` names a source record is
    that record's. Parameters: ``entity``, the source system's key prefix (``crm:``),
    ``entity`` again.
    """
    return sql.SQL(
        "INSERT INTO {made} (entity, entity_key, row_id) "
        "SELECT %s, %s || {key}::text, {pk}::text FROM {t} WHERE {key} IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM {made} WHERE entity = %s) "
        "ON CONFLICT (entity, entity_key) DO NOTHING"
    ).format(
        made=sql.Identifier(schema, "made"),
        key=sql.Identifier(key.name),
        pk=sql.Identifier(pk.name),
        t=table.ident,
    )


def parked_all(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """The keys with parked events and the suspect they wait for (their first one).

    Rows: ``entity, entity_key, suspect_entity, suspect_key``.
    """
    return sql.SQL(
        "SELECT DISTINCT ON (entity, entity_key) entity, entity_key, suspect_entity, "
        "suspect_key FROM {} ORDER BY entity, entity_key, id"
    ).format(sql.Identifier(schema, "parked"))


def parked_ready(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """The parked events whose suspect was carried out (or is gone), whole keys, in order.

    Parameter: how many keys at most. Rows: ``id, entity, entity_key, suspect_entity,
    suspect_key, status``, then :data:`STORED_EVENT`, by id (the order parked).
    """
    parked, suspects = sql.Identifier(schema, "parked"), sql.Identifier(schema, "suspects")
    stored = sql.SQL(", ").join(sql.Identifier("p", c.name) for c in STORED_EVENT)
    return sql.SQL(
        "WITH ready AS (SELECT DISTINCT p.entity, p.entity_key FROM {} AS p "
        "LEFT JOIN {} AS s ON s.entity = p.suspect_entity AND s.entity_key = p.suspect_key "
        "WHERE s.id IS NULL OR s.status IN ('released', 'linked') LIMIT %s) "
        "SELECT p.id, p.entity, p.entity_key, p.suspect_entity, p.suspect_key, s.status, "
        "{} FROM {} AS p "
        "JOIN ready AS r ON r.entity = p.entity AND r.entity_key = p.entity_key "
        "LEFT JOIN {} AS s ON s.entity = p.suspect_entity AND s.entity_key = p.suspect_key "
        "ORDER BY p.id"
    ).format(parked, suspects, stored, parked, suspects)


def parked_delete(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Unpark events (their batch decides them again). Parameter: a list of ids."""
    return sql.SQL("DELETE FROM {} WHERE id = ANY(%s::bigint[])").format(
        sql.Identifier(schema, "parked")
    )


def suspects_decide(schema: str = SYNC_SCHEMA, decisions: str = DECISIONS_SCHEMA) -> sql.Composed:
    """An operator's decision about a held suspect (kept in ``decisions`` too).

    Parameters: ``status`` (``release`` or ``link``), ``id``. Returns the id when the
    suspect was held (a decided one stays as it is).
    """
    decide = sql.SQL("UPDATE {} SET status = %s WHERE id = %s AND status = 'held'").format(
        sql.Identifier(schema, "suspects")
    )
    return _kept(decide, schema, decisions, returning_id=True)


def _kept(
    statement: sql.Composed, schema: str, decisions: str, *, returning_id: bool = False
) -> sql.Composed:
    """``statement`` on ``schema``'s suspects, its rows kept in ``decisions`` at once.

    The changed rows are written to ``decisions``'s suspects (:func:`create_decisions`)
    by the same statement, so the two never differ.

    ``held_by``, the sync schema that held a key first, is never overwritten. With
    ``returning_id``, the statement returns the ids of the suspects it changed.
    """
    return sql.SQL(
        "WITH s AS ({} RETURNING id, entity, entity_key, candidate, evidence, status), "
        "d AS (INSERT INTO {} (entity, entity_key, candidate, evidence, status, "
        "held_by, decided_by) SELECT entity, entity_key, candidate, evidence, status, {}, {} "
        "FROM s ON CONFLICT (entity, entity_key) DO UPDATE SET "
        "candidate = EXCLUDED.candidate, evidence = EXCLUDED.evidence, "
        "status = EXCLUDED.status, decided_by = EXCLUDED.decided_by, updated_at = now()) "
        "SELECT {} FROM s"
    ).format(
        statement,
        sql.Identifier(decisions, "suspects"),
        sql.Literal(schema),
        sql.Literal(schema),
        sql.SQL("id") if returning_id else sql.SQL("count(*)"),
    )


def create_decisions(schema: str = DECISIONS_SCHEMA) -> list[sql.Composed]:
    """DDL of the suspects' decisions that outlive a pipeline; idempotent.

    One row per suspect key, whichever sync schema held it: the latest status, candidate
    and evidence (written by :func:`suspects_hold`, :func:`suspects_decide` and
    :func:`suspects_carried_out` with the sync state), ``held_by`` the sync schema that
    held it first, ``decided_by`` the one that wrote it last. A new sync schema over the
    same database reads them (:func:`decisions_of`). The first statement makes the
    schema (``CREATE`` on the database; skipped when the schema exists).
    """
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "entity text NOT NULL, entity_key text NOT NULL, candidate text NOT NULL, "
            "evidence text, status text NOT NULL, held_by text NOT NULL, "
            "decided_by text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (entity, entity_key))"
        ).format(sql.Identifier(schema, "suspects")),
    ]


def decisions_of(schema: str = SYNC_SCHEMA, decisions: str = DECISIONS_SCHEMA) -> sql.Composed:
    """What is held or decided about some keys: this sync state's, else any kept.

    A key's suspect in ``schema`` wins over the decision kept in ``decisions``
    (:func:`create_decisions`), written by any sync state.

    Parameters: ``entity``, ``entity_keys``. Rows: ``entity_key, status, candidate,
    evidence, own`` (``own``: the status is this sync state's).
    """
    return sql.SQL(
        "SELECT k.key AS entity_key, coalesce(s.status, d.status) AS status, "
        "coalesce(s.candidate, d.candidate) AS candidate, "
        "coalesce(s.evidence, d.evidence) AS evidence, s.status IS NOT NULL AS own "
        "FROM unnest(%s::text[]) AS k(key) "
        "LEFT JOIN {} AS s ON s.entity = %s AND s.entity_key = k.key "
        "LEFT JOIN {} AS d ON d.entity = %s AND d.entity_key = k.key "
        "WHERE s.status IS NOT NULL OR d.status IS NOT NULL"
    ).format(sql.Identifier(schema, "suspects"), sql.Identifier(decisions, "suspects"))


def touch_rows(table: Table, key: Column, modified: str) -> sql.Composed:
    """Set rows' modification time to now (an update the capture publishes).

    Parameter: one list of keys.
    """
    return sql.SQL("UPDATE {} SET {} = now() WHERE {} = ANY({}::{}[])").format(
        table.ident,
        sql.Identifier(modified),
        sql.Identifier(key.name),
        sql.Placeholder(),
        _type(key.pg_type),
    )


def touch_children(table: Table, parent: Column) -> sql.Composed:
    """Rewrite child rows unchanged (their new versions are published with the parent).

    Parameter: one list of parent keys.
    """
    return sql.SQL("UPDATE {} SET {} = {} WHERE {} = ANY({}::{}[])").format(
        table.ident,
        sql.Identifier(parent.name),
        sql.Identifier(parent.name),
        sql.Identifier(parent.name),
        sql.Placeholder(),
        _type(parent.pg_type),
    )


def dead_letter_insert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Queue one dead letter.

    Parameters: ``topic, partition, offset, key, value, headers`` (headers as a JSON
    object of text values).
    """
    return sql.SQL(
        'INSERT INTO {} (topic, "partition", "offset", key, value, headers) '
        "VALUES (%s, %s, %s, %s, %s, %s::jsonb)"
    ).format(sql.Identifier(schema, "dead_letters"))


def dead_letter_select(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Queued dead letters, oldest first. Parameter: a limit.

    Rows: ``id, topic, partition, offset, key, value, headers``.
    """
    return sql.SQL(
        'SELECT id, topic, "partition", "offset", key, value, headers FROM {} ORDER BY id LIMIT %s'
    ).format(sql.Identifier(schema, "dead_letters"))


def dead_letter_delete(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Dequeue published dead letters. Parameter: a list of ids."""
    return sql.SQL("DELETE FROM {} WHERE id = ANY(%s::bigint[])").format(
        sql.Identifier(schema, "dead_letters")
    )


def select_applied(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Stored state of some keys of one entity, locked for the transaction.

    Parameters: ``entity``, ``entity_keys`` (list). Rows: ``entity_key, version,
    payload_hash``.
    """
    return sql.SQL(
        "SELECT entity_key, version, payload_hash "
        "FROM {} WHERE entity = %s AND entity_key = ANY(%b::text[]) FOR UPDATE"
    ).format(sql.Identifier(schema, "applied"))


def applied_upsert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Record applied versions; a stored version never goes down.

    A version stored as dead-lettered (:data:`~sinks.state.LETTERED`) is overwritten
    once its replay applies it. Parameters: :func:`records` of ``entity``,
    ``entity_key``, ``version``, ``payload_hash``; then :data:`~sinks.state.LETTERED`.
    ``applied_at`` (the transaction time) is for people; no decision reads it.
    """
    cols = [
        Column("entity", "text"),
        Column("entity_key", "text"),
        Column("version", "bigint"),
        Column("payload_hash", "text"),
    ]
    table = sql.Identifier(schema, "applied")
    return sql.SQL(
        "INSERT INTO {} AS t (entity, entity_key, version, payload_hash, applied_at) "
        "SELECT u.entity, u.entity_key, u.version, u.payload_hash, now() FROM {} "
        "ON CONFLICT (entity, entity_key) DO UPDATE SET version = EXCLUDED.version, "
        "payload_hash = EXCLUDED.payload_hash, applied_at = EXCLUDED.applied_at "
        "WHERE t.version < EXCLUDED.version "
        "OR (t.version = EXCLUDED.version AND t.payload_hash = %s)"
    ).format(table, _recordset(cols))


def offsets_select(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Committed positions of one topic. Parameter: ``topic``; rows ``partition, next_offset``."""
    return sql.SQL('SELECT "partition", next_offset FROM {} WHERE topic = %s').format(
        sql.Identifier(schema, "offsets")
    )


def offsets_upsert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Store consumer positions; a position never goes backwards.

    Parameter: :func:`records` of ``topic``, ``partition``, ``next_offset``.
    """
    cols = [
        Column("topic", "text"),
        Column("partition", "integer"),
        Column("next_offset", "bigint"),
    ]
    return sql.SQL(
        'INSERT INTO {} AS t (topic, "partition", next_offset, updated_at) '
        'SELECT u.topic, u."partition", u.next_offset, now() FROM {} '
        'ON CONFLICT (topic, "partition") DO UPDATE SET next_offset = EXCLUDED.next_offset, '
        "updated_at = EXCLUDED.updated_at WHERE t.next_offset <= EXCLUDED.next_offset"
    ).format(sql.Identifier(schema, "offsets"), _recordset(cols))


def conflicts_insert(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """Append conflict records.

    Parameter: :func:`records` of ``entity, entity_key, field, erp_value, crm_value,
    winner, reason`` (values as text).
    """
    names = ["entity", "entity_key", "field", "erp_value", "crm_value", "winner", "reason"]
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
        sql.Identifier(schema, "conflicts"),
        _idents(names),
        sql.SQL(", ").join(sql.Identifier("u", n) for n in names),
        _recordset([Column(n, "text") for n in names]),
    )


# ------------------------------------------------------------------ replication origin


def origin_create() -> sql.Composed:
    """Create the replication origin named by the parameter unless it exists.

    Parameters: ``name``, ``name``.
    """
    return sql.SQL(
        "SELECT pg_replication_origin_create(%s) WHERE pg_replication_origin_oid(%s) IS NULL"
    ).format()


def origin_session_setup() -> sql.Composed:
    """Tag this session's transactions with an origin (the capture drops them).

    Parameter: ``name``.
    """
    return sql.SQL("SELECT pg_replication_origin_session_setup(%s)").format()


def origin_xact_setup() -> sql.Composed:
    """Record the source position of the current transaction on its origin.

    Parameters: ``source_lsn`` (text, ``X/Y``), ``source commit time`` (timestamptz).
    """
    return sql.SQL("SELECT pg_replication_origin_xact_setup(%s::pg_lsn, %s::timestamptz)").format()


# ------------------------------------------------------------------------ target rows


PRIVILEGES: Final = ("SELECT", "INSERT", "UPDATE", "DELETE")


def grant_table(table: Table, role: str, privileges: Sequence[str] = PRIVILEGES) -> sql.Composed:
    """Give the sink role ``privileges`` on one mapped table (run by an owner)."""
    unknown = set(privileges) - set(PRIVILEGES)
    if unknown or not privileges:
        raise ValueError(f"privileges must be some of {PRIVILEGES}, got {privileges}")
    ordered = [p for p in PRIVILEGES if p in privileges]
    return sql.SQL("GRANT {} ON {} TO {}").format(
        sql.SQL(", ").join(sql.SQL(p) for p in ordered), table.ident, sql.Identifier(role)
    )


def revoke_table(table: Table, role: str) -> sql.Composed:
    """Take every privilege on a table from the role (before granting the exact set)."""
    return sql.SQL("REVOKE ALL ON {} FROM {}").format(table.ident, sql.Identifier(role))


def grant_sequence(schema: str, name: str, role: str) -> sql.Composed:
    """Let the role draw numbers from a sequence a written column defaults to."""
    return sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
        sql.Identifier(schema, name), sql.Identifier(role)
    )


def default_sequences() -> sql.SQL:
    """Sequences that column defaults of a table draw from (``nextval``).

    Parameter: the table as ``schema.name`` text. Rows: ``schema, sequence``.
    """
    return sql.SQL(
        "SELECT DISTINCT n.nspname, s.relname FROM pg_attrdef AS ad "
        "JOIN pg_depend AS d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid "
        "AND d.refclassid = 'pg_class'::regclass "
        "JOIN pg_class AS s ON s.oid = d.refobjid AND s.relkind = 'S' "
        "JOIN pg_namespace AS n ON n.oid = s.relnamespace "
        "WHERE ad.adrelid = %s::regclass"
    )


ROW_XMIN: Final = "_erpcrm_xmin"
ROW_COMMIT_MS: Final = "_erpcrm_commit_ms"
ROW_NOW_MS: Final = "_erpcrm_now_ms"
"""Names of the row facts :func:`select_current` adds with ``row_facts=True``."""

ROW_LOOKUP: Final = "_erpcrm_lookup"
"""The position (from 1) of the lookup that found a row of :func:`select_current`."""

ROW_CLOCK: Final = "_erpcrm_clock_row"
"""With ``clock``, :func:`select_current` adds each row's clock (:func:`row_clock_select`'s
columns, prefixed ``_erpcrm_clock_``); this one is null when the row has no clock yet."""
CLOCK_COLUMNS: Final = (
    "written",
    "local",
    "horizon_ms",
    "sink_xid",
    "local_at_write_ms",
    "owner_key",
    "owner_gone",
)
"""The clock columns :func:`select_current` adds (``_erpcrm_clock_<name>``): the row
clock's, and the row's owner kept with it (:class:`sinks.state.RowOwner`)."""


def clock_column(name: str) -> str:
    """The name :func:`select_current` gives a clock column (:data:`CLOCK_COLUMNS`)."""
    return f"_erpcrm_clock_{name}"


@dataclass(frozen=True, slots=True)
class Key:
    """A lookup column of :func:`select_current`: ``column = value``, one value a lookup.

    ``live``: a boolean column that must be false (``deleted``) for a row to match, for
    lookups through a partial unique index.
    """

    column: Column
    live: str | None = None


def select_current(
    table: Table,
    columns: Sequence[str],
    keys: Sequence[Key],
    *,
    lock: bool = True,
    row_facts: bool = False,
    clock: tuple[str, str] | None = None,
) -> sql.Composed:
    """Per lookup, the current row its first matching key finds, locked (``FOR UPDATE``).

    One statement for every way of finding a batch's rows. Parameters: the lookups as
    one JSON array of arrays (:func:`records`), each holding one value per key, in
    order (null: that key does not apply), then with ``clock`` the entity. Each row
    found comes back once per lookup that found it, with the lookup's position (from
    1) in :data:`ROW_LOOKUP`; a lookup no key finds has no row. ``lock=False`` reads
    without locking (references to other rows). ``row_facts`` adds, per row, the
    transaction that last wrote it (:data:`ROW_XMIN`, a 32-bit ``xid``), that
    transaction's commit time (:data:`ROW_COMMIT_MS`, whole ms, null when unknown) and
    the database's clock now (:data:`ROW_NOW_MS`).

    The keys are tried in order: the second looks up only the lookups the first found
    nothing for, the third those neither found, and so on (each key a materialized
    step of its own, its misses passed on). A row that a strong key (the id) and a weak
    one (a customer number) both find is read, locked and sent once.

    ``clock``: ``(sync schema, primary key column)``: each row's clock in
    ``row_clock`` (the entity the last parameter), locked like the row, joined in the
    same statement (:data:`ROW_CLOCK`, :func:`clock_column`): one round trip where
    locating the rows and reading their clocks took two.

    Each value is looked up on its own, through the key's index (a nested loop over
    the values, each a subquery the planner cannot merge into a join): the plan does
    not depend on the table's statistics. A lookup of every key's values at once (``OR``
    of ``= ANY``) scanned the whole table whenever the planner priced a few hundred
    index probes above it, as it did after a bulk insert it had no statistics for yet
    and on a table of a few ten thousand rows even with them.
    """
    if not keys:
        raise ValueError("select_current needs at least one key")
    t = sql.Identifier("t")
    k = sql.Identifier("k")
    lookup = sql.Identifier(ROW_LOOKUP)
    selected: list[sql.Composable] = [sql.SQL(", ").join(sql.Identifier("t", n) for n in columns)]
    if row_facts:
        selected.append(
            sql.SQL(
                "t.xmin::text::bigint AS {}, "
                "floor(extract(epoch FROM pg_xact_commit_timestamp(t.xmin)) * 1000)::bigint AS {}, "
                "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS {}"
            ).format(
                sql.Identifier(ROW_XMIN), sql.Identifier(ROW_COMMIT_MS), sql.Identifier(ROW_NOW_MS)
            )
        )
    locking = sql.SQL(" FOR UPDATE" if lock else "")
    values = [sql.Identifier(f"v{index}") for index in range(len(keys))]
    # The lookups, parsed once: one typed value per key, and the lookup's position.
    steps: list[sql.Composable] = [
        sql.SQL(
            "{k} AS MATERIALIZED (SELECT {values}, {e}.{n} AS {lookup} FROM "
            "jsonb_array_elements({records}::jsonb) WITH ORDINALITY AS {e}({r}, {n}))"
        ).format(
            k=k,
            values=sql.SQL(", ").join(
                sql.SQL("({}->>{})::{} AS {}").format(
                    sql.Identifier("e", "r"),
                    sql.SQL(str(int(index))),
                    _type(key.column.pg_type),
                    values[index],
                )
                for index, key in enumerate(keys)
            ),
            e=sql.Identifier("e"),
            n=sql.Identifier("n"),
            r=sql.Identifier("r"),
            lookup=lookup,
            records=_RECORDS,
        )
    ]
    found: list[sql.Identifier] = []
    for index, key in enumerate(keys):
        match = sql.SQL("{} = {}").format(
            sql.Identifier("t", key.column.name), sql.Identifier("l", f"v{index}")
        )
        if key.live is not None:
            match = sql.SQL("{} AND NOT {}").format(match, sql.Identifier("t", key.live))
        # Only the lookups no earlier key found (``OFFSET 0``: filtered before the
        # probes, not after them).
        misses = sql.SQL("").join(
            sql.SQL(" AND NOT EXISTS (SELECT FROM {f} WHERE {f}.{lookup} = {k}.{lookup})").format(
                f=f, lookup=lookup, k=k
            )
            for f in found
        )
        step = sql.Identifier(f"f{index}")
        steps.append(
            sql.SQL(
                "{step} AS MATERIALIZED (SELECT {l}.{lookup}, {y}.* FROM (SELECT * FROM {k} "
                "WHERE {k}.{v} IS NOT NULL{misses} OFFSET 0) AS {l} CROSS JOIN LATERAL "
                "(SELECT {selected} FROM {table} AS {t} WHERE {match} OFFSET 0{locking}) AS {y})"
            ).format(
                step=step,
                k=k,
                l=sql.Identifier("l"),
                lookup=lookup,
                y=sql.Identifier("y"),
                v=values[index],
                misses=misses,
                selected=sql.SQL(", ").join(selected),
                table=table.ident,
                t=t,
                match=match,
                locking=locking,
            )
        )
        found.append(step)
    rows = sql.SQL(" UNION ALL ").join(sql.SQL("SELECT * FROM {}").format(f) for f in found)
    with_steps = sql.SQL("WITH {} ").format(sql.SQL(", ").join(steps))
    if clock is None:
        return sql.SQL("{}SELECT {}.* FROM ({}) AS {}").format(
            with_steps, sql.Identifier("x"), rows, sql.Identifier("x")
        )
    schema, pk = clock
    clock_selected = sql.SQL(", ").join(
        [
            sql.SQL("c.row_id AS {}").format(sql.Identifier(ROW_CLOCK)),
            *(
                sql.SQL("c.{}{} AS {}").format(
                    sql.Identifier(name),
                    sql.SQL("::text" if name in ("written", "local") else ""),
                    sql.Identifier(clock_column(name)),
                )
                for name in CLOCK_COLUMNS
            ),
        ]
    )
    return sql.SQL(
        "{with_steps}SELECT x.*, {clock_selected} FROM ({rows}) AS x LEFT JOIN LATERAL "
        "(SELECT * FROM {row_clock} AS c WHERE c.entity = %s AND c.row_id = {pk}::text"
        "{locking}) AS c ON true"
    ).format(
        with_steps=with_steps,
        clock_selected=clock_selected,
        rows=rows,
        row_clock=sql.Identifier(schema, "row_clock"),
        pk=sql.Identifier("x", pk),
        locking=locking,
    )


def _returning(names: Sequence[str], *, alias: str | None, xmin: bool) -> sql.Composable:
    """``RETURNING`` the named columns, and with ``xmin`` the writing transaction's id.

    The ``xmin`` of a row written by a statement is the transaction's own id (as the
    32-bit ``xid`` of :data:`ROW_XMIN`): the sink learns it without a query of its own.
    """
    parts: list[sql.Composable] = [
        sql.Identifier(alias, n) if alias is not None else sql.Identifier(n) for n in names
    ]
    if xmin:
        column = sql.Identifier(alias, "xmin") if alias is not None else sql.Identifier("xmin")
        parts.append(sql.SQL("{}::text::bigint AS {}").format(column, sql.Identifier(ROW_XMIN)))
    if not parts:
        return sql.SQL("")
    return sql.SQL(" RETURNING {}").format(sql.SQL(", ").join(parts))


def upsert_rows(
    table: Table,
    columns: Sequence[Column],
    conflict: Sequence[str],
    *,
    update: Sequence[str] | None = None,
    conflict_live: str | None = None,
    returning: Sequence[str] = (),
) -> sql.Composed:
    """Multi-row ``INSERT ... ON CONFLICT ... DO UPDATE``, skipping unchanged rows.

    Args:
        table: the target table.
        columns: the inserted columns; the parameter is :func:`records` of their values.
        conflict: the conflict target (a primary key or unique constraint's columns).
        update: the columns updated on conflict (default: every non-conflict column).
        conflict_live: for a partial unique index ``WHERE <conflict> IS NOT NULL AND NOT
            <conflict_live>`` (CRM accounts' live customer numbers): its predicate.
        returning: columns returned (e.g. generated ids, for the crosswalk).
    """
    names = [c.name for c in columns]
    updated = list(update) if update is not None else [n for n in names if n not in conflict]
    target: sql.Composable = sql.SQL("({})").format(_idents(conflict))
    if conflict_live is not None:
        target = sql.SQL("{} WHERE {}").format(
            target,
            sql.SQL(" AND ").join(
                [sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in conflict]
                + [sql.SQL("NOT {}").format(sql.Identifier(conflict_live))]
            ),
        )
    action: sql.Composable
    if updated:
        action = sql.SQL("DO UPDATE SET {} WHERE {}").format(
            sql.SQL(", ").join(
                sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
                for n in updated
            ),
            _distinct("t", "excluded", updated),
        )
    else:
        action = sql.SQL("DO NOTHING")
    query = sql.SQL("INSERT INTO {} AS t ({}) SELECT {} FROM {} ON CONFLICT {} {}").format(
        table.ident,
        _idents(names),
        sql.SQL(", ").join(sql.Identifier("u", n) for n in names),
        _recordset(columns),
        target,
        action,
    )
    if returning:
        query = sql.SQL("{} RETURNING {}").format(query, _idents(returning))
    return query


def update_rows(
    table: Table,
    key: Column,
    columns: Sequence[Column],
    *,
    returning: Sequence[str] = (),
    xmin: bool = False,
    stamp: str | None = None,
) -> sql.Composed:
    """Multi-row ``UPDATE ... FROM`` the rows of :func:`records`, skipping unchanged ones.

    Parameter: :func:`records` of ``key`` and the columns. Missing keys update nothing
    (for update-only targets such as a quote's ERP order status). ``returning``: columns
    of the rows changed; ``xmin``: also the transaction id (:func:`_returning`).
    ``stamp``: a modification-time column set to the transaction time in every row
    changed (what the target's applications, or the demo schemas' ``touch_row()``
    trigger, do to a row they change: the trigger, seeing the stamp set, has nothing to
    do); unchanged rows keep theirs.
    """
    names = [c.name for c in columns]
    assignments = [
        sql.SQL("{} = {}").format(sql.Identifier(n), sql.Identifier("u", n)) for n in names
    ]
    if stamp is not None:
        assignments.append(sql.SQL("{} = now()").format(sql.Identifier(stamp)))
    query = sql.SQL("UPDATE {} AS t SET {} FROM {} WHERE {} = {} AND {}").format(
        table.ident,
        sql.SQL(", ").join(assignments),
        _recordset([key, *columns]),
        sql.Identifier("t", key.name),
        sql.Identifier("u", key.name),
        _distinct("t", "u", names),
    )
    return sql.SQL("{}{}").format(query, _returning(returning, alias="t", xmin=xmin))


def soft_delete_rows(
    table: Table,
    key: Column,
    column: str,
    *,
    value: bool = True,
    returning: bool = False,
    stamp: str | None = None,
) -> sql.Composed:
    """Mark rows deleted (``deleted = true``) or archived (``active = false``).

    Parameter: one list of keys. Rows already marked are left alone; ``returning``: the
    keys of the rows marked now, with the transaction id (:func:`_returning`); ``stamp``:
    as for :func:`update_rows`.
    """
    flag = sql.SQL("{} = {}").format(sql.Identifier(column), sql.SQL("true" if value else "false"))
    if stamp is not None:
        flag = sql.SQL("{}, {} = now()").format(flag, sql.Identifier(stamp))
    query = sql.SQL(
        "UPDATE {} AS t SET {} WHERE {} = ANY({}::{}[]) AND {} IS DISTINCT FROM {}"
    ).format(
        table.ident,
        flag,
        sql.Identifier("t", key.name),
        _ARRAY,
        _type(key.pg_type),
        sql.Identifier("t", column),
        sql.SQL("true" if value else "false"),
    )
    if returning:
        return sql.SQL("{}{}").format(query, _returning([key.name], alias="t", xmin=True))
    return query


def unique_keys() -> sql.SQL:
    """The unique indexes of a table other than its primary key, on columns only.

    Parameters: the schema and the table name. Rows: ``name``, ``columns`` (key columns
    in order), ``nullable`` (whether each may hold NULL); an index on an expression is
    left out (the sink cannot tell its values), a partial one is listed as if whole.
    """
    return sql.SQL(
        "SELECT i.indexrelid::regclass::text AS name,"
        " array_agg(a.attname::text ORDER BY k.n) AS columns,"
        " array_agg(NOT a.attnotnull ORDER BY k.n) AS nullable"
        " FROM pg_index i"
        " CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))"
        " AND i.indisunique AND NOT i.indisprimary AND i.indexprs IS NULL"
        " AND k.n <= i.indnkeyatts"
        " GROUP BY i.indexrelid ORDER BY 1"
    )


def park_unique(table: Table, key: Column, column: str) -> sql.Composed:
    """Set ``column`` to NULL in rows about to take each other's unique values.

    Parameter: one list of keys. The update that follows in the same transaction writes
    their final values (:mod:`sinks.unique`); no modification time is stamped here.
    """
    return sql.SQL("UPDATE {} SET {} = NULL WHERE {} = ANY({}::{}[])").format(
        table.ident, sql.Identifier(column), sql.Identifier(key.name), _ARRAY, _type(key.pg_type)
    )


def delete_rows(table: Table, key: Column) -> sql.Composed:
    """Hard delete by key. Parameter: one list of keys."""
    return sql.SQL("DELETE FROM {} WHERE {} = ANY({}::{}[])").format(
        table.ident, sql.Identifier(key.name), _ARRAY, _type(key.pg_type)
    )


def insert_children(
    table: Table, columns: Sequence[Column], *, returning: Sequence[str] = (), xmin: bool = False
) -> sql.Composed:
    """Plain multi-row insert, optionally ``RETURNING`` columns (generated ids, numbers).

    For new rows, and for order lines after :func:`delete_rows` on the parent key.
    Parameter: :func:`records` of the columns. ``xmin``: also return the transaction id
    (:func:`_returning`).
    """
    names = [c.name for c in columns]
    query = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
        table.ident,
        _idents(names),
        sql.SQL(", ").join(sql.Identifier("u", n) for n in names),
        _recordset(columns),
    )
    return sql.SQL("{}{}").format(query, _returning(returning, alias=None, xmin=xmin))


def suspect_held(schema: str = SYNC_SCHEMA) -> sql.Composed:
    """A held suspect, locked until the operator's decision. Parameter: its id.

    Rows (none when it is not held): ``entity, entity_key, candidate``.
    """
    return sql.SQL(
        "SELECT entity, entity_key, candidate FROM {} WHERE id = %s AND status = 'held' FOR UPDATE"
    ).format(sql.Identifier(schema, "suspects"))


def suspect_candidate_lock() -> sql.SQL:
    """Serialize operators' links to one candidate until the transaction ends.

    Parameters: the suspect's ``entity`` and ``candidate``. A transaction-level advisory
    lock on the two (hashed), so two links to one candidate are decided one after the
    other, the second seeing the first (:func:`suspects_linking`).
    """
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))")


def suspects_linking(schema: str = SYNC_SCHEMA, decisions: str = DECISIONS_SCHEMA) -> sql.Composed:
    """Other suspects an operator linked (or asked to link) to a candidate.

    Read in this sync state and in the ``decisions`` kept by every sync state of the
    database (:func:`create_decisions`). Parameters: ``entity``, ``candidate``, the
    ``entity_key`` left out, each twice. Rows: ``id`` (null for a decision kept only in
    ``decisions``), ``entity_key``, ``status`` (``link`` or ``linked``); this sync
    state's first, lowest id first.
    """
    where = sql.SQL(
        "entity = %s AND candidate = %s AND status IN ('link', 'linked') AND entity_key <> %s"
    )
    return sql.SQL(
        "SELECT id, entity_key, status FROM {} WHERE {} "
        "UNION ALL SELECT NULL, entity_key, status FROM {} WHERE {} "
        "ORDER BY 1 NULLS LAST, 2"
    ).format(
        sql.Identifier(schema, "suspects"), where, sql.Identifier(decisions, "suspects"), where
    )


def holders_of_counterpart(table: Table, pk: Column, link: Column, live: Column) -> sql.Composed:
    """The live rows of ``table`` whose ``link`` names a counterpart, but one.

    Parameters: the counterpart's id (as text), the ``pk`` of the row left out (text,
    or null). ``live``: the column that is true while a row is live (``active``).
    Rows: ``pk`` as text, lowest first.
    """
    return sql.SQL(
        "SELECT {pk}::text FROM {t} WHERE {link} = %s::{lt} AND {live} "
        "AND {pk}::text IS DISTINCT FROM %s ORDER BY {pk}"
    ).format(
        pk=sql.Identifier(pk.name),
        t=table.ident,
        link=sql.Identifier(link.name),
        lt=sql.SQL(link.pg_type),
        live=sql.Identifier(live.name),
    )


def live_rows(table: Table, pk: Column, flag: str, dead: bool) -> sql.Composed:
    """Of some rows of ``table``, those that are live: there, and ``flag`` not ``dead``.

    Parameter: the rows' ``pk`` values (a list of text). Rows: ``pk`` as text.
    """
    return sql.SQL(
        "SELECT {pk}::text FROM {t} WHERE {pk} = ANY(%s::{pt}[]) AND {flag} IS DISTINCT FROM {dead}"
    ).format(
        pk=sql.Identifier(pk.name),
        t=table.ident,
        pt=sql.SQL(pk.pg_type),
        flag=sql.Identifier(flag),
        dead=sql.SQL("true" if dead else "false"),
    )


def counterpart_of_row(table: Table, pk: Column, link: Column, live: Column) -> sql.Composed:
    """The counterpart a live row of ``table`` names in ``link``, but one.

    Parameters: the row's ``pk`` (as text), the counterpart left out (text, or null).
    Rows (none when the row is gone, archived, unlinked or names the one left out):
    ``link`` as text.
    """
    return sql.SQL(
        "SELECT {link}::text FROM {t} WHERE {pk} = %s::{pt} AND {live} "
        "AND {link} IS NOT NULL AND {link}::text IS DISTINCT FROM %s"
    ).format(
        pk=sql.Identifier(pk.name),
        pt=sql.SQL(pk.pg_type),
        t=table.ident,
        link=sql.Identifier(link.name),
        live=sql.Identifier(live.name),
    )
