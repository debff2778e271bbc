"""The workload's pure half: operation planning, generated values, dirt, amounts, pacing."""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erpcrm import dirty
from erpcrm.dirty import COUNTRIES, ContactValues, DirtyKind, PartyValues
from erpcrm.workload import (
    DEFAULT_WEIGHTS,
    DIRTY_TARGETS,
    OperationPlanner,
    OpKind,
    Pacer,
    Payment,
    System,
    TableCounts,
    WorkloadReport,
    line_amounts,
    payment_outcome,
    plan_contact_field,
    plan_lines,
    plan_party_field,
    plan_stock_move,
)
from streams.cleansing import clean_vat
from streams.validation import Ok

E164_SPACED = re.compile(r"\+\d{1,3}( \d+)+")
VALID_EMAIL = re.compile(r"[^@\s<>,:]+@[^@\s<>,:]+\.[A-Za-z]{2,}")
ERP_SKU = re.compile(r"SKU-00(0\d\d|1\d\d|200)")


def rngs(n: int = 200) -> list[random.Random]:
    return [random.Random(i) for i in range(n)]


# --- planning ---------------------------------------------------------------------------


def test_same_seed_gives_the_same_operations() -> None:
    a, b = OperationPlanner(7, 0.2), OperationPlanner(7, 0.2)
    first = [a.next() for _ in range(1000)]
    assert first == [b.next() for _ in range(1000)]
    assert [op.seq for op in first] == list(range(1, 1001))


def test_another_seed_gives_other_operations() -> None:
    a, b = OperationPlanner(7, 0.2), OperationPlanner(8, 0.2)
    assert [a.next() for _ in range(50)] != [b.next() for _ in range(50)]


def test_operation_values_are_reproducible_from_the_salt() -> None:
    op = OperationPlanner(3, 0.5).next()
    assert [op.rng().random() for _ in range(3)] == [op.rng().random() for _ in range(3)]
    first, second = op.rng(), op.rng()
    assert [first.random() for _ in range(3)] == [second.random() for _ in range(3)]


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_dirty_ratio_is_respected(ratio: float) -> None:
    planner = OperationPlanner(11, ratio)
    n = 20_000
    dirty_ops = sum(planner.next().dirty is not None for _ in range(n))
    assert abs(dirty_ops / n - ratio) < 0.015


def test_every_dirty_kind_is_produced_on_an_operation_that_can_carry_it() -> None:
    planner = OperationPlanner(5, 0.5)
    seen: Counter[DirtyKind] = Counter()
    for _ in range(5000):
        op = planner.next()
        if op.dirty is not None:
            seen[op.dirty] += 1
            assert op.kind in DIRTY_TARGETS[op.dirty]
    assert set(seen) == set(DirtyKind)
    # Drawn uniformly: no kind is starved.
    assert min(seen.values()) > 0.5 * max(seen.values())


def test_clean_operations_follow_the_weights() -> None:
    planner = OperationPlanner(1, 0.0)
    n = 40_000
    counts = Counter(planner.next().kind for _ in range(n))
    total = sum(DEFAULT_WEIGHTS.values())
    for kind, weight in DEFAULT_WEIGHTS.items():
        expected = n * weight / total
        assert abs(counts[kind] - expected) < 0.15 * expected + 30, kind
    assert {k.system for k in counts} == {System.ERP, System.CRM}


def test_zero_weight_disables_a_kind_and_its_dirt() -> None:
    weights = dict.fromkeys(OpKind, 0.0) | {OpKind.ERP_STOCK_MOVE: 1.0}
    planner = OperationPlanner(2, 0.5, weights)
    ops = [planner.next() for _ in range(2000)]
    assert {op.kind for op in ops} == {OpKind.ERP_STOCK_MOVE}
    assert {op.dirty for op in ops} == {None, DirtyKind.NEGATIVE_QUANTITY}


@pytest.mark.parametrize(
    ("ratio", "weights"),
    [(-0.1, None), (1.5, None), (0.1, {OpKind.ERP_STOCK_MOVE: -1.0}), (0.1, {})],
)
def test_planner_rejects_bad_arguments(ratio: float, weights: dict[OpKind, float] | None) -> None:
    with pytest.raises(ValueError):
        OperationPlanner(1, ratio, weights)


def test_op_kinds_name_their_system() -> None:
    for kind in OpKind:
        assert kind.value.startswith(f"{kind.system.value}.")


