"""Target tables: how rows are located, which columns are written, references, ids."""

from __future__ import annotations

import dataclasses

from schemas.mapping import load_mappings
from sinks.sql import Table
from sinks.targets import (
    KEY,
    ColumnMap,
    Direction,
    TargetTable,
    build_tables,
    deterministic_id,
    to_row,
)

TABLES = build_tables(load_mappings())
E2C, C2E = Direction.ERP_TO_CRM, Direction.CRM_TO_ERP

ACCOUNTS = TABLES[(E2C, "customer")]
AVAILABILITY = TABLES[(E2C, "inventory")]
QUOTES = TABLES[(E2C, "sales_order")]
INVOICES = TABLES[(E2C, "invoice")]
PARTNER = TABLES[(C2E, "customer")]
ORDER = TABLES[(C2E, "sales_order")]


def written(table: TargetTable, *, insert: bool) -> list[str]:
    return [c.column for c in table.written_columns(insert=insert)]


# ----------------------------------------------------------------------- locators


def test_default_locator_is_the_key_column() -> None:
    assert not AVAILABILITY.locate
    [locator] = AVAILABILITY.locators
    assert (locator.column, locator.pg_type, locator.dead) == ("product_id", "uuid", None)
    assert locator.value({"crm_id": "p-1", "sku": "SKU-1"}) == "p-1"
    assert locator.value({}) is None


def test_default_locator_reads_the_key_field() -> None:
    [locator] = INVOICES.locators
    assert (locator.column, locator.pg_type) == ("erp_invoice_name", "text")
    assert locator.value({"invoice_number": "INV/7"}) == "INV/7"
    [quote] = QUOTES.locators
    assert (quote.column, quote.pg_type) == ("id", "uuid")
    assert quote.value({"crm_id": "q"}) == "q"


def test_partner_locators_in_order() -> None:
    assert [(loc.column, loc.pg_type) for loc in PARTNER.locators] == [
        ("crm_account_id", "uuid"),
        ("id", "bigint"),
        ("ref", "text"),
    ]
    by_crm, by_id, by_ref = PARTNER.locators
    record = {"crm_id": "c-1", "erp_id": "17", "customer_number": "C00017"}
    assert by_crm.value(record) == "c-1"
    assert by_id.value(record) == 17
    assert by_ref.value(record) == "C00017"


def test_partner_id_locator_only_takes_digits() -> None:
    by_id = PARTNER.locators[1]
    assert by_id.value({"erp_id": "17"}) == 17
    assert by_id.value({"erp_id": 17}) == 17
    assert by_id.value({"erp_id": "C17"}) is None
    assert by_id.value({"erp_id": "-1"}) is None
    assert by_id.value({"erp_id": ""}) is None
    assert by_id.value({"erp_id": None}) is None
    assert by_id.value({}) is None


def test_accounts_locators_crm_id_created_id_then_number() -> None:
    by_crm, by_created, by_number = ACCOUNTS.locators
    assert [loc.column for loc in ACCOUNTS.locators] == ["id", "id", "account_number"]
    record = {"crm_id": "u-1", "customer_number": "C1", KEY: "erp:5"}
    assert by_crm.value(record) == "u-1"
    assert by_created.value(record) == deterministic_id("customer", "erp:5")
    assert by_number.value(record) == "C1"
    # Only the business key skips dead (soft-deleted) rows.
    assert (by_crm.dead, by_created.dead, by_number.dead) == (None, None, "deleted")


def test_order_locators() -> None:
    assert [(loc.column, loc.pg_type) for loc in ORDER.locators] == [
        ("crm_quote_id", "uuid"),
        ("id", "bigint"),
    ]
    assert ORDER.locators[1].value({"erp_id": "42"}) == 42


# ---------------------------------------------------------------- written columns


def test_update_excludes_the_pk() -> None:
    insert, update = written(ACCOUNTS, insert=True), written(ACCOUNTS, insert=False)
    assert insert[0] == "id"
    assert "id" not in update
    assert update == insert[1:]


def test_update_of_a_non_id_pk_excludes_it() -> None:
    assert AVAILABILITY.pk == "product_id"
    assert "product_id" in written(AVAILABILITY, insert=True)
    assert "product_id" not in written(AVAILABILITY, insert=False)
    assert written(AVAILABILITY, insert=False) == [
        "part_number",
        "on_hand",
        "reserved",
        "available",
        "updated_at",
    ]


