"""``erpcrm reconcile``: read both databases through the mappings and compare them.

The I/O half of :mod:`erpcrm.drift`. Every row of every mapped table is read (one
``SELECT`` per table, with the commit time of the row's last write) and turned into its
canonical record by the streams stage's own functions
(:func:`streams.transform.to_canonical`; stock per product through
:func:`streams.inventory.apply`, as the streams worker totals it), so values are
compared after the same cleansing. The sinks' target tables
(:func:`sinks.targets.build_tables`) say what each direction writes and how it finds
its row. Entities are read in dependency order; the customer and product links found
are the crosswalk of the later ones (an order's customer, a stock row's CRM product).

Read-only: the databases are read in one ``REPEATABLE READ`` transaction each. The
commit times need ``track_commit_timestamp = on`` (the sinks need it too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from erpcrm.drift import Direction, EntityReport, Record, compare, target_fields
from erpcrm.failures import database_failure
from schemas.errors import SyncError
from schemas.mapping import Flow, Grain, load_mappings, ownership
from schemas.topics import CANONICAL_ENTITIES
from sinks.targets import DeleteMode, TargetTable, build_tables
from sinks.targets import Direction as SinkDirection
from streams import inventory
from streams.crosswalk import CrosswalkState, link, new_crosswalk
from streams.transform import CanonicalEvent, inventory_event, to_canonical, to_stock_change
from streams.validation import Ok

__all__ = ["ENTITIES", "WRITTEN", "Reconciler", "Rows"]

ENTITIES: Final = ("customer", "product", "contact", "inventory", "sales_order", "invoice")
"""The entities in the order they are read (links of the first two serve the others)."""
assert set(ENTITIES) == set(CANONICAL_ENTITIES)

WRITTEN: Final = "_erpcrm_written_ms"
"""The column of a row read with the commit time of its last write (ms)."""

Rows = Callable[[str, str, str], list[dict[str, Any]]]
"""``rows(system, schema, table)``: every row of a table, with ``WRITTEN``."""

Progress = Callable[[str, int, int], None]
"""Called with ``(what, done, total)`` as the entities are read and compared."""


@dataclass(frozen=True, slots=True)
class _Read:
    """One source table's rows, canonical where the flow takes them."""

    flow: Flow
    rows: list[dict[str, Any]]
    records: dict[str, dict[str, Any]]
    """Row id -> canonical record (rows the flow maps; failed and filtered ones absent)."""
    excluded: set[str]
    """Row ids outside the flow's filter (not this entity's rows at all)."""

    @property
    def by_id(self) -> dict[str, dict[str, Any]]:
        """Rows by primary key (text)."""
        return {str(r[self.flow.key]): r for r in self.rows}


def _envelope(flow: Flow, row: Mapping[str, Any], table: str | None = None) -> dict[str, Any]:
    """A snapshot read of ``row``, as the capture would publish it."""
    return {
        "op": "r",
        "before": None,
        "after": {k: v for k, v in row.items() if k != WRITTEN},
        "source": {
            "lsn": 0,
            "ts_ms": int(row.get(WRITTEN) or 0),
            "txId": None,
            "schema": flow.schema,
            "table": table or flow.table,
        },
    }


def _live(record: Mapping[str, Any]) -> bool:
    return record.get("op") != "delete" and record.get("active") is not False