def test_field_choice_follows_the_dirt() -> None:
    rng = random.Random(0)
    assert plan_party_field(rng, System.ERP, DirtyKind.BAD_PHONE) == "phone"
    assert plan_party_field(rng, System.CRM, DirtyKind.BAD_EMAIL) == "email"
    assert plan_party_field(rng, System.ERP, DirtyKind.MISSING_COUNTRY) == "address"
    assert plan_contact_field(rng, DirtyKind.BAD_PHONE) == "phone"
    erp_fields = {plan_party_field(rng, System.ERP, None) for _ in range(200)}
    assert erp_fields == {"email", "phone", "address"}
    assert "industry" in {plan_party_field(rng, System.CRM, None) for _ in range(200)}


def test_lines_have_one_to_five_entries_and_dirt_spoils_exactly_one() -> None:
    for rng in rngs():
        clean = plan_lines(rng, None)
        assert 1 <= len(clean) <= 5
        assert all(line.quantity > 0 and line.unknown_sku is None for line in clean)
        assert all(0 <= line.discount < 100 for line in clean)
        negative = plan_lines(rng, DirtyKind.NEGATIVE_QUANTITY)
        assert sum(line.quantity < 0 for line in negative) == 1
        unknown = plan_lines(rng, DirtyKind.UNKNOWN_SKU)
        odd = [line for line in unknown if line.unknown_sku is not None]
        assert len(odd) == 1
        assert odd[0].unknown_price is not None
        assert odd[0].unknown_price > 0
        assert not ERP_SKU.fullmatch(odd[0].unknown_sku or "")


def test_stock_moves_stay_non_negative_unless_dirty() -> None:
    for rng in rngs():
        move = plan_stock_move(rng, None)
        assert move.set_quantity is None
        assert 0 <= move.product_pick < 1
        assert 0 <= move.location_pick < 1
        assert move.quantity_delta <= 0 or move.reserved_delta == 0  # receipts reserve nothing
        oversold = plan_stock_move(rng, DirtyKind.NEGATIVE_QUANTITY)
        assert oversold.set_quantity is not None
        assert oversold.set_quantity < 0


# --- amounts and payments -----------------------------------------------------------------


def test_line_amounts_round_like_the_database() -> None:
    # Seeded line of S00005: SKU-00124 (list price 869.56), 2 units, 10 % discount.
    amounts = line_amounts(Decimal(2), Decimal("869.56"), Decimal(10))
    assert amounts.subtotal == Decimal("1565.21")
    assert amounts.tax == Decimal("297.39")
    assert amounts.total == Decimal("1862.60")
    assert amounts.gross == Decimal("1739.12")
    assert amounts.unit_price == Decimal("782.60")


def test_line_amounts_of_a_negative_quantity_are_negative() -> None:
    amounts = line_amounts(Decimal(-3), Decimal("10.00"), Decimal(0))
    assert amounts.subtotal == Decimal("-30.00")
    assert amounts.total == Decimal("-35.70")


@pytest.mark.parametrize(
    ("state", "residual", "payment", "expected"),
    [
        ("not_paid", "100.00", Payment(True, Decimal("0.5"), True), ("paid", "0.00")),
        ("not_paid", "100.00", Payment(True, Decimal("0.5"), False), ("in_payment", "0.00")),
        ("not_paid", "100.00", Payment(False, Decimal("0.25"), True), ("partial", "75.00")),
        ("partial", "0.01", Payment(False, Decimal("0.75"), True), ("paid", "0.00")),
        ("in_payment", "0.00", Payment(False, Decimal("0.5"), True), ("paid", "0.00")),
    ],
)
def test_payment_outcome(
    state: str, residual: str, payment: Payment, expected: tuple[str, str]
) -> None:
    new_state, new_residual = payment_outcome(state, Decimal(residual), payment)
    assert (new_state, new_residual) == (expected[0], Decimal(expected[1]))


# --- pacing -------------------------------------------------------------------------------


def test_pacer_spaces_operations_and_does_not_burst_after_a_stall() -> None:
    pacer = Pacer(10.0, start=100.0)
    assert pacer.wait_time(100.0) == 0.0
    pacer.mark(100.0)
    assert pacer.wait_time(100.0) == pytest.approx(0.1)
    pacer.mark(100.12)  # a little late: the schedule holds
    assert pacer.wait_time(100.12) == pytest.approx(0.08)
    pacer.mark(105.0)  # stalled for seconds: restart from now, no catch-up
    assert pacer.wait_time(105.0) == pytest.approx(0.1)


