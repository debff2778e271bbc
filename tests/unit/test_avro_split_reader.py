"""A record read in two steps (leading fields, then the rest) is the record read whole."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.avro_reader import compile_reader, compile_split_reader
from schemas.canonical import METADATA_FIELDS, canonical_schema
from schemas.errors import ConfigError, DecodeError
from schemas.serde import AvroSerde, LocalSchemaRegistry, pack, parse_schema, write_body
from sinks.batch import DECIDING_FIELDS
from tests.unit.test_avro_reader import ENTITIES, OTHER, _canonical


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(case=_canonical(), leading=st.sets(st.sampled_from(METADATA_FIELDS)))
def test_head_then_rest_is_the_whole_record(
    case: tuple[str, dict[str, Any]], leading: set[str]
) -> None:
    entity, record = case
    schema = canonical_schema(entity)
    body = b"\x00\x00\x00\x00\x07" + write_body(parse_schema(schema), record)
    whole = compile_reader(schema)(body[5:])
    split = compile_split_reader(schema, leading)
    head, end = split.head(body, 5)
    assert leading <= set(head)
    assert list(head) == list(whole)[: len(head)]
    head.update(split.rest(body, end))
    assert head == whole
    assert list(head) == list(whole)


_OTHER_RECORDS = st.fixed_dictionaries(
    {
        "e": st.sampled_from(["a", "b", "c"]),
        "f": st.binary(min_size=3, max_size=3),
        "m": st.dictionaries(
            st.text(max_size=4),
            st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4),
        ),
        "d": st.floats(allow_nan=False),
        "g": st.floats(width=32, allow_nan=False),
        "again": st.none() | st.binary(min_size=3, max_size=3),
        "ts": st.integers(-(2**40), 2**40),
        "fd": st.decimals(min_value=-99999, max_value=99999, places=3, allow_nan=False),
    }
)


@given(st.data())
def test_any_record_splits_at_any_field(data: st.DataObject) -> None:
    names = [f["name"] for f in OTHER["fields"]]
    leading = data.draw(st.sets(st.sampled_from(names)))
    record = data.draw(_OTHER_RECORDS)
    body = write_body(parse_schema(OTHER), record)
    split = compile_split_reader(OTHER, leading)
    head, end = split.head(body, 0)
    head.update(split.rest(body, end))
    assert head == compile_reader(OTHER)(body)


def test_a_rest_that_does_not_decode_is_refused() -> None:
    schema = canonical_schema("customer")
    record: dict[str, Any] = {f["name"]: None for f in schema["fields"]}
    record.update(
        event_id="e", source_system="erp", source_lsn=1, source_ts_ms=2, op="upsert", version=3
    )
    body = write_body(parse_schema(schema), record)
    split = compile_split_reader(schema, DECIDING_FIELDS)
    head, end = split.head(body, 0)
    assert head["version"] == 3
    assert split.rest(body, end) == {k: v for k, v in record.items() if k not in head}
    with pytest.raises(DecodeError, match="after the datum"):
        split.rest(body + b"\x00", end)
    with pytest.raises(DecodeError):
        split.rest(body[: end + 1], end)
    with pytest.raises(DecodeError):
        split.head(body[: end - 1], 0)


def test_only_records_with_those_fields_split() -> None:
    with pytest.raises(ConfigError):
        compile_split_reader(canonical_schema("customer"), {"no_such_field"})
    with pytest.raises(ConfigError):
        compile_split_reader({"type": "array", "items": "string"}, set())


@pytest.mark.parametrize("entity", ENTITIES)
def test_lazy_decoding_reads_the_record_decode_reads(entity: str) -> None:
    serde = AvroSerde(LocalSchemaRegistry())
    schema = canonical_schema(entity)
    writer = serde.prepare(f"canonical.{entity}-value", schema)
    record: dict[str, Any] = {f["name"]: f.get("default") for f in schema["fields"]}
    record.update(
        event_id="e", source_system="crm", source_lsn=1, source_ts_ms=2, op="upsert", version=9
    )
    message = serde.encode_with(writer, record)
    whole = serde.decode(message)
    for data in (message, bytearray(message), memoryview(message)):
        head, rest = serde.decode_lazily(data, DECIDING_FIELDS)
        assert set(head) >= DECIDING_FIELDS
        assert "event_id" in head
        assert len(head) < len(whole)
        rest()
        rest()  # once only
        assert head == whole
        assert list(head) == list(whole)


def test_lazy_decoding_refuses_what_decode_refuses() -> None:
    serde = AvroSerde(LocalSchemaRegistry())
    with pytest.raises(DecodeError):
        serde.decode_lazily(b"\x01\x00\x00\x00\x01", DECIDING_FIELDS)
    with pytest.raises(DecodeError):
        serde.decode_lazily(b"\x00\x00", DECIDING_FIELDS)
    with pytest.raises(DecodeError):
        serde.decode_lazily(pack(99, b""), DECIDING_FIELDS)  # no such schema id
    schema = canonical_schema("customer")
    writer = serde.prepare("canonical.customer-value", schema)
    record: dict[str, Any] = {f["name"]: None for f in schema["fields"]}
    record.update(
        event_id="e", source_system="erp", source_lsn=1, source_ts_ms=2, op="upsert", version=3
    )
    head, rest = serde.decode_lazily(serde.encode_with(writer, record) + b"\x00", DECIDING_FIELDS)
    assert head["version"] == 3  # the leading fields decode; the rest does not
    with pytest.raises(DecodeError, match="after the datum"):
        rest()


@given(record=_OTHER_RECORDS)
def test_a_schema_without_the_leading_fields_is_decoded_whole(record: dict[str, Any]) -> None:
    serde = AvroSerde(LocalSchemaRegistry())
    writer = serde.prepare("t-value", OTHER)
    message = serde.encode_with(writer, record)
    head, rest = serde.decode_lazily(message, DECIDING_FIELDS)
    assert head == serde.decode(message)
    rest()
    assert head == serde.decode(message)
