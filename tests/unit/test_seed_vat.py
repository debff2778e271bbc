"""The demo seed's VAT ids (``deploy/sql/seed_vat.sql``) pass the data-quality stage.

The ERP and CRM seeds read their customers' VAT ids from one table; every id there must
be valid for its customer's country as python-stdnum checks it, or the first sync of a
fresh stack quarantines it. Read from the SQL text: no database needed.
"""

from __future__ import annotations

import re
from pathlib import Path

from stdnum import get_cc_module

from streams.cleansing import clean_vat
from streams.validation import Ok

SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql"
SEED_ROW = re.compile(r"\((\d+), '([^']+)'\)")
COUNTRY_ROW = re.compile(r"^\s*\((\d), '([A-Z]{2})',", re.MULTILINE)
CUSTOMERS = range(1, 301)
"""The ERP seed's customers C00001..C00300 (the CRM links the first 170)."""


def seed_vats() -> dict[int, str]:
    """Customer number (as an int) -> VAT id, as ``seed_vat.sql`` inserts them."""
    text = (SQL / "seed_vat.sql").read_text()
    rows = [(int(i), vat) for i, vat in SEED_ROW.findall(text.split("VALUES", 1)[1])]
    assert len(rows) == len({i for i, _ in rows}), "a customer listed twice"
    return dict(rows)


def seed_countries() -> dict[int, str]:
    """``i % 10`` -> ISO country, from the ERP seed's ``seed_country`` table."""
    text = (SQL / "erp.sql").read_text()
    block = text.split("INSERT INTO seed_country VALUES", 1)[1].split(";", 1)[0]
    return {int(idx): code for idx, code in COUNTRY_ROW.findall(block)}


def test_every_seed_vat_is_valid_for_its_country() -> None:
    countries = seed_countries()
    invalid = []
    for customer, vat in seed_vats().items():
        country = countries[customer % 10]
        cleaned = clean_vat(vat, country)
        by_stdnum = get_cc_module(country.lower(), "vat").is_valid(vat)
        if not (isinstance(cleaned, Ok) and by_stdnum):
            invalid.append((customer, country, vat, cleaned))
    assert invalid == []


def test_seed_vats_belong_to_the_companies_outside_the_us() -> None:
    countries = seed_countries()
    vats = seed_vats()
    # The ERP seed: every ninth customer (i % 9 = 4) is an individual, without a VAT id.
    companies = {i for i in CUSTOMERS if i % 9 != 4 and countries[i % 10] != "US"}
    assert set(vats) == companies
    wrong_prefix = {i: vat for i, vat in vats.items() if not vat.startswith(countries[i % 10])}
    assert wrong_prefix == {}


def test_seed_vats_are_distinct_once_compacted() -> None:
    # Two customers sharing a VAT id would be held as suspected duplicates.
    compact = [re.sub(r"[^0-9A-Z]", "", vat) for vat in seed_vats().values()]
    assert len(set(compact)) == len(compact)
