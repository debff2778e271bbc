"""Crosswalk links and customer matching both ways, with duplicates (streams/crosswalk.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.crosswalk import (
    BEING_CREATED,
    HELD,
    MATCH_RULES,
    NUMBERED,
    CrosswalkState,
    CustomerIndex,
    CustomerMatch,
    SuspectedDuplicate,
    claim_counterpart,
    counterpart_id,
    crm_id_for,
    erp_id_for,
    index_customer,
    index_keys,
    link,
    link_holder,
    match_creating,
    match_customer,
    match_keys,
    new_crosswalk,
    new_customer_index,
    normalise_customer_number,
    normalise_email,
    normalise_name,
    normalise_name_country,
    normalise_vat,
    other_system,
    remove_customer,
    resolve_customer,
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


def test_a_counterpart_held_by_another_live_record_is_never_taken() -> None:
    state = new_crosswalk()
    link(state, "customer", "42", "uuid-a")
    # Its own counterpart, or a free one: nobody holds it.
    assert link_holder(state, "customer", "erp", "42", "uuid-a") is None
    assert link_holder(state, "customer", "erp", "43", "uuid-b") is None
    # Another ERP customer naming the account 42 holds: 42 holds it, from either side.
    assert link_holder(state, "customer", "erp", "43", "uuid-a") == "42"
    assert link_holder(state, "customer", "crm", "uuid-b", "42") == "uuid-a"
    # A holder gone (deleted, archived: not live) gives it up; a live one keeps it.
    assert link_holder(state, "customer", "erp", "43", "uuid-a", live={"43"}) is None
    assert link_holder(state, "customer", "erp", "43", "uuid-a", live={"42", "43"}) == "42"
    assert link_holder(state, "product", "erp", "43", "uuid-a") is None


def test_a_claimed_counterpart_is_a_suspected_duplicate_with_its_evidence() -> None:
    state = new_crosswalk()
    link(state, "customer", "42", "uuid-a")
    claim = claim_counterpart(state, "customer", "erp", "43", "uuid-a", "erp_column")
    assert claim == SuspectedDuplicate("uuid-a", "erp_column=uuid-a")
    assert claim.rule == "erp_column"
    assert claim_counterpart(state, "customer", "erp", "42", "uuid-a", "erp_column") is None
    assert claim_counterpart(state, "customer", "erp", "43", "uuid-b", "erp_column") is None
    assert (
        claim_counterpart(state, "customer", "erp", "43", "uuid-a", "erp_column", live=()) is None
    )


@given(
    st.lists(
        st.tuples(st.sampled_from(("erp", "crm")), st.sampled_from("123"), st.sampled_from("abc")),
        max_size=30,
    )
)
def test_links_taken_only_when_free_stay_a_bijection_and_never_move(
    claims: list[tuple[str, str, str]],
) -> None:
    """Linking only what :func:`link_holder` allows never takes another record's link."""
    state: CrosswalkState = new_crosswalk()
    for system, erp_id, crm_id in claims:
        own, other = (erp_id, crm_id) if system == "erp" else (crm_id, erp_id)
        holder = link_holder(state, "customer", system, own, other)
        before = counterpart_id(state, "customer", other_system(system), other)
        if holder is None:
            link(state, "customer", erp_id, crm_id)
            assert counterpart_id(state, "customer", system, own) == other
        else:
            assert before == holder != own
            assert counterpart_id(state, "customer", other_system(system), other) == holder
        sides = state.get("customer", {"erp": {}, "crm": {}})
        assert {v: k for k, v in sides["erp"].items()} == sides["crm"]


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
        # Customer numbers compare without case or spacing (identifier_key).
        (" c 000 42 ", "C00042", "C00042", None),
        ("de 123.456-789", "DE123.456-789", "DE123456789", None),
        ("CHE-123.456.789 MWST", "CHE-123.456.789MWST", "CHE123456789", None),
        ("CHE-123.456.789 TVA", "CHE-123.456.789TVA", "CHE123456789", None),
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
    assert normalise_name(None) is None
    assert normalise_name_country(None, "DE") is None
    assert normalise_name_country("Acme", None) is None
    assert normalise_name_country("Acme", "  ") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Müller & Söhne", "MULLER SOHNE"),
        ("  MÜLLER  &  söhne ", "MULLER SOHNE"),
        ("Müller & Söhne GmbH", "MULLER SOHNE"),
        ("MUELLER & SOEHNE", "MUELLER SOEHNE"),  # a spelling, not an accent: no match
        ("Müller Söhne G.m.b.H.", "MULLER SOHNE"),
        ("Müller GmbH & Co. KG", "MULLER"),
        ("Straßenbau AG", "STRASSENBAU"),
        ("Café-Crème S.A.R.L.", "CAFE CREME"),
        ("O'Neil Ltd.", "ONEIL"),
        ("AG", "AG"),  # a legal form alone is the name
        ("Co-op Limited", "CO OP"),
        ("Ørsted", "ØRSTED"),
        ("  ", None),
        ("--", None),
    ],
)
def test_names_are_compared_without_case_accents_punctuation_or_legal_form(
    raw: str, expected: str | None
) -> None:
    assert normalise_name(raw) == expected


