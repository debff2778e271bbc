"""Least privilege of the sink role, derived from the target tables."""

from __future__ import annotations

import pytest

from schemas.mapping import load_mappings
from sinks.grants import grant_statements, inserted_tables, privileges
from sinks.sql import Table, grant_table
from sinks.targets import TargetTable, build_tables

TABLES = build_tables(load_mappings())


def tables_of(target: str) -> list[TargetTable]:
    return [t for (direction, _), t in TABLES.items() if direction.target == target]


def public(name: str) -> Table:
    return Table("public", name)


ALL = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})


def test_crm_privileges_per_table() -> None:
    granted = privileges(tables_of("crm"))
    assert granted == {
        public("accounts"): frozenset({"SELECT", "INSERT", "UPDATE"}),
        public("aos_products"): frozenset({"SELECT", "INSERT", "UPDATE"}),
        public("product_availability"): ALL,
        public("aos_quotes"): frozenset({"SELECT", "UPDATE"}),
        public("aos_invoices"): frozenset({"SELECT", "INSERT", "UPDATE"}),
    }


def test_crm_hard_delete_update_only_and_soft_delete() -> None:
    granted = privileges(tables_of("crm"))
    # Availability rows are hard-deleted.
    assert "DELETE" in granted[public("product_availability")]
    # A quote's ERP status is update-only: never inserted, never deleted.
    assert {"SELECT", "UPDATE"} <= granted[public("aos_quotes")]
    assert "INSERT" not in granted[public("aos_quotes")]
    assert "DELETE" not in granted[public("aos_quotes")]
    # Accounts are soft-deleted: an UPDATE, no DELETE.
    assert {"SELECT", "INSERT", "UPDATE"} <= granted[public("accounts")]
    assert "DELETE" not in granted[public("accounts")]


def test_erp_privileges_per_table() -> None:
    granted = privileges(tables_of("erp"))
    assert granted == {
        public("res_partner"): frozenset({"SELECT", "INSERT", "UPDATE"}),
        public("sale_order"): frozenset({"SELECT", "INSERT", "UPDATE"}),
        # Lines are written with the order the sink creates and touched when announced.
        public("sale_order_line"): frozenset({"SELECT", "INSERT", "UPDATE"}),
        # Products are never made or deleted from the CRM: a shared field is updated, a
        # product whose owned field the CRM edited touched when announced again.
        public("product_product"): frozenset({"SELECT", "UPDATE"}),
    }
    # Partners are archived, never deleted; products never inserted nor deleted.
    assert "DELETE" not in granted[public("res_partner")]
    assert not {"INSERT", "DELETE"} & granted[public("product_product")]


def test_no_tables_no_privileges() -> None:
    assert privileges([]) == {}
    assert inserted_tables([]) == []
    assert grant_statements([], "sink") == []


def test_inserted_tables() -> None:
    crm = inserted_tables(tables_of("crm"))
    assert public("aos_quotes") not in crm
    assert set(crm) == {
        public("accounts"),
        public("aos_products"),
        public("product_availability"),
        public("aos_invoices"),
    }
    erp = inserted_tables(tables_of("erp"))
    assert erp == [public("res_partner"), public("sale_order"), public("sale_order_line")]
    # Referenced-only tables are never inserted into.
    assert public("product_product") not in erp


def test_inserted_tables_are_listed_once() -> None:
    erp = tables_of("erp")
    assert inserted_tables([*erp, *erp]) == inserted_tables(erp)


def test_grant_statements_render_in_table_order() -> None:
    rendered = [s.as_string(None) for s in grant_statements(tables_of("erp"), "erpcrm_sink")]
    assert rendered == [
        'GRANT SELECT, UPDATE ON "public"."product_product" TO "erpcrm_sink"',
        'GRANT SELECT, INSERT, UPDATE ON "public"."res_partner" TO "erpcrm_sink"',
        'GRANT SELECT, INSERT, UPDATE ON "public"."sale_order" TO "erpcrm_sink"',
        'GRANT SELECT, INSERT, UPDATE ON "public"."sale_order_line" TO "erpcrm_sink"',
    ]


def test_grant_statements_crm() -> None:
    rendered = [s.as_string(None) for s in grant_statements(tables_of("crm"), "sink")]
    assert rendered == [
        'GRANT SELECT, INSERT, UPDATE ON "public"."accounts" TO "sink"',
        'GRANT SELECT, INSERT, UPDATE ON "public"."aos_invoices" TO "sink"',
        'GRANT SELECT, INSERT, UPDATE ON "public"."aos_products" TO "sink"',
        'GRANT SELECT, UPDATE ON "public"."aos_quotes" TO "sink"',
        'GRANT SELECT, INSERT, UPDATE, DELETE ON "public"."product_availability" TO "sink"',
    ]


def test_grant_statements_quote_the_role() -> None:
    [first, *_] = grant_statements(tables_of("erp"), 'Sink "Role"')
    assert first.as_string(None) == (
        'GRANT SELECT, UPDATE ON "public"."product_product" TO "Sink ""Role"""'
    )


def test_grant_table_orders_privileges() -> None:
    stmt = grant_table(Table("crm", "My Table"), "r", ["DELETE", "SELECT"])
    assert stmt.as_string(None) == 'GRANT SELECT, DELETE ON "crm"."My Table" TO "r"'


@pytest.mark.parametrize("names", [["SELECT", "TRUNCATE"], ["select"], [], ["ALL"]])
def test_grant_table_rejects_unknown_privileges(names: list[str]) -> None:
    with pytest.raises(ValueError, match="privileges must be some of"):
        grant_table(public("accounts"), "sink", names)
