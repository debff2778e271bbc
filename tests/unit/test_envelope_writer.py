"""The compiled envelope writer writes the very bytes of the generic path.

For every table of the demo ERP and CRM (columns read from ``deploy/sql``), random rows in
PostgreSQL's text output (NULLs, unchanged TOASTed values and unparsable text included)
are written both ways: ``tuple_to_dict`` + ``envelope_record``/``key_record`` +
``AvroSerde.encode_with``, and :class:`~cdc.envelope_writer.EnvelopeWriter`. Where the
generic path fails, the compiled one must refuse (``Uncompiled``); elsewhere the key and
value bytes must be equal.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.catalog import column_shape
from cdc.decoding import NULL, UNCHANGED_TOAST, Column, Relation, ReplicaIdentity, tuple_to_dict
from cdc.envelope import (
    SourceInfo,
    TableShape,
    envelope_record,
    key_record,
    key_schema,
    source_sequence,
    transaction_begin_record,
    transaction_end_record,
    transaction_key_record,
    transaction_key_schema,
    transaction_value_schema,
    value_schema,
)
from cdc.envelope_writer import EnvelopeWriter, TransactionWriter, Uncompiled
from schemas.errors import SyncError
from schemas.serde import AvroSerde, ParsedSchema

EXAMPLES = int(os.environ.get("ERPCRM_PROPERTY_EXAMPLES", "150"))
SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql"

_OIDS = {"bigint": 20, "integer": 23, "boolean": 16, "date": 1082, "numeric": 1700}
_OIDS |= {"text": 25, "timestamptz": 1184, "uuid": 2950}
_TYPNAMES = {"bigint": "int8", "integer": "int4", "boolean": "bool"}
_COLUMN = re.compile(r"^\s+([a-z_][a-z0-9_]*)\s+([a-z]+(?:\(\d+,\s*\d+\))?)(.*)$")


class _Registry:
    def register(self, subject: str, schema: Any) -> int:
        return 41 if subject.endswith("-key") else 42

    def get_schema(self, schema_id: int) -> ParsedSchema:
        raise KeyError(schema_id)


def _demo_tables() -> list[tuple[str, str, tuple[tuple[str, str, int, bool, bool], ...]]]:
    """(system, table, columns as (name, type, typmod, not null, key)) from the demo SQL."""
    tables = []
    for system in ("erp", "crm"):
        text = (SQL / f"{system}.sql").read_text()
        for match in re.finditer(r"CREATE TABLE public\.(\w+) \((.*?)\n\);", text, re.S):
            columns = []
            for line in match.group(2).splitlines():
                found = _COLUMN.match(line)
                if not found or found.group(1) in ("constraint", "unique", "primary"):
                    continue
                name, sql_type, rest = found.groups()
                base = sql_type.split("(")[0]
                if base not in _OIDS:
                    raise AssertionError(f"{system}.{match.group(1)}.{name}: add type {sql_type}")
                typmod = -1
                if "(" in sql_type:
                    p, s = (int(x) for x in re.findall(r"\d+", sql_type))
                    typmod = ((p << 16) | s) + 4
                key = "PRIMARY KEY" in rest
                columns.append((name, base, typmod, key or "NOT NULL" in rest, key))
            tables.append((system, match.group(1), tuple(columns)))
    return tables


TABLES = _demo_tables()


def _value(base: str, typmod: int, *, clean: bool) -> st.SearchStrategy[bytes]:
    if base in ("bigint", "integer"):
        bits = 63 if base == "bigint" else 31
        text = st.integers(-(2**bits), 2**bits - 1).map(str)
    elif base == "boolean":
        text = st.sampled_from(["t", "f"])
    elif base == "text":
        text = st.text(
            st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=80
        )
    elif base == "uuid":
        text = st.uuids().map(str)
    elif base == "date":
        text = st.dates().map(lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}")
    elif base == "numeric":
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        limit = 10 ** (precision - scale) - 1
        text = st.one_of(
            st.decimals(-limit, limit, places=scale, allow_nan=False).map(
                lambda d: f"{d:.{scale}f}"
            ),
            st.just("NaN"),
        )
    else:  # timestamptz, as the walsender prints it
        zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])
        text = st.datetimes(timezones=zones).map(lambda t: _pg_timestamptz(t))
    if clean or base == "text":
        return text.filter(lambda v: v != "NaN").map(str.encode)
    # Text the type cannot have: the compiled writer must refuse what the generic one does.
    return st.one_of(text.map(str.encode), st.just(b"not a value"))


def _pg_timestamptz(t: Any) -> str:
    offset = t.utcoffset()
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    zone = f"{sign}{hours:02d}" + (f":{rest:02d}" if rest else "")
    fraction = f".{t.microsecond:06d}".rstrip("0") if t.microsecond else ""
    stamp = f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return stamp + fraction + zone


def _tuple(
    columns: tuple[tuple[str, str, int, bool, bool], ...], *, clean: bool
) -> st.SearchStrategy[Any]:
    """A row; a clean one has only values the type can have, and NULLs where allowed."""
    if clean:
        return st.tuples(
            *(
                _value(base, typmod, clean=True)
                if notnull
                else st.one_of(_value(base, typmod, clean=True), st.just(NULL))
                for _name, base, typmod, notnull, _key in columns
            )
        )
    return st.tuples(
        *(
            st.one_of(_value(base, typmod, clean=False), st.sampled_from([NULL, UNCHANGED_TOAST]))
            for _name, base, typmod, _notnull, _key in columns
        )
    )


@st.composite
def _cases(draw: st.DrawFn) -> tuple[Any, ...]:
    system, table, columns = draw(st.sampled_from(TABLES))
    op = draw(st.sampled_from(["c", "u", "d"]))
    clean = draw(st.integers(0, 3)) > 0
    new = draw(_tuple(columns, clean=clean))
    old = draw(_tuple(columns, clean=clean))
    if op == "u" and draw(st.booleans()):
        old = None  # an update without the old row (REPLICA IDENTITY DEFAULT)
    widened = draw(st.booleans())  # a registered schema where every column is nullable
    return system, table, columns, op, old, new, widened, clean


def _writers(
    system: str, table: str, columns: tuple[Any, ...], widened: bool
) -> tuple[TableShape, Relation, Any, Any, dict[str, Any], EnvelopeWriter]:
    shape = TableShape(
        system,
        "public",
        table,
        tuple(
            column_shape(name, _TYPNAMES.get(base, base), typmod, notnull, key)
            for name, base, typmod, notnull, key in columns
        ),
    )
    oids = tuple(_OIDS[base] for _n, base, *_ in columns)
    relation = Relation(
        16_384,
        "public",
        table,
        ReplicaIdentity.DEFAULT,
        tuple(Column(int(c[4]), c[0], oid, c[2]) for c, oid in zip(columns, oids, strict=True)),
    )
    previous = None
    if widened:
        loose = TableShape(system, "public", table, tuple(_loosen(c) for c in shape.columns))
        previous = value_schema(loose)
    schema = value_schema(shape, previous=previous)
    serde = AvroSerde(_Registry())
    key = serde.prepare(f"{table}-key", key_schema(shape))
    value = serde.prepare(f"{table}-value", schema)
    return shape, relation, key, value, schema, EnvelopeWriter(shape, oids, key, value, schema)


def _loosen(column: Any) -> Any:
    return type(column)(
        column.name,
        column.pg_type,
        True,
        column.is_key,
        column.numeric_scale,
        column.numeric_precision,
    )


@settings(max_examples=EXAMPLES, deadline=None)
@given(_cases())
def test_compiled_writer_matches_the_generic_path(case: tuple[Any, ...]) -> None:
    system, table, columns, op, old, new, widened, clean = case
    shape, relation, key_writer, value_writer, _schema, writer = _writers(
        system, table, columns, widened
    )
    before = None if op == "c" else old
    after = None if op == "d" else new
    info = SourceInfo(
        version="erpcrm-test",
        name=system,
        ts_ms=1_765_000_000_123,
        db=system,
        schema="public",
        table=table,
        tx_id=777,
        lsn=0,
    )
    lsn, transaction, ts_ms = 123_456_789, "777:123456999", 1_765_000_000_456
    sequence = source_sequence(123_000, lsn)
    row = after if after is not None else before
    generic_value: bytes | None
    generic_key: bytes | None
    compiled_value: bytes | None
    compiled_key: bytes | None
    try:
        source = dict(info.as_record(), lsn=lsn, sequence=sequence)
        before_row = None if before is None else tuple_to_dict(relation, before)
        after_row = None if after is None else tuple_to_dict(relation, after)
        generic_value = AvroSerde.encode_with(
            value_writer,
            envelope_record(
                shape,
                op=op,
                before=before_row,
                after=after_row,
                source=source,
                ts_ms=ts_ms,
                transaction={"id": transaction, "total_order": 3, "data_collection_order": 2},
                unchanged_toast=UNCHANGED_TOAST,
            ),
        )
        generic_key = AvroSerde.encode_with(
            key_writer,
            key_record(
                shape,
                after_row if after_row is not None else before_row or {},
                unchanged_toast=UNCHANGED_TOAST,
            ),
        )
    except SyncError:
        generic_value = generic_key = None
    try:
        compiled_value = writer.value(
            op,
            before,
            after,
            writer.source_template(info.as_record()),
            sequence,
            lsn,
            transaction,
            3,
            2,
            ts_ms,
        )
        assert row is not None
        compiled_key = writer.key(row)
    except Uncompiled:
        compiled_value = compiled_key = None
    if compiled_value is None:
        # Refused: the worker takes the generic path, whatever it makes of it. A clean
        # row is refused only when the generic path fails too (a time that does not fit).
        assert not clean or generic_value is None, "a clean row took the generic path"
        return
    assert generic_value is not None, "the compiled writer accepted what the generic path refuses"
    assert compiled_value == generic_value
    assert compiled_key == generic_key


def test_every_demo_table_is_covered() -> None:
    names = {(system, table) for system, table, _ in TABLES}
    assert ("erp", "res_partner") in names
    assert ("crm", "accounts") in names
    assert len(names) >= 12


@pytest.mark.parametrize(("system", "table", "columns"), TABLES[:3])
def test_a_plain_row_takes_the_compiled_path(
    system: str, table: str, columns: tuple[Any, ...]
) -> None:
    *_, writer = _writers(system, table, columns, widened=False)
    samples = {
        "bigint": b"42",
        "integer": b"7",
        "boolean": b"t",
        "text": "Grüße".encode(),
        "uuid": b"5b0c3c0e-8d8e-4d5e-9d7c-4f0f8f7f6e01",
        "date": b"2026-12-06",
        "numeric": str(Decimal(1).scaleb(0)).encode(),
        "timestamptz": b"2026-12-06 09:00:00.5+00",
    }
    row = tuple(samples[base] for _n, base, *_ in columns)
    assert writer.key(row).startswith(b"\x00\x00\x00\x00\x29")


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=40),
    st.integers(0, 2**62),
    st.dictionaries(
        st.text(st.characters(blacklist_categories=["Cs"]), max_size=30),
        st.integers(0, 2**40),
        max_size=5,
    ),
)
def test_transaction_records_match_the_generic_path(
    transaction: str, ts_ms: int, counts: dict[str, int]
) -> None:
    serde = AvroSerde(_Registry())
    key = serde.prepare("erp.transaction-key", transaction_key_schema())
    value = serde.prepare("erp.transaction-value", transaction_value_schema())
    writer = TransactionWriter(key, value)
    assert writer.key(transaction) == AvroSerde.encode_with(
        key, transaction_key_record(transaction)
    )
    assert writer.begin(transaction, ts_ms) == AvroSerde.encode_with(
        value, transaction_begin_record(transaction, ts_ms=ts_ms)
    )
    assert writer.end(transaction, ts_ms, counts) == AvroSerde.encode_with(
        value, transaction_end_record(transaction, ts_ms=ts_ms, event_counts=counts)
    )
