"""The first sync of customers both systems already hold, unlinked, through the processor.

A customer read by the initial snapshot waits ``snapshot_settle`` before it is
published, indexed as a free record meanwhile, unless its link column or its customer
number links it: the other system's snapshot read of the same customer (by VAT id,
e-mail or name + country, in whatever formatting cleansing normalises) waits too, and
once settled the two go out linked, whichever snapshot is read first; one nothing
matched goes out as new. Meanwhile the records that claim a customer for sure (the
account carrying its number, the ERP customer naming the account) are linked at once,
so a copy left unlinked by an earlier run never takes a pair's account. A change typed
into either system after the start (with a transaction) still goes out at once, and
duplicates among snapshot reads are held as before.
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.outcome import Count
from streams.processor import StreamProcessor
from streams.waiting import SNAPSHOT_MATCH
from tests.unit.test_processor import FLOWS, SERDE, Harness, account, decoded, encode_canonical
from tests.unit.test_processor_matching import CRM_BLANK, ERP_BLANK, customer
from tests.unit.test_transform import ACCOUNT_ID, ACCOUNTS, PARTNER, RES_PARTNER

SETTLE_MS = 3_000

# The same customer in both systems, one rule at a time (nothing else in common), in
# the formatting people type: spaced lower-case VAT id, e-mail in other case, name with
# another legal form and accents, country as a name.
ERP_ONLY_BY: dict[str, dict[str, Any]] = {
    "vat": {"vat": "de 136-695.976"},
    "email": {"email": "Einkauf@Nordwind.Example.com"},
    "name_country": {"name": "  Nördwind  Trading GmbH", "country_code": "Deutschland"},
}
CRM_ONLY_BY: dict[str, dict[str, Any]] = {
    "vat": {"vat": "DE136695976", "billing_address_country": None},
    "email": {"email": "einkauf@nordwind.example.com", "billing_address_country": None},
    "name_country": {"name": "NORDWIND TRADING", "billing_address_country": "DE"},
}


def _partner(rule: str) -> dict[str, Any]:
    return PARTNER | ERP_BLANK | {"name": "Nordwind Trading Partner"} | ERP_ONLY_BY[rule]


def _account(rule: str) -> dict[str, Any]:
    return account(**CRM_BLANK | {"name": "Nordwind Account"} | CRM_ONLY_BY[rule])


def settle(h: Harness) -> list[dict[str, Any]]:
    """Ticks with nothing read between them until the settle has passed; what came out."""
    out = []
    for advance in (0, 1_000, SETTLE_MS + 1_000):
        out.extend(decoded(h.run(h.tick(advance))))
    return out


def _no_taken_customer(h: Harness) -> None:
    ref = h.processor.reference
    assert ref.creating == {"erp": set(), "crm": set()}
    assert ref.duplicates == {"erp": {}, "crm": {}}


@pytest.mark.parametrize("rule", sorted(ERP_ONLY_BY))
def test_erp_snapshot_first_the_crm_snapshot_links_to_it(rule: str) -> None:
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    erp = h.run(h.change(RES_PARTNER, "r", after=_partner(rule), lsn=100))
    assert decoded(erp) == []
    assert erp.tally.of(Count.PARKED, SNAPSHOT_MATCH) == 1
    crm = h.run(h.change(ACCOUNTS, "r", after=_account(rule), lsn=1000))
    assert decoded(crm) == []  # not by its number: it settles too
    erp_out, crm_out = sorted(settle(h), key=lambda r: r["source_system"] != "erp")
    assert (erp_out["erp_id"], erp_out["crm_id"], erp_out["duplicate_of"]) == (
        "42",
        ACCOUNT_ID,
        None,
    )
    assert (crm_out["crm_id"], crm_out["erp_id"], crm_out["duplicate_of"]) == (
        ACCOUNT_ID,
        "42",
        None,
    )
    assert h.processor.reference.crosswalk["customer"]["erp"] == {"42": ACCOUNT_ID}
    _no_taken_customer(h)
    assert not h.processor.has_pending


@pytest.mark.parametrize("rule", sorted(ERP_ONLY_BY))
def test_crm_snapshot_first_the_erp_snapshot_links_to_it(rule: str) -> None:
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    assert decoded(h.run(h.change(ACCOUNTS, "r", after=_account(rule), lsn=1000))) == []
    assert decoded(h.run(h.change(RES_PARTNER, "r", after=_partner(rule), lsn=100))) == []
    by_system = {r["source_system"]: r for r in settle(h)}
    assert (by_system["crm"]["erp_id"], by_system["crm"]["duplicate_of"]) == ("42", None)
    assert (by_system["erp"]["crm_id"], by_system["erp"]["duplicate_of"]) == (ACCOUNT_ID, None)
    _no_taken_customer(h)


def test_a_copy_read_before_its_pair_does_not_take_the_pairs_account() -> None:
    # Left by an earlier run: the pair (partner 42 naming the account, the account
    # carrying C00042) and an unlinked copy of it in the ERP (43, the same e-mail). The
    # CRM snapshot is read first, then the copy, then the pair's partner.
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    mail = "info@nordwind.example.com"
    pair_account = account(account_number="C00042", vat=None, email=mail)
    pair = PARTNER | {"crm_account_id": ACCOUNT_ID}
    copy = PARTNER | ERP_BLANK | {"id": 43, "ref": "C00043", "email": mail}
    assert decoded(h.run(h.change(ACCOUNTS, "r", after=pair_account, lsn=1000))) == []
    assert decoded(h.run(h.change(RES_PARTNER, "r", after=copy, lsn=100))) == []
    (linked,) = decoded(h.run(h.change(RES_PARTNER, "r", after=pair, lsn=100)))
    assert (linked["erp_id"], linked["crm_id"]) == ("42", ACCOUNT_ID)
    by_key = {(r["source_system"], r.get("erp_id") or r["crm_id"]): r for r in settle(h)}
    held = by_key[("erp", "43")]
    assert (held["crm_id"], held["duplicate_of"]) == (None, ACCOUNT_ID)
    assert by_key[("crm", "42")]["crm_id"] == ACCOUNT_ID
    assert h.processor.reference.crosswalk["customer"]["erp"] == {"42": ACCOUNT_ID}


def test_an_account_read_later_with_the_customer_number_claims_its_customer() -> None:
    # Left by an earlier run: partner 42 (C00042) not linked, its account carrying
    # C00042, and an account copying the partner's e-mail without a number. The ERP
    # snapshot is read first, then the copy, then the account with the number.
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    copy_id = "00000000-0000-4000-8000-000000000001"
    mail = "einkauf@nordwind.example.com"
    partner = PARTNER | {"email": mail}
    assert decoded(h.run(h.change(RES_PARTNER, "r", after=partner, lsn=100))) == []
    copy = account(id=copy_id, **CRM_BLANK | {"email": mail})
    assert decoded(h.run(h.change(ACCOUNTS, "r", after=copy, lsn=1000))) == []
    numbered = account(account_number="C00042", **CRM_BLANK)
    (linked,) = decoded(h.run(h.change(ACCOUNTS, "r", after=numbered, lsn=1000)))
    assert (linked["crm_id"], linked["erp_id"]) == (ACCOUNT_ID, "42")
    by_system = {(r["source_system"], r["crm_id"]): r for r in settle(h)}
    assert by_system[("erp", ACCOUNT_ID)]["erp_id"] == "42"
    held = by_system[("crm", copy_id)]
    assert (held["erp_id"], held["duplicate_of"]) == (None, "42")


def test_a_customer_only_one_system_holds_goes_out_as_new_once_settled() -> None:
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    assert decoded(h.run(h.change(RES_PARTNER, "r", after=PARTNER, lsn=100))) == []
    assert decoded(h.run(h.tick(0))) == []
    assert decoded(h.run(h.tick(1_000))) == []  # read so far: not settled yet
    (new,) = decoded(h.run(h.tick(SETTLE_MS)))
    assert (new["erp_id"], new["crm_id"], new["duplicate_of"]) == ("42", None, None)
    assert h.processor.reference.creating == {"erp": {"42"}, "crm": set()}
    # Its copy, typed into the CRM later, is held as before (its own is on its way).
    typed = h.run(h.change(ACCOUNTS, "c", after=account(), lsn=2000))
    assert (customer(typed)["erp_id"], customer(typed)["duplicate_of"]) == (None, "42")


def test_changes_typed_after_the_start_and_linked_snapshot_reads_are_not_held() -> None:
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    typed = h.run(h.change(RES_PARTNER, "c", after=PARTNER, lsn=100, tx=(900, 101)))
    assert typed.outbound == []  # source order: held until its transaction's END
    ended = h.run(h.end("erp", (900, 101), {"public.res_partner": 1}))
    assert customer(ended)["erp_id"] == "42"
    linked = PARTNER | {"id": 43, "ref": "C00043", "crm_account_id": ACCOUNT_ID}
    read = h.run(h.change(RES_PARTNER, "r", after=linked | ERP_BLANK, lsn=150))
    assert customer(read)["crm_id"] == ACCOUNT_ID


def test_snapshot_reads_duplicated_within_one_system_hold_the_second() -> None:
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    twin = PARTNER | ERP_BLANK | {"id": 43, "ref": "C00043", "vat": "DE 136695976"}
    h.run(h.change(RES_PARTNER, "r", after=PARTNER, lsn=100))
    h.run(h.change(RES_PARTNER, "r", after=twin, lsn=100))
    first, second = sorted(settle(h), key=lambda r: int(r["erp_id"]))
    assert (first["erp_id"], first["duplicate_of"]) == ("42", None)
    assert (second["erp_id"], second["duplicate_of"]) == ("43", "erp:42")
    # One account for both: linked to the first, the second held as its duplicate.
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    h.run(h.change(RES_PARTNER, "r", after=PARTNER, lsn=100))
    h.run(h.change(RES_PARTNER, "r", after=twin, lsn=100))
    assert decoded(h.run(h.change(ACCOUNTS, "r", after=account(), lsn=1000))) == []
    by_key = {(r["source_system"], r["erp_id"]): r for r in settle(h)}
    assert by_key[("crm", "42")]["crm_id"] == ACCOUNT_ID
    assert by_key[("erp", "42")]["crm_id"] == ACCOUNT_ID
    assert by_key[("erp", "43")]["duplicate_of"] == ACCOUNT_ID


def test_without_a_settle_a_snapshot_customer_goes_out_at_once() -> None:
    h = Harness(snapshot_settle_ms=0)
    (new,) = decoded(h.run(h.change(RES_PARTNER, "r", after=PARTNER, lsn=100)))
    assert new["erp_id"] == "42"
    assert h.processor.reference.creating["erp"] == {"42"}


def test_a_restarted_worker_still_settles_what_was_waiting() -> None:
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    h.run(h.change(RES_PARTNER, "r", after=PARTNER, lsn=100))
    # The worker dies; a new one loads the committed state and goes on reading.
    h.processor = StreamProcessor(
        FLOWS, decode=SERDE.decode, encode=encode_canonical, snapshot_settle_ms=SETTLE_MS
    )
    h.processor.load(h.state)
    assert h.processor.pending_count == 1
    assert decoded(h.run(h.change(ACCOUNTS, "r", after=account(), lsn=1000))) == []
    settled = settle(h)
    assert sorted((r["source_system"], r["erp_id"], r["crm_id"]) for r in settled) == [
        ("crm", "42", ACCOUNT_ID),
        ("erp", "42", ACCOUNT_ID),
    ]
    _no_taken_customer(h)
