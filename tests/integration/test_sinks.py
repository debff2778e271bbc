"""The sinks, end to end on the real stack: captures, streams and both sinks running.

Each test changes one system the way a user would and waits for the other system to
show it; the module's pipeline is started once (its snapshot links the demo data).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from erpcrm.stack import LocalStack
from erpcrm.workload import run_workload
from schemas.topics import CANONICAL_INVENTORY
from tests.integration.cdc_fixtures import (
    TopicReader,
    execute,
    wait_for,
    wait_while_progressing,
)
from tests.integration.sink_fixtures import (
    Pipeline,
    SinkProcess,
    demo_pipeline,
    newest_records,
    sink_source,
    watermarks,
)
from tests.integration.soak_fixtures import dead_letters

pytestmark = pytest.mark.integration

SETTLE = 60.0
SIGKILL_OPERATIONS = 1500
"""The SIGKILL test's workload (25 s at 60 operations/s on an idle machine)."""
SIGKILL_MARKS = (100, 200, 300, 400)
"""Committed operations after which a sink is killed (the CRM's first, then in turn)."""
STALL_SECONDS = 60.0
"""The workload committing nothing for this long is stuck, not slow."""


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    log_dir: Path = tmp_path_factory.mktemp("sinks")
    with demo_pipeline(stack_env, log_dir) as running:
        yield running


def _one(dsn: str, query: str, params: Any = None) -> Any:
    rows = execute(dsn, query, params)
    return rows[0][0] if rows else None


def _eventually(
    dsn: str, query: str, params: Any, expected: Any, what: str, timeout: float = SETTLE
) -> Any:
    def check() -> bool:
        return bool(_one(dsn, query, params) == expected)

    try:
        wait_for(check, timeout, what, interval=0.2)
    except AssertionError:
        raise AssertionError(f"{what}: {_one(dsn, query, params)!r} != {expected!r}") from None


def _linked_customer(env: dict[str, str]) -> tuple[int, str]:
    """An ERP partner and its CRM account that the pipeline linked."""
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT id, crm_account_id::text FROM public.res_partner WHERE crm_account_id IS NOT NULL "
        "AND parent_id IS NULL AND active ORDER BY random() LIMIT 1",
    )
    assert rows, "no linked customer"
    return int(rows[0][0]), str(rows[0][1])


# ------------------------------------------------------------------------- the flows


def test_new_crm_account_becomes_erp_customer_and_its_number_flows_back(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    name = f"Sinktest {uuid.uuid4().hex[:8]} GmbH"
    account = _one(
        stack_env["CRM_DSN"],
        "INSERT INTO public.accounts (name, email, phone_office, billing_address_country, industry)"
        " VALUES (%s, %s, '+49 30 1234567', 'DE', 'Retail') RETURNING id::text",
        (name, f"buyer-{uuid.uuid4().hex[:8]}@example.com"),
    )
    _eventually(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT name FROM public.res_partner WHERE crm_account_id = %s",
        (account,),
        name,
        "the ERP customer made from the CRM account",
    )
    number = _one(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT ref FROM public.res_partner WHERE crm_account_id = %s",
        (account,),
    )
    assert number
    assert number.startswith("C")
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT account_number FROM public.accounts WHERE id = %s",
        (account,),
        number,
        "the ERP customer number on the CRM account",
    )
    assert (
        _one(
            stack_env["ERP_ADMIN_DSN"],
            "SELECT count(*) FROM public.res_partner WHERE crm_account_id = %s OR name = %s",
            (account, name),
        )
        == 1
    )


