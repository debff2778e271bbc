"""Signals to the running capture: rows of a signal table, read from the WAL like any change.

The signal table is Debezium's signal data collection (``id``, ``type``, ``data``), one per
source database (``public.erpcrm_signal`` on the local stack, created by
``deploy/sql/signal.sql``). It is in the capture's publication, so a committed insert
reaches every capture of the database through its slot, in commit order with the changes
around it; the captures never publish it to Kafka.

One signal type is understood, Debezium's ``execute-snapshot`` with ``type:
incremental``: re-read rows of one table, in chunks interleaved with streaming
(:mod:`cdc.incremental`). Its ``data`` is JSON::

    {"data-collections": ["public.stock_quant"], "type": "incremental",
     "additional-conditions": [{"data-collection": "public.stock_quant",
                                "filter": "location_id = 7",
                                "keys": [{"id": "12"}, {"id": "15"}]}]}

``filter`` is Debezium's: SQL text that the capture puts, as it is, into the ``WHERE``
clause of its chunk queries. ``keys`` is this project's addition: primary-key values
(as text, the way PostgreSQL prints them) of exactly the rows to re-read; the capture
binds them as parameters. Without either, the whole table is re-read.

:func:`request_resnapshot` writes such a row; :func:`parse_signal` (pure) turns a
streamed signal row into a :class:`ResnapshotRequest`, or raises :class:`SignalError`
naming what is wrong (the capture logs it, counts it and goes on).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg import sql

from schemas.errors import SyncError

SIGNAL_SCHEMA: Final = "public"
SIGNAL_TABLE: Final = "erpcrm_signal"
EXECUTE_SNAPSHOT: Final = "execute-snapshot"
INCREMENTAL: Final = "incremental"
DEFAULT_SCHEMA: Final = "public"

__all__ = [
    "EXECUTE_SNAPSHOT",
    "SIGNAL_SCHEMA",
    "SIGNAL_TABLE",
    "ResnapshotRequest",
    "SignalError",
    "key_text",
    "parse_key_option",
    "parse_signal",
    "request_resnapshot",
    "snapshot_signal_data",
    "split_table",
]


class SignalError(SyncError):
    """A signal row (or a request for one) that cannot be carried out; says why."""


@dataclass(frozen=True, slots=True)
class ResnapshotRequest:
    """Re-read rows of one table: all of them, those matching ``where``, or ``keys``.

    Attributes:
        signal_id: the signal row's id (names the request in logs and progress).
        schema, table: the table to re-read.
        where: operator-supplied SQL condition, run read-only under the capture role.
        keys: primary-key values (column -> text form) of the rows to re-read; None:
            every row (matching ``where``).
    """

    signal_id: str
    schema: str
    table: str
    where: str | None = None
    keys: tuple[Mapping[str, str], ...] | None = None

    @property
    def collection(self) -> str:
        """Debezium's data-collection name, ``<schema>.<table>``."""
        return f"{self.schema}.{self.table}"

    def as_json(self) -> dict[str, Any]:
        """JSON-able form (the capture keeps it with its progress); see :meth:`from_json`."""
        return {
            "signal_id": self.signal_id,
            "schema": self.schema,
            "table": self.table,
            "where": self.where,
            "keys": None if self.keys is None else [dict(k) for k in self.keys],
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ResnapshotRequest:
        """Inverse of :meth:`as_json`."""
        keys = value.get("keys")
        return cls(
            signal_id=str(value["signal_id"]),
            schema=str(value["schema"]),
            table=str(value["table"]),
            where=value.get("where"),
            keys=None
            if keys is None
            else tuple({str(c): str(v) for c, v in k.items()} for k in keys),
        )


def split_table(table: str) -> tuple[str, str]:
    """``"stock_quant"`` or ``"public.stock_quant"`` -> ``("public", "stock_quant")``."""
    parts = table.split(".")
    if len(parts) > 2 or not all(parts):
        raise SignalError(f"table {table!r} is not <table> or <schema>.<table>")
    return (DEFAULT_SCHEMA, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def key_text(value: object) -> str:
    """A key value in the text form PostgreSQL reads back (``12``, a UUID, a date...)."""
    if value is None:
        raise SignalError("a primary-key value cannot be null")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, str | int | Decimal | uuid.UUID):
        return str(value)
    raise SignalError(f"cannot use {type(value).__name__} {value!r} as a primary-key value")


def parse_key_option(text: str) -> dict[str, str]:
    """``"id=12"`` or ``"order_id=3,line=2"`` (the CLI's ``--key``) -> column -> value text."""
    key: dict[str, str] = {}
    for part in text.split(","):
        column, sep, value = part.partition("=")
        if not sep or not column.strip():
            raise SignalError(f"key {text!r} is not column=value[,column=value...]")
        key[column.strip()] = value.strip()
    return key


def snapshot_signal_data(
    schema: str,
    table: str,
    *,
    where: str | None = None,
    keys: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``data`` of an ``execute-snapshot`` signal (see the module docstring)."""
    collection = f"{schema}.{table}"
    data: dict[str, Any] = {"data-collections": [collection], "type": INCREMENTAL}
    condition: dict[str, Any] = {"data-collection": collection}
    if where is not None:
        if not where.strip():
            raise SignalError("the filter is empty; leave it out to re-read every row")
        condition["filter"] = where
    if keys is not None:
        if not keys:
            raise SignalError("no keys given; pass None to re-read every row")
        columns = set(keys[0])
        if not columns:
            raise SignalError("a key names no column")
        texts = []
        for key in keys:
            if set(key) != columns:
                raise SignalError(
                    f"keys name different columns: {sorted(key)} vs {sorted(columns)}"
                )
            texts.append({str(c): key_text(v) for c, v in key.items()})
        condition["keys"] = texts
    if len(condition) > 1:
        data["additional-conditions"] = [condition]
    return data


def request_resnapshot(
    conn: psycopg.Connection[Any],
    table: str,
    *,
    keys: Sequence[Mapping[str, Any]] | None = None,
    where: str | None = None,
    signal_table: str = f"{SIGNAL_SCHEMA}.{SIGNAL_TABLE}",
) -> str:
    """Ask the running capture(s) of ``conn``'s database to re-read rows of ``table``.

    Inserts an ``execute-snapshot`` row into the signal table and returns its id. Every
    capture of the database that captures ``table`` re-reads the rows in chunks, in
    primary-key order, interleaved with streaming, and publishes them as ``op = "r"``
    with ``source.snapshot = "incremental"``; a row changed while its chunk is read is
    published by the change instead (the newer image). A capture that is down carries
    the signal out when it resumes (the signal waits in its slot).

    Args:
        conn: a connection to the source database as a role with INSERT on the signal
            table (the capture role on the local stack). In autocommit mode, or outside
            a transaction, the signal is committed on return; inside the caller's open
            transaction it takes effect when the caller commits.
        table: ``<table>`` (schema ``public``) or ``<schema>.<table>``.
        keys: primary-key values (column -> value) of exactly the rows to re-read; each
            names the same columns. Values go to the capture's query as parameters.
        where: an operator-supplied SQL condition that selects the rows (``state =
            'draft'``). It is SQL text, not a value: the capture places it as it is into
            its chunk queries, which run in READ ONLY transactions under the capture
            role, so it can read what that role may read and change nothing. Never build
            it from untrusted input.
        signal_table: ``<schema>.<table>`` of the signal table.

    Returns:
        The signal id (a UUID), which the capture's log lines and progress name.

    Raises:
        SignalError: the table does not exist, or its name, a key or the filter is
            unusable.
        psycopg.Error: the insert failed (no signal table, no privilege).
    """
    schema, name = split_table(table)
    data = snapshot_signal_data(schema, name, where=where, keys=keys)
    signal_schema, signal_name = split_table(signal_table)
    found = conn.execute(
        "select to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, name)
    ).fetchone()
    if found is None or found[0] is None:
        raise SignalError(f"table {schema}.{name} does not exist")
    signal_id = str(uuid.uuid4())
    statement = sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, %s, %s)").format(
        sql.Identifier(signal_schema, signal_name)
    )
    with conn.transaction():
        conn.execute(statement, (signal_id, EXECUTE_SNAPSHOT, json.dumps(data)))
    return signal_id


def parse_signal(signal_id: str, signal_type: str, data: str | None) -> list[ResnapshotRequest]:
    """The re-snapshots a signal row asks for, one per data collection (pure).

    Raises:
        SignalError: an unknown signal type, a snapshot type other than
            ``incremental``, or malformed ``data`` (the message says which).
    """
    if signal_type != EXECUTE_SNAPSHOT:
        raise SignalError(f"signal {signal_id}: unsupported signal type {signal_type!r}")
    try:
        parsed = json.loads(data or "")
    except ValueError as exc:
        raise SignalError(f"signal {signal_id}: data is not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SignalError(f"signal {signal_id}: data is not a JSON object")
    kind = parsed.get("type", INCREMENTAL)
    if str(kind).lower() != INCREMENTAL:
        raise SignalError(f"signal {signal_id}: snapshot type {kind!r} is not incremental")
    collections = parsed.get("data-collections")
    if not isinstance(collections, list) or not collections:
        raise SignalError(f"signal {signal_id}: data-collections must be a non-empty list")
    conditions = _conditions(signal_id, parsed.get("additional-conditions") or [])
    requests = []
    for collection in collections:
        if not isinstance(collection, str):
            raise SignalError(f"signal {signal_id}: data collection {collection!r} is no name")
        schema, table = split_table(collection)
        condition = conditions.get(f"{schema}.{table}", {})
        requests.append(
            ResnapshotRequest(
                signal_id=signal_id,
                schema=schema,
                table=table,
                where=condition.get("filter"),
                keys=condition.get("keys"),
            )
        )
    return requests


def _conditions(signal_id: str, entries: object) -> dict[str, dict[str, Any]]:
    if not isinstance(entries, list):
        raise SignalError(f"signal {signal_id}: additional-conditions must be a list")
    found: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("data-collection"), str):
            raise SignalError(f"signal {signal_id}: an additional condition names no collection")
        schema, table = split_table(entry["data-collection"])
        condition: dict[str, Any] = {}
        where = entry.get("filter")
        if where is not None:
            if not isinstance(where, str) or not where.strip():
                raise SignalError(f"signal {signal_id}: filter must be non-empty SQL text")
            condition["filter"] = where
        keys = entry.get("keys")
        if keys is not None:
            condition["keys"] = _keys(signal_id, keys)
        found[f"{schema}.{table}"] = condition
    return found


def _keys(signal_id: str, keys: object) -> tuple[dict[str, str], ...]:
    if not isinstance(keys, list) or not keys:
        raise SignalError(f"signal {signal_id}: keys must be a non-empty list")
    parsed = []
    for key in keys:
        if not isinstance(key, dict) or not key:
            raise SignalError(f"signal {signal_id}: key {key!r} is not a column -> value object")
        if any(not isinstance(v, str | int) or isinstance(v, bool) for v in key.values()):
            raise SignalError(f"signal {signal_id}: key {key!r} holds a value that is not text")
        parsed.append({str(c): str(v) for c, v in key.items()})
    if any(set(k) != set(parsed[0]) for k in parsed):
        raise SignalError(f"signal {signal_id}: keys name different columns")
    return tuple(parsed)
