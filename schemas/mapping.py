"""Declarative mappings between the systems' tables and the canonical entities.

One YAML file per flow in ``schemas/mappings/`` (``<system>_<table>__<entity>.yaml``),
loaded and checked once at start-up by :func:`load_mappings`; any mistake is a
:class:`~schemas.errors.ConfigError` naming the file, the flow and the field. Adding a
field to a flow is an edit of its YAML file (and, for a new canonical field, of the
entity's ``.avsc``).

A flow file::

    source:
      system: erp                 # erp | crm
      table: res_partner          # schema: public unless given
      key: id                     # primary key: event id, and the entity's erp_id/crm_id
      entity_id: product_id       # optional: column with the entity's id, if not the key
    target: customer              # a canonical entity (schemas/avro/<entity>.avsc)
    crosswalk: customer           # optional: crosswalk entity of erp_id/crm_id (= target)
    match_key: customer_number    # optional: the business key matching across systems
    grain: entity                 # entity | location (rows are per-location stock)
    filter:                       # optional: rows not matching are skipped, not errors
      parent_id: {is_null: true}
    soft_delete:                  # optional: a row matching any of these is a delete
      deleted: {equals: true}
    fields:
      customer_number:            # canonical field
        source: ref               # source column (or `value:` for a constant)
        cast: str                 # str | int | decimal | bool | date | timestamp
        clean: trim               # trim | upper | lower | email | phone | vat | country, or a list
        owner: erp                # erp | crm | shared (required except for erp_id/crm_id)
        required: true
      vat:
        source: vat
        cast: str
        clean: vat
        region: country_code      # phone, vat: the field whose country is the default
        on_invalid: quarantine    # quarantine | dead_letter | keep (see below)
        owner: erp
      phone:
        source: phone
        cast: str
        clean: phone
        region: country_code      # phone: the field whose country is the default region
        owner: shared
      country_code:
        source: country_code
        cast: str
        clean: country
        infer_from: {vat: vat, phone: phone}   # country: fill a missing one from these
        owner: shared
      state:
        source: state
        cast: str
        map: {draft: draft, sale: confirmed}   # source value -> canonical value
        owner: erp
      list_price: {source: list_price, cast: decimal, round: 2, min: 0, owner: erp}
      customer_erp_id:
        source: partner_id
        cast: str
        crosswalk: {entity: customer, counterpart: customer_crm_id}
        owner: crm
      sku: {source: product_id, cast: str, lookup: erp_product_sku, known_sku: true, owner: erp}
    lines:                        # optional: nested records from a child table
      target: lines               # an array-of-records field of the entity (= lines)
      source: {table: sale_order_line, key: id, parent: order_id, order_by: sequence}
      filter: {...}
      fields: {...}               # as above, against the item record's fields

Field options, applied in this order by :mod:`streams.transform`: ``clean`` rules,
``default`` (for a missing value), ``map`` (an unknown source value is an error),
``cast``, ``round`` (decimals: places, half-up; default and maximum: the schema's
scale), ``min``/``max``, ``lookup`` (the value is replaced by its entry in a named
lookup table supplied at run time; a miss is null, or an error if ``required``),
``known_sku`` (must be in the ERP catalogue), then ``required``. ``crosswalk`` fills
the named counterpart field with the other system's id of the referenced entity.
``fallback: {source: <column>, lookup: <table>}`` gives a value that is still blank after
cleaning another way: the entry of that column's value in a lookup table (an order
line without a part number takes its product's SKU); a miss there is an unresolved
reference, which waits for the reference to arrive.

``on_invalid`` says what a value that fails any of these steps does to its record:

- ``quarantine`` (the default for an optional field of an entity whose schema has
  ``quarantined_fields``): the field is left out (null, and named in the record's
  ``quarantined_fields``, so the sinks keep what the target has) and the rest of the
  record flows; the defect is recorded;
- ``dead_letter`` (the default for required fields, order lines and entities without
  ``quarantined_fields``; the only choice for a required field): the record goes to the
  dead-letter topic;
- ``keep`` (text fields only): the value travels as typed, trimmed; the defect is
  recorded.

Ownership (``owner``) is per entity and field: every flow of an entity must agree,
which :func:`load_mappings` checks; :func:`ownership` returns the map.

Pure apart from reading the mapping files.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn

import yaml

from schemas.canonical import (
    ID_FIELDS,
    METADATA_FIELDS,
    QUARANTINED_FIELDS,
    FieldType,
    field_types,
)
from schemas.errors import ConfigError
from schemas.topics import CANONICAL_ENTITIES, canonical_topic, raw_topic

__all__ = [
    "CLEAN_RULES",
    "Cast",
    "Condition",
    "CrosswalkRef",
    "FieldMap",
    "Flow",
    "Grain",
    "LinesMap",
    "OnInvalid",
    "Owner",
    "convert",
    "converter",
    "flows_for_table",
    "load_flow",
    "load_mappings",
    "map_key",
    "ownership",
]

SYSTEMS: Final = ("erp", "crm")


class Cast(StrEnum):
    """The conversions a field can apply to its source value (see :func:`convert`)."""

    STR = "str"
    INT = "int"
    DECIMAL = "decimal"
    BOOL = "bool"
    DATE = "date"
    TIMESTAMP = "timestamp"


class Owner(StrEnum):
    """Which system wins a conflict on a field; ``shared``: the last writer."""

    ERP = "erp"
    CRM = "crm"
    SHARED = "shared"


class OnInvalid(StrEnum):
    """What a field's invalid value does to its record (module docstring)."""

    QUARANTINE = "quarantine"
    DEAD_LETTER = "dead_letter"
    KEEP = "keep"


