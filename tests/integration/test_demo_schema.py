"""The demo ERP and CRM databases as loaded by the stack: schema contract, triggers, seed.

Checks that write run inside a transaction that is rolled back, so they leave nothing
behind for the capture to see. Seed checks select the seeded rows by their keys, so they
hold whatever else has run against the stack before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from erpcrm.stack import LocalStack

pytestmark = pytest.mark.integration

# DESIGN.md section 3: the columns the flows rely on.
ERP_COLUMNS: dict[str, set[str]] = {
    "res_partner": {
        "id", "name", "ref", "vat", "email", "phone", "street", "city", "zip",
        "country_code", "is_company", "active", "crm_account_id", "write_date",
    },
    "product_product": {
        "id", "default_code", "barcode", "name", "list_price", "standard_price", "uom",
        "active", "write_date",
    },
    "stock_location": {"id", "name", "write_date"},
    "stock_quant": {
        "id", "product_id", "location_id", "quantity", "reserved_quantity", "write_date",
    },
    "sale_order": {
        "id", "name", "partner_id", "state", "date_order", "amount_untaxed", "amount_tax",
        "amount_total", "currency", "client_order_ref", "write_date",
    },
    "sale_order_line": {
        "id", "order_id", "product_id", "product_uom_qty", "price_unit", "discount",
        "price_subtotal",
    },
    "account_move": {
        "id", "name", "partner_id", "invoice_origin", "amount_total", "amount_residual",
        "payment_state", "state", "invoice_date", "write_date",
    },
    "account_move_line": {"id", "move_id", "write_date"},
}  # fmt: skip
CRM_COLUMNS: dict[str, set[str]] = {
    "accounts": {
        "id", "name", "account_number", "vat", "email", "phone_office",
        "billing_address_street", "billing_address_city", "billing_address_postalcode",
        "billing_address_country", "industry", "deleted", "date_modified",
    },
    "contacts": {
        "id", "account_id", "first_name", "last_name", "email", "phone_mobile", "deleted",
        "date_modified",
    },
    "aos_products": {"id", "part_number", "name", "price", "cost", "deleted", "date_modified"},
    "product_availability": {
        "product_id", "part_number", "on_hand", "reserved", "available", "updated_at",
    },
    "opportunities": {"id", "name", "account_id", "sales_stage", "deleted", "date_modified"},
    "aos_quotes": {
        "id", "number", "account_id", "stage", "total_amount", "erp_order_name",
        "erp_order_state", "date_modified",
    },
    "aos_products_quotes": {
        "id", "parent_id", "product_id", "product_qty", "product_unit_price",
        "product_discount", "product_total_price",
    },
    "aos_invoices": {
        "id", "number", "account_id", "quote_id", "erp_invoice_name", "total_amount",
        "amount_due", "status", "invoice_date",
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def erp(stack_env: dict[str, str]) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(stack_env["ERP_DSN"]) as conn:
        yield conn


@pytest.fixture(scope="module")
def crm(stack_env: dict[str, str]) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(stack_env["CRM_DSN"]) as conn:
        yield conn


@pytest.fixture(autouse=True)
def _rollback(
    erp: psycopg.Connection[tuple[object, ...]], crm: psycopg.Connection[tuple[object, ...]]
) -> Iterator[None]:
    yield
    erp.rollback()
    crm.rollback()


def scalar(conn: psycopg.Connection[tuple[object, ...]], query: Any, *params: object) -> object:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


def columns_of(conn: psycopg.Connection[tuple[object, ...]], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    ).fetchall()
    return {str(r[0]) for r in rows}


# --- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("db", "tables"), [("erp", ERP_COLUMNS), ("crm", CRM_COLUMNS)])
def test_tables_have_the_design_columns(
    request: pytest.FixtureRequest, db: str, tables: dict[str, set[str]]
) -> None:
    conn = request.getfixturevalue(db)
    for table, wanted in tables.items():
        missing = wanted - columns_of(conn, table)
        assert not missing, f"{db}.{table} lacks {sorted(missing)}"


@pytest.mark.parametrize(("db", "tables"), [("erp", ERP_COLUMNS), ("crm", CRM_COLUMNS)])
def test_every_table_has_a_primary_key(
    request: pytest.FixtureRequest, db: str, tables: dict[str, set[str]]
) -> None:
    conn = request.getfixturevalue(db)
    rows = conn.execute(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind = 'r' AND NOT EXISTS ("
        "   SELECT 1 FROM pg_constraint AS k WHERE k.conrelid = c.oid AND k.contype = 'p')"
    ).fetchall()
    without_pk = {str(r[0]) for r in rows}
    assert not without_pk & set(tables), f"{db} tables without a primary key: {without_pk}"
    # The replica identity is the primary key, except on the tables both systems edit:
    # FULL, so an update carries its old row and a change knows which fields it changed.
    identities = conn.execute(
        "SELECT c.relname, c.relreplident FROM pg_class AS c"
        " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relname = ANY(%s)",
        (list(tables),),
    ).fetchall()
    full = {
        "erp": {"res_partner", "product_product", "sale_order"},
        "crm": {"accounts", "contacts", "aos_products", "aos_quotes"},
    }[db]
    assert {str(r[0]): str(r[1]) for r in identities} == {
        t: "f" if t in full else "d" for t in tables
    }


def test_erp_keys_are_bigint_identities(erp: psycopg.Connection[tuple[object, ...]]) -> None:
    rows = erp.execute(
        "SELECT table_name, data_type, is_identity FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name = 'id' AND table_name = ANY(%s)",
        (list(ERP_COLUMNS),),
    ).fetchall()
    assert {(str(r[1]), str(r[2])) for r in rows} == {("bigint", "YES")}
    assert len(rows) == len(ERP_COLUMNS)


def test_crm_keys_are_uuids(crm: psycopg.Connection[tuple[object, ...]]) -> None:
    rows = crm.execute(
        "SELECT table_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name = 'id' AND table_name = ANY(%s)",
        (list(CRM_COLUMNS),),
    ).fetchall()
    assert {str(r[1]) for r in rows} == {"uuid"}
    assert len(rows) == len(CRM_COLUMNS) - 1  # product_availability is keyed by product_id


@pytest.mark.parametrize("db", ["erp", "crm"])
def test_wal_level_is_logical(request: pytest.FixtureRequest, db: str) -> None:
    assert scalar(request.getfixturevalue(db), "SHOW wal_level") == "logical"


# --- triggers and constraints ---------------------------------------------------------------


def test_write_date_follows_updates(erp: psycopg.Connection[tuple[object, ...]]) -> None:
    partner = scalar(erp, "SELECT min(id) FROM public.res_partner")
    before = scalar(erp, "SELECT write_date FROM public.res_partner WHERE id = %s", partner)
    erp.execute("UPDATE public.res_partner SET phone = phone || ' 1' WHERE id = %s", (partner,))
    after = scalar(erp, "SELECT write_date FROM public.res_partner WHERE id = %s", partner)
    assert after == scalar(erp, "SELECT now()")
    assert after != before


def test_no_op_update_keeps_write_date(erp: psycopg.Connection[tuple[object, ...]]) -> None:
    quant = scalar(erp, "SELECT min(id) FROM public.stock_quant")
    before = scalar(erp, "SELECT write_date FROM public.stock_quant WHERE id = %s", quant)
    erp.execute("UPDATE public.stock_quant SET quantity = quantity WHERE id = %s", (quant,))
    assert scalar(erp, "SELECT write_date FROM public.stock_quant WHERE id = %s", quant) == before


def test_explicit_write_date_is_kept(erp: psycopg.Connection[tuple[object, ...]]) -> None:
    product = scalar(erp, "SELECT min(id) FROM public.product_product")
    erp.execute(
        "UPDATE public.product_product SET name = name || '!',"
        " write_date = '2001-02-03 04:05:06+00' WHERE id = %s",
        (product,),
    )
    stamp = scalar(erp, "SELECT write_date FROM public.product_product WHERE id = %s", product)
    assert str(stamp).startswith("2001-02-03")


@pytest.mark.parametrize(
    ("table", "assignment"),
    [
        ("accounts", "industry = coalesce(industry, '') || 'x'"),
        ("contacts", "title = coalesce(title, '') || 'x'"),
        ("aos_products", "cost = cost + 1"),
        ("aos_quotes", "term = coalesce(term, '') || 'x'"),
        ("aos_products_quotes", "product_qty = product_qty + 1"),
        ("opportunities", "amount = amount + 1"),
    ],
)
def test_date_modified_follows_updates(
    crm: psycopg.Connection[tuple[object, ...]], table: str, assignment: str
) -> None:
    ident = sql.Identifier("public", table)
    row = crm.execute(
        sql.SQL("SELECT id, date_modified FROM {} ORDER BY id LIMIT 1").format(ident)
    ).fetchone()
    assert row is not None
    crm.execute(
        sql.SQL("UPDATE {} SET {} WHERE id = %s").format(ident, sql.SQL(assignment)),
        (row[0],),
    )
    after = scalar(crm, sql.SQL("SELECT date_modified FROM {} WHERE id = %s").format(ident), row[0])
    assert after == scalar(crm, "SELECT now()")
    assert after != row[1]


def test_product_availability_updated_at_follows_updates(
    crm: psycopg.Connection[tuple[object, ...]],
) -> None:
    crm.execute(
        "INSERT INTO public.product_availability (product_id, part_number, on_hand, updated_at)"
        " SELECT id, part_number, 1, '2001-01-01+00' FROM public.aos_products"
        " WHERE part_number = 'SKU-00001'"
        " ON CONFLICT (product_id) DO UPDATE SET updated_at = EXCLUDED.updated_at"
    )
    crm.execute(
        "UPDATE public.product_availability SET on_hand = on_hand + 1"
        " WHERE part_number = 'SKU-00001'"
    )
    stamp = scalar(
        crm,
        "SELECT updated_at FROM public.product_availability WHERE part_number = 'SKU-00001'",
    )
    assert stamp == scalar(crm, "SELECT now()")


def test_crm_explicit_and_unchanged_stamps_are_kept(
    crm: psycopg.Connection[tuple[object, ...]],
) -> None:
    account = scalar(crm, "SELECT min(id::text) FROM public.accounts")
    crm.execute(
        "UPDATE public.accounts SET industry = coalesce(industry, '') || 'y',"
        " date_modified = '2001-02-03 04:05:06+00' WHERE id = %s",
        (account,),
    )
    query = "SELECT date_modified FROM public.accounts WHERE id = %s"
    assert str(scalar(crm, query, account)).startswith("2001-02-03")
    crm.execute("UPDATE public.accounts SET industry = industry WHERE id = %s", (account,))
    assert str(scalar(crm, query, account)).startswith("2001-02-03")


@pytest.mark.parametrize("db", ["erp", "crm"])
def test_touch_row_stamps_any_column_it_is_given(request: pytest.FixtureRequest, db: str) -> None:
    conn = request.getfixturevalue(db)
    conn.execute(
        "CREATE TEMPORARY TABLE touched (id int PRIMARY KEY, v text, changed_on timestamptz)"
    )
    conn.execute(
        "CREATE TRIGGER touched_stamp BEFORE UPDATE ON touched FOR EACH ROW"
        " EXECUTE FUNCTION public.touch_row('changed_on')"
    )
    conn.execute("INSERT INTO touched VALUES (1, 'a', '2001-01-01+00'), (2, 'b', NULL)")
    conn.execute("UPDATE touched SET v = v || '!'")
    conn.execute("UPDATE touched SET changed_on = '2002-02-02+00' WHERE id = 2")
    stamps = dict(conn.execute("SELECT id, changed_on FROM touched").fetchall())
    assert stamps[1] == scalar(conn, "SELECT now()")
    assert str(stamps[2]).startswith("2002-02-02")


def test_negative_stock_is_allowed(erp: psycopg.Connection[tuple[object, ...]]) -> None:
    erp.execute(
        "UPDATE public.stock_quant SET quantity = -5"
        " WHERE id = (SELECT min(id) FROM public.stock_quant)"
    )


def test_erp_constraints(erp: psycopg.Connection[tuple[object, ...]]) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):
        erp.execute("INSERT INTO public.res_partner (name, ref) VALUES ('Dup', 'C00001')")
    erp.rollback()
    with pytest.raises(psycopg.errors.UniqueViolation):
        erp.execute(
            "INSERT INTO public.product_product (default_code, name) VALUES ('SKU-00001', 'x')"
        )
    erp.rollback()
    with pytest.raises(psycopg.errors.CheckViolation):
        erp.execute("UPDATE public.product_product SET list_price = -1 WHERE id = 1")
    erp.rollback()
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        erp.execute(
            "INSERT INTO public.sale_order (partner_id) VALUES ((SELECT max(id) + 1000 FROM"
            " public.res_partner))"
        )


def test_erp_numbers_documents_itself(erp: psycopg.Connection[tuple[object, ...]]) -> None:
    row = erp.execute(
        "INSERT INTO public.res_partner (name) VALUES ('Numbered Ltd') RETURNING ref"
    ).fetchone()
    assert row is not None
    assert str(row[0]).startswith("C")
    order = erp.execute(
        "INSERT INTO public.sale_order (partner_id) VALUES (1) RETURNING name"
    ).fetchone()
    assert order is not None
    assert str(order[0]).startswith("S")


def test_crm_new_rows_get_uuids_and_quote_numbers(
    crm: psycopg.Connection[tuple[object, ...]],
) -> None:
    row = crm.execute(
        "INSERT INTO public.accounts (name) VALUES ('Fresh Prospect') RETURNING id, deleted"
    ).fetchone()
    assert row is not None
    assert row[1] is False
    quote = crm.execute(
        "INSERT INTO public.aos_quotes (name, account_id) VALUES ('Q', %s) RETURNING number",
        (row[0],),
    ).fetchone()
    assert quote is not None
    assert int(str(quote[0])) > 1040


def test_one_live_crm_account_per_customer_number(
    crm: psycopg.Connection[tuple[object, ...]],
) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):
        crm.execute("INSERT INTO public.accounts (name, account_number) VALUES ('x', 'C00001')")


def _has_parent_index(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    return bool(
        scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_attribute AS a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = 'public.accounts'::regclass AND a.attname = 'parent_id')",
        )
    )


def test_deleting_accounts_finds_their_children_by_index(
    crm: psycopg.Connection[tuple[object, ...]], local_stack: LocalStack
) -> None:
    """The check of ``accounts.parent_id`` on a delete reads an index, not the table.

    A database made before the index has it after the next start (the upgrade file).
    """
    assert _has_parent_index(crm)
    with psycopg.connect(local_stack.crm.dsn(), autocommit=True) as owner:
        owner.execute("DROP INDEX public.accounts_parent_id_idx")
        try:
            local_stack.crm.upgrade_schema()
            upgraded = _has_parent_index(owner)
            local_stack.crm.upgrade_schema()  # nothing left to do
        finally:
            owner.execute(
                "CREATE INDEX IF NOT EXISTS accounts_parent_id_idx ON public.accounts (parent_id)"
            )
    assert upgraded


# --- seed -----------------------------------------------------------------------------------


SEED_COUNTS = [
    # (database, query, lowest, highest)
    ("erp", "SELECT count(*) FROM public.res_partner WHERE ref BETWEEN 'C00001' AND 'C00300'",
     300, 300),
    ("erp", "SELECT count(*) FROM public.res_partner WHERE ref <= 'C00300' AND NOT is_company",
     30, 40),
    ("erp", "SELECT count(*) FROM public.res_partner WHERE crm_account_id IS NOT NULL",
     170, None),
    ("erp", "SELECT count(*) FROM public.product_product"
            " WHERE default_code BETWEEN 'SKU-00001' AND 'SKU-00200'", 200, 200),
    ("erp", "SELECT count(*) FROM public.stock_location", 4, None),
    ("erp", "SELECT count(*) FROM public.stock_quant", 300, None),
    ("erp", "SELECT count(*) FROM public.sale_order WHERE name BETWEEN 'S00001' AND 'S00050'",
     50, 50),
    ("erp", "SELECT count(*) FROM public.sale_order_line AS l JOIN public.sale_order AS o"
            " ON o.id = l.order_id WHERE o.name BETWEEN 'S00001' AND 'S00050'", 150, 150),
    ("erp", "SELECT count(*) FROM public.account_move"
            " WHERE name BETWEEN 'INV/2024/00001' AND 'INV/2024/00030'", 30, 30),
    ("erp", "SELECT count(DISTINCT payment_state) FROM public.account_move", 4, None),
    # Barcodes are valid EAN-13.
    ("erp", "SELECT count(*) FROM public.product_product AS p WHERE p.barcode IS NOT NULL AND"
            " (SELECT sum(substr(p.barcode, k, 1)::int * CASE WHEN k % 2 = 0 THEN 3 ELSE 1 END)"
            "  FROM generate_series(1, 13) AS k) % 10 <> 0", 0, 0),
    ("crm", "SELECT count(*) FROM public.accounts"
            " WHERE account_number BETWEEN 'C00001' AND 'C00170'", 170, 170),
    ("crm", "SELECT count(*) FROM public.accounts"
            # CRM-only in the seed: no number, or one the ERP assigned later (a sink ran).
            " WHERE created_by = 'admin' AND (account_number IS NULL"
            " OR account_number > 'C00300')", 30, 30),
    ("crm", "SELECT count(*) FROM public.contacts", 400, None),
    ("crm", "SELECT count(*) FROM public.aos_products"
            " WHERE part_number BETWEEN 'SKU-00001' AND 'SKU-00200'", 200, 200),
    ("crm", "SELECT count(*) FROM public.opportunities", 60, None),
    ("crm", "SELECT count(*) FROM public.aos_quotes WHERE number BETWEEN 1001 AND 1040", 40, 40),
    ("crm", "SELECT count(*) FROM public.aos_products_quotes AS l JOIN public.aos_quotes AS q"
            " ON q.id = l.parent_id WHERE q.number BETWEEN 1001 AND 1040", 120, 120),
    # Every seeded account has one to three contacts.
    ("crm", "SELECT count(*) FROM public.accounts AS a WHERE a.created_by = 'admin' AND"
            " (SELECT count(*) FROM public.contacts AS c"
            "  WHERE c.account_id = a.id AND c.date_entered <= a.date_entered)"
            " NOT BETWEEN 1 AND 3", 0, 0),
]  # fmt: skip


@pytest.mark.parametrize(("db", "query", "lowest", "highest"), SEED_COUNTS)
def test_seed_counts(
    request: pytest.FixtureRequest, db: str, query: str, lowest: int, highest: int | None
) -> None:
    n = int(str(scalar(request.getfixturevalue(db), query)))
    assert n >= lowest
    if highest is not None:
        assert n <= highest


def test_crm_customer_numbers_exist_in_the_erp(
    erp: psycopg.Connection[tuple[object, ...]], crm: psycopg.Connection[tuple[object, ...]]
) -> None:
    numbers = {
        str(r[0])
        for r in crm.execute(
            # The seed's accounts (rows other tests or a sink made may refer to ERP
            # customers those tests have since removed).
            "SELECT account_number FROM public.accounts"
            " WHERE account_number IS NOT NULL AND NOT deleted AND created_by = 'admin'"
        ).fetchall()
    }
    refs = {str(r[0]) for r in erp.execute("SELECT ref FROM public.res_partner").fetchall()}
    assert len(numbers) >= 170
    assert numbers <= refs, sorted(numbers - refs)[:10]


def test_linked_customers_agree(
    erp: psycopg.Connection[tuple[object, ...]], crm: psycopg.Connection[tuple[object, ...]]
) -> None:
    erp_rows = erp.execute(
        "SELECT crm_account_id, ref, vat FROM public.res_partner"
        " WHERE ref BETWEEN 'C00001' AND 'C00170' ORDER BY ref"
    ).fetchall()
    crm_rows = crm.execute(
        "SELECT id, account_number, vat FROM public.accounts"
        " WHERE account_number BETWEEN 'C00001' AND 'C00170' ORDER BY account_number"
    ).fetchall()

    # The pipeline's tests may have run first: the CRM then holds the VAT ids in the
    # compact form the sinks write (the ERP owns them), the same ids.
    def compact(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        return [
            (row[0], row[1], None if row[2] is None else re.sub(r"[^0-9A-Z]", "", str(row[2])))
            for row in rows
        ]

    assert compact([tuple(r) for r in erp_rows]) == compact([tuple(r) for r in crm_rows])


def test_crm_catalogue_mirrors_the_erp(
    erp: psycopg.Connection[tuple[object, ...]], crm: psycopg.Connection[tuple[object, ...]]
) -> None:
    erp_products = dict(
        erp.execute(
            "SELECT default_code, list_price FROM public.product_product"
            " WHERE default_code BETWEEN 'SKU-00001' AND 'SKU-00200'"
        ).fetchall()
    )
    crm_products = dict(
        crm.execute(
            "SELECT part_number, price FROM public.aos_products"
            " WHERE part_number BETWEEN 'SKU-00001' AND 'SKU-00200'"
        ).fetchall()
    )
    assert set(crm_products) == set(erp_products)
    assert all(isinstance(p, Decimal) and p >= 0 for p in erp_products.values())


def test_accepted_quotes_are_erp_orders(
    erp: psycopg.Connection[tuple[object, ...]], crm: psycopg.Connection[tuple[object, ...]]
) -> None:
    quotes = crm.execute(
        "SELECT q.number::text, q.erp_order_name, q.total_amount, a.account_number, q.id"
        " FROM public.aos_quotes AS q JOIN public.accounts AS a ON a.id = q.account_id"
        " WHERE q.number BETWEEN 1001 AND 1040 AND q.number % 4 = 0"
        " ORDER BY q.number"
    ).fetchall()
    assert len(quotes) == 10
    for number, order_name, total, account_number, quote_id in quotes:
        order = erp.execute(
            "SELECT o.client_order_ref, o.amount_total, p.ref, o.crm_quote_id"
            " FROM public.sale_order AS o JOIN public.res_partner AS p ON p.id = o.partner_id"
            " WHERE o.name = %s",
            (order_name,),
        ).fetchone()
        assert order is not None, order_name
        assert tuple(order) == (number, total, account_number, quote_id)
