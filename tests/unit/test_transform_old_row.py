"""An update's old row is mapped with the new row's trace: exactly as it maps alone.

:func:`streams.transform.to_canonical` maps the old row of an update (for its
``changed_fields``) taking the new row's result for every field that reads the same
values; these tests hold that to mapping the old row on its own.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from erpcrm import dirty
from schemas.canonical import field_types
from streams.crosswalk import new_crosswalk
from streams.transform import (
    Trace,
    _blank,
    _map_row,
    _Refs,
    _same,
    changed_fields,
    to_canonical,
)
from streams.validation import Ok
from tests.unit.test_transform import (
    ACCOUNTS,
    FLOWS,
    PARTNER,
    RES_PARTNER,
    decoded,
    party_columns,
)

PARTNER_FLOW = FLOWS["erp_res_partner__customer"]
ACCOUNT_FLOW = FLOWS["crm_accounts__customer"]

ACCOUNT: dict[str, Any] = {
    "id": "3f0c6a1e-95c4-4b8e-a2a4-0f5a3c1d2b7e",
    "name": "Nordwind Trading GmbH",
    "account_number": "C00042",
    "vat": "DE136695976",
    "email": "info@nordwind.example.com",
    "phone_office": "+49 30 6610918",
    "billing_address_street": "Friedrichstraße 12",
    "billing_address_city": "Berlin",
    "billing_address_postalcode": "10117",
    "billing_address_country": "DE",
    "website": None,
    "industry": "Retail",
    "deleted": False,
}


def _party_row(rng: random.Random, kind: dirty.DirtyKind | None) -> dict[str, Any]:
    party = dirty.new_party(rng)
    return party_columns(party if kind is None else dirty.apply_party_dirt(rng, party, kind))


_KINDS = st.one_of(st.none(), st.sampled_from(list(dirty.DirtyKind)))


@settings(max_examples=150, deadline=None)
@given(
    st.randoms(use_true_random=False),
    _KINDS,
    _KINDS,
    st.sets(st.sampled_from(sorted(_party_row(random.Random(0), None))), max_size=9),
)
def test_an_old_row_maps_with_the_new_rows_trace_exactly_as_alone(
    rng: random.Random,
    new_kind: dirty.DirtyKind | None,
    old_kind: dirty.DirtyKind | None,
    moved: set[str],
) -> None:
    new_row = PARTNER | _party_row(rng, new_kind)
    other = _party_row(rng, old_kind)
    old_row = new_row | {column: other[column] for column in moved}
    refs = _Refs(None, new_crosswalk(), {})
    trace: Trace = []
    new = _map_row(PARTNER_FLOW.fields, new_row, refs, trace=trace)
    assert new == _map_row(PARTNER_FLOW.fields, new_row, refs)  # a trace changes nothing
    assert _map_row(PARTNER_FLOW.fields, old_row, refs, prior=trace) == _map_row(
        PARTNER_FLOW.fields, old_row, refs
    )
    if isinstance(new, Ok):
        event = decoded(RES_PARTNER, "u", before=old_row, after=new_row)
        result = to_canonical(PARTNER_FLOW, event)
        assert isinstance(result, Ok)
        expected = changed_fields(PARTNER_FLOW, event, new.value, refs)
        left_out = {q.field for q in new.quarantined if not q.kept}
        assert expected is not None
        assert result.value.record["changed_fields"] == [f for f in expected if f not in left_out]


def test_a_field_read_with_another_country_is_mapped_again() -> None:
    # The same national phone number, but the old row's country differs: the old phone
    # is another number, so it is no value of the new row's to take.
    new_row = ACCOUNT | {"phone_office": "030 6610918", "billing_address_country": "DE"}
    old_row = new_row | {"billing_address_country": "AT"}
    refs = _Refs(None, None, {})
    trace: Trace = []
    new = _map_row(ACCOUNT_FLOW.fields, new_row, refs, trace=trace)
    old = _map_row(ACCOUNT_FLOW.fields, old_row, refs, prior=trace)
    assert isinstance(new, Ok)
    assert isinstance(old, Ok)
    assert new.value["phone"] == "+49306610918"
    assert old.value["phone"] == "+43306610918"
    event = decoded(ACCOUNTS, "u", before=old_row, after=new_row)
    result = to_canonical(ACCOUNT_FLOW, event)
    assert isinstance(result, Ok)
    assert "phone" in result.value.record["changed_fields"]


def test_values_read_alike_are_the_same_type_and_digits() -> None:
    assert _same("a", "a")
    assert _same(None, None)
    assert _same(3, 3)
    assert _same(True, True)
    assert not _same(1, True)
    assert not _same(1, 1.0)
    assert not _same("1", 1)
    assert _same(Decimal("1.50"), Decimal("1.50"))
    assert not _same(Decimal("1.5"), Decimal("1.50"))  # equal, yet scaled differently
    assert not _same(Decimal("0"), Decimal("-0"))
    assert not _same(1.0, float("1"))  # other types (floats, times) are mapped again


def test_blank_records_share_no_list() -> None:
    # made from one template per schema: each record its own empty lists
    first = _blank(field_types("sales_order"))
    second = _blank(field_types("sales_order"))
    assert first == second
    assert first["lines"] == []
    assert first["lines"] is not second["lines"]
    first["lines"].append({"line_id": "1"})
    assert _blank(field_types("sales_order"))["lines"] == []
    assert list(first) == list(field_types("sales_order"))
