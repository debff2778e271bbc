import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from psycopg import sql as psql

from sinks import sql
from sinks.sql import Column, Table

ACCOUNTS = Table("public", "accounts")


def text(q: psql.Composable) -> str:
    return q.as_string(None)


def test_sync_schema_ddl() -> None:
    ddl = [text(q) for q in sql.create_sync_schema()]
    assert ddl[0] == 'CREATE SCHEMA IF NOT EXISTS "erpcrm_sync"'
    assert ddl[1].startswith('CREATE TABLE IF NOT EXISTS "erpcrm_sync"."applied" (')
    assert "PRIMARY KEY (entity, entity_key)" in ddl[1]
    assert 'PRIMARY KEY (topic, "partition")' in ddl[2]
    assert '"erpcrm_sync"."conflicts"' in ddl[3]
    assert "winner text" in ddl[3]


def test_upsert_rows() -> None:
    q = sql.upsert_rows(
        ACCOUNTS, [Column("id", "uuid"), Column("name", "text")], ["id"], returning=["id"]
    )
    assert text(q) == (
        'INSERT INTO "public"."accounts" AS t ("id", "name") SELECT "u"."id", "u"."name" '
        'FROM (SELECT ("e"->>0)::uuid AS "id", ("e"->>1)::text AS "name" FROM '
        'jsonb_array_elements(%s::jsonb) AS "e" OFFSET 0) AS "u" ON CONFLICT ("id") '
        'DO UPDATE SET "name" = EXCLUDED."name" WHERE ("t"."name") IS DISTINCT FROM '
        '("excluded"."name") RETURNING "id"'
    )


def test_upsert_on_partial_index() -> None:
    q = sql.upsert_rows(
        ACCOUNTS,
        [Column("account_number", "text"), Column("name", "text")],
        ["account_number"],
        conflict_live="deleted",
    )
    assert (
        'ON CONFLICT ("account_number") WHERE "account_number" IS NOT NULL AND NOT "deleted"'
        in text(q)
    )


def test_update_and_deletes() -> None:
    key = Column("id", "uuid")
    assert text(sql.update_rows(ACCOUNTS, key, [Column("name", "text")])) == (
        'UPDATE "public"."accounts" AS t SET "name" = "u"."name" FROM (SELECT '
        '("e"->>0)::uuid AS "id", ("e"->>1)::text AS "name" FROM '
        'jsonb_array_elements(%s::jsonb) AS "e" OFFSET 0) AS "u" WHERE "t"."id" = "u"."id" AND '
        '("t"."name") IS DISTINCT FROM ("u"."name")'
    )
    assert text(sql.soft_delete_rows(ACCOUNTS, key, "deleted")) == (
        'UPDATE "public"."accounts" AS t SET "deleted" = true WHERE "t"."id" = ANY(%b::uuid[]) '
        'AND "t"."deleted" IS DISTINCT FROM true'
    )
    assert (
        text(sql.delete_rows(ACCOUNTS, key))
        == 'DELETE FROM "public"."accounts" WHERE "id" = ANY(%b::uuid[])'
    )


def test_state_and_offsets() -> None:
    applied = text(sql.applied_upsert())
    assert "WHERE t.version < EXCLUDED.version" in applied
    assert '("e"->>2)::bigint AS "version"' in applied
    assert "jsonb_array_elements(%s::jsonb)" in applied
    assert '"e"->2 AS "written"' in text(sql.row_clock_upsert())
    offsets = text(sql.offsets_upsert())
    assert "WHERE t.next_offset <= EXCLUDED.next_offset" in offsets
    assert "FOR UPDATE" in text(sql.select_applied())
    assert text(
        sql.select_current(
            ACCOUNTS, ["id", "name"], [sql.Key(Column("account_number", "text"), live="deleted")]
        )
    ) == (
        'WITH "k" AS MATERIALIZED (SELECT ("e"."r"->>0)::text AS "v0", "e"."n" AS '
        '"_erpcrm_lookup" FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS "e"("r", '
        '"n")), "f0" AS MATERIALIZED (SELECT "l"."_erpcrm_lookup", "y".* FROM (SELECT * FROM '
        '"k" WHERE "k"."v0" IS NOT NULL OFFSET 0) AS "l" CROSS JOIN LATERAL (SELECT "t"."id", '
        '"t"."name" FROM "public"."accounts" AS "t" WHERE "t"."account_number" = "l"."v0" AND '
        'NOT "t"."deleted" OFFSET 0 FOR UPDATE) AS "y") SELECT "x".* FROM (SELECT * FROM "f0") '
        'AS "x"'
    )


