"""A fresh pipeline's first sync over records an earlier run left unlinked.

The soak tests share their databases: a pipeline that stops (or dies) leaves pairs, and
copies held as suspected duplicates, that the next pipeline's snapshots read again with
no memory of them. Its first sync must not link a copy to a record that another one
claims for sure, a claim its snapshot may not have read yet:

- ``crm_first`` (the CRM's snapshot read first): a pair (the ERP partner naming its
  account, the account carrying the partner's customer number) and, in the ERP, a copy
  with the pair's e-mail and a lower id (read before the pair's partner). The copy must
  be held as a duplicate of the pair's account, the account keep its name and number;
  linked at once, the copy took the account (its name and number written over the
  pair's).
- ``erp_first``: an ERP customer no account names, the account carrying its number
  (read last), and an account copying its e-mail without a number (read first). The
  customer must be linked to the account with its number and the copy held; linked at
  once to the copy, the CRM sink wrote the customer's number into it while the other
  account held it (a unique-key dead letter, and the real account held instead).

The second capture starts once the streams worker has read the first one's snapshot,
with one partition per table (its snapshot arrives in key order), and the worker
settles snapshot customers for 45 s: long enough to take in the second snapshot.
Nothing may be dead-lettered for the records of the test.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.sink_fixtures import Pipeline, watermarks
from tests.integration.soak_fixtures import DLQ_TOPICS, dead_letters, streams_behind

pytestmark = pytest.mark.integration

SETTLE_SECONDS: Final = 45
BUDGET: Final = 180.0
COUNT: Final = 2


@dataclass(frozen=True, slots=True)
class Leftover:
    """One customer as an earlier run left it: the pair it must end as, and the copy.

    ``partner`` and ``account`` must end linked both ways; ``copy`` (``erp:<id>`` or
    ``crm:<uuid>``) held by the other system's sink with ``candidate`` as its candidate.
    """

    partner: int
    ref: str
    account: str
    account_name: str
    copy: str
    candidate: str


def _partner(env: dict[str, str], name: str, email: str) -> tuple[int, str]:
    [(partner, ref)] = execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, email, country_code, is_company)"
        " VALUES (%s, %s, 'DE', true) RETURNING id, ref",
        (name, email),
    )
    return int(partner), str(ref)


def _account(env: dict[str, str], account: str, name: str, number: str | None, email: str) -> str:
    execute(
        env["CRM_DSN"],
        "INSERT INTO public.accounts (id, name, account_number, email, billing_address_country)"
        " VALUES (%s, %s, %s, %s, 'DE')",
        (account, name, number, email),
    )
    return account


def _ordered_uuid(first: bool) -> str:
    """A UUID that sorts before (``first``) or after every other account of the stack."""
    return f"{'00000000' if first else 'ffffffff'}{str(uuid.uuid4())[8:]}"


def _crm_first(env: dict[str, str], tag: str, n: int) -> Leftover:
    mail = f"pair-{tag}-{n}@example.com"
    copy, _ = _partner(env, f"Copy {tag} {n}", mail.upper())  # read before the pair's
    name = f"Pair {tag} {n}"
    partner, ref = _partner(env, name, mail)
    account = _account(env, str(uuid.uuid4()), name, ref, mail)
    execute(
        env["ERP_DSN"],
        "UPDATE public.res_partner SET crm_account_id = %s WHERE id = %s",
        (account, partner),
    )
    return Leftover(partner, ref, account, name, f"erp:{copy}", account)


def _erp_first(env: dict[str, str], tag: str, n: int) -> Leftover:
    mail = f"single-{tag}-{n}@example.com"
    name = f"Single {tag} {n}"
    partner, ref = _partner(env, name, mail)
    copy = _account(env, _ordered_uuid(True), f"Copy {tag} {n}", None, mail.upper())
    account = _account(env, _ordered_uuid(False), name, ref, f"other-{tag}-{n}@example.com")
    return Leftover(partner, ref, account, name, f"crm:{copy}", str(partner))


def _start(pipeline: Pipeline, first: str) -> None:
    """Sinks, the ``first`` capture and the streams worker; the other capture once the
    worker has read the first one's snapshot."""
    captures = {"erp": pipeline.erp, "crm": pipeline.crm}
    second = captures["crm" if first == "erp" else "erp"]
    second.settings = {"topic_partitions": "1"}
    for sink in pipeline:
        sink.create_schema()
        sink.start()
    for sink in pipeline:
        sink.wait_assigned()
    captures[first].start().wait_streaming()
    settle = {"ERPCRM_STREAMS_SNAPSHOT_SETTLE_SECONDS": str(SETTLE_SECONDS)}
    pipeline.streams.start(settle).wait_ready()
    wait_for(lambda: not streams_behind(pipeline), 120, f"the {first} snapshot read", 0.5)
    second.start().wait_streaming()


