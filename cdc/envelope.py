"""Debezium-compatible change events in Avro: key and value schemas, and their records.

The raw change topics (DESIGN.md §4) carry what Debezium's PostgreSQL connector, run with
Confluent's ``AvroConverter``, would put there, so a consumer written for Debezium reads
them unchanged:

- key: record ``<server>.<schema>.<table>.Key`` holding the replica-identity (primary key)
  columns;
- value: record ``Envelope`` in namespace ``<server>.<schema>.<table>`` with fields
  ``before`` and ``after`` (nullable record ``Value``, one field per column), ``source``
  (record ``io.debezium.connector.postgresql.Source``), ``transaction`` (nullable record
  ``event.block``), ``op``, ``ts_ms``, ``ts_us`` and ``ts_ns``;
- transaction metadata topic: ``io.debezium.connector.common.TransactionMetadataKey`` and
  ``...TransactionMetadataValue`` (status ``BEGIN``/``END``).

Schemas keep the properties ``AvroConverter`` writes (``connect.name``,
``connect.version``, ``connect.parameters``, ``connect.type``), so tools that map Avro
back to Kafka Connect types see the same semantic types as with Debezium.

Column types map as Debezium's defaults do (``time.precision.mode=adaptive``,
``binary.handling.mode=bytes``), except where noted:

================================  ============================================================
PostgreSQL                        Avro (``connect.name``)
================================  ============================================================
bool                              boolean
int2                              int (``connect.type`` int16)
int4                              int
int8, oid, xid, xid8, cid         long
float4 / float8                   float / double
numeric(p, s), 0 <= s <= p        bytes, logicalType decimal (``...connect.data.Decimal``)
numeric without (p, s)            string, plain decimal notation (*deviation*, see below)
text, varchar, bpchar, char,      string
name, citext
uuid                              string (``io.debezium.data.Uuid``)
json, jsonb                       string (``io.debezium.data.Json``)
xml                               string (``io.debezium.data.Xml``)
bytea                             bytes
date                              int, days since 1970-01-01 (``io.debezium.time.Date``)
timestamp                         long, µs since epoch (``io.debezium.time.MicroTimestamp``)
timestamptz                       string, ISO-8601 in UTC (``io.debezium.time.ZonedTimestamp``)
time                              long, µs since midnight (``io.debezium.time.MicroTime``)
timetz                            string, ISO-8601 in UTC (``io.debezium.time.ZonedTime``)
``_<elem>`` / ``<elem>[]``        array of nullable <elem> when <elem> is in this table
anything else (interval, money,   string: PostgreSQL's text form (*deviation* for interval,
inet, enums, domains, arrays of   money and bit, which Debezium maps to MicroDuration,
unknown elements, ...)            Decimal and Bits)
================================  ============================================================

Deviations from Debezium, on purpose:

- ``numeric`` without declared precision and scale is a string in plain decimal notation
  (``"12.50"``, ``"NaN"``), which is what Debezium's ``decimal.handling.mode=string``
  produces, instead of the ``io.debezium.data.VariableScaleDecimal`` record that its
  default ``precise`` mode uses for such columns. ``numeric(p, s)`` keeps ``precise``.
  ``NaN`` and infinities in a ``numeric(p, s)`` column have no decimal form: null when
  the column is nullable, a ValidationError otherwise.
- ``source`` has one more field, ``origin`` (nullable string): the replication origin
  name of the transaction, null for ordinary sessions. Readers that do not know it skip it.
- ``interval``, ``money`` and ``bit``/``varbit`` are strings in PostgreSQL's text form.
- The value schema can be *evolved* from the previously registered one (``previous=``):
  a column the previous schema did not have, or had as nullable, is nullable with
  default null even if it is ``NOT NULL`` now, so every new schema stays BACKWARD
  compatible with the last one (Debezium would emit a required field and let the
  registry reject it).

Values the source did not send (unchanged TOAST): Debezium's placeholder convention
(``unavailable.value.placeholder``, default ``__debezium_unavailable_value``) — the
placeholder string in string columns, its UTF-8 bytes in bytes columns, a one-element
list holding it in arrays of strings; null in other nullable columns (a consumer cannot
tell that null from a real one: those types are hardly ever TOASTed); a
:class:`~schemas.errors.ValidationError` in other ``NOT NULL`` columns.

A ``NOT NULL`` column with no value (``before`` of a delete under ``REPLICA IDENTITY
DEFAULT`` carries only the key) gets the type's neutral value (0, ``""``, epoch, ...),
as Debezium does.

The module is pure: no I/O, no clock. Records are plain dicts ready for
:mod:`fastavro` (and so for :class:`schemas.serde.AvroSerde`).
"""

from __future__ import annotations

import copy
import enum
import json
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation
from functools import lru_cache
from typing import Any, Final, Literal, TypeAlias, get_args

from schemas.errors import ConfigError, ValidationError

