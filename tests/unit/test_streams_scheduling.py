"""The worker's consumer scheduling and the bound on held envelopes kept decoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

import streams.ordering
from streams.dlq import Origin
from streams.ordering import Release, SourceOrder
from streams.outcome import Inbound
from streams.scheduling import ProducedOrder
from streams.state import DictState
from streams.work import UnitOfWork
from tests.unit.test_processor import ORDER_TABLES, Harness, decoded, with_catalogue
from tests.unit.test_transform import ORDER, SALE_ORDER, SALE_ORDER_LINE, order_line


@dataclass(frozen=True)
class Record:
    timestamp: int
    offset: int


def test_fetched_records_come_in_produced_order_and_partition_order() -> None:
    changes, ends = TP("erp.public.sale_order", 0), TP("erp.transaction", 0)
    records = {
        changes: [Record(10, 0), Record(20, 1), Record(20, 2), Record(40, 3)],
        ends: [Record(15, 0), Record(20, 1), Record(30, 2)],
    }
    taken = [(tp.topic, r.offset) for tp, r in ProducedOrder().iterate(records)]
    assert taken == [
        ("erp.public.sale_order", 0),
        ("erp.transaction", 0),
        ("erp.public.sale_order", 1),  # equal timestamps: the partitions' order, then offsets
        ("erp.public.sale_order", 2),
        ("erp.transaction", 1),
        ("erp.transaction", 2),
        ("erp.public.sale_order", 3),
    ]


@given(st.lists(st.lists(st.integers(0, 50), max_size=8), max_size=5))
def test_every_record_is_taken_once_each_partition_in_offset_order(
    timestamps: list[list[int]],
) -> None:
    # a partition's timestamps need not grow (a producer may set them): offsets still rule
    records = {
        TP("t", n): [Record(ts, offset) for offset, ts in enumerate(run)]
        for n, run in enumerate(timestamps)
    }
    taken = list(ProducedOrder().iterate(records))
    assert sorted((tp.partition, r.offset) for tp, r in taken) == sorted(
        (tp.partition, r.offset) for tp, run in records.items() for r in run
    )
    for tp, run in records.items():
        assert [r for t, r in taken if t == tp] == run


def _order_transaction(h: Harness) -> list[dict[str, object]]:
    with_catalogue(h, (7, "SKU-00007"), (8, "SKU-00008"))
    tx = (900, 1010)
    pieces = [
        h.change(SALE_ORDER_LINE, "c", after=order_line(502, 20, 8, "1"), lsn=1003, tx=tx),
        h.change(SALE_ORDER, "c", after=ORDER, lsn=1001, tx=tx),
        h.change(SALE_ORDER_LINE, "c", after=order_line(501, 10, 7, "2.5"), lsn=1002, tx=tx),
        h.end("erp", tx, ORDER_TABLES),
    ]
    outcomes = [h.run(piece) for piece in pieces[:3]]
    # three changes held until their END, at most the bound of them decoded in memory
    assert h.processor._ordering.held == min(3, streams.ordering._DECODED_MAX)
    outcomes.append(h.run(pieces[3]))
    # released with its END, whose decoded envelope was kept too: none is left behind
    assert h.processor._ordering.held == 0
    return [record for outcome in outcomes for record in decoded(outcome)]


def test_held_changes_beyond_the_decoded_bound_decide_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unbounded = _order_transaction(Harness())
    monkeypatch.setattr(streams.ordering, "_DECODED_MAX", 1)
    bounded = _order_transaction(Harness())
    assert len(bounded) == 1
    assert bounded == unbounded


def _releases(decoded_max: int, monkeypatch: pytest.MonkeyPatch) -> list[Release]:
    """Hold two changes of a transaction (one delivered again), then its END."""
    monkeypatch.setattr(streams.ordering, "_DECODED_MAX", decoded_max)
    order = SourceOrder({"erp": frozenset({"public.sale_order"})}, timeout_ms=30_000)
    state = DictState()
    tx = "900:1010"

    def run(offset: int, envelope: dict[str, Any], topic: str) -> list[Release]:
        message = Inbound(Origin(topic, 0, offset), b"k%d" % offset, b"v%d" % offset, 5)
        work = UnitOfWork(state, 1_000 + offset, lambda *_: None)
        if topic == "erp.transaction":
            released = order.end(work, "erp", envelope, message)
        else:
            released = order.hold(work, "erp", envelope, message) or []
        state.apply(work.finish().writes)
        return released

    def change(position: int) -> dict[str, Any]:
        return {"op": "c", "transaction": {"id": tx, "total_order": position}}

    end = {
        "status": "END",
        "id": tx,
        "data_collections": [{"data_collection": "public.sale_order", "event_count": 2}],
    }
    assert run(3, change(1), "erp.public.sale_order") == []
    assert run(4, change(2), "erp.public.sale_order") == []
    assert run(8, change(1), "erp.public.sale_order") == []  # delivered again, elsewhere
    return run(9, end, "erp.transaction")


def test_released_records_are_the_messages_the_table_holds_kept_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kept = _releases(2048, monkeypatch)
    read_back = _releases(0, monkeypatch)
    almost_full = _releases(2, monkeypatch)  # room for the first delivery, not a new key
    assert [r.message for r in kept] == [r.message for r in read_back]
    assert [r.message for r in almost_full] == [r.message for r in read_back]
    assert [(r.message.origin.offset, r.end) for r in kept if r.message] == [
        (8, False),  # the latest delivery of position 1
        (4, False),
        (9, True),
    ]
    assert [r.envelope is not None for r in kept] == [True, True, True]
    assert [r.envelope for r in read_back] == [None, None, None]
