"""Suspected duplicates held by one pipeline stay held by the next one over the same data.

A pipeline holds a copy typed into each system of a synced pair (an ERP customer and a
CRM account, both with the pair's VAT id): each is a suspected duplicate of the pair's
record in the other system, kept by the other sink. Then that pipeline is gone (its
sync-state schemas dropped, its consumer groups deleted, a new streams app id), as after
``make clean`` or an operator's reset, and a new one starts over the same databases.

Its first sync reads the two copies with no memory of them: each matches the pair's
record (taken) and the other copy (free), so its streams worker links the copies to
each other. The decisions the first pipeline's sinks made must hold: each copy is held
again by the other sink, with the pair's record as its candidate, and neither copy's
data is written into the other (no name, number or link changes).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.sink_fixtures import Pipeline, SinkProcess
from tests.integration.soak_fixtures import streams_behind, valid_vat

pytestmark = pytest.mark.integration

BUDGET: Final = 240.0


@dataclass(frozen=True, slots=True)
class Leftovers:
    """A synced pair and one copy of it in each system (ids as text)."""

    partner: str
    account: str
    erp_copy: str
    crm_copy: str


def _pair(env: dict[str, str], tag: str, vat: str) -> tuple[str, str]:
    # Customer numbers of the test's own: the ERP's next number may be one a CRM
    # account of the seed or an earlier run carries (a sure link to that account).
    [(partner, ref)] = execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, ref, vat, email, country_code, is_company)"
        " VALUES (%s, %s, %s, %s, 'DE', true) RETURNING id::text, ref",
        (f"Pair {tag}", f"H{tag.upper()}", vat, f"pair-{tag}@example.com"),
    )
    account = str(uuid.uuid4())
    execute(
        env["CRM_DSN"],
        "INSERT INTO public.accounts (id, name, account_number, vat, email,"
        " billing_address_country) VALUES (%s, %s, %s, %s, %s, 'DE')",
        (account, f"Pair {tag}", ref, vat, f"pair-{tag}@example.com"),
    )
    execute(
        env["ERP_DSN"],
        "UPDATE public.res_partner SET crm_account_id = %s WHERE id = %s::int",
        (account, partner),
    )
    return partner, account


def _erp_copy(env: dict[str, str], tag: str, vat: str) -> str:
    [(partner,)] = execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, ref, vat, email, country_code, is_company)"
        " VALUES (%s, %s, %s, %s, 'DE', true) RETURNING id::text",
        (f"ERP copy {tag}", f"K{tag.upper()}", f" {vat.lower()} ", f"erp-copy-{tag}@example.com"),
    )
    return str(partner)


def _crm_copy(env: dict[str, str], tag: str, vat: str) -> str:
    [(account,)] = execute(
        env["CRM_DSN"],
        "INSERT INTO public.accounts (name, vat, email, billing_address_country)"
        " VALUES (%s, %s, %s, 'DE') RETURNING id::text",
        (f"CRM copy {tag}", vat, f"crm-copy-{tag}@example.com"),
    )
    return str(account)


def _held(sink: SinkProcess, key: str) -> list[tuple[str, str]]:
    rows = sink.query(
        "SELECT candidate, status FROM {schema}.suspects"
        " WHERE entity = 'customer' AND entity_key = %s",
        (key,),
    )
    return [(str(c), str(s)) for c, s in rows]


def _rows(env: dict[str, str], left: Leftovers) -> dict[str, Any]:
    """The copies and the pair as the databases hold them."""
    [erp_copy] = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT name, ref, crm_account_id::text, email FROM public.res_partner WHERE id = %s::int",
        (left.erp_copy,),
    )
    [crm_copy] = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT name, account_number, email FROM public.accounts WHERE id = %s::uuid",
        (left.crm_copy,),
    )
    [partner] = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT name, ref, crm_account_id::text FROM public.res_partner WHERE id = %s::int",
        (left.partner,),
    )
    [account] = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT name, account_number FROM public.accounts WHERE id = %s::uuid",
        (left.account,),
    )
    return {"erp copy": erp_copy, "crm copy": crm_copy, "partner": partner, "account": account}


def _start(pipeline: Pipeline) -> Pipeline:
    pipeline.erp.tables = ("res_partner",)
    pipeline.crm.tables = ("accounts",)
    pipeline.start()
    wait_for(lambda: not streams_behind(pipeline), 120, "the snapshots read", 0.5)
    return pipeline


@pytest.fixture(scope="module")
def second_pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, Leftovers, dict[str, Any]]]:
    tag = uuid.uuid4().hex[:8]
    vat = valid_vat(random.Random())
    partner, account = _pair(stack_env, tag, vat)
    log_dir: Path = tmp_path_factory.mktemp("held-across-pipelines")
    first = Pipeline(stack_env, log_dir)
    try:
        _start(first)
        erp_copy = _erp_copy(stack_env, tag, vat)
        wait_for(lambda: _held(first.crm_sink, f"erp:{erp_copy}"), BUDGET, "the ERP copy held", 0.5)
        crm_copy = _crm_copy(stack_env, tag, vat)
        wait_for(lambda: _held(first.erp_sink, f"crm:{crm_copy}"), BUDGET, "the CRM copy held", 0.5)
        left = Leftovers(partner, account, erp_copy, crm_copy)
        before = _rows(stack_env, left)
    finally:
        first.cleanup()
    second = Pipeline(stack_env, log_dir)
    try:
        _start(second)

        def held_again() -> bool:
            return bool(
                _held(second.crm_sink, f"erp:{left.erp_copy}")
                and _held(second.erp_sink, f"crm:{left.crm_copy}")
            )

        # On failure the tests below say what differs.
        wait_for(lambda: held_again() or _rows(stack_env, left) != before, BUDGET, "a decision")
        second.settled(timeout=BUDGET, quiet=8.0)
        yield second, left, before
    finally:
        second.cleanup()


def test_a_new_pipeline_holds_each_copy_again_with_its_candidate(
    second_pipeline: tuple[Pipeline, Leftovers, dict[str, Any]],
) -> None:
    pipeline, left, _ = second_pipeline
    assert _held(pipeline.crm_sink, f"erp:{left.erp_copy}") == [(left.account, "held")]
    assert _held(pipeline.erp_sink, f"crm:{left.crm_copy}") == [(left.partner, "held")]


def test_a_new_pipeline_writes_neither_copy_into_the_other(
    second_pipeline: tuple[Pipeline, Leftovers, dict[str, Any]], stack_env: dict[str, str]
) -> None:
    _, left, before = second_pipeline
    assert _rows(stack_env, left) == before