def test_crm_contact_becomes_an_erp_contact_person_of_its_customer(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    partner, account = _linked_customer(stack_env)
    last = f"Contact{uuid.uuid4().hex[:6]}"
    contact = _one(
        stack_env["CRM_DSN"],
        "INSERT INTO public.contacts (account_id, first_name, last_name, title, email)"
        " VALUES (%s, 'Ada', %s, 'Buyer', 'ada@example.com') RETURNING id::text",
        (account, last),
    )
    erp = stack_env["ERP_ADMIN_DSN"]
    _eventually(
        erp,
        "SELECT name || '|' || parent_id || '|' || function || '|' || email || '|' ||"
        " is_company || '|' || coalesce(ref, '-') FROM public.res_partner"
        " WHERE crm_contact_id = %s",
        (contact,),
        f"Ada {last}|{partner}|Buyer|ada@example.com|false|-",
        "the ERP contact person",
    )
    execute(
        stack_env["CRM_DSN"], "UPDATE public.contacts SET deleted = true WHERE id = %s", (contact,)
    )
    _eventually(
        erp,
        "SELECT active FROM public.res_partner WHERE crm_contact_id = %s",
        (contact,),
        False,
        "the contact person archived",
    )


def test_erp_customer_change_reaches_the_crm_and_a_crm_only_field_stays(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    partner, account = _linked_customer(stack_env)
    industry = f"Industry {uuid.uuid4().hex[:6]}"
    execute(
        stack_env["CRM_ADMIN_DSN"],
        "UPDATE public.accounts SET industry = %s WHERE id = %s",
        (industry, account),
    )
    email = f"erp-{uuid.uuid4().hex[:8]}@example.com"
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET email = %s WHERE id = %s",
        (email, partner),
    )
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT email FROM public.accounts WHERE id = %s",
        (account,),
        email,
        "the ERP e-mail in the CRM",
    )
    assert (
        _one(
            stack_env["CRM_ADMIN_DSN"],
            "SELECT industry FROM public.accounts WHERE id = %s",
            (account,),
        )
        == industry
    )


def test_archiving_goes_both_ways(pipeline: Pipeline, stack_env: dict[str, str]) -> None:
    """An archived ERP customer deletes its account; a deleted account archives its customer."""
    partner, account = _linked_customer(stack_env)
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET active = false WHERE id = %s",
        (partner,),
    )
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT deleted FROM public.accounts WHERE id = %s",
        (account,),
        True,
        "the archived customer's account deleted in the CRM",
    )
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET active = true WHERE id = %s",
        (partner,),
    )
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT deleted FROM public.accounts WHERE id = %s",
        (account,),
        False,
        "the reactivated customer's account live again",
    )
    other_partner, other_account = _linked_customer(stack_env)
    while other_partner == partner:
        other_partner, other_account = _linked_customer(stack_env)
    execute(
        stack_env["CRM_DSN"],
        "UPDATE public.accounts SET deleted = true WHERE id = %s",
        (other_account,),
    )
    _eventually(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT active FROM public.res_partner WHERE id = %s",
        (other_partner,),
        False,
        "the deleted account's customer archived in the ERP",
    )


def test_won_quote_becomes_an_erp_order_whose_name_flows_back(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    _, account = _linked_customer(stack_env)
    products = execute(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT p.id::text, p.part_number, p.price FROM public.aos_products p "
        "WHERE NOT p.deleted AND p.part_number LIKE 'SKU-%' ORDER BY p.part_number LIMIT 2",
    )
    assert len(products) == 2
    crm = stack_env["CRM_DSN"]
    quote = _one(
        crm,
        "INSERT INTO public.aos_quotes (name, account_id, stage, subtotal_amount, total_amount)"
        " VALUES ('Sink test quote', %s, 'Negotiation', 30, 30) RETURNING id::text",
        (account,),
    )
    for number, (product, sku, price) in enumerate(products, start=1):
        execute(
            crm,
            "INSERT INTO public.aos_products_quotes (parent_id, number, name, part_number,"
            " product_id, product_qty, product_list_price, product_unit_price, product_total_price)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (quote, number, f"Line {number}", sku, product, number, price, price, price * number),
        )
    execute(crm, "UPDATE public.aos_quotes SET stage = 'Closed Accepted' WHERE id = %s", (quote,))
    erp = stack_env["ERP_ADMIN_DSN"]
    _eventually(
        erp,
        "SELECT count(*) FROM public.sale_order WHERE crm_quote_id = %s",
        (quote,),
        1,
        "the ERP order",
    )
    order_id, name, state = execute(
        erp, "SELECT id, name, state FROM public.sale_order WHERE crm_quote_id = %s", (quote,)
    )[0]
    assert state == "sale"
    lines = execute(
        erp,
        "SELECT p.default_code, l.product_uom_qty FROM public.sale_order_line l "
        "JOIN public.product_product p ON p.id = l.product_id WHERE l.order_id = %s "
        "ORDER BY l.sequence",
        (order_id,),
    )
    assert [(sku, Decimal(qty)) for sku, qty in lines] == [
        (products[0][1], Decimal(1)),
        (products[1][1], Decimal(2)),
    ]
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT erp_order_name FROM public.aos_quotes WHERE id = %s",
        (quote,),
        name,
        "the ERP order name on the CRM quote",
    )