def test_match_keys() -> None:
    record = {
        "customer_number": "c1",
        "vat": "de 1",
        "email": "A@B.C",
        "name": "Müller & Söhne",
        "country_code": "DE",
        "phone": "x",
    }
    assert match_keys(record) == {
        "customer_number": "C1",
        "vat": "DE1",
        "email": "a@b.c",
        "name_country": "MULLER SOHNE|DE",
    }
    assert match_keys({"name": "Müller", "country_code": None}) == {}


def test_deleted_and_archived_records_are_not_indexed() -> None:
    record = {"op": "upsert", "vat": "DE1", "active": True}
    assert index_keys(record) == {"vat": "DE1"}
    assert index_keys(record | {"active": None}) == {"vat": "DE1"}  # CRM accounts
    assert index_keys(record | {"active": False}) == {}
    assert index_keys(record | {"op": "delete"}) == {}


def test_other_system() -> None:
    assert (other_system("erp"), other_system("crm")) == ("crm", "erp")
    with pytest.raises(ValueError, match="unknown system"):
        other_system("sap")


# ----------------------------------------------------------------------- matching

ERP_CUSTOMERS: dict[str, dict[str, Any]] = {
    "1": {"customer_number": "C00001", "vat": "DE111111111", "email": "info@one.example.com"},
    "2": {"customer_number": "C00002", "vat": "DE222222222", "email": "info@two.example.com"},
    "3": {"customer_number": "C00003", "vat": "FR33333333333", "email": "info@three.example.com"},
}


def built_index(records: dict[str, dict[str, Any]]) -> CustomerIndex:
    index = new_customer_index()
    for record_id, record in records.items():
        index_customer(index, record_id, index_keys(record))
    return index


@pytest.fixture
def index() -> CustomerIndex:
    return built_index(ERP_CUSTOMERS)


def from_crm(index: CustomerIndex, account: dict[str, Any], **options: Any) -> Any:
    return match_customer(index, account, system="crm", **options)


