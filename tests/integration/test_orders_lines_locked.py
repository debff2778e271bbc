"""A won quote's lines edited after the ERP created its order: dead-lettered, never dropped.

On the real stack with both captures, the streams worker and both sinks running. The
ERP sink writes an order's lines once, with the order it creates; from then on the ERP
owns them. A CRM user who then edits, adds or deletes a line of the quote changes
nothing in the ERP's lines, and that must be visible:

- a header-only change of the won quote (its expiry date) is applied, with no letter;
- a line edited, a line added and a line deleted, with a header change, in one CRM
  transaction: the header change is applied, the ERP's lines stay as they were, and one
  dead letter (``order_lines_locked``) in ``dlq.sinks.erp`` names the order, its ERP
  row and each line that differs; the sink counts it by reason and logs a warning;
- a later header-only change is applied with no second letter: the letter was for the
  edit, not for every change after it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.operator_fixtures import (
    erpcrm_json,
    new_customer,
    new_product,
    operator_env,  # noqa: F401 - fixture env
    operator_pipeline,  # noqa: F401 - fixture pipeline
    won_quote,
)
from tests.integration.sink_fixtures import Pipeline

pytestmark = pytest.mark.integration

WAIT = 90.0
REASON = "order_lines_locked"


def _order(env: dict[str, str], quote: str) -> tuple[Any, ...] | None:
    """The ERP order of ``quote``: ``(id, validity_date)``, or None."""
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT id, validity_date FROM public.sale_order WHERE crm_quote_id = %s",
        (quote,),
    )
    return rows[0] if rows else None


def _erp_lines(env: dict[str, str], order: int) -> list[tuple[Any, ...]]:
    return execute(
        env["ERP_ADMIN_DSN"],
        "SELECT p.default_code, l.product_uom_qty FROM public.sale_order_line l"
        " JOIN public.product_product p ON p.id = l.product_id"
        " WHERE l.order_id = %s ORDER BY l.sequence",
        (order,),
    )


def _expire(env: dict[str, str], quote: str, day: date) -> None:
    execute(
        env["CRM_DSN"], "UPDATE public.aos_quotes SET expiration = %s WHERE id = %s", (day, quote)
    )


def _validity(env: dict[str, str], quote: str, day: date) -> bool:
    found = _order(env, quote)
    return found is not None and found[1] == day


def _letters(env: dict[str, str], quote: str, since: str) -> list[dict[str, Any]]:
    listed = erpcrm_json(
        env, "dlq", "list", "--stage", "sinks.erp", "--reason", REASON, "--since", since, "--json"
    )
    return [line for line in listed if line["entity_key"] == f"crm:{quote}"]


def _locked_total(pipeline: Pipeline) -> float:
    return sum(
        value
        for (name, labels), value in pipeline.erp_sink.metrics().items()
        if name == "erpcrm_sink_dead_letters_total" and ("reason", REASON) in labels
    )


def test_a_line_edit_of_a_won_quote_is_dead_lettered_while_its_header_applies(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    started = datetime.now(UTC).isoformat()
    locked_before = _locked_total(pipeline)
    _, account = new_customer(env)
    skus = [new_product(env, "10.00")[2] for _ in range(3)]
    quote, (first, second) = won_quote(
        env, account, [(sku, Decimal(10)) for sku in skus[:2]], name="Locked lines quote"
    )
    order = wait_for(lambda: _order(env, quote), WAIT, "the ERP order")[0]
    assert _erp_lines(env, order) == [(skus[0], Decimal("1.000")), (skus[1], Decimal("1.000"))]

    # A header-only change: applied, no letter.
    _expire(env, quote, date(2027, 1, 31))
    wait_for(lambda: _validity(env, quote, date(2027, 1, 31)), WAIT, "the header change")

    # Lines edited, added and deleted with a header change, in one CRM transaction.
    with psycopg.connect(env["CRM_DSN"]) as conn, conn.transaction():
        conn.execute(
            "UPDATE public.aos_products_quotes SET product_qty = 5, product_total_price = 50"
            " WHERE id = %s",
            (first,),
        )
        conn.execute("DELETE FROM public.aos_products_quotes WHERE id = %s", (second,))
        ((added,),) = conn.execute(
            "INSERT INTO public.aos_products_quotes (parent_id, number, name, part_number,"
            " product_qty, product_list_price, product_unit_price, product_total_price)"
            " VALUES (%s, 3, 'Line 3', %s, 2, 10, 10, 20) RETURNING id::text",
            (quote, skus[2]),
        ).fetchall()
        conn.execute(
            "UPDATE public.aos_quotes SET expiration = %s WHERE id = %s", (date(2027, 2, 28), quote)
        )
    wait_for(lambda: _validity(env, quote, date(2027, 2, 28)), WAIT, "the header applied")
    [letter] = wait_for(lambda: _letters(env, quote, started), WAIT, "the lines' dead letter")
    assert letter["entity"] == "sales_order"
    assert letter["origin"].startswith("canonical.sales_order[")
    shown = erpcrm_json(env, "dlq", "show", letter["id"])
    headers = shown["headers"]
    assert headers["erpcrm.error.reason"] == REASON
    assert headers["erpcrm.error.class"] == "LinesLockedError"
    assert headers["erpcrm.context.order"] == quote
    assert headers["erpcrm.context.target_row"].startswith(f"public.sale_order id={order} name=")
    assert headers["erpcrm.context.lines_changed"] == first
    assert headers["erpcrm.context.lines_removed"] == second
    assert headers["erpcrm.context.lines_added"] == str(added)
    assert "quantity '1' -> '5'" in headers["erpcrm.error.message"]
    assert shown["value"]["crm_id"] == quote
    # The ERP's lines are its own: untouched.
    assert _erp_lines(env, order) == [(skus[0], Decimal("1.000")), (skus[1], Decimal("1.000"))]
    assert _locked_total(pipeline) == locked_before + 1
    log = pipeline.erp_sink.log_path.read_text(errors="replace")
    assert any(
        "WARNING" in line and REASON in line and f"crm:{quote}" in line for line in log.splitlines()
    )

    # A later header-only change: applied, no second letter.
    _expire(env, quote, date(2027, 3, 31))
    wait_for(lambda: _validity(env, quote, date(2027, 3, 31)), WAIT, "the later header change")
    pipeline.settled(timeout=120)
    assert len(_letters(env, quote, started)) == 1
    assert _locked_total(pipeline) == locked_before + 1
