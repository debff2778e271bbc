"""Canonical Avro schemas (schemas/avro/*.avsc, schemas/canonical.py).

Every schema parses, round-trips generated records through fastavro, keeps the common
metadata, and stays BACKWARD compatible with the committed copy under
``tests/unit/canonical_baseline/``: when a schema changes compatibly, refresh the copy;
when the snapshot test fails, the change would break existing readers.
"""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.canonical import (
    ID_FIELDS,
    METADATA_FIELDS,
    NAMESPACE,
    business_fields,
    canonical_schema,
    check_backward_compatible,
    field_types,
)
from schemas.errors import ConfigError
from schemas.topics import CANONICAL_ENTITIES

BASELINE = Path(__file__).parent / "canonical_baseline"

# ------------------------------------------------------------------------- structure


@pytest.mark.parametrize("entity", CANONICAL_ENTITIES)
def test_every_schema_parses_with_fastavro(entity: str) -> None:
    parsed = fastavro.parse_schema(canonical_schema(entity))
    assert parsed["name"] == f"{NAMESPACE}.{entity.title().replace('_', '')}"


@pytest.mark.parametrize("entity", CANONICAL_ENTITIES)
def test_metadata_and_ids_come_first_with_their_types(entity: str) -> None:
    fields = canonical_schema(entity)["fields"]
    names = [f["name"] for f in fields]
    assert names[: len(METADATA_FIELDS) + len(ID_FIELDS)] == [*METADATA_FIELDS, *ID_FIELDS]
    types = {f["name"]: f["type"] for f in fields}
    assert types["event_id"] == "string"
    assert types["source_lsn"] == "long"
    assert types["source_tx_id"] == ["null", "long"]
    assert types["version"] == "long"
    assert types["erp_id"] == types["crm_id"] == ["null", "string"]


@pytest.mark.parametrize("entity", CANONICAL_ENTITIES)
def test_business_fields_are_optional_so_evolution_stays_backward(entity: str) -> None:
    types = field_types(entity)
    assert business_fields(entity)
    for name in business_fields(entity):
        described = types[name]
        assert described.has_default, name
        assert described.nullable or described.kind == "array", name
        for item in (described.items or {}).values():
            assert item.nullable, f"{name}.{item.name}"
            assert item.has_default, f"{name}.{item.name}"


def test_decimal_fields_have_fixed_precision_and_scale() -> None:
    product = field_types("product")
    assert (product["list_price"].precision, product["list_price"].scale) == (18, 2)
    inventory = field_types("inventory")
    assert (inventory["on_hand"].precision, inventory["on_hand"].scale) == (18, 3)
    line = field_types("sales_order")["lines"].items
    assert line is not None
    assert line["discount"].scale == 2


def test_canonical_schema_returns_a_copy_the_caller_may_change() -> None:
    schema = canonical_schema("customer")
    schema["fields"].clear()
    assert canonical_schema("customer")["fields"]


def test_unknown_entity_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown canonical entity"):
        canonical_schema("opportunity")


# ------------------------------------------------------------------------ round trip


def _strategy(avro_type: Any) -> st.SearchStrategy[Any]:
    if isinstance(avro_type, list):
        return st.one_of([_strategy(branch) for branch in avro_type])
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        kind = avro_type["type"]
        if logical == "decimal":
            precision, scale = avro_type["precision"], avro_type["scale"]
            bound = Decimal(10) ** (precision - scale) - Decimal(10) ** -scale
            return st.decimals(min_value=-bound, max_value=bound, places=scale, allow_nan=False)
        if logical == "date":
            return st.dates()
        if logical == "timestamp-micros":
            return st.datetimes(
                min_value=datetime(1900, 1, 1),
                max_value=datetime(2200, 1, 1),
                timezones=st.just(UTC),
            )
        if kind == "array":
            return st.lists(_strategy(avro_type["items"]), max_size=3)
        if kind == "map":
            return st.dictionaries(st.text(max_size=8), _strategy(avro_type["values"]), max_size=3)
        if kind == "record":
            return st.fixed_dictionaries(
                {f["name"]: _strategy(f["type"]) for f in avro_type["fields"]}
            )
        return _strategy(kind)
    primitives: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "string": st.text(max_size=12),
        "long": st.integers(-(2**63), 2**63 - 1),
        "int": st.integers(-(2**31), 2**31 - 1),
        "boolean": st.booleans(),
    }
    return primitives[avro_type]


def _round_trip(schema: dict[str, Any], record: dict[str, Any]) -> Any:
    parsed = fastavro.parse_schema(schema)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    buffer.seek(0)
    return fastavro.schemaless_reader(buffer, parsed, parsed)


@pytest.mark.parametrize("entity", CANONICAL_ENTITIES)
def test_generated_records_round_trip_through_fastavro(entity: str) -> None:
    schema = canonical_schema(entity)

    @given(_strategy(schema))
    def round_trip(record: dict[str, Any]) -> None:
        assert _round_trip(schema, record) == record

    round_trip()


# ------------------------------------------------------------ backward compatibility


def _record(*fields: dict[str, Any], name: str = "Thing") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields)}


def _f(name: str, avro_type: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": avro_type, **extra}


BASE = _record(
    _f("id", "string"),
    _f("count", "int"),
    _f("note", ["null", "string"], default=None),
    _f("state", {"type": "enum", "name": "State", "symbols": ["A", "B"]}),
    _f("price", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}),
    _f("at", {"type": "long", "logicalType": "timestamp-millis"}),
    _f(
        "lines",
        {"type": "array", "items": _record(_f("sku", "string"), name="Line")},
        default=[],
    ),
)