class Grain(StrEnum):
    """What one source row is: a whole entity, or one location's stock of a product."""

    ENTITY = "entity"
    LOCATION = "location"


CLEAN_RULES: Final = frozenset({"trim", "upper", "lower", "email", "phone", "vat", "country"})
REGION_RULES: Final = frozenset({"phone", "vat"})
"""Clean rules that read the record's country (``region``)."""
INFER_SOURCES: Final = frozenset({"vat", "phone"})
CONDITION_OPS: Final = frozenset({"equals", "not_equals", "in", "not_in", "is_null"})
LOCATION_BREAKDOWN: Final = "locations"
"""The array field holding the per-location breakdown of a ``grain: location`` entity."""

_CAST_KINDS: Final[Mapping[Cast, frozenset[str]]] = {
    Cast.STR: frozenset({"string"}),
    Cast.INT: frozenset({"int", "long"}),
    Cast.DECIMAL: frozenset({"decimal"}),
    Cast.BOOL: frozenset({"boolean"}),
    Cast.DATE: frozenset({"date"}),
    Cast.TIMESTAMP: frozenset({"timestamp-micros", "timestamp-millis"}),
}
_FLOW_KEYS: Final = frozenset(
    {
        "flow",
        "description",
        "source",
        "target",
        "crosswalk",
        "match_key",
        "grain",
        "filter",
        "soft_delete",
        "fields",
        "lines",
    }
)
_SOURCE_KEYS: Final = frozenset({"system", "schema", "table", "key", "entity_id"})
_LINES_KEYS: Final = frozenset({"target", "source", "filter", "fields"})
_LINES_SOURCE_KEYS: Final = frozenset({"table", "key", "parent", "order_by"})
_FIELD_KEYS: Final = frozenset(
    {
        "source",
        "value",
        "cast",
        "clean",
        "owner",
        "required",
        "default",
        "map",
        "round",
        "min",
        "max",
        "lookup",
        "known_sku",
        "region",
        "infer_from",
        "crosswalk",
        "fallback",
        "on_invalid",
        "doc",
    }
)

