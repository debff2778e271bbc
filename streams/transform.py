"""Raw change events to canonical events: mapping, cleansing and validation of one row.

Input is a decoded Debezium envelope (a dict with ``before``, ``after``, ``source``,
``op``; column values as :mod:`cdc.envelope` encodes them), plus a :class:`Flow` from
:mod:`schemas.mapping` that says how its table maps to a canonical entity. Output is
:class:`~streams.validation.Ok` with a :class:`CanonicalEvent` (a record shaped by the
entity's Avro schema: every field, values of the mapped types; the encoder checks the fit
when the event is published and dead-letters a misfit as ``schema_mismatch``) and the
fixes cleansing made, :class:`~streams.validation.Failed`
for the dead-letter topic, or :class:`Skipped` for a change that is no business event.

Decisions:

- ``event_id`` is a UUIDv5 of ``<system>|<lsn>|<schema>.<table>|<key>`` of the change:
  the same change always gets the same id, across redeliveries and restarts.
- ``version`` is the source LSN. Per row, PostgreSQL writes changes in commit order
  (a row is locked until its writer commits), so LSNs rise per entity, and per-key
  partitioning keeps them in order on the bus. LSNs of the two databases are not
  comparable: versions order one source system's changes; conflicts between the
  systems are settled by field ownership and ``source_ts_ms``. Events partition by
  :attr:`CanonicalEvent.key` ``<system>:<id>``.
- ``source_snapshot``: Debezium's ``source.snapshot`` of a snapshot read (``true``,
  ``last``, or ``incremental`` for a re-snapshot an operator asked for, which is never
  dropped as a no-op downstream); null for a streamed change.
- ``op``: Debezium ``c``/``u``/``r`` are ``upsert``, ``d`` is ``delete``; a row
  matching the flow's ``soft_delete`` (the CRM's ``deleted = true``) is a ``delete``
  as well. Archiving in the ERP (``active = false``) is an ``upsert`` with
  ``active: false``: the record still exists and can come back. Truncates and logical
  messages are skipped, as are rows outside the flow's ``filter`` (a quote that is not
  ``Closed Accepted``, a partner that is a contact person).
- A delete (Debezium ``d``, the row is gone) carries the ids (and the match key when
  the old row has it); its other fields are null, since under ``REPLICA IDENTITY
  DEFAULT`` the old row holds only the key. So does a soft delete of a flow whose
  liveness is no field (products, quotes). A soft delete of a flow that maps liveness
  from its soft-delete column (:func:`carries_liveness`: customers' and contacts'
  ``active`` from the CRM's ``deleted``) carries the row's values, ``active: false``
  and the fields its change changed, as an update does: the row is still there and may
  come back, the sinks merge its liveness like any field (the later change of either
  side wins), and edits made before it are not lost however the sinks batch them.
- ``erp_id``/``crm_id``: the source key fills the flow's own system's id; the other
  comes from a mapped column if the flow has one, else from the crosswalk.
- A field whose value fails (cleansing, map, cast, range, lookup, catalogue) does what
  its mapping's ``on_invalid`` says: ``dead_letter`` fails the record; ``quarantine``
  leaves the field null, names it in ``quarantined_fields`` and takes it out of
  ``changed_fields`` (so a sink keeps what the target has), and the record flows with a
  :class:`~streams.validation.Quarantine` in :attr:`Ok.quarantined`; ``keep`` carries
  the value as typed (trimmed), also with a quarantine (``kept``).
- Nested lines (sales orders) are mapped from the current child rows the caller
  passes; any line that fails fails the order.
- ``changed_fields`` (entities whose schema has it: customers, contacts, products,
  orders) names the business fields the change changed, for the sinks' field-level merge. An update
  with a full ``before`` image (``REPLICA IDENTITY FULL``) changed the fields whose
  input columns differ (a phone also reads the country, an inferred country the VAT id
  and phone). An update that changed no mapped column (a touch, an unmapped column)
  re-asserts the fields its system owns: the owner's value always wins, so re-sending
  it is safe, and it is how a refused edit of an owned field is repaired. An insert
  or an initial snapshot read changed every mapped field it holds a value in (an empty
  field was written by no one, so it does not clear the other side's value); a
  re-snapshot read (``source.snapshot = incremental``, a repair) and a delete without
  values changed every mapped field (a soft delete with values: as an update); an
  update without a ``before`` image leaves it null (unknown: every field counts as
  changed). An order re-emitted because a line changed names its header's changed
  fields only when the header changed in the line's transaction, else none (the lines
  are no field of the merge).
- ``prior_digests``: for an update whose old row maps, per changed field the
  :func:`~schemas.payload.value_digest` of the value it replaced, so a sink tells an
  edit made over the value its target holds (an ordinary update) from one made beside
  it (a conflict). Not known for an insert, a snapshot read, a delete or a touch.

Stock (flows with ``grain: location``) goes through :func:`to_stock_change`,
:func:`streams.inventory.apply` and :func:`inventory_event` instead.

Pure: no I/O, no clock; reference data (known SKUs, crosswalk, lookup tables) comes in
as arguments and is only read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Container, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, NamedTuple, TypeVar

from schemas.canonical import (
    ID_FIELDS,
    PRIOR_DIGESTS,
    QUARANTINED_FIELDS,
    FieldType,
    field_types,
)
from schemas.mapping import (
    Cast,
    Fallback,
    FieldMap,
    Flow,
    Grain,
    OnInvalid,
    convert,
    converter,
    map_key,
)
from schemas.payload import RESNAPSHOT, plain, value_digest
from schemas.topics import canonical_topic
from schemas.uuids import uuid5_text
from streams.cleansing import (
    CLEANERS,
    REGIONAL_CLEANERS,
    apply_default,
    clean_text,
    infer_country,
)
from streams.crosswalk import CrosswalkState, counterpart_id
from streams.inventory import Quant, QuantChange, StockTotals
from streams.validation import (
    Failed,
    Fix,
    Ok,
    Quarantine,
    Reason,
    check_known_sku,
    check_range,
    check_stock,
    is_blank,
)

__all__ = [
    "EVENT_NAMESPACE",
    "INITIAL_SNAPSHOT",
    "SOURCE_SNAPSHOT",
    "CanonicalEvent",
    "LineMemo",
    "Skipped",
    "carries_liveness",
    "entity_key",
    "event_id",
    "inventory_event",
    "line_parent",
    "to_canonical",
    "to_stock_change",
]

EVENT_NAMESPACE: Final = uuid.UUID("6f1c7c3e-2d4b-5a8e-9c31-8e0f4d2a7b15")
"""UUIDv5 namespace of canonical event ids."""

Lookups = Mapping[str, Mapping[str, str]]
"""Lookup tables by name (``erp_product_sku``: ERP product id -> SKU, ...)."""

_UPSERT_OPS: Final = frozenset({"c", "u", "r"})
_SKIPPED_OPS: Final = frozenset({"t", "m"})


@dataclass(frozen=True, slots=True)
class Skipped:
    """A change that is no business event for this flow (filtered out, truncate, ...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class CanonicalEvent:
    """A canonical event ready to serialise.

    Attributes:
        entity: the canonical entity.
        key: the partition key, ``<source system>:<entity id in that system>``.
        record: the Avro datum of ``canonical_schema(entity)``.
    """

    entity: str
    key: str
    record: dict[str, Any]

    @property
    def topic(self) -> str:
        """The canonical topic of the event."""
        return canonical_topic(self.entity)


class _Refs(NamedTuple):
    """The reference data of one mapping (a tuple: one is built for every event)."""

    known_skus: Container[str] | None
    crosswalk: CrosswalkState | None
    lookups: Lookups


class _Change(NamedTuple):
    """What every raw change carries, checked (a tuple: one is built for every event)."""

    system: str
    schema: str
    table: str
    key: str
    lsn: int
    tx_id: int | None
    ts_ms: int
    op: str
    row: Mapping[str, Any]
    raw: Mapping[str, Any]


def snapshot_kind(raw: Mapping[str, Any]) -> str | None:
    """Debezium's ``source.snapshot`` of a snapshot read; None for a streamed change.

    ``true`` or ``last`` for the initial snapshot, ``incremental`` for a re-snapshot.
    """
    source = raw.get("source")
    kind = source.get("snapshot") if isinstance(source, Mapping) else None
    return str(kind) if raw.get("op") == "r" and kind not in (None, "false") else None


def event_id(system: str, lsn: int, schema: str, table: str, key: str) -> str:
    """Return the deterministic id of the event for one source change."""
    return uuid5_text(EVENT_NAMESPACE, f"{system}|{lsn}|{schema}.{table}|{key}")


def _malformed(detail: str) -> Failed:
    return Failed(Reason.MALFORMED_EVENT, None, detail)


def _id_text(value: object) -> str | None:
    """An id column's value as text (ids travel as strings), or None if it has none."""
    if value is None:
        return None
    try:
        return str(convert(Cast.STR, value))
    except (TypeError, ValueError):
        return None


def _read_change(
    raw: Mapping[str, Any], system: str, schema: str, table: str, key_column: str
) -> _Change | Failed | Skipped:
    """Check the parts of a raw envelope every flow relies on."""
    if not isinstance(raw, Mapping):
        return _malformed(f"a change event is a mapping, got {type(raw).__name__}")
    op = raw.get("op")
    if op in _SKIPPED_OPS:
        return Skipped(f"op {op!r} carries no row")
    if op not in _UPSERT_OPS and op != "d":
        return _malformed(f"unknown op {op!r}")
    source = raw.get("source")
    if not isinstance(source, Mapping):
        return _malformed("no source block")
    lsn, ts_ms, tx_id = source.get("lsn"), source.get("ts_ms"), source.get("txId")
    if not (isinstance(lsn, int) and isinstance(ts_ms, int)) or not (
        tx_id is None or isinstance(tx_id, int)
    ):
        return _malformed("source.lsn and source.ts_ms must be integers, txId an integer or null")
    if source.get("table") not in (None, table):
        return _malformed(f"an event of table {source.get('table')!r}, expected {table!r}")
    row = raw.get("before" if op == "d" else "after")
    if not isinstance(row, Mapping):
        return _malformed(f"op {op!r} without its {'before' if op == 'd' else 'after'} row")
    key = _id_text(row.get(key_column))
    if key is None:
        return _malformed(f"the row has no usable key column {key_column!r}")
    return _Change(
        system=system,
        schema=str(source.get("schema") or schema),
        table=table,
        key=key,
        lsn=lsn,
        tx_id=tx_id,
        ts_ms=ts_ms,
        op=op,
        row=row,
        raw=raw,
    )


# ----------------------------------------------------------------------- field mapping


_Arg = TypeVar("_Arg")
_Result = TypeVar("_Result")


def _per_object(compute: Callable[[_Arg], _Result]) -> Callable[[_Arg], _Result]:
    """``compute`` remembered per argument object (by identity; a flow never changes).

    Flows are loaded once at start, so what is derived from one is worked out once, not
    for every event. Few objects are ever asked about; the memory is cleared should a
    process build many (tests).
    """
    memory: dict[int, tuple[_Arg, _Result]] = {}

    def remembered(arg: _Arg) -> _Result:
        hit = memory.get(id(arg))
        if hit is not None and hit[0] is arg:
            return hit[1]
        if len(memory) >= 256:
            memory.clear()
        result = compute(arg)
        memory[id(arg)] = (arg, result)
        return result

    return remembered


def _quantizer(fm: FieldMap) -> Callable[[Decimal, list[Fix]], Decimal | Failed] | None:
    """A field's rounding and digit check, its quantum worked out once; None: it has neither.

    The function returned rounds a value to the field's scale (a ``round`` fix when that
    changed it) and fails one with more integer digits than the field allows.
    """
    scale, integer_digits = fm.scale, fm.integer_digits
    if scale is None and integer_digits is None:
        return None
    quantum = None if scale is None else Decimal(1).scaleb(-scale)

    def quantize(value: Decimal, fixes: list[Fix]) -> Decimal | Failed:
        if quantum is not None:
            rounded = value.quantize(quantum, rounding=ROUND_HALF_UP)
            if rounded != value:
                fixes.append(Fix("round", value, rounded, note=f"rounded to {scale} places"))
            value = rounded
        if integer_digits is not None and value and value.adjusted() >= integer_digits:
            return Failed(Reason.OUT_OF_RANGE, None, f"{value} has too many digits")
        return value

    return quantize


_FieldMapper = Callable[[Mapping[str, Any], Mapping[str, Any], "_Refs", list[Fix]], Any]
"""Makes one canonical value from a row: returns it, or a :class:`Failed`; appends the
fixes it made (not yet placed under the field) to the list it is given."""


def _map_field(
    fm: FieldMap, row: Mapping[str, Any], values: Mapping[str, Any], refs: _Refs
) -> Ok[Any] | Failed:
    """Make one canonical value (see schemas.mapping for the order of the steps)."""
    fixes: list[Fix] = []
    value = _field_mapper(fm)(row, values, refs, fixes)
    return value if type(value) is Failed else Ok(value, tuple(fixes))


@_per_object
def _field_mapper(fm: FieldMap) -> _FieldMapper:
    """Compile a field's mapping once: only the steps it has, its settings bound.

    The steps run in the order schemas.mapping gives; a field without cleaning, a
    default, a value map, a range or a lookup costs a column read and a cast.
    """
    source, constant, region, cast = fm.source, fm.value, fm.region, fm.cast
    cleaners: tuple[tuple[Callable[..., Ok[str | None] | Failed], bool], ...] = tuple(
        (REGIONAL_CLEANERS[rule], True) if rule in REGIONAL_CLEANERS else (CLEANERS[rule], False)
        for rule in fm.clean
    )
    fallback, default, value_map = fm.fallback, fm.default, fm.value_map
    to_type = converter(cast)
    quantize = _quantizer(fm)
    minimum, maximum = fm.minimum, fm.maximum
    ranged = minimum is not None or maximum is not None
    lookup, known_sku, required = fm.lookup, fm.known_sku, fm.required
    checked = ranged or lookup is not None or known_sku
    extras = (fallback, default, value_map)
    if not (cleaners or checked or quantize) and all(extra is None for extra in extras):
        return _cast_mapper(source, constant, to_type)

    def mapped(
        row: Mapping[str, Any], values: Mapping[str, Any], refs: _Refs, fixes: list[Fix]
    ) -> Any:
        raw = constant if source is None else row.get(source)
        value = raw
        for clean, regional in cleaners:
            if not isinstance(value, str):
                break
            cleaned = (
                clean(value, values.get(region) if region else None) if regional else clean(value)
            )
            if isinstance(cleaned, Failed):
                return cleaned
            if cleaned.fixes:
                fixes.extend(cleaned.fixes)
            value = cleaned.value
        if fallback is not None and is_blank(value):
            value = _fallback_value(fallback, row, refs)
            if type(value) is Failed:
                return value
        if value is None and default is not None:  # else apply_default changes nothing
            defaulted = apply_default(value, default)
            fixes.extend(defaulted.fixes)
            value = defaulted.value
        if value is None:
            if not checked:
                return None
        else:
            if value_map is not None:
                mapped_key = map_key(value)
                if mapped_key not in value_map:
                    known = ", ".join(sorted(value_map))
                    return Failed(Reason.UNMAPPED_VALUE, None, f"{value!r} is none of: {known}")
                value = value_map[mapped_key]
            if value is not None:
                try:
                    value = to_type(value)
                except (TypeError, ValueError) as exc:
                    return Failed(Reason.INVALID_VALUE, None, f"{raw!r}: {exc}")
            if quantize is not None and isinstance(value, Decimal):
                quantized = quantize(value, fixes)
                if isinstance(quantized, Failed):
                    return quantized
                value = quantized
        if not checked:
            return value
        if ranged:
            out_of_range = check_range(value, "", minimum=minimum, maximum=maximum)
            if out_of_range is not None:
                return out_of_range
        if lookup is not None and value is not None:
            found = refs.lookups.get(lookup, {}).get(str(value))
            if found is None and required:
                return Failed(
                    Reason.UNRESOLVED_REFERENCE, None, f"{value!r} is not in lookup {lookup}"
                )
            value = found
        if known_sku:
            unknown = check_known_sku(None if value is None else str(value), refs.known_skus, "")
            if unknown is not None:
                return unknown
        return value

    return mapped


def _cast_mapper(source: str | None, constant: Any, to_type: Callable[[Any], Any]) -> _FieldMapper:
    """The mapper of a field that is only read and cast: no cleaning, default, map or check."""

    def mapped(
        row: Mapping[str, Any], values: Mapping[str, Any], refs: _Refs, fixes: list[Fix]
    ) -> Any:
        raw = constant if source is None else row.get(source)
        if raw is None:
            return None
        try:
            return to_type(raw)
        except (TypeError, ValueError) as exc:
            return Failed(Reason.INVALID_VALUE, None, f"{raw!r}: {exc}")

    return mapped


def _fallback_value(fallback: Fallback, row: Mapping[str, Any], refs: _Refs) -> Any:
    """The fallback's value: its column's entry in its lookup (None: no column value)."""
    key = row.get(fallback.source)
    if is_blank(key):
        return None
    found = refs.lookups.get(fallback.lookup, {}).get(str(key).strip())
    if found is None:
        return Failed(
            Reason.UNRESOLVED_REFERENCE,
            None,
            f"{fallback.source} {key!r} is not in lookup {fallback.lookup} (yet)",
        )
    return found


def _kept(fm: FieldMap, typed: Any) -> str | None:
    """The value an ``on_invalid: keep`` field carries: as typed, trimmed, as text."""
    try:
        text = convert(Cast.STR, typed)
    except (TypeError, ValueError):
        return None
    return clean_text(text).value


@dataclass(frozen=True, slots=True)
class _RowPlan:
    """The fields of a row, compiled: in mapping order, those inferred, those required.

    ``reads``: per mapper (same order), what its value is made from besides the
    reference data: its column, its fallback's column, the canonical field of its region
    (None where it has none).
    """

    mappers: tuple[tuple[FieldMap, _FieldMapper], ...]
    inferred: tuple[FieldMap, ...]
    required: tuple[str, ...]
    reads: tuple[tuple[str | None, str | None, str | None], ...]


@_per_object
def _row_plan(fields: Sequence[FieldMap]) -> _RowPlan:
    """Plain fields first, then those that need the record's country (phones, VAT ids)."""
    ordered = (*(f for f in fields if f.region is None), *(f for f in fields if f.region))
    return _RowPlan(
        tuple((fm, _field_mapper(fm)) for fm in ordered),
        tuple(fm for fm in fields if fm.infer_from),
        tuple(fm.target for fm in fields if fm.required),
        tuple(
            (fm.source, fm.fallback.source if fm.fallback else None, fm.region or None)
            for fm in ordered
        ),
    )


_Inputs = tuple[Any, Any, Any]
"""What one field mapper read: its column's value, its fallback column's, its region's."""
Trace = list[tuple[_Inputs, Any, tuple[Fix, ...]]]
"""Per field mapper of a row, in plan order: what it read, what it returned, its fixes."""


def _same(a: Any, b: Any) -> bool:
    """Whether two values read for a field map alike: the same type and the same value.

    Decimals by their digits and exponent (``1.0`` and ``1.00`` are equal, yet scaled
    differently); values of other types (times, floats) never count as the same.
    """
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is str or kind is int or kind is bool:
        return bool(a == b)
    if kind is Decimal:
        return bool(a.as_tuple() == b.as_tuple())
    return False


def _map_row(
    fields: Sequence[FieldMap],
    row: Mapping[str, Any],
    refs: _Refs,
    *,
    trace: Trace | None = None,
    prior: Trace | None = None,
) -> Ok[dict[str, Any]] | Failed:
    """Map every field of a row.

    Plain fields first, then phones and VAT ids (they need the country), then inferred
    countries, then the required check. A field that fails is quarantined, kept or fails
    the row, as its ``on_invalid`` says.

    ``trace``: filled with what each field mapper read and returned. ``prior``: the trace
    of another row of the same fields mapped with the same reference data (an update's
    new row, when its old one is mapped); a field that reads the same values as there
    takes the result made there instead of being mapped (cleansed) again. A field's
    mapper is a pure function of what it reads and the reference data, so the row maps
    exactly as it would on its own.
    """
    plan = _row_plan(fields)
    values: dict[str, Any] = {}
    fixes: list[Fix] = []
    made: list[Fix] = []
    quarantined: list[Quarantine] = []
    traced = trace is not None or prior is not None
    for position, (fm, mapper) in enumerate(plan.mappers):
        if not traced:
            result = mapper(row, values, refs, made)
        else:
            source, fallback, region = plan.reads[position]
            inputs = (
                None if source is None else row.get(source),
                None if fallback is None else row.get(fallback),
                None if region is None else values.get(region),
            )
            before = None if prior is None else prior[position]
            if before is not None and all(map(_same, before[0], inputs)):
                result = before[1]
                made.extend(before[2])
            else:
                result = mapper(row, values, refs, made)
            if trace is not None:
                trace.append((inputs, result, tuple(made)))
        if type(result) is Failed:
            made.clear()
            if fm.on_invalid is OnInvalid.DEAD_LETTER:
                return result.at(fm.target)
            typed = fm.value if fm.source is None else row.get(fm.source)
            kept = fm.on_invalid is OnInvalid.KEEP
            values[fm.target] = _kept(fm, typed) if kept else None
            quarantined.append(Quarantine(result.reason, fm.target, typed, result.detail, kept))
            continue
        values[fm.target] = result
        if made:
            fixes.extend(fix.at(fm.target) for fix in made)
            made.clear()
    if plan.inferred:
        left_out = {q.field for q in quarantined}
        for fm in plan.inferred:
            # A quarantined country stays left out: the target keeps the one it has.
            if values.get(fm.target) is None and fm.target not in left_out:
                assert fm.infer_from is not None
                vat_field, phone_field = fm.infer_from.get("vat"), fm.infer_from.get("phone")
                inferred = infer_country(
                    vat=values.get(vat_field) if vat_field else None,
                    phone=values.get(phone_field) if phone_field else None,
                )
                values[fm.target] = inferred.value
                fixes.extend(fix.at(fm.target) for fix in inferred.fixes)
    for target in plan.required:
        if is_blank(values.get(target)):
            return Failed(Reason.MISSING_REQUIRED, target, "a value is required")
    return Ok(values, tuple(fixes), tuple(quarantined))


def _fill_references(
    fields: Sequence[FieldMap], values: dict[str, Any], system: str, refs: _Refs
) -> None:
    """Fill crosswalk counterparts the row itself did not give."""
    if refs.crosswalk is None:
        return
    for fm in fields:
        ref = fm.crosswalk
        known = values.get(fm.target)
        if ref is not None and known is not None and values.get(ref.counterpart) is None:
            values[ref.counterpart] = counterpart_id(refs.crosswalk, ref.entity, system, known)


def _blank(types: Mapping[str, FieldType]) -> dict[str, Any]:
    """A record of ``types`` with every field blank: None, or an empty list for an array."""
    template, arrays = _blank_template(types)
    record: dict[str, Any] = template.copy()
    for name in arrays:
        record[name] = []
    return record


@_per_object
def _blank_template(types: Mapping[str, FieldType]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Every field of ``types`` None, and the arrays that are not nullable (blank: ``[]``)."""
    arrays = tuple(name for name, t in types.items() if t.kind == "array" and not t.nullable)
    return dict.fromkeys(types), arrays


# ------------------------------------------------------------------- changed fields

CHANGED_FIELDS: Final = "changed_fields"
SOURCE_SNAPSHOT: Final = "source_snapshot"
INITIAL_SNAPSHOT: Final = frozenset({"true", "last"})
"""The ``source_snapshot`` values of a read by the initial snapshot (not a re-snapshot)."""


@_per_object
def _direct_sources(flow: Flow) -> Mapping[str, str | None]:
    """Per field of ``flow``: the source column it is mapped from (None: a constant)."""
    return {fm.target: fm.source for fm in flow.fields}


@_per_object
def _inputs(flow: Flow) -> Mapping[str, frozenset[str]]:
    """Per mapped business field of ``flow``: the source columns its value is made from."""
    direct = _direct_sources(flow)

    def columns(fm: FieldMap) -> set[str]:
        found = {fm.source} if fm.source is not None else set()
        for name in (fm.region, *(fm.infer_from or {}).values()):
            column = direct.get(name) if name else None
            if column is not None:
                found.add(column)
        return found

    return {fm.target: frozenset(columns(fm)) for fm in flow.fields if fm.target not in ID_FIELDS}


def changed_fields(
    flow: Flow,
    raw_event: Mapping[str, Any],
    after: Mapping[str, Any] | None = None,
    refs: _Refs | None = None,
    after_trace: Trace | None = None,
) -> list[str] | None:
    """The business fields a change changed (module doc), in mapping order; None: unknown.

    ``after``: the canonical values of the new row; with it, a field whose input columns
    changed counts only if its canonical value changed too (a phone typed in another
    format, or one whose country changed while it carries its own country code, did
    not change). The old row is mapped the same way; if that fails, the input columns
    decide. ``after_trace``: how the new row was mapped (with ``refs``), so that the old
    row's fields that read what the new row's read are not cleansed again.
    """
    return _changes(flow, raw_event, after, refs, after_trace)[0]


def _changes(
    flow: Flow,
    raw_event: Mapping[str, Any],
    after: Mapping[str, Any] | None = None,
    refs: _Refs | None = None,
    after_trace: Trace | None = None,
) -> tuple[list[str] | None, dict[str, str] | None]:
    """:func:`changed_fields`, and per field of them the digest of its old value.

    The digests (:func:`value_digest`) only for an update whose old row was mapped;
    None otherwise.
    """
    inputs = _inputs(flow)
    op = raw_event.get("op")
    if snapshot_kind(raw_event) == RESNAPSHOT:
        # A re-read an operator asked for (a repair): the row as it is, every field
        # asserted, empty ones too, so a target that drifted takes the source's values.
        return list(inputs), None
    if op in ("c", "r"):
        # A new row (or a snapshot read) wrote its values; its empty fields were not
        # written by anyone, so a value on the other side is not overwritten by them.
        row = raw_event.get("after")
        direct = _direct_sources(flow)
        return [
            name
            for name in inputs
            if not isinstance(row, Mapping)
            or direct.get(name) is None
            or row.get(direct[name]) is not None
        ], None
    if op != "u":
        return list(inputs), None
    old_row, new_row = raw_event.get("before"), raw_event.get("after")
    if not isinstance(old_row, Mapping) or not isinstance(new_row, Mapping):
        return None, None
    moved = {c for c in new_row if c in old_row and old_row[c] != new_row[c]}
    changed = [name for name, columns in inputs.items() if columns & moved]
    old_values: Mapping[str, Any] | None = None
    if changed and after is not None:
        old = _map_row(flow.fields, old_row, refs or _Refs(None, None, {}), prior=after_trace)
        if isinstance(old, Ok):
            old_values = old.value
            changed = [n for n in changed if plain(old_values.get(n)) != plain(after.get(n))]
    if not changed:
        # A touch: the owner's fields, re-asserted with the values they hold.
        changed = [
            fm.target
            for fm in flow.fields
            if fm.target in inputs and fm.owner is not None and fm.owner.value == flow.system
        ]
        return changed, None
    if old_values is None:
        return changed, None
    return changed, {name: value_digest(old_values.get(name)) for name in changed}


# ---------------------------------------------------------------------------- lines


def line_parent(flow: Flow, row: Mapping[str, Any]) -> str | None:
    """Return the parent key of a child row of ``flow``'s lines (for order assembly)."""
    if flow.lines is None:
        return None
    return _id_text(row.get(flow.lines.parent))


def _line_order(value: Any) -> tuple[int, Decimal, str]:
    """Sort key of a line: numbers in numeric order, then text, then missing values."""
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return (0, Decimal(value), "")
    return (2, Decimal(0), "") if value is None else (1, Decimal(0), str(value))


LineMemo = MutableMapping[int, tuple[Mapping[str, Any], "Ok[dict[str, Any]] | Failed"]]
"""Mapped lines by their row object's ``id``: the row (kept alive, and checked to be the
one asked about) and the line mapped from it, unplaced (see :func:`to_canonical`)."""


def _mapped_line(
    flow: Flow, row: Mapping[str, Any], line_id: str, refs: _Refs
) -> Ok[dict[str, Any]] | Failed:
    """One line mapped, its references filled; fixes and failures not placed yet."""
    lines = flow.lines
    assert lines is not None
    result = _map_row(lines.fields, row, refs)
    if isinstance(result, Failed):
        return result
    types = field_types(flow.target)[lines.target].items
    assert types is not None
    item = _blank(types)
    item[flow.id_field] = line_id
    item.update(result.value)
    _fill_references(lines.fields, item, flow.system, refs)
    return Ok(item, result.fixes, result.quarantined)


def _map_lines(
    flow: Flow, rows: Sequence[Mapping[str, Any]], refs: _Refs, memo: LineMemo | None = None
) -> Ok[list[dict[str, Any]]] | Failed:
    lines = flow.lines
    assert lines is not None
    kept = [r for r in rows if all(c.holds(r) for c in lines.filter)]
    kept.sort(
        key=lambda r: (_line_order(r.get(lines.order_by or lines.key)), str(r.get(lines.key)))
    )
    mapped: list[dict[str, Any]] = []
    fixes: list[Fix] = []
    quarantined: list[Quarantine] = []
    for position, row in enumerate(kept):
        where = f"{lines.target}[{position}]"
        line_id = _id_text(row.get(lines.key))
        if line_id is None:
            return _malformed(f"a line has no usable key column {lines.key!r}").at(where)
        known = None if memo is None else memo.get(id(row))
        if known is not None and known[0] is row:
            result = known[1]
        else:
            result = _mapped_line(flow, row, line_id, refs)
            if memo is not None:
                memo[id(row)] = (row, result)
        if isinstance(result, Failed):
            return result.at(where)
        mapped.append(dict(result.value))  # the record is the event's own
        fixes.extend(fix.at(where) for fix in result.fixes)
        quarantined.extend(q.at(where) for q in result.quarantined)
    return Ok(mapped, tuple(fixes), tuple(quarantined))


# ------------------------------------------------------------------------- events


def _record(
    flow: Flow,
    change: _Change,
    *,
    version: int,
    op: str,
    entity_id: str,
    refs: _Refs,
    refined: bool = False,
) -> dict[str, Any]:
    """The record's metadata and ids, every other field blank.

    ``refined``: ``changed_fields`` stays blank, for the caller to work out from the
    mapped values (an update's own).
    """
    record = _blank(field_types(flow.target))
    record.update(
        event_id=event_id(change.system, change.lsn, change.schema, change.table, change.key),
        source_system=flow.system,
        source_lsn=change.lsn,
        source_tx_id=change.tx_id,
        source_ts_ms=change.ts_ms,
        op=op,
        version=version,
    )
    record[flow.id_field] = entity_id
    if SOURCE_SNAPSHOT in record:
        record[SOURCE_SNAPSHOT] = snapshot_kind(change.raw)
    if CHANGED_FIELDS in record and not refined:
        record[CHANGED_FIELDS] = changed_fields(flow, change.raw)
    if refs.crosswalk is not None:
        record[flow.other_id_field] = counterpart_id(
            refs.crosswalk, flow.crosswalk, flow.system, entity_id
        )
    return record


def _finish(
    flow: Flow,
    entity_id: str,
    record: dict[str, Any],
    fixes: tuple[Fix, ...],
    quarantined: tuple[Quarantine, ...] = (),
) -> Ok[CanonicalEvent] | Failed:
    event = CanonicalEvent(flow.target, entity_key(flow, entity_id), record)
    return Ok(event, fixes, quarantined)


def entity_key(flow: Flow, entity_id: str) -> str:
    """The canonical key of the entity ``entity_id`` of ``flow`` (``<system>:<id>``)."""
    return f"{flow.system}:{entity_id}"


def _leave_out(record: dict[str, Any], quarantined: Sequence[Quarantine]) -> None:
    """Name the quarantined (not kept) fields in the record; they are no change of it."""
    left_out = [q.field for q in quarantined if not q.kept]
    if not left_out or QUARANTINED_FIELDS not in record:
        return
    record[QUARANTINED_FIELDS] = left_out
    changed = record.get(CHANGED_FIELDS)
    if changed is not None:
        record[CHANGED_FIELDS] = [name for name in changed if name not in left_out]


def _entity_id(flow: Flow, change: _Change) -> str | Failed:
    value = _id_text(change.row.get(flow.entity_id))
    if value is None:
        return _malformed(f"the row has no usable entity id column {flow.entity_id!r}")
    return value


def to_canonical(
    flow: Flow,
    raw_event: Mapping[str, Any],
    *,
    known_skus: Container[str] | None = None,
    crosswalk: CrosswalkState | None = None,
    lookups: Lookups | None = None,
    lines: Sequence[Mapping[str, Any]] = (),
    trigger: Mapping[str, Any] | None = None,
    line_memo: LineMemo | None = None,
) -> Ok[CanonicalEvent] | Failed | Skipped:
    """Turn one raw change event into a canonical event of ``flow.target``.

    Args:
        flow: the flow of the event's table (``grain: entity``).
        raw_event: the decoded envelope of a change of ``flow.table``.
        known_skus: the ERP catalogue for ``known_sku`` fields; None: not checked.
        crosswalk: the links so far, to fill the other system's ids; None: not filled.
        lookups: lookup tables for ``lookup`` fields; a missing table reads as empty.
        lines: for flows with lines: the current rows (``after`` images) of the
            record's children, in any order; filtered and ordered by the flow.
        trigger: for an order re-emitted because a line changed: that line's raw
            event. Source position and event id come from it; ``version`` is the
            higher of both LSNs.
        line_memo: lines mapped before, by row object: a row found there (the same
            object) is not mapped again, one mapped now is added. The caller keeps a
            row object for one line change only, never changes it, and keeps the memo
            only while the reference data is unchanged (a line's mapping reads the
            lookups, the SKUs and the crosswalk).

    Returns:
        ``Ok(event, fixes)``, ``Failed`` (dead letter) or ``Skipped``.

    Raises:
        ValueError: ``flow`` has ``grain: location`` (use :func:`to_stock_change`).
    """
    if flow.grain is not Grain.ENTITY:
        raise ValueError(f"flow {flow.name} has grain {flow.grain}: use to_stock_change")
    refs = _Refs(known_skus, crosswalk, lookups or {})
    change = _read_change(raw_event, flow.system, flow.schema, flow.table, flow.key)
    if not isinstance(change, _Change):
        return change
    entity_id = _entity_id(flow, change)
    if isinstance(entity_id, Failed):
        return entity_id
    position = change
    if trigger is not None and flow.lines is not None:
        line_change = _read_change(
            trigger, flow.system, flow.schema, flow.lines.table, flow.lines.key
        )
        if isinstance(line_change, Failed):
            return line_change.at("trigger")
        if isinstance(line_change, _Change):
            position = line_change
    version = max(change.lsn, position.lsn)

    removed = change.op == "d"
    deleted = removed
    if not removed:
        excluded = next((c for c in flow.filter if not c.holds(change.row)), None)
        if excluded is not None:
            return Skipped(f"{flow.name}: filter {excluded} does not hold")
        deleted = any(c.holds(change.row) for c in flow.soft_delete)
    # A soft delete of a flow whose liveness is a field is mapped as an update is: the
    # row is still there, and its values (the edits before the delete) are the row's.
    bare = removed or (deleted and not carries_liveness(flow))

    # An update's own changed fields are worked out once its values are mapped.
    refined = not bare and change.op == "u" and change is position
    record = _record(
        flow,
        position,
        version=version,
        op="delete" if deleted else "upsert",
        entity_id=entity_id,
        refs=refs,
        refined=refined,
    )
    if CHANGED_FIELDS in record and position is not change:
        # An order re-emitted for a line change: its header changed only if in the
        # line's transaction (the header's last change is older otherwise).
        same = position.tx_id == change.tx_id
        record[CHANGED_FIELDS] = changed_fields(flow, change.raw) if same else []
    if bare:
        return _finish(flow, entity_id, _delete_fields(flow, change, refs, record), ())

    # An update with its old row maps that too (its changed fields): the new row's
    # trace lets the old row's unchanged fields take the values made here.
    trace: Trace | None = (
        []
        if refined and CHANGED_FIELDS in record and isinstance(change.raw.get("before"), Mapping)
        else None
    )
    mapped = _map_row(flow.fields, change.row, refs, trace=trace)
    if isinstance(mapped, Failed):
        return mapped
    values = mapped.value
    if CHANGED_FIELDS in record and refined:
        changed, priors = _changes(flow, change.raw, values, refs, trace)
        record[CHANGED_FIELDS] = changed
        if PRIOR_DIGESTS in record:
            record[PRIOR_DIGESTS] = priors
    if flow.other_id_field in values and values[flow.other_id_field] is None:
        values.pop(flow.other_id_field)  # keep what the crosswalk knows
    record.update(values)
    _fill_references(flow.fields, record, flow.system, refs)
    _leave_out(record, mapped.quarantined)
    fixes, quarantined = mapped.fixes, mapped.quarantined
    if flow.lines is not None:
        mapped_lines = _map_lines(flow, lines, refs, line_memo)
        if isinstance(mapped_lines, Failed):
            return mapped_lines
        record[flow.lines.target] = mapped_lines.value
        fixes += mapped_lines.fixes
        quarantined += mapped_lines.quarantined
    return _finish(flow, entity_id, record, fixes, quarantined)


@_per_object
def carries_liveness(flow: Flow) -> bool:
    """Whether ``flow`` maps a field from a column its ``soft_delete`` reads.

    That is liveness (``active`` from the CRM's ``deleted``): such a flow's soft deletes
    carry the row's values and that field, so the sinks merge liveness like any field;
    other soft deletes carry only ids.
    """
    columns = {c.column for c in flow.soft_delete}
    return any(fm.source in columns for fm in flow.fields)


def _delete_fields(
    flow: Flow, change: _Change, refs: _Refs, record: dict[str, Any]
) -> dict[str, Any]:
    """Fill what a delete carries besides its ids.

    That is the other system's id and the match key, when the old row has them; a value
    that fails cleansing is left out.
    """
    wanted = {flow.match_key, flow.other_id_field}
    for fm in flow.fields:
        if fm.target in wanted:
            result = _map_field(fm, change.row, record, refs)
            if isinstance(result, Ok) and result.value is not None:
                record[fm.target] = result.value
    return record


# -------------------------------------------------------------------------- stock


def to_stock_change(
    flow: Flow,
    raw_event: Mapping[str, Any],
    *,
    known_skus: Container[str] | None = None,
    lookups: Lookups | None = None,
) -> Ok[QuantChange] | Failed | Skipped:
    """Turn a raw change of a per-location stock row (``grain: location``) into a quant change.

    The flow maps ``location_id``, ``on_hand``, ``reserved`` and ``sku``; the product is
    the flow's ``entity_id`` column. A delete, a soft delete or a row that leaves the
    flow's filter removes the quant. Feed the result to :func:`streams.inventory.apply`
    with the change's LSN, and each returned total to :func:`inventory_event`.

    Raises:
        ValueError: ``flow`` is not a ``grain: location`` flow.
    """
    if flow.grain is not Grain.LOCATION:
        raise ValueError(f"flow {flow.name} has grain {flow.grain}: use to_canonical")
    refs = _Refs(known_skus, None, lookups or {})
    change = _read_change(raw_event, flow.system, flow.schema, flow.table, flow.key)
    if not isinstance(change, _Change):
        return change
    row = change.row
    gone = (
        change.op == "d"
        or not all(c.holds(row) for c in flow.filter)
        or any(c.holds(row) for c in flow.soft_delete)
    )
    if gone:
        return Ok(QuantChange(change.key, None))
    product = _entity_id(flow, change)
    if isinstance(product, Failed):
        return product
    mapped = _map_row(flow.fields, row, refs)
    if isinstance(mapped, Failed):
        return mapped
    values = mapped.value
    location = values.get("location_id")
    if location is None:
        return Failed(Reason.MISSING_REQUIRED, "location_id", "a stock row needs its location")
    quant = Quant(
        product=product,
        location=location,
        quantity=values.get("on_hand") or Decimal(0),
        reserved=values.get("reserved") or Decimal(0),
        sku=values.get("sku"),
    )
    return Ok(QuantChange(change.key, quant), mapped.fixes)


def inventory_event(
    flow: Flow,
    totals: StockTotals,
    raw_event: Mapping[str, Any],
    *,
    crosswalk: CrosswalkState | None = None,
) -> Ok[CanonicalEvent] | Failed:
    """Build the canonical inventory event of a product's new totals.

    ``raw_event`` is the stock change that caused them (source position and event id);
    the version is the totals' own (see :mod:`streams.inventory`). Stock is reported as
    it is: negative quants count, and ``oversold`` is true when ``available`` (on hand
    minus reserved) is below zero. Only a negative reservation fails.
    """
    change = _read_change(raw_event, flow.system, flow.schema, flow.table, flow.key)
    if isinstance(change, Skipped):
        return _malformed(f"stock totals caused by a change without a row: {change.reason}")
    if isinstance(change, Failed):
        return change
    impossible = check_stock(totals.reserved)
    if impossible is not None:
        return impossible
    refs = _Refs(None, crosswalk, {})
    record = _record(
        flow, change, version=totals.version, op="upsert", entity_id=totals.product, refs=refs
    )
    record.update(
        sku=totals.sku,
        on_hand=totals.on_hand,
        reserved=totals.reserved,
        available=totals.available,
        oversold=totals.oversold,
        locations=[
            {"location_id": loc.location, "on_hand": loc.on_hand, "reserved": loc.reserved}
            for loc in totals.locations
        ],
    )
    return _finish(flow, totals.product, record, ())
