"""Duplicates typed into either system are held, never created twice (DESIGN.md §5.5).

On the real stack with both captures, the streams worker and both sinks running: a new
record that matches a customer already linked to another record (by VAT in other
spacing and case, by e-mail in other case, by name in other case with the same
country) is not created in the other system; the target's sink holds it in
``erpcrm_sync.suspects`` with both ids and the evidence, and ``erpcrm suspects``
lists it. An operator's ``release`` creates it after all, ``link`` writes it into the
record it duplicates, and is refused (exit 3, nothing changed, the holder named) while
another live record of its system holds that record. The same new customer typed twice
into one system before its first copy is synced is held too, with the record the sync
made for the first copy as the candidate. A second customer whose link column names an
account another customer holds is held too, never written into that account.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from streams.cleansing import clean_vat
from streams.validation import Ok
from tests.integration.cdc_fixtures import REPO, execute, wait_for
from tests.integration.sink_fixtures import Pipeline, SinkProcess, demo_pipeline
from tests.integration.soak_fixtures import valid_vat

pytestmark = pytest.mark.integration

WAIT = 60.0


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    log_dir: Path = tmp_path_factory.mktemp("duplicates")
    with demo_pipeline(stack_env, log_dir) as running:
        yield running


def _seed_pair(env: dict[str, str], offset: int) -> dict[str, Any]:
    """A linked seed customer whose VAT id holds: ERP id, CRM id, VAT, e-mail, name, country.

    The seed's VAT ids all hold (``deploy/sql/seed_vat.sql``), but the databases are
    shared with other tests, which may have given a seeded customer another one: only
    a VAT id that still holds is matched on (an invalid one is quarantined).
    """
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT id, crm_account_id::text, vat, email, name, country_code "
        "FROM public.res_partner WHERE crm_account_id IS NOT NULL AND parent_id IS NULL "
        "AND active AND vat IS NOT NULL AND email IS NOT NULL ORDER BY id",
    )
    valid = [r for r in rows if isinstance(clean_vat(r[2], r[5]), Ok)]
    assert len(valid) > offset, "no linked seed customer with a valid VAT id"
    erp_id, crm_id, vat, email, name, country = valid[offset]
    return {
        "erp_id": int(erp_id),
        "crm_id": crm_id,
        "vat": vat,
        "email": email,
        "name": name,
        "country": country,
    }


def _suspect(sink: SinkProcess, key: str) -> tuple[str, str, str] | None:
    rows = sink.query(
        "SELECT candidate, coalesce(evidence, ''), status FROM {schema}.suspects "
        "WHERE entity = 'customer' AND entity_key = %s",
        (key,),
    )
    return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None


def _has_status(sink: SinkProcess, key: str, status: str) -> bool:
    found = _suspect(sink, key)
    return found is not None and found[2] == status


def _held(sink: SinkProcess, key: str) -> tuple[str, str, str]:
    found: tuple[str, str, str] | None = wait_for(
        lambda: _suspect(sink, key), WAIT, f"{key} held by the {sink.target} sink"
    )
    assert found is not None
    return found


def _new_account(env: dict[str, str], **columns: Any) -> str:
    account = str(uuid.uuid4())
    names = ["id", *columns]
    query = sql.SQL("INSERT INTO public.accounts ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    execute(env["CRM_DSN"], query, (account, *columns.values()))
    return account


def _partners_of(env: dict[str, str], account: str) -> int:
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT count(*) FROM public.res_partner WHERE crm_account_id = %s::uuid",
        (account,),
    )
    return int(rows[0][0])


def _suspects_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``erpcrm suspects …`` against one pipeline sink (its DSN and sync schema)."""
    return subprocess.run(
        [sys.executable, "-m", "erpcrm.cli", "suspects", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _sink_env(sink: SinkProcess, stack_env: dict[str, str]) -> dict[str, str]:
    return {
        "ERPCRM_SINK_DSN": stack_env[f"{sink.target.upper()}_SINK_DSN"],
        "ERPCRM_SINK_SYNC_SCHEMA": sink.schema,
        "KAFKA_BOOTSTRAP": stack_env["KAFKA_BOOTSTRAP"],
    }


@pytest.mark.parametrize(
    ("rule", "offset"),
    [("vat", 0), ("email", 1), ("name_country", 2)],
)
def test_a_crm_duplicate_of_a_linked_customer_is_held_not_created(
    pipeline: Pipeline, stack_env: dict[str, str], rule: str, offset: int
) -> None:
    pair = _seed_pair(stack_env, offset)
    tag = uuid.uuid4().hex[:8]
    columns: dict[str, Any] = {
        "name": f"Other name {tag}",
        "email": f"other-{tag}@example.com",
        "billing_address_country": pair["country"],
    }
    if rule == "vat":  # the same VAT id, spaced and in lower case
        vat = str(pair["vat"]).lower()
        columns["vat"] = " ".join([vat[:4], vat[4:8], vat[8:]])
    elif rule == "email":
        columns["email"] = str(pair["email"]).upper()
    else:  # the same company name in other case, same country
        columns["name"] = f"  {str(pair['name']).upper()} "
    account = _new_account(stack_env, **columns)
    candidate, evidence, status = _held(pipeline.erp_sink, f"crm:{account}")
    assert (candidate, status) == (str(pair["erp_id"]), "held")
    assert evidence.startswith(f"{rule}="), evidence
    pipeline.settled()
    assert _partners_of(stack_env, account) == 0, "the duplicate was created in the ERP"


def test_an_erp_duplicate_of_a_linked_account_is_held_not_created(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    pair = _seed_pair(stack_env, 3)
    tag = uuid.uuid4().hex[:8]
    rows = execute(
        stack_env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, email, country_code, is_company) "
        "VALUES (%s, %s, %s, true) RETURNING id",
        (f"Typed again {tag}", str(pair["email"]).upper(), pair["country"]),
    )
    partner = int(rows[0][0])
    candidate, evidence, _ = _held(pipeline.crm_sink, f"erp:{partner}")
    # The account of that e-mail (on a reused stack, earlier runs may have made more).
    emails = execute(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT lower(email) FROM public.accounts WHERE id = %s::uuid",
        (candidate,),
    )
    assert emails == [(str(pair["email"]).lower(),)], (candidate, pair)
    assert evidence == f"email={str(pair['email']).lower()}", evidence
    pipeline.settled()
    created = execute(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT count(*) FROM public.accounts WHERE name = %s",
        (f"Typed again {tag}",),
    )
    assert created[0][0] == 0, "the duplicate was created in the CRM"


def test_an_operator_releases_one_suspect_and_may_not_link_another_to_a_held_candidate(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    sink = pipeline.erp_sink
    env = _sink_env(sink, stack_env)
    first, second = _seed_pair(stack_env, 4), _seed_pair(stack_env, 5)
    tag = uuid.uuid4().hex[:8]
    phone = f"+44207946{random.randrange(1000, 10000)}"  # a stack reused keeps earlier ones
    released = _new_account(
        stack_env, name=f"Released {tag}", vat=first["vat"], email=f"r-{tag}@example.com"
    )
    linked = _new_account(
        stack_env,
        name=f"Linked {tag}",
        vat=second["vat"],
        email=f"l-{tag}@example.com",
        phone_office=phone,
    )
    _held(sink, f"crm:{released}")
    _held(sink, f"crm:{linked}")

    listing = _suspects_cli(env, "list", "--target", "erp", "--json")
    assert listing.returncode == 0, listing.stderr
    by_key = {s["entity_key"]: s for s in json.loads(listing.stdout)}
    assert by_key[f"crm:{released}"]["candidate"] == str(first["erp_id"])
    assert by_key[f"crm:{linked}"]["candidate"] == str(second["erp_id"])

    result = _suspects_cli(env, "release", str(by_key[f"crm:{released}"]["id"]), "--target", "erp")
    assert result.returncode == 0, result.stderr
    again = _suspects_cli(env, "release", str(by_key[f"crm:{released}"]["id"]), "--target", "erp")
    assert again.returncode == 1, "a decided suspect cannot be decided twice"
    # The seed's own account holds the candidate: a link is one to one.
    refused = _suspects_cli(env, "link", str(by_key[f"crm:{linked}"]["id"]), "--target", "erp")
    assert refused.returncode == 3, (refused.stdout, refused.stderr)
    assert f"crm:{second['crm_id']} holds it" in " ".join(refused.stderr.split())

    wait_for(lambda: _partners_of(stack_env, released) == 1, WAIT, "the released account created")
    wait_for(partial(_has_status, sink, f"crm:{released}", "released"), WAIT, "released")
    pipeline.settled()
    held = _suspect(sink, f"crm:{linked}")
    assert held is not None
    assert (held[0], held[2]) == (str(second["erp_id"]), "held"), "a refused link changed it"
    [(found,)] = execute(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT phone FROM public.res_partner WHERE id = %s",
        (second["erp_id"],),
    )
    assert found != phone, "the held account was written into the seed's customer"


# A link is one to one for operators too. A customer pair is made (one record typed
# into one system, its copy made and linked in the other), then a copy of the first
# record is typed into the same system again (the same e-mail in other case): held as a
# suspected duplicate of the pair's counterpart. Linking it is refused (exit 3), naming
# the pair's record, and changes nothing; once that record is gone (archived, deleted:
# merged into the copy), the link is taken and the copy is written into the counterpart.


def _customer_row(env: dict[str, str], system: str, row_id: str) -> tuple[Any, ...]:
    """Name and liveness of a customer row (``system``: where it is)."""
    if system == "crm":
        query = "SELECT name, NOT deleted FROM public.accounts WHERE id = %s::uuid"
        return tuple(execute(env["CRM_ADMIN_DSN"], query, (row_id,))[0])
    query = "SELECT name, active FROM public.res_partner WHERE id = %s::bigint"
    return tuple(execute(env["ERP_ADMIN_DSN"], query, (row_id,))[0])


def _typed_customer(env: dict[str, str], system: str, name: str, email: str) -> str:
    if system == "crm":
        return _new_account(env, name=name, email=email, billing_address_country="DE")
    rows = execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, email, country_code, is_company) "
        "VALUES (%s, %s, 'DE', true) RETURNING id",
        (name, email),
    )
    return str(rows[0][0])


@pytest.mark.parametrize("system", ["erp", "crm"])
def test_a_link_to_a_counterpart_another_live_record_holds_is_refused_until_it_is_gone(
    pipeline: Pipeline, stack_env: dict[str, str], system: str
) -> None:
    other = "crm" if system == "erp" else "erp"
    sink = pipeline.crm_sink if system == "erp" else pipeline.erp_sink
    env = _sink_env(sink, stack_env)
    tag = uuid.uuid4().hex[:8]
    holder = _typed_customer(stack_env, system, f"Holder {tag}", f"holder-{tag}@example.com")
    synced = partial(_synced_for, stack_env, system, holder)
    counterpart = wait_for(synced, WAIT, f"{system}:{holder} synced and linked")
    if system == "erp":  # linked back: the ERP customer names its account
        wait_for(lambda: _linked_account(stack_env, int(holder)), WAIT, "linked back")
    pipeline.settled()
    copy = _typed_customer(stack_env, system, f"Copy {tag}", f"HOLDER-{tag}@example.com")
    candidate, _, _ = _held(sink, f"{system}:{copy}")
    assert candidate == counterpart
    [suspect] = [
        s
        for s in json.loads(_suspects_cli(env, "list", "--target", other, "--json").stdout)
        if s["entity_key"] == f"{system}:{copy}"
    ]

    refused = _suspects_cli(env, "link", str(suspect["id"]), "--target", other)
    assert refused.returncode == 3, (refused.stdout, refused.stderr)
    assert f"{system}:{holder} holds it" in " ".join(refused.stderr.split()), refused.stderr
    pipeline.settled()
    assert _has_status(sink, f"{system}:{copy}", "held"), "a refused link changes nothing"
    assert _customer_row(stack_env, other, counterpart) == (f"Holder {tag}", True)

    # The holder is merged into the copy: gone, it gives its counterpart up.
    if system == "erp":
        retire = "UPDATE public.res_partner SET active = false WHERE id = %s::bigint"
    else:
        retire = "UPDATE public.accounts SET deleted = true WHERE id = %s::uuid"
    execute(stack_env[f"{system.upper()}_DSN"], retire, (holder,))
    wait_for(
        lambda: not _customer_row(stack_env, other, counterpart)[1],
        WAIT,
        f"{other} row {counterpart} archived with its holder",
    )
    taken = _suspects_cli(env, "link", str(suspect["id"]), "--target", other)
    assert taken.returncode == 0, (taken.stdout, taken.stderr)
    wait_for(
        lambda: _customer_row(stack_env, other, counterpart)[0] == f"Copy {tag}",
        WAIT,
        "the copy written into the counterpart",
    )
    wait_for(partial(_has_status, sink, f"{system}:{copy}", "linked"), WAIT, "linked")


def _synced_for(env: dict[str, str], system: str, record: str) -> str | None:
    """The id of the record the sync made in the other system for ``record`` (linked)."""
    if system == "crm":
        query = "SELECT id::text FROM public.res_partner WHERE crm_account_id = %s::uuid"
        rows = execute(env["ERP_ADMIN_DSN"], query, (record,))
    else:
        [(number,)] = execute(
            env["ERP_ADMIN_DSN"], "SELECT ref FROM public.res_partner WHERE id = %s", (int(record),)
        )
        rows = execute(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text FROM public.accounts WHERE account_number = %s",
            (number,),
        )
    return str(rows[0][0]) if rows else None


@pytest.mark.parametrize("system", ["crm", "erp"])
def test_a_customer_typed_twice_at_once_is_held_with_the_first_ones_counterpart(
    pipeline: Pipeline, stack_env: dict[str, str], system: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    vat = valid_vat(random.Random(tag))
    spaced = f"{vat[:2].lower()} {vat[2:6]} {vat[6:]}"
    if system == "crm":
        query = (
            "INSERT INTO public.accounts (name, vat, email, billing_address_country) "
            "VALUES (%s, %s, %s, 'DE') RETURNING id::text"
        )
    else:
        query = (
            "INSERT INTO public.res_partner (name, vat, email, country_code, is_company) "
            "VALUES (%s, %s, %s, 'DE', true) RETURNING id::text"
        )
    # One transaction: the streams decide both before the first one's copy is back.
    ids = []
    with psycopg.connect(stack_env[f"{system.upper()}_DSN"]) as conn:
        for name, value in (("Twice", vat), ("Twice again", spaced)):
            email = f"{name.lower().replace(' ', '-')}-{tag}@example.com"
            row = conn.execute(query, (f"{name} {tag}", value, email)).fetchone()
            assert row is not None
            ids.append(str(row[0]))
    first, second = ids
    target = pipeline.erp_sink if system == "crm" else pipeline.crm_sink
    candidate, evidence, status = _held(target, f"{system}:{second}")
    made = wait_for(
        lambda: _synced_for(stack_env, system, first), WAIT, f"the copy of {system}:{first}"
    )
    assert (candidate, evidence, status) == (made, f"vat={vat}", "held")
    pipeline.settled()
    assert _synced_for(stack_env, system, second) is None, "the second copy was synced too"


def _parked_of(sink: SinkProcess, key: str) -> list[str]:
    """The suspect each parked event of ``key`` waits for, in order."""
    rows = sink.query(
        "SELECT suspect_key FROM {schema}.parked WHERE entity_key = %s ORDER BY id", (key,)
    )
    return [str(r[0]) for r in rows]


def test_contacts_parked_for_a_held_account_survive_a_killed_sink_and_follow_its_release(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """Parked in the target with their batch: a SIGKILL loses none and applies none twice."""
    sink = pipeline.erp_sink
    env = _sink_env(sink, stack_env)
    seed = _seed_pair(stack_env, 6)
    tag = uuid.uuid4().hex[:8]
    account = _new_account(
        stack_env, name=f"Parked {tag}", vat=seed["vat"], email=f"p-{tag}@example.com"
    )
    _held(sink, f"crm:{account}")
    [(contact,)] = execute(
        stack_env["CRM_DSN"],
        "INSERT INTO public.contacts (account_id, first_name, last_name) "
        "VALUES (%s, 'Ada', %s) RETURNING id::text",
        (account, f"Parked {tag}"),
    )
    execute(
        stack_env["CRM_DSN"],
        "UPDATE public.contacts SET last_name = %s WHERE id = %s::uuid",
        (f"Later {tag}", contact),
    )
    key = f"crm:{contact}"
    wait_for(lambda: len(_parked_of(sink, key)) == 2, WAIT, "both changes of the contact parked")
    assert _parked_of(sink, key) == [f"crm:{account}"] * 2

    sink.kill()
    sink.start().wait_assigned()
    assert _parked_of(sink, key) == [f"crm:{account}"] * 2, "parked events survive a SIGKILL"
    assert sink.metric("erpcrm_sink_parked_records", target="erp") >= 1
    listing = _suspects_cli(env, "list", "--target", "erp", "--json")
    assert listing.returncode == 0, listing.stderr
    [suspect] = [s for s in json.loads(listing.stdout) if s["entity_key"] == f"crm:{account}"]
    assert (suspect["status"], suspect["waiting"]) == ("held", 2)

    released = _suspects_cli(env, "release", str(suspect["id"]), "--target", "erp")
    assert released.returncode == 0, released.stderr

    def contact_rows() -> list[tuple[Any, ...]]:
        return execute(
            stack_env["ERP_ADMIN_DSN"],
            "SELECT c.name, p.crm_account_id::text FROM public.res_partner c "
            "JOIN public.res_partner p ON p.id = c.parent_id WHERE c.crm_contact_id = %s::uuid",
            (contact,),
        )

    wait_for(lambda: bool(contact_rows()), WAIT, "the parked contact applied after the release")
    [(name, parent_account)] = contact_rows()
    assert parent_account == account, "applied against the row the release created"
    assert name.endswith(f"Later {tag}"), "its latest change, applied after the first"
    assert _parked_of(sink, key) == []
    assert sink.total("dead_lettered") == 0


# A link is one to one. ERP customer B1 is created and synced (its CRM account A made,
# the pair linked). A script then moves the link column (unique in the ERP) to a new
# second customer B2, in later transactions, so the sink sees B2 in a batch of its own
# and cannot tell. The streams crosswalk does: B2 is held as a suspected duplicate of A
# (evidence ``erp_column=<A>``, counted in ``erpcrm_streams_link_conflicts_total``) and
# never written into A; edited afterwards, A follows B1 only, never flipping between them.


def _new_named_partner(env: dict[str, str], tag: str, number: str, name: str) -> int:
    rows = execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, ref, email, country_code, is_company) "
        "VALUES (%s, %s, %s, 'DE', true) RETURNING id",
        (f"{name} {tag}", number, f"{name.lower()}-{tag}@example.com"),
    )
    return int(rows[0][0])


def _account_row(env: dict[str, str], account: str) -> tuple[Any, ...]:
    [row] = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT name, account_number, email FROM public.accounts WHERE id = %s::uuid",
        (account,),
    )
    return tuple(row)


