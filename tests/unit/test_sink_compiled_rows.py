"""The compiled row functions of every target table give what the columns define.

:func:`sinks.targets.to_row` and :func:`~sinks.targets.from_row` run a function
generated per table; the oracle here is the column-by-column definition
(:meth:`ColumnMap.value` per column not generated, and the read-back rule of
:func:`~sinks.targets.from_row`'s contract), for any record or row: the same values, the
same column order, the same error.
"""

from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.mapping import load_mappings
from sinks.targets import KEY, TargetTable, build_tables, from_row, to_row

TABLES = sorted(build_tables(load_mappings()).values(), key=lambda t: (t.direction, t.entity))
VALUES = st.sampled_from(
    [None, "", "x", "1", "17", 5, 0, True, False, "Good", "draft", "sale", "paid", "ab-cd"]
)


def by_column(table: TargetTable, record: Mapping[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", [
            (c.column, c.value(record)) for c in table.columns if c.column not in table.generated
        ]
    except Exception as exc:  # the same error, whatever it is
        return "error", (type(exc), str(exc))


def read_back(table: TargetTable, row: Mapping[str, Any]) -> list[tuple[str, Any]]:
    values: dict[str, Any] = {}
    for c in table.columns:
        if c.field is None or c.field in values or c.column not in row:
            continue
        value = row[c.column]
        if value is not None:
            if c.from_target is not None:
                value = c.from_target.get(value, value)
            if c.pg_type == "uuid" or c.field.endswith("_id"):
                value = str(value)
        values[c.field] = value
    return list(values.items())


@st.composite
def records(draw: st.DrawFn) -> tuple[TargetTable, dict[str, Any], dict[str, Any]]:
    table = draw(st.sampled_from(TABLES))
    fields = sorted({c.field for c in table.columns if c.field} | {"customer_erp_id", "lines"})
    record = {f: draw(VALUES) for f in fields if draw(st.booleans())}
    record.update(source_ts_ms=1_700_000_000_000, source_system="erp", op="upsert")
    record[KEY] = f"erp:{draw(st.integers(1, 9))}"
    row = {c.column: draw(VALUES) for c in table.columns if draw(st.booleans())}
    return table, record, row


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_compiled_rows_match_the_columns(
    case: tuple[TargetTable, dict[str, Any], dict[str, Any]],
) -> None:
    table, record, row = case
    try:
        compiled: tuple[str, Any] = "ok", list(to_row(table, record).items())
    except Exception as exc:
        compiled = "error", (type(exc), str(exc))
    assert compiled == by_column(table, record)
    assert list(from_row(table, row).items()) == read_back(table, row)


def test_to_row_makes_exactly_the_columns_an_insert_writes() -> None:
    """The sink writes ``to_row``'s dict as it is (an update without its key)."""
    for table in TABLES:
        record = {KEY: "erp:1", "source_ts_ms": 1_700_000_000_000}
        record.update(
            {c.field: next(iter(c.to_target or {"1": 0})) for c in table.columns if c.field}
        )
        record.update(first_name="A", last_name="B")  # a contact's computed name
        row = to_row(table, record)
        assert list(row) == [c.column for c in table.written_columns(insert=True)]
        row.pop(table.pk, None)  # and, less the key, the columns an update writes
        assert list(row) == [c.column for c in table.written_columns(insert=False)]
