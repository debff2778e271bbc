"""sinks.targets.from_row reads rows back as the version that inverted value maps per row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas.mapping import load_mappings
from sinks.targets import TargetTable, build_tables, from_row

TABLES = sorted(build_tables(load_mappings()).values(), key=lambda t: (t.direction, t.entity))


def _reference_from_row(table: TargetTable, row: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for c in table.columns:
        if c.field is None or c.field in values or c.column not in row:
            continue
        value = row[c.column]
        if value is not None and c.to_target is not None:
            inverse: dict[Any, Any] = {}
            for canonical, target in c.to_target.items():
                inverse.setdefault(target, canonical)
            value = inverse.get(value, value)
        if value is not None and (c.pg_type == "uuid" or c.field.endswith("_id")):
            value = str(value)
        values[c.field] = value
    return values


@st.composite
def _rows(draw: st.DrawFn) -> tuple[TargetTable, dict[str, Any]]:
    table = draw(st.sampled_from(TABLES))
    row: dict[str, Any] = {}
    for c in table.columns:
        if not draw(st.booleans()):
            continue  # a column the statement did not read
        mapped = list(c.to_target.values()) if c.to_target else []
        row[c.column] = draw(
            st.none()
            | st.sampled_from(mapped or [None])
            | st.text(max_size=4)
            | st.integers(-5, 5)
            | st.booleans()
            | st.uuids()
        )
    return table, row


@given(_rows())
def test_from_row_reads_rows_as_the_reference(case: tuple[TargetTable, dict[str, Any]]) -> None:
    table, row = case
    assert from_row(table, row) == _reference_from_row(table, row)