def test_unlimited_pacer_never_waits() -> None:
    pacer = Pacer(float("inf"), start=0.0)
    for t in range(5):
        pacer.mark(float(t))
        assert pacer.wait_time(float(t)) == 0.0


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_pacer_rejects_non_positive_rates(rate: float) -> None:
    with pytest.raises(ValueError):
        Pacer(rate, start=0.0)


def test_report_serialises_to_json() -> None:
    report = WorkloadReport(
        operations=3,
        committed=2,
        skipped={"crm.accept_quote": 0},
        failed={"crm.new_quote": {"UniqueViolation": 1}},
        by_kind={"erp.stock_move": 2},
        tables={"erp": {"stock_quant": TableCounts(inserts=1, updates=1)}},
        dirty=1,
        dirty_by_kind={"negative_quantity": 1},
        reconnects={},
        elapsed_seconds=0.5,
        achieved_rate=6.0,
    )
    data = json.loads(json.dumps(report.as_dict()))
    assert data["tables"]["erp"]["stock_quant"] == {"inserts": 1, "updates": 1}
    assert data["failed_total"] == 1
    assert report.inserts("erp", "stock_quant") == 1
    assert report.updates("crm", "accounts") == 0


# --- generated values ---------------------------------------------------------------------


def test_new_parties_are_clean_and_well_formed() -> None:
    codes = {c.code for c in COUNTRIES}
    individuals = 0
    for rng in rngs(500):
        party = dirty.new_party(rng)
        assert party.name
        assert party.name == party.name.strip()
        assert party.country in codes
        assert party.phone is not None
        assert E164_SPACED.fullmatch(party.phone)
        assert party.email is not None
        assert VALID_EMAIL.fullmatch(party.email)
        assert party.email == party.email.lower()
        assert party.street
        assert party.city
        assert party.zip
        if party.is_company:
            if party.country == "US":
                assert party.vat is None
            else:
                assert party.vat is not None
                assert party.vat.startswith(party.country)
                assert isinstance(clean_vat(party.vat, party.country), Ok), party.vat
        else:
            individuals += 1
            assert party.vat is None
    assert 20 < individuals < 90


def test_new_contacts_use_the_account_domain() -> None:
    for rng in rngs():
        contact = dirty.new_contact(
            rng, account_email="info@acme-tools.example.com", account_name="Acme", country_code="DE"
        )
        assert contact.email is not None
        assert contact.email.endswith("@acme-tools.example.com")
        assert VALID_EMAIL.fullmatch(contact.email)
        assert contact.phone is not None
        assert contact.phone.startswith("+49 ")
        assert contact.last_name == contact.last_name.strip()


def test_email_domain_falls_back_to_the_name() -> None:
    assert dirty.email_domain("Info@Acme.Example.com ", "x") == "acme.example.com"
    assert dirty.email_domain("broken at nowhere", "Müller & Söhne") == ("muller-sohne.example.com")
    assert dirty.email_domain(None, "Søren") == "soren.example.com"


# --- dirt ---------------------------------------------------------------------------------


def test_bad_phones_are_not_in_international_format() -> None:
    for rng in rngs(400):
        phone = dirty.phone_number(rng, rng.choice(COUNTRIES))
        bad = dirty.bad_phone(rng, phone)
        assert bad != phone
        assert not re.fullmatch(r"\+\d{7,15}", bad.replace(" ", ""))


def test_bad_emails_do_not_validate() -> None:
    for rng in rngs(400):
        email = f"{rng.choice(['info', 'anna.schmidt'])}@acme-{rng.randint(1, 9)}.example.com"
        bad = dirty.bad_email(rng, email)
        assert bad != email
        assert not VALID_EMAIL.fullmatch(bad)


def test_unknown_skus_are_not_in_the_erp_catalogue() -> None:
    skus = {dirty.unknown_sku(rng) for rng in rngs(400)}
    assert len(skus) > 300
    assert not any(ERP_SKU.fullmatch(sku) for sku in skus)


def test_negative_quantities_are_negative_integers() -> None:
    values = {dirty.negative_quantity(rng) for rng in rngs()}
    assert all(v < 0 and v == v.to_integral_value() for v in values)


@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != ""), st.integers())
def test_padding_keeps_the_words(value: str, seed: int) -> None:
    padded = dirty.pad(random.Random(seed), value)
    assert padded != value
    assert padded.split() == value.split()


BUSINESS_LETTERS = string.ascii_letters + "äöüÄÖÜßéèêÉÈàçÇñÑøØåÅæÆ -."


