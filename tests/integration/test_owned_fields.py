"""CRM edits of fields the ERP owns: the customer number, product fields, a won quote's
ERP order name and amounts.

What this proves (DESIGN.md §5.4, 5.5; README "Both systems converge"): the customer
number (ERP ``res_partner.ref``, CRM ``accounts.account_number``) is the ERP's, given by
its sequence and never written by the ERP sink. A CRM user changing it (to a mark of
their own, to a number in the ERP's format) or blanking it is refused like an edit of the
VAT id: the ERP sink records the conflict (reason ``owner``, the ERP the winner), the
ERP's number flows back to the account, and the exchange stops there (no echo). The
number is also how accounts are matched: the pair stays linked, and nothing is made
twice on either side.

Products and orders the same way: a CRM edit of a product's price, cost or type (the
ERP's) is refused by the ERP sink, which writes nothing into the ERP product, and the
ERP's values flow back to the CRM product; a won quote's ``erp_order_name`` (the ERP
order's ``name``, from its sequence) and its amounts are the ERP order's, and a CRM edit
of them is refused and reverted. Each refusal is audited once, and no echo follows.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial
from typing import Final

import psycopg
import pytest
from psycopg import sql

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


# ----------------------------------------------------------------- products and orders


def _one_value(dsn: str, query: str | sql.Composable, params: Sequence[object]) -> object:
    rows = execute(dsn, query, params)
    return rows[0][0] if rows else None


def _wait_equal(
    pipeline: Pipeline, read: Callable[[], object], wanted: Callable[[], object], what: str
) -> None:
    """Wait until ``read()`` equals ``wanted()``; a failure names both and dead workers."""

    def same() -> bool:
        assert not (dead := dead_workers(pipeline)), "\n".join(dead)
        return read() == wanted()

    try:
        wait_for(same, REVERT_SECONDS, what)
    except AssertionError:
        raise AssertionError(f"{what}: holds {read()!r}, wanted {wanted()!r}") from None


def _conflicts(pipeline: Pipeline, entity: str, key: str) -> list[tuple[str, str, str]]:
    """``(field, winner, reason)`` of the ERP sink's audited conflicts of one record."""
    rows = pipeline.erp_sink.query(
        "SELECT field, winner, reason FROM {schema}.conflicts"
        " WHERE entity = %s AND entity_key = %s ORDER BY id",
        (entity, key),
    )
    return [(str(f), str(w), str(r)) for f, w, r in rows]


def _stamps(
    env: dict[str, str], crm: Sequence[tuple[str, str]], erp: Sequence[tuple[str, int]]
) -> list[tuple[str, str]]:
    """``xmin`` of CRM rows ``(table, uuid)`` and ERP rows ``(table, id)``: a write moves it."""
    found: list[tuple[str, str]] = []
    for table, row in crm:
        query = sql.SQL("SELECT xmin::text FROM public.{} WHERE id = %s").format(
            sql.Identifier(table)
        )
        found.append((f"crm {table} {row}", str(_one_value(env["CRM_ADMIN_DSN"], query, (row,)))))
    for table, erp_id in erp:
        query = sql.SQL("SELECT xmin::text FROM public.{} WHERE id = %s").format(
            sql.Identifier(table)
        )
        found.append(
            (f"erp {table} {erp_id}", str(_one_value(env["ERP_ADMIN_DSN"], query, (erp_id,))))
        )
    return found


def new_products(
    pipeline: Pipeline, env: dict[str, str], tag: str, count: int
) -> list[tuple[int, str, str]]:
    """``count`` new ERP products, each with the CRM product the sink made: ``(erp id, crm
    id, sku)``."""
    made: list[tuple[int, str]] = []
    for index in range(count):
        sku = f"OWN-{tag}-{index}"
        erp_id = _one_value(
            env["ERP_DSN"],
            "INSERT INTO public.product_product (default_code, name, categ, list_price,"
            " standard_price) VALUES (%s, %s, 'Owned', %s, %s) RETURNING id",
            (sku, f"Owned product {tag} {index}", Decimal(20 + index), Decimal(11 + index)),
        )
        made.append((int(str(erp_id)), sku))

    def crm_id(sku: str) -> object:
        return _one_value(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text FROM public.aos_products WHERE part_number = %s",
            (sku,),
        )

    wait_for(lambda: all(crm_id(s) is not None for _, s in made), REVERT_SECONDS, "CRM products")
    settled(pipeline)
    return [(erp_id, str(crm_id(sku)), sku) for erp_id, sku in made]


