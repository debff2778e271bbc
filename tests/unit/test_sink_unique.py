"""Which rows a multi-row update parks first so that traded unique values apply."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.unique import UniqueKey, rows_to_park

NUMBER = UniqueKey("accounts_account_number_live_key", ("account_number",), ("account_number",))
EXAMPLES = int(os.environ.get("ERPCRM_PROPERTY_EXAMPLES", "300"))

Row = tuple[Any, Mapping[str, Any], Mapping[str, Any]]


def _apply_row_by_row(
    table: dict[Any, str | None], parks: Mapping[str, Sequence[Any]], rows: Sequence[Row]
) -> bool:
    """Apply the parking, then the update, one row at a time in the given order, the way
    PostgreSQL checks a unique index that is not deferrable; False: a row clashed."""
    for pk in parks.get("account_number", ()):
        table[pk] = None
    for pk, _current, new in rows:
        value = new.get("account_number", table[pk])
        if value is not None and any(v == value for other, v in table.items() if other != pk):
            return False
        table[pk] = value
    return True


def _rows(current: Mapping[int, str], new: Mapping[int, str]) -> list[Row]:
    return [
        (pk, {"account_number": current[pk], "name": "n"}, {"account_number": v})
        for pk, v in new.items()
    ]


def test_a_swap_parks_both_rows() -> None:
    rows = _rows({1: "C001", 2: "C002"}, {1: "C002", 2: "C001"})
    assert rows_to_park([NUMBER], rows) == {"account_number": [1, 2]}


def test_a_rotation_of_three_parks_each_row_whose_value_is_taken() -> None:
    rows = _rows({1: "A", 2: "B", 3: "C"}, {1: "B", 2: "C", 3: "A"})
    assert rows_to_park([NUMBER], rows) == {"account_number": [1, 2, 3]}


def test_a_chain_parks_only_the_rows_whose_value_is_taken() -> None:
    # 1 takes 2's number, 2 takes a new one: only 2 must be out of the way first.
    rows = _rows({1: "A", 2: "B"}, {1: "B", 2: "N"})
    assert rows_to_park([NUMBER], rows) == {"account_number": [2]}


def test_no_rotation_no_statement() -> None:
    rows = _rows({1: "A", 2: "B"}, {1: "X", 2: "B"})
    assert rows_to_park([NUMBER], rows) == {}
    # A column the update does not write parks nothing, nor does a key without nullable
    # columns (its rotation fails as before: a dead letter).
    unwritten = [(1, {"account_number": "A"}, {"name": "x"})]
    assert rows_to_park([NUMBER], unwritten) == {}
    strict = UniqueKey("k", ("account_number",), ())
    assert rows_to_park([strict], _rows({1: "A", 2: "B"}, {1: "B", 2: "A"})) == {}


def test_a_genuine_duplicate_is_left_to_the_database() -> None:
    # Both want A, which row 1 leaves: 1 is parked, and the update still clashes (2, 3).
    rows = _rows({1: "A", 2: "B", 3: "C"}, {1: "B", 2: "A", 3: "A"})
    parks = rows_to_park([NUMBER], rows)
    assert not _apply_row_by_row({1: "A", 2: "B", 3: "C"}, parks, rows)


def test_a_value_handed_to_a_row_without_one_parks_its_holder() -> None:
    key = UniqueKey("crm", ("crm_account_id",), ("crm_account_id",))
    rows: list[Row] = [
        (2, {"crm_account_id": None}, {"crm_account_id": "u1"}),
        (1, {"crm_account_id": "u1"}, {"crm_account_id": None}),
        (3, {"crm_account_id": None}, {"crm_account_id": None}),
    ]
    assert rows_to_park([key], rows) == {"crm_account_id": [1]}


def test_values_compare_as_text() -> None:
    key = UniqueKey("partner", ("id",), ("id",))
    rows: list[Row] = [(1, {"id": 7}, {"id": "8"}), (2, {"id": 8}, {"id": "7"})]
    assert rows_to_park([key], rows) == {"id": [1, 2]}


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.permutations(list(range(n))),
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.permutations(list(range(n))),
        )
    )
)
def test_any_permutation_applies_in_any_row_order(
    case: tuple[int, list[int], list[bool], list[int]],
) -> None:
    """Rows trading their values by any permutation (some rows not in the update at all,
    which keep theirs): parked first, every row order of the update applies."""
    n, permutation, written, order = case
    current = {pk: f"C{pk:03d}" for pk in range(n)}
    # A row not written keeps its value, so the permutation maps it onto itself.
    target = {pk: current[permutation[pk]] for pk in range(n)}
    kept = [pk for pk in range(n) if not written[pk]]
    for pk in kept:
        target[pk] = current[pk]
    if sorted(target.values()) != sorted(current.values()):
        return  # keeping a row's value broke the permutation: a genuine duplicate
    rows = [r for r in _rows(current, target) if written[r[0]]]
    rows.sort(key=lambda r: order.index(r[0]))
    parks = rows_to_park([NUMBER], rows)
    assert _apply_row_by_row(dict(current), parks, rows)
    if all(target[pk] == current[pk] for pk in range(n)):
        assert parks == {}
