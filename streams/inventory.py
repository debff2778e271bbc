"""Stock per product: the ERP's per-location quants summed into on-hand, reserved, available.

The ERP keeps stock as quants, one row per product and location (``stock_quant``). The
CRM wants one figure per product. :func:`apply` keeps the last state of every quant
(by quant id, so a delete that carries only the key still removes the right quant, and
a quant moved to another product or location updates both) and returns the product
totals that changed, and only those.

Contract:

- The totals depend only on the quants' current state, not on the order their changes
  arrived in: applying any interleaving of the quants' change sequences (each quant's
  own changes in order) ends in the totals :func:`totals_from_quants` computes from the
  final quants.
- Stock is reported as it is. A quant may be negative (the ERP let a delivery go out
  before the receipt was booked: oversold), and it counts: ``on_hand`` is the sum of
  every quant, so +10 in one location and -3 in another is 7, never 10.
  ``available`` is ``on_hand - reserved`` and may be below zero, which
  :attr:`StockTotals.oversold` says. Locations holding nothing (both zero) are left out
  of the breakdown, so an emptied quant and a deleted one look the same.
- Each product's ``version`` rises with every totals returned: the LSN of the change
  that caused it, or one more than the previous version if that is higher. Quants of
  one product can sit in different partitions of the raw topic, so a change with a
  lower LSN may arrive after one with a higher LSN; the totals still reflect both.

State is an :class:`InventoryState` of plain dicts; the functions are pure apart from
updating it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = [
    "InventoryState",
    "LocationStock",
    "Quant",
    "QuantChange",
    "StockTotals",
    "apply",
    "totals_from_quants",
]

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Quant:
    """The stock of one product at one location, as the ERP last reported it."""

    product: str
    location: str
    quantity: Decimal
    reserved: Decimal
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class QuantChange:
    """A quant's new state; ``quant`` None: the quant is gone."""

    quant_id: str
    quant: Quant | None


@dataclass(frozen=True, slots=True)
class LocationStock:
    """One location's share of a product's stock."""

    location: str
    on_hand: Decimal
    reserved: Decimal


@dataclass(frozen=True, slots=True)
class StockTotals:
    """A product's stock over all locations; ``locations`` ordered by location id."""

    product: str
    sku: str | None
    on_hand: Decimal
    reserved: Decimal
    available: Decimal
    locations: tuple[LocationStock, ...]
    version: int = 0

    @property
    def oversold(self) -> bool:
        """Whether more was sold or reserved than is on hand (``available`` below zero)."""
        return self.available < 0

    def same_stock(self, other: StockTotals) -> bool:
        """Whether both say the same about the stock (the version aside)."""
        return dataclasses.replace(other, version=self.version) == self


@dataclass
class InventoryState:
    """What :func:`apply` remembers.

    Attributes:
        quants: product -> quant id -> its last state.
        product_of: quant id -> product, to find a quant whose change lacks it.
        emitted: product -> the totals last returned.
    """

    quants: dict[str, dict[str, Quant]] = field(default_factory=dict)
    product_of: dict[str, str] = field(default_factory=dict)
    emitted: dict[str, StockTotals] = field(default_factory=dict)


def _location_order(location: str) -> tuple[int, int, str]:
    return (0, int(location), "") if location.isdigit() else (1, 0, location)


def _totals(product: str, sku: str | None, quants: Iterable[Quant]) -> StockTotals:
    per_location: dict[str, tuple[Decimal, Decimal]] = {}
    for quant in quants:
        on_hand, reserved = per_location.get(quant.location, (_ZERO, _ZERO))
        per_location[quant.location] = (on_hand + quant.quantity, reserved + quant.reserved)
    locations = tuple(
        LocationStock(location, on_hand, reserved)
        for location, (on_hand, reserved) in sorted(
            per_location.items(), key=lambda item: _location_order(item[0])
        )
        if on_hand or reserved
    )
    on_hand = sum((loc.on_hand for loc in locations), _ZERO)
    reserved = sum((loc.reserved for loc in locations), _ZERO)
    return StockTotals(product, sku, on_hand, reserved, on_hand - reserved, locations)


def totals_from_quants(quants: Iterable[Quant]) -> dict[str, StockTotals]:
    """Recompute every product's totals from scratch (version 0).

    The reference :func:`apply` converges to, and what reconciliation compares with.
    """
    by_product: dict[str, list[Quant]] = {}
    for quant in quants:
        by_product.setdefault(quant.product, []).append(quant)
    result = {}
    for product, group in by_product.items():
        sku = next((q.sku for q in reversed(group) if q.sku is not None), None)
        result[product] = _totals(product, sku, group)
    return result


def apply(
    state: InventoryState, change: QuantChange, *, version: int, reassert: bool = False
) -> list[StockTotals]:
    """Apply one quant change and return the totals of the products whose stock changed.

    Args:
        state: updated in place.
        change: the quant's new state (None: deleted). Applying the same change twice
            returns nothing the second time.
        version: the source LSN of the change.
        reassert: the change is a re-snapshot: its products' totals are returned even
            when unchanged (the target may have drifted from them).

    Returns:
        At most two totals (the quant may have moved between products), each with its
        new version; empty when no product's stock changed.
    """
    affected: list[str] = []
    old_product = state.product_of.pop(change.quant_id, None)
    if old_product is not None:
        quants = state.quants.get(old_product, {})
        quants.pop(change.quant_id, None)
        if not quants:
            state.quants.pop(old_product, None)
        affected.append(old_product)
    new = change.quant
    if new is not None:
        state.quants.setdefault(new.product, {})[change.quant_id] = new
        state.product_of[change.quant_id] = new.product
        if new.product not in affected:
            affected.append(new.product)

    changed: list[StockTotals] = []
    for product in affected:
        last = state.emitted.get(product)
        quants = state.quants.get(product, {})
        sku = new.sku if new is not None and new.product == product and new.sku else None
        if sku is None:
            sku = next((q.sku for q in quants.values() if q.sku), last.sku if last else None)
        totals = _totals(product, sku, quants.values())
        if last is not None and last.same_stock(totals) and not reassert:
            continue
        if last is None and not totals.locations and not quants:
            continue
        next_version = version if last is None else max(version, last.version + 1)
        totals = dataclasses.replace(totals, version=next_version)
        state.emitted[product] = totals
        changed.append(totals)
    return changed
