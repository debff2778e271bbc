"""What a record lacks before a sink can write it: the references and their lookups."""

from __future__ import annotations

import pytest

from schemas.mapping import load_mappings
from sinks.targets import KEY, Direction, TargetTable, build_tables

TABLES = build_tables(load_mappings())


def _table(direction: Direction, entity: str) -> TargetTable:
    return TABLES[(direction, entity)]


@pytest.mark.parametrize("table", TABLES.values(), ids=lambda t: f"{t.direction}-{t.entity}")
def test_every_reference_of_every_table_can_be_described(table: TargetTable) -> None:
    """Whatever a record lacks, describing it never fails (its dead letter depends on it)."""
    source = table.direction.source
    record = {
        KEY: f"{source}:41",
        "source_system": source,
        "lines": [{"sku": "SKU-1", "quantity": 1}],
        **{ref.required_if: "x" for ref in table.refs if ref.required_if is not None},
    }
    lookups = table.missing_lookups(record)
    assert [f for f, _ in lookups] == [r.field for r in table.missing_references(record)]


def test_a_contact_lacking_its_customer_names_the_account_it_is_looked_up_by() -> None:
    table = _table(Direction.CRM_TO_ERP, "contact")
    record = {KEY: "crm:c1", "source_system": "crm", "customer_crm_id": "acc-1"}
    assert table.missing_lookups(record) == [("customer_erp_id", [("crm_account_id", "acc-1")])]
    # Without an account there is nothing to wait for.
    assert table.missing_lookups({**record, "customer_crm_id": None}) == []


def test_an_order_names_only_the_lines_lacking_their_product() -> None:
    table = _table(Direction.CRM_TO_ERP, "sales_order")
    record = {
        KEY: "crm:q1",
        "source_system": "crm",
        "customer_erp_id": "7",
        "lines": [
            {"sku": "KNOWN", "product_erp_id": "3"},
            {"sku": "LATE-1", "product_erp_id": None},
        ],
    }
    assert table.missing_lookups(record) == [("product_erp_id", [("default_code", "LATE-1")])]