@given(st.text(alphabet=BUSINESS_LETTERS, min_size=1), st.integers())
def test_wrong_case_changes_only_the_case(value: str, seed: int) -> None:
    spoiled = dirty.wrong_case(random.Random(seed), value)
    assert spoiled.casefold() == value.casefold()
    if value.upper() != value.lower():
        assert spoiled != value


def _party() -> PartyValues:
    return PartyValues(
        name="Atlas Trading GmbH",
        vat="DE136695976",
        email="info@atlas-trading.example.com",
        phone="+49 30 661 0918",
        street="Hauptstraße 5",
        city="Berlin",
        zip="10117",
        country="DE",
        industry="Retail",
    )


@pytest.mark.parametrize(
    ("kind", "changed"),
    [
        (DirtyKind.PADDING, "name"),
        (DirtyKind.WRONG_CASE, "name"),
        (DirtyKind.BAD_PHONE, "phone"),
        (DirtyKind.BAD_EMAIL, "email"),
        (DirtyKind.MISSING_COUNTRY, "country"),
    ],
)
def test_party_dirt_spoils_its_field(kind: DirtyKind, changed: str) -> None:
    clean = _party()
    for rng in rngs(50):
        spoiled = dirty.apply_party_dirt(rng, clean, kind)
        assert getattr(spoiled, changed) != getattr(clean, changed)
        assert spoiled.vat == clean.vat


def test_party_dirt_ignores_kinds_that_do_not_apply() -> None:
    clean = _party()
    for kind in (DirtyKind.NEGATIVE_QUANTITY, DirtyKind.UNKNOWN_SKU):
        assert dirty.apply_party_dirt(random.Random(1), clean, kind) == clean


def test_duplicates_share_vat_and_email() -> None:
    clean = _party()
    names = set()
    for rng in rngs(50):
        dup = dirty.duplicate_party(rng, clean)
        assert (dup.vat, dup.email, dup.street) == (clean.vat, clean.email, clean.street)
        assert dup.name.split()[0].casefold() == "atlas"
        names.add(dup.name)
    assert len(names) > 1


@pytest.mark.parametrize("field", ["email", "phone", "address", "industry"])
def test_clean_party_changes_change_something(field: str) -> None:
    clean = _party()
    for rng in rngs(50):
        changes = dirty.party_changes(rng, field, clean, None)
        assert changes
        assert any(getattr(clean, k) != v for k, v in changes.items())
        if "email" in changes:
            assert VALID_EMAIL.fullmatch(changes["email"] or "")
            assert (changes["email"] or "").endswith("@atlas-trading.example.com")
        if "phone" in changes:
            assert (changes["phone"] or "").startswith("+49 ")
        if "country" in changes:
            assert changes["country"] == "DE"


def test_dirty_party_changes() -> None:
    clean = _party()
    for rng in rngs(50):
        assert (
            dirty.party_changes(rng, "address", clean, DirtyKind.MISSING_COUNTRY)["country"] is None
        )
        email = dirty.party_changes(rng, "email", clean, DirtyKind.BAD_EMAIL)["email"]
        assert not VALID_EMAIL.fullmatch(email or "")
        renamed = dirty.party_changes(rng, "name", clean, DirtyKind.PADDING)["name"]
        assert renamed != clean.name
        assert (renamed or "").split() == clean.name.split()


def test_unknown_party_field_is_rejected() -> None:
    with pytest.raises(ValueError):
        dirty.party_changes(random.Random(1), "shoe_size", _party(), None)


def test_contact_changes() -> None:
    current = ContactValues("Anna", "Müller", "anna.muller@acme.example.com", "+49 151 1234567")
    kwargs = {
        "account_email": "info@acme.example.com",
        "account_name": "Acme",
        "country_code": "DE",
    }
    for rng in rngs(50):
        email = dirty.contact_changes(rng, "email", current, dirty=None, **kwargs)["email"]
        assert email != current.email
        assert (email or "").endswith("@acme.example.com")
        phone = dirty.contact_changes(rng, "phone", current, dirty=DirtyKind.BAD_PHONE, **kwargs)
        assert not re.fullmatch(r"\+\d{7,15}", (phone["phone"] or "").replace(" ", ""))
        name = dirty.contact_changes(rng, "name", current, dirty=DirtyKind.WRONG_CASE, **kwargs)
        changed = [k for k, v in name.items() if getattr(current, k) != v]
        assert len(changed) == 1
        assert (name[changed[0]] or "").casefold() == str(getattr(current, changed[0])).casefold()
