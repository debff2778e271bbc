"""Debezium-compatible envelope schemas and records (cdc/envelope.py)."""

from __future__ import annotations

import calendar
import io
import json
import struct
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from fastavro.read import SchemaResolutionError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.envelope import (
    UNAVAILABLE_VALUE_PLACEHOLDER,
    UNCHANGED_TOAST,
    ColumnShape,
    SourceInfo,
    TableShape,
    TransactionBlock,
    adjust_name,
    data_collection,
    envelope_record,
    key_record,
    key_schema,
    source_sequence,
    transaction_begin_record,
    transaction_end_record,
    transaction_id,
    transaction_key_record,
    transaction_key_schema,
    transaction_value_schema,
    value_schema,
)
from schemas.errors import ConfigError, ValidationError

# ------------------------------------------------------------------------- helpers


def roundtrip(schema: dict[str, Any], record: Any, reader: dict[str, Any] | None = None) -> Any:
    writer = fastavro.parse_schema(schema)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, writer, record)
    out.seek(0)
    parsed_reader = None if reader is None else fastavro.parse_schema(reader)
    result = fastavro.schemaless_reader(out, writer, parsed_reader)
    assert out.tell() == len(out.getvalue())
    return result


def field(schema: Mapping[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def value_fields(envelope: Mapping[str, Any]) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = field(envelope, "before")["type"][1]["fields"]
    return fields


PARTNER = TableShape(
    "erp",
    "public",
    "res_partner",
    (
        ColumnShape("id", "int4", nullable=False, is_key=True),
        ColumnShape("name", "varchar", nullable=False),
        ColumnShape("ref", "text"),
        ColumnShape("credit_limit", "numeric", numeric_precision=12, numeric_scale=2),
        ColumnShape("is_company", "bool", nullable=False),
        ColumnShape("write_date", "timestamptz"),
    ),
)

SOURCE = SourceInfo(
    version="0.1.0",
    name="erp",
    ts_ms=1_700_000_000_000,
    db="erp",
    schema="public",
    table="res_partner",
    tx_id=771,
    lsn=24_023_128,
    sequence=source_sequence(24_023_119, 24_023_128),
)


def partner_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7,
        "name": "Acme",
        "ref": "C0007",
        "credit_limit": Decimal("1500.00"),
        "is_company": True,
        "write_date": datetime(2024, 5, 1, 12, 30, 0, 250000, tzinfo=UTC),
    }
    row.update(changes)
    return row


# ------------------------------------------------------------------- schema shapes


def test_value_schema_is_named_like_debezium() -> None:
    schema = value_schema(PARTNER)
    assert schema["type"] == "record"
    assert (schema["name"], schema["namespace"]) == ("Envelope", "erp.public.res_partner")
    assert schema["connect.name"] == "erp.public.res_partner.Envelope"
    assert schema["connect.version"] == 2
    assert [f["name"] for f in schema["fields"]] == [
        "before",
        "after",
        "source",
        "transaction",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
    ]
    before = field(schema, "before")
    assert before["default"] is None
    assert before["type"][0] == "null"
    value = before["type"][1]
    assert value["name"] == "Value"
    assert value["connect.name"] == "erp.public.res_partner.Value"
    assert field(schema, "after") == {"name": "after", "type": ["null", "Value"], "default": None}
    assert field(schema, "op") == {"name": "op", "type": "string"}
    assert field(schema, "ts_ms") == {"name": "ts_ms", "type": ["null", "long"], "default": None}


def test_source_schema_matches_debezium_postgres_source() -> None:
    source = field(value_schema(PARTNER), "source")["type"]
    assert (source["name"], source["namespace"]) == ("Source", "io.debezium.connector.postgresql")
    assert source["connect.name"] == "io.debezium.connector.postgresql.Source"
    types = {f["name"]: f["type"] for f in source["fields"]}
    assert list(types) == [
        "version",
        "connector",
        "name",
        "ts_ms",
        "snapshot",
        "db",
        "sequence",
        "ts_us",
        "ts_ns",
        "schema",
        "table",
        "txId",
        "lsn",
        "xmin",
        "origin",
    ]
    for required, avro in [
        ("version", "string"),
        ("connector", "string"),
        ("name", "string"),
        ("ts_ms", "long"),
        ("db", "string"),
        ("schema", "string"),
        ("table", "string"),
    ]:
        assert types[required] == avro
    for optional, avro in [
        ("sequence", "string"),
        ("ts_us", "long"),
        ("ts_ns", "long"),
        ("txId", "long"),
        ("lsn", "long"),
        ("xmin", "long"),
        ("origin", "string"),
    ]:
        assert types[optional] == ["null", avro]
        assert field(source, optional)["default"] is None
    snapshot = field(source, "snapshot")
    assert snapshot["default"] == "false"
    assert snapshot["type"][1] == "null"
    assert snapshot["type"][0]["type"] == "string"
    assert snapshot["type"][0]["connect.name"] == "io.debezium.data.Enum"
    assert snapshot["type"][0]["connect.parameters"]["allowed"] == "true,last,false,incremental"


def test_transaction_block_schema_matches_debezium() -> None:
    transaction = field(value_schema(PARTNER), "transaction")
    assert transaction["default"] is None
    block = transaction["type"][1]
    assert (block["name"], block["namespace"], block["connect.name"]) == (
        "block",
        "event",
        "event.block",
    )
    assert [(f["name"], f["type"]) for f in block["fields"]] == [
        ("id", "string"),
        ("total_order", "long"),
        ("data_collection_order", "long"),
    ]


def test_key_schema() -> None:
    schema = key_schema(PARTNER)
    assert schema == {
        "type": "record",
        "name": "Key",
        "namespace": "erp.public.res_partner",
        "fields": [{"name": "id", "type": "int"}],
        "connect.name": "erp.public.res_partner.Key",
    }
    fastavro.parse_schema(schema)


def test_key_schema_keeps_table_order_of_composite_keys() -> None:
    shape = TableShape(
        "crm",
        "public",
        "aos_products_quotes",
        (
            ColumnShape("b", "text", nullable=False, is_key=True),
            ColumnShape("x", "text"),
            ColumnShape("a", "uuid", nullable=False, is_key=True),
        ),
    )
    assert [f["name"] for f in key_schema(shape)["fields"]] == ["b", "a"]


def test_key_schema_without_key_columns_is_a_config_error() -> None:
    shape = TableShape("erp", "public", "log", (ColumnShape("line", "text"),))
    assert shape.key_columns == ()
    with pytest.raises(ConfigError):
        key_schema(shape)
    with pytest.raises(ConfigError):
        key_record(shape, {"line": "x"})


def test_schemas_are_deterministic() -> None:
    again = TableShape(PARTNER.server, PARTNER.schema, PARTNER.table, tuple(PARTNER.columns))
    assert json.dumps(value_schema(PARTNER)) == json.dumps(value_schema(again))
    assert json.dumps(key_schema(PARTNER)) == json.dumps(key_schema(again))
    # Handing out a schema never lets a caller change the next one.
    first = value_schema(PARTNER)
    value_fields(first)[0]["type"] = "string"
    assert value_fields(value_schema(PARTNER))[0]["type"] == "int"


def test_all_schemas_parse() -> None:
    for schema in (
        value_schema(PARTNER),
        key_schema(PARTNER),
        transaction_key_schema(),
        transaction_value_schema(),
    ):
        fastavro.parse_schema(schema)


DECIMAL_10_2 = {
    "type": "bytes",
    "scale": 2,
    "precision": 10,
    "connect.version": 1,
    "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
    "connect.name": "org.apache.kafka.connect.data.Decimal",
    "logicalType": "decimal",
}


def semantic(avro: str, name: str) -> dict[str, Any]:
    return {"type": avro, "connect.version": 1, "connect.name": name}


@pytest.mark.parametrize(
    ("pg_type", "precision", "scale", "expected"),
    [
        ("bool", None, None, "boolean"),
        ("boolean", None, None, "boolean"),
        ("int2", None, None, {"type": "int", "connect.type": "int16"}),
        ("int4", None, None, "int"),
        ("integer", None, None, "int"),
        ("int8", None, None, "long"),
        ("bigint", None, None, "long"),
        ("oid", None, None, "long"),
        ("float4", None, None, "float"),
        ("float8", None, None, "double"),
        ("double precision", None, None, "double"),
        ("numeric", 10, 2, DECIMAL_10_2),
        ("numeric(10,2)", 10, 2, DECIMAL_10_2),
        ("numeric", None, None, "string"),
        ("numeric", 3, 5, "string"),  # PostgreSQL 15 allows scale > precision; Avro does not
        ("text", None, None, "string"),
        ("varchar", None, None, "string"),
        ("character varying(40)", None, None, "string"),
        ("bpchar", None, None, "string"),
        ("citext", None, None, "string"),
        ("uuid", None, None, semantic("string", "io.debezium.data.Uuid")),
        ("json", None, None, semantic("string", "io.debezium.data.Json")),
        ("jsonb", None, None, semantic("string", "io.debezium.data.Json")),
        ("xml", None, None, semantic("string", "io.debezium.data.Xml")),
        ("bytea", None, None, "bytes"),
        ("date", None, None, semantic("int", "io.debezium.time.Date")),
        ("timestamp", None, None, semantic("long", "io.debezium.time.MicroTimestamp")),
        ("timestamptz", None, None, semantic("string", "io.debezium.time.ZonedTimestamp")),
        (
            "timestamp with time zone",
            None,
            None,
            semantic("string", "io.debezium.time.ZonedTimestamp"),
        ),
        ("time", None, None, semantic("long", "io.debezium.time.MicroTime")),
        ("timetz", None, None, semantic("string", "io.debezium.time.ZonedTime")),
        ("interval", None, None, "string"),
        ("money", None, None, "string"),
        ("mood", None, None, "string"),
        ("_text", None, None, {"type": "array", "items": ["null", "string"]}),
        ("text[]", None, None, {"type": "array", "items": ["null", "string"]}),
        ("_int4", None, None, {"type": "array", "items": ["null", "int"]}),
        (
            "_uuid",
            None,
            None,
            {"type": "array", "items": ["null", semantic("string", "io.debezium.data.Uuid")]},
        ),
        ("_numeric", 10, 2, {"type": "array", "items": ["null", DECIMAL_10_2]}),
        ("_mood", None, None, "string"),  # array of an unknown type: its text form
    ],
)
def test_type_mapping(
    pg_type: str, precision: int | None, scale: int | None, expected: Any
) -> None:
    shape = TableShape(
        "erp",
        "public",
        "t",
        (
            ColumnShape("id", "int4", nullable=False, is_key=True),
            ColumnShape("c", pg_type, True, False, scale, precision),
            ColumnShape("n", pg_type, False, False, scale, precision),
        ),
    )
    fields = value_fields(value_schema(shape))
    assert fields[1] == {"name": "c", "type": ["null", expected], "default": None}
    assert fields[2] == {"name": "n", "type": expected}


def test_names_are_adjusted_for_avro() -> None:
    assert adjust_name("res_partner") == "res_partner"
    assert adjust_name("order-id") == "order_id"
    assert adjust_name("1st") == "_st"
    assert adjust_name("Straße") == "Stra_e"
    shape = TableShape(
        "erp",
        "my-schema",
        "2024 orders",
        (ColumnShape("order id", "int4", nullable=False, is_key=True),),
    )
    assert shape.namespace == "erp.my_schema._024_orders"
    assert key_schema(shape)["fields"][0]["name"] == "order_id"
    assert key_record(shape, {"order id": 3}) == {"order_id": 3}
    fastavro.parse_schema(value_schema(shape))


def test_colliding_names_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        TableShape("erp", "public", "t", (ColumnShape("a-b", "text"), ColumnShape("a_b", "text")))


# --------------------------------------------------------------------------- records


def test_insert_event_round_trips() -> None:
    block = TransactionBlock(transaction_id(771, 24_023_128), 1, 1)
    record = envelope_record(
        PARTNER,
        op="c",
        before=None,
        after=partner_row(),
        source=SOURCE,
        ts_ms=1_700_000_000_123,
        transaction=block,
    )
    assert record["after"] == {
        "id": 7,
        "name": "Acme",
        "ref": "C0007",
        "credit_limit": Decimal("1500.00"),
        "is_company": True,
        "write_date": "2024-05-01T12:30:00.25Z",
    }
    assert record["source"]["txId"] == 771
    assert record["source"]["lsn"] == 24_023_128
    assert record["source"]["connector"] == "postgresql"
    assert record["source"]["sequence"] == '["24023119","24023128"]'
    assert record["transaction"] == {
        "id": "771:24023128",
        "total_order": 1,
        "data_collection_order": 1,
    }
    assert roundtrip(value_schema(PARTNER), record) == record
    assert roundtrip(key_schema(PARTNER), key_record(PARTNER, partner_row())) == {"id": 7}


def test_origin_is_carried() -> None:
    source = SourceInfo(
        version="0.1.0",
        name="crm",
        ts_ms=1,
        db="crm",
        schema="public",
        table="res_partner",
        origin="erpcrm_sink_crm",
    )
    record = envelope_record(
        PARTNER, op="c", before=None, after=partner_row(), source=source, ts_ms=None
    )
    assert roundtrip(value_schema(PARTNER), record)["source"]["origin"] == "erpcrm_sink_crm"


def test_delete_with_default_replica_identity_fills_not_null_columns() -> None:
    # REPLICA IDENTITY DEFAULT: the old row of a delete carries only the key.
    record = envelope_record(PARTNER, op="d", before={"id": 7}, after=None, source=SOURCE, ts_ms=1)
    assert record["before"] == {
        "id": 7,
        "name": "",  # NOT NULL: the type's neutral value, as Debezium does
        "ref": None,
        "credit_limit": None,
        "is_company": False,
        "write_date": None,
    }
    assert record["after"] is None
    assert roundtrip(value_schema(PARTNER), record) == record


def test_unchanged_toast_uses_debezium_placeholder() -> None:
    shape = TableShape(
        "erp",
        "public",
        "doc",
        (
            ColumnShape("id", "int8", nullable=False, is_key=True),
            ColumnShape("body", "text", nullable=False),
            ColumnShape("data", "jsonb"),
            ColumnShape("blob", "bytea"),
            ColumnShape("tags", "_text"),
            ColumnShape("counts", "_int4"),
            ColumnShape("raw_amount", "numeric"),
            ColumnShape("amount", "numeric", numeric_precision=8, numeric_scale=2),
        ),
    )
    toast = UNCHANGED_TOAST
    after = {
        "id": 1,
        "body": toast,
        "data": toast,
        "blob": toast,
        "tags": toast,
        "counts": toast,
        "raw_amount": toast,
        "amount": toast,
    }
    record = envelope_record(shape, op="u", before=None, after=after, source=SOURCE, ts_ms=1)
    assert record["after"] == {
        "id": 1,
        "body": UNAVAILABLE_VALUE_PLACEHOLDER,
        "data": UNAVAILABLE_VALUE_PLACEHOLDER,
        "blob": UNAVAILABLE_VALUE_PLACEHOLDER.encode(),
        "tags": [UNAVAILABLE_VALUE_PLACEHOLDER],
        "counts": None,
        "raw_amount": UNAVAILABLE_VALUE_PLACEHOLDER,
        "amount": None,
    }
    assert roundtrip(value_schema(shape), record) == record


def test_caller_supplied_toast_marker() -> None:
    marker = object()
    record = envelope_record(
        PARTNER,
        op="u",
        before=None,
        after=partner_row(ref=marker),
        source=SOURCE,
        ts_ms=1,
        unchanged_toast=marker,
    )
    assert record["after"]["ref"] == UNAVAILABLE_VALUE_PLACEHOLDER


def test_unchanged_toast_in_not_null_column_without_placeholder_is_invalid() -> None:
    shape = TableShape(
        "erp",
        "public",
        "t",
        (
            ColumnShape("id", "int4", nullable=False, is_key=True),
            ColumnShape("amount", "numeric", False, False, 2, 8),
        ),
    )
    with pytest.raises(ValidationError, match="amount"):
        envelope_record(
            shape,
            op="u",
            before=None,
            after={"id": 1, "amount": UNCHANGED_TOAST},
            source=SOURCE,
            ts_ms=1,
        )


def test_key_record_errors() -> None:
    with pytest.raises(ValidationError):
        key_record(PARTNER, {"name": "no key"})
    with pytest.raises(ValidationError):
        key_record(PARTNER, {"id": None})
    with pytest.raises(ValidationError):
        key_record(PARTNER, {"id": UNCHANGED_TOAST})
    with pytest.raises(ValidationError):
        key_record(PARTNER, {"id": "7"})


@pytest.mark.parametrize(
    ("pg_type", "value", "expected"),
    [
        ("int2", -32768, -32768),
        ("int8", 2**63 - 1, 2**63 - 1),
        ("float8", 1.5, 1.5),
        ("float8", 2, 2.0),
        ("float4", 1.1, struct.unpack("<f", struct.pack("<f", 1.1))[0]),
        ("numeric(6,2)", Decimal("1.5"), Decimal("1.50")),
        ("numeric(6,2)", 3, Decimal("3.00")),
        ("numeric(6,2)", Decimal("NaN"), None),  # as Debezium: no decimal form
        ("numeric", Decimal("1E-7"), "0.0000001"),
        ("numeric", Decimal("-Infinity"), "-Infinity"),
        ("numeric", Decimal("120"), "120"),
        ("uuid", uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ("uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("jsonb", '{"a": [1, 2]}', '{"a": [1, 2]}'),
        ("jsonb", {"a": [1, 2]}, '{"a":[1,2]}'),
        ("bytea", bytearray(b"\x00\xff"), b"\x00\xff"),
        ("date", date(1970, 1, 2), 1),
        ("date", date(1969, 12, 31), -1),
        ("timestamp", datetime(1970, 1, 1, 0, 0, 1, 5), 1_000_005),
        ("timestamp", datetime(1969, 12, 31, 23, 59, 59), -1_000_000),
        ("timestamptz", datetime(2024, 1, 1, tzinfo=UTC), "2024-01-01T00:00:00Z"),
        (
            "timestamptz",
            datetime(2024, 1, 1, 1, 0, 0, 100, tzinfo=timezone(timedelta(hours=2))),
            "2023-12-31T23:00:00.0001Z",
        ),
        ("timestamptz", datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00Z"),
        ("timestamptz", "infinity", "infinity"),
        ("time", time(0, 0, 1, 2), 1_000_002),
        ("time", time.max, 86_399_999_999),
        ("timetz", time(1, 30, tzinfo=timezone(timedelta(hours=2))), "23:30:00Z"),
        ("timetz", time(12, 0, 0, 500000, tzinfo=UTC), "12:00:00.5Z"),
        ("_int8", [1, None, 3], [1, None, 3]),
        ("_numeric(6,2)", [Decimal("1"), Decimal("NaN")], [Decimal("1.00"), None]),
        ("_date", (date(1970, 1, 11),), [10]),
        ("interval", "1 day 02:00:00", "1 day 02:00:00"),
        ("_mood", "{happy,sad}", "{happy,sad}"),
        ("mood", ["a", "b"], '["a","b"]'),
    ],
)
def test_value_conversion(pg_type: str, value: Any, expected: Any) -> None:
    base = pg_type.split("(")[0]
    precision = scale = None
    if "(" in pg_type:
        precision, scale = (int(n) for n in pg_type[len(base) + 1 : -1].split(","))
    shape = TableShape(
        "erp",
        "public",
        "t",
        (
            ColumnShape("id", "int4", nullable=False, is_key=True),
            ColumnShape("v", base, True, False, scale, precision),
        ),
    )
    record = envelope_record(
        shape, op="r", before=None, after={"id": 1, "v": value}, source=SOURCE, ts_ms=None
    )
    assert record["after"]["v"] == expected
    assert type(record["after"]["v"]) is type(expected)
    assert roundtrip(value_schema(shape), record) == record


def test_timestamp_fraction_width_follows_declared_precision() -> None:
    shape = TableShape(
        "erp",
        "public",
        "t",
        (
            ColumnShape("id", "int4", nullable=False, is_key=True),
            ColumnShape("at6", "timestamptz", numeric_scale=6),
            ColumnShape("at3", "timestamptz", numeric_scale=3),
            ColumnShape("at0", "timestamptz", numeric_scale=0),
        ),
    )
    moment = datetime(2024, 1, 1, 0, 0, 0, 120000, tzinfo=UTC)
    after = {"id": 1, "at6": moment, "at3": moment, "at0": moment.replace(microsecond=0)}
    record = envelope_record(shape, op="c", before=None, after=after, source=SOURCE, ts_ms=1)
    assert record["after"]["at6"] == "2024-01-01T00:00:00.120000Z"
    assert record["after"]["at3"] == "2024-01-01T00:00:00.120Z"
    assert record["after"]["at0"] == "2024-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("pg_type", "value"),
    [
        ("int4", 2**31),
        ("int4", True),
        ("int4", "1"),
        ("int2", 40000),
        ("bool", 1),
        ("text", 5),
        ("numeric(4,2)", Decimal("123.45")),  # needs 5 digits
        ("numeric(6,2)", Decimal("1.234")),  # would lose a digit
        ("numeric(6,2)", 1.5),
        ("uuid", "not-a-uuid"),
        ("bytea", "text"),
        ("date", datetime(2024, 1, 1)),
        ("timestamp", date(2024, 1, 1)),
        ("float4", 1e300),
        ("_int4", "{1,2}"),
        ("_int4", [[1, 2], [3, 4]]),
        ("_int4", ["x"]),
        ("jsonb", b"{}"),
    ],
)
def test_values_that_do_not_fit_are_validation_errors(pg_type: str, value: Any) -> None:
    base = pg_type.split("(")[0]
    precision = scale = None
    if "(" in pg_type:
        precision, scale = (int(n) for n in pg_type[len(base) + 1 : -1].split(","))
    shape = TableShape(
        "erp",
        "public",
        "t",
        (
            ColumnShape("id", "int4", nullable=False, is_key=True),
            ColumnShape("v", base, False, False, scale, precision),
        ),
    )
    with pytest.raises(ValidationError, match=r"public\.t\.v"):
        envelope_record(
            shape, op="c", before=None, after={"id": 1, "v": value}, source=SOURCE, ts_ms=None
        )


def test_not_null_decimal_nan_is_invalid() -> None:
    shape = TableShape(
        "erp",
        "public",
        "t",
        (
            ColumnShape("id", "int4", nullable=False, is_key=True),
            ColumnShape("v", "numeric", False, False, 2, 6),
        ),
    )
    with pytest.raises(ValidationError):
        envelope_record(
            shape,
            op="c",
            before=None,
            after={"id": 1, "v": Decimal("NaN")},
            source=SOURCE,
            ts_ms=None,
        )


def test_unknown_row_columns_are_rejected() -> None:
    with pytest.raises(ValidationError, match="lacks"):
        envelope_record(
            PARTNER,
            op="c",
            before=None,
            after=partner_row(surprise=1),
            source=SOURCE,
            ts_ms=None,
        )


@pytest.mark.parametrize(
    ("op", "before", "after"),
    [
        ("x", None, {"id": 1}),
        ("c", None, None),
        ("r", None, None),
        ("u", {"id": 1}, None),
        ("d", None, None),
        ("t", {"id": 1}, None),
        ("m", None, {"id": 1}),
    ],
)
def test_op_must_fit_rows(op: Any, before: Any, after: Any) -> None:
    with pytest.raises(ValueError):
        envelope_record(PARTNER, op=op, before=before, after=after, source=SOURCE, ts_ms=1)


def test_truncate_event() -> None:
    record = envelope_record(PARTNER, op="t", before=None, after=None, source=SOURCE, ts_ms=1)
    assert (record["before"], record["after"], record["op"]) == (None, None, "t")
    assert roundtrip(value_schema(PARTNER), record) == record


def test_source_info_validation() -> None:
    with pytest.raises(ValueError):
        SourceInfo(
            version="1",
            name="erp",
            ts_ms=1,
            snapshot="maybe",  # type: ignore[arg-type]
            db="erp",
            schema="public",
            table="t",
        )
    with pytest.raises(ValueError):
        SourceInfo(
            version="1", name="erp", ts_ms=1, db="erp", schema="public", table="t", lsn=2**64 - 1
        )


def test_source_sequence_and_ids() -> None:
    assert source_sequence(None, 5) == '[null,"5"]'
    assert json.loads(source_sequence(1, 2)) == ["1", "2"]
    assert transaction_id(571, 53_736_280) == "571:53736280"
    assert data_collection(PARTNER) == "public.res_partner"


# ------------------------------------------------------------- transaction metadata


def test_transaction_metadata_schemas_match_debezium() -> None:
    key = transaction_key_schema()
    assert key["connect.name"] == "io.debezium.connector.common.TransactionMetadataKey"
    assert key["fields"] == [{"name": "id", "type": "string"}]
    value = transaction_value_schema()
    assert value["connect.name"] == "io.debezium.connector.common.TransactionMetadataValue"
    assert [f["name"] for f in value["fields"]] == [
        "status",
        "id",
        "event_count",
        "data_collections",
        "ts_ms",
    ]
    items = field(value, "data_collections")["type"][1]["items"]
    assert items[0] == "null"
    assert items[1]["connect.name"] == "event.collection"


def test_transaction_metadata_records_round_trip() -> None:
    tx = transaction_id(771, 24_023_128)
    begin = transaction_begin_record(tx, ts_ms=10)
    end = transaction_end_record(
        tx, ts_ms=10, event_counts={"public.res_partner": 2, "public.sale_order": 1}
    )
    assert end["event_count"] == 3
    assert end["data_collections"] == [
        {"data_collection": "public.res_partner", "event_count": 2},
        {"data_collection": "public.sale_order", "event_count": 1},
    ]
    for record in (begin, end):
        assert roundtrip(transaction_value_schema(), record) == record
    assert roundtrip(transaction_key_schema(), transaction_key_record(tx)) == {"id": tx}
    with pytest.raises(ValueError):
        transaction_end_record(tx, ts_ms=10, event_counts=[("public.t", -1)])


# ----------------------------------------------------------------- schema evolution


def with_columns(shape: TableShape, *columns: ColumnShape) -> TableShape:
    return TableShape(shape.server, shape.schema, shape.table, columns)


def test_added_nullable_column_is_backward_compatible() -> None:
    old = value_schema(PARTNER)
    new_shape = with_columns(PARTNER, *PARTNER.columns, ColumnShape("vat", "text"))
    new = value_schema(new_shape)
    record = envelope_record(
        PARTNER, op="c", before=None, after=partner_row(), source=SOURCE, ts_ms=1
    )
    assert roundtrip(old, record, reader=new)["after"] == {**record["after"], "vat": None}


def test_added_not_null_column_needs_previous_schema() -> None:
    old = value_schema(PARTNER)
    new_shape = with_columns(
        PARTNER, *PARTNER.columns, ColumnShape("country_code", "bpchar", nullable=False)
    )
    record = envelope_record(
        PARTNER, op="c", before=None, after=partner_row(), source=SOURCE, ts_ms=1
    )
    # Without the previous schema the new one is what Debezium emits: not readable
    # over old data.
    with pytest.raises(SchemaResolutionError):
        roundtrip(old, record, reader=value_schema(new_shape))
    evolved = value_schema(new_shape, previous=old)
    assert value_fields(evolved)[-1] == {
        "name": "country_code",
        "type": ["null", "string"],
        "default": None,
    }
    assert roundtrip(old, record, reader=evolved)["after"]["country_code"] is None
    # Evolving again keeps the column nullable, so each step stays compatible.
    again = value_schema(new_shape, previous=evolved)
    assert value_fields(again) == value_fields(evolved)
    # Unchanged tables keep their schema.
    assert value_schema(PARTNER, previous=old) == old


def test_dropped_column_is_backward_compatible() -> None:
    old = value_schema(PARTNER)
    new_shape = with_columns(PARTNER, *(c for c in PARTNER.columns if c.name != "ref"))
    record = envelope_record(
        PARTNER, op="c", before=None, after=partner_row(), source=SOURCE, ts_ms=1
    )
    after = roundtrip(old, record, reader=value_schema(new_shape, previous=old))["after"]
    assert "ref" not in after
    assert after["name"] == "Acme"


def test_previous_must_be_an_envelope() -> None:
    with pytest.raises(ConfigError):
        value_schema(PARTNER, previous=key_schema(PARTNER))


# ------------------------------------------------------------------ property tests

_UTC_OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_SAFE_DATETIMES = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31))


def _utc_text(moment: datetime) -> str:
    text = moment.astimezone(UTC).replace(tzinfo=None).isoformat()
    if "." in text:
        text = text.rstrip("0")
    return text + "Z"


def _time_text(moment: time) -> str:
    offset = moment.utcoffset() or timedelta(0)
    seconds = (moment.hour * 3600 + moment.minute * 60 + moment.second) - int(
        offset.total_seconds()
    )
    seconds %= 86_400
    text = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _micros(moment: datetime) -> int:
    return calendar.timegm(moment.timetuple()) * 1_000_000 + moment.microsecond


def _scaled_decimals(precision: int, scale: int) -> st.SearchStrategy[Decimal]:
    bound = 10**precision - 1
    return st.integers(-bound, bound).map(lambda n: Decimal(n).scaleb(-scale))


# pg type -> (strategy of (python value, expected Avro datum), has a TOAST placeholder)
_Case = tuple[st.SearchStrategy[tuple[Any, Any]], Any]


def _same(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, Any]]:
    return strategy.map(lambda v: (v, v))


