from datetime import date
from decimal import Decimal

import pytest

from schemas.errors import ValidationError
from schemas.mapping import load_mappings, ownership
from sinks.state import RowClock, merge
from sinks.targets import (
    DeleteMode,
    Direction,
    build_tables,
    deterministic_id,
    from_row,
    to_child_rows,
    to_row,
    transpose,
)

TABLES = build_tables(load_mappings())
E2C, C2E = Direction.ERP_TO_CRM, Direction.CRM_TO_ERP


def meta(source: str, **fields: object) -> dict[str, object]:
    return {
        "source_system": source,
        "source_ts_ms": 1_700_000_000_000,
        "version": 1,
        "op": "upsert",
        **fields,
    }


def test_customer_to_accounts() -> None:
    t = TABLES[(E2C, "customer")]
    row = to_row(
        t,
        meta(
            "erp",
            crm_id="11111111-1111-1111-1111-111111111111",
            customer_number="C00001",
            name="Acme",
            phone="+4930123",
            country_code="DE",
            zip="10117",
        ),
    )
    assert row["account_number"] == "C00001"
    assert row["phone_office"] == "+4930123"
    assert row["billing_address_country"] == "DE"
    assert row["id"].startswith("1111")
    assert from_row(t, row)["customer_number"] == "C00001"
    assert t.delete is DeleteMode.SOFT
    # Matched by customer number among live accounts only (a partial unique index).
    assert (t.locators[-1].column, t.locators[-1].dead) == ("account_number", "deleted")
    assert t.accepts(meta("erp"))
    assert not t.accepts(meta("crm"))


def test_order_status_to_quote_inverts_state_map() -> None:
    t = TABLES[(E2C, "sales_order")]
    row = to_row(t, meta("erp", crm_id="q", order_number="S00005", state="confirmed"))
    assert row == {
        "id": "q",
        "erp_order_name": "S00005",
        "erp_order_state": "sale",
        "subtotal_amount": None,
        "tax_amount": None,
        "total_amount": None,
    }
    assert t.update_only
    assert not t.accepts(meta("erp", crm_id=None))
    assert from_row(t, row)["state"] == "confirmed"


def test_inventory_computes_available() -> None:
    t = TABLES[(E2C, "inventory")]
    row = to_row(t, meta("erp", crm_id="p", sku="SKU-1", on_hand=Decimal(5), reserved=Decimal(2)))
    assert row["available"] == Decimal(3)
    assert t.delete is DeleteMode.HARD


def test_invoice_status() -> None:
    t = TABLES[(E2C, "invoice")]
    row = to_row(
        t,
        meta(
            "erp",
            invoice_number="INV/1",
            state="posted",
            payment_state="paid",
            invoice_date=date(2024, 1, 2),
        ),
        key="erp:7",
    )
    assert row["status"] == "Paid"
    assert row["id"] == deterministic_id("invoice", "erp:7")
    assert row["erp_invoice_name"] == "INV/1"
    assert row["subtotal_amount"] == 0


def test_customer_to_res_partner() -> None:
    t = TABLES[(C2E, "customer")]
    row = to_row(t, meta("crm", crm_id="c", name="Acme", customer_number="C9"))
    assert "ref" not in row
    assert row["crm_account_id"] == "c"
    assert row["is_company"] is True
    assert row["active"] is True
    assert t.delete_flag == ("active", False)
    with pytest.raises(ValidationError):
        to_row(t, meta("crm", crm_id="c", name=None))


def test_customer_number_is_read_back_from_res_partner_and_never_written() -> None:
    t = TABLES[(C2E, "customer")]
    assert "customer_number" in t.fields
    assert "ref" in t.generated
    assert "ref" not in [c.column for c in t.written_columns(insert=True)]
    assert "ref" not in [c.column for c in t.written_columns(insert=False)]
    assert t.read_columns.count("ref") == 1
    assert from_row(t, {"ref": "C00338", "name": "Acme"})["customer_number"] == "C00338"


