"""Owned fields of products and orders converge to their owner under concurrent edits
from both sides while workers die.

What this proves (DESIGN.md §5.2, 5.4; README "Both systems converge"): writers on both
systems at once edit new catalogue products and won quotes, while every kind of worker is
SIGKILLed and started again (a sink inside a transaction that wrote); once the pipeline is
quiet:

- **product fields the ERP owns** (price, cost, type): the CRM holds the ERP's value and
  the ERP its own last write: the CRM's edits of them (refused by the ERP sink, the
  product re-announced) never reach the ERP and never stay in the CRM;
- **shared product fields** (name, category): the same on both sides, the last write by
  commit time in whole milliseconds (an exact tie to the ERP);
- **a won quote's ERP order** (its name, amounts): the quote shows the ERP order's name
  and amounts, the ERP order its own last write; the quote's expiry (the CRM's) is the
  order's validity date;
- **nothing synced twice**: one CRM product per SKU, one ERP order per quote;
- **no echo**: once quiet, no row of either side is written again.

Budgets: ``ERPCRM_SOAK_SECONDS=<n>`` runs ``n`` seconds over 16 products and 8 quotes,
one round of kills per minute; otherwise 30 seconds over 6 products and 3 quotes, one
round (about 3 to 5 minutes in all). ``ERPCRM_CONVERGENCE_SEED=<int>`` replays the writers'
choices (not their timing). A failure prints the seed and every difference.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

from tests.integration.cdc_fixtures import execute
from tests.integration.convergence_fixtures import (
    ValueMaker,
    commit_time_us,
    create_pairs,
    seed_from_env,
)
from tests.integration.sink_fixtures import Pipeline
from tests.integration.soak_fixtures import (
    Budget,
    dead_workers,
    pipeline_fixture,
    quiesce,
    run_threads,
    settled,
    victims,
)
from tests.integration.test_owned_fields import new_products, won_quote

BUDGET: Final = Budget.from_env(os.environ, seconds=30, width=6, soak_width=16)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUDGET.timeout_seconds)]

pipeline = pipeline_fixture("owned-soak")

TYPES: Final = {"product": "Good", "consu": "Good", "service": "Service"}
"""ERP product type -> the CRM's type it shows."""