def _cases(column_type: str, precision: int, scale: int) -> _Case:
    """Values for one column type, each with the Avro datum it must become."""
    ph = UNAVAILABLE_VALUE_PLACEHOLDER
    table: dict[str, _Case] = {
        "bool": (_same(st.booleans()), None),
        "int2": (_same(st.integers(-(2**15), 2**15 - 1)), None),
        "int4": (_same(st.integers(-(2**31), 2**31 - 1)), None),
        "int8": (_same(st.integers(-(2**63), 2**63 - 1)), None),
        "float4": (_same(st.floats(width=32, allow_nan=False)), None),
        "float8": (_same(st.floats(allow_nan=False)), None),
        "text": (_same(st.text(max_size=20)), ph),
        "varchar": (_same(st.text(max_size=20)), ph),
        "numeric": (
            st.decimals(allow_nan=False, allow_infinity=False, places=4).map(
                lambda d: (d, format(d, "f"))
            ),
            ph,
        ),
        "numeric_ps": (_same(_scaled_decimals(precision, scale)), None),
        "uuid": (st.uuids().map(lambda u: (u, str(u))), None),
        "jsonb": (
            st.dictionaries(_NAMES, st.integers(), max_size=3).map(
                lambda d: (json.dumps(d), json.dumps(d))
            ),
            ph,
        ),
        "bytea": (_same(st.binary(max_size=20)), ph.encode()),
        "date": (st.dates().map(lambda d: (d, d.toordinal() - 719_163)), None),
        "timestamp": (_SAFE_DATETIMES.map(lambda t: (t, _micros(t))), None),
        "timestamptz": (
            _SAFE_DATETIMES.flatmap(
                lambda t: _UTC_OFFSETS.map(lambda tz: t.replace(tzinfo=tz))
            ).map(lambda t: (t, _utc_text(t))),
            None,
        ),
        "time": (
            st.times().map(
                lambda t: (t, ((t.hour * 60 + t.minute) * 60 + t.second) * 10**6 + t.microsecond)
            ),
            None,
        ),
        "timetz": (st.times(timezones=_UTC_OFFSETS).map(lambda t: (t, _time_text(t))), None),
        "_text": (_same(st.lists(st.none() | st.text(max_size=5), max_size=4)), [ph]),
        "_int4": (_same(st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=4)), None),
        "interval": (_same(st.sampled_from(["00:00:00", "1 day", "-3 mons +2 days"])), ph),
    }
    return table[column_type]