@pytest.mark.parametrize(
    ("account", "erp_id", "rule", "key", "linked_to"),
    [
        # Each rule beats the ones after it, whatever they would say.
        (
            {"customer_number": "c00001", "vat": "DE222222222", "email": "info@three.example.com"},
            "1",
            "customer_number",
            "C00001",
            None,
        ),
        (
            {"vat": "de 222 222 222", "email": "info@three.example.com"},
            "2",
            "vat",
            "DE222222222",
            None,
        ),
        # An account carrying another customer number is another customer's: found by
        # the rule, but taken (never a link).
        ({"customer_number": "C99999", "vat": "DE222222222"}, "2", "vat", "DE222222222", NUMBERED),
        ({"email": "INFO@three.example.com"}, "3", "email", "info@three.example.com", None),
        (
            {"customer_number": "C99999", "vat": "XX1", "email": "INFO@Three.Example.com"},
            "3",
            "email",
            "info@three.example.com",
            NUMBERED,
        ),
    ],
)
def test_match_precedence(
    index: CustomerIndex,
    account: dict[str, Any],
    erp_id: str,
    rule: str,
    key: str,
    linked_to: str | None,
) -> None:
    assert from_crm(index, account) == CustomerMatch(erp_id, rule, (erp_id,), key, linked_to)


def test_a_record_carrying_another_customer_number_is_never_linked(
    index: CustomerIndex,
) -> None:
    # An ERP customer matched by e-mail with a free account that carries another
    # customer's number (an earlier pair's account, its customer not read yet): taken.
    crm = built_index({"uuid-1": {"customer_number": "C00001", "email": "info@copy.example.com"}})
    copy = {"customer_number": "C00009", "email": "INFO@copy.example.com"}
    args: dict[str, Any] = {"system": "erp", "record_id": "9", "crosswalk": new_crosswalk()}
    match = match_customer(crm, copy, **args)
    assert match is not None
    assert (match.other_id, match.rule, match.linked_to) == ("uuid-1", "email", NUMBERED)
    assert resolve_customer(crm, copy, **args) == SuspectedDuplicate(
        "uuid-1", "email=info@copy.example.com"
    )
    # A free account without a number is preferred; one with the same number is the
    # record's own (matched by the customer number first).
    index_customer(crm, "uuid-2", index_keys({"email": "info@copy.example.com"}))
    assert resolve_customer(crm, copy, **args) == CustomerMatch(
        "uuid-2", "email", ("uuid-2", "uuid-1"), "info@copy.example.com"
    )
    index_customer(crm, "uuid-9", index_keys({"customer_number": "c 00009"}))
    found = resolve_customer(crm, copy, **args)
    assert isinstance(found, CustomerMatch)
    assert (found.other_id, found.rule, found.linked_to) == ("uuid-9", "customer_number", None)
    # A record without a number (a new CRM account) is not told apart by numbers.
    assert match_customer(index, {"email": "INFO@three.example.com"}, system="crm") == (
        CustomerMatch("3", "email", ("3",), "info@three.example.com")
    )


def test_name_and_country_is_the_weakest_rule() -> None:
    index = built_index(
        {
            "1": {"name": "Müller & Söhne GmbH", "country_code": "DE"},
            "2": {"name": "Müller & Söhne", "country_code": "AT", "email": "a@b.example"},
        }
    )
    other_words = from_crm(index, {"name": "MULLER und SOHNE", "country_code": "DE"})
    assert other_words is None  # 'und' is a word
    found = from_crm(index, {"name": "müller  &  SÖHNE", "country_code": "DE"})
    assert found == CustomerMatch("1", "name_country", ("1",), "MULLER SOHNE|DE")
    assert found is not None
    assert found.evidence == "name_country=MULLER SOHNE|DE"
    by_email = from_crm(
        index, {"name": "Müller & Söhne", "country_code": "DE", "email": "A@B.example"}
    )
    assert by_email is not None
    assert (by_email.other_id, by_email.rule) == ("2", "email")


def test_no_match_is_none(index: CustomerIndex) -> None:
    assert from_crm(index, {"customer_number": "C99999", "email": "x@y.example"}) is None
    assert from_crm(index, {}) is None