__all__ = [
    "CONNECTOR",
    "ENVELOPE_SCHEMA_VERSION",
    "OPS",
    "SNAPSHOT_VALUES",
    "SOURCE_SCHEMA_NAME",
    "TRANSACTION_KEY_SCHEMA_NAME",
    "TRANSACTION_VALUE_SCHEMA_NAME",
    "UNAVAILABLE_VALUE_PLACEHOLDER",
    "UNCHANGED_TOAST",
    "ColumnEncoding",
    "ColumnShape",
    "Op",
    "Snapshot",
    "SourceInfo",
    "TableShape",
    "TransactionBlock",
    "adjust_name",
    "column_encodings",
    "data_collection",
    "envelope_record",
    "key_record",
    "key_schema",
    "source_sequence",
    "transaction_begin_record",
    "transaction_end_record",
    "transaction_id",
    "transaction_key_record",
    "transaction_key_schema",
    "transaction_value_schema",
    "value_schema",
]

CONNECTOR: Final = "postgresql"
"""``source.connector``, as Debezium's PostgreSQL connector sets it."""

UNAVAILABLE_VALUE_PLACEHOLDER: Final = "__debezium_unavailable_value"
"""Debezium's default ``unavailable.value.placeholder`` for unchanged TOASTed values."""

ENVELOPE_SCHEMA_VERSION: Final = 2
"""``connect.version`` of the envelope (the one with ``ts_us``/``ts_ns``)."""

SOURCE_SCHEMA_NAME: Final = "io.debezium.connector.postgresql.Source"
TRANSACTION_BLOCK_SCHEMA_NAME: Final = "event.block"
TRANSACTION_COLLECTION_SCHEMA_NAME: Final = "event.collection"
TRANSACTION_KEY_SCHEMA_NAME: Final = "io.debezium.connector.common.TransactionMetadataKey"
TRANSACTION_VALUE_SCHEMA_NAME: Final = "io.debezium.connector.common.TransactionMetadataValue"

Op: TypeAlias = Literal["c", "u", "d", "r", "t", "m"]
"""Debezium's ``op``: create, update, delete, read (snapshot), truncate, message."""

Snapshot: TypeAlias = Literal["true", "false", "last", "incremental"]
"""Debezium's ``source.snapshot``."""

OPS: Final[tuple[str, ...]] = get_args(Op)
SNAPSHOT_VALUES: Final[tuple[str, ...]] = ("true", "last", "false", "incremental")

_INT16: Final = (-(2**15), 2**15 - 1)
_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)

_EPOCH_DATE: Final = date(1970, 1, 1)
_EPOCH: Final = datetime(1970, 1, 1)  # naive: timestamp columns are wall-clock values
_MICROSECOND: Final = timedelta(microseconds=1)
_SOME_DAY: Final = date(2000, 1, 1)


class _Marker(enum.Enum):
    UNCHANGED_TOAST = "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _Marker.UNCHANGED_TOAST
"""Default marker for "the source did not send this value" (unchanged TOAST).

Callers whose decoder has its own marker object pass it as ``unchanged_toast=``; the
value is compared by identity.
"""

_MISSING: Final = object()


# --------------------------------------------------------------------------- shapes


_NAME_CHAR: Final = re.compile(r"[A-Za-z0-9_]")


def adjust_name(name: str) -> str:
    """Return ``name`` as a legal Avro name, the way Debezium's ``avro`` name adjuster does.

    Every character outside ``[A-Za-z0-9_]`` becomes ``_``; so does a leading digit.
    Names that are already legal are returned unchanged.
    """
    chars = [c if _NAME_CHAR.fullmatch(c) else "_" for c in name]
    if chars and chars[0].isdigit():
        chars[0] = "_"
    return "".join(chars) or "_"


@dataclass(frozen=True, slots=True)
class ColumnShape:
    """One column of a captured table, as the schema builder needs it.

    Attributes:
        name: the column name in PostgreSQL; the Avro field name is
            :func:`adjust_name` of it.
        pg_type: the type name, as ``pg_type.typname`` has it (``int8``, ``numeric``,
            ``timestamptz``, ``_text``) or in SQL spelling (``bigint``, ``text[]``).
        nullable: false for ``NOT NULL`` columns.
        is_key: part of the replica identity (primary key), so part of the message key.
        numeric_scale: for ``numeric``: the declared scale; for ``timestamptz``/``timetz``:
            the declared fractional-seconds precision, which fixes the number of
            fraction digits in the ISO string (none declared: as many as needed).
        numeric_precision: for ``numeric``: the declared precision.
    """

    name: str
    pg_type: str
    nullable: bool = True
    is_key: bool = False
    numeric_scale: int | None = None
    numeric_precision: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("column name must not be empty")
        if not self.pg_type.strip():
            raise ConfigError(f"column {self.name!r} has no type")


@dataclass(frozen=True, slots=True)
class TableShape:
    """A captured table: where it lives and its columns in ``attnum`` order.

    Attributes:
        server: the logical server name, i.e. the system (``erp`` or ``crm``); Debezium's
            ``topic.prefix``. First part of the schema namespace.
        schema: the PostgreSQL schema (``public``).
        table: the table name.
        columns: the columns, in table order; that order is the Avro field order.

    Raises:
        ConfigError: empty names, duplicate columns, or two columns whose Avro field
            names collide after :func:`adjust_name`.
    """

    server: str
    schema: str
    table: str
    columns: tuple[ColumnShape, ...]
    _hash: int = field(init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        # Shapes key the compiled-converter cache on every event: hash them once.
        return self._hash

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_hash", hash((self.server, self.schema, self.table, self.columns))
        )
        for what, value in (("server", self.server), ("schema", self.schema)):
            if not value:
                raise ConfigError(f"table shape needs a {what} name")
        if not self.table:
            raise ConfigError("table shape needs a table name")
        seen: dict[str, str] = {}
        for column in self.columns:
            field = adjust_name(column.name)
            if field in seen:
                raise ConfigError(
                    f"{self.schema}.{self.table}: columns {seen[field]!r} and {column.name!r}"
                    f" both map to Avro field {field!r}"
                )
            seen[field] = column.name

    @property
    def namespace(self) -> str:
        """Avro namespace of the table's records: ``<server>.<schema>.<table>``."""
        return ".".join(adjust_name(part) for part in (self.server, self.schema, self.table))

    @property
    def key_columns(self) -> tuple[ColumnShape, ...]:
        """The replica-identity columns, in table order (empty: the table has no key)."""
        return tuple(column for column in self.columns if column.is_key)


