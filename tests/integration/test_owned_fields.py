"""A CRM edit of a field the ERP owns but the ERP sink never writes: the customer number.

What this proves (DESIGN.md §5.4, 5.5; README "Both systems converge"): the customer
number (ERP ``res_partner.ref``, CRM ``accounts.account_number``) is the ERP's, given by
its sequence and never written by the ERP sink. A CRM user changing it (to a mark of
their own, to a number in the ERP's format) or blanking it is refused like an edit of the
VAT id: the ERP sink records the conflict (reason ``owner``, the ERP the winner), the
ERP's number flows back to the account, and the exchange stops there (no echo). The
number is also how accounts are matched: the pair stays linked, and nothing is made
twice on either side.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from typing import Final

import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.convergence_fixtures import ValueMaker, create_pairs
from tests.integration.sink_fixtures import Pipeline
from tests.integration.soak_fixtures import (
    Pair,
    dead_workers,
    pair_stamps,
    pipeline_fixture,
    settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REVERT_SECONDS: Final = 120.0

pipeline = pipeline_fixture("owned")


def _number(env: dict[str, str], pair: Pair) -> str | None:
    rows = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT account_number FROM public.accounts WHERE id = %s",
        (pair.account,),
    )
    return None if rows[0][0] is None else str(rows[0][0])


def _edit_number(env: dict[str, str], pair: Pair, value: str | None) -> None:
    execute(
        env["CRM_DSN"],
        "UPDATE public.accounts SET account_number = %s WHERE id = %s",
        (value, pair.account),
    )


def _wait_reverted(pipeline: Pipeline, env: dict[str, str], pair: Pair, edited: str) -> None:
    def back() -> bool:
        assert not (dead := dead_workers(pipeline)), "\n".join(dead)
        return _number(env, pair) == pair.ref

    try:
        wait_for(back, REVERT_SECONDS, f"the ERP's number back in account {pair.account}")
    except AssertionError:
        raise AssertionError(
            f"account {pair.account} keeps {_number(env, pair)!r} (edited to {edited!r}),"
            f" the ERP holds {pair.ref!r}"
        ) from None


def _owner_conflicts(pipeline: Pipeline, pair: Pair) -> list[tuple[str, str, str, str]]:
    rows = pipeline.erp_sink.query(
        "SELECT erp_value, coalesce(crm_value, '<null>'), winner, reason FROM {schema}.conflicts"
        " WHERE entity = 'customer' AND entity_key = %s AND field = 'customer_number'"
        " ORDER BY id",
        (f"crm:{pair.account}",),
    )
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def _records(env: dict[str, str], pairs: Sequence[Pair], tag: str) -> None:
    """Each pair is one linked record on each side, and nothing else of the run exists
    (found by the run's tag, which ends every name :func:`create_pairs` gives)."""
    pattern = f" {tag}in[0-9]+$"
    partners = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT id, crm_account_id::text, ref FROM public.res_partner"
        " WHERE name ~ %s OR crm_account_id = ANY(%s::uuid[]) ORDER BY id",
        (pattern, [p.account for p in pairs]),
    )
    expected = sorted((p.partner, p.account, p.ref) for p in pairs)
    assert sorted((int(i), str(a), str(r)) for i, a, r in partners) == expected
    accounts = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT id::text, account_number, deleted FROM public.accounts WHERE name ~ %s",
        (pattern,),
    )
    assert sorted(accounts) == sorted((p.account, p.ref, False) for p in pairs)


def test_crm_edits_of_the_customer_number_are_refused_and_reverted(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """A mark of the CRM user's own, a number like the ERP's, and a blanked number:
    each refused (an ``owner`` conflict), the ERP's number back in the account, the pair
    still linked, nothing made twice, and no echo once it is back."""
    rng = random.Random(uuid.uuid4().int)  # VAT ids of an earlier run would match
    values = ValueMaker(uuid.uuid4().hex[:4])
    pairs, _ = create_pairs(pipeline, stack_env, values, rng, 3)
    settled(pipeline)
    own, numbered, blanked = pairs
    edits: list[tuple[Pair, str | None]] = [
        (own, f"X-{values.run_tag}"),
        (numbered, f"C9{rng.randrange(10**7):07d}"),
        (blanked, None),
    ]
    for pair, value in edits:
        _edit_number(stack_env, pair, value)
    for pair, value in edits:
        _wait_reverted(pipeline, stack_env, pair, str(value))
    settled(pipeline)

    for pair, value in edits:
        shown = "<null>" if value is None else value
        assert _owner_conflicts(pipeline, pair) == [(pair.ref, shown, "erp", "owner")]
    erp_numbers = execute(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT id, ref FROM public.res_partner WHERE id = ANY(%s)",
        ([p.partner for p in pairs],),
    )
    assert sorted(erp_numbers) == sorted((p.partner, p.ref) for p in pairs)
    _records(stack_env, pairs, values.run_tag)
    suspects = pipeline.erp_sink.query(
        "SELECT entity_key FROM {schema}.suspects WHERE entity_key = ANY(%s)",
        ([f"crm:{p.account}" for p in pairs],),
    )
    assert suspects == []

    # No echo: once the number is back, neither side writes the rows again.
    before = pair_stamps(stack_env, pairs)
    time.sleep(8)
    settled(pipeline)
    assert pair_stamps(stack_env, pairs) == before
    for pair, _value in edits:
        assert len(_owner_conflicts(pipeline, pair)) == 1