_COLUMN_TYPES = sorted(
    [
        "bool",
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "text",
        "varchar",
        "numeric",
        "numeric_ps",
        "uuid",
        "jsonb",
        "bytea",
        "date",
        "timestamp",
        "timestamptz",
        "time",
        "timetz",
        "_text",
        "_int4",
        "interval",
    ]
)


@st.composite
def shapes_and_rows(draw: st.DrawFn) -> tuple[TableShape, dict[str, Any], dict[str, Any]]:
    """A table shape, a row for it, and the Avro datum the row must become."""
    names = draw(st.lists(_NAMES, min_size=1, max_size=8, unique=True))
    columns = []
    row: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    for index, name in enumerate(names):
        column_type = draw(st.sampled_from(_COLUMN_TYPES))
        precision = draw(st.integers(1, 20))
        scale = draw(st.integers(0, precision))
        is_key = index == 0
        nullable = not is_key and draw(st.booleans())
        pg_type = "numeric" if column_type == "numeric_ps" else column_type
        columns.append(
            ColumnShape(
                name,
                pg_type,
                nullable,
                is_key,
                scale if column_type == "numeric_ps" else None,
                precision if column_type == "numeric_ps" else None,
            )
        )
        values, placeholder = _cases(column_type, precision, scale)
        choice = draw(st.sampled_from(["value", "null", "toast"]))
        if is_key or choice == "value" or (choice == "null" and not nullable):
            row[name], expected[name] = draw(values)
        elif choice == "null":
            row[name], expected[name] = None, None
        elif placeholder is not None:
            row[name], expected[name] = UNCHANGED_TOAST, placeholder
        elif nullable:
            row[name], expected[name] = UNCHANGED_TOAST, None
        else:
            row[name], expected[name] = draw(values)
    server = draw(st.sampled_from(["erp", "crm"]))
    table = draw(_NAMES)
    return TableShape(server, "public", table, tuple(columns)), row, expected


