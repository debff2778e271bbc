"""Workload generator: paced, realistic business activity against the demo ERP and CRM.

:func:`run_workload` drives both demo databases (``deploy/sql/erp.sql`` and
``deploy/sql/crm.sql``) with the day-to-day work of a sales and warehouse team: new and
edited customers, price changes, stock moves, sales orders, invoices and payments in the
ERP; new and edited accounts and contacts, opportunities, quotes and won quotes in the
CRM. A chosen share of the operations carries dirty data (:class:`~erpcrm.dirty.DirtyKind`).

The module has two halves. The pure half (:class:`OperationPlanner`, the ``plan_*``
functions, :func:`line_amounts`, :func:`payment_outcome`, :class:`Pacer`) decides what
happens and with which values; it does no I/O and is reproducible from a seed. The I/O
half executes each operation as its own short transaction on one persistent connection
per database and counts what it committed.

Contract of a run:

* operations start ``1/rate`` seconds apart; after a stall the spacing resumes from the
  current time, with no catch-up burst;
* every operation is one transaction (or, with ``ops_per_commit`` > 1, one savepoint in
  a transaction committed every that many operations); the per-table counts in
  :class:`WorkloadReport` include only committed transactions;
* an operation that fails in the database is rolled back and counted in ``failed`` by
  kind and error class; the run goes on;
* a lost connection is re-established with exponential backoff (the operation that was
  in flight counts as failed, even if its COMMIT reached the server) and counted in
  ``reconnects``; :class:`WorkloadError` is raised only when a database stays unreachable
  for ``reconnect_timeout`` seconds;
* the same seed against the same database state performs the same operations with the
  same values.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Literal, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from erpcrm import dirty
from erpcrm.dirty import ContactValues, DirtyKind, PartyValues
from schemas.errors import SyncError

__all__ = [
    "DEFAULT_WEIGHTS",
    "DIRTY_TARGETS",
    "TAX_RATE",
    "LineAmounts",
    "LineSpec",
    "OpKind",
    "Operation",
    "OperationPlanner",
    "Pacer",
    "Payment",
    "PriceChange",
    "StockMove",
    "System",
    "TableCounts",
    "WorkloadError",
    "WorkloadReport",
    "line_amounts",
    "merge_reports",
    "payment_outcome",
    "plan_contact_field",
    "plan_lines",
    "plan_party_field",
    "plan_payment",
    "plan_price_change",
    "plan_stock_move",
    "run_workload",
    "run_workload_parallel",
]

logger = logging.getLogger(__name__)

APPLICATION_NAME = "erpcrm-workload"
TAX_RATE = Decimal("0.19")
"""The single VAT rate of the demo systems (the seed uses the same)."""

_CENT = Decimal("0.01")


class WorkloadError(SyncError):
    """A workload run cannot go on (a database stayed unreachable)."""


class System(StrEnum):
    """The two demo systems."""

    ERP = "erp"
    CRM = "crm"


class OpKind(StrEnum):
    """One kind of business operation; the value is ``<system>.<operation>``."""

    ERP_NEW_CUSTOMER = "erp.new_customer"
    ERP_UPDATE_CUSTOMER = "erp.update_customer"
    ERP_PRICE_CHANGE = "erp.price_change"
    ERP_STOCK_MOVE = "erp.stock_move"
    ERP_NEW_SALE_ORDER = "erp.new_sale_order"
    ERP_CONFIRM_ORDER = "erp.confirm_order"
    ERP_NEW_INVOICE = "erp.new_invoice"
    ERP_PAYMENT = "erp.payment"
    CRM_NEW_ACCOUNT = "crm.new_account"
    CRM_UPDATE_ACCOUNT = "crm.update_account"
    CRM_NEW_CONTACT = "crm.new_contact"
    CRM_UPDATE_CONTACT = "crm.update_contact"
    CRM_NEW_OPPORTUNITY = "crm.new_opportunity"
    CRM_NEW_QUOTE = "crm.new_quote"
    CRM_ACCEPT_QUOTE = "crm.accept_quote"

    @property
    def system(self) -> System:
        """The system the operation writes to."""
        return System(self.value.partition(".")[0])


DEFAULT_WEIGHTS: Mapping[OpKind, float] = {
    OpKind.ERP_NEW_CUSTOMER: 4,
    OpKind.ERP_UPDATE_CUSTOMER: 10,
    OpKind.ERP_PRICE_CHANGE: 6,
    OpKind.ERP_STOCK_MOVE: 22,
    OpKind.ERP_NEW_SALE_ORDER: 8,
    OpKind.ERP_CONFIRM_ORDER: 4,
    OpKind.ERP_NEW_INVOICE: 7,
    OpKind.ERP_PAYMENT: 5,
    OpKind.CRM_NEW_ACCOUNT: 4,
    OpKind.CRM_UPDATE_ACCOUNT: 8,
    OpKind.CRM_NEW_CONTACT: 4,
    OpKind.CRM_UPDATE_CONTACT: 6,
    OpKind.CRM_NEW_OPPORTUNITY: 2,
    OpKind.CRM_NEW_QUOTE: 7,
    OpKind.CRM_ACCEPT_QUOTE: 5,
}
"""Relative frequency of each operation kind (a working day: stock moves dominate)."""

_PARTY_EDITS = frozenset(
    {
        OpKind.ERP_NEW_CUSTOMER,
        OpKind.ERP_UPDATE_CUSTOMER,
        OpKind.CRM_NEW_ACCOUNT,
        OpKind.CRM_UPDATE_ACCOUNT,
    }
)
_PERSON_EDITS = _PARTY_EDITS | {OpKind.CRM_NEW_CONTACT, OpKind.CRM_UPDATE_CONTACT}

DIRTY_TARGETS: Mapping[DirtyKind, frozenset[OpKind]] = {
    DirtyKind.PADDING: _PERSON_EDITS,
    DirtyKind.WRONG_CASE: _PERSON_EDITS,
    DirtyKind.BAD_PHONE: _PERSON_EDITS,
    DirtyKind.BAD_EMAIL: _PERSON_EDITS,
    DirtyKind.DUPLICATE_CUSTOMER: frozenset({OpKind.ERP_NEW_CUSTOMER, OpKind.CRM_NEW_ACCOUNT}),
    DirtyKind.MISSING_COUNTRY: _PARTY_EDITS,
    DirtyKind.NEGATIVE_QUANTITY: frozenset(
        {OpKind.ERP_STOCK_MOVE, OpKind.CRM_NEW_QUOTE, OpKind.CRM_ACCEPT_QUOTE}
    ),
    DirtyKind.UNKNOWN_SKU: frozenset({OpKind.CRM_NEW_QUOTE, OpKind.CRM_ACCEPT_QUOTE}),
}
"""Which operation kinds can carry each kind of dirt.

Accepting a quote makes it an order for the ERP: a dirty acceptance picks a quote that
carries that dirt (a line with a negative quantity or an unknown SKU); a clean one only
a quote whose every line is valid, so clean operations never turn old dirt into orders.
"""


# --- the pure half: planning ---------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One planned operation.

    ``salt`` seeds the operation's own random generator (:meth:`rng`), from which the
    executor draws every value and every choice of an existing row, in a fixed order.
    """

    seq: int
    kind: OpKind
    dirty: DirtyKind | None
    salt: int

    @property
    def system(self) -> System:
        """The system the operation writes to."""
        return self.kind.system

    def rng(self) -> random.Random:
        """A fresh generator for this operation's values (same salt, same values)."""
        return random.Random(self.salt)  # noqa: S311 - reproducible data, not secrets