def test_select_current_tries_a_weaker_key_only_for_the_lookups_the_stronger_missed() -> None:
    keys = [sql.Key(Column("id", "uuid")), sql.Key(Column("account_number", "text"), "deleted")]
    assert text(sql.select_current(ACCOUNTS, ["id"], keys, lock=False)) == (
        'WITH "k" AS MATERIALIZED (SELECT ("e"."r"->>0)::uuid AS "v0", ("e"."r"->>1)::text AS '
        '"v1", "e"."n" AS "_erpcrm_lookup" FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY '
        'AS "e"("r", "n")), "f0" AS MATERIALIZED (SELECT "l"."_erpcrm_lookup", "y".* FROM '
        '(SELECT * FROM "k" WHERE "k"."v0" IS NOT NULL OFFSET 0) AS "l" CROSS JOIN LATERAL '
        '(SELECT "t"."id" FROM "public"."accounts" AS "t" WHERE "t"."id" = "l"."v0" OFFSET 0) '
        'AS "y"), "f1" AS MATERIALIZED (SELECT "l"."_erpcrm_lookup", "y".* FROM (SELECT * FROM '
        '"k" WHERE "k"."v1" IS NOT NULL AND NOT EXISTS (SELECT FROM "f0" WHERE '
        '"f0"."_erpcrm_lookup" = "k"."_erpcrm_lookup") OFFSET 0) AS "l" CROSS JOIN LATERAL '
        '(SELECT "t"."id" FROM "public"."accounts" AS "t" WHERE "t"."account_number" = '
        '"l"."v1" AND NOT "t"."deleted" OFFSET 0) AS "y") SELECT "x".* FROM (SELECT * FROM '
        '"f0" UNION ALL SELECT * FROM "f1") AS "x"'
    )
    third = text(
        sql.select_current(ACCOUNTS, ["id"], [*keys, sql.Key(Column("vat", "text"))], lock=False)
    )
    assert (
        '"k"."v2" IS NOT NULL AND NOT EXISTS (SELECT FROM "f0" WHERE "f0"."_erpcrm_lookup" = '
        '"k"."_erpcrm_lookup") AND NOT EXISTS (SELECT FROM "f1" WHERE "f1"."_erpcrm_lookup" = '
        '"k"."_erpcrm_lookup")' in third
    )
    with pytest.raises(ValueError):
        sql.select_current(ACCOUNTS, ["id"], [])


def test_select_current_reads_the_rows_clocks_in_the_same_statement() -> None:
    keys = [sql.Key(Column("id", "uuid"))]
    query = text(sql.select_current(ACCOUNTS, ["id"], keys, clock=("erpcrm_sync", "id")))
    assert query.endswith(
        'LEFT JOIN LATERAL (SELECT * FROM "erpcrm_sync"."row_clock" AS c WHERE c.entity = %s '
        'AND c.row_id = "x"."id"::text FOR UPDATE) AS c ON true'
    )
    assert 'c.row_id AS "_erpcrm_clock_row"' in query
    assert 'c."written"::text AS "_erpcrm_clock_written"' in query
    assert sql.clock_column("sink_xid") in query


def test_writes_return_the_transaction_id_of_the_rows_they_changed() -> None:
    key = Column("id", "uuid")
    update = text(
        sql.update_rows(ACCOUNTS, key, [Column("name", "text")], returning=["id"], xmin=True)
    )
    assert update.endswith('RETURNING "t"."id", "t"."xmin"::text::bigint AS "_erpcrm_xmin"')
    insert = text(sql.insert_children(ACCOUNTS, [key], returning=["id"], xmin=True))
    assert insert.endswith('RETURNING "id", "xmin"::text::bigint AS "_erpcrm_xmin"')
    deleted = text(sql.soft_delete_rows(ACCOUNTS, key, "deleted", returning=True))
    assert deleted.endswith('RETURNING "t"."id", "t"."xmin"::text::bigint AS "_erpcrm_xmin"')
    assert "RETURNING" not in text(sql.insert_children(ACCOUNTS, [key]))


def test_a_changed_row_gets_the_modification_stamp_the_target_would_give_it() -> None:
    key = Column("id", "uuid")
    update = text(sql.update_rows(ACCOUNTS, key, [Column("name", "text")], stamp="date_modified"))
    assert 'SET "name" = "u"."name", "date_modified" = now() FROM' in update
    assert 'IS DISTINCT FROM ("u"."name")' in update  # an unchanged row keeps its stamp
    deleted = text(sql.soft_delete_rows(ACCOUNTS, key, "deleted", stamp="date_modified"))
    assert 'SET "deleted" = true, "date_modified" = now() WHERE' in deleted
    assert "now()" not in text(sql.update_rows(ACCOUNTS, key, [Column("name", "text")]))


