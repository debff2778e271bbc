"""Drift between the ERP and the CRM: pure comparison of both systems' records.

Pure: no database, no clock. :mod:`erpcrm.reconcile` reads the rows, turns them into
:class:`Record` s through the mappings (values cleansed as the streams stage cleanses
them) and calls :func:`compare`.

What is compared, per sink direction (one :class:`~sinks.targets.TargetTable`: the
source system's records, the target system's rows):

- **Links** are found the way the sink finds an event's row: the table's locators in
  order (the crosswalk id on the row, the id the sink gives rows it creates, then the
  business key: customer number, SKU, invoice name), dead rows skipped where the
  locator says so.
- **Missing**: a live source record the sink would write (it accepts it, the table is
  not update-only) and no target row. A live target row of a one-way table (stock,
  invoices, contact persons) that no source record links to exists only in the target.
- **Differing**: for every linked pair, each field the sink writes on update, provided
  by the source flow, not owned by the target system (an owner's field is never
  overwritten), and not an id: the source's value as the sink would write it and read
  back (:func:`sinks.targets.to_row` then :func:`sinks.targets.from_row`: value maps,
  defaults) against the target's value, cleansed the same way where the target's own
  flow reads that column. A pair where one side is deleted or archived and the other
  is not differs in ``live``.
- **Duplicates**: two records of one system linked to the same record of the other.

Which side is right (:attr:`Difference.reread`): the field's owner; for a shared field,
the side written later (commit times; a tie goes to the ERP), as the sinks decide. A
missing record is re-read from the side that has it. ``erpcrm reconcile --repair``
asks that side's capture to re-read exactly those rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from schemas.canonical import ID_FIELDS
from schemas.errors import ValidationError
from schemas.mapping import Flow, Owner
from sinks.targets import KEY, TargetTable, from_row

__all__ = [
    "Difference",
    "Duplicate",
    "EntityReport",
    "Missing",
    "Pair",
    "Record",
    "Reread",
    "compare",
    "rereads",
    "same_value",
    "target_fields",
]

LIVE: Final = "live"
"""The pseudo-field of a pair whose one side is deleted or archived and the other not."""


@dataclass(frozen=True, slots=True)
class Record:
    """One row of one system, read through the mappings.

    Attributes:
        system: ``erp`` or ``crm``.
        id: the row's primary key as text.
        table: ``schema.table`` it was read from.
        fields: its canonical values (a source flow's record, or a target row read
            back with :func:`target_fields`).
        columns: its raw column values (what locators look up).
        live: not deleted or archived.
        written_ms: commit time of its last write (ms since the epoch).
        rereadable: its table is captured, so a re-snapshot can re-read the row.
        keys: the primary keys of ``table`` a re-read takes (default: ``id``; a
            product's stock is its quants).
        key_column: ``table``'s primary key column.
    """

    system: str
    id: str
    table: str
    fields: Mapping[str, Any]
    columns: Mapping[str, Any] = field(default_factory=dict)
    live: bool = True
    written_ms: int = 0
    rereadable: bool = True
    keys: tuple[str, ...] = ()
    key_column: str = "id"

    @property
    def reread_keys(self) -> tuple[str, ...]:
        """The primary keys a re-read of this record takes."""
        return self.keys or (self.id,)

    @property
    def key(self) -> str:
        """The canonical entity key ``<system>:<id>``."""
        return f"{self.system}:{self.id}"

    def as_json(self) -> dict[str, Any]:
        """Where the record lives, JSON-ready."""
        return {"system": self.system, "table": self.table, "id": self.id}


@dataclass(frozen=True, slots=True)
class Difference:
    """One field on which a linked pair differs; ``reread``: the system that is right."""

    field: str
    erp_value: Any
    crm_value: Any
    owner: str
    reread: str

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, values as text."""
        return {
            "field": self.field,
            "erp": _text(self.erp_value),
            "crm": _text(self.crm_value),
            "owner": self.owner,
            "reread": self.reread,
        }


@dataclass(frozen=True, slots=True)
class Pair:
    """An ERP record linked to a CRM record, and how they differ."""

    erp: Record
    crm: Record
    differences: tuple[Difference, ...] = ()

    def reread(self) -> tuple[Record, ...]:
        """The records to re-read so the pair converges (each at most once)."""
        wanted = {d.reread for d in self.differences}
        found = [r for r in (self.erp, self.crm) if r.system in wanted]
        return tuple(r if r.rereadable else self._other(r) for r in found)

    def _other(self, record: Record) -> Record:
        return self.crm if record is self.erp else self.erp

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "erp": self.erp.as_json(),
            "crm": self.crm.as_json(),
            "fields": [d.as_json() for d in self.differences],
        }