def test_a_quote_for_a_product_the_crm_just_learnt_becomes_an_erp_order(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """The won-quote race: a new ERP product with stock, seen in the CRM, sold at once.

    The quote's line names the CRM product only (no part number): its SKU is known to the
    streams only from the CRM sink's announcement of the product it created, which may be
    read after the quote. The order waits for it instead of being dead-lettered.
    """
    erp_admin, crm_admin = stack_env["ERP_ADMIN_DSN"], stack_env["CRM_ADMIN_DSN"]
    sku = f"RACE-{uuid.uuid4().hex[:8].upper()}"
    product = _one(
        stack_env["ERP_DSN"],
        "INSERT INTO public.product_product (default_code, name, list_price)"
        " VALUES (%s, 'Race widget', 19.90) RETURNING id",
        (sku,),
    )
    location = _one(
        erp_admin, "SELECT id FROM public.stock_location WHERE usage = 'internal' ORDER BY id"
    )
    execute(
        stack_env["ERP_DSN"],
        "INSERT INTO public.stock_quant (product_id, location_id, quantity) VALUES (%s, %s, 12)",
        (product, location),
    )
    _eventually(
        crm_admin,
        "SELECT on_hand FROM public.product_availability WHERE part_number = %s",
        (sku,),
        Decimal("12.000"),
        "the new product's stock in the CRM",
    )
    crm_product = _one(
        crm_admin, "SELECT id::text FROM public.aos_products WHERE part_number = %s", (sku,)
    )
    _, account = _linked_customer(stack_env)
    crm = stack_env["CRM_DSN"]
    quote = _one(
        crm,
        "INSERT INTO public.aos_quotes (name, account_id, stage, subtotal_amount, total_amount)"
        " VALUES ('Race quote', %s, 'Negotiation', 39.80, 39.80) RETURNING id::text",
        (account,),
    )
    execute(
        crm,
        "INSERT INTO public.aos_products_quotes (parent_id, number, name, product_id,"
        " product_qty, product_list_price, product_unit_price, product_total_price)"
        " VALUES (%s, 1, 'Race widget', %s, 2, 19.90, 19.90, 39.80)",
        (quote, crm_product),
    )
    execute(crm, "UPDATE public.aos_quotes SET stage = 'Closed Accepted' WHERE id = %s", (quote,))
    _eventually(
        erp_admin,
        "SELECT count(*) FROM public.sale_order WHERE crm_quote_id = %s",
        (quote,),
        1,
        "the ERP order of the quote",
    )
    lines = execute(
        erp_admin,
        "SELECT l.product_id, l.product_uom_qty FROM public.sale_order_line l"
        " JOIN public.sale_order o ON o.id = l.order_id WHERE o.crm_quote_id = %s",
        (quote,),
    )
    assert [(int(p), Decimal(q)) for p, q in lines] == [(int(product), Decimal(2))]


def test_stock_and_invoices_reach_the_crm(pipeline: Pipeline, stack_env: dict[str, str]) -> None:
    erp = stack_env["ERP_DSN"]
    product, sku = execute(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT p.id, p.default_code FROM public.product_product p WHERE p.active AND EXISTS "
        "(SELECT 1 FROM public.stock_quant q WHERE q.product_id = p.id) ORDER BY p.id LIMIT 1",
    )[0]
    execute(
        erp,
        "UPDATE public.stock_quant SET quantity = quantity + 7 WHERE product_id = %s",
        (product,),
    )
    on_hand, reserved = execute(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT sum(quantity), sum(reserved_quantity) FROM public.stock_quant "
        "WHERE product_id = %s",
        (product,),
    )[0]
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT on_hand FROM public.product_availability WHERE part_number = %s",
        (sku,),
        Decimal(on_hand),
        "the ERP stock in the CRM",
    )
    assert _one(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT available FROM public.product_availability WHERE part_number = %s",
        (sku,),
    ) == Decimal(on_hand) - Decimal(reserved)
    partner, account = _linked_customer(stack_env)
    invoice = _one(
        erp,
        "INSERT INTO public.account_move (move_type, partner_id, invoice_date, invoice_date_due,"
        " amount_untaxed, amount_tax, amount_total, amount_residual, currency, payment_state,"
        " state)"
        " VALUES ('out_invoice', %s, current_date, current_date + 30, 100, 19, 119, 119, 'EUR',"
        " 'not_paid', 'posted') RETURNING name",
        (partner,),
    )
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT status || ' ' || total_amount::text || ' ' || account_id::text"
        " FROM public.aos_invoices WHERE erp_invoice_name = %s",
        (invoice,),
        f"Unpaid 119.00 {account}",
        "the ERP invoice in the CRM",
    )
    execute(
        erp,
        "UPDATE public.account_move SET payment_state = 'paid', amount_residual = 0 "
        "WHERE name = %s",
        (invoice,),
    )
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT status FROM public.aos_invoices WHERE erp_invoice_name = %s",
        (invoice,),
        "Paid",
        "the payment in the CRM",
    )