def _linked_account(env: dict[str, str], partner: int) -> str | None:
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT crm_account_id::text FROM public.res_partner WHERE id = %s",
        (partner,),
    )
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


def test_a_second_customer_given_a_linked_account_in_a_later_batch_never_takes_it(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    first_number, second_number = f"L1-{tag}", f"L2-{tag}"
    first = _new_named_partner(stack_env, tag, first_number, "First")
    account = wait_for(
        lambda: _linked_account(stack_env, first), WAIT, f"erp:{first} synced and linked back"
    )
    assert account is not None
    assert _account_row(stack_env, account)[:2] == (f"First {tag}", first_number)
    pipeline.settled()
    conflicts_before = pipeline.streams.metric(
        "erpcrm_streams_link_conflicts_total", entity="customer", system="erp", rule="erp_column"
    )

    # A script moves the link column (unique in the ERP) from the first customer to a
    # new second one, in later transactions: the sink sees the second one in a batch of
    # its own.
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET crm_account_id = NULL WHERE id = %s",
        (first,),
    )
    pipeline.settled()
    [(second,)] = execute(
        stack_env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, ref, email, country_code, is_company, "
        "crm_account_id) VALUES (%s, %s, %s, 'DE', true, %s::uuid) RETURNING id",
        (f"Second {tag}", second_number, f"second-{tag}@example.com", account),
    )
    wait_for(
        lambda: (
            _suspect(pipeline.crm_sink, f"erp:{second}") is not None
            or _account_row(stack_env, account)[1] != first_number
        ),
        WAIT,
        f"erp:{second} decided by the CRM sink",
    )
    pipeline.settled()
    assert _account_row(stack_env, account)[:2] == (f"First {tag}", first_number), (
        "the second customer was written into the first one's account"
    )
    held = _suspect(pipeline.crm_sink, f"erp:{second}")
    assert held == (account, f"erp_column={account}", "held"), held
    assert (
        pipeline.streams.metric(
            "erpcrm_streams_link_conflicts_total",
            entity="customer",
            system="erp",
            rule="erp_column",
        )
        > conflicts_before
    )

    # Each side edited again: the account follows the first customer only.
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET email = %s WHERE id = %s",
        (f"second-again-{tag}@example.com", second),
    )
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET email = %s WHERE id = %s",
        (f"first-again-{tag}@example.com", first),
    )
    wait_for(
        lambda: _account_row(stack_env, account)[2] == f"first-again-{tag}@example.com",
        WAIT,
        "the first customer's edit applied to its account",
    )
    pipeline.settled()
    assert _account_row(stack_env, account) == (
        f"First {tag}",
        first_number,
        f"first-again-{tag}@example.com",
    )
    assert _suspect(pipeline.crm_sink, f"erp:{second}") == held