def test_duplicates_are_narrowed_by_later_rules_then_reported(index: CustomerIndex) -> None:
    # The ERP holds a duplicate of customer 2: same VAT id and e-mail, other number.
    index_customer(
        index,
        "12",
        index_keys(
            {"customer_number": "C00012", "vat": "DE 222 222 222", "email": "info@two.example.com"}
        ),
    )
    index_customer(
        index,
        "10",
        index_keys(
            {"customer_number": "C00010", "vat": "DE222222222", "email": "other@two.example.com"}
        ),
    )
    narrowed = from_crm(index, {"vat": "DE222222222", "email": "other@two.example.com"})
    assert narrowed == CustomerMatch("10", "vat", ("10",), "DE222222222")
    ambiguous = from_crm(index, {"vat": "DE222222222", "email": "info@two.example.com"})
    assert ambiguous == CustomerMatch("2", "vat", ("2", "12"), "DE222222222")
    assert ambiguous is not None
    assert ambiguous.ambiguous


def test_the_crosswalk_wins_and_linked_records_are_found_as_duplicates(
    index: CustomerIndex,
) -> None:
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "3", "uuid-linked")
    assert from_crm(
        index, {"customer_number": "C00001"}, crosswalk=crosswalk, record_id="uuid-linked"
    ) == CustomerMatch("3", "crosswalk", ("3",))
    # Customer 3 is already someone's: a second account with its e-mail duplicates it.
    found = from_crm(
        index, {"email": "INFO@three.example.com"}, crosswalk=crosswalk, record_id="uuid-new"
    )
    assert found == CustomerMatch(
        "3", "email", ("3",), "info@three.example.com", linked_to="uuid-linked"
    )
    assert found is not None
    assert found.duplicate
    assert found.evidence == "email=info@three.example.com"
    # Without the crosswalk nobody is known to be linked.
    assert from_crm(index, {"email": "info@three.example.com"}) == CustomerMatch(
        "3", "email", ("3",), "info@three.example.com"
    )


def test_a_free_record_is_preferred_to_a_linked_one_the_rule_also_found(
    index: CustomerIndex,
) -> None:
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "2", "uuid-linked")
    index_customer(index, "12", index_keys({"vat": "DE222222222"}))
    found = from_crm(index, {"vat": "de222222222"}, crosswalk=crosswalk, record_id="uuid-new")
    assert found == CustomerMatch("12", "vat", ("12", "2"), "DE222222222")
    # ... but a stronger rule decides first: customer 2's number says it is customer 2.
    found = from_crm(
        index,
        {"customer_number": "C00002", "vat": "DE222222222"},
        crosswalk=crosswalk,
        record_id="uuid-new",
    )
    assert found is not None
    assert (found.other_id, found.rule, found.linked_to) == ("2", "customer_number", "uuid-linked")


def test_reindexing_drops_old_keys(index: CustomerIndex) -> None:
    index_customer(index, "1", index_keys({"customer_number": "C00001", "vat": "DE999999999"}))
    assert from_crm(index, {"vat": "DE111111111"}) is None
    assert from_crm(index, {"email": "info@one.example.com"}) is None
    assert from_crm(index, {"vat": "DE999999999"}) == CustomerMatch(
        "1", "vat", ("1",), "DE999999999"
    )
    remove_customer(index, "1")
    assert from_crm(index, {"customer_number": "C00001"}) is None
    remove_customer(index, "unknown")
    index_customer(index, "2", {})
    assert from_crm(index, {"vat": "DE222222222"}) is None
    assert index["keys"].keys() == {"3"}


# -------------------------------------------------------- resolving, both ways

ERP_LINKED = {
    "erp_id": "7",
    "customer_number": "C00007",
    "name": "Müller & Söhne GmbH",
    "vat": "FR 21 945 643 978",
    "email": "Einkauf@Mueller.example.com",
    "country_code": "DE",
}
CRM_LINKED = {
    "crm_id": "uuid-7",
    "customer_number": "C00007",
    "name": "Müller & Söhne GmbH",
    "vat": "FR21945643978",
    "email": "einkauf@mueller.example.com",
    "country_code": "DE",
}
DUPLICATE_BY = {
    "vat": ({"vat": "fr21 9456 43978"}, "vat=FR21945643978"),
    "email": ({"email": "EINKAUF@MUELLER.EXAMPLE.COM"}, "email=einkauf@mueller.example.com"),
    "name_country": (
        {"name": "MÜLLER & SOHNE", "country_code": "DE"},
        "name_country=MULLER SOHNE|DE",
    ),
}


