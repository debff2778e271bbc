"""Stock: quants in, per-product totals out (``canonical.inventory``).

Each quant change (a row of the stock table, one product at one location) is folded
into its product's totals by :func:`streams.inventory.apply`; a product whose totals
changed gets an inventory event, and so does one whose quant a re-snapshot read again
(``source.snapshot = incremental``: the target may have drifted from the totals). State
in the ``inventory`` table: per quant ``q|<flow>|<quant id>`` (product, LSN), per
product its quants ``qs|<flow>|<product>`` and last published totals
``t|<flow>|<product>``. A change with a lower LSN than the quant's last one is stale.
A quant whose product is not known yet waits (:mod:`streams.waiting`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from schemas.payload import RESNAPSHOT
from streams import inventory
from streams.crosswalk import crm_id_for
from streams.outcome import Count, Inbound
from streams.references import References
from streams.state import INVENTORY, StateView
from streams.transform import Skipped, inventory_event, snapshot_kind, to_stock_change
from streams.validation import Failed, identifier_key
from streams.waiting import Retry, Waiting
from streams.work import Emitter, Raw, Route, UnitOfWork

__all__ = ["Stock"]


def _quant_value(quant: inventory.Quant) -> list[Any]:
    return [quant.location, format(quant.quantity, "f"), format(quant.reserved, "f"), quant.sku]


def _quant(product: str, value: Sequence[Any]) -> inventory.Quant:
    location, quantity, reserved, sku = value
    return inventory.Quant(product, location, Decimal(quantity), Decimal(reserved), sku)


def _totals_value(totals: inventory.StockTotals) -> dict[str, Any]:
    return {
        "product": totals.product,
        "sku": totals.sku,
        "on_hand": format(totals.on_hand, "f"),
        "reserved": format(totals.reserved, "f"),
        "available": format(totals.available, "f"),
        "locations": [
            [loc.location, format(loc.on_hand, "f"), format(loc.reserved, "f")]
            for loc in totals.locations
        ],
        "version": totals.version,
    }


def _totals(value: Mapping[str, Any]) -> inventory.StockTotals:
    return inventory.StockTotals(
        product=value["product"],
        sku=value["sku"],
        on_hand=Decimal(value["on_hand"]),
        reserved=Decimal(value["reserved"]),
        available=Decimal(value["available"]),
        locations=tuple(
            inventory.LocationStock(loc, Decimal(on_hand), Decimal(reserved))
            for loc, on_hand, reserved in value["locations"]
        ),
        version=value["version"],
    )


# ------------------------------------------------------------------- processor


class Stock:
    """Folds quant changes into product totals and publishes the totals that changed."""

    def __init__(self, emitter: Emitter, waiting: Waiting, references: References) -> None:
        self._emitter = emitter
        self._waiting = waiting
        self._references = references

    def change(
        self,
        work: UnitOfWork,
        route: Route,
        envelope: dict[str, Any],
        message: Inbound,
        retry: Retry | None,
    ) -> None:
        """Apply one quant change (a raw stock row) and publish the totals it changed."""
        flow = route.flow
        tally = work.tally
        result = to_stock_change(flow, envelope, lookups=self._references.data.lookups)
        if isinstance(result, Skipped):
            tally.add(Count.SKIPPED, flow.name)
            return
        if isinstance(result, Failed):
            self._waiting.reject(work, route, result, Raw.of(message, envelope), retry)
            return
        change = result.value
        lsn = int(envelope["source"]["lsn"])
        quant_key = f"q|{flow.name}|{change.quant_id}"
        stored = work.get(INVENTORY, quant_key)
        if stored is not None and lsn < int(stored["lsn"]):
            tally.add(Count.DEDUPED, flow.name)
            return
        for fix in result.fixes:
            tally.add(Count.FIXES, flow.name, fix.rule)
        old = None if stored is None else stored["product"]
        new = None if change.quant is None else change.quant.product
        products = [p for p in dict.fromkeys((old, new)) if p is not None]
        state = inventory.InventoryState()
        for product in products:
            quants = work.get(INVENTORY, f"qs|{flow.name}|{product}") or {}
            if quants:
                state.quants[product] = {q: _quant(product, v) for q, v in quants.items()}
                state.product_of.update(dict.fromkeys(quants, product))
            totals = work.get(INVENTORY, f"t|{flow.name}|{product}")
            if totals is not None:
                state.emitted[product] = _totals(totals)
        reassert = snapshot_kind(envelope) == RESNAPSHOT
        changed = inventory.apply(state, change, version=lsn, reassert=reassert)
        work.put(INVENTORY, quant_key, {"product": new, "lsn": lsn})
        for product in products:
            quants_now = state.quants.get(product)
            work.put(
                INVENTORY,
                f"qs|{flow.name}|{product}",
                {q: _quant_value(v) for q, v in quants_now.items()} if quants_now else None,
            )
            if product in state.emitted:
                work.put(
                    INVENTORY,
                    f"t|{flow.name}|{product}",
                    _totals_value(state.emitted[product]),
                )
        if not changed:
            # The product's totals are what was last published (a delivery from an empty
            # quant, a touch without a change): a no-op, counted so that every change in
            # is accounted for.
            tally.add(Count.NO_OPS, flow.name)
        raw = Raw.of(message, envelope)
        for totals in changed:
            built = inventory_event(
                flow, totals, envelope, crosswalk=self._references.data.crosswalk
            )
            if isinstance(built, Failed):
                self._emitter.dead_letter(
                    work, flow.name, built, raw, (("product", totals.product),)
                )
            else:
                self._emitter.publish(work, flow.name, built.value, raw, ())

    def inventory(self, state: StateView, sku: str | None = None) -> list[dict[str, Any]]:
        """The current stock per product (all, or of one SKU), sorted by SKU.

        Each item: ``sku``, ``erp_id``, ``crm_id``, ``on_hand``, ``reserved``,
        ``available`` (decimal text, below zero when oversold), ``oversold``,
        ``locations`` and ``version``. The SKU is matched without regard to case or
        spacing.
        """
        wanted = None if sku is None else identifier_key(sku)
        items = []
        for _, value in state.scan(INVENTORY, "t|"):
            if wanted is not None and identifier_key(value.get("sku") or "") != wanted:
                continue
            product = value["product"]
            items.append(
                {
                    "sku": value["sku"],
                    "erp_id": product,
                    "crm_id": crm_id_for(self._references.data.crosswalk, "product", product),
                    "on_hand": value["on_hand"],
                    "reserved": value["reserved"],
                    "available": value["available"],
                    "oversold": Decimal(value["available"]) < 0,
                    "locations": [
                        {"location_id": loc, "on_hand": on_hand, "reserved": reserved}
                        for loc, on_hand, reserved in value["locations"]
                    ],
                    "version": value["version"],
                }
            )
        items.sort(key=lambda item: (item["sku"] or "", item["erp_id"]))
        return items