# ------------------------------------------------------------------ the guarantees


def test_applied_changes_do_not_echo(pipeline: Pipeline, stack_env: dict[str, str]) -> None:
    partner, account = _linked_customer(stack_env)
    city = f"Echo {uuid.uuid4().hex[:6]}"
    dropped_before = pipeline.crm.metric(
        "erpcrm_cdc_echo_transactions_dropped_total", system="crm", origin="erpcrm_sink"
    )
    started_ms = int(time.time() * 1000)
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET city = %s WHERE id = %s",
        (city, partner),
    )
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT billing_address_city FROM public.accounts WHERE id = %s",
        (account,),
        city,
        "the city in the CRM",
    )
    wait_for(
        lambda: (
            pipeline.crm.metric(
                "erpcrm_cdc_echo_transactions_dropped_total", system="crm", origin="erpcrm_sink"
            )
            > dropped_before
        ),
        30,
        "the CRM capture to drop the sink's transaction",
    )
    time.sleep(3)  # room for an echo to show up, if there were one
    with TopicReader(stack_env, [pipeline.crm.topic("accounts")]) as reader:
        reader.wait(lambda events: len(events) > 0, 30, "the CRM accounts topic")
        while reader.poll(1.0):
            pass
        echoes = [
            e
            for e in reader.events
            if e.value is not None
            and e.after is not None
            and e.after.get("id") == account
            and e.source["ts_ms"] >= started_ms
        ]
    assert echoes == []
    # And nothing came back to the ERP: its row is as the user left it.
    assert (
        _one(
            stack_env["ERP_ADMIN_DSN"],
            "SELECT city FROM public.res_partner WHERE id = %s",
            (partner,),
        )
        == city
    )