@pytest.fixture
def linked_pair() -> tuple[dict[str, CustomerIndex], CrosswalkState]:
    indexes = {
        "erp": built_index({"7": ERP_LINKED}),
        "crm": built_index({"uuid-7": CRM_LINKED}),
    }
    crosswalk = new_crosswalk()
    link(crosswalk, "customer", "7", "uuid-7")
    return indexes, crosswalk


@pytest.mark.parametrize("rule", sorted(DUPLICATE_BY))
def test_a_crm_account_typed_again_duplicates_the_linked_erp_customer(
    linked_pair: tuple[dict[str, CustomerIndex], CrosswalkState], rule: str
) -> None:
    indexes, crosswalk = linked_pair
    record, evidence = DUPLICATE_BY[rule]
    found = resolve_customer(
        indexes["erp"],
        {"name": "Someone Else"} | record,
        system="crm",
        record_id="uuid-new",
        crosswalk=crosswalk,
    )
    assert found == SuspectedDuplicate("7", evidence)
    assert isinstance(found, SuspectedDuplicate)
    assert found.rule == rule


@pytest.mark.parametrize("rule", sorted(DUPLICATE_BY))
def test_an_erp_customer_typed_again_duplicates_the_linked_crm_account(
    linked_pair: tuple[dict[str, CustomerIndex], CrosswalkState], rule: str
) -> None:
    indexes, crosswalk = linked_pair
    record, evidence = DUPLICATE_BY[rule]
    found = resolve_customer(
        indexes["crm"],
        {"customer_number": "C00099", "name": "Someone Else"} | record,
        system="erp",
        record_id="99",
        crosswalk=crosswalk,
    )
    assert found == SuspectedDuplicate("uuid-7", evidence)


def test_a_free_match_links_both_ways() -> None:
    crosswalk = new_crosswalk()
    erp = built_index({"7": ERP_LINKED})
    crm = built_index({"uuid-7": CRM_LINKED})
    from_crm = resolve_customer(
        erp, CRM_LINKED, system="crm", record_id="uuid-7", crosswalk=crosswalk
    )
    assert from_crm == CustomerMatch("7", "customer_number", ("7",), "C00007")
    from_erp = resolve_customer(crm, ERP_LINKED, system="erp", record_id="7", crosswalk=crosswalk)
    assert from_erp == CustomerMatch("uuid-7", "customer_number", ("uuid-7",), "C00007")


@pytest.mark.parametrize("rule", sorted(DUPLICATE_BY))
def test_a_match_with_a_record_being_created_is_a_duplicate_of_it(rule: str) -> None:
    # ERP customer 7 went out as new: its account is on its way, so it is taken.
    erp = built_index({"7": ERP_LINKED})
    record, evidence = DUPLICATE_BY[rule]
    account = {"name": "Someone Else"} | record
    match = match_customer(
        erp, account, system="crm", record_id="uuid-new", crosswalk={}, creating={"7"}
    )
    assert match is not None
    assert (match.other_id, match.linked_to, match.duplicate) == ("7", BEING_CREATED, True)
    found = resolve_customer(
        erp,
        account,
        system="crm",
        record_id="uuid-new",
        crosswalk=new_crosswalk(),
        creating={"erp": {"7"}},
    )
    assert found == SuspectedDuplicate("7", evidence)


def test_the_counterpart_of_a_record_being_created_comes_back_by_customer_number() -> None:
    erp = built_index({"7": ERP_LINKED})
    found = resolve_customer(
        erp,
        CRM_LINKED,
        system="crm",
        record_id="uuid-7",
        crosswalk=new_crosswalk(),
        creating={"erp": {"7"}},
    )
    assert found == CustomerMatch("7", "customer_number", ("7",), "C00007")