class Reconciler:
    """Compares the ERP and CRM databases (see the module docstring).

    Args:
        erp_dsn, crm_dsn: read access to every mapped table of each system.
        flows: the mappings (default: :func:`schemas.mapping.load_mappings`).
    """

    def __init__(self, erp_dsn: str, crm_dsn: str, flows: Mapping[str, Flow] | None = None) -> None:
        self._dsns = {"erp": erp_dsn, "crm": crm_dsn}
        self._flows = dict(flows if flows is not None else load_mappings())
        self._tables = build_tables(self._flows)
        self._reads: dict[str, _Read] = {}
        """A run's flows read so far (a flow is the source of one direction and the
        target of the other)."""

    def run(
        self,
        entities: Sequence[str] = ENTITIES,
        *,
        since_ms: int | None = None,
        progress: Progress = lambda _what, _done, _total: None,
    ) -> list[EntityReport]:
        """Compare ``entities`` (in :data:`ENTITIES` order); one report each.

        Raises:
            SyncError: a database cannot be read.
        """
        try:
            with self._connect("erp") as erp, self._connect("crm") as crm:
                return self._run(
                    {"erp": erp, "crm": crm}, entities, since_ms=since_ms, progress=progress
                )
        except psycopg.Error as exc:
            raise SyncError(
                f"reconcile: cannot read the databases ({database_failure(exc)}); check the "
                "ERP and CRM DSNs"
            ) from None

    def _connect(self, system: str) -> psycopg.Connection[dict[str, Any]]:
        conn = psycopg.connect(
            self._dsns[system], row_factory=dict_row, application_name="erpcrm-reconcile"
        )
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return conn

    def _run(
        self,
        conns: Mapping[str, psycopg.Connection[dict[str, Any]]],
        entities: Sequence[str],
        *,
        since_ms: int | None,
        progress: Progress,
    ) -> list[EntityReport]:
        self._reads.clear()
        wanted = set(entities)
        # Customers and products give the links the later entities refer through.
        needed = [e for e in ENTITIES if e in wanted or e in ("customer", "product")]
        crosswalk = new_crosswalk()
        lookups = self._lookups(conns)
        cache: dict[tuple[str, str], list[dict[str, Any]]] = {}

        step = 0

        def rows(system: str, schema: str, table: str) -> list[dict[str, Any]]:
            if (system, table) not in cache:
                progress(f"reading {system} {schema}.{table}", step, len(needed))
                cache[(system, table)] = _select(conns[system], schema, table)
            return cache[(system, table)]

        reports = []
        for step, entity in enumerate(needed):
            report = self.compare_entity(entity, rows, crosswalk, lookups, since_ms=since_ms)
            if entity in wanted:
                reports.append(report)
            progress(f"compared {entity}", step + 1, len(needed))
        return reports

    def compare_entity(
        self,
        entity: str,
        rows: Rows,
        crosswalk: CrosswalkState,
        lookups: Mapping[str, Mapping[str, str]],
        *,
        since_ms: int | None = None,
    ) -> EntityReport:
        """Compare one entity over the rows ``rows(system, schema, table)`` returns.

        Each row has its columns and the commit time of its last write (``WRITTEN``).
        The pairs found are linked in ``crosswalk`` (entities read later refer
        through them).
        """
        directions = self._directions(entity, rows, crosswalk, lookups)
        report = compare(entity, directions, ownership(self._flows, entity), since_ms=since_ms)
        for erp_id, crm_id in report.links:
            link(crosswalk, entity, erp_id, crm_id)
        return report

    # ------------------------------------------------------------------ reading

    def _lookups(
        self, conns: Mapping[str, psycopg.Connection[dict[str, Any]]]
    ) -> dict[str, dict[str, str]]:
        """The lookup tables the flows use: product id -> SKU in each system."""
        erp = conns["erp"].execute("SELECT id, default_code FROM public.product_product")
        crm = conns["crm"].execute("SELECT id, part_number FROM public.aos_products")
        return {
            "erp_product_sku": {str(r["id"]): r["default_code"] for r in erp if r["default_code"]},
            "crm_product_sku": {str(r["id"]): r["part_number"] for r in crm if r["part_number"]},
        }

    def _flow(self, system: str, entity: str, table: str | None = None) -> Flow | None:
        for flow in self._flows.values():
            if (flow.system, flow.target) == (system, entity) and table in (None, flow.table):
                return flow
        return None

    def _read(
        self,
        flow: Flow,
        rows: Rows,
        crosswalk: CrosswalkState,
        lookups: Mapping[str, Mapping[str, str]],
    ) -> _Read:
        if flow.name in self._reads:
            return self._reads[flow.name]
        found = rows(flow.system, flow.schema, flow.table)
        children: dict[str, list[dict[str, Any]]] = {}
        if flow.lines is not None:
            for child in rows(flow.system, flow.schema, flow.lines.table):
                parent = child.get(flow.lines.parent)
                if parent is not None:
                    children.setdefault(str(parent), []).append(child)
        records: dict[str, dict[str, Any]] = {}
        excluded: set[str] = set()
        for row in found:
            row_id = str(row[flow.key])
            result = to_canonical(
                flow,
                _envelope(flow, row),
                crosswalk=crosswalk,
                lookups=lookups,
                lines=[
                    {k: v for k, v in c.items() if k != WRITTEN} for c in children.get(row_id, ())
                ],
            )
            if isinstance(result, Ok):
                event: CanonicalEvent = result.value
                records[row_id] = dict(event.record)
            elif not all(c.holds(row) for c in flow.filter):
                excluded.add(row_id)
        self._reads[flow.name] = _Read(flow, found, records, excluded)
        return self._reads[flow.name]

    def _stock(
        self,
        flow: Flow,
        rows: Rows,
        crosswalk: CrosswalkState,
        lookups: Mapping[str, Mapping[str, str]],
    ) -> list[Record]:
        """Stock totals per product from every quant, as the streams worker totals them."""
        state = inventory.InventoryState()
        envelopes: dict[str, dict[str, Any]] = {}
        quants: dict[str, list[dict[str, Any]]] = {}
        for row in rows(flow.system, flow.schema, flow.table):
            envelope = _envelope(flow, row)
            change = to_stock_change(flow, envelope, lookups=lookups)
            if not isinstance(change, Ok) or change.value.quant is None:
                continue
            product = change.value.quant.product
            inventory.apply(state, change.value, version=1)
            envelopes[product] = envelope
            quants.setdefault(product, []).append(row)
        records = []
        for product, totals in state.emitted.items():
            built = inventory_event(flow, totals, envelopes[product], crosswalk=crosswalk)
            if not isinstance(built, Ok):
                continue
            mine = quants[product]
            records.append(
                Record(
                    "erp",
                    product,
                    f"{flow.schema}.{flow.table}",
                    dict(built.value.record),
                    written_ms=max(int(q.get(WRITTEN) or 0) for q in mine),
                    keys=tuple(str(q[flow.key]) for q in mine),
                    key_column=flow.key,
                )
            )
        return records

    def _directions(
        self,
        entity: str,
        rows: Rows,
        crosswalk: CrosswalkState,
        lookups: Mapping[str, Mapping[str, str]],
    ) -> list[Direction]:
        result = []
        for way in SinkDirection:
            table = self._tables.get((way, entity))
            if table is None:
                continue
            source_flow = self._flow(way.source, entity)
            if source_flow is None:
                continue
            if source_flow.grain is Grain.LOCATION:
                sources = self._stock(source_flow, rows, crosswalk, lookups)
            else:
                read = self._read(source_flow, rows, crosswalk, lookups)
                sources = _source_records(read)
            targets = self._targets(table, rows, crosswalk, lookups)
            reverse = next(w for w in SinkDirection if w is not way)
            both = self._flow(way.target, entity) is not None
            result.append(
                Direction(
                    table,
                    sources,
                    targets,
                    provided=frozenset(f.target for f in source_flow.fields) if both else None,
                    # Rows only the sink writes (stock, invoices, contact persons): one
                    # nothing links to is drift. A target that publishes the entity
                    # itself (CRM products) may hold records of its own.
                    one_way=(reverse, entity) not in self._tables and not both,
                )
            )
        return result

    def _targets(
        self,
        table: TargetTable,
        rows: Rows,
        crosswalk: CrosswalkState,
        lookups: Mapping[str, Mapping[str, str]],
    ) -> list[Record]:
        """The target table's rows of this entity, read back as canonical values."""
        system = table.direction.target
        own = self._flow(system, table.entity, table.table)
        name = f"{table.schema}.{table.table}"
        if own is not None:
            read = self._read(own, rows, crosswalk, lookups)
            result = []
            for row in read.rows:
                row_id = str(row[own.key])
                if row_id in read.excluded:
                    continue
                mine = read.records.get(row_id)
                fields = target_fields(table, row, mine, own)
                live = _live(mine) if mine is not None else _row_live(table, row)
                result.append(_record(system, row_id, name, fields, row, live, True, own.key))
            return result
        found = []
        for row in rows(system, table.schema, table.table):
            if row.get(table.key) is None:
                continue  # another entity's row of a shared table (a partner, not a contact)
            fields = target_fields(table, row, None, None)
            found.append(
                _record(system, str(row[table.pk]), name, fields, row, _row_live(table, row), False)
            )
        return found


