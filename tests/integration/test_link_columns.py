"""The ERP's link columns of contacts and orders never put one record into another's row.

On the real stack with both captures, the streams worker and both sinks running. The
ERP keeps the CRM id of each contact person (``res_partner.crm_contact_id``) and of
each order made from a won quote (``sale_order.crm_quote_id``), each unique. A script
(or a user) that moves such an id from its row to another one (clears it on the first,
then sets it on the second) tells the sync that the second row is that record. The
second row is another record's, though: each sink remembers which source record every
row was written for (its row owner), and an event of another record that resolves to
a row whose owner is live is dead-lettered (``target_row_taken``), never written.
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.operator_fixtures import (
    new_customer,
    new_product,
    operator_env,  # noqa: F401 - fixture env
    operator_pipeline,  # noqa: F401 - fixture pipeline
    won_quote,
)
from tests.integration.sink_fixtures import Pipeline

pytestmark = pytest.mark.integration

WAIT = 90.0


_ERP_ID = {
    "order": "SELECT id FROM public.sale_order WHERE crm_quote_id = %s",
    "person": "SELECT id FROM public.res_partner WHERE crm_contact_id = %s",
}
"""The ERP row holding a CRM id, by kind (the queries are fixed text)."""

_ERP_ROW = {
    "order": "SELECT name, partner_id, validity_date, crm_quote_id::text FROM public.sale_order "
    "WHERE id = %s",
    "person": "SELECT name, parent_id, email, active, crm_contact_id::text "
    "FROM public.res_partner WHERE id = %s",
}
"""What the tests compare of an ERP row, by kind."""


def _erp_id(env: dict[str, str], kind: str, crm_id: str) -> int | None:
    rows = execute(env["ERP_ADMIN_DSN"], _ERP_ID[kind], (crm_id,))
    return int(rows[0][0]) if rows else None


def _erp_row(env: dict[str, str], kind: str, erp_id: int) -> tuple[Any, ...]:
    [row] = execute(env["ERP_ADMIN_DSN"], _ERP_ROW[kind], (erp_id,))
    return tuple(row)


def _quote_states(env: dict[str, str], quote: str) -> str | None:
    [(name,)] = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT erp_order_name FROM public.aos_quotes WHERE id = %s::uuid",
        (quote,),
    )
    return None if name is None else str(name)


def _taken(pipeline: Pipeline, reason: str | None = None) -> tuple[float, float]:
    """Dead letters of the CRM and the ERP sink (of one reason; None: any)."""
    return tuple(  # type: ignore[return-value]
        sum(
            value
            for (name, labels), value in sink.metrics().items()
            if name == "erpcrm_sink_dead_letters_total"
            and (reason is None or dict(labels).get("reason") == reason)
        )
        for sink in (pipeline.crm_sink, pipeline.erp_sink)
    )


def test_a_quote_id_moved_onto_another_order_writes_neither_into_the_others_row(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    _, first_account = new_customer(env)
    second_partner, second_account = new_customer(env)
    sku = new_product(env, "10.00")[2]
    tag = uuid.uuid4().hex[:8]
    first_quote, _ = won_quote(env, first_account, [(sku, Decimal(10))], name=f"First {tag}")
    second_quote, _ = won_quote(env, second_account, [(sku, Decimal(10))], name=f"Second {tag}")
    first = wait_for(lambda: _erp_id(env, "order", first_quote), WAIT, "the first order")
    second = wait_for(lambda: _erp_id(env, "order", second_quote), WAIT, "the second order")
    first_name = wait_for(lambda: _quote_states(env, first_quote), WAIT, "first order's name")
    wait_for(lambda: _quote_states(env, second_quote), WAIT, "the second order's name")
    pipeline.settled()
    before = _erp_row(env, "order", second)
    assert before[1] == int(second_partner)
    taken_before = _taken(pipeline)
    by_reason = _taken(pipeline, "target_row_taken")

    # A script moves the first quote's id onto the second order (unique: cleared first).
    execute(
        env["ERP_DSN"], "UPDATE public.sale_order SET crm_quote_id = NULL WHERE id = %s", (first,)
    )
    execute(
        env["ERP_DSN"],
        "UPDATE public.sale_order SET crm_quote_id = %s WHERE id = %s",
        (first_quote, second),
    )
    wait_for(
        lambda: (
            _taken(pipeline)[0] > taken_before[0] or _quote_states(env, first_quote) != first_name
        ),
        WAIT,
        "the CRM sink's decision",
    )
    pipeline.settled()
    assert _quote_states(env, first_quote) == first_name, "the second order written into it"
    assert _taken(pipeline)[0] == taken_before[0] + 1

    # The CRM user changes the first quote: its ERP row is the second order now.
    execute(
        env["CRM_DSN"],
        "UPDATE public.aos_quotes SET expiration = %s WHERE id = %s",
        (date(2027, 3, 31), first_quote),
    )
    wait_for(
        lambda: (
            _taken(pipeline)[1] > taken_before[1] or _erp_row(env, "order", second)[2] is not None
        ),
        WAIT,
        "the ERP sink's decision",
    )
    pipeline.settled()
    assert _erp_row(env, "order", second) == (before[0], before[1], before[2], first_quote), (
        "the first quote written into the second order"
    )
    assert _taken(pipeline)[1] == taken_before[1] + 1
    assert _taken(pipeline, "target_row_taken") == (by_reason[0] + 1, by_reason[1] + 1)


def _contact(env: dict[str, str], account: str, last_name: str) -> str:
    ((contact,),) = execute(
        env["CRM_DSN"],
        "INSERT INTO public.contacts (account_id, first_name, last_name, email)"
        " VALUES (%s, 'Kim', %s, %s) RETURNING id::text",
        (account, last_name, f"{last_name.lower()}@example.com"),
    )
    return str(contact)


def test_a_contact_id_moved_onto_another_contact_person_is_not_written_into_it(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    first_partner, first_account = new_customer(env)
    second_partner, second_account = new_customer(env)
    tag = uuid.uuid4().hex[:8]
    first = _contact(env, first_account, f"First{tag}")
    second = _contact(env, second_account, f"Second{tag}")
    first_person = wait_for(lambda: _erp_id(env, "person", first), WAIT, "the first contact person")
    second_person = wait_for(
        lambda: _erp_id(env, "person", second), WAIT, "the second contact person"
    )
    pipeline.settled()
    before = _erp_row(env, "person", second_person)
    assert before[1] == int(second_partner)
    assert before[0] == f"Kim Second{tag}"
    taken_before = _taken(pipeline, "target_row_taken")
    letters_before = _taken(pipeline)

    # A script moves the first contact's id onto the second contact person (unique:
    # cleared first). ERP contact persons are not captured: nothing flows from it.
    execute(
        env["ERP_DSN"],
        "UPDATE public.res_partner SET crm_contact_id = NULL WHERE id = %s",
        (first_person,),
    )
    execute(
        env["ERP_DSN"],
        "UPDATE public.res_partner SET crm_contact_id = %s WHERE id = %s",
        (first, second_person),
    )

    # The CRM user changes the first contact: its ERP row is the second one's now.
    execute(
        env["CRM_DSN"],
        "UPDATE public.contacts SET last_name = %s, email = %s WHERE id = %s",
        (f"Moved{tag}", f"moved{tag}@example.com", first),
    )
    wait_for(
        lambda: (
            _taken(pipeline)[1] > letters_before[1]
            or _erp_row(env, "person", second_person)[0] != before[0]
        ),
        WAIT,
        "the ERP sink's decision",
    )
    pipeline.settled()
    after = _erp_row(env, "person", second_person)
    assert after == (before[0], before[1], before[2], before[3], first), (
        "the first contact written into the second contact person (or moved under its company)"
    )
    assert after[1] != int(first_partner)
    assert _taken(pipeline, "target_row_taken")[1] == taken_before[1] + 1
    assert _taken(pipeline)[1] == letters_before[1] + 1

    # And its delete does not archive the second contact's person either.
    execute(env["CRM_DSN"], "UPDATE public.contacts SET deleted = true WHERE id = %s", (first,))
    wait_for(
        lambda: (
            _taken(pipeline, "target_row_taken")[1] > taken_before[1] + 1
            or _erp_row(env, "person", second_person)[3] is not True
        ),
        WAIT,
        "the ERP sink's decision on the delete",
    )
    pipeline.settled()
    assert _erp_row(env, "person", second_person) == after, "the second contact person archived"
    assert _taken(pipeline, "target_row_taken")[1] == taken_before[1] + 2
