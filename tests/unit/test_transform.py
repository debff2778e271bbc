"""Raw change events to canonical events (streams/transform.py).

Raw events are built with the capture stage's own envelope code and decoded through
Avro, so the transform sees exactly what the stream stage will read from the bus.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.envelope import ColumnShape, SourceInfo, TableShape, envelope_record, value_schema
from erpcrm import dirty
from schemas.canonical import canonical_schema
from schemas.mapping import Flow, load_mappings
from schemas.payload import value_digest
from schemas.serde import parse_schema, read_body, write_body
from streams import inventory
from streams.crosswalk import link, new_crosswalk
from streams.transform import (
    CanonicalEvent,
    Skipped,
    event_id,
    inventory_event,
    line_parent,
    to_canonical,
    to_stock_change,
)
from streams.validation import Failed, Ok, Reason

FLOWS = load_mappings()

# ---------------------------------------------------------------- building envelopes


def _shape(server: str, table: str, spec: str) -> TableShape:
    """Columns as ``name type [key] [notnull]`` lines; ``numeric(p,s)`` allowed."""
    columns = []
    for line in spec.strip().splitlines():
        name, pg_type, *flags = line.split()
        precision = scale = None
        if pg_type.startswith("numeric("):
            precision, scale = (int(x) for x in pg_type[8:-1].split(","))
            pg_type = "numeric"
        columns.append(
            ColumnShape(
                name,
                pg_type,
                nullable="notnull" not in flags and "key" not in flags,
                is_key="key" in flags,
                numeric_precision=precision,
                numeric_scale=scale,
            )
        )
    return TableShape(server, "public", table, tuple(columns))


RES_PARTNER = _shape(
    "erp",
    "res_partner",
    """
    id int8 key
    name text notnull
    ref text
    parent_id int8
    is_company bool notnull
    vat text
    email text
    phone text
    website text
    street text
    city text
    zip text
    country_code text
    active bool notnull
    crm_account_id uuid
    write_date timestamptz notnull
    """,
)
ACCOUNTS = _shape(
    "crm",
    "accounts",
    """
    id uuid key
    name text notnull
    account_number text
    vat text
    email text
    phone_office text
    website text
    billing_address_street text
    billing_address_city text
    billing_address_postalcode text
    billing_address_country text
    industry text
    deleted bool notnull
    """,
)
CONTACTS = _shape(
    "crm",
    "contacts",
    """
    id uuid key
    account_id uuid
    first_name text
    last_name text notnull
    title text
    email text
    phone_work text
    phone_mobile text
    primary_address_country text
    deleted bool notnull
    """,
)
PRODUCT_PRODUCT = _shape(
    "erp",
    "product_product",
    """
    id int8 key
    default_code text notnull
    barcode text
    name text notnull
    type text notnull
    categ text notnull
    list_price numeric(12,2) notnull
    standard_price numeric(12,2) notnull
    uom text notnull
    active bool notnull
    """,
)
AOS_PRODUCTS = _shape(
    "crm",
    "aos_products",
    """
    id uuid key
    name text notnull
    part_number text
    category text
    type text notnull
    price numeric(12,2) notnull
    cost numeric(12,2) notnull
    currency_id text notnull
    deleted bool notnull
    """,
)
STOCK_QUANT = _shape(
    "erp",
    "stock_quant",
    """
    id int8 key
    product_id int8 notnull
    location_id int8 notnull
    quantity numeric(16,3) notnull
    reserved_quantity numeric(16,3) notnull
    """,
)
SALE_ORDER = _shape(
    "erp",
    "sale_order",
    """
    id int8 key
    name text notnull
    partner_id int8 notnull
    state text notnull
    date_order timestamptz notnull
    validity_date date
    amount_untaxed numeric(14,2) notnull
    amount_tax numeric(14,2) notnull
    amount_total numeric(14,2) notnull
    currency text notnull
    client_order_ref text
    crm_quote_id uuid
    """,
)
SALE_ORDER_LINE = _shape(
    "erp",
    "sale_order_line",
    """
    id int8 key
    order_id int8 notnull
    sequence int4 notnull
    product_id int8 notnull
    name text notnull
    product_uom_qty numeric(14,3) notnull
    price_unit numeric(12,2) notnull
    discount numeric(5,2) notnull
    price_subtotal numeric(14,2) notnull
    """,
)
AOS_QUOTES = _shape(
    "crm",
    "aos_quotes",
    """
    id uuid key
    number int4 notnull
    account_id uuid
    stage text notnull
    expiration date
    currency_id text notnull
    subtotal_amount numeric(14,2) notnull
    tax_amount numeric(14,2) notnull
    total_amount numeric(14,2) notnull
    erp_order_name text
    deleted bool notnull
    """,
)
AOS_PRODUCTS_QUOTES = _shape(
    "crm",
    "aos_products_quotes",
    """
    id uuid key
    parent_id uuid notnull
    number int4
    name text
    part_number text
    product_id uuid
    product_qty numeric(18,4) notnull
    product_list_price numeric(12,2)
    product_discount numeric(9,2) notnull
    product_total_price numeric(14,2) notnull
    deleted bool notnull
    """,
)
ACCOUNT_MOVE = _shape(
    "erp",
    "account_move",
    """
    id int8 key
    name text notnull
    move_type text notnull
    partner_id int8 notnull
    invoice_origin text
    invoice_date date
    invoice_date_due date
    amount_untaxed numeric(14,2) notnull
    amount_tax numeric(14,2) notnull
    amount_total numeric(14,2) notnull
    amount_residual numeric(14,2) notnull
    currency text notnull
    payment_state text notnull
    state text notnull
    """,
)

TS_MS = 1_717_236_000_000


def decoded(
    shape: TableShape,
    op: str,
    *,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    lsn: int = 0x1_6B3_7A28,
    tx_id: int | None = 771,
    snapshot: str = "false",
) -> dict[str, Any]:
    """Build a change event the way the capture stage does and decode it from Avro."""
    source = SourceInfo(
        version="test",
        name=shape.server,
        ts_ms=TS_MS,
        db=shape.server,
        schema=shape.schema,
        table=shape.table,
        tx_id=tx_id,
        lsn=lsn,
        snapshot=snapshot,  # type: ignore[arg-type]
    )
    datum = envelope_record(
        shape,
        op=op,
        before=before,
        after=after,
        source=source,
        ts_ms=TS_MS + 5,  # type: ignore[arg-type]
    )
    schema = parse_schema(value_schema(shape))
    result: dict[str, Any] = read_body(write_body(schema, datum), schema)
    return result


def fits_schema(event: CanonicalEvent) -> dict[str, Any]:
    """Serialise the record with its canonical schema and return what a reader gets."""
    schema = parse_schema(canonical_schema(event.entity))
    back: dict[str, Any] = read_body(write_body(schema, event.record), schema)
    return back


def ok(result: object) -> Ok[Any]:
    assert isinstance(result, Ok), result
    return result


def failed(result: object) -> Failed:
    assert isinstance(result, Failed), result
    return result


ACCOUNT_ID = "3f0c6a1e-95c4-4b8e-a2a4-0f5a3c1d2b7e"
QUOTE_ID = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"

PARTNER: dict[str, Any] = {
    "id": 42,
    "name": "  Nordwind   Trading GmbH ",
    "ref": "c00042",
    "parent_id": None,
    "is_company": True,
    "vat": "de136695976",
    "email": "INFO@NORDWIND.EXAMPLE.COM",
    "phone": "030/6610918",
    "website": "https://www.nordwind.example.com",
    "street": "Friedrichstraße 12",
    "city": "Berlin",
    "zip": "10117",
    "country_code": "Deutschland",
    "active": True,
    "crm_account_id": None,
    "write_date": datetime(2024, 6, 1, 10, tzinfo=UTC),
}


def party_columns(party: dirty.PartyValues) -> dict[str, Any]:
    """The ``res_partner`` columns of a party the workload makes."""
    return {
        "name": party.name,
        "is_company": party.is_company,
        "vat": party.vat,
        "email": party.email,
        "phone": party.phone,
        "street": party.street,
        "city": party.city,
        "zip": party.zip,
        "country_code": party.country,
    }


def partner_event(**changes: Any) -> dict[str, Any]:
    return decoded(RES_PARTNER, "u", after=PARTNER | changes)


# --------------------------------------------------------------------- customers


def test_an_erp_customer_becomes_a_clean_canonical_customer() -> None:
    result = ok(to_canonical(FLOWS["erp_res_partner__customer"], partner_event()))
    event: CanonicalEvent = result.value
    assert event.entity == "customer"
    assert event.topic == "canonical.customer"
    assert event.key == "erp:42"
    record = fits_schema(event)
    assert record == {
        "event_id": event_id("erp", 0x1_6B3_7A28, "public", "res_partner", "42"),
        "source_system": "erp",
        "source_lsn": 0x1_6B3_7A28,
        "source_tx_id": 771,
        "source_ts_ms": TS_MS,
        "op": "upsert",
        "version": 0x1_6B3_7A28,
        "erp_id": "42",
        "crm_id": None,
        "customer_number": "c00042",
        "name": "Nordwind Trading GmbH",
        "is_company": True,
        "vat": "DE136695976",
        "email": "info@nordwind.example.com",
        "phone": "+49306610918",
        "website": "https://www.nordwind.example.com",
        "street": "Friedrichstraße 12",
        "city": "Berlin",
        "zip": "10117",
        "country_code": "DE",
        "industry": None,
        "active": True,
        "changed_fields": None,
        "prior_digests": None,
        "duplicate_of": None,
        "duplicate_rule": None,
        "quarantined_fields": None,
        "source_snapshot": None,
    }
    assert result.quarantined == ()
    assert {(f.field, f.rule) for f in result.fixes} == {
        ("name", "trim"),
        ("vat", "vat"),
        ("email", "email"),
        ("phone", "phone"),
        ("country_code", "country"),
    }


def test_event_ids_are_deterministic_uuids() -> None:
    flow = FLOWS["erp_res_partner__customer"]
    first = ok(to_canonical(flow, partner_event())).value.record["event_id"]
    again = ok(to_canonical(flow, partner_event())).value.record["event_id"]
    later = ok(to_canonical(flow, decoded(RES_PARTNER, "u", after=PARTNER, lsn=1))).value
    assert first == again != later.record["event_id"]
    assert uuid.UUID(first).version == 5
    assert later.record["version"] == later.record["source_lsn"] == 1


def test_a_missing_country_is_inferred_and_the_phone_still_parses() -> None:
    record = ok(
        to_canonical(
            FLOWS["erp_res_partner__customer"],
            partner_event(country_code=None, vat=None, phone="+33 1 66 10 91 88"),
        )
    )
    assert record.value.record["country_code"] == "FR"
    assert record.value.record["phone"] == "+33166109188"
    assert record.fixes[-1].note == "inferred from the phone number"


def test_the_crosswalk_and_the_mapped_column_fill_the_other_id() -> None:
    flow = FLOWS["erp_res_partner__customer"]
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "42", "from-crosswalk")
    linked = ok(to_canonical(flow, partner_event(), crosswalk=crosswalk)).value
    assert linked.record["crm_id"] == "from-crosswalk"
    mapped = ok(to_canonical(flow, partner_event(crm_account_id=ACCOUNT_ID), crosswalk=crosswalk))
    assert mapped.value.record["crm_id"] == ACCOUNT_ID


def test_contact_persons_are_not_customers() -> None:
    result = to_canonical(FLOWS["erp_res_partner__customer"], partner_event(parent_id=7))
    assert isinstance(result, Skipped)
    assert "parent_id is_null True" in result.reason


def test_archived_erp_customers_stay_upserts() -> None:
    event = ok(to_canonical(FLOWS["erp_res_partner__customer"], partner_event(active=False))).value
    assert (event.record["op"], event.record["active"]) == ("upsert", False)


def test_a_hard_delete_carries_the_ids_only() -> None:
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "42", ACCOUNT_ID)
    raw = decoded(RES_PARTNER, "d", before={"id": 42})  # REPLICA IDENTITY DEFAULT: key only
    assert raw["before"]["name"] == ""  # the envelope's neutral value for NOT NULL
    event = ok(to_canonical(FLOWS["erp_res_partner__customer"], raw, crosswalk=crosswalk)).value
    record = fits_schema(event)
    assert (record["op"], record["erp_id"], record["crm_id"]) == ("delete", "42", ACCOUNT_ID)
    assert record["name"] is None
    assert record["customer_number"] is None


def test_a_crm_soft_delete_is_a_delete_with_the_rows_values_and_liveness() -> None:
    account = {"id": ACCOUNT_ID, "name": "Acme", "account_number": "c00042", "deleted": True}
    raw = decoded(ACCOUNTS, "u", after=account)
    event = ok(to_canonical(FLOWS["crm_accounts__customer"], raw)).value
    record = fits_schema(event)
    assert (record["op"], record["crm_id"], record["customer_number"]) == (
        "delete",
        ACCOUNT_ID,
        "c00042",
    )
    # The row is still there: its values travel (edits before the delete are not lost),
    # and its liveness is a field the sinks merge by commit time.
    assert (record["name"], record["active"]) == ("Acme", False)
    assert event.key == f"crm:{ACCOUNT_ID}"


def test_a_crm_soft_delete_names_what_its_change_changed_liveness_among_them() -> None:
    before = {"id": ACCOUNT_ID, "name": "Acme", "email": "a@acme.example", "deleted": False}
    after = before | {"name": "Acme Two", "deleted": True}
    raw = decoded(ACCOUNTS, "u", before=before, after=after)
    record = fits_schema(ok(to_canonical(FLOWS["crm_accounts__customer"], raw)).value)
    assert (record["op"], record["name"], record["active"]) == ("delete", "Acme Two", False)
    assert record["changed_fields"] == ["name", "active"]


def test_a_crm_undelete_is_an_upsert_that_changed_liveness_only() -> None:
    before = {"id": ACCOUNT_ID, "name": "Acme", "deleted": True}
    raw = decoded(ACCOUNTS, "u", before=before, after=before | {"deleted": False})
    record = fits_schema(ok(to_canonical(FLOWS["crm_accounts__customer"], raw)).value)
    assert (record["op"], record["name"], record["active"]) == ("upsert", "Acme", True)
    assert record["changed_fields"] == ["active"]


def test_a_contact_soft_delete_carries_its_values_and_liveness() -> None:
    before = {"id": ACCOUNT_ID, "last_name": "Nowak", "email": "n@x.example", "deleted": False}
    after = before | {"email": "nowak@x.example", "deleted": True}
    raw = decoded(CONTACTS, "u", before=before, after=after)
    record = fits_schema(ok(to_canonical(FLOWS["crm_contacts__contact"], raw)).value)
    assert (record["op"], record["email"], record["active"]) == (
        "delete",
        "nowak@x.example",
        False,
    )
    assert record["changed_fields"] == ["email", "active"]


def test_a_soft_delete_of_an_entity_without_liveness_carries_the_ids_only() -> None:
    raw = decoded(AOS_PRODUCTS, "u", after=CRM_PRODUCT | {"deleted": True})
    record = fits_schema(ok(to_canonical(FLOWS["crm_aos_products__product"], raw)).value)
    assert (record["op"], record["crm_id"], record["name"]) == ("delete", CRM_PRODUCT["id"], None)


def test_truncates_are_skipped() -> None:
    raw = decoded(RES_PARTNER, "t")
    assert isinstance(to_canonical(FLOWS["erp_res_partner__customer"], raw), Skipped)


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"name": "   "}, Reason.MISSING_REQUIRED, "name"),
        ({"ref": None}, Reason.MISSING_REQUIRED, "customer_number"),
    ],
)
def test_customers_without_a_required_field_fail_with_a_reason(
    changes: dict[str, Any], reason: Reason, field: str
) -> None:
    result = failed(to_canonical(FLOWS["erp_res_partner__customer"], partner_event(**changes)))
    assert (result.reason, result.field) == (reason, field)
    assert result.to_error().args[0].startswith(reason.value)


@pytest.mark.parametrize(
    ("changes", "reason", "left_out"),
    [
        ({"email": "info at nordwind.example.com"}, Reason.INVALID_EMAIL, ["email"]),
        ({"phone": "call me"}, Reason.INVALID_PHONE, ["phone"]),
        ({"vat": "DE 136 695 977"}, Reason.INVALID_VAT, ["vat"]),
        # No country to read the national phone number in: the phone goes too.
        ({"country_code": "Atlantis"}, Reason.UNKNOWN_COUNTRY, ["country_code", "phone"]),
    ],
)
def test_an_invalid_optional_field_is_quarantined_and_the_record_flows(
    changes: dict[str, Any], reason: Reason, left_out: list[str]
) -> None:
    raw = decoded(RES_PARTNER, "u", before=PARTNER, after=PARTNER | changes)
    result = ok(to_canonical(FLOWS["erp_res_partner__customer"], raw))
    record = fits_schema(result.value)
    assert sorted(record["quarantined_fields"]) == sorted(left_out)
    assert all(record[name] is None for name in left_out)
    # A field left out is no change: the sinks keep what the target has.
    assert not set(left_out) & set(record["changed_fields"])
    assert record["name"] == "Nordwind Trading GmbH"
    assert record["email"] == (None if "email" in left_out else "info@nordwind.example.com")
    first = result.quarantined[0]
    assert (first.reason, first.field, first.kept) == (reason, left_out[0], False)
    assert first.value == (PARTNER | changes)[left_out[0]]  # the column has the field's name


def test_on_invalid_keep_carries_the_value_as_typed(tmp_path: Path) -> None:
    text = (
        Path(FLOWS["erp_res_partner__customer"].path)
        .read_text()
        .replace(
            "clean: phone, region: country_code,",
            "clean: phone, region: country_code, on_invalid: keep,",
        )
    )
    (tmp_path / "erp_res_partner__customer.yaml").write_text(text)
    flow = load_mappings(tmp_path)["erp_res_partner__customer"]
    result = ok(to_canonical(flow, partner_event(phone="  call   me ")))
    assert result.value.record["phone"] == "call me"
    assert result.value.record["quarantined_fields"] is None
    (kept,) = result.quarantined
    assert (kept.field, kept.reason, kept.kept) == ("phone", Reason.INVALID_PHONE, True)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ({"op": "u", "after": {"id": 1}}, "no source block"),
        ({"op": "u", "after": {"id": 1}, "source": {"ts_ms": 1}}, "source.lsn"),
        ({"op": "u", "source": {"lsn": 1, "ts_ms": 1}}, "without its after row"),
        ({"op": "x", "source": {"lsn": 1, "ts_ms": 1}}, "unknown op"),
        ({"op": "u", "after": {"name": "x"}, "source": {"lsn": 1, "ts_ms": 1}}, "key column 'id'"),
        (
            {"op": "u", "after": {"id": 1}, "source": {"lsn": 1, "ts_ms": 1, "table": "accounts"}},
            "an event of table 'accounts'",
        ),
    ],
)
def test_malformed_events_fail(raw: dict[str, Any], detail: str) -> None:
    result = failed(to_canonical(FLOWS["erp_res_partner__customer"], raw))
    assert result.reason is Reason.MALFORMED_EVENT
    assert detail in result.detail


@given(
    st.sampled_from(dirty.DirtyKind),
    st.randoms(use_true_random=False),
    st.integers(1, 2**40),
)
def test_dirty_workload_customers_never_crash_the_transform(
    kind: dirty.DirtyKind, rng: random.Random, lsn: int
) -> None:
    party = dirty.apply_party_dirt(rng, dirty.new_party(rng), kind)
    row = PARTNER | party_columns(party)
    result = to_canonical(
        FLOWS["erp_res_partner__customer"], decoded(RES_PARTNER, "c", after=row, lsn=lsn)
    )
    if isinstance(result, Ok):
        record = fits_schema(result.value)
        assert record["name"] == " ".join(party.name.split())
        assert record["country_code"] == (party.country or record["country_code"])
    else:
        assert isinstance(result, Failed)
        assert kind in {dirty.DirtyKind.BAD_EMAIL, dirty.DirtyKind.BAD_PHONE}, result


# ------------------------------------------------------------- contacts, products


def test_a_crm_contact() -> None:
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "42", ACCOUNT_ID)
    row = {
        "id": "5d7e1f7a-0000-4000-8000-000000000001",
        "account_id": ACCOUNT_ID,
        "first_name": "Anna",
        "last_name": " Schmidt ",
        "email": "anna.schmidt@nordwind.example.com",
        "phone_mobile": "0151 4410938",
        "phone_work": None,
        "primary_address_country": "DE",
        "deleted": False,
    }
    event = ok(
        to_canonical(
            FLOWS["crm_contacts__contact"], decoded(CONTACTS, "c", after=row), crosswalk=crosswalk
        )
    )
    record = fits_schema(event.value)
    assert record["customer_crm_id"] == ACCOUNT_ID
    assert record["customer_erp_id"] == "42"
    assert record["last_name"] == "Schmidt"
    assert record["phone"] == "+491514410938"


PRODUCT = {
    "id": 7,
    "default_code": "sku-00007",
    "barcode": "4006381000077",
    "name": "Steel Hex Bolt M8",
    "type": "product",
    "categ": "Fasteners",
    "list_price": Decimal("12.50"),
    "standard_price": Decimal("7.10"),
    "uom": "Units",
    "active": True,
}


def test_an_erp_product() -> None:
    event = ok(
        to_canonical(
            FLOWS["erp_product_product__product"], decoded(PRODUCT_PRODUCT, "r", after=PRODUCT)
        )
    )
    record = fits_schema(event.value)
    assert (record["sku"], record["product_type"], record["list_price"]) == (
        "sku-00007",
        "goods",
        Decimal("12.50"),
    )
    assert record["currency"] == "EUR"
    assert record["source_tx_id"] == 771


def test_an_unmapped_optional_value_is_quarantined() -> None:
    raw = decoded(PRODUCT_PRODUCT, "u", after=PRODUCT | {"type": "kit"})
    result = ok(to_canonical(FLOWS["erp_product_product__product"], raw))
    assert result.value.record["quarantined_fields"] == ["product_type"]
    (quarantine,) = result.quarantined
    assert (quarantine.reason, quarantine.field) == (Reason.UNMAPPED_VALUE, "product_type")


def test_an_unmapped_required_value_fails() -> None:
    raw = decoded(SALE_ORDER, "u", after=ORDER | {"state": "weird"})
    result = failed(to_canonical(FLOWS["erp_sale_order__sales_order"], raw))
    assert (result.reason, result.field) == (Reason.UNMAPPED_VALUE, "state")


CRM_PRODUCT = {
    "id": "0b9c1a2d-0000-4000-8000-000000000007",
    "name": "Steel Hex Bolt M8",
    "part_number": "SKU-00007",
    "category": "Fasteners",
    "type": "Good",
    "price": Decimal("12.50"),
    "cost": Decimal("7.10"),
    "currency_id": "eur",
    "deleted": False,
}


@pytest.mark.parametrize(
    ("changes", "known", "reason", "field"),
    [
        ({}, {"SKU-00007"}, None, None),
        ({}, None, None, None),
        # The catalogue is matched without regard to case or spacing; the SKU stays as typed.
        ({"part_number": " sku-00007 "}, {"SKU-00007"}, None, None),
        ({"part_number": "OLD-1234"}, {"SKU-00007"}, Reason.UNKNOWN_SKU, "sku"),
        ({"part_number": None}, None, Reason.MISSING_REQUIRED, "sku"),
    ],
)
def test_crm_products_are_checked_against_the_catalogue(
    changes: dict[str, Any], known: set[str] | None, reason: Reason | None, field: str | None
) -> None:
    raw = decoded(AOS_PRODUCTS, "u", after=CRM_PRODUCT | changes)
    result = to_canonical(FLOWS["crm_aos_products__product"], raw, known_skus=known)
    if reason is None:
        record = fits_schema(ok(result).value)
        assert record["currency"] == "EUR"
        assert record["sku"] == str((CRM_PRODUCT | changes)["part_number"]).strip()
    else:
        assert (failed(result).reason, failed(result).field) == (reason, field)


def test_a_negative_crm_price_is_quarantined() -> None:
    raw = decoded(AOS_PRODUCTS, "u", after=CRM_PRODUCT | {"price": Decimal("-1.00")})
    result = ok(to_canonical(FLOWS["crm_aos_products__product"], raw))
    assert result.value.record["list_price"] is None
    assert result.value.record["quarantined_fields"] == ["list_price"]
    assert result.quarantined[0].reason is Reason.NEGATIVE_VALUE


# ------------------------------------------------------------------ sales orders

ORDER = {
    "id": 51,
    "name": "S00051",
    "partner_id": 42,
    "state": "sale",
    "date_order": datetime(2024, 6, 1, 9, 30, tzinfo=UTC),
    "validity_date": date(2024, 7, 1),
    "amount_untaxed": Decimal("100.00"),
    "amount_tax": Decimal("19.00"),
    "amount_total": Decimal("119.00"),
    "currency": "EUR",
    "client_order_ref": "PO-004711",
    "crm_quote_id": None,
}


def order_line(line_id: int, sequence: int, product_id: int, qty: str) -> dict[str, Any]:
    return {
        "id": line_id,
        "order_id": 51,
        "sequence": sequence,
        "product_id": product_id,
        "name": f"Product {product_id}",
        "product_uom_qty": Decimal(qty),
        "price_unit": Decimal("10.00"),
        "discount": Decimal("0.00"),
        "price_subtotal": Decimal(qty) * 10,
    }


def line_rows(*lines: dict[str, Any]) -> list[dict[str, Any]]:
    """Line rows as the order assembler holds them: the decoded ``after`` images."""
    return [decoded(SALE_ORDER_LINE, "c", after=line)["after"] for line in lines]


SKUS = {"erp_product_sku": {"7": "SKU-00007", "8": "SKU-00008"}}


def test_an_erp_order_with_its_lines() -> None:
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "42", ACCOUNT_ID)
    link(crosswalk, "product", "8", "crm-product-8")
    lines = line_rows(order_line(502, 20, 8, "1"), order_line(501, 10, 7, "2.5"))
    event = ok(
        to_canonical(
            FLOWS["erp_sale_order__sales_order"],
            decoded(SALE_ORDER, "u", after=ORDER),
            crosswalk=crosswalk,
            lookups=SKUS,
            lines=lines,
        )
    ).value
    record = fits_schema(event)
    assert (record["state"], record["customer_erp_id"], record["customer_crm_id"]) == (
        "confirmed",
        "42",
        ACCOUNT_ID,
    )
    assert record["date_order"] == datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
    assert record["validity_date"] == date(2024, 7, 1)
    assert [(line["erp_id"], line["sku"], line["quantity"]) for line in record["lines"]] == [
        ("501", "SKU-00007", Decimal("2.500")),
        ("502", "SKU-00008", Decimal("1.000")),
    ]
    assert record["lines"][1]["product_crm_id"] == "crm-product-8"
    assert line_parent(FLOWS["erp_sale_order__sales_order"], lines[0]) == "51"


def test_a_line_change_triggers_the_order_event() -> None:
    flow = FLOWS["erp_sale_order__sales_order"]
    header = decoded(SALE_ORDER, "u", after=ORDER, lsn=1000)
    trigger = decoded(SALE_ORDER_LINE, "u", after=order_line(501, 10, 7, "3"), lsn=2000)
    event = ok(
        to_canonical(
            flow,
            header,
            lookups=SKUS,
            lines=line_rows(order_line(501, 10, 7, "3")),
            trigger=trigger,
        )
    )
    record = event.value.record
    assert record["event_id"] == event_id("erp", 2000, "public", "sale_order_line", "501")
    assert (record["source_lsn"], record["version"]) == (2000, 2000)
    assert event.value.key == "erp:51"


@pytest.mark.parametrize(("header_tx", "changed"), [(770, []), (771, ["amount_total"])])
def test_an_order_sent_for_a_line_change_names_its_header_fields_only_from_that_transaction(
    header_tx: int, changed: list[str]
) -> None:
    """A line's transaction changed no header field unless the header changed in it too:
    an older header change is not sent again as changed (its refused owned fields would
    be audited and re-announced once more)."""
    flow = FLOWS["erp_sale_order__sales_order"]
    before = {**ORDER, "amount_total": Decimal("1.00")}
    header = decoded(SALE_ORDER, "u", after=ORDER, before=before, lsn=1000, tx_id=header_tx)
    trigger = decoded(SALE_ORDER_LINE, "d", before=order_line(502, 10, 7, "3"), lsn=2000)
    result = to_canonical(
        flow, header, lookups=SKUS, lines=line_rows(order_line(501, 10, 7, "3")), trigger=trigger
    )
    assert ok(result).value.record["changed_fields"] == changed


@pytest.mark.parametrize(
    ("line", "lookups", "reason", "field"),
    [
        (order_line(501, 10, 9, "1"), SKUS, Reason.UNRESOLVED_REFERENCE, "lines[0].sku"),
        (order_line(501, 10, 7, "-2"), SKUS, Reason.NEGATIVE_VALUE, "lines[0].quantity"),
        (order_line(501, 10, 7, "1"), None, Reason.UNRESOLVED_REFERENCE, "lines[0].sku"),
    ],
)
def test_a_bad_line_fails_the_order(
    line: dict[str, Any], lookups: Any, reason: Reason, field: str
) -> None:
    result = to_canonical(
        FLOWS["erp_sale_order__sales_order"],
        decoded(SALE_ORDER, "u", after=ORDER),
        lookups=lookups,
        lines=line_rows(line),
    )
    assert (failed(result).reason, failed(result).field) == (reason, field)


QUOTE = {
    "id": QUOTE_ID,
    "number": 1044,
    "account_id": ACCOUNT_ID,
    "stage": "Closed Accepted",
    "expiration": date(2024, 7, 15),
    "currency_id": "EUR",
    "subtotal_amount": Decimal("61.73"),
    "tax_amount": Decimal("11.73"),
    "total_amount": Decimal("73.46"),
    "erp_order_name": None,
    "deleted": False,
}


def quote_line(number: int, part: str, qty: str, *, deleted: bool = False) -> dict[str, Any]:
    row = {
        "id": f"00000000-0000-4000-8000-{number:012d}",
        "parent_id": QUOTE_ID,
        "number": number,
        "name": f"Part {part}",
        "part_number": part,
        "product_id": None,
        "product_qty": Decimal(qty),
        "product_list_price": Decimal("12.35"),
        "product_discount": Decimal("10.00"),
        "product_total_price": Decimal("61.73"),
        "deleted": deleted,
    }
    return decoded(AOS_PRODUCTS_QUOTES, "c", after=row)["after"]


def test_an_accepted_crm_quote_is_an_order() -> None:
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "42", ACCOUNT_ID)
    lines = [
        quote_line(2, "sku-00008", "1.2345"),
        quote_line(1, "SKU-00007", "5"),
        quote_line(3, "SKU-00009", "1", deleted=True),
    ]
    result = ok(
        to_canonical(
            FLOWS["crm_aos_quotes__sales_order"],
            decoded(AOS_QUOTES, "u", after=QUOTE),
            known_skus={"SKU-00007", "SKU-00008"},
            crosswalk=crosswalk,
            lines=lines,
        )
    )
    record = fits_schema(result.value)
    assert (record["state"], record["quote_number"], record["customer_erp_id"]) == (
        "confirmed",
        "1044",
        "42",
    )
    assert [(line["sku"], line["quantity"]) for line in record["lines"]] == [
        ("SKU-00007", Decimal("5.000")),
        ("sku-00008", Decimal("1.235")),  # as typed; rounded half-up to the canonical scale
    ]
    assert record["lines"][0]["crm_id"] == "00000000-0000-4000-8000-000000000001"
    rounding = [f for f in result.fixes if f.rule == "round"]
    assert [(f.field, f.before, f.after) for f in rounding] == [
        ("lines[1].quantity", Decimal("1.2345"), Decimal("1.235"))
    ]


def test_quotes_in_other_stages_are_skipped() -> None:
    raw = decoded(AOS_QUOTES, "u", after=QUOTE | {"stage": "Negotiation"})
    assert isinstance(to_canonical(FLOWS["crm_aos_quotes__sales_order"], raw), Skipped)


def test_an_unknown_sku_on_a_quote_line_fails_the_order() -> None:
    result = to_canonical(
        FLOWS["crm_aos_quotes__sales_order"],
        decoded(AOS_QUOTES, "u", after=QUOTE),
        known_skus={"SKU-00007"},
        lines=[quote_line(1, "SKU-00007", "1"), quote_line(2, "XK-123-A", "1")],
    )
    assert (failed(result).reason, failed(result).field) == (Reason.UNKNOWN_SKU, "lines[1].sku")


# ---------------------------------------------------------------------- invoices

MOVE = {
    "id": 31,
    "name": "INV/2024/00031",
    "move_type": "out_refund",
    "partner_id": 42,
    "invoice_origin": "S00051",
    "invoice_date": date(2024, 6, 3),
    "invoice_date_due": date(2024, 7, 3),
    "amount_untaxed": Decimal("100.00"),
    "amount_tax": Decimal("19.00"),
    "amount_total": Decimal("119.00"),
    "amount_residual": Decimal("19.00"),
    "currency": "EUR",
    "payment_state": "partial",
    "state": "posted",
}


def test_an_erp_credit_note() -> None:
    event = ok(
        to_canonical(FLOWS["erp_account_move__invoice"], decoded(ACCOUNT_MOVE, "c", after=MOVE))
    ).value
    record = fits_schema(event)
    assert (record["kind"], record["state"], record["payment_state"]) == (
        "credit_note",
        "posted",
        "partial",
    )
    assert (record["invoice_date"], record["amount_due"]) == (date(2024, 6, 3), Decimal("19.00"))


def test_vendor_bills_are_skipped() -> None:
    raw = decoded(ACCOUNT_MOVE, "c", after=MOVE | {"move_type": "in_invoice"})
    assert isinstance(to_canonical(FLOWS["erp_account_move__invoice"], raw), Skipped)


# ------------------------------------------------------------------------- stock


def quant_event(
    quant_id: int, product: int, location: int, qty: str, reserved: str = "0", lsn: int = 1
) -> dict[str, Any]:
    row = {
        "id": quant_id,
        "product_id": product,
        "location_id": location,
        "quantity": Decimal(qty),
        "reserved_quantity": Decimal(reserved),
    }
    return decoded(STOCK_QUANT, "u", after=row, lsn=lsn)


def test_quants_become_per_product_inventory_events() -> None:
    flow = FLOWS["erp_stock_quant__inventory"]
    crosswalk = new_crosswalk()
    link(crosswalk, "product", "7", "crm-product-7")
    state = inventory.InventoryState()
    events = []
    for raw in (quant_event(1, 7, 1, "10", "2", lsn=100), quant_event(2, 7, 3, "5", lsn=101)):
        change = ok(to_stock_change(flow, raw, lookups=SKUS)).value
        for totals in inventory.apply(state, change, version=raw["source"]["lsn"]):
            events.append(ok(inventory_event(flow, totals, raw, crosswalk=crosswalk)).value)
    record = fits_schema(events[-1])
    assert (record["erp_id"], record["crm_id"], record["sku"]) == (
        "7",
        "crm-product-7",
        "SKU-00007",
    )
    assert (record["on_hand"], record["reserved"], record["available"]) == (
        Decimal("15.000"),
        Decimal("2.000"),
        Decimal("13.000"),
    )
    assert record["locations"] == [
        {"location_id": "1", "on_hand": Decimal("10.000"), "reserved": Decimal("2.000")},
        {"location_id": "3", "on_hand": Decimal("5.000"), "reserved": Decimal("0.000")},
    ]
    assert (record["version"], record["source_lsn"]) == (101, 101)
    assert events[-1].key == "erp:7"


def test_a_deleted_quant_is_removed() -> None:
    flow = FLOWS["erp_stock_quant__inventory"]
    raw = decoded(STOCK_QUANT, "d", before={"id": 1})
    assert ok(to_stock_change(flow, raw)).value == inventory.QuantChange("1", None)


def test_negative_reservations_and_unresolved_quants_fail() -> None:
    flow = FLOWS["erp_stock_quant__inventory"]
    negative = failed(to_stock_change(flow, quant_event(1, 7, 1, "5", "-1"), lookups=SKUS))
    assert (negative.reason, negative.field) == (Reason.NEGATIVE_VALUE, "reserved")
    unknown = failed(to_stock_change(flow, quant_event(1, 99, 1, "5"), lookups=SKUS))
    assert (unknown.reason, unknown.field) == (Reason.UNRESOLVED_REFERENCE, "sku")


def test_oversold_stock_counts_and_is_flagged() -> None:
    # +10 in one location and -3 (oversold) in another: 7 on hand, never 10.
    flow = FLOWS["erp_stock_quant__inventory"]
    state = inventory.InventoryState()
    events = []
    for raw in (quant_event(1, 7, 1, "10", lsn=100), quant_event(2, 7, 3, "-3", "5", lsn=101)):
        change = ok(to_stock_change(flow, raw, lookups=SKUS)).value
        for totals in inventory.apply(state, change, version=raw["source"]["lsn"]):
            events.append(fits_schema(ok(inventory_event(flow, totals, raw)).value))
    first, last = events
    assert (first["on_hand"], first["available"], first["oversold"]) == (10, 10, False)
    assert (last["on_hand"], last["reserved"], last["available"]) == (7, 5, 2)
    assert last["oversold"] is False
    assert [loc["on_hand"] for loc in last["locations"]] == [10, -3]
    totals = inventory.StockTotals("7", "SKU-00007", Decimal(3), Decimal(5), Decimal(-2), (), 9)
    event = ok(inventory_event(flow, totals, quant_event(1, 7, 1, "3"))).value
    assert (fits_schema(event)["available"], event.record["oversold"]) == (-2, True)


def test_flows_are_used_with_the_function_of_their_grain() -> None:
    with pytest.raises(ValueError, match="use to_stock_change"):
        to_canonical(FLOWS["erp_stock_quant__inventory"], quant_event(1, 7, 1, "1"))
    with pytest.raises(ValueError, match="use to_canonical"):
        to_stock_change(FLOWS["erp_res_partner__customer"], partner_event())


# --------------------------------------------------------------------- evolution


def test_a_field_added_in_yaml_flows_through(tmp_path: Path) -> None:
    for item in (resources.files("schemas") / "mappings").iterdir():
        if item.name.endswith(".yaml"):
            (tmp_path / item.name).write_text(item.read_text(encoding="utf-8"), encoding="utf-8")
    partner_yaml = tmp_path / "erp_res_partner__customer.yaml"
    partner_yaml.write_text(
        partner_yaml.read_text(encoding="utf-8")
        + "  industry: {source: comment, cast: str, clean: trim, owner: crm}\n",
        encoding="utf-8",
    )
    flow: Flow = load_mappings(tmp_path)["erp_res_partner__customer"]
    shape = TableShape(
        "erp", "public", "res_partner", (*RES_PARTNER.columns, ColumnShape("comment", "text"))
    )
    raw = decoded(shape, "u", after=PARTNER | {"comment": " Machinery "})
    assert fits_schema(ok(to_canonical(flow, raw)).value)["industry"] == "Machinery"


# ------------------------------------------------------------------ changed fields


def _changed(event: dict[str, Any]) -> list[str] | None:
    result = ok(to_canonical(FLOWS["erp_res_partner__customer"], event))
    changed: list[str] | None = result.value.record["changed_fields"]
    return changed


def test_an_update_with_a_before_image_names_the_fields_it_changed() -> None:
    before = PARTNER | {"email": "old@nordwind.example.com"}
    event = decoded(RES_PARTNER, "u", before=before, after=PARTNER | {"city": "Potsdam"})
    assert _changed(event) == ["email", "city"]


def test_a_country_change_also_changes_the_phone_that_is_read_with_it() -> None:
    event = decoded(RES_PARTNER, "u", before=PARTNER, after=PARTNER | {"country_code": "AT"})
    assert _changed(event) == ["phone", "country_code"]


def test_a_field_whose_canonical_value_did_not_change_did_not_change() -> None:
    # An E.164 phone does not depend on the country; the same phone in another format
    # is the same phone.
    e164 = PARTNER | {"phone": "+49 30 6610918"}
    moved = decoded(RES_PARTNER, "u", before=e164, after=e164 | {"country_code": "AT"})
    assert _changed(moved) == ["country_code"]
    reformatted = decoded(RES_PARTNER, "u", before=e164, after=e164 | {"phone": "+49306610918"})
    assert _changed(reformatted) == ["customer_number", "is_company", "vat"]


def test_a_touch_re_asserts_the_fields_the_source_system_owns() -> None:
    touched = PARTNER | {"write_date": datetime(2024, 6, 2, 10, tzinfo=UTC)}
    event = decoded(RES_PARTNER, "u", before=PARTNER, after=touched)
    # Liveness is shared (the CRM deletes and undeletes): a touch does not re-assert it.
    assert _changed(event) == ["customer_number", "is_company", "vat"]


def test_inserts_and_snapshot_reads_change_every_mapped_field() -> None:
    everything = [
        "customer_number", "name", "is_company", "vat", "email", "phone",
        "website", "street", "city", "zip", "country_code", "active",
    ]  # fmt: skip
    assert _changed(decoded(RES_PARTNER, "c", after=PARTNER)) == everything
    assert _changed(decoded(RES_PARTNER, "r", after=PARTNER)) == everything


def test_an_empty_field_clears_the_other_side_only_when_an_operator_re_reads_the_row() -> None:
    # A first read or an insert wrote no VAT id: the other side's VAT id stays. A re-read
    # asked for by a repair asserts the row as it is, the empty VAT id too.
    no_vat = PARTNER | {"vat": None}
    assert "vat" not in (_changed(decoded(RES_PARTNER, "c", after=no_vat)) or ())
    first = decoded(RES_PARTNER, "r", after=no_vat, tx_id=None, snapshot="true")
    assert "vat" not in (_changed(first) or ())
    reread = decoded(RES_PARTNER, "r", after=no_vat, tx_id=None, snapshot="incremental")
    assert _changed(reread) == [
        "customer_number", "name", "is_company", "vat", "email", "phone",
        "website", "street", "city", "zip", "country_code", "active",
    ]  # fmt: skip


def test_an_update_without_a_before_image_leaves_the_changed_fields_unknown() -> None:
    assert _changed(partner_event(city="Potsdam")) is None


def _priors(event: dict[str, Any]) -> dict[str, str] | None:
    result = ok(to_canonical(FLOWS["erp_res_partner__customer"], event))
    priors: dict[str, str] | None = fits_schema(result.value)["prior_digests"]
    return priors


def test_an_update_names_the_value_each_changed_field_replaced_by_its_digest() -> None:
    # The old row mapped as the new one is: the old e-mail cleansed (trimmed, domain in
    # lower case).
    before = PARTNER | {"email": "  Old@Nordwind.example.com", "city": "Potsdam"}
    event = decoded(RES_PARTNER, "u", before=before, after=PARTNER)
    assert _changed(event) == ["email", "city"]
    assert _priors(event) == {
        "email": value_digest("Old@nordwind.example.com"),
        "city": value_digest("Potsdam"),
    }


def test_no_prior_digests_where_no_old_value_was_replaced() -> None:
    touched = PARTNER | {"write_date": datetime(2024, 6, 2, 10, tzinfo=UTC)}
    assert _priors(decoded(RES_PARTNER, "u", before=PARTNER, after=touched)) is None
    assert _priors(decoded(RES_PARTNER, "c", after=PARTNER)) is None
    assert _priors(decoded(RES_PARTNER, "r", after=PARTNER)) is None
    assert _priors(partner_event(city="Potsdam")) is None
