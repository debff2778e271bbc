"""Wire format, Avro serde and registry wrapper (schemas/serde.py); topic names (schemas/topics.py).

The registry wrapper is exercised against confluent-kafka's in-process mock registry;
the real registry is covered by tests/integration/test_serde_registry.py.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryError
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given
from hypothesis import strategies as st

from cdc.envelope import ColumnShape, SourceInfo, TableShape, envelope_record, value_schema
from schemas import topics
from schemas.errors import ConfigError, DecodeError, PermanentError, RetriableError, ValidationError
from schemas.registry_http import RegistryHttpError, SchemaVersion
from schemas.serde import (
    MAX_SCHEMA_ID,
    AvroSerde,
    IncompatibleSchemaError,
    LocalSchemaRegistry,
    RegistryClient,
    canonical_json,
    pack,
    parse_schema,
    read_body,
    unpack,
    write_body,
)

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Thing",
    "namespace": "test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "label", "type": ["null", "string"], "default": None},
    ],
}
EVOLVED: dict[str, Any] = {
    **SCHEMA,
    "fields": [*SCHEMA["fields"], {"name": "extra", "type": ["null", "int"], "default": None}],
}

SHAPE = TableShape(
    "erp",
    "public",
    "product_product",
    (
        ColumnShape("id", "int4", nullable=False, is_key=True),
        ColumnShape("default_code", "varchar", nullable=False),
        ColumnShape("list_price", "numeric", numeric_precision=12, numeric_scale=2),
    ),
)
SOURCE = SourceInfo(
    version="0.1.0",
    name="erp",
    ts_ms=1,
    db="erp",
    schema="public",
    table="product_product",
    tx_id=1,
    lsn=99,
)
ENVELOPE = envelope_record(
    SHAPE,
    op="c",
    before=None,
    after={"id": 1, "default_code": "SKU-1", "list_price": Decimal("9.90")},
    source=SOURCE,
    ts_ms=2,
)


# ------------------------------------------------------------------------ wire format


@given(schema_id=st.integers(0, MAX_SCHEMA_ID), body=st.binary(max_size=64))
def test_pack_unpack_round_trip(schema_id: int, body: bytes) -> None:
    data = pack(schema_id, body)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == schema_id
    assert unpack(data) == (schema_id, memoryview(body))
    assert unpack(bytearray(data))[0] == schema_id
    assert unpack(memoryview(data))[0] == schema_id


def test_unpack_does_not_copy_the_body() -> None:
    data = bytearray(pack(7, b"abc"))
    _, body = unpack(data)
    data[5] = ord("x")
    assert bytes(body) == b"xbc"


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x01", b"\x01\x00\x00\x00\x01"])
def test_unpack_rejects_malformed_headers(data: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(data)


@given(st.binary(max_size=4))
def test_unpack_rejects_short_input(data: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(data)


@given(magic=st.integers(1, 255), rest=st.binary(min_size=4, max_size=12))
def test_unpack_rejects_other_magic_bytes(magic: int, rest: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(bytes([magic]) + rest)


def test_unpack_rejects_non_bytes() -> None:
    with pytest.raises(DecodeError):
        unpack(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("schema_id", [-1, MAX_SCHEMA_ID + 1])
def test_pack_rejects_out_of_range_ids(schema_id: int) -> None:
    with pytest.raises(ValueError):
        pack(schema_id, b"")


# ------------------------------------------------------------------------ Avro bodies


def test_canonical_json_ignores_key_order() -> None:
    reordered = {"fields": SCHEMA["fields"], "namespace": "test", "name": "Thing", "type": "record"}
    assert canonical_json(reordered) == canonical_json(SCHEMA)
    assert canonical_json(SCHEMA) == canonical_json(canonical_json(SCHEMA))


def test_parse_schema_is_cached_and_validates() -> None:
    assert parse_schema(SCHEMA) is parse_schema(dict(SCHEMA))
    with pytest.raises(ConfigError):
        parse_schema({"type": "record", "name": "x", "fields": [{"name": "a", "type": "nope"}]})
    with pytest.raises(ConfigError):
        parse_schema("{not json")


def test_body_round_trip_and_errors() -> None:
    parsed = parse_schema(SCHEMA)
    body = write_body(parsed, {"id": 5, "label": "x"})
    assert read_body(body, parsed) == {"id": 5, "label": "x"}
    with pytest.raises(DecodeError, match="after the datum"):
        read_body(body + b"\x00", parsed)
    with pytest.raises(DecodeError):
        read_body(body[:1], parsed)
    with pytest.raises(ValidationError):
        write_body(parsed, {"id": "five"})
    with pytest.raises(ValidationError):
        write_body(parsed, {"label": "no id"})


# ------------------------------------------------------------------- serde (offline)


def test_serde_round_trip_with_local_registry() -> None:
    serde = AvroSerde(LocalSchemaRegistry())
    subject = topics.value_subject(topics.raw_topic("erp", "public", "product_product"))
    data = serde.encode(subject, value_schema(SHAPE), ENVELOPE)
    assert AvroSerde.schema_id_of(data) == 1
    assert serde.decode(data) == ENVELOPE
    writer = serde.prepare(subject, value_schema(SHAPE))
    assert AvroSerde.encode_with(writer, ENVELOPE) == data


def test_serde_decodes_to_a_reader_schema() -> None:
    serde = AvroSerde(LocalSchemaRegistry())
    data = serde.encode("things-value", SCHEMA, {"id": 1, "label": None})
    assert serde.decode(data, reader_schema=EVOLVED) == {"id": 1, "label": None, "extra": None}
    with pytest.raises(DecodeError):
        serde.decode(
            data,
            reader_schema={**SCHEMA, "fields": [{"name": "must", "type": "int"}]},
        )


def test_local_registry_versions_and_ids() -> None:
    registry = LocalSchemaRegistry()
    assert registry.latest("things-value") is None
    first = registry.register("things-value", SCHEMA)
    assert registry.register("things-value", SCHEMA) == first
    assert registry.register("other-value", SCHEMA) == first
    second = registry.register("things-value", EVOLVED)
    latest = registry.latest("things-value")
    assert latest is not None
    assert (latest.schema_id, latest.version, latest.schema) == (second, 2, EVOLVED)
    with pytest.raises(DecodeError):
        registry.get_schema(99)


def test_decode_errors() -> None:
    serde = AvroSerde(LocalSchemaRegistry())
    with pytest.raises(DecodeError, match="not in the registry"):
        serde.decode(pack(42, b"\x02"))
    with pytest.raises(DecodeError):
        serde.decode(b"\x00\x00")
    data = serde.encode("things-value", SCHEMA, {"id": 1, "label": "a"})
    with pytest.raises(DecodeError):
        serde.decode(data[:-1])
    with pytest.raises(DecodeError):
        serde.decode(data + b"\x00")
    not_a_record = serde.encode("names-value", {"type": "string"}, "plain")
    with pytest.raises(DecodeError, match="not describe a record"):
        serde.decode(not_a_record)


def test_encode_misfit_is_a_validation_error() -> None:
    serde = AvroSerde(LocalSchemaRegistry())
    with pytest.raises(ValidationError):
        serde.encode("things-value", SCHEMA, {"id": None})


@given(garbage=st.binary(max_size=40))
def test_decoding_garbage_fails_only_with_decode_error(garbage: bytes) -> None:
    registry = LocalSchemaRegistry()
    schema_id = registry.register("erp.public.product_product-value", value_schema(SHAPE))
    serde = AvroSerde(registry)
    try:
        result = serde.decode(pack(schema_id, garbage))
    except DecodeError:
        return
    assert isinstance(result, dict)


# ------------------------------------------------- registry wrapper over the mock


def _as_http_error(exc: SchemaRegistryError) -> RegistryHttpError:
    return RegistryHttpError(exc.http_status_code, exc.error_code, exc.error_message)


class FakeRegistryClient:
    """The registry calls RegistryClient makes, over confluent-kafka's mock registry.

    ``apicurio=True`` makes setting the level of a subject without versions fail with
    404, as Apicurio does; ``reject`` makes registration fail with 409. ``mock`` is the
    underlying confluent-kafka client, for Confluent's own (de)serializers.
    """

    def __init__(self, *, apicurio: bool = False) -> None:
        self.mock = MockSchemaRegistryClient({"url": "mock://registry"})
        self.apicurio = apicurio
        self.levels: dict[str, str] = {}
        self.calls: list[str] = []
        self.reject = False
        self.fail_with: Exception | None = None
        self.racers: list[str] = []
        """Levels other processes set just before each next compatibility write."""

    def _fail(self, call: str) -> None:
        self.calls.append(call)
        if self.fail_with is not None:
            raise self.fail_with

    def register_schema(self, subject: str, schema_text: str, schema_type: str = "AVRO") -> int:
        self._fail(f"register {subject}")
        if self.reject:
            raise RegistryHttpError(409, 409, "incompatible")
        return int(self.mock.register_schema(subject, Schema(schema_text, schema_type)))

    def get_schema(self, schema_id: int) -> SchemaVersion:
        self._fail(f"get {schema_id}")
        try:
            found = self.mock.get_schema(schema_id)
        except SchemaRegistryError as exc:
            raise _as_http_error(exc) from exc
        return SchemaVersion(schema_id, None, found.schema_str or "", found.schema_type or "AVRO")

    def get_latest_version(self, subject: str) -> SchemaVersion:
        self._fail(f"latest {subject}")
        try:
            found = self.mock.get_latest_version(subject)
        except SchemaRegistryError as exc:
            raise _as_http_error(exc) from exc
        text = found.schema.schema_str or ""
        return SchemaVersion(int(found.schema_id or 0), found.version, text, "AVRO")

    def set_compatibility(self, subject: str, level: str) -> None:
        self.calls.append(f"config {subject}")
        if self.apicurio and subject not in self.mock.get_subjects():
            raise RegistryHttpError(404, 40401, "Subject not found")
        if self.racers:
            # another process makes the rule first, with its level
            self.levels[subject] = self.racers.pop(0)
            raise RegistryHttpError(409, 0, "A rule named 'COMPATIBILITY' already exists.")
        self.levels[subject] = level

    def get_compatibility(self, subject: str) -> str | None:
        self.calls.append(f"get config {subject}")
        return self.levels.get(subject)

    def close(self) -> None:
        self.calls.append("close")


def test_registry_client_registers_once_and_sets_backward() -> None:
    fake = FakeRegistryClient()
    registry = RegistryClient("mock://registry", client=fake)
    first = registry.register("things-value", SCHEMA)
    assert registry.register("things-value", dict(SCHEMA)) == first
    assert fake.calls == ["config things-value", "register things-value"]
    assert fake.levels == {"things-value": "BACKWARD"}
    assert registry.get_schema(first) is registry.get_schema(first)
    assert fake.calls.count(f"get {first}") <= 1


def test_registry_client_sets_level_after_first_version_on_apicurio() -> None:
    fake = FakeRegistryClient(apicurio=True)
    registry = RegistryClient("mock://registry", client=fake)
    registry.register("things-value", SCHEMA)
    assert fake.calls == ["config things-value", "register things-value", "config things-value"]
    assert fake.levels == {"things-value": "BACKWARD"}
    registry.register("things-value", EVOLVED)
    assert fake.calls[-1] == "register things-value"


def test_a_level_set_by_another_process_at_the_same_moment_is_success() -> None:
    fake = FakeRegistryClient()
    fake.racers = ["BACKWARD"]
    registry = RegistryClient("mock://registry", client=fake)
    registry.register("things-value", SCHEMA)
    assert fake.calls == [
        "config things-value",
        "get config things-value",
        "register things-value",
    ]
    assert fake.levels == {"things-value": "BACKWARD"}


def test_a_conflicting_level_set_at_the_same_moment_is_written_again() -> None:
    fake = FakeRegistryClient()
    fake.racers = ["NONE"]
    RegistryClient("mock://registry", client=fake).ensure_compatibility("t-value", "BACKWARD")
    assert fake.calls == ["config t-value", "get config t-value", "config t-value"]
    assert fake.levels == {"t-value": "BACKWARD"}


def test_a_conflict_that_never_ends_is_retriable() -> None:
    fake = FakeRegistryClient()
    fake.racers = ["NONE"] * 10
    with pytest.raises(RetriableError, match="still conflicting"):
        RegistryClient("mock://registry", client=fake).ensure_compatibility("t-value")


def test_registry_client_without_compatibility_leaves_config_alone() -> None:
    fake = FakeRegistryClient()
    RegistryClient("mock://registry", client=fake, compatibility=None).register("t-value", SCHEMA)
    assert fake.calls == ["register t-value"]


def test_registry_client_latest() -> None:
    fake = FakeRegistryClient()
    registry = RegistryClient("mock://registry", client=fake)
    assert registry.latest("things-value") is None
    schema_id = registry.register("things-value", SCHEMA)
    latest = registry.latest("things-value")
    assert latest is not None
    assert (latest.schema_id, latest.version, latest.schema) == (schema_id, 1, SCHEMA)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (RegistryHttpError(409, 409, "incompatible"), IncompatibleSchemaError),
        (RegistryHttpError(503, 50003, "unavailable"), RetriableError),
        (RegistryHttpError(429, -1, "slow down"), RetriableError),
        (RegistryHttpError(401, 401, "unauthorized"), ConfigError),
        (RegistryHttpError(422, 42201, "invalid schema"), PermanentError),
        (RegistryHttpError(403, 40301, "forbidden"), ConfigError),
        (RegistryHttpError(408, -1, "timeout"), RetriableError),
        (httpx.ConnectError("connection refused"), RetriableError),
    ],
)
def test_registry_failures_are_classified(failure: Exception, expected: type[Exception]) -> None:
    fake = FakeRegistryClient()
    registry = RegistryClient("mock://registry", client=fake, compatibility=None)
    fake.fail_with = failure
    with pytest.raises(expected):
        registry.register("things-value", SCHEMA)
    with pytest.raises(expected):
        registry.get_schema(1)
    with pytest.raises(expected):
        registry.latest("things-value")


def test_unknown_schema_id_is_a_decode_error() -> None:
    registry = RegistryClient("mock://registry", client=FakeRegistryClient(), compatibility=None)
    with pytest.raises(DecodeError):
        registry.get_schema(12345)


def test_registry_client_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        RegistryClient("not-a-url")
    with pytest.raises(ConfigError):
        RegistryClient("mock://registry", client=FakeRegistryClient(), compatibility="SOMETIMES")
    with pytest.raises(ConfigError):
        RegistryClient("mock://registry", client=FakeRegistryClient()).ensure_compatibility(
            "t-value", "SOMETIMES"
        )


def test_confluent_deserializer_reads_what_we_write_and_vice_versa() -> None:
    fake = FakeRegistryClient()
    serde = AvroSerde(RegistryClient("mock://registry", client=fake))
    topic = topics.raw_topic("erp", "public", "product_product")
    data = serde.encode(topics.value_subject(topic), value_schema(SHAPE), ENVELOPE)
    context = SerializationContext(topic, MessageField.VALUE)
    assert AvroDeserializer(fake.mock)(data, context) == ENVELOPE
    theirs = AvroSerializer(fake.mock, canonical_json(value_schema(SHAPE)))(ENVELOPE, context)
    assert serde.decode(theirs) == ENVELOPE


# ---------------------------------------------------------------------- topic names


def test_topic_names() -> None:
    assert topics.raw_topic("erp", "public", "res_partner") == "erp.public.res_partner"
    assert topics.parse_raw_topic("crm.public.accounts") == ("crm", "public", "accounts")
    assert topics.transaction_topic("erp") == "erp.transaction"
    assert topics.dlq_topic("streams") == "dlq.streams"
    assert topics.dlq_topic("sink.crm") == "dlq.sink.crm"
    assert topics.canonical_topic("sales_order") == topics.CANONICAL_SALES_ORDER
    assert [topics.canonical_topic(e) for e in topics.CANONICAL_ENTITIES] == list(
        topics.CANONICAL_TOPICS
    )
    assert topics.CANONICAL_TOPICS == (
        "canonical.customer",
        "canonical.contact",
        "canonical.product",
        "canonical.inventory",
        "canonical.sales_order",
        "canonical.invoice",
    )
    assert topics.key_subject("erp.public.res_partner") == "erp.public.res_partner-key"
    assert topics.value_subject("canonical.customer") == "canonical.customer-value"


@pytest.mark.parametrize(
    ("system", "schema", "table"),
    [
        ("", "public", "t"),
        ("erp", "public", "order lines"),
        ("erp", "pub.lic", "t"),
        ("erp", "public", "tâble"),
        ("erp", "public", "x" * 250),
    ],
)
def test_illegal_raw_topic_parts(system: str, schema: str, table: str) -> None:
    with pytest.raises(ConfigError):
        topics.raw_topic(system, schema, table)


@pytest.mark.parametrize("name", ["", ".", "..", "a b", "a/b", "x" * 250])
def test_illegal_topic_names(name: str) -> None:
    with pytest.raises(ConfigError):
        topics.validate_topic(name)


def test_other_illegal_names() -> None:
    with pytest.raises(ConfigError):
        topics.canonical_topic("order")
    with pytest.raises(ConfigError):
        topics.transaction_topic("e.rp")
    with pytest.raises(ConfigError):
        topics.dlq_topic("")
    with pytest.raises(ConfigError):
        topics.parse_raw_topic("erp.transaction")
    with pytest.raises(ConfigError):
        topics.key_subject("bad topic")


@given(st.from_regex(r"[A-Za-z0-9_-]{1,60}", fullmatch=True))
def test_legal_names_pass_through(name: str) -> None:
    topic = topics.raw_topic("erp", name, name)
    assert topics.parse_raw_topic(topic) == ("erp", name, name)


@given(label=st.none() | st.text(max_size=80), extra=st.binary(max_size=3))
def test_a_message_is_decoded_in_place_as_its_copied_body_would_be(
    label: str | None, extra: bytes
) -> None:
    # bytes are read in place past the header; other buffers through a copy of the body:
    # the same record, and the same failures for trailing or missing bytes
    serde = AvroSerde(LocalSchemaRegistry())
    data = serde.encode("things-value", SCHEMA, {"id": 7, "label": label})
    for message in (data + extra, data[:-1]):
        outcomes = []
        for form in (message, bytearray(message), memoryview(message)):
            try:
                outcomes.append(serde.decode(form))
            except DecodeError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1] == outcomes[2]
    assert serde.decode(data) == {"id": 7, "label": label}
    if extra:
        with pytest.raises(DecodeError, match=f"{len(extra)} bytes after the datum"):
            serde.decode(data + extra)
