"""A link is one to one: a second source record never takes a row another one holds.

On the real stack with both captures, the streams worker and both sinks running: an ERP
customer ``B1`` is created and synced (its CRM account ``A`` made, the pair linked). In
a later transaction, and so a later sink batch, a second ERP customer ``B2`` is given
``A`` as its link column (``crm_account_id``), as a script or an import would. The sink
alone cannot tell (its batch holds ``B2`` only), so the streams crosswalk must: ``B2``
is not linked to ``A`` and its changes are never written into ``A``; it is held as a
suspected duplicate of ``A`` (evidence ``erp_column=<A>``), counted in
``erpcrm_streams_link_conflicts_total``. Edited afterwards, ``B1`` still owns ``A``:
the account never flips from one customer to the other. (The ERP keeps its link column
unique, so the script clears it on ``B1`` first: that alone unlinks nothing.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.sink_fixtures import Pipeline, demo_pipeline

pytestmark = pytest.mark.integration

WAIT = 60.0


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    log_dir: Path = tmp_path_factory.mktemp("one_to_one")
    with demo_pipeline(stack_env, log_dir) as running:
        yield running


def _new_partner(env: dict[str, str], tag: str, number: str, name: str) -> int:
    rows = execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, ref, email, country_code, is_company) "
        "VALUES (%s, %s, %s, 'DE', true) RETURNING id",
        (f"{name} {tag}", number, f"{name.lower()}-{tag}@example.com"),
    )
    return int(rows[0][0])


def _account(env: dict[str, str], account: str) -> tuple[Any, ...]:
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


def _suspect(pipeline: Pipeline, key: str) -> tuple[str, str, str] | None:
    rows = pipeline.crm_sink.query(
        "SELECT candidate, coalesce(evidence, ''), status FROM {schema}.suspects "
        "WHERE entity = 'customer' AND entity_key = %s",
        (key,),
    )
    return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None


def test_a_second_customer_given_a_linked_account_in_a_later_batch_never_takes_it(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    first_number, second_number = f"L1-{tag}", f"L2-{tag}"
    first = _new_partner(stack_env, tag, first_number, "First")
    account = wait_for(
        lambda: _linked_account(stack_env, first), WAIT, f"erp:{first} synced and linked back"
    )
    assert account is not None
    assert _account(stack_env, account)[:2] == (f"First {tag}", first_number)
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
            _suspect(pipeline, f"erp:{second}") is not None
            or _account(stack_env, account)[1] != first_number
        ),
        WAIT,
        f"erp:{second} decided by the CRM sink",
    )
    pipeline.settled()
    assert _account(stack_env, account)[:2] == (f"First {tag}", first_number), (
        "the second customer was written into the first one's account"
    )
    held = _suspect(pipeline, f"erp:{second}")
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
        lambda: _account(stack_env, account)[2] == f"first-again-{tag}@example.com",
        WAIT,
        "the first customer's edit applied to its account",
    )
    pipeline.settled()
    assert _account(stack_env, account) == (
        f"First {tag}",
        first_number,
        f"first-again-{tag}@example.com",
    )
    assert _suspect(pipeline, f"erp:{second}") == held