def sample_envelope(
    shape: TableShape, row: dict[str, Any], op: Any, lsn: int | None, with_tx: bool
) -> dict[str, Any]:
    """An envelope of a change of ``row`` (its ``before`` image for updates and deletes)."""
    source = SourceInfo(
        version="1", name="erp", ts_ms=1, db="erp", schema="public", table=shape.table, lsn=lsn
    )
    return envelope_record(
        shape,
        op=op,
        before=row if op in ("u", "d") else None,
        after=None if op == "d" else row,
        source=source,
        ts_ms=2,
        transaction=TransactionBlock("1:2", 1, 1) if with_tx else None,
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=shapes_and_rows(),
    op=st.sampled_from(["c", "u", "r"]),
    snapshot=st.sampled_from(["true", "false", "last", "incremental"]),
    lsn=st.none() | st.integers(0, 2**63 - 1),
)
def test_envelope_round_trip(
    case: tuple[TableShape, dict[str, Any], dict[str, Any]], op: Any, snapshot: Any, lsn: int | None
) -> None:
    shape, row, expected = case
    source = SourceInfo(
        version="0.1.0",
        name=shape.server,
        ts_ms=1,
        snapshot=snapshot,
        db=shape.server,
        schema=shape.schema,
        table=shape.table,
        tx_id=None if lsn is None else 5,
        lsn=lsn,
    )
    record = envelope_record(shape, op=op, before=None, after=row, source=source, ts_ms=2)
    assert record["after"] == expected
    decoded = roundtrip(value_schema(shape), record)
    assert decoded == {
        "before": None,
        "after": expected,
        "source": source.as_record(),
        "transaction": None,
        "op": op,
        "ts_ms": 2,
        "ts_us": None,
        "ts_ns": None,
    }
    key = shape.columns[0].name
    assert roundtrip(key_schema(shape), key_record(shape, row)) == {key: expected[key]}
    assert json.dumps(value_schema(shape)) == json.dumps(value_schema(shape))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=shapes_and_rows(),
    added=st.lists(
        st.tuples(
            st.sampled_from(["int8", "text", "numeric", "bool", "timestamptz", "_int4"]),
            st.booleans(),
        ),
        max_size=3,
    ),
    keep=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_evolved_schema_reads_old_data(
    case: tuple[TableShape, dict[str, Any], dict[str, Any]],
    added: list[tuple[str, bool]],
    keep: list[bool],
) -> None:
    shape, row, expected = case
    old = value_schema(shape)
    kept = [c for c, k in zip(shape.columns, keep, strict=False) if c.is_key or k]
    new_columns = [
        ColumnShape(f"added_{i}", pg_type, nullable) for i, (pg_type, nullable) in enumerate(added)
    ]
    new_shape = with_columns(shape, *kept, *new_columns)
    new = value_schema(new_shape, previous=old)
    record = envelope_record(shape, op="c", before=None, after=row, source=SOURCE, ts_ms=None)
    after = roundtrip(old, record, reader=new)["after"]
    assert after == {
        **{c.name: expected[c.name] for c in kept},
        **{c.name: None for c in new_columns},
    }