def test_a_crm_edit_of_the_customer_number_is_refused_and_reasserted() -> None:
    """The merge sees the ERP's number: the CRM's edit (or blanking) is an owner conflict."""
    t = TABLES[(C2E, "customer")]
    owners = ownership(load_mappings(), "customer")
    current = from_row(t, {"ref": "C00338", "name": "Acme", "crm_account_id": "c"})
    for theirs in ("X-1", None):
        incoming = meta("crm", crm_id="c", name="Acme", customer_number=theirs)
        decided = merge(
            "customer",
            "crm:c",
            incoming,
            target="erp",
            ownership=owners,
            fields=[f for f in t.fields if f != "crm_id"],
            changed={"customer_number": 1_700_000_000_000},
            current=current,
            clock=RowClock(),
        )
        assert "customer_number" not in decided.writes
        assert decided.reassert
        [conflict] = decided.conflicts
        assert conflict.field == "customer_number"
        assert (conflict.ours, conflict.theirs) == ("C00338", theirs)
        assert (conflict.winner, conflict.reason) == ("erp", "owner")


def test_crm_products_are_merged_into_the_erp_catalogue_never_created_or_deleted() -> None:
    t = TABLES[(C2E, "product")]
    assert (t.table, t.update_only, t.delete) == ("product_product", True, DeleteMode.IGNORE)
    # Only what the CRM maps: the ERP's barcode, unit and liveness are none of its business.
    assert set(t.fields) == {
        "erp_id",
        "sku",
        "name",
        "product_type",
        "category",
        "list_price",
        "standard_price",
    }
    current = from_row(t, {"id": 7, "default_code": "SKU-7", "type": "consu", "list_price": 5})
    assert current == {
        "erp_id": "7",
        "sku": "SKU-7",
        "product_type": "consumable",
        "list_price": 5,
    }


@pytest.mark.parametrize(
    ("entity", "row", "field", "theirs"),
    [
        ("product", {"id": 7, "default_code": "SKU-7", "list_price": Decimal(5)}, "list_price", 9),
        ("sales_order", {"id": 3, "name": "S00003"}, "order_number", "X-1"),
        ("sales_order", {"id": 3, "amount_total": Decimal(40)}, "amount_total", Decimal(1)),
    ],
)
def test_a_crm_edit_of_an_erp_owned_product_or_order_field_is_refused_and_reasserted(
    entity: str, row: dict[str, object], field: str, theirs: object
) -> None:
    t = TABLES[(C2E, entity)]
    decided = merge(
        entity,
        "crm:c",
        meta("crm", crm_id="c", **{field: theirs}),
        target="erp",
        ownership=ownership(load_mappings(), entity),
        fields=[f for f in t.fields if not f.endswith("_id")],
        changed={field: 1_700_000_000_000},
        current=from_row(t, row),
        clock=RowClock(),
    )
    assert decided.writes == {}
    assert decided.reassert
    [conflict] = decided.conflicts
    assert (conflict.field, conflict.winner, conflict.reason) == (field, "erp", "owner")


def test_order_name_is_read_back_from_sale_order_and_never_written() -> None:
    t = TABLES[(C2E, "sales_order")]
    assert "order_number" in t.fields
    assert "name" in t.generated
    assert "name" not in [c.column for c in t.written_columns(insert=True)]
    assert t.read_columns.count("name") == 1
    assert from_row(t, {"name": "S00003"})["order_number"] == "S00003"


def test_won_quote_to_sale_order_and_lines() -> None:
    t = TABLES[(C2E, "sales_order")]
    record = meta(
        "crm",
        crm_id="q",
        customer_erp_id="7",
        state="confirmed",
        lines=[
            {"sku": "SKU-1", "product_erp_id": "3", "quantity": Decimal(2), "description": None}
        ],
    )
    row = to_row(t, record)
    assert row["state"] == "sale"
    assert row["partner_id"] == "7"
    assert "name" not in row
    assert row["amount_total"] == 0
    assert row["date_order"] is not None
    assert t.lines is not None
    lines = to_child_rows(t.lines, record, 42)
    assert lines == [
        {
            "order_id": 42,
            "sequence": 10,
            "product_id": "3",
            "name": "SKU-1",
            "product_uom_qty": Decimal(2),
            "price_unit": 0,
            "discount": 0,
            "price_subtotal": 0,
        }
    ]
    assert transpose(t.lines.sql_columns, lines)[0] == [42]
    assert not t.accepts(meta("crm", state="draft"))


def test_deterministic_id() -> None:
    assert deterministic_id("customer", "erp:1") == deterministic_id("customer", "erp:1")
    assert deterministic_id("customer", "erp:1") != deterministic_id("customer", "erp:2")