def data_collection(shape: TableShape) -> str:
    """Return Debezium's data-collection name of a table: ``<schema>.<table>``."""
    return f"{shape.schema}.{shape.table}"


# ---------------------------------------------------------------------- type mapping


class _UnrepresentableError(Exception):
    """The value exists but the Avro type cannot hold it (``NaN`` in a decimal)."""


@dataclass(frozen=True, slots=True)
class _Mapping:
    """How one PostgreSQL type becomes Avro.

    ``avro`` is the non-null Avro type (JSON form, shared: deep-copy before handing out);
    ``convert`` turns a non-null Python value into its Avro datum (raising ``TypeError``,
    ``ValueError``, ``OverflowError`` or ``ArithmeticError`` when it cannot, and
    :class:`_UnrepresentableError` when the value has no Avro form); ``fallback`` is what a
    ``NOT NULL`` column without a value carries; ``placeholder`` the datum for an
    unchanged TOASTed value, or ``_MISSING`` when the type has none.
    """

    avro: Any
    convert: Callable[[Any], Any]
    fallback: Any
    placeholder: Any = _MISSING


def _semantic(avro_type: str, connect_name: str) -> dict[str, Any]:
    return {"type": avro_type, "connect.version": 1, "connect.name": connect_name}


def _type_error(expected: str, value: object) -> TypeError:
    return TypeError(f"expected {expected}, got {type(value).__name__} {value!r:.80}")