class OperationPlanner:
    """An endless, reproducible stream of :class:`Operation`.

    Each operation is dirty with probability ``dirty_ratio``. A dirty operation first
    draws its kind of dirt uniformly, then an operation kind able to carry it (by
    ``weights``); a clean one draws its kind by ``weights``. Pure: the stream depends
    only on the constructor arguments.
    """

    def __init__(
        self,
        seed: int,
        dirty_ratio: float,
        weights: Mapping[OpKind, float] | None = None,
    ) -> None:
        if not 0.0 <= dirty_ratio <= 1.0:
            raise ValueError(f"dirty_ratio must be within [0, 1], got {dirty_ratio}")
        chosen = dict(DEFAULT_WEIGHTS if weights is None else weights)
        if any(w < 0 for w in chosen.values()) or sum(chosen.values()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        self._rng = random.Random(seed)  # noqa: S311 - reproducible data, not secrets
        self._dirty_ratio = dirty_ratio
        self._kinds = [k for k, w in chosen.items() if w > 0]
        self._weights = [chosen[k] for k in self._kinds]
        self._dirty_kinds = [
            d for d in DirtyKind if any(k in DIRTY_TARGETS[d] for k in self._kinds)
        ]
        self._seq = 0

    def next(self) -> Operation:
        """The next operation of the stream."""
        rng = self._rng
        self._seq += 1
        dirty_kind: DirtyKind | None = None
        kinds, weights = self._kinds, self._weights
        if self._dirty_kinds and rng.random() < self._dirty_ratio:
            dirty_kind = rng.choice(self._dirty_kinds)
            pairs = [
                (k, w)
                for k, w in zip(kinds, weights, strict=True)
                if k in DIRTY_TARGETS[dirty_kind]
            ]
            kinds, weights = [k for k, _ in pairs], [w for _, w in pairs]
        kind = rng.choices(kinds, weights)[0]
        return Operation(self._seq, kind, dirty_kind, rng.getrandbits(64))

    def __iter__(self) -> Iterator[Operation]:
        while True:
            yield self.next()


def plan_party_field(rng: random.Random, system: System, dirty_kind: DirtyKind | None) -> str:
    """Which field group of a customer/account an edit changes (see :func:`dirty.party_changes`)."""
    if dirty_kind is DirtyKind.BAD_PHONE:
        return "phone"
    if dirty_kind is DirtyKind.BAD_EMAIL:
        return "email"
    if dirty_kind is DirtyKind.MISSING_COUNTRY:
        return "address"
    if dirty_kind in (DirtyKind.PADDING, DirtyKind.WRONG_CASE):
        return rng.choice(("name", "email", "address"))
    if system is System.CRM:
        return rng.choices(("email", "phone", "address", "industry"), (3, 3, 3, 1))[0]
    return rng.choices(("email", "phone", "address"), (3, 3, 3))[0]


def plan_contact_field(rng: random.Random, dirty_kind: DirtyKind | None) -> str:
    """Which field group of a contact an edit changes (see :func:`dirty.contact_changes`)."""
    if dirty_kind is DirtyKind.BAD_PHONE:
        return "phone"
    if dirty_kind is DirtyKind.BAD_EMAIL:
        return "email"
    if dirty_kind in (DirtyKind.PADDING, DirtyKind.WRONG_CASE):
        return rng.choice(("name", "email"))
    return rng.choices(("email", "phone", "title", "name"), (3, 3, 2, 1))[0]


@dataclass(frozen=True)
class LineSpec:
    """One order/quote line as planned.

    ``product_pick`` in [0, 1) chooses an existing product. With ``unknown_sku`` set the
    line names a product the ERP does not know: as a new CRM product when
    ``new_product`` is true, else as a free-text line without a product.
    """

    product_pick: float
    quantity: Decimal
    discount: Decimal
    unknown_sku: str | None = None
    unknown_price: Decimal | None = None
    new_product: bool = False


def plan_lines(rng: random.Random, dirty_kind: DirtyKind | None) -> tuple[LineSpec, ...]:
    """One to five lines; ``NEGATIVE_QUANTITY`` / ``UNKNOWN_SKU`` spoil exactly one of them."""
    lines = [
        LineSpec(
            product_pick=rng.random(),
            quantity=Decimal(rng.choice((1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 12, 20, 25, 50))),
            discount=Decimal(rng.choice((0, 0, 0, 0, 0, 5, 10, 15))),
        )
        for _ in range(rng.randint(1, 5))
    ]
    if dirty_kind is DirtyKind.NEGATIVE_QUANTITY:
        i = rng.randrange(len(lines))
        lines[i] = dataclasses.replace(lines[i], quantity=dirty.negative_quantity(rng))
    elif dirty_kind is DirtyKind.UNKNOWN_SKU:
        i = rng.randrange(len(lines))
        lines[i] = dataclasses.replace(
            lines[i],
            unknown_sku=dirty.unknown_sku(rng),
            unknown_price=Decimal(rng.randint(500, 50000)) / 100,
            new_product=rng.random() < 0.5,
        )
    return tuple(lines)


@dataclass(frozen=True)
class StockMove:
    """A change to one quant.

    Clean moves add ``quantity_delta`` / ``reserved_delta`` and never take stock below
    zero; ``set_quantity`` (dirty) overwrites the quantity with a negative value.
    """

    product_pick: float
    location_pick: float
    quantity_delta: Decimal
    reserved_delta: Decimal
    set_quantity: Decimal | None = None


def plan_stock_move(rng: random.Random, dirty_kind: DirtyKind | None) -> StockMove:
    """A receipt, a delivery or a reservation change; an oversold quant when dirty."""
    product_pick, location_pick = rng.random(), rng.random()
    if dirty_kind is DirtyKind.NEGATIVE_QUANTITY:
        return StockMove(
            product_pick, location_pick, Decimal(0), Decimal(0), dirty.negative_quantity(rng)
        )
    move = rng.choices(("receipt", "delivery", "reservation"), (3, 5, 2))[0]
    if move == "receipt":
        return StockMove(product_pick, location_pick, Decimal(rng.randint(5, 120)), Decimal(0))
    if move == "delivery":
        qty = rng.randint(1, 25)
        return StockMove(product_pick, location_pick, Decimal(-qty), Decimal(-rng.randint(0, qty)))
    return StockMove(product_pick, location_pick, Decimal(0), Decimal(rng.randint(-5, 10)))


@dataclass(frozen=True)
class PriceChange:
    """Multiplicative change of a product's sales price and cost."""

    list_factor: Decimal
    cost_factor: Decimal


def plan_price_change(rng: random.Random) -> PriceChange:
    """A price list revision of a few percent, up more often than down."""
    list_pct = rng.choice((-10, -6, -4, -3, -2, 2, 3, 4, 5, 6, 8, 10))
    cost_pct = rng.choice((0, 0, 1, 2, 3, 5)) if rng.random() < 0.5 else 0
    return PriceChange(
        Decimal(100 + list_pct) / 100,
        Decimal(100 + cost_pct) / 100,
    )


@dataclass(frozen=True)
class Payment:
    """A customer payment: the full residual (``full``) or ``fraction`` of it.

    ``reconcile`` says whether the bank statement is matched at once (``paid``) or
    later (``in_payment``).
    """

    full: bool
    fraction: Decimal
    reconcile: bool


def plan_payment(rng: random.Random) -> Payment:
    """Most customers pay in full; some pay a part."""
    return Payment(
        full=rng.random() < 0.7,
        fraction=Decimal(rng.choice((25, 30, 40, 50, 60, 75))) / 100,
        reconcile=rng.random() < 0.5,
    )


def payment_outcome(payment_state: str, residual: Decimal, payment: Payment) -> tuple[str, Decimal]:
    """The invoice's ``(payment_state, amount_residual)`` after ``payment``.

    An invoice ``in_payment`` only gets reconciled (``paid``); otherwise the residual
    shrinks, never below zero.
    """
    if payment_state == "in_payment" or residual <= 0:
        return "paid", Decimal("0.00")
    if payment.full:
        return ("paid" if payment.reconcile else "in_payment"), Decimal("0.00")
    remaining = residual - (residual * payment.fraction).quantize(_CENT, ROUND_HALF_UP)
    if remaining <= 0:
        return "paid", Decimal("0.00")
    return "partial", remaining


@dataclass(frozen=True)
class LineAmounts:
    """Amounts of one line, rounded to cents the way the demo systems round them."""

    gross: Decimal
    """quantity x list price, before discount."""
    unit_price: Decimal
    """price per unit after discount."""
    subtotal: Decimal
    tax: Decimal
    total: Decimal


def line_amounts(quantity: Decimal, price: Decimal, discount: Decimal) -> LineAmounts:
    """Line amounts as the ERP computes them (``round(qty * price * (1 - d/100), 2)``, 19 % VAT)."""
    factor = 1 - discount / 100
    subtotal = (quantity * price * factor).quantize(_CENT, ROUND_HALF_UP)
    tax = (subtotal * TAX_RATE).quantize(_CENT, ROUND_HALF_UP)
    return LineAmounts(
        gross=(quantity * price).quantize(_CENT, ROUND_HALF_UP),
        unit_price=(price * factor).quantize(_CENT, ROUND_HALF_UP),
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
    )


class Pacer:
    """Spaces operation starts ``1 / rate`` seconds apart on a caller-supplied clock.

    Small lateness is absorbed so the average rate holds; after falling behind by more
    than one interval the schedule restarts from the current time instead of bursting
    to catch up. ``rate = math.inf`` means no pacing.
    """

    def __init__(self, rate: float, start: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 (math.inf for no pacing), got {rate}")
        self._interval = 0.0 if math.isinf(rate) else 1.0 / rate
        self._next = start

    def wait_time(self, now: float) -> float:
        """Seconds until the next operation may start (0.0 if it is due)."""
        return max(0.0, self._next - now)

    def mark(self, now: float, weight: float = 1.0) -> None:
        """Record that an operation started at ``now``, counting as ``weight`` units.

        The rate is in units per second: one unit per operation by default, or the
        operation's row changes when the workload is paced by changes.
        """
        if now - self._next > self._interval:
            self._next = now
        self._next += self._interval * weight


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableCounts:
    """Rows one table gained and rows updated in it, by committed operations."""

    inserts: int = 0
    updates: int = 0


@dataclass(frozen=True)
class WorkloadReport:
    """What a run did.

    ``operations`` counts every attempted operation: ``committed`` + ``skipped`` (nothing
    to act on, e.g. no open quote to accept) + failed. ``tables`` maps system
    (``"erp"``/``"crm"``) to table to :class:`TableCounts` of committed transactions;
    ``dirty`` counts committed operations that carried dirty data. ``failed`` maps an
    operation kind to error class name to count. ``achieved_rate`` is operations per
    second of elapsed time.
    """

    operations: int
    committed: int
    skipped: Mapping[str, int]
    failed: Mapping[str, Mapping[str, int]]
    by_kind: Mapping[str, int]
    tables: Mapping[str, Mapping[str, TableCounts]]
    dirty: int
    dirty_by_kind: Mapping[str, int]
    reconnects: Mapping[str, int]
    elapsed_seconds: float
    achieved_rate: float

    @property
    def failed_total(self) -> int:
        """Number of failed operations of any kind."""
        return sum(sum(errors.values()) for errors in self.failed.values())

    @property
    def changes(self) -> int:
        """Row changes committed (rows inserted plus rows updated, both systems)."""
        return sum(
            c.inserts + c.updates for tables in self.tables.values() for c in tables.values()
        )

    @property
    def changes_rate(self) -> float:
        """Committed row changes per second of elapsed time."""
        return self.changes / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def inserts(self, system: str, table: str) -> int:
        """Rows inserted into ``system``'s ``table``."""
        return self.tables.get(system, {}).get(table, TableCounts()).inserts

    def updates(self, system: str, table: str) -> int:
        """Rows updated in ``system``'s ``table``."""
        return self.tables.get(system, {}).get(table, TableCounts()).updates

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the report."""
        return {
            "operations": self.operations,
            "committed": self.committed,
            "skipped": dict(self.skipped),
            "failed": {kind: dict(errors) for kind, errors in self.failed.items()},
            "failed_total": self.failed_total,
            "by_kind": dict(self.by_kind),
            "tables": {
                system: {t: dataclasses.asdict(c) for t, c in tables.items()}
                for system, tables in self.tables.items()
            },
            "dirty": self.dirty,
            "dirty_by_kind": dict(self.dirty_by_kind),
            "reconnects": dict(self.reconnects),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "achieved_rate": round(self.achieved_rate, 2),
            "changes": self.changes,
            "changes_rate": round(self.changes_rate, 2),
        }


class _Tally:
    """Mutable counters behind :class:`WorkloadReport`."""

    def __init__(self) -> None:
        self.operations = 0
        self.committed = 0
        self.skipped: Counter[str] = Counter()
        self.failed: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.by_kind: Counter[str] = Counter()
        self.inserts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.updates: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.dirty = 0
        self.dirty_by_kind: Counter[str] = Counter()
        self.reconnects: Counter[str] = Counter()

    def add(self, report: WorkloadReport) -> None:
        """Add the counts of another run's report (see :func:`merge_reports`)."""
        self.operations += report.operations
        self.committed += report.committed
        self.skipped.update(report.skipped)
        for kind, errors in report.failed.items():
            self.failed[kind].update(errors)
        self.by_kind.update(report.by_kind)
        for system, tables in report.tables.items():
            for table, counts in tables.items():
                self.inserts[system][table] += counts.inserts
                self.updates[system][table] += counts.updates
        self.dirty += report.dirty
        self.dirty_by_kind.update(report.dirty_by_kind)
        self.reconnects.update(report.reconnects)

    def commit(self, op: Operation, changes: _Changes) -> None:
        """Count ``op`` as committed with its row changes."""
        system = op.system.value
        self.committed += 1
        self.by_kind[op.kind.value] += 1
        self.inserts[system].update(changes.inserts)
        self.updates[system].update(changes.updates)
        if op.dirty is not None and changes.dirty_applied:
            self.dirty += 1
            self.dirty_by_kind[op.dirty.value] += 1

    def report(self, elapsed: float) -> WorkloadReport:
        systems = sorted(set(self.inserts) | set(self.updates))
        tables = {
            s: {
                t: TableCounts(self.inserts[s][t], self.updates[s][t])
                for t in sorted(set(self.inserts[s]) | set(self.updates[s]))
            }
            for s in systems
        }
        return WorkloadReport(
            operations=self.operations,
            committed=self.committed,
            skipped=dict(self.skipped),
            failed={k: dict(v) for k, v in self.failed.items()},
            by_kind=dict(self.by_kind),
            tables=tables,
            dirty=self.dirty,
            dirty_by_kind=dict(self.dirty_by_kind),
            reconnects=dict(self.reconnects),
            elapsed_seconds=elapsed,
            achieved_rate=self.operations / elapsed if elapsed > 0 else 0.0,
        )


# --- the I/O half: execution ---------------------------------------------------------------

_Cursor = psycopg.Cursor[dict[str, Any]]

_ERP_PARTY_COLUMNS: Mapping[str, str] = {
    "name": "name",
    "is_company": "is_company",
    "vat": "vat",
    "email": "email",
    "phone": "phone",
    "website": "website",
    "street": "street",
    "city": "city",
    "zip": "zip",
    "country": "country_code",
}
_CRM_ACCOUNT_COLUMNS: Mapping[str, str] = {
    "name": "name",
    "vat": "vat",
    "email": "email",
    "phone": "phone_office",
    "website": "website",
    "street": "billing_address_street",
    "city": "billing_address_city",
    "zip": "billing_address_postalcode",
    "country": "billing_address_country",
    "industry": "industry",
}
_CRM_CONTACT_COLUMNS: Mapping[str, str] = {
    "first_name": "first_name",
    "last_name": "last_name",
    "email": "email",
    "phone": "phone_mobile",
    "title": "title",
}
_OPEN_QUOTE_STAGES = ("Draft", "Negotiation", "Delivered", "On Hold", "Confirmed")
_QUOTE_HAS_LINES: LiteralString = (
    "EXISTS (SELECT 1 FROM public.aos_products_quotes AS l"
    " WHERE l.parent_id = aos_quotes.id AND NOT l.deleted)"
)
_QUOTE_LINE_DIRT: Mapping[DirtyKind | None, tuple[LiteralString, bool]] = {
    # A quote line the sync rejects, and whether the condition takes the catalogue (%s):
    # a negative quantity, a SKU outside the ERP catalogue; None: either.
    None: ("l.product_qty < 0 OR l.part_number IS NULL OR l.part_number <> ALL(%s)", True),
    DirtyKind.NEGATIVE_QUANTITY: ("l.product_qty < 0", False),
    DirtyKind.UNKNOWN_SKU: ("l.part_number IS NULL OR l.part_number <> ALL(%s)", True),
}
_QUOTE_TOPICS = (
    "Replenishment",
    "Spare parts",
    "Framework order",
    "Site equipment",
    "Annual supply",
    "Urgent order",
)


class _NoTargetRowError(Exception):
    """The operation found no row to act on (e.g. no open quote); it is skipped."""


class _StopRequestedError(Exception):
    """The caller's stop event was set while waiting for a database."""


@dataclass
class _Changes:
    """Row counts of one operation, merged into the tally only after COMMIT."""

    inserts: Counter[str] = dataclasses.field(default_factory=Counter)
    updates: Counter[str] = dataclasses.field(default_factory=Counter)
    dirty_applied: bool = True

    def inserted(self, table: str, n: int = 1) -> None:
        self.inserts[table] += max(n, 0)

    def updated(self, table: str, n: int = 1) -> None:
        self.updates[table] += max(n, 0)


def _table(name: str) -> sql.Identifier:
    return sql.Identifier("public", name)


def _insert(
    cur: _Cursor, table: str, values: Mapping[str, Any], returning: Sequence[str] = ("id",)
) -> dict[str, Any]:
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
        _table(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
        sql.SQL(", ").join(map(sql.Identifier, returning)),
    )
    cur.execute(query, list(values.values()))
    row = cur.fetchone()
    assert row is not None
    return row


def _insert_many(cur: _Cursor, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
    if not rows:
        return 0
    columns = list(rows[0])
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        _table(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    cur.executemany(query, [[row[c] for c in columns] for row in rows])
    return len(rows)


def _update(cur: _Cursor, table: str, key: Any, values: Mapping[str, Any]) -> int:
    query = sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
        _table(table),
        sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(column)) for column in values),
    )
    cur.execute(query, [*values.values(), key])
    return cur.rowcount


def _party_from_row(row: Mapping[str, Any], columns: Mapping[str, str]) -> PartyValues:
    fields = {f: row.get(c) for f, c in columns.items() if f != "is_company"}
    return PartyValues(
        name=str(fields.pop("name") or ""),
        is_company=bool(row.get("is_company", True)),
        **fields,
    )


def _party_columns(values: PartyValues, columns: Mapping[str, str]) -> dict[str, Any]:
    return {column: getattr(values, field) for field, column in columns.items()}


def _tidy(text: str) -> str:
    return " ".join(text.split())


class _Database:
    """One persistent connection to one demo database, re-established with backoff.

    Connections run with autocommit off; the caller commits or rolls back each
    operation. The DSN is never logged.
    """

    def __init__(
        self,
        system: System,
        dsn: str,
        tally: _Tally,
        *,
        reconnect_timeout: float,
        stop: threading.Event | None,
    ) -> None:
        self.system = system
        self._dsn = dsn
        self._tally = tally
        self._reconnect_timeout = reconnect_timeout
        self._stop = stop
        self._conn: psycopg.Connection[Any] | None = None
        self._ever_connected = False

    def connection(self) -> psycopg.Connection[Any]:
        """The open connection, reconnecting (blocking, with backoff) if it was lost."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        deadline = time.monotonic() + self._reconnect_timeout
        delay = 0.1
        while True:
            try:
                conn = psycopg.connect(
                    self._dsn,
                    autocommit=False,
                    application_name=APPLICATION_NAME,
                    connect_timeout=5,
                )
                conn.execute("SET statement_timeout = '15s'")
                conn.execute("SET lock_timeout = '5s'")
                conn.commit()
            except psycopg.OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise WorkloadError(
                        f"{self.system} database unreachable for {self._reconnect_timeout:.0f}s"
                    ) from exc
                logger.warning(
                    "workload: %s database unreachable (%s), retrying in %.1fs",
                    self.system,
                    type(exc).__name__,
                    delay,
                )
                if self._stop is not None:
                    if self._stop.wait(delay):
                        raise _StopRequestedError from exc
                else:
                    time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._ever_connected:
                self._tally.reconnects[self.system.value] += 1
                logger.warning("workload: %s database reconnected", self.system)
            self._ever_connected = True
            self._conn = conn
            return conn

    def recover(self) -> None:
        """Roll back after a failed operation; drop the connection if it is broken."""
        conn = self._conn
        if conn is None:
            return
        if not conn.broken and not conn.closed:
            try:
                conn.rollback()
                return
            except psycopg.OperationalError:
                pass
        logger.warning("workload: lost the %s database connection", self.system)
        conn.close()
        self._conn = None

    def rollback_to_savepoint(self, name: LiteralString) -> bool:
        """Undo the work since savepoint ``name``; False if the transaction is lost."""
        conn = self._conn
        if conn is None or conn.broken or conn.closed:
            return False
        try:
            conn.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(sql.Identifier(name)))
        except psycopg.Error:
            return False
        return True

    def close(self) -> None:
        """Close the connection (rolling back anything uncommitted)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_Handler = Callable[[_Cursor, Operation, random.Random, _Changes], None]


class _Executor:
    """Runs planned operations against the two databases and tallies the outcome."""

    def __init__(
        self,
        erp: _Database,
        crm: _Database,
        tally: _Tally,
        *,
        ops_per_commit: int = 1,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self._dbs = {System.ERP: erp, System.CRM: crm}
        self._tally = tally
        self._ops_per_commit = ops_per_commit
        self._shard = shard
        self._catalogue: list[str] = []
        """The ERP's SKUs (``product_product.default_code``), read by :meth:`load_catalogue`."""
        # Per database, operations done in its open transaction and not committed yet.
        self._pending: dict[System, list[tuple[Operation, _Changes]]] = {
            System.ERP: [],
            System.CRM: [],
        }
        self._handlers: Mapping[OpKind, _Handler] = {
            OpKind.ERP_NEW_CUSTOMER: self._erp_new_customer,
            OpKind.ERP_UPDATE_CUSTOMER: self._erp_update_customer,
            OpKind.ERP_PRICE_CHANGE: self._erp_price_change,
            OpKind.ERP_STOCK_MOVE: self._erp_stock_move,
            OpKind.ERP_NEW_SALE_ORDER: self._erp_new_sale_order,
            OpKind.ERP_CONFIRM_ORDER: self._erp_confirm_order,
            OpKind.ERP_NEW_INVOICE: self._erp_new_invoice,
            OpKind.ERP_PAYMENT: self._erp_payment,
            OpKind.CRM_NEW_ACCOUNT: self._crm_new_account,
            OpKind.CRM_UPDATE_ACCOUNT: self._crm_update_account,
            OpKind.CRM_NEW_CONTACT: self._crm_new_contact,
            OpKind.CRM_UPDATE_CONTACT: self._crm_update_contact,
            OpKind.CRM_NEW_OPPORTUNITY: self._crm_new_opportunity,
            OpKind.CRM_NEW_QUOTE: self._crm_new_quote,
            OpKind.CRM_ACCEPT_QUOTE: self._crm_accept_quote,
        }

    def execute(self, op: Operation) -> int:
        """Run ``op`` and record its outcome in the tally; return the rows it changed.

        With ``ops_per_commit`` 1 every operation is its own transaction. Above 1, an
        operation runs under a savepoint in its database's open transaction (a failed
        one is rolled back alone) and the transaction commits every ``ops_per_commit``
        operations; its operations are counted as committed only then, or all as failed
        if the COMMIT fails.
        """
        db = self._dbs[op.system]
        tally = self._tally
        conn = db.connection()
        tally.operations += 1
        changes = _Changes(dirty_applied=op.dirty is not None)
        batched = self._ops_per_commit > 1
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                if batched:
                    cur.execute("SAVEPOINT erpcrm_workload_op")
                self._handlers[op.kind](cur, op, op.rng(), changes)
        except _NoTargetRowError:
            self._undo(op.system, batched)
            tally.skipped[op.kind.value] += 1
            return 0
        except psycopg.Error as exc:
            self._undo(op.system, batched)
            tally.failed[op.kind.value][type(exc).__name__] += 1
            logger.debug(
                "workload: op %d %s failed: %s: %s", op.seq, op.kind, type(exc).__name__, exc
            )
            return 0
        pending = self._pending[op.system]
        pending.append((op, changes))
        if len(pending) >= self._ops_per_commit:
            self.commit(op.system)
        return sum(changes.inserts.values()) + sum(changes.updates.values())

    def _pick(
        self,
        cur: _Cursor,
        system: System,
        table: str,
        columns: Sequence[str],
        pick: float,
        where: LiteralString | sql.Composable = "TRUE",
        params: Sequence[Any] = (),
        *,
        for_update: bool = False,
    ) -> dict[str, Any] | None:
        """The row at position ``pick`` in [0, 1) of this run's share of the key range.

        ``pick`` is placed in the ``i``-th of ``n`` slices of the key range (``shard``),
        so parallel runs rarely wait for each other's row locks; the row is the first
        matching ``where`` from there. ERP keys are bigint identities, CRM keys random
        UUIDs; either way the lookup is an index range scan from the picked key, wrapping
        around to the first matching row. ``where`` is a constant SQL condition from this
        module, never data.
        """
        index, count = self._shard
        position = (index + pick) / count
        base = sql.SQL("SELECT {cols} FROM {table} WHERE ({where})").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            table=_table(table),
            where=sql.SQL(where) if isinstance(where, str) else where,
        )
        lock = sql.SQL(" FOR UPDATE" if for_update else "")
        start: sql.Composable
        if system is System.ERP:
            start = sql.SQL(
                " AND id >= (SELECT min(id) + floor(%s * (max(id) - min(id) + 1))::bigint FROM {})"
            ).format(_table(table))
            start_param: Any = position
        else:
            start = sql.SQL(" AND id >= %s")
            start_param = uuid.UUID(int=min(int(position * (1 << 128)), (1 << 128) - 1))
        order = sql.SQL(" ORDER BY id LIMIT 1")
        cur.execute(sql.Composed([base, start, order, lock]), [*params, start_param])
        row = cur.fetchone()
        if row is None:
            cur.execute(sql.Composed([base, order, lock]), list(params))
            row = cur.fetchone()
        return row

    def load_catalogue(self) -> None:
        """Read the ERP catalogue's SKUs, which clean CRM quote lines are restricted to.

        The CRM also holds products the ERP does not know (made up by dirty quotes, as
        real CRMs collect them); a clean line never names one.
        """
        conn = self._dbs[System.ERP].connection()
        rows = conn.execute("SELECT default_code FROM public.product_product").fetchall()
        conn.commit()
        self._catalogue = sorted(str(row[0]) for row in rows)

    def commit(self, system: System) -> None:
        """Commit ``system``'s open transaction and count its operations."""
        pending = self._pending[system]
        if not pending:
            return
        db = self._dbs[system]
        try:
            db.connection().commit()
        except psycopg.Error as exc:
            db.recover()
            self._fail_pending(system, type(exc).__name__)
            return
        for done, changes in pending:
            self._tally.commit(done, changes)
        pending.clear()

    def commit_all(self) -> None:
        """Commit both open transactions (the end of a batched run)."""
        for system in self._pending:
            self.commit(system)

    def _undo(self, system: System, batched: bool) -> None:
        db = self._dbs[system]
        if batched and db.rollback_to_savepoint("erpcrm_workload_op"):
            return
        db.recover()
        self._fail_pending(system, "TransactionRolledBack")

    def _fail_pending(self, system: System, error: str) -> None:
        """The open transaction is gone: its operations count as failed."""
        for done, _changes in self._pending[system]:
            self._tally.failed[done.kind.value][error] += 1
        self._pending[system].clear()

    # ERP ------------------------------------------------------------------------------------

    def _pick_customer(
        self, cur: _Cursor, system: System, pick: float, where: LiteralString = "TRUE"
    ) -> tuple[Any, PartyValues] | None:
        if system is System.ERP:
            columns = _ERP_PARTY_COLUMNS
            row = self._pick(
                cur,
                system,
                "res_partner",
                ["id", *columns.values()],
                pick,
                f"parent_id IS NULL AND active AND ({where})",
            )
        else:
            columns = _CRM_ACCOUNT_COLUMNS
            row = self._pick(
                cur,
                system,
                "accounts",
                ["id", *columns.values()],
                pick,
                f"NOT deleted AND ({where})",
            )
        if row is None:
            return None
        return row["id"], _party_from_row(row, columns)

    def _new_party_values(
        self, cur: _Cursor, system: System, op: Operation, rng: random.Random, changes: _Changes
    ) -> PartyValues:
        values = dirty.new_party(rng)
        if op.dirty is DirtyKind.DUPLICATE_CUSTOMER:
            found = self._pick_customer(
                cur, system, rng.random(), "vat IS NOT NULL OR email IS NOT NULL"
            )
            if found is None:
                changes.dirty_applied = False
                return values
            return dirty.duplicate_party(rng, found[1])
        if op.dirty is not None:
            values = dirty.apply_party_dirt(rng, values, op.dirty)
        return values

    def _erp_new_customer(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        values = self._new_party_values(cur, System.ERP, op, rng, changes)
        row = _party_columns(values, _ERP_PARTY_COLUMNS)
        row["customer_rank"] = 1
        _insert(cur, "res_partner", row)
        changes.inserted("res_partner")

    def _erp_update_customer(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        self._update_party(cur, op, rng, changes, System.ERP, "res_partner", _ERP_PARTY_COLUMNS)

    def _erp_price_change(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        change = plan_price_change(rng)
        row = self._pick(cur, System.ERP, "product_product", ["id"], rng.random(), "active")
        if row is None:
            raise _NoTargetRowError
        cur.execute(
            "UPDATE public.product_product"
            " SET list_price = round(list_price * %s, 2),"
            " standard_price = round(standard_price * %s, 2)"
            " WHERE id = %s",
            (change.list_factor, change.cost_factor, row["id"]),
        )
        changes.updated("product_product", cur.rowcount)

    def _erp_stock_move(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        move = plan_stock_move(rng, op.dirty)
        product = self._pick(
            cur,
            System.ERP,
            "product_product",
            ["id"],
            move.product_pick,
            "active AND type = 'product'",
        )
        location = self._pick(
            cur,
            System.ERP,
            "stock_location",
            ["id"],
            move.location_pick,
            "active AND usage = 'internal'",
        )
        if product is None or location is None:
            raise _NoTargetRowError
        params = {
            "product": product["id"],
            "location": location["id"],
            "delta": move.quantity_delta,
            "reserved": move.reserved_delta,
            "set": move.set_quantity,
        }
        if move.set_quantity is not None:
            cur.execute(
                "INSERT INTO public.stock_quant (product_id, location_id, quantity)"
                " VALUES (%(product)s, %(location)s, %(set)s)"
                " ON CONFLICT (product_id, location_id) DO UPDATE"
                " SET quantity = EXCLUDED.quantity, reserved_quantity = 0"
                " RETURNING (xmax = 0) AS inserted",
                params,
            )
        else:
            cur.execute(
                "INSERT INTO public.stock_quant (product_id, location_id, quantity)"
                " VALUES (%(product)s, %(location)s, GREATEST(%(delta)s, 0))"
                " ON CONFLICT (product_id, location_id) DO UPDATE"
                " SET quantity = GREATEST(stock_quant.quantity + %(delta)s, 0),"
                " reserved_quantity = LEAST("
                "   GREATEST(stock_quant.reserved_quantity + %(reserved)s, 0),"
                "   GREATEST(stock_quant.quantity + %(delta)s, 0))"
                " RETURNING (xmax = 0) AS inserted",
                params,
            )
        row = cur.fetchone()
        assert row is not None
        if row["inserted"]:
            changes.inserted("stock_quant")
        else:
            changes.updated("stock_quant")

    def _erp_new_sale_order(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        lines = plan_lines(rng, None)
        state = rng.choices(("draft", "sent", "sale"), (4, 2, 4))[0]
        client_ref = f"PO-{rng.randint(100000, 999999)}" if rng.random() < 0.4 else None
        found = self._pick_customer(cur, System.ERP, rng.random())
        if found is None:
            raise _NoTargetRowError
        order_lines: list[dict[str, Any]] = []
        for n, spec in enumerate(lines, start=1):
            product = self._pick(
                cur,
                System.ERP,
                "product_product",
                ["id", "name", "list_price"],
                spec.product_pick,
                "active",
            )
            if product is None:
                raise _NoTargetRowError
            amounts = line_amounts(spec.quantity, product["list_price"], spec.discount)
            order_lines.append(
                {
                    "sequence": 10 * n,
                    "product_id": product["id"],
                    "name": product["name"],
                    "product_uom_qty": spec.quantity,
                    "price_unit": product["list_price"],
                    "discount": spec.discount,
                    "price_subtotal": amounts.subtotal,
                    "price_tax": amounts.tax,
                    "price_total": amounts.total,
                }
            )
        untaxed = sum((line["price_subtotal"] for line in order_lines), Decimal(0))
        tax = sum((line["price_tax"] for line in order_lines), Decimal(0))
        order = _insert(
            cur,
            "sale_order",
            {
                "partner_id": found[0],
                "state": state,
                "invoice_status": "to invoice" if state == "sale" else "no",
                "amount_untaxed": untaxed,
                "amount_tax": tax,
                "amount_total": untaxed + tax,
                "client_order_ref": client_ref,
            },
        )
        changes.inserted("sale_order")
        for line in order_lines:
            line["order_id"] = order["id"]
        changes.inserted("sale_order_line", _insert_many(cur, "sale_order_line", order_lines))

    def _erp_confirm_order(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        row = self._pick(
            cur, System.ERP, "sale_order", ["id"], rng.random(), "state IN ('draft', 'sent')"
        )
        if row is None:
            raise _NoTargetRowError
        cur.execute(
            "UPDATE public.sale_order"
            " SET state = 'sale', invoice_status = 'to invoice', date_order = now()"
            " WHERE id = %s",
            (row["id"],),
        )
        changes.updated("sale_order", cur.rowcount)

    def _erp_new_invoice(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        order = self._pick(
            cur,
            System.ERP,
            "sale_order",
            [
                "id",
                "name",
                "partner_id",
                "amount_untaxed",
                "amount_tax",
                "amount_total",
                "currency",
            ],
            rng.random(),
            "state IN ('sale', 'done') AND invoice_status = 'to invoice'",
            for_update=True,
        )
        if order is None:
            raise _NoTargetRowError
        cur.execute(
            "INSERT INTO public.account_move"
            " (move_type, partner_id, invoice_origin, invoice_date, invoice_date_due,"
            "  amount_untaxed, amount_tax, amount_total, amount_residual, currency,"
            "  payment_state, state)"
            " VALUES ('out_invoice', %s, %s, current_date, current_date + 30,"
            "  %s, %s, %s, %s, %s, 'not_paid', 'posted')"
            " RETURNING id",
            (
                order["partner_id"],
                order["name"],
                order["amount_untaxed"],
                order["amount_tax"],
                order["amount_total"],
                order["amount_total"],
                order["currency"],
            ),
        )
        move = cur.fetchone()
        assert move is not None
        changes.inserted("account_move")
        cur.execute(
            "INSERT INTO public.account_move_line"
            " (move_id, sequence, product_id, sale_line_id, name, quantity, price_unit,"
            "  discount, price_subtotal, price_total)"
            " SELECT %s, sequence, product_id, id, name, product_uom_qty, price_unit,"
            "  discount, price_subtotal, price_total"
            " FROM public.sale_order_line WHERE order_id = %s ORDER BY sequence, id",
            (move["id"], order["id"]),
        )
        changes.inserted("account_move_line", cur.rowcount)
        cur.execute(
            "UPDATE public.sale_order_line SET qty_invoiced = product_uom_qty WHERE order_id = %s",
            (order["id"],),
        )
        changes.updated("sale_order_line", cur.rowcount)
        cur.execute(
            "UPDATE public.sale_order SET invoice_status = 'invoiced' WHERE id = %s",
            (order["id"],),
        )
        changes.updated("sale_order", cur.rowcount)

    def _erp_payment(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        payment = plan_payment(rng)
        move = self._pick(
            cur,
            System.ERP,
            "account_move",
            ["id", "amount_residual", "payment_state"],
            rng.random(),
            "state = 'posted' AND move_type = 'out_invoice'"
            " AND payment_state IN ('not_paid', 'partial', 'in_payment')",
            for_update=True,
        )
        if move is None:
            raise _NoTargetRowError
        state, residual = payment_outcome(move["payment_state"], move["amount_residual"], payment)
        changes.updated(
            "account_move",
            _update(
                cur,
                "account_move",
                move["id"],
                {"payment_state": state, "amount_residual": residual},
            ),
        )

    # CRM ------------------------------------------------------------------------------------

    def _crm_new_account(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        values = self._new_party_values(cur, System.CRM, op, rng, changes)
        row = _party_columns(values, _CRM_ACCOUNT_COLUMNS)
        user = f"sales-{rng.randint(1, 4)}"
        row.update(
            account_type=rng.choices(("Prospect", "Customer"), (7, 3))[0],
            assigned_user_id=user,
            created_by=user,
        )
        _insert(cur, "accounts", row)
        changes.inserted("accounts")

    def _crm_update_account(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        self._update_party(cur, op, rng, changes, System.CRM, "accounts", _CRM_ACCOUNT_COLUMNS)

    def _update_party(
        self,
        cur: _Cursor,
        op: Operation,
        rng: random.Random,
        changes: _Changes,
        system: System,
        table: str,
        columns: Mapping[str, str],
    ) -> None:
        """Change one field of a customer (ERP partner or CRM account), maybe dirty."""
        field = plan_party_field(rng, system, op.dirty)
        found = self._pick_customer(cur, system, rng.random())
        if found is None:
            raise _NoTargetRowError
        key, current = found
        new = dirty.party_changes(rng, field, current, op.dirty)
        changes.updated(table, _update(cur, table, key, {columns[f]: v for f, v in new.items()}))

    def _crm_new_contact(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        account = self._pick(
            cur,
            System.CRM,
            "accounts",
            [
                "id",
                "name",
                "email",
                "phone_office",
                "billing_address_city",
                "billing_address_country",
                "assigned_user_id",
            ],
            rng.random(),
            "NOT deleted",
        )
        if account is None:
            raise _NoTargetRowError
        values = dirty.new_contact(
            rng,
            account_email=account["email"],
            account_name=account["name"],
            country_code=account["billing_address_country"],
        )
        if op.dirty is not None:
            values = dirty.apply_contact_dirt(rng, values, op.dirty)
        _insert(
            cur,
            "contacts",
            {
                "account_id": account["id"],
                "first_name": values.first_name,
                "last_name": values.last_name,
                "title": values.title,
                "email": values.email,
                "phone_work": account["phone_office"],
                "phone_mobile": values.phone,
                "primary_address_city": account["billing_address_city"],
                "primary_address_country": account["billing_address_country"],
                "lead_source": rng.choice(("Web Site", "Trade Show", "Existing Customer")),
                "assigned_user_id": account["assigned_user_id"],
            },
        )
        changes.inserted("contacts")

    def _crm_update_contact(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        field = plan_contact_field(rng, op.dirty)
        contact = self._pick(
            cur,
            System.CRM,
            "contacts",
            ["id", "account_id", *_CRM_CONTACT_COLUMNS.values()],
            rng.random(),
            "NOT deleted",
        )
        if contact is None:
            raise _NoTargetRowError
        cur.execute(
            "SELECT name, email, billing_address_country FROM public.accounts WHERE id = %s",
            (contact["account_id"],),
        )
        account = cur.fetchone() or {}
        current = ContactValues(
            first_name=contact["first_name"],
            last_name=contact["last_name"],
            email=contact["email"],
            phone=contact["phone_mobile"],
            title=contact["title"],
        )
        new = dirty.contact_changes(
            rng,
            field,
            current,
            account_email=account.get("email"),
            account_name=account.get("name") or current.last_name,
            country_code=account.get("billing_address_country"),
            dirty=op.dirty,
        )
        changes.updated(
            "contacts",
            _update(
                cur,
                "contacts",
                contact["id"],
                {_CRM_CONTACT_COLUMNS[f]: v for f, v in new.items()},
            ),
        )

    def _crm_new_opportunity(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        stage, probability = rng.choice(
            (
                ("Prospecting", 10),
                ("Qualification", 20),
                ("Needs Analysis", 25),
                ("Proposal/Price Quote", 65),
            )
        )
        topic = rng.choice(_QUOTE_TOPICS)
        amount = Decimal(rng.randint(1000, 90000))
        days = rng.randint(14, 120)
        account = self._pick(
            cur,
            System.CRM,
            "accounts",
            ["id", "name", "account_type", "assigned_user_id"],
            rng.random(),
            "NOT deleted",
        )
        if account is None:
            raise _NoTargetRowError
        cur.execute(
            "INSERT INTO public.opportunities"
            " (name, account_id, opportunity_type, lead_source, amount, date_closed,"
            "  sales_stage, probability, assigned_user_id)"
            " VALUES (%s, %s, %s, %s, %s, current_date + %s, %s, %s, %s)",
            (
                f"{_tidy(account['name'])} - {topic}",
                account["id"],
                "Existing Business" if account["account_type"] == "Customer" else "New Business",
                rng.choice(("Web Site", "Trade Show", "Cold Call", "Partner")),
                amount,
                days,
                stage,
                probability,
                account["assigned_user_id"],
            ),
        )
        changes.inserted("opportunities", cur.rowcount)

    def _crm_new_quote(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        lines = plan_lines(rng, op.dirty)
        stage = rng.choices(("Draft", "Negotiation"), (6, 4))[0]
        topic = rng.choice(_QUOTE_TOPICS)
        account = self._pick(
            cur,
            System.CRM,
            "accounts",
            ["id", "name", "assigned_user_id"],
            rng.random(),
            "NOT deleted",
        )
        if account is None:
            raise _NoTargetRowError
        cur.execute(
            "SELECT id FROM public.contacts WHERE account_id = %s AND NOT deleted"
            " ORDER BY date_entered, id LIMIT 1",
            (account["id"],),
        )
        contact = cur.fetchone()
        quote_lines: list[dict[str, Any]] = []
        for n, spec in enumerate(lines, start=1):
            product: dict[str, Any] | None
            if spec.unknown_sku is not None:
                assert spec.unknown_price is not None
                product = {
                    "id": None,
                    "name": f"Custom part {spec.unknown_sku}",
                    "part_number": spec.unknown_sku,
                    "price": spec.unknown_price,
                    "cost": (spec.unknown_price * Decimal("0.6")).quantize(_CENT),
                }
                if spec.new_product:
                    # The same seed makes the same made-up SKU: a rerun reuses its row.
                    cur.execute(
                        "SELECT id FROM public.aos_products WHERE part_number = %s",
                        (spec.unknown_sku,),
                    )
                    existing = cur.fetchone()
                    if existing is not None:
                        product["id"] = existing["id"]
                    else:
                        created = _insert(
                            cur,
                            "aos_products",
                            {k: v for k, v in product.items() if k != "id"} | {"type": "Good"},
                        )
                        changes.inserted("aos_products")
                        product["id"] = created["id"]
            else:
                product = self._pick(
                    cur,
                    System.CRM,
                    "aos_products",
                    ["id", "name", "part_number", "price", "cost"],
                    spec.product_pick,
                    "NOT deleted AND part_number = ANY(%s)",
                    [self._catalogue],
                )
                if product is None:
                    raise _NoTargetRowError
            amounts = line_amounts(spec.quantity, product["price"], spec.discount)
            quote_lines.append(
                {
                    "number": n,
                    "name": product["name"],
                    "part_number": product["part_number"],
                    "product_id": product["id"],
                    "product_qty": spec.quantity,
                    "product_cost_price": product["cost"],
                    "product_list_price": product["price"],
                    "product_discount": spec.discount,
                    "product_unit_price": amounts.unit_price,
                    "vat_amt": amounts.tax,
                    "product_total_price": amounts.subtotal,
                    "gross": amounts.gross,
                }
            )
        gross = sum((line.pop("gross") for line in quote_lines), Decimal(0))
        net = sum((line["product_total_price"] for line in quote_lines), Decimal(0))
        tax = sum((line["vat_amt"] for line in quote_lines), Decimal(0))
        quote = _insert(
            cur,
            "aos_quotes",
            {
                "name": f"{_tidy(account['name'])} - {topic}",
                "account_id": account["id"],
                "contact_id": contact["id"] if contact else None,
                "stage": stage,
                "term": "Net 30",
                "total_amt": gross,
                "discount_amount": gross - net,
                "subtotal_amount": net,
                "tax_amount": tax,
                "total_amount": net + tax,
                "assigned_user_id": account["assigned_user_id"],
            },
        )
        changes.inserted("aos_quotes")
        for line in quote_lines:
            line["parent_id"] = quote["id"]
        changes.inserted(
            "aos_products_quotes", _insert_many(cur, "aos_products_quotes", quote_lines)
        )

    def _crm_accept_quote(
        self, cur: _Cursor, op: Operation, rng: random.Random, changes: _Changes
    ) -> None:
        pick = rng.random()
        quote = None
        if op.dirty is not None:
            quote = self._pick_open_quote(cur, pick, op.dirty, dirty=True)
            changes.dirty_applied = quote is not None
        if quote is None:
            quote = self._pick_open_quote(cur, pick, None, dirty=False)
        if quote is None:
            raise _NoTargetRowError
        changes.updated(
            "aos_quotes",
            _update(
                cur,
                "aos_quotes",
                quote["id"],
                {"stage": "Closed Accepted", "approval_status": "Approved"},
            ),
        )

    def _pick_open_quote(
        self, cur: _Cursor, pick: float, kind: DirtyKind | None, *, dirty: bool
    ) -> dict[str, Any] | None:
        """An open quote with lines, at ``pick``.

        With ``dirty``, one with a line carrying dirt ``kind``; else one whose every line
        is valid (no negative quantity, a SKU of the ERP catalogue).
        """
        dirt, takes_catalogue = _QUOTE_LINE_DIRT[kind]
        lines = sql.SQL(
            "EXISTS (SELECT 1 FROM public.aos_products_quotes AS l"
            " WHERE l.parent_id = aos_quotes.id AND NOT l.deleted AND ({}))"
        ).format(sql.SQL(dirt))
        where = sql.SQL("NOT deleted AND stage = ANY(%s) AND {} AND {}{}").format(
            sql.SQL(_QUOTE_HAS_LINES), sql.SQL("" if dirty else "NOT "), lines
        )
        params: list[Any] = [list(_OPEN_QUOTE_STAGES)]
        if takes_catalogue:
            params.append(self._catalogue)
        return self._pick(cur, System.CRM, "aos_quotes", ["id"], pick, where, params)


def run_workload(
    erp_dsn: str,
    crm_dsn: str,
    *,
    rate: float,
    duration: float | None,
    count: int | None,
    dirty_ratio: float,
    seed: int,
    on_progress: Callable[[WorkloadReport], None] | None = None,
    progress_interval: float = 1.0,
    weights: Mapping[OpKind, float] | None = None,
    stop: threading.Event | None = None,
    reconnect_timeout: float = 60.0,
    ops_per_commit: int = 1,
    pace_by: Literal["operations", "changes"] = "operations",
    shard: tuple[int, int] = (0, 1),
) -> WorkloadReport:
    """Drive the demo ERP and CRM with business activity and report what was committed.

    Runs until ``duration`` seconds have passed, ``count`` operations have been
    attempted, or ``stop`` is set, whichever comes first (with all three unset it runs
    until interrupted). ``rate`` is operations per second (``math.inf`` for as fast as
    the databases go). ``dirty_ratio`` in [0, 1] is the probability that an operation
    carries dirty data; ``seed`` makes the sequence of operations reproducible;
    ``weights`` overrides :data:`DEFAULT_WEIGHTS` (a zero weight disables a kind).
    ``ops_per_commit`` groups that many operations per database into one transaction
    (see :meth:`_Executor.execute`); ``pace_by="changes"`` makes ``rate`` row changes
    per second instead of operations per second (an operation is spaced by the rows it
    changed). ``shard`` ``(i, n)`` confines the rows an operation picks to the ``i``-th of
    ``n`` slices of each table's key range, so that ``n`` runs side by side rarely wait for
    each other's row locks.

    ``on_progress`` receives a snapshot report about every ``progress_interval`` seconds
    and the final report once more at the end. Raises :class:`WorkloadError` if a
    database stays unreachable for ``reconnect_timeout`` seconds; ``ValueError`` for
    invalid arguments. ``KeyboardInterrupt`` propagates once the connections are closed
    (the uncommitted operation rolls back); use ``stop`` to end a run and get its report.
    """
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if duration is not None and duration < 0:
        raise ValueError(f"duration must be >= 0, got {duration}")
    if ops_per_commit < 1:
        raise ValueError(f"ops_per_commit must be >= 1, got {ops_per_commit}")
    planner = OperationPlanner(seed, dirty_ratio, weights)
    tally = _Tally()
    erp = _Database(System.ERP, erp_dsn, tally, reconnect_timeout=reconnect_timeout, stop=stop)
    crm = _Database(System.CRM, crm_dsn, tally, reconnect_timeout=reconnect_timeout, stop=stop)
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    executor = _Executor(erp, crm, tally, ops_per_commit=ops_per_commit, shard=shard)
    start = time.monotonic()
    pacer = Pacer(rate, start)
    last_progress = start
    logger.info(
        "workload: rate=%s/s duration=%s count=%s dirty_ratio=%.2f seed=%d",
        rate,
        duration,
        count,
        dirty_ratio,
        seed,
    )
    try:
        erp.connection()
        crm.connection()
        executor.load_catalogue()
        while stop is None or not stop.is_set():
            if count is not None and tally.operations >= count:
                break
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                break
            wait = pacer.wait_time(now)
            if wait > 0:
                if duration is not None:
                    wait = min(wait, start + duration - now)
                if stop is not None:
                    stop.wait(wait)
                else:
                    time.sleep(wait)
                continue
            changed = executor.execute(planner.next())
            pacer.mark(now, 1.0 if pace_by == "operations" else changed)
            if on_progress is not None and now - last_progress >= progress_interval:
                last_progress = now
                on_progress(tally.report(time.monotonic() - start))
        executor.commit_all()
    except _StopRequestedError:
        pass
    finally:
        erp.close()
        crm.close()
    report = tally.report(time.monotonic() - start)
    logger.info(
        "workload: %d operations in %.1fs (%.1f/s): %d committed, %d skipped, %d failed, %d dirty",
        report.operations,
        report.elapsed_seconds,
        report.achieved_rate,
        report.committed,
        sum(report.skipped.values()),
        report.failed_total,
        report.dirty,
    )
    if on_progress is not None:
        on_progress(report)
    return report


def merge_reports(reports: Sequence[WorkloadReport]) -> WorkloadReport:
    """One report of runs that went on side by side: counts added, the longest elapsed."""
    tally = _Tally()
    for report in reports:
        tally.add(report)
    return tally.report(max((r.elapsed_seconds for r in reports), default=0.0))


def _run_share(arguments: dict[str, Any]) -> WorkloadReport:
    return run_workload(**arguments)


def run_workload_parallel(
    erp_dsn: str,
    crm_dsn: str,
    *,
    processes: int,
    rate: float,
    duration: float | None,
    count: int | None,
    dirty_ratio: float,
    seed: int,
    ops_per_commit: int = 1,
    pace_by: Literal["operations", "changes"] = "operations",
) -> WorkloadReport:
    """:func:`run_workload` in ``processes`` processes side by side, one report for all.

    Each process drives both databases on its own connections at ``rate / processes``,
    with its own seed (``seed`` plus its index: the run as a whole stays reproducible
    as far as the databases' interleaving allows) and a share of ``count``. One process
    is :func:`run_workload` itself, in this process. Each picks the rows it changes from
    its own slice of each table (``shard``).
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    shares = [
        {
            "erp_dsn": erp_dsn,
            "crm_dsn": crm_dsn,
            "rate": rate / processes,
            "duration": duration,
            "count": None if count is None else count // processes + (i < count % processes),
            "dirty_ratio": dirty_ratio,
            "seed": seed + i,
            "ops_per_commit": ops_per_commit,
            "pace_by": pace_by,
            "shard": (i, processes),
        }
        for i in range(processes)
    ]
    if processes == 1:
        return _run_share(shares[0])
    # "spawn": the caller may hold Kafka clients and their threads, which fork would copy.
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes - 1) as pool:
        others = pool.map_async(_run_share, shares[1:])
        mine = _run_share(shares[0])
        return merge_reports([mine, *others.get()])
