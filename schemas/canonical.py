"""Canonical business events: their Avro schemas and the rules for evolving them.

One schema per entity of :data:`~schemas.topics.CANONICAL_ENTITIES`, shipped as
``schemas/avro/<entity>.avsc`` (namespace :data:`NAMESPACE`) and read with
:mod:`importlib.resources`. Every schema starts with the same metadata (DESIGN.md §4)::

    event_id       string   deterministic id of the event
    source_system  string   'erp' | 'crm'
    source_lsn     long     LSN of the change in the source WAL
    source_tx_id   long?    source transaction id (null for snapshot reads)
    source_ts_ms   long     commit time in the source, ms since the epoch
    op             string   'upsert' | 'delete'
    version        long     monotonic per entity and source system
    erp_id         string?  the entity's ERP id, when known
    crm_id         string?  the entity's CRM id, when known

followed by the business fields. Value encodings, fixed for every schema:

- money, quantities and percentages are Avro ``decimal`` (``bytes``) with a fixed
  precision and scale (money 18,2; quantities 18,3; percentages 5,2): exact, and
  :mod:`fastavro` hands them out as :class:`~decimal.Decimal`;
- dates are ``int``/``date``, timestamps ``long``/``timestamp-micros`` (UTC);
- enumerations (``op``, states) are strings with documented values, not Avro enums,
  because adding a symbol to an Avro enum is not a backward-compatible change for
  readers that already exist.

Every business field is nullable with default null (arrays default to ``[]``), so adding
a field never breaks a reader: the topics' subjects are registered with BACKWARD
compatibility, and :func:`check_backward_compatible` states the rules offline.

The module is pure: it reads its package data and nothing else.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Final

from schemas.errors import ConfigError
from schemas.topics import CANONICAL_ENTITIES

__all__ = [
    "ANNOTATION_FIELDS",
    "ID_FIELDS",
    "METADATA_FIELDS",
    "NAMESPACE",
    "OPS",
    "PRIOR_DIGESTS",
    "QUARANTINED_FIELDS",
    "SOURCE_SYSTEMS",
    "FieldType",
    "business_fields",
    "canonical_schema",
    "check_backward_compatible",
    "describe_fields",
    "field_types",
]

NAMESPACE: Final = "erpcrm.canonical"
"""Avro namespace of every canonical record."""

METADATA_FIELDS: Final = (
    "event_id",
    "source_system",
    "source_lsn",
    "source_tx_id",
    "source_ts_ms",
    "op",
    "version",
)
"""Fields every canonical event carries about its origin; never mapped from a source row."""

ID_FIELDS: Final = ("erp_id", "crm_id")
"""The entity's ids in both systems (crosswalk), as far as they are known."""

ANNOTATION_FIELDS: Final = (
    "changed_fields",
    "duplicate_of",
    "duplicate_rule",
    "prior_digests",
    "quarantined_fields",
    "source_snapshot",
)
"""Optional fields the streams stage sets about a change (which fields it changed, which
linked record it seems to duplicate, which invalid fields it left out, whether a snapshot
read it); never mapped from a source row."""

PRIOR_DIGESTS: Final = "prior_digests"
"""The annotation naming, per field an update changed, a digest of the value it replaced
(:func:`schemas.payload.value_digest`): a sink whose target holds that value knows the
change was made over it, not beside it (no conflict)."""

QUARANTINED_FIELDS: Final = "quarantined_fields"
"""The annotation naming the fields left out of a record because their value was invalid:
null in the record, never a change, so a target keeps what it has in them."""

SOURCE_SYSTEMS: Final = ("erp", "crm")
OPS: Final = ("upsert", "delete")

_PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_NAMED: Final = frozenset({"record", "error", "enum", "fixed"})
_PROMOTIONS: Final[Mapping[str, frozenset[str]]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


# ------------------------------------------------------------------------- loading


@cache
def _schema_text(entity: str) -> str:
    if entity not in CANONICAL_ENTITIES:
        raise ConfigError(
            f"unknown canonical entity {entity!r}; known: {', '.join(CANONICAL_ENTITIES)}"
        )
    resource = resources.files("schemas").joinpath("avro", f"{entity}.avsc")
    try:
        return resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"canonical schema {entity}.avsc cannot be read: {exc}") from exc


