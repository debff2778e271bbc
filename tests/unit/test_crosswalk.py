"""Crosswalk links and CRM-account-to-ERP-customer matching (streams/crosswalk.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.crosswalk import (
    CrosswalkState,
    CustomerMatch,
    counterpart_id,
    crm_id_for,
    erp_id_for,
    index_customer,
    link,
    match_customer,
    match_keys,
    new_crosswalk,
    new_customer_index,
    normalise_customer_number,
    normalise_email,
    normalise_vat,
    remove_customer,
    unlink,
)

# -------------------------------------------------------------------------- links


def test_link_and_look_up_both_ways() -> None:
    state = new_crosswalk()
    assert link(state, "customer", "42", "uuid-a") == []
    assert crm_id_for(state, "customer", "42") == "uuid-a"
    assert erp_id_for(state, "customer", "uuid-a") == "42"
    assert counterpart_id(state, "customer", "erp", "42") == "uuid-a"
    assert counterpart_id(state, "customer", "crm", "uuid-a") == "42"
    assert crm_id_for(state, "product", "42") is None
    assert erp_id_for(state, "customer", "uuid-b") is None


def test_linking_is_idempotent_and_one_to_one() -> None:
    state = new_crosswalk()
    link(state, "customer", "42", "uuid-a")
    assert link(state, "customer", "42", "uuid-a") == []
    assert link(state, "customer", "42", "uuid-b") == [("42", "uuid-a")]
    assert erp_id_for(state, "customer", "uuid-a") is None
    link(state, "customer", "43", "uuid-c")
    assert link(state, "customer", "44", "uuid-c") == [("43", "uuid-c")]
    assert crm_id_for(state, "customer", "43") is None
    assert sorted(link(state, "customer", "42", "uuid-c")) == [("42", "uuid-b"), ("44", "uuid-c")]


def test_unlink() -> None:
    state = new_crosswalk()
    link(state, "customer", "42", "uuid-a")
    link(state, "customer", "43", "uuid-b")
    assert unlink(state, "customer", erp_id="42") == ("42", "uuid-a")
    assert unlink(state, "customer", crm_id="uuid-b") == ("43", "uuid-b")
    assert unlink(state, "customer", crm_id="uuid-b") is None
    assert unlink(state, "product", erp_id="1") is None
    assert state == {"customer": {"erp": {}, "crm": {}}}


@given(st.lists(st.tuples(st.sampled_from("12345"), st.sampled_from("abcde")), max_size=30))
def test_links_stay_a_bijection(pairs: list[tuple[str, str]]) -> None:
    state: CrosswalkState = new_crosswalk()
    for erp_id, crm_id in pairs:
        link(state, "customer", erp_id, crm_id)
    sides = state.get("customer", {"erp": {}, "crm": {}})
    assert {v: k for k, v in sides["erp"].items()} == sides["crm"]
    if pairs:
        erp_id, crm_id = pairs[-1]
        assert crm_id_for(state, "customer", erp_id) == crm_id  # the last link holds


# --------------------------------------------------------------------- match keys


@pytest.mark.parametrize(
    ("raw", "number", "vat", "email"),
    [
        (" c00042 ", "C00042", "C00042", None),
        ("de 123.456-789", "DE 123.456-789", "DE123456789", None),
        ("CHE-123.456.789 MWST", "CHE-123.456.789 MWST", "CHE123456789", None),
        ("CHE-123.456.789 TVA", "CHE-123.456.789 TVA", "CHE123456789", None),
        (
            " Info@Acme.Example.COM ",
            "INFO@ACME.EXAMPLE.COM",
            "INFOACMEEXAMPLECOM",
            "info@acme.example.com",
        ),
        ("", None, None, None),
        ("@acme", "@ACME", "ACME", None),
    ],
)
def test_normalisers(raw: str, number: str | None, vat: str | None, email: str | None) -> None:
    assert normalise_customer_number(raw) == number
    assert normalise_vat(raw) == vat
    assert normalise_email(raw) == email


def test_normalisers_take_none() -> None:
    assert normalise_customer_number(None) is None
    assert normalise_vat(None) is None
    assert normalise_email(None) is None


def test_match_keys() -> None:
    assert match_keys({"customer_number": "c1", "vat": "de 1", "email": "A@B.C", "name": "x"}) == {
        "customer_number": "C1",
        "vat": "DE1",
        "email": "a@b.c",
    }


# ----------------------------------------------------------------------- matching

ERP_CUSTOMERS: dict[str, dict[str, Any]] = {
    "1": {"customer_number": "C00001", "vat": "DE111111111", "email": "info@one.example.com"},
    "2": {"customer_number": "C00002", "vat": "DE222222222", "email": "info@two.example.com"},
    "3": {"customer_number": "C00003", "vat": "FR33333333333", "email": "info@three.example.com"},
}


@pytest.fixture
def index() -> Any:
    built = new_customer_index()
    for erp_id, record in ERP_CUSTOMERS.items():
        index_customer(built, erp_id, record)
    return built


@pytest.mark.parametrize(
    ("account", "erp_id", "rule"),
    [
        # Each rule beats the ones after it, whatever they would say.
        (
            {"customer_number": "c00001", "vat": "DE222222222", "email": "info@three.example.com"},
            "1",
            "customer_number",
        ),
        ({"vat": "de 222 222 222", "email": "info@three.example.com"}, "2", "vat"),
        ({"customer_number": "C99999", "vat": "DE222222222"}, "2", "vat"),
        ({"email": "INFO@three.example.com"}, "3", "email"),
        (
            {"customer_number": "C99999", "vat": "XX1", "email": "INFO@Three.Example.com"},
            "3",
            "email",
        ),
    ],
)
def test_match_precedence(index: Any, account: dict[str, Any], erp_id: str, rule: str) -> None:
    assert match_customer(index, account) == CustomerMatch(erp_id, rule, (erp_id,))


def test_no_match_is_none(index: Any) -> None:
    assert match_customer(index, {"customer_number": "C99999", "email": "x@y.example"}) is None
    assert match_customer(index, {}) is None


def test_duplicates_are_narrowed_by_later_rules_then_reported(index: Any) -> None:
    # The ERP holds a duplicate of customer 2: same VAT id and e-mail, other number.
    index_customer(
        index,
        "12",
        {"customer_number": "C00012", "vat": "DE 222 222 222", "email": "info@two.example.com"},
    )
    index_customer(
        index,
        "10",
        {"customer_number": "C00010", "vat": "DE222222222", "email": "other@two.example.com"},
    )
    narrowed = match_customer(index, {"vat": "DE222222222", "email": "other@two.example.com"})
    assert narrowed == CustomerMatch("10", "vat", ("10",))
    ambiguous = match_customer(index, {"vat": "DE222222222", "email": "info@two.example.com"})
    assert ambiguous == CustomerMatch("2", "vat", ("2", "12"))
    assert ambiguous is not None
    assert ambiguous.ambiguous


def test_the_crosswalk_wins_and_linked_customers_are_not_proposed(index: Any) -> None:
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "3", "uuid-linked")
    assert match_customer(
        index, {"customer_number": "C00001"}, crosswalk=crosswalk, crm_id="uuid-linked"
    ) == (CustomerMatch("3", "crosswalk", ("3",)))
    # Customer 3 is already someone's: a second account with its e-mail is new to the ERP.
    assert (
        match_customer(
            index, {"email": "info@three.example.com"}, crosswalk=crosswalk, crm_id="uuid-new"
        )
        is None
    )
    assert match_customer(index, {"email": "info@three.example.com"}) == CustomerMatch(
        "3", "email", ("3",)
    )


def test_reindexing_drops_old_keys(index: Any) -> None:
    index_customer(index, "1", {"customer_number": "C00001", "vat": "DE999999999"})
    assert match_customer(index, {"vat": "DE111111111"}) is None
    assert match_customer(index, {"email": "info@one.example.com"}) is None
    assert match_customer(index, {"vat": "DE999999999"}) == CustomerMatch("1", "vat", ("1",))
    remove_customer(index, "1")
    assert match_customer(index, {"customer_number": "C00001"}) is None
    remove_customer(index, "unknown")
