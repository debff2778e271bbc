"""Rows of both systems read through the mappings, as ``erpcrm reconcile`` reads them."""

from __future__ import annotations

import uuid
from typing import Any

from erpcrm.reconcile import WRITTEN, Reconciler
from streams.crosswalk import new_crosswalk

ACCOUNT = uuid.UUID(int=5)


def partner(**changes: Any) -> dict[str, Any]:
    row = {
        "id": 42,
        "name": "  Nordwind Trading GmbH ",
        "ref": "C00042",
        "parent_id": None,
        "is_company": True,
        "vat": "de123456788",
        "email": "Info@Nordwind.example.com",
        "phone": "030 6610918",
        "website": None,
        "street": "Friedrichstrasse 12",
        "city": "Berlin",
        "zip": "10117",
        "country_code": "DE",
        "active": True,
        "crm_account_id": ACCOUNT,
        WRITTEN: 1000,
    }
    return row | changes


def account(**changes: Any) -> dict[str, Any]:
    row = {
        "id": ACCOUNT,
        "name": "Nordwind Trading GmbH",
        "account_number": "C00042",
        "vat": "DE123456788",
        "email": "info@nordwind.example.com",
        "phone_office": "+49306610918",
        "website": None,
        "billing_address_street": "Friedrichstrasse 12",
        "billing_address_city": "Berlin",
        "billing_address_postalcode": "10117",
        "billing_address_country": "Germany",
        "industry": "Wholesale",
        "deleted": False,
        WRITTEN: 2000,
    }
    return row | changes


def run(erp: list[dict[str, Any]], crm: list[dict[str, Any]]) -> Any:
    tables = {("erp", "res_partner"): erp, ("crm", "accounts"): crm}
    return Reconciler("", "").compare_entity(
        "customer", lambda system, _schema, table: tables[(system, table)], new_crosswalk(), {}
    )


def test_values_are_compared_after_the_streams_cleansing() -> None:
    # Padding, case, a national phone and a country name mean the same once cleansed.
    report = run([partner()], [account()])
    assert (report.in_sync, report.drift) == (1, 0)
    assert report.links == (("42", str(ACCOUNT)),)


def test_a_difference_names_both_cleansed_values_and_the_owner() -> None:
    report = run([partner()], [account(vat="XX 000", billing_address_city="Potsdam")])
    (pair,) = report.differing
    found = {(d.field, d.erp_value, d.crm_value, d.owner, d.reread) for d in pair.differences}
    assert found == {
        ("vat", "DE123456788", "XX000", "erp", "erp"),
        ("city", "Berlin", "Potsdam", "shared", "crm"),
    }


def test_contact_persons_and_archived_partners_are_not_missing_customers() -> None:
    person = partner(id=43, ref=None, parent_id=42, crm_account_id=None, name="Ada")
    archived = partner(id=44, ref="C00044", active=False, crm_account_id=None)
    report = run([partner(), person, archived], [account()])
    assert report.drift == 0
    # a live partner nobody has in the CRM is missing there, with its table and id
    lone = partner(id=45, ref="C00045", crm_account_id=None, vat=None)
    (missing,) = run([partner(), lone], [account()]).missing
    assert (missing.record.table, missing.record.id, missing.missing_in) == (
        "public.res_partner",
        "45",
        "crm",
    )
    assert missing.record.written_ms == 1000
