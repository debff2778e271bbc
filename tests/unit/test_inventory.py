"""Stock aggregation over locations (streams/inventory.py)."""

from __future__ import annotations

import random
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from streams.inventory import (
    InventoryState,
    LocationStock,
    Quant,
    QuantChange,
    StockTotals,
    apply,
    totals_from_quants,
)


def D(text: str) -> Decimal:  # noqa: N802 - reads like a literal
    return Decimal(text)


def quant(product: str, location: str, quantity: str, reserved: str = "0") -> Quant:
    return Quant(product, location, D(quantity), D(reserved), sku=f"SKU-{product}")


def test_locations_are_summed_per_product() -> None:
    state = InventoryState()
    [first] = apply(state, QuantChange("q1", quant("7", "1", "10", "2")), version=100)
    assert first == StockTotals(
        "7", "SKU-7", D("10"), D("2"), D("8"), (LocationStock("1", D("10"), D("2")),), 100
    )
    [second] = apply(state, QuantChange("q2", quant("7", "3", "5")), version=101)
    assert (second.on_hand, second.reserved, second.available) == (D("15"), D("2"), D("13"))
    assert [loc.location for loc in second.locations] == ["1", "3"]
    assert second.version == 101


def test_only_changed_totals_are_returned() -> None:
    state = InventoryState()
    change = QuantChange("q1", quant("7", "1", "10"))
    assert apply(state, change, version=100)
    assert apply(state, change, version=100) == []  # redelivered
    assert apply(state, QuantChange("q1", quant("7", "1", "10.000")), version=105) == []


def test_a_delete_needs_only_the_quant_id() -> None:
    state = InventoryState()
    apply(state, QuantChange("q1", quant("7", "1", "10")), version=100)
    apply(state, QuantChange("q2", quant("7", "2", "4")), version=101)
    [totals] = apply(state, QuantChange("q1", None), version=102)
    assert (totals.on_hand, totals.locations) == (D("4"), (LocationStock("2", D("4"), D("0")),))
    [empty] = apply(state, QuantChange("q2", None), version=103)
    assert (empty.on_hand, empty.available, empty.locations, empty.sku) == (D(0), D(0), (), "SKU-7")
    assert apply(state, QuantChange("unknown", None), version=104) == []


def test_a_quant_moved_to_another_product_changes_both() -> None:
    state = InventoryState()
    apply(state, QuantChange("q1", quant("7", "1", "10")), version=100)
    moved = apply(state, QuantChange("q1", quant("8", "1", "10")), version=101)
    assert [(t.product, t.on_hand) for t in moved] == [("7", D(0)), ("8", D("10"))]


def test_empty_locations_are_left_out_of_the_breakdown() -> None:
    state = InventoryState()
    apply(state, QuantChange("q1", quant("7", "1", "3")), version=100)
    [totals] = apply(state, QuantChange("q1", quant("7", "1", "0")), version=101)
    assert totals.locations == ()


def test_versions_rise_even_when_an_older_change_arrives_late() -> None:
    state = InventoryState()
    [a] = apply(state, QuantChange("q1", quant("7", "1", "10")), version=500)
    [b] = apply(state, QuantChange("q2", quant("7", "2", "1")), version=300)  # other partition
    [c] = apply(state, QuantChange("q2", quant("7", "2", "2")), version=800)
    assert (a.version, b.version, c.version) == (500, 501, 800)


# --------------------------------------------------------------------- convergence

QUANT_IDS = ["q1", "q2", "q3", "q4"]
PRODUCTS = ["7", "8"]


@st.composite
def quant_histories(draw: st.DrawFn) -> dict[str, list[Quant | None]]:
    """Per quant, its sequence of states (None: deleted); a quant may move product."""
    histories: dict[str, list[Quant | None]] = {}
    for quant_id in draw(st.lists(st.sampled_from(QUANT_IDS), min_size=1, unique=True)):
        steps = draw(
            st.lists(
                st.one_of(
                    st.none(),
                    st.builds(
                        quant,
                        st.sampled_from(PRODUCTS),
                        st.sampled_from(["1", "2", "3"]),
                        st.integers(0, 50).map(str),
                        st.integers(0, 5).map(str),
                    ),
                ),
                min_size=1,
                max_size=5,
            )
        )
        histories[quant_id] = steps
    return histories


@given(quant_histories(), st.randoms(use_true_random=False))
def test_any_interleaving_converges_to_the_recomputed_totals(
    histories: dict[str, list[Quant | None]], rng: random.Random
) -> None:
    # Interleave the quants' histories at random, each quant's own steps in order.
    queues = {qid: list(steps) for qid, steps in histories.items()}
    state = InventoryState()
    latest: dict[str, StockTotals] = {}
    version = 0
    while queues:
        qid = rng.choice(sorted(queues))
        step = queues[qid].pop(0)
        if not queues[qid]:
            del queues[qid]
        version += 1
        for totals in apply(state, QuantChange(qid, step), version=version):
            previous = latest.get(totals.product)
            assert previous is None or totals.version > previous.version
            latest[totals.product] = totals

    final = [steps[-1] for steps in histories.values() if steps[-1] is not None]
    expected = totals_from_quants(final)
    for product, totals in latest.items():
        reference = expected.get(product)
        if reference is None:  # every quant of the product is gone: nothing in stock
            assert (totals.on_hand, totals.reserved, totals.locations) == (D(0), D(0), ())
        else:
            assert totals.same_stock(reference), (totals, reference)
    assert set(expected) <= set(latest)
