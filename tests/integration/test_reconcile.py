"""``erpcrm reconcile`` on the real stack: drift the pipeline cannot see is found.

Both captures, the streams worker and both sinks run over the demo databases. The test
makes a customer and a product that flow to the other system, then makes the two
systems drift in ways no capture reports: a write under the sinks' replication origin
(the captures drop those), a CRM row put back from an "old backup" (an update under
that origin to the values it had before), and an order whose dead letter is never
replayed. ``erpcrm reconcile`` lists exactly those and exits 1 (``--entity`` only the
chosen entity's); with ``--repair`` the captures re-read the rows and a second run is in
sync (exit 0). Two ERP customers that both find one CRM account are duplicates, which
``--repair`` leaves to an operator; a database that cannot be read exits 2.

The databases are shared with other tests, so every run is scoped to what was written
since the test began (``--since``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from tests.integration.cdc_fixtures import REPO, execute, wait_for
from tests.integration.operator_fixtures import (
    erpcrm,
    erpcrm_json,
    new_customer,
    new_product,
    operator_env,  # noqa: F401 - fixture env
    operator_pipeline,  # noqa: F401 - fixture pipeline
    under_sink_origin,
)
from tests.integration.sink_fixtures import Pipeline

pytestmark = pytest.mark.integration

WAIT = 120.0


@pytest.fixture(scope="module")
def since(pipeline: Pipeline) -> str:
    """The time the module's pipeline had started: every run looks at drift from then."""
    return datetime.now(UTC).isoformat()