def _changed(path: list[str | int], value: Any) -> dict[str, Any]:
    """BASE with the element at ``path`` replaced (``fields`` indexes by position)."""
    schema = copy.deepcopy(BASE)
    target: Any = schema
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return schema


def _with_field(field: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    schema["fields"].append(field)
    return schema


def _without_field(name: str) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != name]
    return schema


COMPATIBLE = {
    "identical": BASE,
    "nullable field added with default": _with_field(_f("x", ["null", "long"], default=None)),
    "field added with a default value": _with_field(_f("x", "string", default="n/a")),
    "field removed": _without_field("note"),
    "int promoted to long": _changed(["fields", 1, "type"], "long"),
    "int promoted to double": _changed(["fields", 1, "type"], "double"),
    "string read as bytes": _changed(["fields", 0, "type"], "bytes"),
    "required made nullable": _changed(["fields", 0, "type"], ["null", "string"]),
    "enum symbol added": _changed(["fields", 3, "type", "symbols"], ["A", "B", "C"]),
    "enum symbol removed with default": _changed(
        ["fields", 3, "type"], {"type": "enum", "name": "State", "symbols": ["A"], "default": "A"}
    ),
    "record renamed with alias": _changed(["name"], "Other") | {"aliases": ["Thing"]},
    "field renamed with alias": _changed(
        ["fields", 2], _f("remark", ["null", "string"], default=None, aliases=["note"])
    ),
    "decimal precision grown": _changed(["fields", 4, "type", "precision"], 12),
    "nested field added with default": _changed(
        ["fields", 6, "type", "items", "fields"],
        [_f("sku", "string"), _f("qty", ["null", "long"], default=None)],
    ),
}

BREAKING = {
    "field added without default": (_with_field(_f("x", "string")), "added without a default"),
    "default does not fit": (
        _with_field(_f("x", ["null", "string"], default="x")),
        "does not fit",
    ),
    "long narrowed to int": (
        _changed(["fields", 1, "type"], "long"),
        None,  # checked the other way round below
    ),
    "string changed to long": (_changed(["fields", 0, "type"], "long"), "type changed"),
    "nullable made required": (
        _changed(["fields", 2, "type"], "string"),
        "type changed from null to string",
    ),
    "enum symbol removed": (_changed(["fields", 3, "type", "symbols"], ["A"]), "symbols removed"),
    "enum renamed": (
        _changed(["fields", 3, "type", "name"], "Status"),
        "renamed from State",
    ),
    "record renamed": (_changed(["name"], "Other"), "renamed from Thing"),
    "decimal scale changed": (_changed(["fields", 4, "type", "scale"], 3), "decimal changed"),
    "decimal precision shrunk": (
        _changed(["fields", 4, "type", "precision"], 8),
        "decimal changed",
    ),
    "logical type changed": (
        _changed(["fields", 5, "type", "logicalType"], "timestamp-micros"),
        "logical type changed",
    ),
    "nested field added without default": (
        _changed(
            ["fields", 6, "type", "items", "fields"], [_f("sku", "string"), _f("qty", "long")]
        ),
        "Thing.lines[].qty: field added without a default",
    ),
    "array changed to map": (
        _changed(["fields", 6, "type"], {"type": "map", "values": "string"}),
        "type changed",
    ),
}


@pytest.mark.parametrize("new", COMPATIBLE.values(), ids=COMPATIBLE.keys())
def test_compatible_changes_have_no_reasons(new: dict[str, Any]) -> None:
    assert check_backward_compatible(BASE, new) == []


@pytest.mark.parametrize(("new", "reason"), BREAKING.values(), ids=BREAKING.keys())
def test_breaking_changes_are_reported(new: dict[str, Any], reason: str | None) -> None:
    if reason is None:  # the widening direction is fine, the narrowing one is not
        assert check_backward_compatible(BASE, new) == []
        reasons = check_backward_compatible(new, BASE)
        assert any("type changed from long to int" in r for r in reasons), reasons
        return
    reasons = check_backward_compatible(BASE, new)
    assert any(reason in r for r in reasons), reasons


def test_a_union_branch_removed_is_reported() -> None:
    old = _record(_f("v", ["null", "string", "long"], default=None))
    new = _record(_f("v", ["null", "string"], default=None))
    reasons = check_backward_compatible(old, new)
    assert reasons == ["Thing.v: written type long matches no branch of [null, string]"]


def test_named_type_references_are_followed() -> None:
    point = {"type": "record", "name": "Point", "fields": [_f("x", "int")]}
    old = _record(_f("a", point), _f("b", "t.Point"))
    new = _record(
        _f("a", {"type": "record", "name": "Point", "fields": [_f("x", "int"), _f("y", "int")]}),
        _f("b", "t.Point"),
    )
    reasons = check_backward_compatible(old, new)
    assert reasons == [
        "Thing.a.y: field added without a default",
        "Thing.b.y: field added without a default",
    ]


def test_recursive_types_terminate() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [_f("next", ["null", "Node"], default=None)],
    }
    assert check_backward_compatible(node, copy.deepcopy(node)) == []


# ----------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("entity", CANONICAL_ENTITIES)
def test_schema_stays_backward_compatible_with_its_committed_baseline(entity: str) -> None:
    baseline_file = BASELINE / f"{entity}.avsc"
    assert baseline_file.exists(), f"commit a baseline copy of schemas/avro/{entity}.avsc"
    baseline = json.loads(baseline_file.read_text(encoding="utf-8"))
    current = canonical_schema(entity)
    reasons = check_backward_compatible(baseline, current)
    assert not reasons, (
        f"{entity}.avsc is not BACKWARD compatible with the committed baseline: {reasons}"
    )