PRODUCT_COLUMNS: Final = "price, cost, type, name, category"


def _crm_product(env: dict[str, str], crm_id: str) -> tuple[object, ...]:
    rows = execute(
        env["CRM_ADMIN_DSN"],
        sql.SQL("SELECT {} FROM public.aos_products WHERE id = %s").format(
            sql.SQL(PRODUCT_COLUMNS)
        ),
        (crm_id,),
    )
    return tuple(rows[0])


def _erp_product(env: dict[str, str], erp_id: int) -> tuple[object, ...]:
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT list_price, standard_price,"
        " CASE type WHEN 'service' THEN 'Service' ELSE 'Good' END, name, categ"
        " FROM public.product_product WHERE id = %s",
        (erp_id,),
    )
    return tuple(rows[0])


def test_crm_edits_of_product_fields_the_erp_owns_are_refused_and_reverted(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """A CRM user edits a product's price, its cost and type, or its name (shared): the
    owned edits are refused (``owner`` conflicts, once each), the ERP's values back in the
    CRM and nothing written into the ERP product; the shared name goes to the ERP (the
    later commit; made over the name the ERP gave it, an update, no conflict); no echo
    once both agree."""
    tag = uuid.uuid4().hex[:6]
    (priced, costed, named) = new_products(pipeline, stack_env, tag, 3)
    erp_before = {p[0]: _erp_product(stack_env, p[0]) for p in (priced, costed)}
    crm = stack_env["CRM_DSN"]
    execute(crm, "UPDATE public.aos_products SET price = 999.99 WHERE id = %s", (priced[1],))
    execute(
        crm,
        "UPDATE public.aos_products SET cost = 0.5, type = 'Service' WHERE id = %s",
        (costed[1],),
    )
    execute(
        crm, "UPDATE public.aos_products SET name = %s WHERE id = %s", (f"Renamed {tag}", named[1])
    )
    for erp_id, crm_id, sku in (priced, costed, named):
        _wait_equal(
            pipeline,
            partial(_crm_product, stack_env, crm_id),
            partial(_erp_product, stack_env, erp_id),
            f"product {sku} the same in both systems",
        )
    settled(pipeline)
    assert _erp_product(stack_env, named[0])[3] == f"Renamed {tag}"
    for erp_id, before in erp_before.items():
        assert _erp_product(stack_env, erp_id) == before  # the owner's values stay
    assert _conflicts(pipeline, "product", f"crm:{priced[1]}") == [("list_price", "erp", "owner")]
    assert sorted(_conflicts(pipeline, "product", f"crm:{costed[1]}")) == [
        ("product_type", "erp", "owner"),
        ("standard_price", "erp", "owner"),
    ]
    # The shared name: the CRM user renamed the name the ERP gave the product (the CRM's
    # update replaced the very value the ERP holds): an ordinary update, no conflict.
    assert _conflicts(pipeline, "product", f"crm:{named[1]}") == []
    skus = execute(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT part_number, count(*) FROM public.aos_products WHERE part_number LIKE %s"
        " GROUP BY part_number",
        (f"OWN-{tag}-%",),
    )
    assert sorted(skus) == sorted((p[2], 1) for p in (priced, costed, named))

    # No echo: once both agree, neither side writes the rows again.
    rows = (priced, costed, named)
    crm_rows = [("aos_products", p[1]) for p in rows]
    erp_rows = [("product_product", p[0]) for p in rows]
    before = _stamps(stack_env, crm_rows, erp_rows)
    time.sleep(8)
    settled(pipeline)
    assert _stamps(stack_env, crm_rows, erp_rows) == before
    assert len(_conflicts(pipeline, "product", f"crm:{priced[1]}")) == 1


def won_quote(env: dict[str, str], account: str, product: tuple[int, str, str]) -> str:
    """A quote of ``account`` with one line of ``product``, won (``Closed Accepted``)."""
    _, crm_id, sku = product
    with psycopg.connect(env["CRM_DSN"], autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO public.aos_quotes (name, account_id, stage, subtotal_amount,"
            " tax_amount, total_amount) VALUES ('Owned fields quote', %s, 'Negotiation',"
            " 40, 7.60, 47.60) RETURNING id::text",
            (account,),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO public.aos_products_quotes (parent_id, number, name, part_number,"
            " product_id, product_qty, product_list_price, product_unit_price,"
            " product_total_price) VALUES (%s, 1, 'Line', %s, %s, 2, 20, 20, 40)",
            (row[0], sku, crm_id),
        )
        conn.execute(
            "UPDATE public.aos_quotes SET stage = 'Closed Accepted' WHERE id = %s", (row[0],)
        )
    return str(row[0])


def _quote(env: dict[str, str], quote: str) -> tuple[object, ...]:
    rows = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT erp_order_name, subtotal_amount, tax_amount, total_amount"
        " FROM public.aos_quotes WHERE id = %s",
        (quote,),
    )
    return tuple(rows[0])


def _order(env: dict[str, str], quote: str) -> tuple[object, ...]:
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT name, amount_untaxed, amount_tax, amount_total FROM public.sale_order"
        " WHERE crm_quote_id = %s",
        (quote,),
    )
    return tuple(rows[0]) if len(rows) == 1 else (len(rows),)


def _order_id(env: dict[str, str], quote: str) -> int:
    return int(
        str(
            _one_value(
                env["ERP_ADMIN_DSN"],
                "SELECT id FROM public.sale_order WHERE crm_quote_id = %s",
                (quote,),
            )
        )
    )


def test_crm_edits_of_a_won_quotes_erp_order_name_and_amounts_are_reverted(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """The ERP order's name (``erp_order_name``) and its amounts are the ERP's once the
    order exists: a CRM user's edit of either is refused (``owner`` conflicts, once
    each), the ERP's values back on the quote, the ERP order untouched and made once,
    and no echo."""
    rng = random.Random(uuid.uuid4().int)
    values = ValueMaker(uuid.uuid4().hex[:4])
    pairs, _ = create_pairs(pipeline, stack_env, values, rng, 1)
    [product] = new_products(pipeline, stack_env, uuid.uuid4().hex[:6], 1)
    renamed, repriced = (won_quote(stack_env, pairs[0].account, product) for _ in range(2))
    for quote in (renamed, repriced):
        _wait_equal(
            pipeline,
            partial(_quote, stack_env, quote),
            partial(_order, stack_env, quote),
            f"quote {quote} showing its ERP order",
        )
    settled(pipeline)
    orders = {q: _order(stack_env, q) for q in (renamed, repriced)}
    crm = stack_env["CRM_DSN"]
    execute(
        crm,
        "UPDATE public.aos_quotes SET erp_order_name = %s WHERE id = %s",
        (f"X-{values.run_tag}", renamed),
    )
    execute(
        crm,
        "UPDATE public.aos_quotes SET total_amount = 1234.50, subtotal_amount = 1000 WHERE id = %s",
        (repriced,),
    )
    for quote in (renamed, repriced):
        _wait_equal(
            pipeline,
            partial(_quote, stack_env, quote),
            partial(_order, stack_env, quote),
            f"quote {quote} reverted to its ERP order",
        )
    settled(pipeline)
    assert {q: _order(stack_env, q) for q in orders} == orders
    assert _conflicts(pipeline, "sales_order", f"crm:{renamed}") == [
        ("order_number", "erp", "owner")
    ]
    assert sorted(_conflicts(pipeline, "sales_order", f"crm:{repriced}")) == [
        ("amount_total", "erp", "owner"),
        ("amount_untaxed", "erp", "owner"),
    ]

    crm_rows = [("aos_quotes", q) for q in orders]
    erp_rows = [("sale_order", _order_id(stack_env, q)) for q in orders]
    before = _stamps(stack_env, crm_rows, erp_rows)
    time.sleep(8)
    settled(pipeline)
    assert _stamps(stack_env, crm_rows, erp_rows) == before
    assert len(_conflicts(pipeline, "sales_order", f"crm:{renamed}")) == 1
