"""The compiled Avro reader gives what fastavro gives, for every canonical schema."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.envelope import value_schema
from schemas.avro_reader import compile_reader
from schemas.canonical import canonical_schema
from schemas.errors import ConfigError, DecodeError
from schemas.serde import parse_schema, write_body
from tests.unit.test_envelope import sample_envelope, shapes_and_rows

ENTITIES = ["customer", "contact", "product", "inventory", "sales_order", "invoice"]


def _datum(schema: Any, named: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A strategy of data fitting ``schema`` (the JSON form)."""
    if isinstance(schema, list):
        return st.one_of(*(_datum(branch, named) for branch in schema))
    if isinstance(schema, str):
        if schema in named:
            return named[schema]
        return _primitive(schema)
    kind, logical = schema["type"], schema.get("logicalType")
    if kind == "record":
        fields = {f["name"]: _datum(f["type"], named) for f in schema["fields"]}
        strategy = st.fixed_dictionaries(fields)
        named[schema["name"]] = strategy
        return strategy
    if kind == "array":
        return st.lists(_datum(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=5), _datum(schema["values"], named), max_size=3)
    if logical == "decimal":
        digits = schema["precision"] - schema.get("scale", 0)
        limit = 10**digits - 1
        return st.decimals(
            min_value=-limit, max_value=limit, places=schema.get("scale", 0), allow_nan=False
        )
    if logical == "date":
        return st.dates()
    if logical in ("timestamp-micros", "timestamp-millis"):
        return st.datetimes(
            min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)
        ).map(lambda d: d.replace(tzinfo=dt.UTC, microsecond=d.microsecond // 1000 * 1000))
    return _primitive(kind)


def _primitive(kind: str) -> st.SearchStrategy[Any]:
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "bytes": st.binary(max_size=8),
        "string": st.text(max_size=8),
    }[kind]


def _fastavro(schema: Any, body: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(body), parse_schema(schema), None)


@st.composite
def _canonical(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    entity = draw(st.sampled_from(ENTITIES))
    return entity, draw(_datum(canonical_schema(entity), {}))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(case=_canonical())
def test_canonical_records_read_like_fastavro(case: tuple[str, dict[str, Any]]) -> None:
    entity, record = case
    schema = canonical_schema(entity)
    body = write_body(parse_schema(schema), record)
    expected = _fastavro(schema, body)
    got = compile_reader(schema)(body)
    assert got == expected
    assert list(got) == list(expected)
    # The parsed form (what the registry client hands out) compiles to the same reader.
    assert compile_reader(parse_schema(schema))(body) == expected


OTHER: Any = {
    "type": "record",
    "name": "R",
    "namespace": "t",
    "fields": [
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b", "c"]}},
        {"name": "f", "type": {"type": "fixed", "name": "F", "size": 3}},
        {"name": "m", "type": {"type": "map", "values": ["null", "long", "string"]}},
        {"name": "d", "type": "double"},
        {"name": "g", "type": "float"},
        {"name": "again", "type": ["null", "F"]},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "fd",
            "type": {
                "type": "fixed",
                "name": "D",
                "size": 4,
                "logicalType": "decimal",
                "precision": 8,
                "scale": 3,
            },
        },
    ],
}


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    e=st.sampled_from(["a", "b", "c"]),
    f=st.binary(min_size=3, max_size=3),
    m=st.dictionaries(
        st.text(max_size=4), st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4)
    ),
    d=st.floats(allow_nan=False),
    g=st.floats(width=32, allow_nan=False),
    again=st.none() | st.binary(min_size=3, max_size=3),
    ms=st.integers(-(2**40), 2**40),
    fd=st.decimals(min_value=-99999, max_value=99999, places=3, allow_nan=False),
)
def test_other_types_read_like_fastavro(
    e: str, f: bytes, m: dict[str, Any], d: float, g: float, again: Any, ms: int, fd: Decimal
) -> None:
    record = {"e": e, "f": f, "m": m, "d": d, "g": g, "again": again, "ts": ms, "fd": fd}
    body = write_body(parse_schema(OTHER), record)
    assert compile_reader(OTHER)(body) == _fastavro(OTHER, body)


def test_bytes_that_are_not_a_datum_are_refused() -> None:
    schema = canonical_schema("customer")
    body = write_body(
        parse_schema(schema), _fastavro(schema, write_body(parse_schema(schema), _minimal()))
    )
    read = compile_reader(schema)
    assert read(body) == _minimal()
    with pytest.raises(DecodeError, match="after the datum"):
        read(body + b"\x00")
    for cut in range(len(body)):
        with pytest.raises(DecodeError):
            read(body[:cut])
    with pytest.raises(DecodeError):
        compile_reader(["null", "string"])(b"\x04")  # union index 2 of 2 branches
    with pytest.raises(DecodeError):
        compile_reader("string")(b"\x04\xff\xfe")  # not UTF-8


def test_logical_types_it_does_not_know_are_left_to_fastavro() -> None:
    with pytest.raises(ConfigError):
        compile_reader({"type": "string", "logicalType": "uuid"})
    with pytest.raises(ConfigError):
        compile_reader({"type": "long", "logicalType": "time-micros"})


def _minimal() -> dict[str, Any]:
    schema = canonical_schema("customer")
    record: dict[str, Any] = {}
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, list):
            record[f["name"]] = None if "null" in t else ""
        elif t == "string":
            record[f["name"]] = "x"
        elif t == "long":
            record[f["name"]] = 7
        elif isinstance(t, dict) and t.get("type") == "array":
            record[f["name"]] = []
        else:
            record[f["name"]] = None
    return record


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=shapes_and_rows(),
    op=st.sampled_from(["c", "u", "r", "d"]),
    lsn=st.none() | st.integers(0, 2**63 - 1),
    with_tx=st.booleans(),
)
def test_raw_change_envelopes_read_like_fastavro(
    case: Any, op: Any, lsn: int | None, with_tx: bool
) -> None:
    """The captures' Debezium envelopes, every column shape, both row images."""
    shape, row, _expected = case
    record = sample_envelope(shape, row, op, lsn, with_tx)
    schema = value_schema(shape)
    body = write_body(parse_schema(schema), record)
    got = compile_reader(schema)(body)
    assert got == _fastavro(schema, body)
    assert list(got) == list(_fastavro(schema, body))