def _state(env: dict[str, str], pipeline: Pipeline, left: Leftover) -> dict[str, Any]:
    """What the test checks of one leftover customer."""
    [(named,)] = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT crm_account_id::text FROM public.res_partner WHERE id = %s",
        (left.partner,),
    )
    [(number, name)] = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT account_number, name FROM public.accounts WHERE id = %s::uuid",
        (left.account,),
    )
    system, _, copy_id = left.copy.partition(":")
    if system == "erp":
        [(copy_link,)] = execute(
            env["ERP_ADMIN_DSN"],
            "SELECT crm_account_id::text FROM public.res_partner WHERE id = %s",
            (int(copy_id),),
        )
        holder = pipeline.crm_sink
    else:
        [(copy_link,)] = execute(
            env["CRM_ADMIN_DSN"],
            "SELECT account_number FROM public.accounts WHERE id = %s::uuid",
            (copy_id,),
        )
        holder = pipeline.erp_sink
    held = holder.query(
        "SELECT candidate FROM {schema}.suspects WHERE entity = 'customer' AND entity_key = %s",
        (left.copy,),
    )
    return {
        "partner names": named,
        "account number": number,
        "account name": name,
        "copy linked or numbered": copy_link,
        "copy held with": [str(r[0]) for r in held],
    }


def _expected(left: Leftover) -> dict[str, Any]:
    return {
        "partner names": left.account,
        "account number": left.ref,
        "account name": left.account_name,
        "copy linked or numbered": None,
        "copy held with": [left.candidate],
    }


@pytest.fixture(scope="module", params=["crm_first", "erp_first"])
def synced(
    request: pytest.FixtureRequest,
    stack_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, list[Leftover], list[str]]]:
    first = "crm" if request.param == "crm_first" else "erp"
    make = _crm_first if first == "crm" else _erp_first
    tag = uuid.uuid4().hex[:8]
    leftovers = [make(stack_env, tag, n) for n in range(COUNT)]  # before any worker
    log_dir: Path = tmp_path_factory.mktemp(f"first-sync-{request.param}")
    pipeline = Pipeline(stack_env, log_dir)
    pipeline.erp.tables = ("res_partner",)
    pipeline.crm.tables = ("accounts",)
    letters_from = watermarks(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS)
    try:
        _start(pipeline, first)

        def done() -> bool:
            return all(_state(stack_env, pipeline, x) == _expected(x) for x in leftovers)

        with contextlib.suppress(AssertionError):  # the test says what differs
            wait_for(done, BUDGET, "every leftover customer linked to its own record", 2.0)
        pipeline.settled(timeout=BUDGET, quiet=10.0)
        keys = {f"erp:{x.partner}" for x in leftovers} | {x.copy for x in leftovers}
        keys |= {f"crm:{x.account}" for x in leftovers}
        letters = [
            f"{letter.topic} {letter.reason}: {letter.headers.get('erpcrm.error.message')}"
            for letter in dead_letters(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS, letters_from)
            if letter.headers.get("erpcrm.entity_key") in keys
        ]
        yield pipeline, leftovers, letters
    finally:
        pipeline.cleanup()


def test_each_leftover_ends_linked_to_its_own_record_and_its_copy_held(
    synced: tuple[Pipeline, list[Leftover], list[str]], stack_env: dict[str, str]
) -> None:
    pipeline, leftovers, _ = synced
    for left in leftovers:
        assert _state(stack_env, pipeline, left) == _expected(left), left


def test_nothing_of_the_leftovers_is_dead_lettered(
    synced: tuple[Pipeline, list[Leftover], list[str]],
) -> None:
    _, _, letters = synced
    assert letters == []
