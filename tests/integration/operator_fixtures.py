"""What the operator tools' tests share: the CLI as a subprocess, writes no capture sees.

A test module gets the module-scoped fixtures ``env`` (the stack's settings, references
given up after 5 s) and ``pipeline`` (the whole pipeline capturing from now on) by
importing :func:`operator_env` and :func:`operator_pipeline`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.cdc_fixtures import REPO, execute, wait_for
from tests.integration.sink_fixtures import Pipeline, demo_pipeline

__all__ = [
    "erpcrm",
    "erpcrm_json",
    "new_customer",
    "new_product",
    "operator_env",
    "operator_pipeline",
    "parked_briefly",
    "streaming_pipeline",
    "under_sink_origin",
]


def erpcrm(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str]:
    """Run ``erpcrm <args>`` against the stack in ``env``; exit code and stdout.

    Fails the test on a crash (an exit code other than 0 and 1, the codes the operator
    commands use for "done" and "found something").
    """
    done = subprocess.run(
        [sys.executable, "-m", "erpcrm.cli", *args],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ERPCRM_")}, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, done.stdout


def erpcrm_json(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> Any:
    """``erpcrm <args>``, its JSON output; the exit code must be one of ``ok``."""
    code, out = erpcrm(env, *args)
    assert code in ok, out
    return json.loads(out)


def parked_briefly(stack_env: dict[str, str]) -> dict[str, str]:
    """The stack's settings, with records waiting for a reference giving up soon.

    The streams worker gives up after 5 s. A sink measures its wait in its progress: on
    the tests' quiet pipeline the streams' decided horizon (moved on by the captures'
    heartbeats) tells it that nothing before the event is still to come, then it counts
    its wait (20 s).
    """
    return dict(stack_env, ERPCRM_STREAMS_REFERENCE_WAIT_SECONDS="5")


DRIFT_ORIGIN = "erpcrm_drift"
"""A replication origin the tests' captures drop like the sinks' own (``ERPCRM_CDC_ECHO_ORIGINS``).

The sinks' origin itself cannot be borrowed: a running sink's session holds it, and an
origin is active in one session at a time.
"""


def under_sink_origin(dsn: str, query: str, params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` in a session tagged like the sinks': its capture drops it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_replication_origin_create(%s) WHERE NOT EXISTS"
            " (SELECT 1 FROM pg_replication_origin WHERE roname = %s)",
            (DRIFT_ORIGIN, DRIFT_ORIGIN),
        )
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", (DRIFT_ORIGIN,))
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


@contextlib.contextmanager
def streaming_pipeline(stack_env: dict[str, str], log_dir: Path) -> Iterator[Pipeline]:
    """The whole pipeline over the demo tables, capturing from now on (no snapshot).

    The shared databases hold what every test wrote; a first snapshot of all of it takes
    many minutes. These tests make their own records, and records waiting for a
    reference give up after 5 s.
    """
    env = dict(
        parked_briefly(stack_env),
        ERPCRM_CDC_SNAPSHOT_MODE="never",
        ERPCRM_CDC_ECHO_ORIGINS=json.dumps(["erpcrm_sink", DRIFT_ORIGIN]),
    )
    with demo_pipeline(env, log_dir, settle=lambda _: None) as running:
        yield running


@pytest.fixture(scope="module", name="env")
def operator_env(stack_env: dict[str, str]) -> dict[str, str]:
    """Fixture ``env``: the stack's settings for the CLI, as the pipeline runs with them."""
    return parked_briefly(stack_env)


@pytest.fixture(scope="module", name="pipeline")
def operator_pipeline(
    env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Pipeline]:
    """Fixture ``pipeline``: :func:`streaming_pipeline` for the module, logs in its own dir."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with streaming_pipeline(env, tmp_path_factory.mktemp(name)) as running:
        yield running


def new_customer(env: dict[str, str], timeout: float = 90) -> tuple[str, str]:
    """A customer made in the ERP, once the CRM has its account and both are linked.

    Returns ``(ERP partner id, CRM account id)``.
    """
    name = f"Operator {uuid.uuid4().hex[:8]} GmbH"
    ((partner, number),) = execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, is_company, email, phone, street, city, zip,"
        " country_code) VALUES (%s, true, %s, '+49 30 1234567',"
        " 'Hauptstrasse 1', 'Berlin', '10115', 'DE') RETURNING id::text, ref",
        (name, f"buyer-{uuid.uuid4().hex[:8]}@example.com"),
    )

    def linked() -> str | None:
        rows = execute(
            env["ERP_ADMIN_DSN"],
            "SELECT crm_account_id::text FROM public.res_partner WHERE id = %s",
            (int(partner),),
        )
        return rows[0][0] if rows and rows[0][0] else None

    account = wait_for(linked, timeout, f"the CRM account of {number} linked", interval=0.5)
    return str(partner), str(account)


def new_product(env: dict[str, str], price: str, timeout: float = 90) -> tuple[str, str, str]:
    """A product made in the ERP, once the CRM has it: ``(ERP id, CRM id, SKU)``."""
    sku = f"OP-{uuid.uuid4().hex[:8].upper()}"
    ((product,),) = execute(
        env["ERP_DSN"],
        "INSERT INTO public.product_product (default_code, name, list_price, standard_price)"
        " VALUES (%s, %s, %s, 1) RETURNING id::text",
        (sku, f"Part {sku}", price),
    )

    def in_crm() -> str | None:
        rows = execute(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text FROM public.aos_products WHERE part_number = %s AND NOT deleted",
            (sku,),
        )
        return rows[0][0] if rows else None

    crm_id = wait_for(in_crm, timeout, f"product {sku} in the CRM", interval=0.5)
    return str(product), str(crm_id), sku


def won_quote(
    env: dict[str, str],
    account: str,
    lines: Sequence[tuple[str, Decimal]],
    *,
    name: str,
    total: Decimal | None = None,
) -> tuple[str, list[str]]:
    """A CRM quote of ``account``, one line (quantity 1) per ``(sku, price)``, then won.

    The quote, each line and the stage ``Closed Accepted`` are committed one after the
    other. ``total``: the header's subtotal and total (default: the lines' sum).
    Returns the quote's id and its lines' ids.
    """
    crm = env["CRM_DSN"]
    amount = sum((price for _, price in lines), Decimal(0)) if total is None else total
    ((quote,),) = execute(
        crm,
        "INSERT INTO public.aos_quotes (name, account_id, stage, subtotal_amount, total_amount)"
        " VALUES (%s, %s, 'Negotiation', %s, %s) RETURNING id::text",
        (name, account, amount, amount),
    )
    ids = []
    for number, (sku, price) in enumerate(lines, start=1):
        ((line,),) = execute(
            crm,
            "INSERT INTO public.aos_products_quotes (parent_id, number, name, part_number,"
            " product_qty, product_list_price, product_unit_price, product_total_price)"
            " VALUES (%s, %s, %s, %s, 1, %s, %s, %s) RETURNING id::text",
            (quote, number, f"Line {number}", sku, price, price, price),
        )
        ids.append(str(line))
    execute(crm, "UPDATE public.aos_quotes SET stage = 'Closed Accepted' WHERE id = %s", (quote,))
    return str(quote), ids
