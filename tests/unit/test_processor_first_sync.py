"""The first sync of customers both systems already hold, unlinked, through the processor.

A customer read by the initial snapshot that matches nothing in the other system waits
``snapshot_settle`` before it is published as new, indexed as a free record meanwhile:
the other system's snapshot read of the same customer (by VAT id, e-mail or name +
country, in whatever formatting cleansing normalises) links to it, whichever snapshot
is read first. Settled, it goes out linked, or as new if nothing matched it. A change
typed into either system after the start (with a transaction) still goes out at once,
and duplicates among snapshot reads are held as before.
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
    linked = customer(crm)
    assert (linked["erp_id"], linked["duplicate_of"]) == ("42", None)
    assert crm.tally.of(Count.LINKS, "customer", rule) == 1
    (settled,) = settle(h)
    assert (settled["erp_id"], settled["crm_id"], settled["duplicate_of"]) == (
        "42",
        ACCOUNT_ID,
        None,
    )
    assert h.processor.reference.crosswalk["customer"]["erp"] == {"42": ACCOUNT_ID}
    _no_taken_customer(h)
    assert not h.processor.has_pending


@pytest.mark.parametrize("rule", sorted(ERP_ONLY_BY))
def test_crm_snapshot_first_the_erp_snapshot_links_to_it(rule: str) -> None:
    h = Harness(snapshot_settle_ms=SETTLE_MS)
    assert decoded(h.run(h.change(ACCOUNTS, "r", after=_account(rule), lsn=1000))) == []
    erp = h.run(h.change(RES_PARTNER, "r", after=_partner(rule), lsn=100))
    assert (customer(erp)["crm_id"], customer(erp)["duplicate_of"]) == (ACCOUNT_ID, None)
    (settled,) = settle(h)
    assert (settled["crm_id"], settled["erp_id"], settled["duplicate_of"]) == (
        ACCOUNT_ID,
        "42",
        None,
    )
    _no_taken_customer(h)


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
    crm = h.run(h.change(ACCOUNTS, "r", after=account(), lsn=1000))
    assert customer(crm)["erp_id"] == "42"
    by_id = {r["erp_id"]: r for r in settle(h)}
    assert (by_id["42"]["crm_id"], by_id["43"]["duplicate_of"]) == (ACCOUNT_ID, ACCOUNT_ID)


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
    crm = h.run(h.change(ACCOUNTS, "r", after=account(), lsn=1000))
    assert customer(crm)["erp_id"] == "42"
    (settled,) = settle(h)
    assert (settled["erp_id"], settled["crm_id"]) == ("42", ACCOUNT_ID)
    _no_taken_customer(h)
