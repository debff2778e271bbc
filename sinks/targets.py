"""Pure field mapping from canonical records to the target systems' table rows.

One declarative :class:`TargetTable` per (direction, entity), built by
:func:`build_tables` from the YAML flows of :mod:`schemas.mapping` wherever the target
table is also a source table: the flow reading a table says which column holds which
canonical field and how source values map to canonical ones, so the sink writes the
same column and inverts the value map. Tables the other side never reads back
(``product_availability``, ``aos_invoices``, a quote's ERP order status) are declared
here.

Directions and tables:

- ERP -> CRM: customer -> ``accounts``; product -> ``aos_products``; inventory ->
  ``product_availability``; sales_order (status and amounts only, update-only) ->
  ``aos_quotes`` ``erp_order_name`` / ``erp_order_state`` / ``subtotal_amount`` /
  ``tax_amount`` / ``total_amount``; invoice -> ``aos_invoices``.
- CRM -> ERP: contact -> ``res_partner`` contact persons (``parent_id`` the account's
  partner, no customer number; the CRM owns contacts); customer -> ``res_partner`` (the
  ERP assigns ``ref`` from its sequence, read back as the customer number, never
  written: a CRM edit of it is refused like any ERP-owned field's;
  for an existing partner only CRM-owned and shared fields are written, decided by
  :func:`sinks.state.merge`); product -> ``product_product`` (update only: the ERP owns
  the catalogue; the fields the CRM maps are merged, so a CRM edit of a price, cost,
  type or part number is refused and reverted, a shared name or category goes to the
  later commit); sales_order (accepted quote) -> ``sale_order`` (``name`` from the ERP
  sequence, read back as the order number and never written, so a CRM edit of
  ``erp_order_name`` or of the amounts is refused and reverted) with its lines in
  ``sale_order_line`` (written when the order is created; afterwards the ERP owns them:
  deliveries and invoices refer to them, and a later change of them is dead-lettered,
  :mod:`sinks.lines`).

Liveness: a customer's or contact's ``active`` is a field like the others, written to the
ERP's ``active`` and the CRM's ``deleted`` (inverted) by the field merge: an archive, a
reactivation, a soft delete or an undelete on either side is a change of that field,
and the later one wins (:meth:`TargetTable.removes`).

Delete semantics (:class:`DeleteMode`), for a delete that removes its record (a source
row deleted, or a soft delete of an entity without liveness): CRM rows are soft-deleted
(``deleted = true``), ERP partners archived (``active = false``), availability rows
hard-deleted; a deleted ERP order leaves the quote alone and a deleted CRM quote leaves
the ERP order alone (cancellation flows as a state change, never as a delete).

Pure: no I/O. A value a required column cannot do without raises
:class:`~schemas.errors.ValidationError` (dead letter).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final

from schemas.errors import ConfigError, ValidationError
from schemas.mapping import Cast, FieldMap, Flow
from schemas.uuids import uuid5_text
from sinks.sql import Column, Table

__all__ = [
    "ID_NAMESPACE",
    "KEY",
    "LIVENESS",
    "ColumnMap",
    "DeleteMode",
    "Direction",
    "LinesTable",
    "Locator",
    "Reference",
    "TargetTable",
    "build_tables",
    "deterministic_id",
    "from_row",
    "is_id_field",
    "to_child_rows",
    "to_row",
    "transpose",
]

ID_NAMESPACE: Final = uuid.UUID("6f1d3c5e-2b7a-4c1e-9a53-0d8e4f6b7a21")
"""Namespace of the UUIDs the CRM sink gives rows it creates (:func:`deterministic_id`)."""

_PG_TYPE: Final[Mapping[Cast, str]] = {
    Cast.STR: "text",
    Cast.INT: "bigint",
    Cast.DECIMAL: "numeric",
    Cast.BOOL: "boolean",
    Cast.DATE: "date",
    Cast.TIMESTAMP: "timestamptz",
}


class Direction(StrEnum):
    """Which way a sink writes."""

    ERP_TO_CRM = "erp_to_crm"
    CRM_TO_ERP = "crm_to_erp"

    @property
    def source(self) -> str:
        """The system whose events the sink applies."""
        return "erp" if self is Direction.ERP_TO_CRM else "crm"

    @property
    def target(self) -> str:
        """The system the sink writes to."""
        return "crm" if self is Direction.ERP_TO_CRM else "erp"


class DeleteMode(StrEnum):
    """What a canonical delete does to the target row."""

    SOFT = "soft"
    """Set a flag column (``deleted = true`` / ``active = false``)."""
    HARD = "hard"
    """``DELETE`` the row."""
    IGNORE = "ignore"
    """Leave the row; the delete is recorded as applied."""


Compute = Callable[[Mapping[str, Any]], Any]

LIVENESS: Final = "active"
"""The canonical field saying whether a record is live (ERP ``active``, CRM ``not
deleted``): merged like any field where a table writes it (:meth:`TargetTable.removes`)."""

KEY: Final = "_key"
"""The record entry under which the runner passes the event's key (``erp:17``) to
computed columns (:func:`deterministic_id` of a row the sink creates)."""


@dataclass(frozen=True, slots=True)
class Locator:
    """One way to find an event's row in the target: ``column = value(record)``.

    Attributes:
        column: the target column looked up (unique, or unique among live rows).
        pg_type: its type.
        value: the value to look for, from the canonical record; None: not applicable.
        dead: a boolean column marking dead rows (``deleted``), which are not matched.
    """

    column: str
    pg_type: str
    value: Compute
    dead: str | None = None


@dataclass(frozen=True, slots=True)
class Reference:
    """A field holding another row's id in the target, filled from the target if missing.

    The streams stage fills crosswalk ids it knows; a link made by a sink (a partner
    the ERP sink created for a CRM account) is known first in the target itself. For
    every record (or order line, ``lines=True``) whose ``field`` is null, the sink looks
    the row up with the locators in order, inside the batch's transaction.

    Attributes:
        field: the canonical field to fill (``customer_erp_id``).
        schema, table: where the referenced rows are.
        column: the id column whose value fills ``field``.
        pg_type: its type.
        by: how to find the row, strongest first.
        lines: the field is in each item of the record's lines, not the record.
    """

    field: str
    schema: str
    table: str
    column: str
    pg_type: str
    by: tuple[Locator, ...]
    lines: bool = False
    required_if: str | None = None
    """Only required (deferred while missing) when this record field is set; without
    it the row is written without the reference (a contact with no account)."""

    @property
    def ref(self) -> Table:
        """The referenced table, for :mod:`sinks.sql`."""
        return Table(self.schema, self.table)


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """One target column.

    Attributes:
        column: the target column.
        pg_type: its type, for the ``unnest`` casts (:data:`sinks.sql.PG_TYPES`).
        field: the canonical field it holds (None for computed-only columns).
        to_target: canonical value -> target value (the inverse of a flow's ``map``).
        fallback: the target value for a canonical value missing from ``to_target``;
            None: such a value is a :class:`~schemas.errors.ValidationError`.
        default: written instead of a null (NOT NULL columns with a target default).
        compute: derives the value from the whole record (``field`` then only names the
            field the column reads back as, if any).
        required: a null is a :class:`~schemas.errors.ValidationError`.
    """

    column: str
    pg_type: str
    field: str | None = None
    to_target: Mapping[str, Any] | None = None
    fallback: Any = None
    default: Any = None
    compute: Compute | None = None
    required: bool = False
    from_target: Mapping[Any, Any] | None = dataclasses.field(
        default=None, init=False, compare=False
    )
    """The inverse of ``to_target`` (the first canonical value of a target value), made
    once: :func:`from_row` reads every current row back with it."""

    def __post_init__(self) -> None:
        if self.to_target is not None:
            inverse: dict[Any, Any] = {}
            for canonical, target in self.to_target.items():
                inverse.setdefault(target, canonical)
            object.__setattr__(self, "from_target", inverse)

    def value(self, record: Mapping[str, Any]) -> Any:
        """The column's value for a canonical record."""
        if self.compute is not None:
            value = self.compute(record)
        else:
            value = record.get(self.field) if self.field is not None else None
            if value is not None and self.to_target is not None:
                if value in self.to_target:
                    value = self.to_target[value]
                elif self.fallback is not None:
                    value = self.fallback
                else:
                    raise ValidationError(
                        f"{self.column}: no target value for {self.field}={value!r}"
                    )
        if value is None:
            value = self.default
        if value is None and self.required:
            raise ValidationError(f"{self.column}: {self.field or 'value'} is required")
        return value


@dataclass(frozen=True, slots=True)
class LinesTable:
    """Child rows (order lines), written with the parent row the sink creates."""

    schema: str
    table: str
    parent: str
    source: str
    """The canonical array field (``lines``)."""
    columns: tuple[ColumnMap, ...]

    @property
    def ref(self) -> Table:
        """The table, for :mod:`sinks.sql`."""
        return Table(self.schema, self.table)

    @property
    def sql_columns(self) -> tuple[Column, ...]:
        """Parent column first, then the mapped ones."""
        return (Column(self.parent, "bigint"), *(Column(c.column, c.pg_type) for c in self.columns))


@dataclass(frozen=True, slots=True)
class TargetTable:
    """How one canonical entity is written to one target table.

    Attributes:
        direction: the sink direction.
        entity: the canonical entity.
        schema: the target schema.
        table: the target table.
        key: the column holding the event's id in the target (the default locator;
            updates and deletes address rows by ``pk``).
        key_field: the canonical field holding ``key``'s value.
        columns: every written column (the key and conflict columns included).
        modified: the row's modification-time column (for conflict detection).
        delete: what a canonical delete does.
        delete_flag: ``(column, value)`` set by a soft delete.
        update_only: never insert (a quote's ERP status: no quote, nothing to do).
        accept: only records passing it are written (others are skipped, recorded).
        lines: child rows written with a row the sink creates.
    """

    direction: Direction
    entity: str
    schema: str
    table: str
    key: str
    key_field: str
    columns: tuple[ColumnMap, ...]
    modified: str | None = None
    delete: DeleteMode = DeleteMode.SOFT
    delete_flag: tuple[str, bool] = ("deleted", True)
    update_only: bool = False
    accept: Callable[[Mapping[str, Any]], bool] | None = None
    lines: LinesTable | None = None
    generated: frozenset[str] = field(default_factory=frozenset)
    """Columns the target fills itself (sequences): read back, never written. One that is
    also mapped (``columns``) is merged like any field: the target owns its value, so a
    source's change of it is refused (and the row re-announced), never written."""
    pk: str = "id"
    """The row's identity column: updates and deletes address rows by it."""
    pk_type: str = "uuid"
    locate: tuple[Locator, ...] = ()
    """How the row of an event is found, strongest first (default: ``key``)."""
    refs: tuple[Reference, ...] = ()
    """Reference fields filled from the target when the event lacks them."""
    announce: bool = False
    """A row the sink creates is announced: touched once, without the sink's replication
    origin, so its capture publishes it and the ids the target gave it (customer number,
    order name, CRM id) reach the other system and the crosswalk."""
    remember: bool = False
    """The sink remembers the row it creates for each source record (``erpcrm_sync.made``)
    and finds it by that when no locator does (its link column cleared in the target):
    a source record has one row, ever. A remembered row gone from the target is not made
    again (:class:`~schemas.errors.TargetRowGoneError`)."""
    to_row: Callable[[Mapping[str, Any]], dict[str, Any]] = field(
        init=False, repr=False, compare=False
    )
    """:func:`to_row` of this table, compiled once (:func:`_compile_to_row`)."""
    from_row: Callable[[Mapping[str, Any]], dict[str, Any]] = field(
        init=False, repr=False, compare=False
    )
    """:func:`from_row` of this table, compiled once (:func:`_compile_from_row`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "to_row", _compile_to_row(self.columns, self.generated))
        object.__setattr__(self, "from_row", _compile_from_row(self.columns))

    @property
    def pk_column(self) -> Column:
        """The identity column with its type."""
        return Column(self.pk, self.pk_type)

    @property
    def locators(self) -> tuple[Locator, ...]:
        """``locate``, or the key column alone."""
        if self.locate:
            return self.locate
        key = self.key_column
        return (Locator(key.name, key.pg_type, _getter(self.key_field)),)

    def written_columns(self, *, insert: bool) -> tuple[ColumnMap, ...]:
        """The columns an insert (every mapped one) or an update (not ``pk``) writes."""
        return tuple(
            c
            for c in self.columns
            if c.column not in self.generated and (insert or c.column != self.pk)
        )

    @property
    def read_columns(self) -> tuple[str, ...]:
        """What is read of a located row: ``pk``, the mapped columns, the generated ones."""
        return tuple(
            dict.fromkeys([self.pk, *(c.column for c in self.columns), *sorted(self.generated)])
        )

    @property
    def ref(self) -> Table:
        """The table, for :mod:`sinks.sql`."""
        return Table(self.schema, self.table)

    @property
    def key_column(self) -> Column:
        """The key column with its type."""
        for c in self.columns:
            if c.column == self.key:
                return Column(c.column, c.pg_type)
        raise ConfigError(f"{self.table}: key {self.key} is not a mapped column")

    @property
    def sql_columns(self) -> tuple[Column, ...]:
        """The mapped columns with their types."""
        return tuple(Column(c.column, c.pg_type) for c in self.columns)

    @property
    def fields(self) -> tuple[str, ...]:
        """The canonical fields written (what :func:`sinks.state.merge` decides on)."""
        return tuple(dict.fromkeys(c.field for c in self.columns if c.field is not None))

    def missing_references(self, record: Mapping[str, Any]) -> list[Reference]:
        """The required references (``*_erp_id`` / ``*_crm_id``) still null in ``record``.

        Of its lines for a reference in the lines; one with ``required_if`` only while
        that field is set.
        """
        missing: list[Reference] = []
        for ref in self.refs:
            required = any(c.required and c.field == ref.field for c in self.columns)
            if ref.lines and self.lines is not None:
                required = any(c.required and c.field == ref.field for c in self.lines.columns)
                lines = record.get("lines") or ()
                if required and any(line.get(ref.field) is None for line in lines):
                    missing.append(ref)
            elif ref.required_if is not None:
                if record.get(ref.required_if) is not None and record.get(ref.field) is None:
                    missing.append(ref)
            elif required and record.get(ref.field) is None:
                missing.append(ref)
        return missing

    def missing_lookups(self, record: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
        """Per missing required reference, the values it is looked up by (for a message).

        ``record`` carries its key (:data:`KEY`), as when it is applied. Returns
        ``(field, [(column, value), ...])`` per reference of :meth:`missing_references`,
        the values those of its locators that have one (of the lines lacking it, for
        a reference in the lines), in order.
        """
        result = []
        for ref in self.missing_references(record):
            holders = list(record.get("lines") or ()) if ref.lines else [record]
            found: dict[tuple[str, str], None] = {}
            for holder in holders:
                if holder.get(ref.field) is not None:
                    continue
                for locator in ref.by:
                    try:
                        value = locator.value({**holder, KEY: record.get(KEY)})
                    except (ValueError, TypeError, KeyError):
                        continue
                    if value is not None:
                        found[(locator.column, str(value))] = None
            result.append((ref.field, list(found)))
        return result

    def removes(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` is a delete applied by :attr:`delete`, not merged.

        Such a delete removes, archives or leaves alone the row, as the mode says.
        A soft delete that carries its liveness (``active: false`` and the row's values, see
        :func:`streams.transform.carries_liveness`) into a table that writes it is merged
        like an upsert: its liveness competes by commit time with the target's, and its
        values are the row's.
        """
        if record.get("op") != "delete":
            return False
        # Only ``active: false`` says the record is still there, dead: a delete without
        # it (ids only) ends the record, whatever else it carries.
        return record.get(LIVENESS) is not False or LIVENESS not in self.fields

    def accepts(self, record: Mapping[str, Any]) -> bool:
        """Whether the sink of this direction writes ``record`` here at all.

        Only events from the direction's source system (the others are this target's
        own changes coming back) passing ``accept``.
        """
        if record.get("source_system") != self.direction.source:
            return False
        return self.accept is None or bool(self.accept(record))


def is_id_field(name: str) -> bool:
    """Whether a canonical field holds an id (a link between systems), not business data."""
    return name in ("erp_id", "crm_id") or name.endswith(("_erp_id", "_crm_id"))


def _getter(name: str) -> Compute:
    def get(record: Mapping[str, Any]) -> Any:
        return record.get(name)

    return get


@lru_cache(maxsize=16_384)
def deterministic_id(entity: str, key: str) -> str:
    """The UUID a CRM row created for ``(entity, key)`` gets: replays create no twin.

    Remembered for the most recent keys: one event asks for it several times (to find
    its row, to fill its id), and a UUIDv5 is a SHA-1 each time.
    """
    return uuid5_text(ID_NAMESPACE, f"{entity}|{key}")


def to_row(
    table: TargetTable, record: Mapping[str, Any], *, key: str | None = None
) -> dict[str, Any]:
    """The target row (column -> value) for a canonical record with message key ``key``.

    Generated columns (:attr:`TargetTable.generated`) are left out: the target fills them.

    Raises:
        ValidationError: a required value is missing or has no target value.
    """
    if key is not None:
        record = {**record, KEY: key}
    return table.to_row(record)


def from_row(table: TargetTable, row: Mapping[str, Any]) -> dict[str, Any]:
    """A target row read back as canonical fields (for :class:`sinks.state.TargetView`).

    Value maps are inverted (the first canonical value of a target value wins); ids
    (``uuid`` columns, ``*_id`` fields) come back as text, as canonical ids are.
    """
    return table.from_row(row)


def _compiled(name: str, lines: list[str], scope: dict[str, Any]) -> Any:
    code = compile("\n".join(lines), f"<{name}>", "exec")
    exec(code, scope)  # noqa: S102 - source made from the mapping's column and field names
    return scope["function"]


def _compile_to_row(
    columns: Sequence[ColumnMap], generated: frozenset[str]
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """One function building a table's row from a record: ``ColumnMap.value`` per column.

    A column that only copies its field (no value map, computation or requirement) reads
    it inline, its default in place of a null; any other calls its ``value``. Columns are
    evaluated in order, so the first one that fails raises, as column by column.
    """
    scope: dict[str, Any] = {}
    items: list[str] = []
    for i, c in enumerate(columns):
        if c.column in generated:
            continue
        if c.compute is not None or c.to_target is not None or c.required:
            scope[f"c{i}"] = c.value
            expression = f"c{i}(record)"
        elif c.field is None:
            scope[f"d{i}"] = c.default
            expression = f"d{i}"
        elif c.default is None:
            expression = f"get({c.field!r})"
        else:
            scope[f"d{i}"] = c.default
            expression = f"(v if (v := get({c.field!r})) is not None else d{i})"
        items.append(f"{c.column!r}: {expression}")
    lines = ["def function(record):", "    get = record.get", f"    return {{{', '.join(items)}}}"]
    function: Callable[[Mapping[str, Any]], dict[str, Any]] = _compiled("to_row", lines, scope)
    return function


def _compile_from_row(
    columns: Sequence[ColumnMap],
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """One function reading a row back as canonical fields (see :func:`from_row`).

    Per column with a field, in order: the first column of a field present in the row
    gives it; a value map is inverted, an id made text.
    """
    scope: dict[str, Any] = {}
    lines = ["def function(row):", "    values = {}"]
    seen: set[str] = set()
    for i, c in enumerate(columns):
        if c.field is None:
            continue
        test = f"{c.column!r} in row"
        if c.field in seen:  # a later column of the same field: only if none gave it
            test += f" and {c.field!r} not in values"
        seen.add(c.field)
        lines += [f"    if {test}:", f"        v = row[{c.column!r}]"]
        conversions = []
        if c.from_target is not None:
            scope[f"m{i}"] = c.from_target
            conversions.append(f"v = m{i}.get(v, v)")
        if c.pg_type == "uuid" or c.field.endswith("_id"):
            conversions.append("v = str(v)")
        if conversions:
            lines += ["        if v is not None:", *(f"            {x}" for x in conversions)]
        lines.append(f"        values[{c.field!r}] = v")
    lines.append("    return values")
    function: Callable[[Mapping[str, Any]], dict[str, Any]] = _compiled("from_row", lines, scope)
    return function


def to_child_rows(
    lines: LinesTable, record: Mapping[str, Any], parent_id: Any
) -> list[dict[str, Any]]:
    """The child rows of a record, in line order, each with ``parent_id``."""
    rows = []
    for index, item in enumerate(record.get(lines.source) or (), start=1):
        row = {lines.parent: parent_id}
        row.update({c.column: c.value({**item, "_index": index}) for c in lines.columns})
        rows.append(row)
    return rows


def transpose(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """One list per column (the ``unnest`` parameters), from rows keyed by column."""
    return [[row.get(c.name) for row in rows] for c in columns]


# ----------------------------------------------------------------------- the tables


def _flow(flows: Mapping[str, Flow], system: str, table: str, entity: str) -> Flow:
    for flow in flows.values():
        if (flow.system, flow.table, flow.target) == (system, table, entity):
            return flow
    raise ConfigError(f"no flow maps {system}.{table} to {entity}")


def _field(flow: Flow, name: str) -> FieldMap:
    for fm in flow.fields:
        if fm.target == name:
            return fm
    raise ConfigError(f"flow {flow.name} maps no field {name}")


def _inverse(fm: FieldMap, pg_type: str = "text") -> dict[Any, Any] | None:
    """A flow's ``map`` the other way: canonical value -> source value (the first wins).

    The map's keys are source values as text (:func:`schemas.mapping.map_key`); a
    ``boolean`` column's are read back as booleans (``deleted`` <- ``active``, inverted).
    """
    if fm.value_map is None:
        return None
    inverse: dict[Any, Any] = {}
    for source_value, canonical in fm.value_map.items():
        value: Any = source_value == "true" if pg_type == "boolean" else source_value
        inverse.setdefault(canonical, value)
    return inverse


def _from_fields(
    fields: Sequence[FieldMap],
    *,
    skip: frozenset[str] = frozenset(),
    types: Mapping[str, str] | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[ColumnMap, ...]:
    """Columns read from a flow: ``source`` column <- ``target`` field, map inverted."""
    result = []
    for fm in fields:
        if fm.source is None or fm.lookup is not None or fm.target in skip:
            continue
        options = dict((extra or {}).get(fm.target, {}))
        pg_type = (types or {}).get(fm.source, _PG_TYPE[fm.cast])
        result.append(
            ColumnMap(
                column=fm.source,
                pg_type=pg_type,
                field=fm.target,
                to_target=_inverse(fm, pg_type),
                **options,
            )
        )
    return tuple(result)


def _ms_to_time(record: Mapping[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(record["source_ts_ms"]) / 1000, tz=UTC)


def _available(record: Mapping[str, Any]) -> Decimal | None:
    if record.get("available") is not None:
        return Decimal(record["available"])
    on_hand, reserved = record.get("on_hand"), record.get("reserved")
    if on_hand is None:
        return None
    return Decimal(on_hand) - Decimal(reserved or 0)


_INVOICE_STATUS: Final = {
    "not_paid": "Unpaid",
    "partial": "Partially Paid",
    "in_payment": "Paid",
    "paid": "Paid",
    "reversed": "Cancelled",
}


def _invoice_status(record: Mapping[str, Any]) -> str:
    if record.get("state") == "cancelled":
        return "Cancelled"
    if record.get("state") == "draft":
        return "Draft"
    return _INVOICE_STATUS.get(str(record.get("payment_state")), "Unpaid")


def _own_id(entity: str) -> Compute:
    """The CRM id of an event's row: the crosswalk's, else the one a sink would create."""

    def value(record: Mapping[str, Any]) -> Any:
        return record.get("crm_id") or deterministic_id(entity, str(record[KEY]))

    return value


def _created_id(entity: str) -> Compute:
    """The id a CRM row created by the sink for this event gets (crosswalk id or not)."""

    def value(record: Mapping[str, Any]) -> Any:
        return deterministic_id(entity, str(record[KEY]))

    return value


def _erp_key_id(entity: str, field_name: str) -> Compute:
    """The CRM id a sink created for the ERP record whose id is in ``field_name``."""

    def value(record: Mapping[str, Any]) -> Any:
        erp_id = record.get(field_name)
        return deterministic_id(entity, f"erp:{erp_id}") if erp_id is not None else None

    return value


def _as_int(field_name: str) -> Compute:
    def value(record: Mapping[str, Any]) -> Any:
        raw = record.get(field_name)
        return int(raw) if raw is not None and str(raw).isdigit() else None

    return value


def _person_name(record: Mapping[str, Any]) -> str | None:
    parts = [record.get("first_name"), record.get("last_name")]
    name = " ".join(str(p) for p in parts if p)
    return name or None


_LIVE: Final = ColumnMap("deleted", "boolean", compute=lambda _: False)
"""A soft-deleted CRM row that gets an upsert is live again (the record exists)."""


def build_tables(flows: Mapping[str, Flow]) -> dict[tuple[Direction, str], TargetTable]:
    """Every target table, by ``(direction, entity)``; from :func:`load_mappings` flows.

    Raises:
        ConfigError: a flow the tables are derived from is missing.
    """
    e2c, c2e = Direction.ERP_TO_CRM, Direction.CRM_TO_ERP

    def crm_id(entity: str) -> ColumnMap:
        return ColumnMap("id", "uuid", field="crm_id", compute=_own_id(entity), required=True)

    def by_crm_id(entity: str) -> tuple[Locator, ...]:
        return (
            Locator("id", "uuid", _getter("crm_id")),
            Locator("id", "uuid", _created_id(entity)),
        )

    tables = [
        TargetTable(
            e2c,
            "customer",
            "public",
            "accounts",
            key="id",
            key_field="crm_id",
            columns=(
                crm_id("customer"),
                # ``deleted`` holds liveness (``active``, inverted): a shared field,
                # merged by commit time like the others.
                *_from_fields(
                    _flow(flows, "crm", "accounts", "customer").fields,
                    extra={"active": {"default": False}},
                ),
            ),
            modified="date_modified",
            locate=(
                *by_crm_id("customer"),
                Locator("account_number", "text", _getter("customer_number"), dead="deleted"),
            ),
            announce=True,
        ),
        TargetTable(
            e2c,
            "product",
            "public",
            "aos_products",
            key="id",
            key_field="crm_id",
            columns=(
                crm_id("product"),
                *_from_fields(
                    _flow(flows, "crm", "aos_products", "product").fields,
                    extra={
                        "product_type": {"fallback": "Good", "default": "Good"},
                        "list_price": {"default": Decimal(0)},
                        "standard_price": {"default": Decimal(0)},
                        "currency": {"default": "EUR"},
                    },
                ),
                _LIVE,
            ),
            modified="date_modified",
            locate=(*by_crm_id("product"), Locator("part_number", "text", _getter("sku"))),
            announce=True,
        ),
        TargetTable(
            e2c,
            "inventory",
            "public",
            "product_availability",
            key="product_id",
            key_field="crm_id",
            columns=(
                ColumnMap("product_id", "uuid", field="crm_id", required=True),
                ColumnMap("part_number", "text", field="sku", required=True),
                ColumnMap("on_hand", "numeric", field="on_hand", default=Decimal(0)),
                ColumnMap("reserved", "numeric", field="reserved", default=Decimal(0)),
                ColumnMap("available", "numeric", field="available", compute=_available),
                ColumnMap("updated_at", "timestamptz", compute=_ms_to_time),
            ),
            delete=DeleteMode.HARD,
            pk="product_id",
            refs=(
                Reference(
                    "crm_id",
                    "public",
                    "aos_products",
                    "id",
                    "uuid",
                    by=(
                        Locator("id", "uuid", _created_id("product")),
                        Locator("part_number", "text", _getter("sku")),
                    ),
                ),
            ),
        ),
        TargetTable(
            e2c,
            "sales_order",
            "public",
            "aos_quotes",
            key="id",
            key_field="crm_id",
            columns=(
                ColumnMap("id", "uuid", field="crm_id", required=True),
                ColumnMap("erp_order_name", "text", field="order_number"),
                ColumnMap(
                    "erp_order_state",
                    "text",
                    field="state",
                    to_target=_inverse(
                        _field(_flow(flows, "erp", "sale_order", "sales_order"), "state")
                    ),
                ),
                # The ERP owns an order's amounts once it exists: a CRM edit of the
                # quote's is refused by the ERP sink and the ERP's values written back.
                ColumnMap("subtotal_amount", "numeric", field="amount_untaxed"),
                ColumnMap("tax_amount", "numeric", field="amount_tax"),
                ColumnMap("total_amount", "numeric", field="amount_total"),
            ),
            modified="date_modified",
            delete=DeleteMode.IGNORE,
            update_only=True,
            accept=lambda r: r.get("crm_id") is not None,
        ),
        TargetTable(
            e2c,
            "invoice",
            "public",
            "aos_invoices",
            key="erp_invoice_name",
            key_field="invoice_number",
            columns=(
                ColumnMap("id", "uuid", compute=_created_id("invoice")),
                ColumnMap("erp_invoice_name", "text", field="invoice_number", required=True),
                ColumnMap("name", "text", compute=lambda r: r.get("invoice_number")),
                ColumnMap("account_id", "uuid", field="customer_crm_id"),
                ColumnMap("status", "text", compute=_invoice_status),
                ColumnMap("invoice_date", "date", field="invoice_date"),
                ColumnMap("due_date", "date", field="due_date"),
                ColumnMap("currency_id", "text", field="currency", default="EUR"),
                ColumnMap("subtotal_amount", "numeric", field="amount_untaxed", default=0),
                ColumnMap("tax_amount", "numeric", field="amount_tax", default=0),
                ColumnMap("total_amount", "numeric", field="amount_total", default=0),
                ColumnMap("amount_due", "numeric", field="amount_due", default=0),
            ),
            modified="date_modified",
            refs=(
                Reference(
                    "customer_crm_id",
                    "public",
                    "accounts",
                    "id",
                    "uuid",
                    by=(Locator("id", "uuid", _erp_key_id("customer", "customer_erp_id")),),
                ),
            ),
        ),
    ]
    partner = _flow(flows, "erp", "res_partner", "customer")
    order = _flow(flows, "erp", "sale_order", "sales_order")
    catalogue = _flow(flows, "erp", "product_product", "product")
    crm_product = {fm.target for fm in _flow(flows, "crm", "aos_products", "product").fields}
    tables += [
        TargetTable(
            c2e,
            "contact",
            "public",
            "res_partner",
            key="crm_contact_id",
            key_field="crm_id",
            columns=(
                ColumnMap("crm_contact_id", "uuid", field="crm_id", required=True),
                ColumnMap("parent_id", "bigint", field="customer_erp_id"),
                ColumnMap("name", "text", compute=_person_name, required=True),
                ColumnMap("function", "text", field="title"),
                ColumnMap("email", "text", field="email"),
                ColumnMap("mobile", "text", field="phone"),
                ColumnMap("phone", "text", field="phone_work"),
                ColumnMap("country_code", "text", field="country_code"),
                ColumnMap("type", "text", compute=lambda _: "contact"),
                ColumnMap("is_company", "boolean", compute=lambda _: False),
                ColumnMap("customer_rank", "integer", compute=lambda _: 0),
                ColumnMap("ref", "text", compute=lambda _: None),  # no customer number
                ColumnMap("active", "boolean", field="active", default=True),
            ),
            modified="write_date",
            delete_flag=("active", False),
            pk="id",
            pk_type="bigint",
            refs=(
                Reference(
                    "customer_erp_id",
                    "public",
                    "res_partner",
                    "id",
                    "bigint",
                    by=(Locator("crm_account_id", "uuid", _getter("customer_crm_id")),),
                    required_if="customer_crm_id",
                ),
            ),
        ),
        TargetTable(
            c2e,
            "customer",
            "public",
            "res_partner",
            key="crm_account_id",
            key_field="crm_id",
            # ``ref`` is mapped although never written (``generated``): the merge reads
            # the customer number the ERP gave, so a CRM edit of it is refused and the
            # ERP's number re-announced, as any field the ERP owns.
            columns=_from_fields(
                partner.fields,
                types={"crm_account_id": "uuid"},
                extra={
                    "crm_id": {"required": True},
                    "name": {"required": True},
                    "is_company": {"default": True},
                    "active": {"default": True},
                },
            ),
            modified="write_date",
            delete_flag=("active", False),
            generated=frozenset({"ref"}),
            pk="id",
            pk_type="bigint",
            locate=(
                Locator("crm_account_id", "uuid", _getter("crm_id")),
                Locator("id", "bigint", _as_int("erp_id")),
                Locator("ref", "text", _getter("customer_number")),
            ),
            announce=True,
        ),
        TargetTable(
            c2e,
            "product",
            "public",
            "product_product",
            key="id",
            key_field="erp_id",
            # The ERP owns the catalogue: a product is never created or deleted from the
            # CRM. Its fields the CRM maps are read and merged: a CRM edit of one the ERP
            # owns (part number, prices, type) is refused and the product re-announced,
            # so the ERP's values return to the CRM; a shared one (name, category) goes
            # to the later commit, as everywhere.
            columns=(
                ColumnMap("id", "bigint", field="erp_id"),
                *_from_fields(
                    catalogue.fields,
                    skip=frozenset(fm.target for fm in catalogue.fields) - crm_product,
                ),
            ),
            modified="write_date",
            delete=DeleteMode.IGNORE,
            update_only=True,
            pk="id",
            pk_type="bigint",
            locate=(
                Locator("id", "bigint", _as_int("erp_id")),
                Locator("default_code", "text", _getter("sku")),
            ),
        ),
        TargetTable(
            c2e,
            "sales_order",
            "public",
            "sale_order",
            key="crm_quote_id",
            key_field="crm_id",
            # ``name`` (the order number) is mapped although never written
            # (``generated``): a CRM edit of ``erp_order_name`` is refused and the
            # ERP's name re-announced, as any field the ERP owns.
            columns=_from_fields(
                order.fields,
                types={"crm_quote_id": "uuid", "partner_id": "bigint"},
                extra={
                    "crm_id": {"required": True},
                    "customer_erp_id": {"required": True},
                    "state": {"default": "sale"},
                    "date_order": {"compute": lambda r: r.get("date_order") or _ms_to_time(r)},
                    "currency": {"default": "EUR"},
                    "amount_untaxed": {"default": Decimal(0)},
                    "amount_tax": {"default": Decimal(0)},
                    "amount_total": {"default": Decimal(0)},
                },
            ),
            modified="write_date",
            delete=DeleteMode.IGNORE,
            accept=lambda r: r.get("state") in (None, "confirmed"),
            generated=frozenset({"name"}),
            pk="id",
            pk_type="bigint",
            locate=(
                Locator("crm_quote_id", "uuid", _getter("crm_id")),
                Locator("id", "bigint", _as_int("erp_id")),
            ),
            refs=(
                Reference(
                    "customer_erp_id",
                    "public",
                    "res_partner",
                    "id",
                    "bigint",
                    by=(
                        Locator("crm_account_id", "uuid", _getter("customer_crm_id")),
                        Locator("ref", "text", _getter("customer_number")),
                    ),
                ),
                Reference(
                    "product_erp_id",
                    "public",
                    "product_product",
                    "id",
                    "bigint",
                    by=(Locator("default_code", "text", _getter("sku")),),
                    lines=True,
                ),
            ),
            announce=True,
            remember=True,
            lines=LinesTable(
                "public",
                "sale_order_line",
                parent="order_id",
                source="lines",
                columns=(
                    ColumnMap("sequence", "integer", compute=lambda i: 10 * int(i["_index"])),
                    *_from_fields(
                        order.lines.fields if order.lines is not None else (),
                        types={"product_id": "bigint"},
                        extra={
                            "product_erp_id": {"required": True},
                            "description": {
                                "compute": lambda i: i.get("description") or i.get("sku"),
                                "required": True,
                            },
                            "quantity": {"required": True},
                            "unit_price": {"default": Decimal(0)},
                            "discount": {"default": Decimal(0)},
                            "subtotal": {"default": Decimal(0)},
                        },
                    ),
                ),
            ),
        ),
    ]
    return {(t.direction, t.entity): t for t in tables}