@pytest.mark.parametrize("rule", sorted(DUPLICATE_BY))
def test_a_record_typed_twice_copies_the_first_one_being_created(rule: str) -> None:
    # Two ERP customers of one company, the first one's account not back yet.
    record, evidence = DUPLICATE_BY[rule]
    second = {"customer_number": "C00008", "name": "Someone Else"} | record
    erp = built_index({"7": ERP_LINKED, "8": second})
    crm = new_customer_index()
    args: dict[str, Any] = {"system": "erp", "record_id": "8", "crosswalk": new_crosswalk()}
    found = resolve_customer(crm, second, own_index=erp, creating={"erp": {"7"}}, **args)
    assert found == SuspectedDuplicate("erp:7", evidence)
    # Only records being created count, never the record itself; without the own
    # index nothing is matched there.
    assert match_creating(erp, second, record_id="8", creating={"8"}) is None
    assert resolve_customer(crm, second, own_index=erp, creating={}, **args) is None
    assert resolve_customer(crm, second, creating={"erp": {"7"}}, **args) is None


def test_a_held_record_is_taken_and_proposed_after_a_linked_one(
    linked_pair: tuple[dict[str, CustomerIndex], CrosswalkState],
) -> None:
    # CRM account uuid-8 copies the linked pair's VAT id and is held (not synced).
    indexes, crosswalk = linked_pair
    held_copy = {"crm_id": "uuid-8", "name": "Other", "vat": "FR21945643978"}
    index_customer(indexes["crm"], "uuid-8", index_keys(held_copy))
    erp_copy = {"customer_number": "C00009", "name": "Third", "vat": "fr 21945643978"}
    args: dict[str, Any] = {"system": "erp", "record_id": "9", "crosswalk": crosswalk}
    match = match_customer(indexes["crm"], erp_copy, held={"uuid-8"}, **args)
    assert match is not None
    assert (match.other_id, match.candidates, match.linked_to) == (
        "uuid-7",
        ("uuid-7", "uuid-8"),
        "7",
    )
    # Only the held one matches (its own e-mail): a duplicate of it, never a link.
    erp_copy = {"customer_number": "C00009", "name": "Third", "email": "x@held.example.com"}
    index_customer(
        indexes["crm"], "uuid-8", index_keys(held_copy | {"email": "x@held.example.com"})
    )
    match = match_customer(indexes["crm"], erp_copy, held={"uuid-8"}, **args)
    assert match is not None
    assert (match.other_id, match.linked_to) == ("uuid-8", HELD)
    found = resolve_customer(indexes["crm"], erp_copy, held={"crm": {"uuid-8"}}, **args)
    assert found == SuspectedDuplicate("uuid-8", "email=x@held.example.com")
    # Released by an operator, it comes back with the ERP's number: its counterpart.
    released = {"crm_id": "uuid-8", "customer_number": "C00008", "name": "Other"}
    index_customer(indexes["erp"], "8", {"customer_number": "C00008"})
    back = resolve_customer(
        indexes["erp"],
        released,
        system="crm",
        record_id="uuid-8",
        crosswalk=crosswalk,
        held={"erp": {"8"}},
    )
    assert back == CustomerMatch("8", "customer_number", ("8",), "C00008")


def test_the_own_link_is_never_a_duplicate(
    linked_pair: tuple[dict[str, CustomerIndex], CrosswalkState],
) -> None:
    indexes, crosswalk = linked_pair
    for system, record_id, record, other in (
        ("erp", "7", ERP_LINKED, "uuid-7"),
        ("crm", "uuid-7", CRM_LINKED, "7"),
    ):
        found = resolve_customer(
            indexes[other_system(system)],
            record,
            system=system,
            record_id=record_id,
            crosswalk=crosswalk,
            flagged=SuspectedDuplicate(other, "vat=FR21945643978"),
        )
        assert found == CustomerMatch(other, "crosswalk", (other,))


