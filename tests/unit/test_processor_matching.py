"""Customer matching both ways through the streams processor, duplicates included.

A new record of either system is matched against the other system's customers: a free
match is linked, a match with a record that is already linked is a suspected duplicate
(``duplicate_of``/``duplicate_rule`` on the canonical event, counted, kept in state until
the record is linked). The sinks' own round trips (a partner created for an account
carries ``crm_account_id``, an account created for a customer carries its number) must
never look like duplicates.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from streams.crosswalk import MATCH_RULES, counterpart_id, other_system
from streams.metrics import StreamsMetrics
from streams.outcome import Count
from streams.processor import StreamProcessor
from streams.state import DictState, Write
from tests.unit.test_processor import (
    CRM_PRODUCT_ID,
    FLOWS,
    SERDE,
    Harness,
    _crm_product,
    account,
    decoded,
    encode_canonical,
    with_catalogue,
)
from tests.unit.test_transform import (
    ACCOUNT_ID,
    ACCOUNTS,
    PARTNER,
    PRODUCT,
    PRODUCT_PRODUCT,
    RES_PARTNER,
)

NEW_ID = "7c1d2e3f-0000-4000-8000-000000000099"
"""A CRM account typed in again."""


def linked_pair() -> Harness:
    """ERP customer 42 and CRM account ACCOUNT_ID, linked (the partner names the account)."""
    h = Harness()
    h.run(h.change(RES_PARTNER, "u", after=PARTNER | {"crm_account_id": ACCOUNT_ID}, lsn=100))
    h.run(h.change(ACCOUNTS, "u", after=account(account_number="C00042"), lsn=1000))
    return h


def customer(outcome: Any) -> dict[str, Any]:
    (record,) = decoded(outcome)
    return record


# The same company typed in again, one rule at a time (nothing else in common).
CRM_AGAIN = {
    "vat": ({"vat": "De-136 695.976"}, "vat=DE136695976"),
    "email": ({"email": "Info@Nordwind.Example.COM"}, "email=info@nordwind.example.com"),
    "name_country": (
        {"name": "NORDWIND TRADING", "billing_address_country": "DE"},
        "name_country=NORDWIND TRADING|DE",
    ),
}
ERP_AGAIN = {
    "vat": ({"vat": "de 136 695 976"}, "vat=DE136695976"),
    "email": ({"email": "EINKAUF@nordwind.example.com"}, "email=einkauf@nordwind.example.com"),
    "name_country": (
        {"name": "Nördwind Tráding", "country_code": "DE"},
        "name_country=NORDWIND TRADING|DE",
    ),
}
CRM_BLANK = {"name": "Somebody Else", "vat": None, "email": None, "phone_office": None}
ERP_BLANK = {"name": "Somebody Else", "vat": None, "email": None, "phone": None}


@pytest.mark.parametrize("rule", sorted(CRM_AGAIN))
def test_a_crm_account_typed_again_is_held_as_a_duplicate_of_the_linked_erp_customer(
    rule: str,
) -> None:
    h = linked_pair()
    changes, evidence = CRM_AGAIN[rule]
    outcome = h.run(
        h.change(ACCOUNTS, "c", after=account(id=NEW_ID, **CRM_BLANK | changes), lsn=2000)
    )
    record = customer(outcome)
    assert (record["erp_id"], record["duplicate_of"], record["duplicate_rule"]) == (
        None,
        "42",
        evidence,
    )
    assert outcome.tally.of(Count.DUPLICATES, "customer", "crm", rule) == 1
    assert outcome.tally.of(Count.LINKS, "customer", rule) == 0
    assert h.state.get("reference", f"dup|customer|crm|{NEW_ID}") == ["42", evidence]
    # the pair is untouched
    assert h.processor.reference.crosswalk["customer"]["erp"] == {"42": ACCOUNT_ID}


@pytest.mark.parametrize("rule", sorted(ERP_AGAIN))
def test_an_erp_customer_typed_again_is_held_as_a_duplicate_of_the_linked_crm_account(
    rule: str,
) -> None:
    h = linked_pair()
    changes, evidence = ERP_AGAIN[rule]
    row = PARTNER | {"id": 43, "ref": "C00043"} | ERP_BLANK | changes
    outcome = h.run(h.change(RES_PARTNER, "c", after=row, lsn=200))
    record = customer(outcome)
    assert (record["crm_id"], record["duplicate_of"], record["duplicate_rule"]) == (
        None,
        ACCOUNT_ID,
        evidence,
    )
    assert outcome.tally.of(Count.DUPLICATES, "customer", "erp", rule) == 1
    assert h.state.get("reference", "dup|customer|erp|43") == [ACCOUNT_ID, evidence]
    assert h.processor.reference.crosswalk["customer"]["erp"] == {"42": ACCOUNT_ID}


def test_a_match_with_a_customer_being_created_is_held_from_either_side() -> None:
    # CRM first: the account went out as new (the ERP sink makes its partner); the
    # same customer typed into the ERP meanwhile is held, not linked to the account.
    h = Harness()
    h.run(h.change(ACCOUNTS, "c", after=account(), lsn=1000))
    assert h.processor.reference.creating["crm"] == {ACCOUNT_ID}
    erp = h.run(h.change(RES_PARTNER, "u", after=PARTNER, lsn=100))
    assert (customer(erp)["crm_id"], customer(erp)["duplicate_of"]) == (None, ACCOUNT_ID)
    assert customer(erp)["duplicate_rule"] == "vat=DE136695976"
    assert erp.tally.of(Count.LINKS, "customer", "vat") == 0
    # ERP first: the account typed meanwhile is held as the customer's duplicate.
    h = Harness()
    h.run(h.change(RES_PARTNER, "u", after=PARTNER, lsn=100))
    crm = h.run(h.change(ACCOUNTS, "c", after=account(), lsn=1000))
    assert (customer(crm)["erp_id"], customer(crm)["duplicate_of"]) == (None, "42")
    assert crm.tally.of(Count.DUPLICATES, "customer", "crm", "vat") == 1
    # Neither held record is being created itself.
    assert h.processor.reference.creating == {"erp": {"42"}, "crm": set()}


def test_the_same_customer_typed_twice_copies_the_first_ones_counterpart() -> None:
    # Typed twice into the ERP before the first one's account came back: the second
    # is a duplicate of the account being made for the first, named by the first.
    h = Harness()
    h.run(h.change(RES_PARTNER, "c", after=PARTNER, lsn=100))
    row = PARTNER | {"id": 43, "ref": "C00043"} | ERP_BLANK | {"email": "INFO@Nordwind.example.com"}
    twice = h.run(h.change(RES_PARTNER, "c", after=row, lsn=101))
    assert (customer(twice)["crm_id"], customer(twice)["duplicate_of"]) == (None, "erp:42")
    assert customer(twice)["duplicate_rule"] == "email=info@nordwind.example.com"
    assert h.processor.reference.creating["erp"] == {"42"}
    # The same into the CRM: named by the first account (the ERP numbers its partner).
    h = Harness()
    h.run(h.change(ACCOUNTS, "c", after=account(), lsn=1000))
    again = account(id=NEW_ID, **CRM_BLANK | CRM_AGAIN["name_country"][0])
    twice = h.run(h.change(ACCOUNTS, "c", after=again, lsn=1001))
    assert (customer(twice)["erp_id"], customer(twice)["duplicate_of"]) == (
        None,
        f"crm:{ACCOUNT_ID}",
    )
    assert customer(twice)["duplicate_rule"] == "name_country=NORDWIND TRADING|DE"
    # The first one's partner comes back: linked, no longer being created; the held
    # copy keeps its flag.
    partner = PARTNER | {"crm_account_id": ACCOUNT_ID}
    back = h.run(h.change(RES_PARTNER, "u", after=partner, lsn=100))
    assert customer(back)["crm_id"] == ACCOUNT_ID
    assert h.processor.reference.creating == {"erp": set(), "crm": set()}
    assert h.processor.reference.duplicates["crm"][NEW_ID].of == f"crm:{ACCOUNT_ID}"


def test_an_account_created_in_the_crm_comes_back_from_the_erp_linked() -> None:
    h = linked_pair()
    zeta = {"name": "Zeta Foods", "vat": "FR40303265045", "email": "achats@zeta.example.com"}
    zeta_crm = zeta | {"billing_address_country": "FR", "phone_office": None}
    created = h.run(h.change(ACCOUNTS, "c", after=account(id=NEW_ID, **zeta_crm), lsn=2000))
    assert (customer(created)["erp_id"], customer(created)["duplicate_of"]) == (None, None)
    # The ERP sink creates partner 50 with the account's id; the ERP numbers it.
    partner = PARTNER | zeta | {"id": 50, "ref": "C00050", "country_code": "FR"}
    partner |= {"phone": None, "crm_account_id": NEW_ID}
    back = h.run(h.change(RES_PARTNER, "u", after=partner, lsn=300))
    assert (customer(back)["crm_id"], customer(back)["duplicate_of"]) == (NEW_ID, None)
    assert back.tally.of(Count.LINKS, "customer", "erp_column") == 1
    # ... and the CRM sink writes the number back (an echo); later edits stay linked.
    later = h.run(
        h.change(
            ACCOUNTS, "u", after=account(id=NEW_ID, account_number="C00050", **zeta_crm), lsn=2001
        )
    )
    assert (customer(later)["erp_id"], customer(later)["duplicate_of"]) == ("50", None)
    assert h.processor.reference.duplicates == {"erp": {}, "crm": {}}


def test_a_customer_created_in_the_erp_comes_back_from_the_crm_linked() -> None:
    h = linked_pair()
    zeta = {"name": "Zeta Foods SARL", "vat": "FR40303265045", "email": "achats@zeta.example.com"}
    partner = PARTNER | zeta | {"id": 60, "ref": "C00060", "country_code": "FR", "phone": None}
    created = h.run(h.change(RES_PARTNER, "c", after=partner, lsn=300))
    assert (customer(created)["crm_id"], customer(created)["duplicate_of"]) == (None, None)
    # The CRM sink creates the account (its own id) with the customer number, announced.
    sink_made = "0f0e0d0c-0000-5000-8000-000000000060"
    row = account(id=sink_made, account_number="C00060", billing_address_country="FR", **zeta)
    back = h.run(h.change(ACCOUNTS, "u", after=row | {"phone_office": None}, lsn=2000))
    assert (customer(back)["erp_id"], customer(back)["duplicate_of"]) == ("60", None)
    assert back.tally.of(Count.LINKS, "customer", "customer_number") == 1
    later = h.run(h.change(RES_PARTNER, "u", after=partner | {"city": "Lyon"}, lsn=301))
    assert (customer(later)["crm_id"], customer(later)["duplicate_of"]) == (sink_made, None)
    assert h.processor.reference.duplicates == {"erp": {}, "crm": {}}


def test_a_flag_stays_on_later_changes_until_the_record_is_linked() -> None:
    h = linked_pair()
    first = h.run(
        h.change(
            ACCOUNTS, "c", after=account(id=NEW_ID, **CRM_BLANK | {"vat": "DE136695976"}), lsn=2000
        )
    )
    assert customer(first)["duplicate_rule"] == "vat=DE136695976"
    # Edited so that nothing matches any more: still held, counted once.
    edited = h.run(h.change(ACCOUNTS, "u", after=account(id=NEW_ID, **CRM_BLANK), lsn=2001))
    assert (customer(edited)["duplicate_of"], customer(edited)["duplicate_rule"]) == (
        "42",
        "vat=DE136695976",
    )
    assert edited.tally.of(Count.DUPLICATES, "customer", "crm", "vat") == 0
    # A caught-up processor (restart) keeps it too.
    fresh = StreamProcessor(FLOWS, decode=SERDE.decode, encode=encode_canonical)
    fresh.load(h.state)
    assert fresh.reference.duplicates["crm"][NEW_ID].of == "42"
    # Released by an operator: the ERP sink creates partner 51 for the account.
    partner = PARTNER | ERP_BLANK | {"id": 51, "ref": "C00051", "crm_account_id": NEW_ID}
    released = h.run(h.change(RES_PARTNER, "u", after=partner, lsn=400))
    assert (customer(released)["crm_id"], customer(released)["duplicate_of"]) == (NEW_ID, None)
    assert h.state.get("reference", f"dup|customer|crm|{NEW_ID}") is None
    linked = h.run(h.change(ACCOUNTS, "u", after=account(id=NEW_ID, **CRM_BLANK), lsn=2002))
    assert (customer(linked)["erp_id"], customer(linked)["duplicate_of"]) == ("51", None)


def test_a_customer_naming_an_account_another_customer_holds_keeps_its_flag() -> None:
    h = linked_pair()
    row = PARTNER | {"id": 43, "ref": "C00043", "name": "Other"}
    h.run(h.change(RES_PARTNER, "c", after=row, lsn=200))
    flag = h.processor.reference.duplicates["erp"]["43"]
    assert flag.of == ACCOUNT_ID
    # Its link column names the account 42 holds (42 is live): never linked to it.
    named = h.run(h.change(RES_PARTNER, "u", after=row | {"crm_account_id": ACCOUNT_ID}, lsn=201))
    assert (customer(named)["crm_id"], customer(named)["duplicate_rule"]) == (
        None,
        flag.evidence,
    )
    assert named.tally.of(Count.LINK_CONFLICTS, "customer", "erp", "erp_column") == 1
    assert named.tally.of(Count.DUPLICATES, "customer", "erp", "erp_column") == 0
    assert h.processor.reference.crosswalk["customer"]["erp"] == {"42": ACCOUNT_ID}
    assert h.processor.reference.duplicates["erp"]["43"] == flag


def test_a_second_customer_naming_a_linked_account_is_held_never_written_into_it() -> None:
    h = linked_pair()
    row = PARTNER | ERP_BLANK | {"id": 43, "ref": "C00043", "crm_account_id": ACCOUNT_ID}
    claimed = h.run(h.change(RES_PARTNER, "c", after=row, lsn=200))
    record = customer(claimed)
    assert (record["crm_id"], record["duplicate_of"], record["duplicate_rule"]) == (
        None,
        ACCOUNT_ID,
        f"erp_column={ACCOUNT_ID}",
    )
    assert claimed.tally.of(Count.LINK_CONFLICTS, "customer", "erp", "erp_column") == 1
    assert claimed.tally.of(Count.DUPLICATES, "customer", "erp", "erp_column") == 1
    assert claimed.tally.of(Count.LINKS, "customer", "erp_column") == 0
    assert any("linked to erp:42" in w for w in claimed.warnings), claimed.warnings
    assert h.processor.reference.crosswalk["customer"] == {
        "erp": {"42": ACCOUNT_ID},
        "crm": {ACCOUNT_ID: "42"},
    }
    # Each side edited in turn: the account stays 42's, 43 stays held (counted once).
    again = h.run(h.change(RES_PARTNER, "u", after=row | {"city": "Lyon"}, lsn=201))
    assert (customer(again)["crm_id"], customer(again)["duplicate_of"]) == (None, ACCOUNT_ID)
    assert again.tally.of(Count.DUPLICATES, "customer", "erp", "erp_column") == 0
    assert again.tally.of(Count.LINK_CONFLICTS, "customer", "erp", "erp_column") == 1
    first = h.run(h.change(RES_PARTNER, "u", after=PARTNER | {"city": "Bonn"}, lsn=202))
    assert customer(first)["crm_id"] == ACCOUNT_ID
    back = h.run(
        h.change(
            ACCOUNTS,
            "u",
            after=account(account_number="C00042", billing_address_city="Bonn"),
            lsn=1001,
        )
    )
    assert customer(back)["erp_id"] == "42"
    # 42 archived (merged away in the ERP): the survivor naming the account takes it.
    h.run(h.change(RES_PARTNER, "u", after=PARTNER | {"active": False}, lsn=203))
    taken = h.run(h.change(RES_PARTNER, "u", after=row | {"city": "Nice"}, lsn=204))
    assert (customer(taken)["crm_id"], customer(taken)["duplicate_of"]) == (ACCOUNT_ID, None)
    assert h.processor.reference.crosswalk["customer"]["crm"] == {ACCOUNT_ID: "43"}
    assert h.processor.reference.duplicates == {"erp": {}, "crm": {}}


def test_a_linked_customer_naming_a_held_account_keeps_writing_its_own() -> None:
    h = linked_pair()
    # 43 and its own account NEW_ID, linked by customer number.
    row = PARTNER | ERP_BLANK | {"id": 43, "ref": "C00043"}
    h.run(h.change(RES_PARTNER, "c", after=row, lsn=200))
    h.run(
        h.change(
            ACCOUNTS, "c", after=account(id=NEW_ID, account_number="C00043", **CRM_BLANK), lsn=2000
        )
    )
    assert h.processor.reference.crosswalk["customer"]["erp"]["43"] == NEW_ID
    named = h.run(h.change(RES_PARTNER, "u", after=row | {"crm_account_id": ACCOUNT_ID}, lsn=201))
    assert (customer(named)["crm_id"], customer(named)["duplicate_of"]) == (NEW_ID, None)
    assert named.tally.of(Count.LINK_CONFLICTS, "customer", "erp", "erp_column") == 1
    assert h.processor.reference.crosswalk["customer"]["erp"] == {"42": ACCOUNT_ID, "43": NEW_ID}


def test_link_conflicts_are_a_metric() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    h = linked_pair()
    row = PARTNER | ERP_BLANK | {"id": 43, "ref": "C00043", "crm_account_id": ACCOUNT_ID}
    outcome = h.run(h.change(RES_PARTNER, "c", after=row, lsn=200))
    registry = CollectorRegistry()
    StreamsMetrics.create(registry).record(outcome.tally)
    text = generate_latest(registry).decode()
    assert (
        'erpcrm_streams_link_conflicts_total{entity="customer",rule="erp_column",system="erp"} 1.0'
        in text
    )


def test_deleted_and_archived_customers_are_not_proposed() -> None:
    h = linked_pair()
    h.run(
        h.change(
            RES_PARTNER,
            "u",
            after=PARTNER | {"crm_account_id": ACCOUNT_ID, "active": False},
            lsn=101,
        )
    )
    assert "42" not in h.processor.reference.customers["erp"]["keys"]
    crm = h.run(
        h.change(
            ACCOUNTS, "c", after=account(id=NEW_ID, **CRM_BLANK | {"vat": "DE136695976"}), lsn=2000
        )
    )
    assert (customer(crm)["erp_id"], customer(crm)["duplicate_of"]) == (None, None)
    h.run(h.change(ACCOUNTS, "u", after=account(deleted=True), lsn=1001))
    assert ACCOUNT_ID not in h.processor.reference.customers["crm"]["keys"]
    row = PARTNER | ERP_BLANK | {"id": 44, "ref": "C00044", "name": "Third Party"}
    row |= {"email": "einkauf@nordwind.example.com"}
    erp = h.run(h.change(RES_PARTNER, "c", after=row, lsn=202))
    assert (customer(erp)["crm_id"], customer(erp)["duplicate_of"]) == (None, None)


def test_a_deleted_duplicate_loses_its_flag() -> None:
    h = linked_pair()
    h.run(
        h.change(
            ACCOUNTS, "c", after=account(id=NEW_ID, **CRM_BLANK | {"vat": "DE136695976"}), lsn=2000
        )
    )
    gone = h.run(h.change(ACCOUNTS, "u", after=account(id=NEW_ID, deleted=True), lsn=2001))
    assert customer(gone)["duplicate_of"] is None
    assert h.state.get("reference", f"dup|customer|crm|{NEW_ID}") is None
    assert NEW_ID not in h.processor.reference.customers["crm"]["keys"]


def test_an_older_store_index_is_read_and_replaced() -> None:
    h = Harness()
    h.state.apply(
        [Write("reference", "cidx|42", {"customer_number": "C00042", "vat": "DE136695976"})]
    )
    h.state.apply([Write("reference", "xw|customer|erp|42", ACCOUNT_ID)])
    h.state.apply([Write("reference", "xw|customer|crm|" + ACCOUNT_ID, "42")])
    h.processor.load(h.state)
    assert h.processor.reference.customers["erp"]["keys"]["42"] == {
        "customer_number": "C00042",
        "vat": "DE136695976",
    }
    duplicate = h.run(
        h.change(
            ACCOUNTS, "c", after=account(id=NEW_ID, **CRM_BLANK | {"vat": "DE136695976"}), lsn=2000
        )
    )
    assert customer(duplicate)["duplicate_of"] == "42"
    h.run(h.change(RES_PARTNER, "u", after=PARTNER | {"crm_account_id": ACCOUNT_ID}, lsn=100))
    assert h.state.get("reference", "cidx|42") is None
    assert h.state.get("reference", "cidx|erp|42")["name_country"] == "NORDWIND TRADING|DE"
    assert h.processor.reference.legacy_index == set()


def test_duplicates_are_a_metric() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    h = linked_pair()
    outcome = h.run(
        h.change(
            ACCOUNTS, "c", after=account(id=NEW_ID, **CRM_BLANK | {"vat": "DE136695976"}), lsn=2000
        )
    )
    registry = CollectorRegistry()
    StreamsMetrics.create(registry).record(outcome.tally)
    text = generate_latest(registry).decode()
    assert 'erpcrm_streams_duplicates_total{entity="customer",rule="vat",system="crm"} 1.0' in text


# ------------------------------------------------------------------- property

ERP_IDS = (42, 43, 44)
CRM_IDS = (ACCOUNT_ID, NEW_ID, "0f0e0d0c-0000-5000-8000-000000000001")
_KEYS = {
    "number": st.sampled_from(["C00042", "c00042 ", "C00043", None]),
    "vat": st.sampled_from(["DE136695976", "de 136 695 976", "FR40303265045", None]),
    "email": st.sampled_from(["info@nordwind.example.com", "INFO@Nordwind.example.com", None]),
    "name": st.sampled_from(["Nordwind Trading GmbH", "NORDWIND trading", "Zeta"]),
    "country": st.sampled_from(["DE", "FR"]),
}
_ERP_STEP = st.fixed_dictionaries(
    {
        "system": st.just("erp"),
        "id": st.sampled_from(ERP_IDS),
        "crm_account_id": st.sampled_from([None, None, *CRM_IDS]),
        "active": st.sampled_from([True, True, False]),
        **_KEYS,
    }
)
_CRM_STEP = st.fixed_dictionaries(
    {
        "system": st.just("crm"),
        "id": st.sampled_from(CRM_IDS),
        "deleted": st.sampled_from([False, False, False, True]),
        **_KEYS,
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_ERP_STEP, _CRM_STEP), min_size=1, max_size=12))
def test_matching_never_links_a_record_linked_elsewhere_nor_flags_the_own_counterpart(
    steps: list[dict[str, Any]],
) -> None:
    h = Harness()
    for position, step in enumerate(steps, start=1):
        before = {
            side: dict(ids)
            for side, ids in h.processor.reference.crosswalk.get("customer", {}).items()
        }
        if step["system"] == "erp":
            row = PARTNER | {
                "id": step["id"],
                "ref": step["number"] or f"C{step['id']:05d}",
                "vat": step["vat"],
                "email": step["email"],
                "name": step["name"],
                "country_code": step["country"],
                "phone": None,
                "active": step["active"],
                "crm_account_id": step["crm_account_id"],
            }
            message = h.change(RES_PARTNER, "u", after=row, lsn=100 + position)
            own, other, other_field = str(step["id"]), "crm", "crm_id"
        else:
            row = account(
                id=step["id"],
                account_number=step["number"],
                vat=step["vat"],
                email=step["email"],
                name=step["name"],
                billing_address_country=step["country"],
                phone_office=None,
                deleted=step["deleted"],
            )
            message = h.change(ACCOUNTS, "u", after=row, lsn=100 + position)
            own, other, other_field = step["id"], "erp", "erp_id"
        live = {s: set(i["keys"]) for s, i in h.processor.reference.customers.items()}
        outcome = h.run(message)
        crosswalk = h.processor.reference.crosswalk
        sides = crosswalk.get("customer", {"erp": {}, "crm": {}})
        assert {v: k for k, v in sides["erp"].items()} == sides["crm"]  # one to one
        # A link moves to another record only from a holder that was gone (not live).
        for side, links in before.items():
            for target, holder in links.items():
                now = sides[side].get(target)
                if now not in (None, holder) and target != own:  # not its own link moving
                    event("a link taken from a record gone")
                    assert now == own, (side, target, holder, now)
                    assert holder not in live[other_system(side)], (side, target, holder)
        for record in decoded(outcome):
            counterpart = record[other_field]
            if record["duplicate_of"] is not None:
                event("flagged")
                # never a duplicate of its own counterpart: a flagged record is unlinked
                assert counterpart is None
                assert counterpart_id(crosswalk, "customer", step["system"], own) is None
                assert record["duplicate_rule"].partition("=")[0] in (*MATCH_RULES, "erp_column")
        for rule in MATCH_RULES:
            if outcome.tally.of(Count.LINKS, "customer", rule):
                # a link by matching took a record that was linked to nobody
                event(f"linked by {rule}")
                matched = counterpart_id(crosswalk, "customer", step["system"], own)
                assert matched is not None
                assert before.get(other, {}).get(matched) is None
    # the state reloads to the same caches
    fresh = StreamProcessor(FLOWS, decode=SERDE.decode, encode=encode_canonical)
    fresh.load(h.state)
    assert fresh.reference.customers == h.processor.reference.customers
    assert fresh.reference.duplicates == h.processor.reference.duplicates
    assert isinstance(h.state, DictState)


def test_a_product_whose_sku_names_a_crm_product_another_one_holds_is_not_linked() -> None:
    """Two ERP SKUs alike but for case (one CRM product): the first keeps the link."""
    h = Harness()
    with_catalogue(h, (7, "SKU-00007"))
    for message in _crm_product(h, lsn=500):
        h.run(message)
    assert h.processor.reference.crosswalk["product"]["erp"] == {"7": CRM_PRODUCT_ID}
    row = PRODUCT | {"id": 8, "default_code": "Sku-00007", "barcode": "4000000000008"}
    outcome = h.run(h.change(PRODUCT_PRODUCT, "c", after=row, lsn=600))
    (record,) = decoded(outcome)
    assert record["crm_id"] is None
    assert outcome.tally.of(Count.LINK_CONFLICTS, "product", "erp", "sku") == 1
    assert any("linked to erp:7" in w for w in outcome.warnings), outcome.warnings
    assert h.processor.reference.crosswalk["product"]["erp"] == {"7": CRM_PRODUCT_ID}