def test_records_carry_every_value_as_its_column_reads_it() -> None:
    ident = uuid.uuid4()
    at = datetime(2026, 12, 7, 6, 30, 1, 250_000, tzinfo=UTC)
    rows = [
        (ident, 'Ann "A" \u00e9\n', Decimal("12.50"), Decimal("1E+2"), 17, True, None),
        ("x", at, date(2026, 12, 7), {"name": 1796624086900}, 2**70, False, 0),
    ]
    assert json.loads(sql.records(rows)) == [
        [str(ident), 'Ann "A" \u00e9\n', "12.50", "1E+2", 17, True, None],
        [
            "x",
            "2026-12-07T06:30:01.250000+00:00",
            "2026-12-07",
            {"name": 1796624086900},
            2**70,
            False,
            0,
        ],
    ]
    # orjson writes what the standard library writes (the fallback, above, for 2**70)
    assert sql.records([rows[1][:4]]) == json.dumps(
        [["x", at.isoformat(), "2026-12-07", {"name": 1796624086900}]], separators=(",", ":")
    )
    assert sql.records([]) == "[]"
    with pytest.raises(TypeError):
        sql.records([(b"bytes",)])


def test_records_need_json_columns_not_bytes() -> None:
    with pytest.raises(ValueError):
        sql.upsert_rows(ACCOUNTS, [Column("id", "uuid"), Column("blob", "bytea")], ["id"])


def test_parameter_arrays_hold_one_type_per_column() -> None:
    assert sql.array("numeric", [Decimal("1.5"), 0, 2.5, None]) == [
        Decimal("1.5"),
        Decimal(0),
        Decimal("2.5"),
        None,
    ]
    ident = uuid.uuid4()
    assert sql.array("uuid", [ident, str(ident), None]) == [str(ident), str(ident), None]
    assert sql.array("bigint", ["17", 4, "-3", "x1", None]) == [17, 4, -3, "x1", None]
    assert sql.array("boolean", [True, None]) == [True, None]


def test_origin_and_grant() -> None:
    assert text(sql.origin_session_setup()) == "SELECT pg_replication_origin_session_setup(%s)"
    assert text(sql.grant_table(ACCOUNTS, "erpcrm_sink")) == (
        'GRANT SELECT, INSERT, UPDATE, DELETE ON "public"."accounts" TO "erpcrm_sink"'
    )


def test_hostile_names_are_quoted_and_types_checked() -> None:
    evil = Table("public", 'x"; DROP TABLE y; --')
    assert '"x""; DROP TABLE y; --"' in text(sql.delete_rows(evil, Column("id", "uuid")))
    with pytest.raises(ValueError):
        Column("id", "uuid); DROP TABLE y; --")


def test_no_values_interpolated() -> None:
    queries = [
        *sql.create_sync_schema(),
        sql.applied_upsert(),
        sql.offsets_upsert(),
        sql.conflicts_insert(),
        sql.upsert_rows(ACCOUNTS, [Column("id", "uuid")], ["id"]),
    ]
    for q in queries:
        assert "'" not in text(q)


def test_suspect_and_row_clock_statements_build_and_interpolate_nothing() -> None:
    for q in (
        sql.suspects_hold(),
        sql.suspects_decided(),
        sql.suspects_pending(),
        sql.suspects_carried_out(),
        sql.suspects_list(),
        sql.suspects_decide(),
        sql.row_clock_select(),
        sql.row_clock_upsert(),
        sql.announce_done(),
    ):
        assert "%s" in text(q) or "%b" in text(q)
    assert "%b::bytea[]" in text(sql.suspects_hold())


def test_the_rows_made_are_learnt_from_the_link_column_only_while_none_is_remembered() -> None:
    q = text(
        sql.made_backfill(
            Table("public", "sale_order"), Column("id", "bigint"), Column("crm_quote_id", "uuid")
        )
    )
    assert q == (
        'INSERT INTO "erpcrm_sync"."made" (entity, entity_key, row_id) '
        'SELECT %s, %s || "crm_quote_id"::text, "id"::text FROM "public"."sale_order" '
        'WHERE "crm_quote_id" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "erpcrm_sync"."made" '
        "WHERE entity = %s) ON CONFLICT (entity, entity_key) DO NOTHING"
    )
    assert any('"erpcrm_sync"."made"' in text(d) for d in sql.create_sync_schema())


def test_live_rows_are_there_and_not_marked_dead() -> None:
    q = text(sql.live_rows(ACCOUNTS, Column("id", "uuid"), "deleted", True))
    assert q == (
        'SELECT "id"::text FROM "public"."accounts" WHERE "id" = ANY(%s::uuid[]) '
        'AND "deleted" IS DISTINCT FROM true'
    )
