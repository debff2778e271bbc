"""The first sync links the customers both systems already hold; it holds none of them.

Before any worker starts, the same customers are put into both databases, unlinked and
typed as people type them: matched by VAT id (spaced, lower case in the CRM), by e-mail
(in other case), by name + country (accents, a legal form, extra spaces, the country
as a name in the CRM); besides them, customers only one system holds. Then both
captures snapshot them, the streams worker and both sinks run. Whichever snapshot the
streams worker reads first, once quiet:

- every pre-existing pair is linked both ways and the ids are written back (the ERP
  partner names the account, the account carries the ERP customer number);
- nothing is held as a suspected duplicate, and neither system has a second record;
- a customer only one system held is copied into the other exactly once, linked.

The databases are shared with every other test, so the snapshot holds their records
too; only this test's customers (named with its tag) are looked at. The settle budget
is ``ERPCRM_FIRST_SYNC_SECONDS`` (default 900).
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.sink_fixtures import Pipeline
from tests.integration.soak_fixtures import valid_vat

pytestmark = pytest.mark.integration

BUDGET = float(os.environ.get("ERPCRM_FIRST_SYNC_SECONDS", "900"))
PER_RULE = 3
ONE_SIDED = 2


@dataclass(frozen=True, slots=True)
class Customers:
    """This test's customers: the pairs by rule, and the ones only one system holds."""

    tag: str
    pairs: dict[str, list[tuple[int, str]]]
    """Per match rule: (ERP partner id, CRM account id) of the same customer."""
    erp_only: list[int]
    crm_only: list[str]

    @property
    def all_pairs(self) -> list[tuple[int, str]]:
        return [pair for pairs in self.pairs.values() for pair in pairs]


def _partner(env: dict[str, str], name: str, vat: str | None, email: str | None) -> int:
    [(partner,)] = execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, vat, email, country_code, is_company) "
        "VALUES (%s, %s, %s, 'DE', true) RETURNING id",
        (name, vat, email),
    )
    return int(partner)


def _account(env: dict[str, str], name: str, vat: str | None, email: str | None) -> str:
    account = str(uuid.uuid4())
    execute(
        env["CRM_DSN"],
        "INSERT INTO public.accounts (id, name, vat, email, billing_address_country) "
        "VALUES (%s, %s, %s, %s, 'Germany')",
        (account, name, vat, email),
    )
    return account


def _create(env: dict[str, str]) -> Customers:
    tag = uuid.uuid4().hex[:8]
    rng = random.Random(tag)
    pairs: dict[str, list[tuple[int, str]]] = {"vat": [], "email": [], "name_country": []}
    for n in range(PER_RULE):
        vat = valid_vat(rng)
        spaced = f"{vat[:2].lower()} {vat[2:6]} {vat[6:]}"
        pairs["vat"].append(
            (
                _partner(env, f"Vat Partner {tag} {n}", vat, f"vat-erp-{tag}-{n}@example.com"),
                _account(env, f"Vat Account {tag} {n}", spaced, f"vat-crm-{tag}-{n}@example.com"),
            )
        )
        pairs["email"].append(
            (
                _partner(env, f"Mail Partner {tag} {n}", None, f"Mail-{tag}-{n}@Example.COM"),
                _account(env, f"Mail Account {tag} {n}", None, f"mail-{tag}-{n}@example.com"),
            )
        )
        pairs["name_country"].append(
            (
                _partner(env, f"  Müller {tag}{n}   Händel GmbH ", None, None),
                _account(env, f"MULLER {tag.upper()}{n} HANDEL", None, None),
            )
        )
    erp_only = [
        _partner(env, f"Erp Only {tag} {n}", None, f"erp-only-{tag}-{n}@example.com")
        for n in range(ONE_SIDED)
    ]
    crm_only = [
        _account(env, f"Crm Only {tag} {n}", None, f"crm-only-{tag}-{n}@example.com")
        for n in range(ONE_SIDED)
    ]
    return Customers(tag, pairs, erp_only, crm_only)