_EPOCH_DATE: Final = date(1970, 1, 1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_TRUE: Final = frozenset({"t", "true", "y", "yes", "1", "on"})
_FALSE: Final = frozenset({"f", "false", "n", "no", "0", "off"})


# ----------------------------------------------------------------------- conversions


def convert(cast: Cast, value: Any) -> Any:
    """Convert a decoded source value (see :mod:`cdc.envelope`) to ``cast``'s Python type.

    ``str`` -> :class:`str`; ``int`` -> :class:`int`; ``decimal`` ->
    :class:`~decimal.Decimal` (finite); ``bool`` -> :class:`bool`; ``date`` ->
    :class:`~datetime.date` (from a date, ISO text, or days since 1970-01-01 as Debezium
    sends them); ``timestamp`` -> UTC-aware :class:`~datetime.datetime` (from a datetime,
    ISO-8601 text as Debezium's ``ZonedTimestamp``, or microseconds since the epoch).
    None stays None.

    Raises:
        ValueError: the value cannot be converted.
        TypeError: the value has a type the cast does not take.
    """
    if value is None:
        return None
    return _CONVERTERS[cast](value)


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | uuid.UUID):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot make text of {type(value).__name__}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"{value} is not a whole number")
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(f"cannot make an integer of {type(value).__name__}")


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    try:
        if isinstance(value, Decimal | int):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))
        elif isinstance(value, str):
            number = Decimal(value.strip())
        else:
            raise TypeError(f"cannot make a decimal of {type(value).__name__}")
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a number") from exc
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"{value!r} is not a boolean")


def _to_date(value: Any) -> date:
    if isinstance(value, datetime):
        raise TypeError("a timestamp is not a date")
    if isinstance(value, date):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH_DATE + timedelta(days=value)
    if isinstance(value, str):
        return date.fromisoformat(value.strip())
    raise TypeError(f"cannot make a date of {type(value).__name__}")


def _to_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH + timedelta(microseconds=value)
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.strip())
    else:
        raise TypeError(f"cannot make a timestamp of {type(value).__name__}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_CONVERTERS: Final[Mapping[Cast, Any]] = {
    Cast.STR: _to_str,
    Cast.INT: _to_int,
    Cast.DECIMAL: _to_decimal,
    Cast.BOOL: _to_bool,
    Cast.DATE: _to_date,
    Cast.TIMESTAMP: _to_timestamp,
}


def converter(cast: Cast) -> Callable[[Any], Any]:
    """:func:`convert` for one cast, looked up once: for a value that is not None."""
    convert_one: Callable[[Any], Any] = _CONVERTERS[cast]
    return convert_one