def _row_live(table: TargetTable, row: Mapping[str, Any]) -> bool:
    if table.delete is not DeleteMode.SOFT:
        return True
    column, dead = table.delete_flag
    return row.get(column) != dead


def _record(
    system: str,
    row_id: str,
    table: str,
    fields: Mapping[str, Any],
    row: Mapping[str, Any],
    live: bool,
    rereadable: bool,
    key_column: str = "id",
) -> Record:
    return Record(
        system,
        row_id,
        table,
        fields,
        columns=row,
        live=live,
        written_ms=int(row.get(WRITTEN) or 0),
        rereadable=rereadable,
        key_column=key_column,
    )


def _source_records(read: _Read) -> list[Record]:
    flow = read.flow
    rows = read.by_id
    return [
        _record(
            flow.system,
            row_id,
            f"{flow.schema}.{flow.table}",
            record,
            rows[row_id],
            _live(record),
            True,
            flow.key,
        )
        for row_id, record in read.records.items()
    ]


def _select(
    conn: psycopg.Connection[dict[str, Any]], schema: str, table: str
) -> list[dict[str, Any]]:
    """Every row of ``schema.table`` with the commit time of its last write (ms)."""
    query = sql.SQL(
        "SELECT t.*, (extract(epoch FROM pg_xact_commit_timestamp(t.xmin)) * 1000)::bigint"
        " AS {} FROM {}.{} AS t"
    ).format(sql.Identifier(WRITTEN), sql.Identifier(schema), sql.Identifier(table))
    return list(conn.execute(query))