@pytest.fixture(scope="module")
def synced(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, Customers]]:
    customers = _create(stack_env)  # before any worker: both snapshots read them
    running = Pipeline(stack_env, tmp_path_factory.mktemp("first-sync-matching"))
    running.erp.tables = ("res_partner",)
    running.crm.tables = ("accounts",)
    try:
        running.start()
        wait_for(lambda: _all_linked(stack_env, customers), BUDGET, "every customer linked", 1.0)
        # Quiet for longer than a snapshot customer settles: nothing more is on its way.
        running.settled(timeout=BUDGET, quiet=10.0)
        yield running, customers
    finally:
        running.cleanup()


def _partner_row(env: dict[str, str], partner: int) -> tuple[str, str | None]:
    [(ref, account)] = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT ref, crm_account_id::text FROM public.res_partner WHERE id = %s",
        (partner,),
    )
    return str(ref), account


def _account_number(env: dict[str, str], account: str) -> str | None:
    [(number,)] = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT account_number FROM public.accounts WHERE id = %s::uuid",
        (account,),
    )
    return None if number is None else str(number)


def _linked(env: dict[str, str], partner: int, account: str) -> bool:
    ref, named = _partner_row(env, partner)
    return named == account and _account_number(env, account) == ref


def _copies_in_crm(env: dict[str, str], partner: int) -> list[str]:
    ref, _ = _partner_row(env, partner)
    rows = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT id::text FROM public.accounts WHERE account_number = %s AND NOT deleted",
        (ref,),
    )
    return [str(r[0]) for r in rows]


def _copies_in_erp(env: dict[str, str], account: str) -> list[int]:
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT id FROM public.res_partner WHERE crm_account_id = %s::uuid",
        (account,),
    )
    return [int(r[0]) for r in rows]


def _all_linked(env: dict[str, str], customers: Customers) -> bool:
    if not all(_linked(env, p, a) for p, a in customers.all_pairs):
        return False
    for partner in customers.erp_only:
        copies = _copies_in_crm(env, partner)
        if len(copies) != 1 or not _linked(env, partner, copies[0]):
            return False
    for account in customers.crm_only:
        made = _copies_in_erp(env, account)
        if len(made) != 1 or not _linked(env, made[0], account):
            return False
    return True


def test_every_customer_both_systems_held_is_linked_both_ways(
    synced: tuple[Pipeline, Customers], stack_env: dict[str, str]
) -> None:
    _, customers = synced
    for rule, pairs in customers.pairs.items():
        for partner, account in pairs:
            ref, named = _partner_row(stack_env, partner)
            assert (rule, named, _account_number(stack_env, account)) == (rule, account, ref)
            assert _copies_in_erp(stack_env, account) == [partner], rule
            assert _copies_in_crm(stack_env, partner) == [account], rule


def test_nothing_is_held_and_neither_system_has_a_second_record(
    synced: tuple[Pipeline, Customers], stack_env: dict[str, str]
) -> None:
    pipeline, customers = synced
    keys = [f"erp:{p}" for p, _ in customers.all_pairs] + [
        f"crm:{a}" for _, a in customers.all_pairs
    ]
    keys += [f"erp:{p}" for p in customers.erp_only] + [f"crm:{a}" for a in customers.crm_only]
    for sink in pipeline:
        held = sink.query(
            "SELECT entity_key, candidate, evidence FROM {schema}.suspects "
            "WHERE entity = 'customer' AND entity_key = ANY(%s)",
            (keys,),
        )
        assert held == [], f"{sink.target} sink holds {held}"
    expected = len(customers.all_pairs) + 2 * ONE_SIDED
    like = f"%{customers.tag}%"
    [(partners,)] = execute(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT count(*) FROM public.res_partner WHERE name ILIKE %s OR email ILIKE %s",
        (like, like),
    )
    [(accounts,)] = execute(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT count(*) FROM public.accounts WHERE name ILIKE %s OR email ILIKE %s",
        (like, like),
    )
    assert (partners, accounts) == (expected, expected)


def test_a_customer_only_one_system_held_is_copied_once(
    synced: tuple[Pipeline, Customers], stack_env: dict[str, str]
) -> None:
    _, customers = synced
    for partner in customers.erp_only:
        [account] = _copies_in_crm(stack_env, partner)
        assert _copies_in_erp(stack_env, account) == [partner]
    for account in customers.crm_only:
        [partner] = _copies_in_erp(stack_env, account)
        assert _copies_in_crm(stack_env, partner) == [account]