@dataclass(frozen=True, slots=True)
class Missing:
    """A record one system has and the other lacks; ``exists_in`` names the first."""

    record: Record
    missing_in: str

    @property
    def repairable(self) -> bool:
        """Whether re-reading the record can create its counterpart."""
        return self.record.rereadable

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            **self.record.as_json(),
            "missing_in": self.missing_in,
            "repairable": self.repairable,
        }


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Several records of ``system`` linked to one record of the other system."""

    system: str
    ids: tuple[str, ...]
    other: Record

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"system": self.system, "ids": list(self.ids), "linked_to": self.other.as_json()}


@dataclass(frozen=True, slots=True)
class EntityReport:
    """One entity's comparison.

    ``links``: every linked pair ``(erp id, crm id)``, in sync or not, whatever the
    time scope (the crosswalk of entities that refer to this one).
    """

    entity: str
    in_sync: int
    differing: tuple[Pair, ...] = ()
    missing: tuple[Missing, ...] = ()
    duplicates: tuple[Duplicate, ...] = ()
    links: tuple[tuple[str, str], ...] = ()

    @property
    def drift(self) -> int:
        """How many drift items (differing pairs, missing records, duplicates)."""
        return len(self.differing) + len(self.missing) + len(self.duplicates)

    def reread(self) -> tuple[Record, ...]:
        """Every record a repair re-reads (differing pairs' right sides, missing ones)."""
        found: dict[tuple[str, str, str], Record] = {}
        records = [r for p in self.differing for r in p.reread()]
        records += [m.record for m in self.missing if m.repairable]
        for record in records:
            found.setdefault((record.system, record.table, record.id), record)
        return tuple(found.values())

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "entity": self.entity,
            "in_sync": self.in_sync,
            "drift": self.drift,
            "differing": [p.as_json() for p in self.differing],
            "missing": [m.as_json() for m in self.missing],
            "duplicates": [d.as_json() for d in self.duplicates],
        }


# ------------------------------------------------------------------------ values


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral() else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def same_value(a: Any, b: Any) -> bool:
    """Whether two canonical values mean the same.

    Blank text is null; numbers compare by value (``2.50 == 2.5``); other values by
    their text (a UUID and its string, a date and its ISO form).
    """
    if _blank(a) or _blank(b):
        return _blank(a) and _blank(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) if isinstance(a, bool) and isinstance(b, bool) else False
    if isinstance(a, Decimal | int | float) or isinstance(b, Decimal | int | float):
        try:
            return Decimal(str(a)) == Decimal(str(b))
        except InvalidOperation:
            return False
    return _text(a) == _text(b)


def target_fields(
    table: TargetTable, row: Mapping[str, Any], own: Mapping[str, Any] | None, flow: Flow | None
) -> dict[str, Any]:
    """A target row's canonical values for ``table``'s fields.

    ``from_row`` (value maps inverted), except where the target's own flow reads the
    same column into the same field: then that flow's cleansed value ``own`` (a phone
    typed in the target is compared in E.164, as the sink would have written it).
    """
    values = from_row(table, row)
    if own is None or flow is None:
        return values
    for c in table.columns:
        name = c.field
        if name is None or name not in own:
            continue
        fm = flow.field(name)
        if fm is not None and fm.source == c.column:
            values[name] = own[name]
    return values