def test_a_flag_stays_until_the_record_is_linked(
    linked_pair: tuple[dict[str, CustomerIndex], CrosswalkState],
) -> None:
    indexes, crosswalk = linked_pair
    flag = SuspectedDuplicate("7", "vat=FR21945643978")
    account = {"name": "Other Name", "vat": "DE1"}  # re-typed: nothing matches any more
    kept = resolve_customer(
        indexes["erp"], account, system="crm", record_id="uuid-new", crosswalk=crosswalk
    )
    assert kept is None
    kept = resolve_customer(
        indexes["erp"],
        account,
        system="crm",
        record_id="uuid-new",
        crosswalk=crosswalk,
        flagged=flag,
    )
    assert kept == flag
    # Other evidence, even of another pair, does not change it.
    link(crosswalk, "customer", "8", "uuid-8")
    index_customer(indexes["erp"], "8", {"email": "einkauf@acht.example.com"})
    for email in ("einkauf@mueller.example.com", "einkauf@acht.example.com"):
        same = resolve_customer(
            indexes["erp"],
            {"email": email},
            system="crm",
            record_id="uuid-new",
            crosswalk=crosswalk,
            flagged=flag,
        )
        assert same == flag
    # A free record that matches ends it: the two are linked.
    index_customer(indexes["erp"], "9", {"email": "einkauf@neun.example.com"})
    free = resolve_customer(
        indexes["erp"],
        {"email": "einkauf@neun.example.com"},
        system="crm",
        record_id="uuid-new",
        crosswalk=crosswalk,
        flagged=flag,
    )
    assert free == CustomerMatch("9", "email", ("9",), "einkauf@neun.example.com")
    # Linked by an operator (the link moves to the new account): the link wins.
    link(crosswalk, "customer", "7", "uuid-new")
    linked = resolve_customer(
        indexes["erp"],
        account,
        system="crm",
        record_id="uuid-new",
        crosswalk=crosswalk,
        flagged=flag,
    )
    assert linked == CustomerMatch("7", "crosswalk", ("7",))


def test_archived_and_deleted_records_are_not_proposed(
    linked_pair: tuple[dict[str, CustomerIndex], CrosswalkState],
) -> None:
    indexes, crosswalk = linked_pair
    index_customer(indexes["erp"], "7", index_keys(ERP_LINKED | {"active": False}))
    index_customer(indexes["crm"], "uuid-7", index_keys(CRM_LINKED | {"op": "delete"}))
    for system, index in (("crm", indexes["erp"]), ("erp", indexes["crm"])):
        found = resolve_customer(
            index, {"vat": "FR21945643978"}, system=system, record_id="new", crosswalk=crosswalk
        )
        assert found is None


# ------------------------------------------------------------------- properties

_IDS = {"erp": [str(n) for n in range(1, 6)], "crm": [f"u{n}" for n in range(1, 6)]}
_VALUES = {
    "customer_number": st.sampled_from(["C1", "c1 ", "C2", None]),
    "vat": st.sampled_from(["DE1", "de 1", "DE2", None]),
    "email": st.sampled_from(["a@x.example", "A@X.example", "b@x.example", None]),
    "name": st.sampled_from(["Müller", "MULLER GmbH", "Acme", None]),
    "country_code": st.sampled_from(["DE", "AT", None]),
    "active": st.sampled_from([True, True, False]),
}
_RECORDS = st.fixed_dictionaries(_VALUES)


@st.composite
def _worlds(draw: st.DrawFn) -> tuple[dict[str, dict[str, dict[str, Any]]], CrosswalkState]:
    records = {
        system: draw(st.dictionaries(st.sampled_from(ids), _RECORDS, max_size=5))
        for system, ids in _IDS.items()
    }
    crosswalk = new_crosswalk()
    pairs = st.tuples(st.sampled_from(_IDS["erp"]), st.sampled_from(_IDS["crm"]))
    for erp_id, crm_id in draw(st.lists(pairs, max_size=5)):
        link(crosswalk, "customer", erp_id, crm_id)
    return records, crosswalk


