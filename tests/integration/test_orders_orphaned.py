"""A won quote makes one ERP order, ever: an order that lost its link is found, not made again.

On the real stack with both captures, the streams worker and both sinks running. The
ERP sink remembers, in its sync state, the order it made for each won quote. An ERP
user (or a script) who clears the order's ``crm_quote_id`` does not detach it: the
quote's next change is written into that order, its link put back, and the order
announced, so the quote's ``erp_order_name`` converges to the ERP's (renamed
meanwhile). An order deleted in the ERP is not made again behind anyone's back: the
quote's next change is a ``target_row_gone`` dead letter naming the order.
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal

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
from tests.integration.test_link_columns import _erp_id, _quote_states

pytestmark = pytest.mark.integration

WAIT = 90.0


def _orders_of(env: dict[str, str], partner: str) -> list[tuple[int, str | None]]:
    """Every ERP order of ``partner``: ``(id, crm_quote_id)``."""
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT id, crm_quote_id::text FROM public.sale_order WHERE partner_id = %s ORDER BY id",
        (int(partner),),
    )
    return [(int(r[0]), r[1]) for r in rows]


def _gone_letters(pipeline: Pipeline) -> float:
    """The ERP sink's dead letters of reason ``target_row_gone``."""
    return sum(
        value
        for (name, labels), value in pipeline.erp_sink.metrics().items()
        if name == "erpcrm_sink_dead_letters_total" and ("reason", "target_row_gone") in labels
    )


def _validity(env: dict[str, str], order: int) -> date | None:
    [(value,)] = execute(
        env["ERP_ADMIN_DSN"], "SELECT validity_date FROM public.sale_order WHERE id = %s", (order,)
    )
    return value  # type: ignore[no-any-return]


def _won(env: dict[str, str]) -> tuple[str, str, int, str]:
    """A quote won for a new customer, its order made: ``(partner, quote, order, name)``."""
    partner, account = new_customer(env)
    sku = new_product(env, "10.00")[2]
    quote, _ = won_quote(env, account, [(sku, Decimal(10))], name=f"Orphan {uuid.uuid4().hex[:8]}")
    order = wait_for(lambda: _erp_id(env, "order", quote), WAIT, "the order")
    name = wait_for(lambda: _quote_states(env, quote), WAIT, "the order's name in the CRM")
    return partner, quote, order, name


def test_an_order_whose_quote_link_was_cleared_is_the_quotes_order_still(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    partner, quote, order, name = _won(env)
    pipeline.settled()

    # An ERP user clears the order's link and renames the order: the quote hears of
    # neither (the order no longer names it).
    renamed = f"{name}-R"
    execute(
        env["ERP_DSN"],
        "UPDATE public.sale_order SET crm_quote_id = NULL, name = %s WHERE id = %s",
        (renamed, order),
    )
    pipeline.settled()
    assert _orders_of(env, partner) == [(order, None)]

    # The quote changes: written into its order, never a second one.
    expires = date(2027, 4, 30)
    execute(
        env["CRM_DSN"],
        "UPDATE public.aos_quotes SET expiration = %s WHERE id = %s",
        (expires, quote),
    )
    wait_for(
        lambda: _validity(env, order) == expires or len(_orders_of(env, partner)) > 1,
        WAIT,
        "the ERP sink's decision",
    )
    pipeline.settled()
    assert _orders_of(env, partner) == [(order, quote)], "a second order, or the link not back"
    assert _validity(env, order) == expires
    # The quote converges on the ERP's order name.
    wait_for(lambda: _quote_states(env, quote) == renamed, WAIT, "the renamed order in the CRM")


def test_a_quote_whose_order_was_deleted_in_the_erp_is_not_made_again(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    partner, quote, order, _ = _won(env)
    pipeline.settled()
    gone_before = _gone_letters(pipeline)

    execute(env["ERP_DSN"], "DELETE FROM public.sale_order WHERE id = %s", (order,))
    execute(
        env["CRM_DSN"],
        "UPDATE public.aos_quotes SET expiration = %s WHERE id = %s",
        (date(2027, 5, 31), quote),
    )
    wait_for(
        lambda: _gone_letters(pipeline) > gone_before or _orders_of(env, partner),
        WAIT,
        "the ERP sink's decision",
    )
    pipeline.settled()
    assert _orders_of(env, partner) == [], "the deleted order made again"
    assert _gone_letters(pipeline) == gone_before + 1