def _written(table: TargetTable, record: Mapping[str, Any], column: str) -> Any:
    """The canonical value the sink would write to ``column`` and read back."""
    for c in table.columns:
        if c.column == column:
            return from_row(table, {column: c.value(record)}).get(c.field or "")
    return None


# ---------------------------------------------------------------------- compare


@dataclass(slots=True)
class _Links:
    pairs: dict[tuple[str, str], Pair] = field(default_factory=dict)
    missing: list[Missing] = field(default_factory=list)


class _Locator:
    """Finds the target row the sink would write a record to: its locators in order.

    Each locator's column is indexed once (live rows only where the locator skips dead
    ones); the first row in the targets' order wins, as the sink's ``LIMIT 1`` would.
    """

    def __init__(self, table: TargetTable, targets: Sequence[Record]) -> None:
        self._locators = table.locators
        self._index: list[dict[str, Record]] = []
        for locator in self._locators:
            index: dict[str, Record] = {}
            for target in targets:
                if locator.dead and target.columns.get(locator.dead):
                    continue
                found = target.columns.get(locator.column)
                if found is not None:
                    index.setdefault(str(found), target)
            self._index.append(index)

    def find(self, record: Record) -> Record | None:
        """The target row of ``record``, or None."""
        values = {**record.fields, KEY: record.key}
        for locator, index in zip(self._locators, self._index, strict=True):
            try:
                wanted = locator.value(values)
            except (KeyError, TypeError, ValueError):
                wanted = None
            if wanted is not None and str(wanted) in index:
                return index[str(wanted)]
        return None


def _compared_fields(
    table: TargetTable, owners: Mapping[str, Owner], provided: frozenset[str] | None
) -> list[tuple[str, str]]:
    """``(field, column)`` the sink writes on update and a pair must agree on."""
    target = table.direction.target
    result = []
    for c in table.written_columns(insert=False):
        f = c.field
        if f is None or c.compute is not None or f in ID_FIELDS or f.endswith("_id"):
            continue
        if provided is not None and f not in provided:
            continue
        if owners.get(f) == Owner(target):
            continue
        result.append((f, c.column))
    return result


def _differences(
    table: TargetTable,
    source: Record,
    target: Record,
    compared: Sequence[tuple[str, str]],
    owners: Mapping[str, Owner],
) -> list[Difference]:
    erp, crm = (source, target) if source.system == "erp" else (target, source)
    later = "crm" if crm.written_ms > erp.written_ms else "erp"
    if source.live != target.live:
        return [Difference(LIVE, erp.live, crm.live, "shared", later)]
    if not source.live:
        return []
    values = {**source.fields, KEY: source.key}
    found = []
    for name, column in compared:
        try:
            expected = _written(table, values, column)
        except ValidationError:
            continue  # the sink refuses it: a dead letter, not drift of this field
        actual = target.fields.get(name)
        if same_value(expected, actual):
            continue
        owner = owners.get(name, Owner.SHARED)
        erp_value, crm_value = (expected, actual) if source is erp else (actual, expected)
        reread = later if owner is Owner.SHARED else owner.value
        found.append(Difference(name, erp_value, crm_value, owner.value, reread))
    return found


def _direction(
    table: TargetTable,
    sources: Sequence[Record],
    targets: Sequence[Record],
    owners: Mapping[str, Owner],
    provided: frozenset[str] | None,
    links: _Links,
    one_way: bool,
) -> None:
    compared = _compared_fields(table, owners, provided)
    locate = _Locator(table, targets)
    reached: set[str] = set()
    for source in sources:
        values = {**source.fields, KEY: source.key}
        target = locate.find(source)
        if target is None:
            if source.live and not table.update_only and table.accepts(values):
                links.missing.append(Missing(source, table.direction.target))
            continue
        reached.add(target.id)
        erp, crm = (source, target) if source.system == "erp" else (target, source)
        pair_key = (erp.id, crm.id)
        differences = _differences(table, source, target, compared, owners)
        known = links.pairs.get(pair_key)
        if known is None:
            links.pairs[pair_key] = Pair(erp, crm, tuple(differences))
        else:
            names = {d.field for d in known.differences}
            extra = tuple(d for d in differences if d.field not in names)
            links.pairs[pair_key] = Pair(known.erp, known.crm, known.differences + extra)
    if one_way:
        for target in targets:
            if target.live and target.id not in reached:
                links.missing.append(Missing(target, table.direction.source))