def test_two_held_copies_of_one_counterpart_are_never_both_linked(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """Two held ERP customers of one account: the first linked, the second is refused.

    Nothing in the ERP names the account once the first is linked (the CRM sink writes
    it into the account; the copy's link column stays empty), so only the suspects tell
    the second link apart: refused while the first is asked to be linked, and after it
    is carried out. A link whose ERP read fails is a clean error that names no DSN.
    """
    sink = pipeline.crm_sink
    env = _sink_env(sink, stack_env)
    tag = uuid.uuid4().hex[:8]
    holder = _typed_customer(stack_env, "erp", f"Holder {tag}", f"two-{tag}@example.com")
    account = wait_for(partial(_synced_for, stack_env, "erp", holder), WAIT, "holder synced")
    wait_for(lambda: _linked_account(stack_env, int(holder)), WAIT, "linked back")
    pipeline.settled()
    first = _typed_customer(stack_env, "erp", f"First {tag}", f"TWO-{tag}@example.com")
    second = _typed_customer(stack_env, "erp", f"Second {tag}", f"Two-{tag}@example.com")
    assert _held(sink, f"erp:{first}")[0] == account
    assert _held(sink, f"erp:{second}")[0] == account
    ids = {
        s["entity_key"]: str(s["id"])
        for s in json.loads(_suspects_cli(env, "list", "--target", "crm", "--json").stdout)
    }
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET active = false WHERE id = %s::bigint",
        (holder,),
    )
    wait_for(lambda: not _customer_row(stack_env, "crm", account)[1], WAIT, "account archived")

    secret = f"pw{tag}"
    unreachable = {**env, "ERPCRM_SUSPECTS_ERP_DSN": f"postgresql://u:{secret}@127.0.0.1:1/x"}
    failed = _suspects_cli(unreachable, "link", ids[f"erp:{first}"], "--target", "crm")
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert "Traceback" not in failed.stderr
    assert secret not in failed.stdout + failed.stderr
    assert "OperationalError" in failed.stderr, failed.stderr
    assert _has_status(sink, f"erp:{first}", "held"), "a failed link changed it"

    linked = _suspects_cli(env, "link", ids[f"erp:{first}"], "--target", "crm")
    assert linked.returncode == 0, (linked.stdout, linked.stderr)
    # At once (the sink may not have carried the first out yet), and once it has.
    for _ in ("asked", "carried out"):
        refused = _suspects_cli(env, "link", ids[f"erp:{second}"], "--target", "crm")
        assert refused.returncode == 3, (refused.stdout, refused.stderr)
        message = " ".join(refused.stderr.split())
        assert f"erp:{first} (suspect {ids[f'erp:{first}']})" in message, message
        wait_for(partial(_has_status, sink, f"erp:{first}", "linked"), WAIT, "first linked")
    wait_for(
        lambda: _customer_row(stack_env, "crm", account)[0] == f"First {tag}",
        WAIT,
        "the first written into the account",
    )
    pipeline.settled()
    assert _has_status(sink, f"erp:{second}", "held"), "a refused link changes nothing"
    assert _customer_row(stack_env, "crm", account)[0] == f"First {tag}"