def _int_converter(bounds: tuple[int, int], label: str) -> Callable[[Any], int]:
    low, high = bounds

    def convert(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error("int", value)
        if not low <= value <= high:
            raise OverflowError(f"{value} does not fit {label}")
        return value

    return convert


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error("bool", value)
    return value


def _to_double(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise _type_error("float", value)
    return float(value)


_FLOAT32: Final = struct.Struct("<f")


def _to_float32(value: Any) -> float:
    # Round to what an Avro float holds, so a record compares equal to its decoded self.
    result: float = _FLOAT32.unpack(_FLOAT32.pack(_to_double(value)))[0]
    return result


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error("str", value)
    return value


def _to_text_any(value: Any) -> str:
    """Text form of a value of a type this module does not know (normally already a str)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, separators=(",", ":"))
    if isinstance(value, bytes | bytearray | memoryview):
        raise _type_error("str", value)
    return str(value)


def _to_plain_decimal_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise _type_error("Decimal", value)
    if isinstance(value, str):
        return value
    return format(Decimal(value), "f")


def _to_uuid_text(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return str(uuid.UUID(value))
    raise _type_error("UUID", value)


def _to_json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raise _type_error("JSON text", value)
    return json.dumps(value, separators=(",", ":"))


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise _type_error("bytes", value)


def _decimal_converter(precision: int, scale: int) -> Callable[[Any], Decimal]:
    quantum = Decimal(1).scaleb(-scale)
    # prec=precision makes quantize() fail when the value needs more digits; trapping
    # Inexact makes it fail instead of rounding away fraction digits.
    context = Context(prec=precision, traps=[InvalidOperation, Inexact])

    def convert(value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise _type_error("Decimal", value)
        number = Decimal(value)
        if not number.is_finite():
            raise _UnrepresentableError(f"{number} has no numeric({precision},{scale}) form")
        return number.quantize(quantum, context=context)

    return convert


def _to_epoch_day(value: Any) -> int:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise _type_error("date", value)
    return (value - _EPOCH_DATE).days


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _to_epoch_micros(value: Any) -> int:
    if not isinstance(value, datetime):
        raise _type_error("datetime", value)
    return (_naive_utc(value) - _EPOCH) // _MICROSECOND


def _fraction(microseconds: int, width: int | None) -> str:
    if width is None:  # as many digits as needed, like ISO_OFFSET_DATE_TIME
        return f".{microseconds:06d}".rstrip("0").rstrip(".")
    width = min(width, 9)
    return f".{microseconds:06d}000"[: width + 1] if width > 0 else ""


def _zoned_timestamp_converter(width: int | None) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if isinstance(value, str):  # already text (e.g. "infinity")
            return value
        if not isinstance(value, datetime):
            raise _type_error("datetime", value)
        utc = _naive_utc(value)  # naive timestamps are taken as UTC
        return (
            f"{utc.date().isoformat()}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
            f"{_fraction(utc.microsecond, width)}Z"
        )

    return convert


def _to_micro_time(value: Any) -> int:
    if not isinstance(value, time):
        raise _type_error("time", value)
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


def _zoned_time_converter(width: int | None) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if isinstance(value, str):
            return value
        if not isinstance(value, time):
            raise _type_error("time", value)
        wall = datetime.combine(_SOME_DAY, value.replace(tzinfo=None))
        offset = value.utcoffset() or timedelta(0)
        utc = (wall - offset).time()
        return (
            f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}{_fraction(utc.microsecond, width)}Z"
        )

    return convert


_TEXT_TYPES: Final = frozenset({"text", "varchar", "bpchar", "char", "name", "citext"})

_ALIASES: Final = {
    "smallint": "int2",
    "smallserial": "int2",
    "integer": "int4",
    "int": "int4",
    "serial": "int4",
    "bigint": "int8",
    "bigserial": "int8",
    "real": "float4",
    "double precision": "float8",
    "boolean": "bool",
    "decimal": "numeric",
    "character varying": "varchar",
    "character": "bpchar",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "time without time zone": "time",
    "time with time zone": "timetz",
}

_MODIFIER: Final = re.compile(r"\([^)]*\)")


def _normalize_type(pg_type: str) -> tuple[str, bool]:
    """Return ``(base type name, is_array)`` for a type as catalogs or SQL spell it."""
    name = pg_type.strip().lower()
    if name.startswith("pg_catalog."):
        name = name[len("pg_catalog.") :]
    name = name.replace('"', "")
    is_array = False
    if name.endswith("[]"):
        is_array = True
        name = name.rstrip("[] ")
    elif name.startswith("_"):
        is_array = True
        name = name[1:]
    name = " ".join(_MODIFIER.sub("", name).split())
    return _ALIASES.get(name, name), is_array


_UNKNOWN: Final = _Mapping(
    avro="string",
    convert=_to_text_any,
    fallback="",
    placeholder=UNAVAILABLE_VALUE_PLACEHOLDER,
)


def _scalar_mapping(base: str, column: ColumnShape) -> _Mapping | None:
    """Return the mapping of a non-array type, or None when this module does not know it."""
    simple: dict[str, _Mapping] = {
        "bool": _Mapping("boolean", _to_bool, False),
        "int2": _Mapping(
            {"type": "int", "connect.type": "int16"}, _int_converter(_INT16, "int2"), 0
        ),
        "int4": _Mapping("int", _int_converter(_INT32, "int4"), 0),
        "float4": _Mapping("float", _to_float32, 0.0),
        "float8": _Mapping("double", _to_double, 0.0),
        "uuid": _Mapping(
            _semantic("string", "io.debezium.data.Uuid"),
            _to_uuid_text,
            "00000000-0000-0000-0000-000000000000",
        ),
        "bytea": _Mapping("bytes", _to_bytes, b"", UNAVAILABLE_VALUE_PLACEHOLDER.encode()),
        "date": _Mapping(_semantic("int", "io.debezium.time.Date"), _to_epoch_day, 0),
        "timestamp": _Mapping(
            _semantic("long", "io.debezium.time.MicroTimestamp"), _to_epoch_micros, 0
        ),
        "time": _Mapping(_semantic("long", "io.debezium.time.MicroTime"), _to_micro_time, 0),
    }
    if base in simple:
        return simple[base]
    if base in {"int8", "oid", "xid", "xid8", "cid"}:
        return _Mapping("long", _int_converter(_INT64, base), 0)
    if base in _TEXT_TYPES:
        return _Mapping("string", _to_str, "", UNAVAILABLE_VALUE_PLACEHOLDER)
    if base in {"json", "jsonb"}:
        return _Mapping(
            _semantic("string", "io.debezium.data.Json"),
            _to_json_text,
            "{}",
            UNAVAILABLE_VALUE_PLACEHOLDER,
        )
    if base == "xml":
        return _Mapping(
            _semantic("string", "io.debezium.data.Xml"),
            _to_str,
            "",
            UNAVAILABLE_VALUE_PLACEHOLDER,
        )
    if base == "timestamptz":
        convert = _zoned_timestamp_converter(column.numeric_scale)
        return _Mapping(
            _semantic("string", "io.debezium.time.ZonedTimestamp"),
            convert,
            convert(datetime(1970, 1, 1, tzinfo=UTC)),
        )
    if base == "timetz":
        convert = _zoned_time_converter(column.numeric_scale)
        return _Mapping(
            _semantic("string", "io.debezium.time.ZonedTime"),
            convert,
            convert(time(0, tzinfo=UTC)),
        )
    if base == "numeric":
        return _numeric_mapping(column.numeric_precision, column.numeric_scale)
    return None


def _numeric_mapping(precision: int | None, scale: int | None) -> _Mapping:
    if precision is not None and precision >= 1:
        scale = 0 if scale is None else scale
        if 0 <= scale <= precision:  # PostgreSQL 15 allows others; Avro does not
            convert = _decimal_converter(precision, scale)
            return _Mapping(
                {
                    "type": "bytes",
                    "scale": scale,
                    "precision": precision,
                    "connect.version": 1,
                    "connect.parameters": {
                        "scale": str(scale),
                        "connect.decimal.precision": str(precision),
                    },
                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                    "logicalType": "decimal",
                },
                convert,
                convert(0),
            )
    return _Mapping("string", _to_plain_decimal_text, "0", UNAVAILABLE_VALUE_PLACEHOLDER)


def _array_mapping(element: _Mapping) -> _Mapping:
    convert_element = element.convert

    def convert(value: Any) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise _type_error("list", value)
        out: list[Any] = []
        for item in value:
            if item is None:
                out.append(None)
            elif isinstance(item, list | tuple):
                raise TypeError("multi-dimensional arrays are not supported")
            else:
                try:
                    out.append(convert_element(item))
                except _UnrepresentableError:
                    out.append(None)
        return out

    placeholder: Any = _MISSING
    if isinstance(element.placeholder, str):
        placeholder = [element.placeholder]
    return _Mapping({"type": "array", "items": ["null", element.avro]}, convert, [], placeholder)


def _column_mapping(column: ColumnShape) -> _Mapping:
    base, is_array = _normalize_type(column.pg_type)
    scalar = _scalar_mapping(base, column)
    if scalar is None:
        return _UNKNOWN
    return _array_mapping(scalar) if is_array else scalar


@dataclass(frozen=True, slots=True)
class _Field:
    column: str
    name: str
    nullable: bool
    is_key: bool
    mapping: _Mapping


@dataclass(frozen=True, slots=True)
class _Compiled:
    fields: tuple[_Field, ...]
    by_column: frozenset[str]


@lru_cache(maxsize=4096)
def _compile(shape: TableShape) -> _Compiled:
    fields = tuple(
        _Field(
            column=column.name,
            name=adjust_name(column.name),
            nullable=column.nullable,
            is_key=column.is_key,
            mapping=_column_mapping(column),
        )
        for column in shape.columns
    )
    return _Compiled(fields, frozenset(column.name for column in shape.columns))


# ---------------------------------------------------------------------------- schemas


def _field_schema(name: str, avro: Any, *, nullable: bool) -> dict[str, Any]:
    if nullable:
        return {"name": name, "type": ["null", copy.deepcopy(avro)], "default": None}
    return {"name": name, "type": copy.deepcopy(avro)}


def _optional(name: str, avro: str) -> dict[str, Any]:
    return {"name": name, "type": ["null", avro], "default": None}


def _split_name(full_name: str) -> tuple[str, str]:
    namespace, _, name = full_name.rpartition(".")
    return namespace, name


def _record(full_name: str, fields: list[dict[str, Any]], version: int | None) -> dict[str, Any]:
    namespace, name = _split_name(full_name)
    record: dict[str, Any] = {
        "type": "record",
        "name": name,
        "namespace": namespace,
        "fields": fields,
    }
    if version is not None:
        record["connect.version"] = version
    record["connect.name"] = full_name
    return record


def key_schema(shape: TableShape) -> dict[str, Any]:
    """Return the Avro schema of the table's message key: record ``<namespace>.Key``.

    One field per key column, in table order. Deterministic: equal shapes give equal
    schemas, so the registry sees one schema per table version.

    Raises:
        ConfigError: the table has no key columns (Debezium sends a null key for such
            tables; callers check :attr:`TableShape.key_columns` first).
    """
    fields = [
        _field_schema(f.name, f.mapping.avro, nullable=f.nullable)
        for f in _compile(shape).fields
        if f.is_key
    ]
    if not fields:
        raise ConfigError(f"{data_collection(shape)} has no key columns")
    return _record(f"{shape.namespace}.Key", fields, None)


def _source_schema() -> dict[str, Any]:
    snapshot = {
        "type": "string",
        "connect.version": 1,
        "connect.parameters": {"allowed": ",".join(SNAPSHOT_VALUES)},
        "connect.default": "false",
        "connect.name": "io.debezium.data.Enum",
    }
    fields: list[dict[str, Any]] = [
        {"name": "version", "type": "string"},
        {"name": "connector", "type": "string"},
        {"name": "name", "type": "string"},
        {"name": "ts_ms", "type": "long"},
        {"name": "snapshot", "type": [snapshot, "null"], "default": "false"},
        {"name": "db", "type": "string"},
        _optional("sequence", "string"),
        _optional("ts_us", "long"),
        _optional("ts_ns", "long"),
        {"name": "schema", "type": "string"},
        {"name": "table", "type": "string"},
        _optional("txId", "long"),
        _optional("lsn", "long"),
        _optional("xmin", "long"),
        _optional("origin", "string"),
    ]
    return _record(SOURCE_SCHEMA_NAME, fields, None)


def _transaction_block_schema() -> dict[str, Any]:
    fields: list[dict[str, Any]] = [
        {"name": "id", "type": "string"},
        {"name": "total_order", "type": "long"},
        {"name": "data_collection_order", "type": "long"},
    ]
    return _record(TRANSACTION_BLOCK_SCHEMA_NAME, fields, 1)


def _previous_nullability(previous: Mapping[str, Any]) -> dict[str, bool]:
    """Map each ``Value`` field of a previous envelope schema to whether it was nullable."""
    try:
        before = next(f for f in previous["fields"] if f["name"] == "before")
        value = next(b for b in before["type"] if isinstance(b, Mapping))
        return {
            f["name"]: isinstance(f["type"], list) and "null" in f["type"] for f in value["fields"]
        }
    except (KeyError, TypeError, StopIteration) as exc:
        raise ConfigError("previous schema is not an envelope value schema") from exc


def value_schema(shape: TableShape, *, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the Avro schema of the table's change-event value: record ``<namespace>.Envelope``.

    Field order, names, nullability and ``connect.*`` properties follow Debezium's
    PostgreSQL connector through ``AvroConverter``; ``source`` also has ``origin``. The
    result is deterministic (equal inputs, equal schemas) so the registry deduplicates.

    Args:
        shape: the table.
        previous: the value schema last registered for this table, if any. With it the
            new schema is BACKWARD compatible with it whenever columns were added or
            dropped: a column ``previous`` lacks, or had as nullable, is nullable with
            default null here. (A changed column type can still be incompatible; the
            registry then rejects the schema.)

    Raises:
        ConfigError: ``previous`` is not an envelope value schema.
    """
    nullable_before = None if previous is None else _previous_nullability(previous)
    value_fields = []
    for f in _compile(shape).fields:
        nullable = f.nullable or (nullable_before is not None and nullable_before.get(f.name, True))
        value_fields.append(_field_schema(f.name, f.mapping.avro, nullable=nullable))
    namespace = shape.namespace
    value_record = {
        "type": "record",
        "name": "Value",
        "fields": value_fields,
        "connect.name": f"{namespace}.Value",
    }
    fields: list[dict[str, Any]] = [
        {"name": "before", "type": ["null", value_record], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {"name": "source", "type": _source_schema()},
        {"name": "transaction", "type": ["null", _transaction_block_schema()], "default": None},
        {"name": "op", "type": "string"},
        _optional("ts_ms", "long"),
        _optional("ts_us", "long"),
        _optional("ts_ns", "long"),
    ]
    return _record(f"{namespace}.Envelope", fields, ENVELOPE_SCHEMA_VERSION)


def transaction_key_schema() -> dict[str, Any]:
    """Return the key schema of the ``<system>.transaction`` topic (Debezium's)."""
    return _record(TRANSACTION_KEY_SCHEMA_NAME, [{"name": "id", "type": "string"}], 1)


def transaction_value_schema() -> dict[str, Any]:
    """Return the value schema of the ``<system>.transaction`` topic (Debezium's).

    ``status`` is ``BEGIN`` or ``END``; ``event_count`` and ``data_collections`` are set
    on ``END`` only.
    """
    collection = _record(
        TRANSACTION_COLLECTION_SCHEMA_NAME,
        [
            {"name": "data_collection", "type": "string"},
            {"name": "event_count", "type": "long"},
        ],
        1,
    )
    fields: list[dict[str, Any]] = [
        {"name": "status", "type": "string"},
        {"name": "id", "type": "string"},
        _optional("event_count", "long"),
        {
            "name": "data_collections",
            "type": ["null", {"type": "array", "items": ["null", collection]}],
            "default": None,
        },
        {"name": "ts_ms", "type": "long"},
    ]
    return _record(TRANSACTION_VALUE_SCHEMA_NAME, fields, 1)


# ---------------------------------------------------------------------------- records


def _check_long(what: str, value: int | None) -> None:
    if value is not None and not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"{what}={value} does not fit a signed 64-bit long")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceInfo:
    """Debezium's ``source`` block: where and when a change happened.

    Attributes:
        version: the producer's version string (Debezium puts its own release here).
        connector: ``postgresql``.
        name: the logical server name (the system, ``erp``/``crm``).
        ts_ms: commit time of the transaction in the source database, ms since epoch.
        snapshot: ``false`` for streamed changes; ``true``/``last`` during a snapshot;
            ``incremental`` for incremental snapshots.
        db: the database name.
        sequence: see :func:`source_sequence`.
        schema: the PostgreSQL schema of the table.
        table: the table name.
        tx_id: the PostgreSQL transaction id (Avro field ``txId``).
        lsn: the LSN of the change (``lsn``), as a 64-bit integer.
        xmin: the transaction's xmin, when known.
        origin: the replication origin name of the transaction; null for ordinary
            sessions. Our addition, used against echo loops.
        ts_us: ``ts_ms`` in microseconds, when known.
        ts_ns: ``ts_ms`` in nanoseconds, when known.

    Raises:
        ValueError: ``snapshot`` is not a Debezium value or a number does not fit a long.
    """

    version: str
    connector: str = CONNECTOR
    name: str
    ts_ms: int
    snapshot: Snapshot = "false"
    db: str
    sequence: str | None = None
    schema: str
    table: str
    tx_id: int | None = None
    lsn: int | None = None
    xmin: int | None = None
    origin: str | None = None
    ts_us: int | None = None
    ts_ns: int | None = None

    def __post_init__(self) -> None:
        if self.snapshot not in SNAPSHOT_VALUES:
            raise ValueError(f"snapshot={self.snapshot!r} is not one of {SNAPSHOT_VALUES}")
        for what in ("ts_ms", "tx_id", "lsn", "xmin", "ts_us", "ts_ns"):
            _check_long(what, getattr(self, what))

    def as_record(self) -> dict[str, Any]:
        """Return the Avro datum of the ``source`` field."""
        return {
            "version": self.version,
            "connector": self.connector,
            "name": self.name,
            "ts_ms": self.ts_ms,
            "snapshot": self.snapshot,
            "db": self.db,
            "sequence": self.sequence,
            "ts_us": self.ts_us,
            "ts_ns": self.ts_ns,
            "schema": self.schema,
            "table": self.table,
            "txId": self.tx_id,
            "lsn": self.lsn,
            "xmin": self.xmin,
            "origin": self.origin,
        }


@dataclass(frozen=True, slots=True)
class TransactionBlock:
    """Debezium's ``transaction`` block of a change event.

    Attributes:
        id: the transaction id, see :func:`transaction_id`.
        total_order: position of the event among all events of the transaction, from 1.
        data_collection_order: position among the transaction's events of the same
            table, from 1.
    """

    id: str
    total_order: int
    data_collection_order: int

    def as_record(self) -> dict[str, Any]:
        """Return the Avro datum of the ``transaction`` field."""
        return {
            "id": self.id,
            "total_order": self.total_order,
            "data_collection_order": self.data_collection_order,
        }


def transaction_id(tx_id: int, lsn: int) -> str:
    """Return a transaction id the way Debezium's PostgreSQL connector writes it: ``txId:lsn``.

    Pass the transaction's commit LSN (pgoutput's BEGIN message carries it as the final
    LSN), so the BEGIN and END records and every event of the transaction agree.
    """
    return f"{tx_id}:{lsn}"


def source_sequence(last_commit_lsn: int | None, lsn: int | None) -> str:
    """Return Debezium's ``source.sequence``: a JSON array ``["<last commit lsn>","<lsn>"]``.

    Both positions are decimal strings (or null), which lets a consumer order events
    across transactions and within one. (Hot path: formatted directly, byte-identical to
    ``json.dumps(..., separators=(",", ":"))``.)
    """
    first = "null" if last_commit_lsn is None else f'"{int(last_commit_lsn)}"'
    second = "null" if lsn is None else f'"{int(lsn)}"'
    return f"[{first},{second}]"


def _row_datum(
    shape: TableShape,
    compiled: _Compiled,
    row: Mapping[str, Any],
    *,
    key_only: bool,
    unchanged_toast: object,
) -> dict[str, Any]:
    unknown = row.keys() - compiled.by_column
    if unknown:
        raise ValidationError(
            f"{data_collection(shape)}: row has columns the table shape lacks: {sorted(unknown)}"
        )
    datum: dict[str, Any] = {}
    for f in compiled.fields:
        if key_only and not f.is_key:
            continue
        value = row.get(f.column, _MISSING)
        datum[f.name] = _field_datum(shape, f, value, key=key_only, unchanged_toast=unchanged_toast)
    return datum


def _field_datum(
    shape: TableShape, f: _Field, value: Any, *, key: bool, unchanged_toast: object
) -> Any:
    where = f"{data_collection(shape)}.{f.column}"
    if value is unchanged_toast:
        if key:
            raise ValidationError(f"{where}: key column has no value (unchanged TOAST)")
        if f.mapping.placeholder is not _MISSING:
            return f.mapping.placeholder
        if f.nullable:
            return None
        raise ValidationError(
            f"{where}: unchanged TOAST value in a NOT NULL column whose type has no placeholder"
        )
    if value is None or value is _MISSING:
        if key:
            raise ValidationError(f"{where}: key column has no value")
        return None if f.nullable else f.mapping.fallback
    try:
        return f.mapping.convert(value)
    except _UnrepresentableError as exc:
        if f.nullable and not key:
            return None
        raise ValidationError(f"{where}: {exc}") from exc
    except (TypeError, ValueError, OverflowError, ArithmeticError) as exc:
        raise ValidationError(f"{where}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ColumnEncoding:
    """How one column's values become Avro datums, for writers compiled per table.

    Attributes:
        base_type: the PostgreSQL type name, normalised (``int8``, ``text``, ``numeric``).
        is_array: a one-dimensional array of ``base_type``.
        convert: a non-null Python value to its datum, as :func:`envelope_record` does
            it when nothing goes wrong; it may raise, and then the writer must fall back
            to :func:`envelope_record`, which turns the failure into the right datum or
            error.
        null_datum: the datum of a missing or null value in a value row (``None``, or the
            type's neutral value for a ``NOT NULL`` column).
    """

    base_type: str
    is_array: bool
    convert: Callable[[Any], Any]
    null_datum: Any


@lru_cache(maxsize=4096)
def column_encodings(shape: TableShape) -> tuple[ColumnEncoding, ...]:
    """Per column of ``shape``, in table order, its :class:`ColumnEncoding`."""
    encodings = []
    for column, f in zip(shape.columns, _compile(shape).fields, strict=True):
        base, is_array = _normalize_type(column.pg_type)
        null_datum = _field_datum(shape, f, None, key=False, unchanged_toast=UNCHANGED_TOAST)
        encodings.append(ColumnEncoding(base, is_array, f.mapping.convert, null_datum))
    return tuple(encodings)


def key_record(
    shape: TableShape,
    row: Mapping[str, Any],
    *,
    unchanged_toast: object = UNCHANGED_TOAST,
) -> dict[str, Any]:
    """Return the Avro datum of a row's message key (see :func:`key_schema`).

    ``row`` maps column names to Python values; only the key columns are read, the
    others may be present or not.

    Raises:
        ConfigError: the table has no key columns.
        ValidationError: a key column is missing, null, unchanged TOAST, or its value
            does not fit the column type; or ``row`` names columns the shape lacks.
    """
    compiled = _compile(shape)
    if not any(f.is_key for f in compiled.fields):
        raise ConfigError(f"{data_collection(shape)} has no key columns")
    return _row_datum(shape, compiled, row, key_only=True, unchanged_toast=unchanged_toast)


_NEEDS_AFTER: Final = frozenset({"c", "r", "u"})
_NO_ROWS: Final = frozenset({"t", "m"})


def envelope_record(
    shape: TableShape,
    *,
    op: Op,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    source: SourceInfo | Mapping[str, Any],
    ts_ms: int | None,
    transaction: TransactionBlock | Mapping[str, Any] | None = None,
    ts_us: int | None = None,
    ts_ns: int | None = None,
    unchanged_toast: object = UNCHANGED_TOAST,
) -> dict[str, Any]:
    """Return the Avro datum of one change event (see :func:`value_schema`).

    Args:
        shape: the table the change belongs to.
        op: ``c`` insert, ``u`` update, ``d`` delete, ``r`` snapshot read, ``t`` truncate,
            ``m`` logical decoding message.
        before: the old row (column name -> Python value) or None. Columns it lacks
            are null, or the type's neutral value when ``NOT NULL``.
        after: the new row, or None.
        source: the ``source`` block, or its datum (``SourceInfo.as_record()`` form) when
            a hot path builds it from a per-transaction template.
        ts_ms: when the event was produced (ms since epoch); Debezium's envelope
            ``ts_ms`` is processing time, ``source.ts_ms`` commit time.
        transaction: the ``transaction`` block (or its datum), or None.
        ts_us: ``ts_ms`` in microseconds, when known.
        ts_ns: ``ts_ms`` in nanoseconds, when known.
        unchanged_toast: the marker object the caller uses for "value not sent"; see
            the module docstring for what it becomes.

    Python values accepted per column type: ``int`` for integers; ``float`` (or
    ``int``/``Decimal``) for floats; ``Decimal`` or ``int`` for numeric; ``bool``;
    ``str`` for text; ``uuid.UUID`` or ``str`` for uuid; ``str`` (or a JSON-able
    value) for json; ``bytes``-like for bytea; ``date``; ``datetime`` (naive or aware;
    naive means UTC for timestamptz, aware is converted to UTC for timestamp);
    ``time`` (aware for timetz, naive means UTC); ``list`` for one-dimensional arrays
    (``None`` elements allowed); ``str`` for everything else.

    Raises:
        ValueError: ``op`` is unknown, or ``before``/``after`` do not fit it (``c``,
            ``r`` and ``u`` need ``after``; ``d`` needs ``before``; ``t`` and ``m``
            take neither), or a timestamp does not fit a long.
        ValidationError: a value does not fit its column's type, or a row names
            columns the shape lacks.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    if op in _NEEDS_AFTER and after is None:
        raise ValueError(f"op {op!r} needs an after row")
    if op == "d" and before is None:
        raise ValueError("op 'd' needs a before row")
    if op in _NO_ROWS and (before is not None or after is not None):
        raise ValueError(f"op {op!r} carries no rows")
    for what, value in (("ts_ms", ts_ms), ("ts_us", ts_us), ("ts_ns", ts_ns)):
        _check_long(what, value)
    compiled = _compile(shape)

    def datum(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return _row_datum(shape, compiled, row, key_only=False, unchanged_toast=unchanged_toast)

    return {
        "before": datum(before),
        "after": datum(after),
        "source": source.as_record() if isinstance(source, SourceInfo) else source,
        "transaction": (
            transaction.as_record() if isinstance(transaction, TransactionBlock) else transaction
        ),
        "op": op,
        "ts_ms": ts_ms,
        "ts_us": ts_us,
        "ts_ns": ts_ns,
    }


def transaction_key_record(transaction: str) -> dict[str, Any]:
    """Return the key datum of a transaction metadata record (see :func:`transaction_id`)."""
    return {"id": transaction}


def transaction_begin_record(transaction: str, *, ts_ms: int) -> dict[str, Any]:
    """Return the ``BEGIN`` datum of a transaction (``ts_ms``: its commit time)."""
    _check_long("ts_ms", ts_ms)
    return {
        "status": "BEGIN",
        "id": transaction,
        "event_count": None,
        "data_collections": None,
        "ts_ms": ts_ms,
    }


def transaction_end_record(
    transaction: str, *, ts_ms: int, event_counts: Mapping[str, int] | Sequence[tuple[str, int]]
) -> dict[str, Any]:
    """Return the ``END`` datum of a transaction.

    Args:
        transaction: the transaction id.
        ts_ms: the commit time.
        event_counts: events emitted per data collection (``<schema>.<table>``, see
            :func:`data_collection`), in the order given; ``event_count`` is their sum.

    Raises:
        ValueError: a count is negative.
    """
    pairs = list(event_counts.items()) if isinstance(event_counts, Mapping) else list(event_counts)
    if any(count < 0 for _, count in pairs):
        raise ValueError("event counts cannot be negative")
    _check_long("ts_ms", ts_ms)
    return {
        "status": "END",
        "id": transaction,
        "event_count": sum(count for _, count in pairs),
        "data_collections": [
            {"data_collection": name, "event_count": count} for name, count in pairs
        ],
        "ts_ms": ts_ms,
    }