def map_key(value: Any) -> str:
    """The key a source value is looked up by in a ``map:`` (YAML keys are read the same way)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


# ------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Condition:
    """A test on one source column: ``equals``, ``not_equals``, ``in``, ``not_in``, ``is_null``."""

    column: str
    op: str
    values: tuple[Any, ...]

    def holds(self, row: Mapping[str, Any]) -> bool:
        """Whether the condition is true of ``row`` (a missing column reads as null)."""
        value = row.get(self.column)
        if self.op == "is_null":
            return (value is None) is bool(self.values[0])
        if self.op == "equals":
            return bool(value == self.values[0])
        if self.op == "not_equals":
            return bool(value != self.values[0])
        if self.op == "in":
            return value in self.values
        return value not in self.values

    def __str__(self) -> str:
        shown = self.values[0] if self.op in {"equals", "not_equals", "is_null"} else self.values
        return f"{self.column} {self.op} {shown!r}"


@dataclass(frozen=True, slots=True)
class CrosswalkRef:
    """A reference field whose counterpart (the other system's id) the crosswalk fills."""

    entity: str
    counterpart: str


@dataclass(frozen=True, slots=True)
class Fallback:
    """Where a blank value is taken from: ``source``'s value looked up in ``lookup``."""

    source: str
    lookup: str


@dataclass(frozen=True, slots=True)
class FieldMap:
    """How one canonical field is made from a source row (see the module docstring).

    ``scale`` is the number of decimal places to round to and ``integer_digits`` how
    many digits the schema leaves before the decimal point (decimals only);
    ``minimum``/``maximum`` the allowed range; ``value_map`` is keyed by :func:`map_key`.
    """

    target: str
    cast: Cast
    source: str | None = None
    value: Any = None
    clean: tuple[str, ...] = ()
    owner: Owner | None = None
    required: bool = False
    default: Any = None
    value_map: Mapping[str, Any] | None = None
    scale: int | None = None
    integer_digits: int | None = None
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    lookup: str | None = None
    known_sku: bool = False
    region: str | None = None
    infer_from: Mapping[str, str] | None = None
    crosswalk: CrosswalkRef | None = None
    fallback: Fallback | None = None
    on_invalid: OnInvalid = OnInvalid.DEAD_LETTER


@dataclass(frozen=True, slots=True)
class LinesMap:
    """Nested records (order lines) taken from a child table's rows."""

    target: str
    table: str
    key: str
    parent: str
    order_by: str | None
    filter: tuple[Condition, ...]
    fields: tuple[FieldMap, ...]


@dataclass(frozen=True, slots=True)
class Flow:
    """One source table mapped to one canonical entity (one YAML file).

    ``soft_delete``: a row matching any condition is emitted as a delete.
    """

    name: str
    path: str
    system: str
    schema: str
    table: str
    key: str
    entity_id: str
    target: str
    crosswalk: str
    match_key: str | None
    grain: Grain
    filter: tuple[Condition, ...]
    soft_delete: tuple[Condition, ...]
    fields: tuple[FieldMap, ...]
    lines: LinesMap | None = None

    @property
    def id_field(self) -> str:
        """The canonical id field the source key fills: ``erp_id`` or ``crm_id``."""
        return f"{self.system}_id"

    @property
    def other_id_field(self) -> str:
        """The id field of the other system, filled by a mapping or the crosswalk."""
        return "crm_id" if self.system == "erp" else "erp_id"

    @property
    def raw_topic(self) -> str:
        """The raw change topic the flow reads (topic prefix = system name)."""
        return raw_topic(self.system, self.schema, self.table)

    @property
    def canonical_topic(self) -> str:
        """The canonical topic the flow writes."""
        return canonical_topic(self.target)

    def field(self, target: str) -> FieldMap | None:
        """Return the mapping of canonical field ``target``, or None if the flow lacks it."""
        return next((f for f in self.fields if f.target == target), None)


# --------------------------------------------------------------------------- parsing


class _Where:
    """Where a problem is, for error messages: file, flow and field."""

    def __init__(self, path: str, flow: str | None = None, field: str | None = None) -> None:
        self.path, self.flow, self.field = path, flow, field

    def at(self, field: str) -> _Where:
        return _Where(self.path, self.flow, field)

    def fail(self, problem: str) -> NoReturn:
        parts = [self.path]
        if self.flow:
            parts.append(f"flow {self.flow}")
        if self.field:
            parts.append(f"field {self.field}")
        raise ConfigError(": ".join([*parts, problem]))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate keys instead of keeping the last one."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _mapping(value: Any, what: str, where: _Where) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        where.fail(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _only(spec: Mapping[str, Any], allowed: frozenset[str], what: str, where: _Where) -> None:
    unknown = sorted(str(k) for k in spec.keys() - allowed)
    if unknown:
        where.fail(
            f"unknown {what} key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _name(spec: Mapping[str, Any], key: str, where: _Where) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value.strip():
        where.fail(f"{key!r} must be a non-empty string")
    return value.strip()


def _optional_name(spec: Mapping[str, Any], key: str, where: _Where) -> str | None:
    return None if spec.get(key) is None else _name(spec, key, where)


def _conditions(spec: Any, what: str, where: _Where) -> tuple[Condition, ...]:
    if spec is None:
        return ()
    conditions = []
    for column, test in _mapping(spec, what, where).items():
        test = _mapping(test, f"{what} on {column!r}", where)
        if len(test) != 1 or next(iter(test)) not in CONDITION_OPS:
            where.fail(
                f"{what} on {column!r} needs exactly one of {', '.join(sorted(CONDITION_OPS))}"
            )
        op, operand = next(iter(test.items()))
        if op in {"in", "not_in"}:
            if not isinstance(operand, list) or not operand:
                where.fail(f"{what} on {column!r}: {op} needs a non-empty list")
            values = tuple(operand)
        elif op == "is_null" and not isinstance(operand, bool):
            where.fail(f"{what} on {column!r}: is_null needs true or false")
        else:
            values = (operand,)
        conditions.append(Condition(str(column), op, values))
    return tuple(conditions)


def _decimal_bound(spec: Mapping[str, Any], key: str, where: _Where) -> Decimal | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        where.fail(f"{key} must be a number")
    try:
        return _to_decimal(value)
    except ValueError:
        where.fail(f"{key} must be a number, got {value!r}")


def _checked_value(cast: Cast, value: Any, what: str, where: _Where) -> Any:
    try:
        return convert(cast, value)
    except (TypeError, ValueError) as exc:
        where.fail(f"{what} {value!r} does not convert with cast {cast.value}: {exc}")


def _cast(spec: Mapping[str, Any], ftype: FieldType, where: _Where) -> Cast:
    raw = spec.get("cast")
    if raw not in {c.value for c in Cast}:
        where.fail(f"unknown cast {raw!r}; known: {', '.join(c.value for c in Cast)}")
    cast = Cast(raw)
    if ftype.kind not in _CAST_KINDS[cast]:
        where.fail(f"cast {cast.value} does not fit the schema type {ftype.kind}")
    return cast


def _clean_rules(spec: Mapping[str, Any], cast: Cast, where: _Where) -> tuple[str, ...]:
    clean = spec.get("clean", ())
    clean = (clean,) if isinstance(clean, str) else clean
    if not isinstance(clean, list | tuple) or not all(isinstance(c, str) for c in clean):
        where.fail("clean must be a rule name or a list of them")
    for rule in clean:
        if rule not in CLEAN_RULES:
            where.fail(f"unknown clean rule {rule!r}; known: {', '.join(sorted(CLEAN_RULES))}")
    if clean and cast is not Cast.STR:
        where.fail("clean rules apply to text: use cast str")
    return tuple(clean)


def _owner(spec: Mapping[str, Any], target: str, where: _Where) -> Owner | None:
    raw = spec.get("owner")
    if target in ID_FIELDS:
        if raw is not None:
            where.fail("ids have no owner")
        return None
    if raw not in {o.value for o in Owner}:
        where.fail(f"owner must be one of {', '.join(o.value for o in Owner)}, got {raw!r}")
    return Owner(raw)


def _flag(spec: Mapping[str, Any], key: str, where: _Where) -> bool:
    flag = spec.get(key, False)
    if not isinstance(flag, bool):
        where.fail(f"{key} must be true or false")
    return flag


def _value_map(spec: Mapping[str, Any], cast: Cast, where: _Where) -> Mapping[str, Any] | None:
    if "map" not in spec:
        return None
    raw = _mapping(spec["map"], "map", where)
    if not raw:
        where.fail("map must not be empty")
    return MappingProxyType(
        {map_key(k): _checked_value(cast, v, "map value", where) for k, v in raw.items()}
    )


def _decimal_places(
    spec: Mapping[str, Any], cast: Cast, ftype: FieldType, where: _Where
) -> tuple[int | None, int | None]:
    """Return ``(scale to round to, integer digits allowed)`` of a decimal field."""
    if cast is not Cast.DECIMAL:
        if "round" in spec:
            where.fail("round applies to decimals")
        return None, None
    schema_scale = ftype.scale or 0
    integer_digits = None if ftype.precision is None else ftype.precision - schema_scale
    scale = spec.get("round", schema_scale)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
        where.fail("round must be a whole number of decimal places")
    if scale > schema_scale:
        where.fail(f"round {scale} exceeds the schema's scale {schema_scale}")
    return scale, integer_digits


def _infer_from(
    spec: Mapping[str, Any], clean: tuple[str, ...], where: _Where
) -> Mapping[str, str] | None:
    if "infer_from" not in spec:
        return None
    if "country" not in clean:
        where.fail("infer_from applies to country fields")
    raw = _mapping(spec["infer_from"], "infer_from", where)
    if set(raw) - INFER_SOURCES or not all(isinstance(v, str) for v in raw.values()):
        where.fail(f"infer_from maps {' and '.join(sorted(INFER_SOURCES))} to field names")
    return MappingProxyType(dict(raw))


def _crosswalk_ref(
    spec: Mapping[str, Any], target: str, types: Mapping[str, FieldType], where: _Where
) -> CrosswalkRef | None:
    if "crosswalk" not in spec:
        return None
    raw = _mapping(spec["crosswalk"], "crosswalk", where)
    _only(raw, frozenset({"entity", "counterpart"}), "crosswalk", where)
    entity, counterpart = _name(raw, "entity", where), _name(raw, "counterpart", where)
    if entity not in CANONICAL_ENTITIES:
        where.fail(f"crosswalk entity {entity!r} is not a canonical entity")
    other = types.get(counterpart)
    if other is None or other.kind != "string" or counterpart == target:
        where.fail(f"crosswalk counterpart {counterpart!r} is not another text field")
    return CrosswalkRef(entity, counterpart)


def _fallback(spec: Mapping[str, Any], where: _Where) -> Fallback | None:
    if "fallback" not in spec:
        return None
    raw = _mapping(spec["fallback"], "fallback", where)
    _only(raw, frozenset({"source", "lookup"}), "fallback", where)
    return Fallback(_name(raw, "source", where), _name(raw, "lookup", where))


def _on_invalid(
    spec: Mapping[str, Any], cast: Cast, required: bool, quarantine: bool, where: _Where
) -> OnInvalid:
    """The field's ``on_invalid``; ``quarantine``: whether its record can leave it out.

    Ids and references (``crosswalk``) are links, not data to leave out: dead letter
    unless the mapping says otherwise.
    """
    raw = spec.get("on_invalid")
    if raw is None and (where.field in ID_FIELDS or "crosswalk" in spec):
        return OnInvalid.DEAD_LETTER
    if raw is None:
        return OnInvalid.QUARANTINE if quarantine and not required else OnInvalid.DEAD_LETTER
    if raw not in {o.value for o in OnInvalid}:
        where.fail(f"on_invalid must be one of {', '.join(o.value for o in OnInvalid)}")
    choice = OnInvalid(raw)
    if choice is OnInvalid.QUARANTINE and required:
        where.fail(
            "a required field cannot be left out: on_invalid quarantine needs an optional field"
        )
    if choice is OnInvalid.QUARANTINE and not quarantine:
        where.fail(
            f"on_invalid quarantine needs a top-level field of a schema with {QUARANTINED_FIELDS}"
        )
    if choice is OnInvalid.KEEP and cast is not Cast.STR:
        where.fail("on_invalid keep applies to text: use cast str")
    return choice


def _field(
    target: str,
    spec: Any,
    types: Mapping[str, FieldType],
    entity: str,
    where: _Where,
    *,
    quarantine: bool,
) -> FieldMap:
    spec = _mapping(spec, "a field mapping", where)
    _only(spec, _FIELD_KEYS, "field", where)
    if target in METADATA_FIELDS:
        where.fail("is event metadata, set by the transform, not mapped")
    ftype = types.get(target)
    if ftype is None:
        where.fail(f"is not a field of the canonical {entity} schema")
    cast = _cast(spec, ftype, where)
    if ("source" in spec) == ("value" in spec):
        where.fail("needs exactly one of 'source' (a column) and 'value' (a constant)")
    clean = _clean_rules(spec, cast, where)
    scale, integer_digits = _decimal_places(spec, cast, ftype, where)
    minimum = _decimal_bound(spec, "min", where)
    maximum = _decimal_bound(spec, "max", where)
    if (minimum is not None or maximum is not None) and cast not in {Cast.INT, Cast.DECIMAL}:
        where.fail("min and max apply to int and decimal fields")
    known_sku = _flag(spec, "known_sku", where)
    lookup = _optional_name(spec, "lookup", where)
    crosswalk = _crosswalk_ref(spec, target, types, where)
    fallback = _fallback(spec, where)
    if cast is not Cast.STR and (
        known_sku or lookup is not None or crosswalk is not None or fallback is not None
    ):
        where.fail("known_sku, lookup, crosswalk and fallback work on text: use cast str")
    region = _optional_name(spec, "region", where)
    if region is not None and not REGION_RULES & set(clean):
        where.fail("region applies to phone and vat fields")
    required = _flag(spec, "required", where)
    return FieldMap(
        target=target,
        cast=cast,
        source=_name(spec, "source", where) if "source" in spec else None,
        value=_checked_value(cast, spec["value"], "value", where) if "value" in spec else None,
        clean=clean,
        owner=_owner(spec, target, where),
        required=required,
        default=_checked_value(cast, spec.get("default"), "default", where),
        value_map=_value_map(spec, cast, where),
        scale=scale,
        integer_digits=integer_digits,
        minimum=minimum,
        maximum=maximum,
        lookup=lookup,
        known_sku=known_sku,
        region=region,
        infer_from=_infer_from(spec, clean, where),
        crosswalk=crosswalk,
        fallback=fallback,
        on_invalid=_on_invalid(spec, cast, required, quarantine, where),
    )


def _fields(
    spec: Any,
    types: Mapping[str, FieldType],
    entity: str,
    where: _Where,
    *,
    reserved: Iterable[str] = (),
    quarantine: bool = False,
) -> tuple[FieldMap, ...]:
    spec = _mapping(spec, "fields", where)
    if not spec:
        where.fail("fields must not be empty")
    fields = tuple(
        _field(str(target), fspec, types, entity, where.at(str(target)), quarantine=quarantine)
        for target, fspec in spec.items()
    )
    by_target = {f.target: f for f in fields}
    for name in reserved:
        if name in by_target:
            where.at(name).fail("is set from the source key, not mapped")
    for f in fields:
        here = where.at(f.target)
        if f.region is not None:
            ref = by_target.get(f.region)
            if ref is None or "country" not in ref.clean:
                here.fail(f"region {f.region!r} must be a field of this flow with clean: country")
        for kind, name in (f.infer_from or {}).items():
            ref = by_target.get(name)
            if ref is None:
                here.fail(f"infer_from {kind}: {name!r} is not a field of this flow")
            if kind == "phone" and "phone" not in ref.clean:
                here.fail(f"infer_from phone: {name!r} must have clean: phone")
        if f.crosswalk is not None and f.crosswalk.counterpart in by_target:
            counterpart = by_target[f.crosswalk.counterpart]
            if counterpart.crosswalk is not None:
                here.fail("two fields cannot be each other's crosswalk counterpart")
    return fields


def _lines(
    spec: Any, system: str, types: Mapping[str, FieldType], entity: str, where: _Where
) -> LinesMap:
    spec = _mapping(spec, "lines", where)
    _only(spec, _LINES_KEYS, "lines", where)
    target = _optional_name(spec, "target", where) or "lines"
    ftype = types.get(target)
    if ftype is None or ftype.kind != "array" or ftype.items is None:
        where.fail(f"lines target {target!r} is not an array of records in the {entity} schema")
    source = _mapping(spec.get("source"), "lines source", where)
    _only(source, _LINES_SOURCE_KEYS, "lines source", where)
    table, key, parent = (_name(source, k, where) for k in ("table", "key", "parent"))
    return LinesMap(
        target=target,
        table=table,
        key=key,
        parent=parent,
        order_by=_optional_name(source, "order_by", where),
        filter=_conditions(spec.get("filter"), "lines filter", where),
        fields=_fields(
            spec.get("fields"),
            ftype.items,
            f"{entity} {target}",
            where,
            reserved=(f"{system}_id",),
        ),
    )


def _flow(document: Any, name: str, path: str) -> Flow:
    where = _Where(path)
    spec = _mapping(document, "a flow file", where)
    declared = spec.get("flow", name)
    if declared != name:
        where.fail(f"flow name {declared!r} must match the file name {name!r}")
    where = _Where(path, name)
    _only(spec, _FLOW_KEYS, "flow", where)
    source = _mapping(spec.get("source"), "source", where)
    _only(source, _SOURCE_KEYS, "source", where)
    system = _name(source, "system", where)
    if system not in SYSTEMS:
        where.fail(f"source system must be one of {', '.join(SYSTEMS)}, got {system!r}")
    table = _name(source, "table", where)
    key = _name(source, "key", where)
    schema = _optional_name(source, "schema", where) or "public"
    target = spec.get("target")
    if target not in CANONICAL_ENTITIES:
        where.fail(f"unknown target entity {target!r}; known: {', '.join(CANONICAL_ENTITIES)}")
    crosswalk = spec.get("crosswalk", target)
    if crosswalk not in CANONICAL_ENTITIES:
        where.fail(f"crosswalk entity {crosswalk!r} is not a canonical entity")
    raw_grain = spec.get("grain", Grain.ENTITY.value)
    if raw_grain not in {g.value for g in Grain}:
        where.fail(f"grain must be one of {', '.join(g.value for g in Grain)}")
    grain = Grain(raw_grain)

    types: Mapping[str, FieldType] = field_types(target)
    if grain is Grain.LOCATION:
        breakdown = types.get(LOCATION_BREAKDOWN)
        if breakdown is None or breakdown.items is None:
            where.fail(f"grain location needs a {LOCATION_BREAKDOWN!r} array in the schema")
        types = {**breakdown.items, **types}
        if "lines" in spec:
            where.fail("grain location flows have no lines")
    fields = _fields(
        spec.get("fields"),
        types,
        target,
        where,
        reserved=(f"{system}_id",),
        quarantine=QUARANTINED_FIELDS in field_types(target),
    )
    match_key = _optional_name(spec, "match_key", where)
    if match_key is not None and match_key not in {f.target for f in fields}:
        where.fail(f"match_key {match_key!r} is not a mapped field")
    lines = _lines(spec["lines"], system, types, target, where) if "lines" in spec else None
    return Flow(
        name=name,
        path=path,
        system=system,
        schema=schema,
        table=table,
        key=key,
        entity_id=_optional_name(source, "entity_id", where) or key,
        target=target,
        crosswalk=crosswalk,
        match_key=match_key,
        grain=grain,
        filter=_conditions(spec.get("filter"), "filter", where),
        soft_delete=_conditions(spec.get("soft_delete"), "soft_delete", where),
        fields=fields,
        lines=lines,
    )


def load_flow(path: Path | Traversable) -> Flow:
    """Read and check one flow file; its name is the file name without ``.yaml``.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or breaks a rule of the
            module docstring; the message names the file, flow and field.
    """
    name = path.name.removesuffix(".yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read mapping: {exc}") from exc
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"{path}: flow {name}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return _flow(document, name, str(path))


def _owners(flow: Flow) -> Iterable[tuple[str, Owner]]:
    for f in flow.fields:
        if f.owner is not None:
            yield f.target, f.owner
    if flow.lines is not None:
        for f in flow.lines.fields:
            if f.owner is not None:
                yield f"{flow.lines.target}.{f.target}", f.owner


def load_mappings(directory: Path | Traversable | None = None) -> dict[str, Flow]:
    """Load and check every ``*.yaml`` flow in ``directory`` (default: the packaged ones).

    Besides each file's own rules: two flows may not map the same source table to the
    same entity, and flows of one entity must agree on the owner of every field.

    Returns:
        The flows by name, in file-name order.

    Raises:
        ConfigError: the directory has no flow files, or any rule is broken.
    """
    root = directory if directory is not None else resources.files("schemas") / "mappings"
    paths = sorted(
        (p for p in root.iterdir() if p.name.endswith(".yaml") and p.is_file()),
        key=lambda p: p.name,
    )
    if not paths:
        raise ConfigError(f"{root}: no mapping files (*.yaml)")
    flows: dict[str, Flow] = {}
    routes: dict[tuple[str, str, str, str], str] = {}
    owners: dict[tuple[str, str], tuple[Owner, str]] = {}
    for path in paths:
        flow = load_flow(path)
        route = (flow.system, flow.schema, flow.table, flow.target)
        if route in routes:
            raise ConfigError(
                f"{flow.path}: flow {flow.name}: maps {flow.system}.{flow.table} to"
                f" {flow.target} like flow {routes[route]}"
            )
        routes[route] = flow.name
        for field, owner in _owners(flow):
            known = owners.setdefault((flow.target, field), (owner, flow.name))
            if known[0] is not owner:
                raise ConfigError(
                    f"{flow.path}: flow {flow.name}: field {field}: owner {owner.value}"
                    f" disagrees with flow {known[1]} ({known[0].value})"
                )
        flows[flow.name] = flow
    return flows


def ownership(flows: Mapping[str, Flow], entity: str) -> dict[str, Owner]:
    """Return the owner of each of ``entity``'s mapped fields (nested: ``lines.sku``)."""
    result: dict[str, Owner] = {}
    for flow in flows.values():
        if flow.target == entity:
            result.update(_owners(flow))
    return result


def flows_for_table(flows: Mapping[str, Flow], system: str, table: str) -> tuple[Flow, ...]:
    """Return the flows reading ``system``'s ``table`` (as entity rows, not as lines)."""
    return tuple(f for f in flows.values() if f.system == system and f.table == table)