@cache
def _schema(entity: str) -> dict[str, Any]:
    try:
        schema = json.loads(_schema_text(entity))
    except ValueError as exc:
        raise ConfigError(f"canonical schema {entity}.avsc is not JSON: {exc}") from exc
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ConfigError(f"canonical schema {entity}.avsc is not an Avro record")
    return schema


def canonical_schema(entity: str) -> dict[str, Any]:
    """Return the Avro schema of ``entity`` as a fresh dict (the caller may modify it).

    Raises:
        ConfigError: ``entity`` is not a canonical entity, or its ``.avsc`` file is
            missing or not a JSON Avro record.
    """
    return copy.deepcopy(_schema(entity))


# ----------------------------------------------------------------------- field types


@dataclass(frozen=True, slots=True)
class FieldType:
    """What a field holds, reduced to what mapping and transformation need.

    Attributes:
        name: the field name.
        kind: the non-null type: an Avro primitive (``string``, ``long``, ``boolean``,
            ...), a logical type (``decimal``, ``date``, ``timestamp-micros``, ...),
            or ``array``, ``record``, ``map``, ``enum``, ``fixed``, ``union``.
        nullable: null is a legal value.
        has_default: the field declares a default (so it may be absent from old data).
        precision: for ``decimal``: the declared precision.
        scale: for ``decimal``: the declared scale.
        items: for an ``array`` of records: the item record's fields.
    """

    name: str
    kind: str
    nullable: bool
    has_default: bool
    precision: int | None = None
    scale: int | None = None
    items: Mapping[str, FieldType] | None = None


def _type_kind(avro_type: Any) -> tuple[str, Mapping[str, Any] | None]:
    """Return ``(kind, the dict defining it or None)`` of a non-union Avro type."""
    if isinstance(avro_type, str):
        return avro_type, None
    if isinstance(avro_type, dict):
        inner = avro_type.get("type")
        if isinstance(inner, dict | list):
            return _type_kind(inner)
        logical = avro_type.get("logicalType")
        return (str(logical) if logical else str(inner)), avro_type
    return "union", None


def describe_fields(record: Mapping[str, Any]) -> dict[str, FieldType]:
    """Return the fields of an Avro record schema, in order, as :class:`FieldType`.

    A union of ``null`` and one other type is reported as that type, nullable; other
    unions have kind ``union``. Arrays of records describe their items' fields.
    """
    described: dict[str, FieldType] = {}
    for field in record.get("fields", ()):
        avro_type = field["type"]
        branches = avro_type if isinstance(avro_type, list) else [avro_type]
        non_null = [b for b in branches if b != "null"]
        nullable = len(non_null) < len(branches)
        kind, spec = _type_kind(non_null[0]) if len(non_null) == 1 else ("union", None)
        items: dict[str, FieldType] | None = None
        if kind == "array" and spec is not None:
            item_kind, item_spec = _type_kind(spec.get("items"))
            if item_kind == "record" and item_spec is not None:
                items = describe_fields(item_spec)
        precision = scale = None
        if kind == "decimal" and spec is not None:
            precision, scale = spec.get("precision"), spec.get("scale", 0)
        described[field["name"]] = FieldType(
            name=field["name"],
            kind=kind,
            nullable=nullable,
            has_default="default" in field,
            precision=precision,
            scale=scale,
            items=MappingProxyType(items) if items is not None else None,
        )
    return described


@cache
def field_types(entity: str) -> Mapping[str, FieldType]:
    """Return the fields of ``entity``'s canonical schema (read-only, cached).

    Raises:
        ConfigError: as :func:`canonical_schema`.
    """
    return MappingProxyType(describe_fields(_schema(entity)))


def business_fields(entity: str) -> tuple[str, ...]:
    """Return the names of ``entity``'s fields that are neither metadata nor ids, in order."""
    skip = set(METADATA_FIELDS) | set(ID_FIELDS) | set(ANNOTATION_FIELDS)
    return tuple(name for name in field_types(entity) if name not in skip)


# ---------------------------------------------------------------- backward compatibility