def test_concurrent_edits_converge_to_the_last_writer(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    partner, account = _linked_customer(stack_env)
    audits = {
        "crm": (pipeline.crm_sink, f"erp:{partner}"),
        "erp": (pipeline.erp_sink, f"crm:{account}"),
    }
    since = {side: _last_conflict_id(sink) for side, (sink, _) in audits.items()}
    tag = uuid.uuid4().hex[:6]
    erp_email, crm_email = f"erp-{tag}@example.com", f"crm-{tag}@example.com"
    execute(
        stack_env["ERP_DSN"],
        "UPDATE public.res_partner SET email = %s WHERE id = %s",
        (erp_email, partner),
    )
    time.sleep(0.05)  # the CRM writes last
    execute(
        stack_env["CRM_DSN"],
        "UPDATE public.accounts SET email = %s WHERE id = %s",
        (crm_email, account),
    )
    _eventually(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT email FROM public.res_partner WHERE id = %s",
        (partner,),
        crm_email,
        "ERP",
    )
    pipeline.settled()
    assert (
        _one(
            stack_env["CRM_ADMIN_DSN"],
            "SELECT email FROM public.accounts WHERE id = %s",
            (account,),
        )
        == crm_email
    )
    assert (
        _one(
            stack_env["ERP_ADMIN_DSN"],
            "SELECT email FROM public.res_partner WHERE id = %s",
            (partner,),
        )
        == crm_email
    )
    # Either the CRM user typed over the customer's old e-mail before the ERP's change
    # arrived (both sinks saw an edit made beside their own: one conflict each, the
    # later CRM write winning), or over the ERP's e-mail once it had (an ordinary edit
    # after a sync: no conflict on either side). Never a conflict with the value both
    # sides held before (the customer may be one the CRM created, whose first e-mail
    # the ERP never changed itself).
    recorded = {
        side: sink.query(
            "SELECT winner, reason, erp_value, crm_value FROM {schema}.conflicts "
            "WHERE entity = 'customer' AND entity_key = %s AND field = 'email' AND id > %s "
            "ORDER BY id",
            (key, since[side]),
        )
        for side, (sink, key) in audits.items()
    }
    concurrent = [("crm", "last_writer", erp_email, crm_email)]
    assert recorded in ({"crm": concurrent, "erp": concurrent}, {"crm": [], "erp": []})


def test_edits_taking_turns_after_each_sync_are_no_conflict(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """A record one system made, its fields then edited by each side in turn, each edit
    made after the last one arrived: ordinary updates, never a conflict in either sink.
    """
    crm, erp = stack_env["CRM_DSN"], stack_env["ERP_DSN"]
    sinks = (pipeline.crm_sink, pipeline.erp_sink)
    since = {sink.target: _last_conflict_id(sink) for sink in sinks}
    tag = uuid.uuid4().hex[:6]
    account = _one(
        crm,
        "INSERT INTO public.accounts (name, email, phone_office, billing_address_country, industry)"
        " VALUES (%s, %s, '+49 30 1234567', 'DE', 'Retail') RETURNING id::text",
        (f"Turns {tag} GmbH", f"first-{tag}@example.com"),
    )
    made = "SELECT count(*) FROM public.res_partner WHERE crm_account_id = %s"
    _eventually(stack_env["ERP_ADMIN_DSN"], made, (account,), 1, "the ERP customer")
    partner = _one(
        stack_env["ERP_ADMIN_DSN"],
        "SELECT id FROM public.res_partner WHERE crm_account_id = %s",
        (account,),
    )
    turns = [
        (crm, "UPDATE public.accounts SET industry = 'Energy' WHERE id = %s", account, None),
        (erp, "UPDATE public.res_partner SET email = %s WHERE id = %s", partner, "erp"),
        (crm, "UPDATE public.accounts SET email = %s WHERE id = %s", account, "crm"),
        (erp, "UPDATE public.res_partner SET email = %s WHERE id = %s", partner, "erp2"),
    ]
    for dsn, statement, key, who in turns:
        email = f"{who}-{tag}@example.com" if who else None
        execute(dsn, statement, (email, key) if who else (key,))
        if email is not None:  # the next turn only once both systems hold this one
            _eventually(
                stack_env["ERP_ADMIN_DSN"],
                "SELECT email FROM public.res_partner WHERE id = %s",
                (partner,),
                email,
                "ERP",
            )
            _eventually(
                stack_env["CRM_ADMIN_DSN"],
                "SELECT email FROM public.accounts WHERE id = %s",
                (account,),
                email,
                "CRM",
            )
        pipeline.settled()
    for sink in sinks:
        recorded = sink.query(
            "SELECT entity_key, field, winner, reason, erp_value, crm_value FROM {schema}.conflicts"
            " WHERE entity = 'customer' AND entity_key = ANY(%s) AND id > %s",
            ([f"erp:{partner}", f"crm:{account}"], since[sink.target]),
        )
        assert recorded == [], f"{sink.target} sink"


def _last_conflict_id(sink: SinkProcess) -> int:
    """The newest conflict a sink recorded (0: none)."""
    return int(sink.query("SELECT coalesce(max(id), 0) FROM {schema}.conflicts")[0][0])


def test_target_database_down_makes_the_sink_wait(
    pipeline: Pipeline, stack_env: dict[str, str], local_stack: LocalStack
) -> None:
    partner, account = _linked_customer(stack_env)
    letters_from = watermarks(stack_env["KAFKA_BOOTSTRAP"], ("dlq.sinks.crm",))
    retries_before = sum(
        v
        for (name, _), v in pipeline.crm_sink.metrics().items()
        if name == "erpcrm_sink_retries_total"
    )
    local_stack.crm.stop()
    try:
        cities = [f"Outage {uuid.uuid4().hex[:6]} {n}" for n in range(5)]
        for city in cities:  # committed in the ERP while the CRM is down
            execute(
                stack_env["ERP_DSN"],
                "UPDATE public.res_partner SET city = %s WHERE id = %s",
                (city, partner),
            )
        time.sleep(6)  # the sink meets the closed database and keeps retrying
        assert pipeline.crm_sink.running
    finally:
        local_stack.up()
    _eventually(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT billing_address_city FROM public.accounts WHERE id = %s",
        (account,),
        cities[-1],
        "the last change made during the outage",
        timeout=120,
    )
    retries = sum(
        v
        for (name, _), v in pipeline.crm_sink.metrics().items()
        if name == "erpcrm_sink_retries_total"
    )
    assert retries > retries_before
    assert pipeline.crm_sink.query("SELECT count(*) FROM {schema}.dead_letters") == [(0,)]
    # None of the customer's changes was dead-lettered (the pipeline also syncs whatever
    # else the stack holds, which may letter records of its own).
    letters = dead_letters(stack_env["KAFKA_BOOTSTRAP"], ("dlq.sinks.crm",), letters_from)
    ours = [x for x in letters if x.key is not None and x.key.decode() == f"erp:{partner}"]
    assert ours == [], [x.headers for x in ours]


def _tables_digest(env: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the sinks write, without modification times."""
    erp, crm = env["ERP_ADMIN_DSN"], env["CRM_ADMIN_DSN"]
    return {
        "res_partner": execute(
            erp,
            "SELECT id, name, ref, vat, email, phone, street, city, zip, country_code, active,"
            " crm_account_id FROM public.res_partner ORDER BY id",
        ),
        "sale_order": execute(
            erp,
            "SELECT id, name, partner_id, state, crm_quote_id FROM public.sale_order ORDER BY id",
        ),
        "sale_order_line": execute(
            erp,
            "SELECT id, order_id, product_id, product_uom_qty FROM public.sale_order_line "
            "ORDER BY id",
        ),
        "accounts": execute(
            crm,
            "SELECT id, name, account_number, vat, email, phone_office, billing_address_city,"
            " industry, deleted FROM public.accounts ORDER BY id",
        ),
        "aos_products": execute(
            crm,
            "SELECT id, part_number, name, price, cost, deleted FROM public.aos_products "
            "ORDER BY id",
        ),
        "product_availability": execute(
            crm,
            "SELECT product_id, part_number, on_hand, reserved, available "
            "FROM public.product_availability ORDER BY 1",
        ),
        "aos_quotes": execute(
            crm, "SELECT id, erp_order_name, erp_order_state FROM public.aos_quotes ORDER BY id"
        ),
        "aos_invoices": execute(
            crm,
            "SELECT id, erp_invoice_name, status, total_amount, amount_due "
            "FROM public.aos_invoices ORDER BY id",
        ),
    }


def test_replaying_the_topics_changes_nothing(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    pipeline.settled()
    before = _tables_digest(stack_env)
    for sink in pipeline:
        sink.stop()
        for (topic, partition), offset in pipeline.start_positions.items():
            sink.query(
                "UPDATE {schema}.offsets SET next_offset = %s WHERE topic = %s AND partition = %s",
                (offset, topic, partition),
            )
        sink.start().wait_assigned()
    wait_for(lambda: all(s.total("stale") > 0 for s in pipeline), SETTLE, "the replay")
    pipeline.settled()
    assert all(s.total("applied") == 0 for s in pipeline), "a replayed event was applied again"
    assert _tables_digest(stack_env) == before


def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    reports: list[Any] = []
    committed = [0]

    def drive() -> None:
        # A number of operations, not a duration: a loaded machine takes longer to commit
        # them, and the kills below come at the same points of the work, however slow.
        reports.append(
            run_workload(
                stack_env["ERP_DSN"],
                stack_env["CRM_DSN"],
                rate=60,
                duration=None,
                count=SIGKILL_OPERATIONS,
                dirty_ratio=0.0,
                seed=11,
                on_progress=lambda report: committed.__setitem__(0, report.committed),
            )
        )

    started = _one(stack_env["CRM_ADMIN_DSN"], "SELECT now()")
    catalogue = [
        str(code)
        for (code,) in execute(
            stack_env["ERP_ADMIN_DSN"], "SELECT default_code FROM public.product_product"
        )
    ]
    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    kills = 0
    for mark in SIGKILL_MARKS:
        wait_while_progressing(
            lambda mark=mark: committed[0] >= mark or not thread.is_alive(),
            lambda: committed[0],
            STALL_SECONDS,
            f"the workload past {mark} operations",
        )
        if not thread.is_alive():
            break
        sink = pipeline.crm_sink if kills % 2 == 0 else pipeline.erp_sink
        sink.kill()  # mid-batch: the workload keeps both sinks busy
        kills += 1
        sink.start().wait_assigned()
    wait_while_progressing(
        lambda: not thread.is_alive(), lambda: committed[0], STALL_SECONDS, "the workload's end"
    )
    assert reports
    assert reports[0].committed > 500
    # Each sink killed at least once mid-workload (a restart waits for its partitions, so
    # on a slow machine the workload may end before the last mark).
    assert kills >= 2, f"only {kills} kills came while the workload ran"
    pipeline.settled(timeout=180)
    # Nothing lost: every key's applied version is the newest version on its topic.
    for sink in pipeline:
        newest = newest_records(stack_env, pipeline.start_positions, source=sink_source(sink))
        applied = {
            (entity, key): int(version)
            for entity, key, version in sink.query(
                "SELECT entity, entity_key, version FROM {schema}.applied"
            )
        }
        # A record held as a suspected duplicate is accounted for in the suspects table,
        # one referring to it in the parked events.
        held = {
            (str(entity), str(key))
            for entity, key in sink.query(
                "SELECT entity, entity_key FROM {schema}.suspects WHERE status = 'held' "
                "UNION SELECT entity, entity_key FROM {schema}.parked"
            )
        }
        taken = {
            key: record["version"]
            for key, record in newest.items()
            if (key in applied or record["op"] == "upsert") and key not in held
        }
        behind = {k: v for k, v in taken.items() if k in applied and applied[k] < v}
        assert behind == {}, f"{sink.target}: applied versions behind the topics"
    # ... and the stock the CRM shows is the newest stock event's, for every product.
    stock = newest_records(
        stack_env, pipeline.start_positions, source="erp", topics=(CANONICAL_INVENTORY,)
    )
    shown = {
        str(sku): (Decimal(on_hand), Decimal(reserved))
        for sku, on_hand, reserved in execute(
            stack_env["CRM_ADMIN_DSN"],
            "SELECT part_number, on_hand, reserved FROM public.product_availability",
        )
    }
    assert stock
    for record in stock.values():
        assert shown[record["sku"]] == (record["on_hand"], record["reserved"]), record["sku"]
    # Nothing twice: one ERP order per accepted quote, and every quote accepted during
    # the test has one.
    customers = [
        str(account)
        for (account,) in execute(
            stack_env["ERP_ADMIN_DSN"],
            "SELECT crm_account_id FROM public.res_partner WHERE crm_account_id IS NOT NULL",
        )
    ]
    assert (
        execute(
            stack_env["ERP_ADMIN_DSN"],
            "SELECT crm_quote_id FROM public.sale_order WHERE crm_quote_id IS NOT NULL "
            "GROUP BY 1 HAVING count(*) > 1",
        )
        == []
    )
    assert (
        _one(
            stack_env["CRM_ADMIN_DSN"],
            "SELECT count(*) FROM public.aos_quotes AS q WHERE stage = 'Closed Accepted' "
            "AND NOT deleted AND erp_order_name IS NULL AND date_modified >= %s "
            # Clean quotes only: the workload may accept an older quote with an unknown
            # SKU or a negative quantity (dirty data of other runs), which the streams
            # stage dead-letters before any sink sees it.
            "AND NOT EXISTS (SELECT 1 FROM public.aos_products_quotes AS l "
            "WHERE l.parent_id = q.id AND NOT l.deleted "
            "AND NOT (coalesce(upper(trim(l.part_number)) = ANY(%s), false) "
            "AND l.product_qty >= 0 AND coalesce(l.product_list_price, 0) >= 0)) "
            # ... of customers the ERP has (an account made while no sink ran is not).
            "AND q.account_id = ANY(%s::uuid[])",
            (started, catalogue, customers),
        )
        == 0
    )
    for sink in pipeline:
        assert sink.query("SELECT count(*) FROM {schema}.dead_letters") == [(0,)]