@dataclass(frozen=True, slots=True)
class Direction:
    """One sink direction's inputs: its table, the source records, the target rows.

    ``one_way``: only the sink writes the target table (no sink writes the other way
    and the target system does not publish the entity), so a target row nothing links
    to exists only in the target. ``provided``: the fields the source flow maps (None:
    all).
    """

    table: TargetTable
    sources: Sequence[Record]
    targets: Sequence[Record]
    provided: frozenset[str] | None = None
    one_way: bool = False


def compare(
    entity: str,
    directions: Iterable[Direction],
    owners: Mapping[str, Owner],
    *,
    since_ms: int | None = None,
) -> EntityReport:
    """Compare one entity over its sink directions (see the module docstring).

    Args:
        entity: the canonical entity.
        directions: each sink direction that writes it.
        owners: the owner of each canonical field.
        since_ms: only drift of records written at or after this time (either side of
            a pair); None: all.
    """
    links = _Links()
    for d in directions:
        _direction(d.table, d.sources, d.targets, owners, d.provided, links, d.one_way)

    def recent(*records: Record) -> bool:
        return since_ms is None or any(r.written_ms >= since_ms for r in records)

    partners: dict[tuple[str, str], dict[str, Record]] = {}
    ones: dict[tuple[str, str], Record] = {}
    for pair in links.pairs.values():
        partners.setdefault(("erp", pair.erp.id), {})[pair.crm.id] = pair.crm
        partners.setdefault(("crm", pair.crm.id), {})[pair.erp.id] = pair.erp
        ones[("erp", pair.erp.id)], ones[("crm", pair.crm.id)] = pair.erp, pair.crm
    duplicates = [
        Duplicate("crm" if system == "erp" else "erp", tuple(sorted(linked)), ones[(system, id_)])
        for (system, id_), linked in partners.items()
        if len(linked) > 1 and recent(ones[(system, id_)], *linked.values())
    ]
    differing = [p for p in links.pairs.values() if p.differences and recent(p.erp, p.crm)]
    in_sync = sum(1 for p in links.pairs.values() if not p.differences)
    missing = [m for m in links.missing if recent(m.record)]
    return EntityReport(
        entity,
        in_sync=in_sync,
        differing=tuple(sorted(differing, key=lambda p: (p.erp.id, p.crm.id))),
        missing=tuple(sorted(missing, key=lambda m: (m.record.system, m.record.id))),
        duplicates=tuple(duplicates),
        links=tuple(links.pairs),
    )


@dataclass(frozen=True, slots=True)
class Reread:
    """Rows of one captured table a repair asks the capture to read again."""

    system: str
    table: str
    keys: tuple[str, ...]
    key_column: str = "id"

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "system": self.system,
            "table": self.table,
            "key_column": self.key_column,
            "keys": list(self.keys),
        }


def rereads(reports: Iterable[EntityReport]) -> list[Reread]:
    """What a repair re-reads: per system and table, the keys of every record to re-read.

    Sorted (system, table, keys) so the same drift asks for the same re-reads.
    """
    keys: dict[tuple[str, str, str], set[str]] = {}
    for report in reports:
        for record in report.reread():
            where = (record.system, record.table, record.key_column)
            keys.setdefault(where, set()).update(record.reread_keys)
    return [
        Reread(system, table, tuple(sorted(found, key=lambda k: (len(k), k))), column)
        for (system, table, column), found in sorted(keys.items())
    ]
