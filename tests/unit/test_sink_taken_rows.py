"""A row located through a link column that states another pair than the record.

The pure check of :func:`sinks.postgres._taken`: an order row (ERP ``sale_order``, CRM
``aos_quotes``) and the record written into it each state the ERP order's number; when
both state one and they differ, the link column was moved onto another record's row and
the record is a ``target_row_taken`` letter naming the row and both numbers. A row or a
record that states no number yet is written.
"""

from __future__ import annotations

from typing import Any

import pytest

from erpcrm.suspects import link_holder
from schemas.errors import TargetRowTakenError
from schemas.mapping import load_mappings
from sinks.batch import SinkEvent
from sinks.postgres import _Item, _taken, dead_letter_headers
from sinks.targets import Direction, TargetTable, build_tables

TABLES = build_tables(load_mappings())
ERP_ORDERS = TABLES[(Direction.CRM_TO_ERP, "sales_order")]
CRM_QUOTES = TABLES[(Direction.ERP_TO_CRM, "sales_order")]


def item(record: dict[str, Any], current: dict[str, Any] | None, pk: Any = 7) -> _Item:
    meta = {"version": 3, "op": "upsert", "source_system": "crm", "source_ts_ms": 10}
    event = SinkEvent("canonical.sales_order", 0, 5, "sales_order", "crm:q1", {**meta, **record})
    return _Item(event, {**meta, **record}, None, "digest", (event,), {}, current, pk)


@pytest.mark.parametrize(
    ("table", "column"), [(ERP_ORDERS, "name"), (CRM_QUOTES, "erp_order_name")]
)
def test_a_row_stating_another_order_number_is_taken(table: TargetTable, column: str) -> None:
    error = _taken(table, item({"order_number": "S00051"}, {column: "S00052"}))
    assert isinstance(error, TargetRowTakenError)
    headers = dead_letter_headers(item({}, None).event, error, "erp")
    assert headers["erpcrm.error.reason"] == "target_row_taken"
    assert headers["erpcrm.context.row_states"] == f"{column}=S00052"
    assert headers["erpcrm.context.record_states"] == "order_number=S00051"
    assert headers["erpcrm.context.target_row"].endswith(f"{table.table} {table.pk}=7")


@pytest.mark.parametrize(
    ("record", "row"),
    [
        ({"order_number": "S00051"}, {"name": "S00051"}),
        ({"order_number": None}, {"name": "S00052"}),
        ({"order_number": "S00051"}, {"name": None}),
    ],
)
def test_a_row_agreeing_or_stating_nothing_yet_is_written(
    record: dict[str, Any], row: dict[str, Any]
) -> None:
    assert _taken(ERP_ORDERS, item(record, row)) is None


def test_a_row_to_create_and_a_table_without_a_stated_value_are_never_taken() -> None:
    assert _taken(ERP_ORDERS, item({"order_number": "S00051"}, None)) is None
    customers = TABLES[(Direction.CRM_TO_ERP, "customer")]
    assert _taken(customers, item({"order_number": "S1"}, {"name": "S2"})) is None


def test_a_candidate_of_the_held_records_own_system_is_held_by_that_record() -> None:
    # No database read: the candidate names the record whose copy is not made yet.
    assert link_holder("postgresql://unused", "erp:812", "erp:805") == "erp:805"