@dataclass(frozen=True, slots=True)
class Shared:
    """A write of a shared product field: its value and where and when it was committed."""

    sku: str
    field: str
    value: str
    system: str
    commit_us: int

    @property
    def order(self) -> tuple[int, int]:
        """Later commit (whole ms) wins, an exact tie to the ERP."""
        return (self.commit_us // 1000, 1 if self.system == "erp" else 0)


@dataclass(slots=True)
class Log:
    """What the writers did: shared writes, the ERP's own last owned values, counts."""

    shared: list[Shared]
    erp_owned: dict[tuple[str, str], object]
    """(sku or quote, field) -> the ERP's last write of a field it owns."""
    crm_expiry: dict[str, date]
    counts: dict[str, int]
    lock: threading.Lock
    errors: list[str]

    def count(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1


def _money(rng: random.Random) -> Decimal:
    """An amount with two decimals, as the databases hold it."""
    return (Decimal(rng.randrange(100, 99_999)) / 100).quantize(Decimal("0.01"))


def _write(dsn: str, query: sql.Composable, params: Sequence[object]) -> int:
    """Run one autocommitted ``UPDATE ... RETURNING xmin``; its commit time (µs, 0: no row)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
        return 0 if row is None else commit_time_us(conn, str(row[0]))


def _writer(
    system: str,
    number: int,
    env: dict[str, str],
    products: Sequence[tuple[int, str, str]],
    quotes: Sequence[str],
    log: Log,
    rng: random.Random,
    tag: str,
) -> Callable[[threading.Event], None]:
    dsn = env[f"{system.upper()}_DSN"]

    def product_edit(seq: int) -> None:
        erp_id, crm_id, sku = rng.choice(products)
        kind = rng.choice(["price", "cost", "type", "name", "category"])
        shared = kind in ("name", "category")
        if shared:
            value = f"{kind} {system}{number}.{seq} {tag}"
            column = {"erp": {"category": "categ"}, "crm": {}}[system].get(kind, kind)
        elif kind == "type":
            value = rng.choice(["product", "service"] if system == "erp" else ["Good", "Service"])
            column = "type"
        else:
            value = str(_money(rng))
            column = {
                ("erp", "price"): "list_price",
                ("erp", "cost"): "standard_price",
                ("crm", "price"): "price",
                ("crm", "cost"): "cost",
            }[(system, kind)]
        table, key = ("product_product", erp_id) if system == "erp" else ("aos_products", crm_id)
        stamp = "write_date" if system == "erp" else "date_modified"
        committed = _write(
            dsn,
            sql.SQL(
                "UPDATE public.{} SET {} = %s, {} = now() WHERE id = %s RETURNING xmin::text"
            ).format(sql.Identifier(table), sql.Identifier(column), sql.Identifier(stamp)),
            (value, key),
        )
        log.count(f"{system} product {kind}")
        with log.lock:
            if shared:
                log.shared.append(Shared(sku, kind, value, system, committed))
            elif system == "erp":
                log.erp_owned[(sku, kind)] = value

    def quote_edit(seq: int) -> None:
        quote = rng.choice(quotes)
        if system == "crm":
            kind = rng.choice(["order_name", "amounts", "expiry"])
            if kind == "order_name":
                query = "UPDATE public.aos_quotes SET erp_order_name = %s WHERE id = %s"
                params: tuple[object, ...] = (f"X-{tag}-{number}.{seq}", quote)
            elif kind == "amounts":
                total = _money(rng)
                query = (
                    "UPDATE public.aos_quotes SET total_amount = %s, subtotal_amount = %s"
                    " WHERE id = %s"
                )
                params = (total, total, quote)
            else:
                expiry = date(2030, 1, 1) + timedelta(days=rng.randrange(365))
                query = "UPDATE public.aos_quotes SET expiration = %s WHERE id = %s"
                params = (expiry, quote)
                with log.lock:
                    log.crm_expiry[quote] = expiry
            execute(dsn, query, params)
            log.count(f"crm quote {kind}")
            return
        total = _money(rng)
        execute(
            dsn,
            "UPDATE public.sale_order SET amount_total = %s, amount_untaxed = %s"
            " WHERE crm_quote_id = %s",
            (total, total, quote),
        )
        with log.lock:
            log.erp_owned[(quote, "amount_total")] = total
            log.erp_owned[(quote, "amount_untaxed")] = total
        log.count("erp order amounts")

    def run(stop: threading.Event) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            try:
                (product_edit if rng.random() < 0.6 else quote_edit)(seq)
            except psycopg.Error as exc:
                log.errors.append(f"{system} writer {number}: {type(exc).__name__}: {exc}")
            time.sleep(rng.uniform(0.05, 0.4))

    return run


def _products(env: dict[str, str], products: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
    erp = {
        str(sku): (str(lp), str(sp), TYPES[str(t)], name, categ)
        for sku, lp, sp, t, name, categ in execute(
            env["ERP_ADMIN_DSN"],
            "SELECT default_code, list_price, standard_price, type, name, categ"
            " FROM public.product_product WHERE id = ANY(%s)",
            ([p[0] for p in products],),
        )
    }
    crm: dict[str, list[tuple[str, ...]]] = {}
    for sku, price, cost, kind, name, category in execute(
        env["CRM_ADMIN_DSN"],
        "SELECT part_number, price, cost, type, name, category FROM public.aos_products"
        " WHERE part_number = ANY(%s)",
        ([p[2] for p in products],),
    ):
        crm.setdefault(str(sku), []).append((str(price), str(cost), str(kind), name, category))
    return {"erp": erp, "crm": crm}


def _quotes(env: dict[str, str], quotes: Sequence[str]) -> dict[str, Any]:
    erp: dict[str, list[tuple[Any, ...]]] = {}
    for quote, *values in execute(
        env["ERP_ADMIN_DSN"],
        "SELECT crm_quote_id::text, name, amount_untaxed, amount_tax, amount_total,"
        " validity_date FROM public.sale_order WHERE crm_quote_id = ANY(%s::uuid[])",
        (list(quotes),),
    ):
        erp.setdefault(str(quote), []).append(tuple(values))
    crm = {
        str(quote): tuple(values)
        for quote, *values in execute(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text, erp_order_name, subtotal_amount, tax_amount, total_amount,"
            " expiration FROM public.aos_quotes WHERE id = ANY(%s::uuid[])",
            (list(quotes),),
        )
    }
    return {"erp": erp, "crm": crm}


def _stamps(
    env: dict[str, str], products: Sequence[tuple[int, str, str]], quotes: Sequence[str]
) -> list[tuple[Any, ...]]:
    return sorted(
        execute(
            env["ERP_ADMIN_DSN"],
            "SELECT 'p' || id, xmin::text FROM public.product_product WHERE id = ANY(%s)"
            " UNION ALL SELECT 'o' || crm_quote_id, xmin::text FROM public.sale_order"
            " WHERE crm_quote_id = ANY(%s::uuid[])",
            ([p[0] for p in products], list(quotes)),
        )
        + execute(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text, xmin::text FROM public.aos_products WHERE id = ANY(%s::uuid[])"
            " UNION ALL SELECT id::text, xmin::text FROM public.aos_quotes"
            " WHERE id = ANY(%s::uuid[])",
            ([p[1] for p in products], list(quotes)),
        )
    )


def _verdict(
    env: dict[str, str],
    products: Sequence[tuple[int, str, str]],
    initial: dict[str, Any],
    quotes: Sequence[str],
    first_orders: dict[str, Any],
    log: Log,
) -> list[str]:
    problems: list[str] = []
    state = _products(env, products)
    for _, _, sku in products:
        erp, crm = state["erp"][sku], state["crm"].get(sku, [])
        if len(crm) != 1:
            problems.append(f"product {sku}: {len(crm)} CRM products")
            continue
        if crm[0] != erp:
            problems.append(f"product {sku}: CRM {crm[0]} != ERP {erp}")
        start = initial["erp"][sku]
        owned = {
            "price": log.erp_owned.get((sku, "price"), start[0]),
            "cost": log.erp_owned.get((sku, "cost"), start[1]),
            "type": TYPES[str(log.erp_owned[(sku, "type")])]
            if (sku, "type") in log.erp_owned
            else start[2],
        }
        got = {"price": erp[0], "cost": erp[1], "type": erp[2]}
        if {k: str(v) for k, v in owned.items()} != got:
            problems.append(f"product {sku}: the ERP holds {got}, its own last writes {owned}")
        for index, name in ((3, "name"), (4, "category")):
            writes = [w for w in log.shared if w.sku == sku and w.field == name]
            if writes and erp[index] != max(writes, key=lambda w: w.order).value:
                last = max(writes, key=lambda w: w.order)
                problems.append(f"product {sku} {name}: {erp[index]!r}, the last write {last}")
    orders = _quotes(env, quotes)
    for quote in quotes:
        mine = orders["erp"].get(quote, [])
        if len(mine) != 1:
            problems.append(f"quote {quote}: {len(mine)} ERP orders")
            continue
        name, untaxed, tax, total, validity = mine[0]
        shown = orders["crm"][quote]
        if shown[:4] != (name, untaxed, tax, total):
            problems.append(f"quote {quote}: the CRM shows {shown[:4]}, the ERP order {mine[0]}")
        first = first_orders[quote]
        wanted = (
            first[0],
            log.erp_owned.get((quote, "amount_untaxed"), first[1]),
            first[2],
            log.erp_owned.get((quote, "amount_total"), first[3]),
        )
        if (name, untaxed, tax, total) != wanted:
            problems.append(f"order of {quote}: {mine[0][:4]}, the ERP's own writes {wanted}")
        if quote in log.crm_expiry and validity != log.crm_expiry[quote]:
            problems.append(f"order of {quote}: validity {validity}, the CRM's expiry differs")
    return problems


def test_owned_product_and_order_fields_converge_to_their_owner_under_kills(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """Products and won quotes edited on both sides while every worker kind is
    SIGKILLed; then every owned field the owner's, shared ones the last write's."""
    budget = BUDGET
    seed = seed_from_env()
    print(f"owned fields soak: seed={seed} budget={budget}")
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    values = ValueMaker(tag[:4])
    pairs, _ = create_pairs(pipeline, stack_env, values, random.Random(uuid.uuid4().int), 1)
    products = new_products(pipeline, stack_env, tag, budget.width)
    quotes = [
        won_quote(stack_env, pairs[0].account, products[i % len(products)])
        for i in range(max(2, budget.width // 2))
    ]

    def ready() -> bool:
        state = _quotes(stack_env, quotes)
        return all(
            len(state["erp"].get(q, [])) == 1 and state["crm"][q][:4] == state["erp"][q][0][:4]
            for q in quotes
        )

    deadline = time.monotonic() + 180
    while not ready():
        assert time.monotonic() < deadline, "the won quotes' ERP orders never showed in the CRM"
        assert not (dead := dead_workers(pipeline)), "\n".join(dead)
        time.sleep(1)
    settled(pipeline)
    initial = _products(stack_env, products)
    first_orders = {q: v[0] for q, v in _quotes(stack_env, quotes)["erp"].items()}

    log = Log([], {}, {}, {}, threading.Lock(), [])
    writers = [
        _writer(
            system, n, stack_env, products, quotes, log, random.Random(f"{seed}/{system}{n}"), tag
        )
        for system in ("erp", "crm")
        for n in range(2)
    ]
    chaos = victims(pipeline, budget, rng)
    wrote = run_threads(writers, chaos, seed, budget.write_seconds)
    notes: list[str] = [v.error for v in chaos if v.error] + [m for v in chaos if (m := v.missed)]

    def rows() -> object:
        return (_products(stack_env, products), _quotes(stack_env, quotes))

    quiet = quiesce(pipeline, rows, notes)
    problems = _verdict(stack_env, products, initial, quotes, first_orders, log)
    if quiet and not problems:
        before = _stamps(stack_env, products, quotes)
        time.sleep(8)
        settled(pipeline)
        after = _stamps(stack_env, products, quotes)
        problems += [
            f"written again after quiet: {a} -> {b}"
            for a, b in zip(before, after, strict=True)
            if a != b
        ]
    kinds = dict(sorted(log.counts.items()))
    missing = [
        k
        for k in ("crm product price", "crm quote order_name", "erp product name")
        if k not in kinds
    ]
    if missing:
        problems.append(f"the writers made no {missing} writes")
    summary = (
        f"seed={seed} (ERPCRM_CONVERGENCE_SEED={seed} replays the choices); wrote {wrote:.0f}s,"
        f" writes {kinds}; kills: " + "; ".join(line for v in chaos for line in v.log)
    )
    print(summary)
    assert not log.errors, "\n".join(log.errors[:10])
    assert not notes, "\n".join([summary, *notes, *problems])
    assert not problems, "\n".join([summary, *problems])
