"""The compiled Avro writer produces what fastavro produces, for every schema we use."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.envelope import (
    key_record,
    key_schema,
    value_schema,
)
from schemas.avro_writer import compile_writer
from schemas.canonical import canonical_schema
from schemas.errors import ValidationError
from tests.unit.test_envelope import sample_envelope, shapes_and_rows


def _fastavro(schema: Any, datum: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return out.getvalue()


def _decode(schema: Any, data: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(data), fastavro.parse_schema(schema))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=shapes_and_rows(),
    op=st.sampled_from(["c", "u", "r"]),
    lsn=st.none() | st.integers(0, 2**63 - 1),
    with_tx=st.booleans(),
)
def test_envelopes_encode_like_fastavro(case: Any, op: Any, lsn: int | None, with_tx: bool) -> None:
    shape, row, _expected = case
    record = sample_envelope(shape, row, op, lsn, with_tx)
    schema = value_schema(shape)
    compiled = compile_writer(schema)(record)
    assert _decode(schema, compiled) == _decode(schema, _fastavro(schema, record))
    key = key_record(shape, row)
    assert compile_writer(key_schema(shape))(key) == _fastavro(key_schema(shape), key)


@pytest.mark.parametrize(
    "entity", ["customer", "contact", "product", "inventory", "sales_order", "invoice"]
)
def test_canonical_schemas_compile(entity: str) -> None:
    compile_writer(canonical_schema(entity))


@pytest.mark.parametrize(
    ("schema", "datum"),
    [
        ("int", 2**31),
        ("long", 2**63),
        ("string", 5),
        ({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}, {}),
        (["null", "string"], 3),
        ({"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 1}, 1.5),
    ],
)
def test_misfits_are_validation_errors(schema: Any, datum: Any) -> None:
    with pytest.raises(ValidationError):
        compile_writer(schema)(datum)


@given(st.integers(-(2**63), 2**63 - 1))
def test_longs_match_fastavro(value: int) -> None:
    assert compile_writer("long")(value) == _fastavro("long", value)