@given(
    _worlds(),
    st.sampled_from(["erp", "crm"]),
    st.integers(0, 4),
    _RECORDS,
    st.booleans(),
)
def test_matching_never_links_to_a_linked_record_nor_flags_the_own_counterpart(
    world: tuple[dict[str, dict[str, dict[str, Any]]], CrosswalkState],
    system: str,
    which: int,
    record: dict[str, Any],
    was_flagged: bool,
) -> None:
    records, crosswalk = world
    other = other_system(system)
    index = built_index(records[other])
    record_id = _IDS[system][which]
    own_counterpart = counterpart_id(crosswalk, "customer", system, record_id)
    flagged = SuspectedDuplicate(_IDS[other][0], "vat=DE1") if was_flagged else None
    found = resolve_customer(
        index, record, system=system, record_id=record_id, crosswalk=crosswalk, flagged=flagged
    )
    if own_counterpart is not None:
        # a linked record keeps its link, whatever it matches
        assert found == CustomerMatch(own_counterpart, "crosswalk", (own_counterpart,))
        return
    if isinstance(found, CustomerMatch):
        # a proposed link is free: linked to nobody (the record itself is unlinked)
        assert found.rule in MATCH_RULES
        assert counterpart_id(crosswalk, "customer", other, found.other_id) is None
        assert records[other][found.other_id].get("active") is not False
        assert found.other_id in found.candidates
        # ... and carries no other customer number than the record's
        numbers = {
            match_keys(r).get("customer_number") for r in (record, records[other][found.other_id])
        }
        assert len(numbers - {None}) <= 1
    elif isinstance(found, SuspectedDuplicate) and found != flagged:
        # a duplicate is of a record linked to another one, or carrying another customer
        # number, with the evidence that matched
        holder = counterpart_id(crosswalk, "customer", other, found.of)
        theirs = match_keys(records[other][found.of]).get("customer_number")
        mine = match_keys(record).get("customer_number")
        assert holder is not None or (None not in (theirs, mine) and theirs != mine)
        assert holder != record_id
        rule, _, key = found.evidence.partition("=")
        assert match_keys(records[other][found.of])[rule] == key == match_keys(record)[rule]
        # found by the strongest rule that found anyone
        stronger = MATCH_RULES[: MATCH_RULES.index(rule)]
        own_keys = match_keys(record)
        assert not any(
            own_keys.get(r) is not None and index_keys(candidate).get(r) == own_keys[r]
            for r in stronger
            for candidate in records[other].values()
        )
    elif found is None:
        # nothing live of the other side shares any key with the record
        keys = match_keys(record).items()
        assert not any(
            keys & index_keys(candidate).items() for candidate in records[other].values()
        )


@given(_worlds(), st.sampled_from(["erp", "crm"]), st.integers(0, 4), _RECORDS)
def test_matching_with_the_keys_worked_out_already_decides_the_same(
    world: tuple[dict[str, dict[str, dict[str, Any]]], CrosswalkState],
    system: str,
    which: int,
    record: dict[str, Any],
) -> None:
    records, crosswalk = world
    other = other_system(system)
    arguments: dict[str, Any] = {
        "system": system,
        "record_id": _IDS[system][which],
        "crosswalk": crosswalk,
        "own_index": built_index(records[system]),
        "creating": {system: set(_IDS[system][:2]), other: {_IDS[other][1]}},
        "held": {other: {_IDS[other][2]}},
    }
    index = built_index(records[other])
    keys = match_keys(record)
    assert resolve_customer(index, record, keys=keys, **arguments) == resolve_customer(
        index, record, **arguments
    )
    assert index_keys(record, keys) == index_keys(record)