def reconcile(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    """``erpcrm reconcile <args> --json``: exit code and report."""
    code, out = erpcrm(env, "reconcile", *args, "--json")
    report: dict[str, Any] = json.loads(out)
    return code, report


def drift_items(report: dict[str, Any]) -> set[tuple[str, ...]]:
    """Every drift item of a report, as comparable tuples."""
    items: set[tuple[str, ...]] = set()
    for entity in report["entities"]:
        name = entity["entity"]
        for pair in entity["differing"]:
            for field in pair["fields"]:
                items.add((name, "differs", pair["erp"]["id"], pair["crm"]["id"], field["field"]))
        for missing in entity["missing"]:
            items.add((name, "missing_in_" + missing["missing_in"], missing["id"]))
        for duplicate in entity["duplicates"]:
            items.add((name, "duplicate", duplicate["linked_to"]["id"]))
    return items


def _one(dsn: str, query: str, params: Any = None) -> Any:
    rows = execute(dsn, query, params)
    return rows[0][0] if rows else None


def test_reconcile_lists_exactly_the_drift_the_pipeline_cannot_see(
    pipeline: Pipeline, env: dict[str, str], since: str
) -> None:
    erp_admin, crm_admin = env["ERP_ADMIN_DSN"], env["CRM_ADMIN_DSN"]
    partner, account = new_customer(env)
    product, crm_product, sku = new_product(env, "10.00")
    pipeline.settled(timeout=WAIT)
    code, before = reconcile(env, "--since", since)
    assert (code, before["drift"]) == (0, 0), before

    # 1. A write under the sinks' origin: the CRM account's VAT id (the ERP owns it).
    under_sink_origin(
        crm_admin, "UPDATE public.accounts SET vat = 'XX000000001' WHERE id = %s", (account,)
    )

    # 2. A CRM product put back from an old backup: the price it had before the last
    #    ERP change, written under the sinks' origin.
    price = Decimal("10.00")
    execute(
        env["ERP_DSN"],
        "UPDATE public.product_product SET list_price = list_price + 1 WHERE id = %s",
        (product,),
    )
    wait_for(
        lambda: (
            _one(
                crm_admin,
                "SELECT price FROM public.aos_products WHERE part_number = %s AND NOT deleted",
                (sku,),
            )
            == Decimal(price) + 1
        ),
        WAIT,
        "the new price in the CRM",
    )
    pipeline.settled(timeout=WAIT)
    under_sink_origin(
        crm_admin, "UPDATE public.aos_products SET price = %s WHERE id = %s", (price, crm_product)
    )

    # 3. An order whose dead letter was never replayed: its SKU made in the ERP later.
    unknown = f"ZZ-{uuid.uuid4().hex[:8].upper()}"
    quote = _one(
        env["CRM_DSN"],
        "INSERT INTO public.aos_quotes (name, account_id, stage, subtotal_amount, total_amount)"
        " VALUES ('Reconcile test quote', %s, 'Negotiation', 9.5, 9.5) RETURNING id::text",
        (account,),
    )
    execute(
        env["CRM_DSN"],
        "INSERT INTO public.aos_products_quotes (parent_id, number, name, part_number,"
        " product_qty, product_list_price, product_unit_price, product_total_price)"
        " VALUES (%s, 1, 'Line 1', %s, 1, 9.5, 9.5, 9.5)",
        (quote, unknown),
    )
    execute(
        env["CRM_DSN"],
        "UPDATE public.aos_quotes SET stage = 'Closed Accepted' WHERE id = %s",
        (quote,),
    )
    wait_for(
        lambda: any(
            unknown in line["message"]
            for line in erpcrm_json(
                env, "dlq", "list", "--stage", "streams", "--reason", "unknown_sku", "--json"
            )
        ),
        WAIT,
        "the order's dead letter",
        interval=2.0,
    )
    execute(
        env["ERP_DSN"],
        "INSERT INTO public.product_product (default_code, name, list_price)"
        " VALUES (%s, 'Reconcile test part', 9.50)",
        (unknown,),
    )
    pipeline.settled(timeout=WAIT)

    code, report = reconcile(env, "--since", since)
    assert code == 1
    assert drift_items(report) == {
        ("customer", "differs", partner, account, "vat"),
        ("product", "differs", product, crm_product, "list_price"),
        ("sales_order", "missing_in_erp", quote),
    }
    by_entity = {e["entity"]: e for e in report["entities"]}
    (vat,) = by_entity["customer"]["differing"][0]["fields"]
    assert (vat["crm"], vat["owner"], vat["reread"]) == ("XX000000001", "erp", "erp")
    (restored,) = by_entity["product"]["differing"][0]["fields"]
    assert Decimal(restored["erp"]) == Decimal(price) + 1
    assert Decimal(restored["crm"]) == Decimal(price)
    assert {(r["system"], r["table"]) for r in report["repair"]} == {
        ("erp", "public.res_partner"),
        ("erp", "public.product_product"),
        ("crm", "public.aos_quotes"),
    }

    # --entity: the chosen entity's report only.
    code, customers = reconcile(env, "--since", since, "--entity", "customer")
    assert code == 1
    assert [e["entity"] for e in customers["entities"]] == ["customer"]
    assert drift_items(customers) == {("customer", "differs", partner, account, "vat")}

    # --repair: the captures re-read those rows; everything flows through the pipeline.
    code, repaired = reconcile(env, "--since", since, "--repair")
    assert code == 1
    assert len(repaired["requested"]) == 3
    pipeline.settled(timeout=WAIT)

    def converged() -> bool:
        code, again = reconcile(env, "--since", since)
        return code == 0 and again["drift"] == 0

    wait_for(converged, 240, "reconcile to report no drift", interval=5.0)
    assert _one(crm_admin, "SELECT vat FROM public.accounts WHERE id = %s", (account,)) != (
        "XX000000001"
    )
    assert (
        _one(erp_admin, "SELECT count(*) FROM public.sale_order WHERE crm_quote_id = %s", (quote,))
        == 1
    )


def test_two_erp_customers_finding_one_crm_account_are_duplicates(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    started = datetime.now(UTC).isoformat()
    partner, account = new_customer(env)
    # Behind the pipeline's back: a second ERP customer, and the CRM account given its
    # number, so both ERP customers find that account (one by its link, one by number).
    ((other, number),) = under_sink_origin(
        env["ERP_ADMIN_DSN"],
        "INSERT INTO public.res_partner (name, is_company, country_code) VALUES (%s, true, 'DE')"
        " RETURNING id::text, ref",
        (f"Operator {uuid.uuid4().hex[:8]} AG",),
    )
    under_sink_origin(
        env["CRM_ADMIN_DSN"],
        "UPDATE public.accounts SET account_number = %s WHERE id = %s",
        (number, account),
    )
    code, report = reconcile(env, "--since", started, "--entity", "customer")
    assert code == 1
    (customers,) = report["entities"]
    assert customers["duplicates"] == [
        {
            "system": "erp",
            "ids": sorted([partner, other]),
            "linked_to": {"system": "crm", "table": "public.accounts", "id": account},
        }
    ]


def test_a_database_that_cannot_be_read_exits_2(env: dict[str, str]) -> None:
    unreadable = make_conninfo(env["ERP_DSN"], dbname="no_such_database")
    done = subprocess.run(
        [sys.executable, "-m", "erpcrm.cli", "reconcile", "--erp-dsn", unreadable, "--json"],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ERPCRM_")}, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot read the databases" in done.stderr
    assert done.stdout == ""