def test_partner_pk_is_not_mapped_so_insert_and_update_write_the_same() -> None:
    assert PARTNER.pk_column.name == "id"
    assert PARTNER.pk_column.pg_type == "bigint"
    assert written(PARTNER, insert=True) == written(PARTNER, insert=False)
    assert "crm_account_id" in written(PARTNER, insert=False)


def test_generated_columns_are_never_written() -> None:
    assert "ref" in PARTNER.generated
    assert "ref" not in written(PARTNER, insert=True)
    assert "ref" not in written(PARTNER, insert=False)
    assert "name" in ORDER.generated
    assert "name" not in written(ORDER, insert=True)
    assert "name" not in written(ORDER, insert=False)


def test_generated_filter_applies_to_mapped_columns_too() -> None:
    # Even if a generated column were mapped, it is read back only, never written.
    mapped = dataclasses.replace(
        PARTNER, columns=(*PARTNER.columns, ColumnMap("ref", "text", field="customer_number"))
    )
    assert "ref" in [c.name for c in mapped.sql_columns]
    assert "ref" not in written(mapped, insert=True)
    assert "ref" not in written(mapped, insert=False)
    assert written(mapped, insert=True) == written(PARTNER, insert=True)


# ------------------------------------------------------------------------- to_row


def test_account_created_by_the_sink_gets_the_deterministic_id() -> None:
    record = {"source_system": "erp", "customer_number": "C17", "name": "Acme"}
    row = to_row(ACCOUNTS, record, key="erp:17")
    assert row["id"] == deterministic_id("customer", "erp:17")
    assert row["id"] == to_row(ACCOUNTS, record, key="erp:17")["id"]
    assert row["id"] != to_row(ACCOUNTS, record, key="erp:18")["id"]
    assert row["account_number"] == "C17"
    # The key is passed to the columns, not left in the caller's record.
    assert KEY not in record


def test_account_with_a_null_crm_id_gets_the_deterministic_id() -> None:
    row = to_row(ACCOUNTS, {"crm_id": None, "name": "Acme"}, key="erp:3")
    assert row["id"] == deterministic_id("customer", "erp:3")


def test_account_linked_by_the_crosswalk_keeps_its_id() -> None:
    crm_id = "11111111-2222-3333-4444-555555555555"
    row = to_row(ACCOUNTS, {"crm_id": crm_id, "name": "Acme"}, key="erp:17")
    assert row["id"] == crm_id
    assert row["id"] != deterministic_id("customer", "erp:17")


# --------------------------------------------------------------------- references


def test_order_references() -> None:
    customer, product = ORDER.refs
    assert (customer.field, customer.ref, customer.column, customer.pg_type) == (
        "customer_erp_id",
        Table("public", "res_partner"),
        "id",
        "bigint",
    )
    assert not customer.lines
    assert [(loc.column, loc.pg_type) for loc in customer.by] == [
        ("crm_account_id", "uuid"),
        ("ref", "text"),
    ]
    record = {"customer_crm_id": "a-1", "customer_number": "C5"}
    assert [loc.value(record) for loc in customer.by] == ["a-1", "C5"]

    assert (product.field, product.ref, product.column) == (
        "product_erp_id",
        Table("public", "product_product"),
        "id",
    )
    assert product.lines
    [by_sku] = product.by
    assert by_sku.column == "default_code"
    assert by_sku.value({"sku": "SKU-9"}) == "SKU-9"


def test_required_references_are_required_columns() -> None:
    # A reference the order cannot do without: its column is required.
    partner = next(c for c in ORDER.columns if c.field == "customer_erp_id")
    assert partner.column == "partner_id"
    assert partner.required
    assert ORDER.lines is not None
    product = next(c for c in ORDER.lines.columns if c.field == "product_erp_id")
    assert product.required


def test_tables_without_references() -> None:
    assert ACCOUNTS.refs == ()
    assert PARTNER.refs == ()
    assert [r.field for r in AVAILABILITY.refs] == ["crm_id"]
    assert [r.field for r in INVOICES.refs] == ["customer_crm_id"]


def test_only_the_erp_order_table_remembers_the_rows_it_makes() -> None:
    assert [key for key, table in TABLES.items() if table.remember] == [(C2E, "sales_order")]
