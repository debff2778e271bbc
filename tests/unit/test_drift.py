"""Drift between ERP and CRM records: links, missing records, differences, duplicates."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from erpcrm.drift import Direction, Record, compare, rereads, same_value, target_fields
from schemas.mapping import load_mappings, ownership
from sinks.targets import Direction as Way
from sinks.targets import build_tables, deterministic_id

FLOWS = load_mappings()
TABLES = build_tables(FLOWS)
OWNERS = ownership(FLOWS, "customer")
ACCOUNTS = TABLES[(Way.ERP_TO_CRM, "customer")]
PARTNERS = TABLES[(Way.CRM_TO_ERP, "customer")]
AVAILABILITY = TABLES[(Way.ERP_TO_CRM, "inventory")]
CRM_FLOW = FLOWS["crm_accounts__customer"]
ERP_FIELDS = frozenset(f.target for f in FLOWS["erp_res_partner__customer"].fields)
CRM_FIELDS = frozenset(f.target for f in CRM_FLOW.fields)

ACCOUNT_ID = str(uuid.UUID(int=1))


def customer(**changes: Any) -> dict[str, Any]:
    base = {
        "source_system": "erp",
        "op": "upsert",
        "customer_number": "C00042",
        "name": "Nordwind Trading GmbH",
        "vat": "DE123456789",
        "email": "info@nordwind.example.com",
        "phone": "+49306610918",
        "website": None,
        "street": "Friedrichstrasse 12",
        "city": "Berlin",
        "zip": "10117",
        "country_code": "DE",
        "is_company": True,
        "active": True,
    }
    return base | changes


def erp(record: dict[str, Any], *, id_: str = "42", written: int = 1000, **kw: Any) -> Record:
    columns = {
        "id": int(id_),
        "crm_account_id": record.get("crm_id"),
        "ref": record.get("customer_number"),
    }
    return Record(
        "erp",
        id_,
        "public.res_partner",
        record | {"erp_id": id_},
        columns=columns,
        written_ms=written,
        **kw,
    )


def crm(record: dict[str, Any], *, id_: str = ACCOUNT_ID, written: int = 1000, **kw: Any) -> Record:
    fields = record | {"source_system": "crm", "crm_id": id_}
    columns = {"id": uuid.UUID(id_), "account_number": record.get("customer_number")}
    return Record("crm", id_, "public.accounts", fields, columns=columns, written_ms=written, **kw)


def run(erps: list[Record], crms: list[Record], since_ms: int | None = None) -> Any:
    return compare(
        "customer",
        [
            Direction(ACCOUNTS, erps, crms, provided=ERP_FIELDS),
            Direction(PARTNERS, crms, erps, provided=CRM_FIELDS),
        ],
        OWNERS,
        since_ms=since_ms,
    )


def test_a_linked_pair_with_equal_values_is_in_sync() -> None:
    report = run([erp(customer(crm_id=ACCOUNT_ID))], [crm(customer())])
    assert (report.in_sync, report.drift) == (1, 0)
    assert report.links == (("42", ACCOUNT_ID),)


def test_an_owned_field_differs_and_the_owner_is_reread_even_if_written_earlier() -> None:
    report = run(
        [erp(customer(crm_id=ACCOUNT_ID), written=1000)],
        [crm(customer(vat="DE999999999"), written=5000)],
    )
    (pair,) = report.differing
    (difference,) = pair.differences
    assert (difference.field, difference.erp_value, difference.crm_value) == (
        "vat",
        "DE123456789",
        "DE999999999",
    )
    assert (difference.owner, difference.reread) == ("erp", "erp")
    assert [r.system for r in report.reread()] == ["erp"]


def test_a_shared_field_goes_to_the_later_write_and_appears_once() -> None:
    report = run(
        [erp(customer(crm_id=ACCOUNT_ID), written=1000)],
        [crm(customer(city="Potsdam"), written=2000)],
    )
    (pair,) = report.differing
    assert [(d.field, d.owner, d.reread) for d in pair.differences] == [("city", "shared", "crm")]
    tie = run(
        [erp(customer(crm_id=ACCOUNT_ID), written=2000)],
        [crm(customer(city="Potsdam"), written=2000)],
    )
    assert tie.differing[0].differences[0].reread == "erp"


def test_values_compare_by_meaning() -> None:
    assert same_value(Decimal("2.50"), Decimal("2.5"))
    assert same_value(Decimal("3"), 3)
    assert same_value(None, "  ")
    assert same_value(uuid.UUID(int=7), str(uuid.UUID(int=7)))
    assert not same_value(None, "x")
    assert not same_value(True, "true")
    assert not same_value("Berlin", "berlin")


def test_records_are_found_the_way_the_sink_finds_them() -> None:
    # No crosswalk id on the ERP row: the account the CRM sink created for it ...
    created = deterministic_id("customer", "erp:42")
    report = run([erp(customer())], [crm(customer(), id_=created)])
    assert (report.in_sync, report.drift) == (1, 0)
    # ... or the account with its customer number.
    by_number = run([erp(customer())], [crm(customer())])
    assert by_number.links == (("42", ACCOUNT_ID),)


def test_missing_records_are_reread_from_the_side_that_has_them() -> None:
    report = run([erp(customer(customer_number="C00043"), id_="43")], [crm(customer())])
    found = {(m.record.system, m.missing_in) for m in report.missing}
    assert found == {("erp", "crm"), ("crm", "erp")}
    assert all(m.repairable for m in report.missing)
    assert {r.key for r in report.reread()} == {"erp:43", f"crm:{ACCOUNT_ID}"}


def test_deleted_on_one_side_only_differs_in_live_and_deleted_on_both_is_in_sync() -> None:
    archived = erp(customer(crm_id=ACCOUNT_ID, active=False), live=False, written=3000)
    report = run([archived], [crm(customer())])
    (pair,) = report.differing
    assert [(d.field, d.erp_value, d.crm_value, d.reread) for d in pair.differences] == [
        ("live", False, True, "erp")
    ]
    both = run([archived], [crm(customer(), live=False)])
    assert (both.in_sync, both.drift) == (1, 0)
    # a dead record nobody has on the other side is not missing
    assert run([archived], []).drift == 0


def test_two_records_linked_to_one_are_duplicates() -> None:
    first = erp(customer(crm_id=ACCOUNT_ID), id_="42")
    second = erp(customer(crm_id=ACCOUNT_ID, customer_number="C00044"), id_="44")
    report = run([first, second], [crm(customer())])
    (duplicate,) = report.duplicates
    assert (duplicate.system, duplicate.ids, duplicate.other.id) == (
        "erp",
        ("42", "44"),
        ACCOUNT_ID,
    )


def test_since_keeps_only_drift_written_since() -> None:
    old = erp(customer(crm_id=ACCOUNT_ID), written=1000)
    report = run([old], [crm(customer(vat="X"), written=1500)], since_ms=2000)
    assert report.drift == 0
    assert report.links == (("42", ACCOUNT_ID),)
    assert run([old], [crm(customer(vat="X"), written=2500)], since_ms=2000).drift == 1


def test_a_target_field_the_target_flow_reads_is_compared_cleansed() -> None:
    row = {
        "id": uuid.UUID(ACCOUNT_ID),
        "name": "Nordwind",
        "phone_office": "030 6610918",
        "account_number": "c00042",
    }
    own = {"name": "Nordwind", "phone": "+49306610918", "customer_number": "C00042"}
    fields = target_fields(ACCOUNTS, row, own, CRM_FLOW)
    assert (fields["phone"], fields["customer_number"]) == ("+49306610918", "C00042")
    assert target_fields(ACCOUNTS, row, None, None)["phone"] == "030 6610918"


def test_a_row_only_in_the_target_of_a_one_way_table_is_reported_not_repairable() -> None:
    product = str(uuid.UUID(int=9))
    orphan = Record(
        "crm",
        product,
        "public.product_availability",
        {"crm_id": product, "sku": "SKU-1", "on_hand": Decimal(3)},
        columns={"product_id": uuid.UUID(product), "part_number": "SKU-1"},
        rereadable=False,
    )
    report = compare(
        "inventory",
        [Direction(AVAILABILITY, [], [orphan], one_way=True)],
        ownership(FLOWS, "inventory"),
    )
    (missing,) = report.missing
    assert (missing.missing_in, missing.repairable) == ("erp", False)
    assert report.reread() == ()


def test_rereads_group_the_keys_per_table() -> None:
    first = erp(customer(crm_id=ACCOUNT_ID, vat="DE1"), id_="42")
    other = str(uuid.UUID(int=2))
    second = erp(customer(crm_id=other, customer_number="C00044"), id_="44")
    report = run(
        [first, second], [crm(customer()), crm(customer(city="Bonn"), id_=other, written=9)]
    )
    assert [r.as_json() for r in rereads([report])] == [
        {"system": "erp", "table": "public.res_partner", "key_column": "id", "keys": ["42", "44"]}
    ]
