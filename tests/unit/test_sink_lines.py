"""The lines of an order the target owns: what counts as a change (sinks.lines), its letter.

Pure: snapshots of canonical lines, their comparison, the dead letter's headers, and a
parked or held event taken back out of the sync schema as it was read.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas import json_text
from schemas.deadletter import (
    H_CONTEXT_PREFIX,
    H_ERROR_REASON,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_REPLAY_COUNT,
)
from schemas.errors import LinesLockedError
from sinks.batch import SinkEvent
from sinks.lines import compare, snapshot
from sinks.postgres import _stored, dead_letter_headers, stored_event
from sinks.sql import STORED_EVENT


def _line(line_id: str, sku: str, qty: str, **extra: Any) -> dict[str, Any]:
    return {
        "erp_id": None,
        "crm_id": line_id,
        "sku": sku,
        "product_erp_id": None,
        "product_crm_id": "p-" + sku,
        "description": f"Line {sku}",
        "quantity": Decimal(qty),
        "unit_price": Decimal("9.50"),
        "discount": Decimal("0.00"),
        "subtotal": Decimal(qty) * Decimal("9.50"),
        **extra,
    }


LINES = [_line("a", "SKU-1", "2.000"), _line("b", "SKU-2", "1.000")]


def test_the_same_lines_are_no_change_whatever_ids_became_known_meanwhile() -> None:
    later = [dict(line, product_erp_id="17", erp_id="99") for line in LINES]
    later[0]["quantity"] = Decimal("2")  # the same value, another scale
    before, after = snapshot(LINES, "crm_id"), snapshot(later, "crm_id")
    assert before == after
    assert not compare(before, after)


def test_a_snapshot_survives_its_json_round_trip() -> None:
    taken = snapshot(LINES, "crm_id")
    assert json_text.load(json_text.dump(taken, sort_keys=True)) == taken


def test_edited_added_removed_and_reordered_lines_are_named() -> None:
    edited = [_line("c", "SKU-3", "5.000"), _line("a", "SKU-1", "3.000")]
    change = compare(snapshot(LINES, "crm_id"), snapshot(edited, "crm_id"))
    assert change.added == ("c",)
    assert change.removed == ("b",)
    assert [line for line, _ in change.changed] == ["a"]
    assert ("quantity", "2", "3") in dict(change.changed)["a"]
    assert not change.reordered  # "a" moved up only because "b" went
    assert dict(change.context()) == {
        "lines_added": "c",
        "lines_removed": "b",
        "lines_changed": "a",
    }
    text = change.describe()
    assert "added 1 line (c)" in text
    assert "removed 1 line (b)" in text
    assert "line a: quantity '2' -> '3'" in text


def test_lines_in_another_order_are_a_change() -> None:
    change = compare(snapshot(LINES, "crm_id"), snapshot(LINES[::-1], "crm_id"))
    assert change.reordered
    assert not change.changed
    assert dict(change.context()) == {"lines_reordered": "true"}


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.integers(0, 5)),
        unique_by=lambda t: t[0],
        max_size=6,
    ),
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.integers(0, 5)),
        unique_by=lambda t: t[0],
        max_size=6,
    ),
)
def test_a_change_is_found_exactly_when_the_lines_differ(
    first: list[tuple[str, int]], second: list[tuple[str, int]]
) -> None:
    before = snapshot([_line(i, "S", str(q)) for i, q in first], "crm_id")
    after = snapshot([_line(i, "S", str(q)) for i, q in second], "crm_id")
    assert bool(compare(before, after)) == (first != second)
    assert not compare(after, after)


def test_a_locked_lines_letter_names_the_order_and_the_lines_in_context_headers() -> None:
    event = SinkEvent("canonical.sales_order", 1, 40, "sales_order", "crm:q1", {})
    context = (("order", "q1"), ("target_row", "public.sale_order id=7"), ("lines_added", "c"))
    headers = dead_letter_headers(event, LinesLockedError("order_lines_locked: …", context), "erp")
    assert headers[H_ERROR_REASON] == "order_lines_locked"
    assert headers[f"{H_CONTEXT_PREFIX}order"] == "q1"
    assert headers[f"{H_CONTEXT_PREFIX}target_row"] == "public.sale_order id=7"
    assert headers[f"{H_CONTEXT_PREFIX}lines_added"] == "c"


def _row(event: SinkEvent) -> dict[str, Any]:
    """``event`` stored as the sync schema stores it (one row of its columns)."""
    values = [column[0] for column in _stored([event])]
    row = {c.name: v for c, v in zip(STORED_EVENT, values, strict=True)}
    return {**row, "entity": event.entity, "entity_key": event.key}


def test_a_stored_replayed_event_comes_back_with_its_origin_and_replay_count() -> None:
    record = {"version": 3}
    event = SinkEvent(
        "replay.sinks.erp",
        0,
        12,
        "contact",
        "crm:c1",
        record,
        b"crm:c1",
        b"bytes",
        2,
        ("canonical.contact", 1, 345),
    )
    back = stored_event(_row(event), lambda value: dict(record))
    assert back is not None
    assert (back.topic, back.partition, back.offset) == ("replay.sinks.erp", 0, 12)
    assert (back.replays, back.replayed_from) == (2, ("canonical.contact", 1, 345))
    headers = dead_letter_headers(back, LinesLockedError("x"), "erp")
    assert (headers[H_ORIGIN_TOPIC], headers[H_ORIGIN_PARTITION], headers[H_ORIGIN_OFFSET]) == (
        "canonical.contact",
        "1",
        "345",
    )
    assert headers[H_REPLAY_COUNT] == "2"


def test_a_stored_event_read_from_its_topic_has_no_origin_of_its_own() -> None:
    event = SinkEvent("canonical.contact", 2, 9, "contact", "crm:c2", {}, None, b"v")
    back = stored_event(_row(event), lambda value: {})
    assert back is not None
    assert (back.topic, back.partition, back.offset, back.replays) == ("canonical.contact", 2, 9, 0)
    assert back.replayed_from is None
    # A row stored before the origin columns existed reads the same way.
    old = {k: v for k, v in _row(event).items() if not k.startswith("origin") and k != "replays"}
    again = stored_event(old, lambda value: {})
    assert again is not None
    assert (again.replays, again.replayed_from) == (0, None)