def _fullname(schema: Mapping[str, Any], namespace: str | None) -> str:
    name = str(schema["name"])
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _collect(avro_type: Any, namespace: str | None, out: dict[str, Any]) -> None:
    """Index the named types (records, enums, fixed) of a schema by full name."""
    if isinstance(avro_type, list):
        for branch in avro_type:
            _collect(branch, namespace, out)
        return
    if not isinstance(avro_type, dict):
        return
    kind = avro_type.get("type")
    if isinstance(kind, dict | list):
        _collect(kind, namespace, out)
    elif kind in _NAMED:
        full = _fullname(avro_type, namespace)
        out[full] = avro_type
        inner_ns = full.rpartition(".")[0] or None
        for field in avro_type.get("fields", ()):
            _collect(field.get("type"), inner_ns, out)
    elif kind == "array":
        _collect(avro_type.get("items"), namespace, out)
    elif kind == "map":
        _collect(avro_type.get("values"), namespace, out)


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _describe(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return "[" + ", ".join(_describe(b) for b in avro_type) + "]"
    if isinstance(avro_type, dict):
        if avro_type.get("type") in _NAMED:
            return f"{avro_type['type']} {avro_type.get('name')}"
        logical = avro_type.get("logicalType")
        if logical == "decimal":
            return f"decimal({avro_type.get('precision')},{avro_type.get('scale', 0)})"
        return str(logical or _describe(avro_type.get("type")))
    return str(avro_type)


def _default_fits(avro_type: Any, default: Any, names: Mapping[str, Any]) -> bool:
    """Whether ``default`` is a legal default of ``avro_type`` (a union's: its first branch)."""
    if isinstance(avro_type, list):
        return bool(avro_type) and _default_fits(avro_type[0], default, names)
    kind = avro_type
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if isinstance(kind, dict | list):
            return _default_fits(kind, default, names)
    elif isinstance(avro_type, str) and avro_type not in _PRIMITIVES:
        target = names.get(avro_type)
        return target is None or _default_fits(target, default, names)
    checks: dict[Any, bool] = {
        "null": default is None,
        "boolean": isinstance(default, bool),
        "int": isinstance(default, int) and not isinstance(default, bool),
        "long": isinstance(default, int) and not isinstance(default, bool),
        "float": isinstance(default, int | float) and not isinstance(default, bool),
        "double": isinstance(default, int | float) and not isinstance(default, bool),
        "bytes": isinstance(default, str),
        "string": isinstance(default, str),
        "fixed": isinstance(default, str),
        "array": isinstance(default, list),
        "map": isinstance(default, dict),
        "record": isinstance(default, dict),
        "error": isinstance(default, dict),
    }
    if kind == "enum" and isinstance(avro_type, dict):
        return default in avro_type.get("symbols", ())
    return checks.get(kind, True)


class _Resolver:
    """Checks that data written with one schema can be read with another.

    The rules are Avro 1.11's schema resolution; the reasons it cannot are collected.
    """

    def __init__(self, writer: Any, reader: Any) -> None:
        self._writer_names: dict[str, Any] = {}
        self._reader_names: dict[str, Any] = {}
        _collect(writer, None, self._writer_names)
        _collect(reader, None, self._reader_names)
        self._in_progress: set[tuple[int, int]] = set()

    @staticmethod
    def _deref(avro_type: Any, names: Mapping[str, Any]) -> Any:
        while True:
            if isinstance(avro_type, str) and avro_type not in _PRIMITIVES:
                found = names.get(avro_type)
                if found is None:
                    matches = [v for k, v in names.items() if _short(k) == avro_type]
                    found = matches[0] if len(matches) == 1 else None
                if found is None:
                    return avro_type
                avro_type = found
            elif isinstance(avro_type, dict) and isinstance(avro_type.get("type"), dict | list):
                avro_type = avro_type["type"]
            else:
                return avro_type

    def check(self, writer: Any, reader: Any, path: str) -> list[str]:
        writer = self._deref(writer, self._writer_names)
        reader = self._deref(reader, self._reader_names)
        if isinstance(writer, list):
            reasons: list[str] = []
            for branch in writer:
                reasons.extend(self.check(branch, reader, path))
            return reasons
        if isinstance(reader, list):
            for branch in reader:
                if not self.check(writer, branch, path):
                    return []
            return [
                f"{path}: written type {_describe(writer)} matches no branch of {_describe(reader)}"
            ]
        w_kind, _ = _type_kind(writer)
        w_base = writer.get("type") if isinstance(writer, dict) else writer
        r_base = reader.get("type") if isinstance(reader, dict) else reader
        if w_base in _PRIMITIVES and r_base in _PRIMITIVES:
            return self._primitive(writer, reader, str(w_base), str(r_base), path)
        if w_base != r_base and not ({w_base, r_base} <= {"record", "error"}):
            return [f"{path}: type changed from {_describe(writer)} to {_describe(reader)}"]
        if w_kind in {"record", "error"}:
            return self._record(writer, reader, path)
        if w_kind == "enum":
            return self._enum(writer, reader, path)
        if w_kind == "array":
            return self.check(writer.get("items"), reader.get("items"), f"{path}[]")
        if w_kind == "map":
            return self.check(writer.get("values"), reader.get("values"), f"{path}{{}}")
        if w_kind == "fixed":
            reasons = self._names_match(writer, reader, path)
            if writer.get("size") != reader.get("size"):
                reasons.append(
                    f"{path}: fixed size changed from {writer.get('size')} to {reader.get('size')}"
                )
            return reasons
        return [f"{path}: unknown type {_describe(writer)}"]

    @staticmethod
    def _primitive(writer: Any, reader: Any, w_base: str, r_base: str, path: str) -> list[str]:
        if w_base != r_base and r_base not in _PROMOTIONS.get(w_base, frozenset()):
            return [f"{path}: type changed from {_describe(writer)} to {_describe(reader)}"]
        w_logical = writer.get("logicalType") if isinstance(writer, dict) else None
        r_logical = reader.get("logicalType") if isinstance(reader, dict) else None
        if w_logical != r_logical:
            return [
                f"{path}: logical type changed from {w_logical or w_base} to {r_logical or r_base}"
            ]
        if w_logical == "decimal":
            w_ps = (writer.get("precision"), writer.get("scale", 0))
            r_ps = (reader.get("precision"), reader.get("scale", 0))
            if w_ps[1] != r_ps[1] or (r_ps[0] or 0) < (w_ps[0] or 0):
                return [f"{path}: decimal changed from {_describe(writer)} to {_describe(reader)}"]
        return []

    @staticmethod
    def _names_match(writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> list[str]:
        w_name = _short(str(writer.get("name")))
        accepted = {_short(str(reader.get("name")))} | {
            _short(str(a)) for a in reader.get("aliases", ())
        }
        if w_name not in accepted:
            return [f"{path}: {reader.get('type')} renamed from {w_name} to {reader.get('name')}"]
        return []

    def _record(self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> list[str]:
        marker = (id(writer), id(reader))
        if marker in self._in_progress:  # recursive type: already being checked
            return []
        self._in_progress.add(marker)
        reasons = self._names_match(writer, reader, path)
        written = {f["name"]: f for f in writer.get("fields", ())}
        for field in reader.get("fields", ()):
            name = field["name"]
            where = f"{path}.{name}"
            source = written.get(name)
            if source is None:
                source = next((written[a] for a in field.get("aliases", ()) if a in written), None)
            if source is not None:
                reasons.extend(self.check(source["type"], field["type"], where))
            elif "default" not in field:
                reasons.append(f"{where}: field added without a default")
            elif not _default_fits(field["type"], field["default"], self._reader_names):
                reasons.append(
                    f"{where}: default {field['default']!r} does not fit {_describe(field['type'])}"
                )
        self._in_progress.discard(marker)
        return reasons

    def _enum(self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> list[str]:
        reasons = self._names_match(writer, reader, path)
        removed = [s for s in writer.get("symbols", ()) if s not in reader.get("symbols", ())]
        if removed and "default" not in reader:
            reasons.append(f"{path}: enum symbols removed without a default: {', '.join(removed)}")
        return reasons


def check_backward_compatible(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Return why a reader using ``new`` cannot read data written with ``old`` (empty: it can).

    The rules are Avro's schema resolution (the registry's BACKWARD check), applied
    field by field:

    - a field in ``new`` that ``old`` lacks (by name or alias) needs a default, and the
      default must fit the field's type (a union's first branch);
    - a field in both must resolve: same type or an Avro promotion (int -> long ->
      float -> double, string <-> bytes); a union written must have every branch
      readable, a value written into a union reader must match one of its branches;
    - records, enums and fixed keep their (unqualified) name or list the old one as an
      alias; enum symbols may only be removed if the new enum declares a default;
      fixed sizes stay;
    - stricter than plain Avro, because the bytes would still decode but mean something
      else: a changed logical type, or a decimal whose scale changes or whose precision
      shrinks.

    Fields removed in ``new`` are fine (the reader skips them). Pure: no registry.
    """
    return _Resolver(old, new).check(old, new, str(new.get("name", "record")))