def _retire(env: dict[str, str], system: str, record: str) -> None:
    """Archive an ERP customer or delete (softly) a CRM account."""
    if system == "erp":
        retire = "UPDATE public.res_partner SET active = false WHERE id = %s::bigint"
    else:
        retire = "UPDATE public.accounts SET deleted = true WHERE id = %s::uuid"
    execute(env[f"{system.upper()}_DSN"], retire, (record,))


def _linked_into(
    stack_env: dict[str, str],
    env: dict[str, str],
    sink: SinkProcess,
    counterpart: str,
    key: str,
    suspect: str,
    name: str,
) -> None:
    """``erpcrm suspects link`` of ``suspect`` passes; ``key`` is written into ``counterpart``."""
    other = sink.target
    done = _suspects_cli(env, "link", suspect, "--target", other)
    assert done.returncode == 0, (done.stdout, done.stderr)
    wait_for(partial(_has_status, sink, key, "linked"), WAIT, f"{key} linked")
    wait_for(
        lambda: _customer_row(stack_env, other, counterpart)[0] == name,
        WAIT,
        f"{key} written into the counterpart",
    )


@pytest.mark.parametrize("system", ["erp", "crm"])
def test_a_linked_suspect_gone_at_its_source_no_longer_holds_its_candidate(
    pipeline: Pipeline, stack_env: dict[str, str], system: str
) -> None:
    """A copy linked to a counterpart, then archived or deleted where it was typed, gives the
    counterpart up: another copy of the same customer may be linked to it."""
    other = "crm" if system == "erp" else "erp"
    sink = pipeline.crm_sink if system == "erp" else pipeline.erp_sink
    env = _sink_env(sink, stack_env)
    tag = uuid.uuid4().hex[:8]
    holder = _typed_customer(stack_env, system, f"Holder {tag}", f"gone-{tag}@example.com")
    counterpart = wait_for(
        partial(_synced_for, stack_env, system, holder), WAIT, f"{system}:{holder} synced"
    )
    if system == "erp":
        wait_for(lambda: _linked_account(stack_env, int(holder)), WAIT, "linked back")
    pipeline.settled()
    first = _typed_customer(stack_env, system, f"First {tag}", f"GONE-{tag}@example.com")
    second = _typed_customer(stack_env, system, f"Second {tag}", f"Gone-{tag}@example.com")
    assert _held(sink, f"{system}:{first}")[0] == counterpart
    assert _held(sink, f"{system}:{second}")[0] == counterpart
    ids = {
        s["entity_key"]: str(s["id"])
        for s in json.loads(_suspects_cli(env, "list", "--target", other, "--json").stdout)
    }
    _retire(stack_env, system, holder)
    wait_for(lambda: not _customer_row(stack_env, other, counterpart)[1], WAIT, "archived")
    linked = partial(_linked_into, stack_env, env, sink, counterpart)
    linked(f"{system}:{first}", ids[f"{system}:{first}"], f"First {tag}")
    # Live, the linked first holds the counterpart.
    refused = _suspects_cli(env, "link", ids[f"{system}:{second}"], "--target", other)
    assert refused.returncode == 3, (refused.stdout, refused.stderr)

    # Merged into the second and retired at its source: it holds nothing any more.
    _retire(stack_env, system, first)
    wait_for(lambda: not _customer_row(stack_env, other, counterpart)[1], WAIT, "archived")
    pipeline.settled()
    linked(f"{system}:{second}", ids[f"{system}:{second}"], f"Second {tag}")
