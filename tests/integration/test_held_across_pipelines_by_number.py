"""A copy held by one pipeline stays held by the next, whatever row its own keys find.

A pipeline's ERP sink holds two CRM copies of a synced pair's customer (both typed with
the pair's VAT id): the pair's account is retired and an operator links the first copy
into the customer, the second stays held. Then that pipeline is gone (its sync-state
schemas dropped, its consumer groups deleted, a new streams app id), and, while none
runs, the CRM's user types the customer's number into the second copy.

A new pipeline over the same databases reads the second copy with no memory of it, and
its customer number now finds the customer (the ERP sink's business-key locator), which
the linked copy is also written into. The decision kept in ``erpcrm_decisions`` must
hold all the same: the copy is held again, nothing of it is written into the customer,
and it is no dead letter (it never contends for the customer's row).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.sink_fixtures import Pipeline, watermarks
from tests.integration.soak_fixtures import dead_letters, valid_vat
from tests.integration.test_duplicates import _sink_env, _suspects_cli
from tests.integration.test_held_across_pipelines import _crm_copy, _held, _pair, _start

pytestmark = pytest.mark.integration

BUDGET: Final = 240.0


@dataclass(frozen=True, slots=True)
class Copies:
    """A pair's ERP customer (and its number) and the two CRM copies of it (ids as text)."""

    partner: str
    number: str
    linked: str
    held: str


def _partner(env: dict[str, str], partner: str) -> tuple[Any, ...]:
    [row] = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT name, ref, vat, email, active, crm_account_id::text"
        " FROM public.res_partner WHERE id = %s::int",
        (partner,),
    )
    return tuple(row)


def _decision(env: dict[str, str], key: str) -> tuple[str, str] | None:
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT candidate, status FROM erpcrm_decisions.suspects"
        " WHERE entity = 'customer' AND entity_key = %s",
        (key,),
    )
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def _first_pipeline(env: dict[str, str], log_dir: Path) -> Copies:
    """Two CRM copies held by one pipeline, the first linked by an operator; it is gone."""
    tag = uuid.uuid4().hex[:8]
    vat = valid_vat(random.Random())
    partner, account = _pair(env, tag, vat)
    [(number,)] = execute(
        env["ERP_ADMIN_DSN"], "SELECT ref FROM public.res_partner WHERE id = %s::int", (partner,)
    )
    first = Pipeline(env, log_dir)
    try:
        _start(first)
        sink = first.erp_sink
        linked, held = _crm_copy(env, f"{tag}a", vat), _crm_copy(env, f"{tag}b", vat)
        for copy in (linked, held):
            found = wait_for(partial(_held, sink, f"crm:{copy}"), BUDGET, "a copy held", 0.5)
            assert found == [(partner, "held")], found
        # The pair's account retired (its customer archived with it), so the customer
        # may take the first copy: an operator links it (written into the customer).
        execute(
            env["CRM_DSN"], "UPDATE public.accounts SET deleted = true WHERE id = %s", (account,)
        )
        wait_for(lambda: not _partner(env, partner)[4], BUDGET, "the customer archived", 0.5)
        cli_env = _sink_env(sink, env)
        listed = json.loads(_suspects_cli(cli_env, "list", "--target", "erp", "--json").stdout)
        ids = {s["entity_key"]: str(s["id"]) for s in listed}
        done = _suspects_cli(cli_env, "link", ids[f"crm:{linked}"], "--target", "erp")
        assert done.returncode == 0, (done.stdout, done.stderr)
        wait_for(
            lambda: _held(sink, f"crm:{linked}") == [(partner, "linked")],
            BUDGET,
            "the first copy linked",
            0.5,
        )
        first.settled(timeout=BUDGET)
        assert _held(sink, f"crm:{held}") == [(partner, "held")]
    finally:
        first.cleanup()
    return Copies(partner, str(number), linked, held)


@pytest.fixture(scope="module")
def second_pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, Copies, tuple[Any, ...], list[Any]]]:
    log_dir: Path = tmp_path_factory.mktemp("held-by-number")
    copies = _first_pipeline(stack_env, log_dir)
    # No pipeline runs: the CRM's user gives the held copy the customer's number.
    execute(
        stack_env["CRM_DSN"],
        "UPDATE public.accounts SET account_number = %s WHERE id = %s",
        (copies.number, copies.held),
    )
    before = _partner(stack_env, copies.partner)
    letters_from = watermarks(stack_env["KAFKA_BOOTSTRAP"], ("dlq.sinks.erp",))
    second = Pipeline(stack_env, log_dir)
    try:
        _start(second)
        key = f"crm:{copies.held}"
        wait_for(
            lambda: _held(second.erp_sink, key) or _partner(stack_env, copies.partner) != before,
            BUDGET,
            "the held copy decided",
            0.5,
        )
        second.settled(timeout=BUDGET, quiet=8.0)
        letters = dead_letters(stack_env["KAFKA_BOOTSTRAP"], ("dlq.sinks.erp",), letters_from)
        yield second, copies, before, letters
    finally:
        second.cleanup()


def test_a_new_pipeline_holds_the_copy_its_customer_number_would_find_again(
    second_pipeline: tuple[Pipeline, Copies, tuple[Any, ...], list[Any]],
    stack_env: dict[str, str],
) -> None:
    pipeline, copies, _, _ = second_pipeline
    key = f"crm:{copies.held}"
    assert _held(pipeline.erp_sink, key) == [(copies.partner, "held")]
    assert _decision(stack_env, key) == (copies.partner, "held")


def test_a_new_pipeline_writes_nothing_of_the_held_copy_into_the_customer(
    second_pipeline: tuple[Pipeline, Copies, tuple[Any, ...], list[Any]],
    stack_env: dict[str, str],
) -> None:
    _, copies, before, _ = second_pipeline
    [(name, email)] = execute(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT name, email FROM public.accounts WHERE id = %s::uuid",
        (copies.held,),
    )
    after = _partner(stack_env, copies.partner)
    assert name not in after, (before, after)
    assert email not in after, (before, after)
    assert after[1] == copies.number


def test_a_new_pipeline_dead_letters_no_change_of_the_held_copy(
    second_pipeline: tuple[Pipeline, Copies, tuple[Any, ...], list[Any]],
) -> None:
    _, copies, _, letters = second_pipeline
    ours = [x for x in letters if x.key is not None and x.key.decode() == f"crm:{copies.held}"]
    assert ours == [], [x.headers for x in ours]
