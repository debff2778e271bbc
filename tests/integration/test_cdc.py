"""The capture (``erpcrm cdc``) against the real stack: envelopes, order, snapshot, DDL, echo.

Each capture runs as a real process with its own slot, topic prefix and metrics port
(tests/integration/cdc_fixtures.py); its topics are read with confluent-kafka's
``AvroDeserializer``, as a Debezium consumer would. The demo tables are written through
the application role, probe tables (created here, dropped afterwards) through the admin.
The snapshot row counts expect no other writer on the demo databases while this runs.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.integration.cdc_fixtures import (
    Capture,
    Event,
    TopicReader,
    capture_factory,  # noqa: F401 - fixture
    commit_ts_ms,
    counter_table_state,
    create_probe_table,
    drop_probe_table,
    execute,
    json_list,
    lsn_int,
    registry_client,
    slot_row,
    unique_name,
    wait_for,
    wait_replayed,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ERP_DEMO = (
    "res_partner",
    "product_product",
    "stock_quant",
    "sale_order",
    "sale_order_line",
    "account_move",
)
_ids = itertools.count(1000)


@dataclass
class Stream:
    """One ERP capture shared by this module's streaming tests."""

    env: dict[str, str]
    capture: Capture
    reader: TopicReader
    probe: str
    ddl: str
    rows_at_start: dict[str, int]
    started_ms: int

    def topic(self, table: str) -> str:
        return self.capture.topic(table)

    def events(self, table: str, key: Any = None) -> list[Event]:
        return self.reader.of(self.topic(table), key)

    def wait_events(
        self, table: str, key: Any, until: Callable[[list[Event]], bool], timeout: float = 30
    ) -> list[Event]:
        topic = self.topic(table)
        self.reader.wait(lambda _: until(self.reader.of(topic, key)), timeout, f"{topic} key {key}")
        return self.reader.of(topic, key)


FULL_IDENTITY = frozenset(
    {
        "res_partner",
        "product_product",
        "sale_order",
        "accounts",
        "contacts",
        "aos_products",
        "aos_quotes",
    }
)
"""Demo tables with REPLICA IDENTITY FULL (deploy/sql): their updates carry the old row."""


@pytest.fixture(scope="module")
def erp_stream(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stream]:
    probe, ddl = unique_name("cdc_probe_"), unique_name("cdc_ddl_")
    create_probe_table(
        stack_env,
        probe,
        "id int primary key, note text, counter int not null default 0",
        rows="select g, 'seed ' || g, 0 from generate_series(1, 3) g",
    )
    create_probe_table(stack_env, ddl, "id int primary key, note text", rows="values (1, 'old')")
    tables = (*ERP_DEMO, ddl, probe)
    rows_at_start = {
        t: int(
            execute(
                stack_env["ERP_ADMIN_DSN"],
                sql.SQL("select count(*) from {}").format(sql.Identifier("public", t)),
            )[0][0]
        )
        for t in tables
    }
    capture = Capture(stack_env, "erp", tables, tmp_path_factory.mktemp("cdc"))
    reader = None
    try:
        started_ms = int(time.time() * 1000)
        capture.start().wait_streaming()
        reader = TopicReader(stack_env, capture.topics)
        yield Stream(stack_env, capture, reader, probe, ddl, rows_at_start, started_ms)
    finally:
        if reader is not None:
            reader.close()
        capture.cleanup()
        drop_probe_table(stack_env, probe)
        drop_probe_table(stack_env, ddl)


def _xid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_current_xact_id()::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def _wal_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return lsn_int(str(row[0]))


def _check_streamed_source(
    event: Event, stream: Stream, table: str, xid: int, commit_ms: int, db: str = "erp"
) -> None:
    source = event.source
    assert source["connector"] == "postgresql"
    assert source["name"] == stream.capture.prefix
    assert source["db"] == db
    assert source["schema"] == "public"
    assert source["table"] == table
    assert source["snapshot"] == "false"
    assert isinstance(source["lsn"], int)
    assert source["lsn"] > 0
    assert isinstance(source["txId"], int)
    assert source["txId"] == xid
    assert abs(source["ts_ms"] - commit_ms) <= 1, "source.ts_ms is the commit time"
    assert abs(source["ts_ms"] - time.time() * 1000) < 120_000
    assert json_list(source["sequence"])[1] == str(source["lsn"])
    assert isinstance(event.value, dict)
    assert event.value["ts_ms"] >= source["ts_ms"] - 1


def _check_transaction(
    reader: TopicReader, events: list[Event], xid: int, commit_upper_lsn: int
) -> None:
    """Events of one transaction agree with each other and with its BEGIN/END records."""
    blocks = [e.transaction for e in events]
    assert all(b is not None for b in blocks)
    ids = {b["id"] for b in blocks if b}
    assert len(ids) == 1, ids
    tid = ids.pop()
    tx_xid, final_lsn = (int(part) for part in tid.split(":"))
    assert tx_xid == xid
    assert max(e.source["lsn"] for e in events) <= final_lsn <= commit_upper_lsn
    assert sorted(b["total_order"] for b in blocks if b) == list(range(1, len(events) + 1))
    records = reader.wait(
        lambda _: len(reader.transaction(tid)) >= 2 and reader.transaction(tid),
        what=f"BEGIN/END of {tid}",
    )
    assert [r["status"] for r in records] == ["BEGIN", "END"]
    end = records[1]
    assert end["event_count"] == len(events)
    per_table = Counter(f"{e.source['schema']}.{e.source['table']}" for e in events)
    assert {c["data_collection"]: c["event_count"] for c in end["data_collections"]} == dict(
        per_table
    )
    for collection, count in per_table.items():
        orders = sorted(
            e.transaction["data_collection_order"]
            for e in events
            if e.transaction and f"{e.source['schema']}.{e.source['table']}" == collection
        )
        assert orders == list(range(1, count + 1)), collection


def test_snapshot_reads_every_row_once(erp_stream: Stream) -> None:
    stream = erp_stream
    reads: list[Event] = []
    for table, count in stream.rows_at_start.items():
        topic = stream.topic(table)
        stream.reader.wait(
            lambda _, topic=topic, count=count: (
                len([e for e in stream.reader.of(topic) if e.op == "r"]) >= count
            ),
            what=f"snapshot of {table}",
        )
        table_reads = [e for e in stream.reader.of(topic) if e.op == "r"]
        assert len(table_reads) == count, table
        assert len({e.key["id"] for e in table_reads if e.key}) == count
        reads += table_reads
    lsns = {e.source["lsn"] for e in reads}
    assert len(lsns) == 1, "every snapshot row carries the slot's consistent point"
    commit_ms = {
        (table, row_id): written
        for table in {e.source["table"] for e in reads}
        for row_id, written in execute(
            stream.env["ERP_ADMIN_DSN"],
            sql.SQL(
                "SELECT id, floor(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)"
                "::bigint FROM {}"
            ).format(sql.Identifier("public", table)),
        )
    }
    for e in reads:
        assert e.before is None
        assert e.after is not None
        assert e.key == {"id": e.after["id"]}
        assert e.source["txId"] is None
        assert e.transaction is None
        assert e.source["connector"] == "postgresql"
        assert e.source["db"] == "erp"
        # A snapshot row carries the commit time of its row version (the server tracks
        # commit times), so last-writer-wins consumers compare real write times.
        written = commit_ms[(e.source["table"], e.after["id"])]
        if written is not None:
            assert e.source["ts_ms"] == written
        else:
            assert stream.started_ms - 1000 <= e.source["ts_ms"] <= time.time() * 1000
    marks = Counter(e.source["snapshot"] for e in reads)
    assert set(marks) == {"true", "last"}
    assert marks["last"] == 1
    last = next(e for e in reads if e.source["snapshot"] == "last")
    assert last.source["table"] == stream.probe, "the last row of the last table"
    assert last.timestamp_ms == max(e.timestamp_ms for e in reads), "and produced last"


def _erp_lifecycle(dsn: str) -> dict[str, Any]:
    """Insert, update and delete one row in each demo table: three transactions."""
    tag = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {"ids": {}, "xids": [], "lsn_after": []}
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = out["ids"]

        def one(query: str, *params: Any) -> int:
            row = conn.execute(query, params).fetchone()
            assert row is not None
            return int(row[0])

        location = one("select min(id) from stock_location where usage = 'internal'")
        with conn.transaction():
            out["xids"].append(_xid(conn))
            ids["res_partner"] = one(
                "insert into res_partner (name, email) values (%s, %s) returning id",
                f"CDC Test {tag}",
                f"{tag}@example.com",
            )
            ids["product_product"] = one(
                "insert into product_product (default_code, name, list_price) "
                "values (%s, %s, 12.50) returning id",
                f"CDC-{tag}",
                f"Probe {tag}",
            )
            ids["stock_quant"] = one(
                "insert into stock_quant (product_id, location_id, quantity) "
                "values (%s, %s, 5) returning id",
                ids["product_product"],
                location,
            )
            ids["sale_order"] = one(
                "insert into sale_order (partner_id) values (%s) returning id",
                ids["res_partner"],
            )
            ids["sale_order_line"] = one(
                "insert into sale_order_line (order_id, product_id, name, price_unit) "
                "values (%s, %s, 'line', 12.50) returning id",
                ids["sale_order"],
                ids["product_product"],
            )
            ids["account_move"] = one(
                "insert into account_move (partner_id, amount_total, amount_residual) "
                "values (%s, 10, 10) returning id",
                ids["res_partner"],
            )
        out["lsn_after"].append(_wal_lsn(conn))
        with conn.transaction():
            out["xids"].append(_xid(conn))
            conn.execute(
                "update res_partner set city = 'Lyon' where id = %s", (ids["res_partner"],)
            )
            conn.execute(
                "update product_product set list_price = 13.75 where id = %s",
                (ids["product_product"],),
            )
            conn.execute("update stock_quant set quantity = 7 where id = %s", (ids["stock_quant"],))
            conn.execute("update sale_order set state = 'sent' where id = %s", (ids["sale_order"],))
            conn.execute(
                "update sale_order_line set qty_delivered = 1 where id = %s",
                (ids["sale_order_line"],),
            )
            conn.execute(
                "update account_move set state = 'posted' where id = %s", (ids["account_move"],)
            )
        out["lsn_after"].append(_wal_lsn(conn))
        with conn.transaction():
            out["xids"].append(_xid(conn))
            for table in (
                "sale_order_line",
                "sale_order",
                "account_move",
                "stock_quant",
                "product_product",
                "res_partner",
            ):
                conn.execute(
                    sql.SQL("delete from {} where id = %s").format(sql.Identifier(table)),
                    (ids[table],),
                )
        out["lsn_after"].append(_wal_lsn(conn))
    return out


UPDATED = {
    "res_partner": ("city", "Lyon"),
    "stock_quant": ("quantity", 7),
    "sale_order": ("state", "sent"),
    "sale_order_line": ("qty_delivered", 1),
    "account_move": ("state", "posted"),
}


def test_insert_update_delete_envelopes_on_erp_demo_tables(erp_stream: Stream) -> None:
    stream = erp_stream
    done = _erp_lifecycle(stream.env["ERP_DSN"])
    ids: dict[str, int] = done["ids"]
    per_tx: list[list[Event]] = [[], [], []]
    for table, row_id in ids.items():
        events = stream.wait_events(
            table, row_id, lambda evs: any(e.tombstone for e in evs), timeout=45
        )
        assert [e.op for e in events] == ["c", "u", "d", None], table
        insert, update, delete, tombstone = events
        for i, event in enumerate((insert, update, delete)):
            assert event.key == {"id": row_id}
            commit_ms = commit_ts_ms(stream.env["ERP_ADMIN_DSN"], done["xids"][i])
            _check_streamed_source(event, stream, table, done["xids"][i], commit_ms)
            per_tx[i].append(event)
        # insert: the whole new row
        assert insert.before is None
        assert insert.after is not None
        assert insert.after["id"] == row_id
        # update: the old row under REPLICA IDENTITY FULL (the tables both systems edit,
        # so a change knows which fields it changed), none under DEFAULT
        if table in FULL_IDENTITY:
            assert update.before is not None
            assert update.before["id"] == row_id
        else:
            assert update.before is None
        assert update.after is not None
        if update.before is not None:
            assert update.before.keys() == update.after.keys()
        if table in UPDATED:
            column, value = UPDATED[table]
            assert update.after[column] == value, table
        # delete: before holds the key, then a tombstone with the same key
        assert delete.after is None
        assert delete.before is not None
        assert delete.before["id"] == row_id
        assert tombstone.key == {"id": row_id}
        assert tombstone.value is None
        assert tombstone.partition == delete.partition
        assert tombstone.offset > delete.offset
    assert ids
    assert per_tx[0][0].after is not None
    partner_after = next(e for e in per_tx[0] if e.source["table"] == "res_partner").after
    assert partner_after is not None
    assert partner_after["email"].endswith("@example.com")
    assert partner_after["is_company"] is True
    product_after = next(e for e in per_tx[1] if e.source["table"] == "product_product").after
    assert product_after is not None
    assert str(product_after["list_price"]) == "13.75"
    for i, events in enumerate(per_tx):
        _check_transaction(stream.reader, events, done["xids"][i], done["lsn_after"][i])


def test_truncate_event(erp_stream: Stream) -> None:
    stream = erp_stream
    admin = stream.env["ERP_ADMIN_DSN"]
    probe = sql.Identifier("public", stream.probe)
    row_id = next(_ids)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("insert into {} (id, note) values (%s, 'x')").format(probe), (row_id,))
        with conn.transaction():
            xid = _xid(conn)
            conn.execute(sql.SQL("truncate {}").format(probe))
        upper = _wal_lsn(conn)
    topic = stream.topic(stream.probe)
    truncates = stream.reader.wait(
        lambda _: [e for e in stream.reader.of(topic) if e.op == "t"], what="truncate event"
    )
    assert len(truncates) == 1
    event = truncates[0]
    assert event.key is None
    assert event.before is None
    assert event.after is None
    _check_streamed_source(event, stream, stream.probe, xid, commit_ts_ms(admin, xid))
    _check_transaction(stream.reader, [event], xid, upper)


def test_many_updates_of_one_row_arrive_in_commit_order(erp_stream: Stream) -> None:
    stream = erp_stream
    updates = 40
    with psycopg.connect(stream.env["ERP_DSN"], autocommit=True) as conn:
        row = conn.execute(
            "insert into res_partner (name, customer_rank) values ('Order probe', 0) returning id"
        ).fetchone()
        assert row is not None
        partner = int(row[0])
        for rank in range(1, updates + 1):
            conn.execute("update res_partner set customer_rank = %s where id = %s", (rank, partner))
        conn.execute("delete from res_partner where id = %s", (partner,))
    events = stream.wait_events(
        "res_partner", partner, lambda evs: any(e.tombstone for e in evs), timeout=45
    )
    values = [e for e in events if e.value is not None]
    assert [e.op for e in values] == ["c", *["u"] * updates, "d"]
    assert [e.after["customer_rank"] for e in values[1:-1] if e.after] == list(
        range(1, updates + 1)
    )
    lsns = [e.source["lsn"] for e in values]
    assert lsns == sorted(lsns)
    assert len(set(lsns)) == len(lsns)
    xids = [e.source["txId"] for e in values]
    assert xids == sorted(xids)
    assert len(set(xids)) == len(xids)


def test_primary_key_update_is_delete_tombstone_create(erp_stream: Stream) -> None:
    stream = erp_stream
    admin = stream.env["ERP_ADMIN_DSN"]
    probe = sql.Identifier("public", stream.probe)
    old_id, new_id = next(_ids), next(_ids)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("insert into {} (id, note, counter) values (%s, 'moving', 3)").format(probe),
            (old_id,),
        )
        with conn.transaction():
            xid = _xid(conn)
            conn.execute(
                sql.SQL("update {} set id = %s where id = %s").format(probe), (new_id, old_id)
            )
        upper = _wal_lsn(conn)
    old = stream.wait_events(stream.probe, old_id, lambda evs: any(e.tombstone for e in evs))
    new = stream.wait_events(stream.probe, new_id, lambda evs: len(evs) >= 1)
    assert [e.op for e in old] == ["c", "d", None]
    delete, tombstone = old[1], old[2]
    assert delete.before is not None
    assert delete.before["id"] == old_id
    assert delete.after is None
    assert tombstone.key == {"id": old_id}
    assert tombstone.partition == delete.partition
    assert [e.op for e in new] == ["c"]
    create = new[0]
    assert create.before is None
    assert create.after == {"id": new_id, "note": "moving", "counter": 3}
    assert delete.transaction
    assert create.transaction
    assert delete.transaction["total_order"] < create.transaction["total_order"]
    _check_transaction(stream.reader, [delete, create], xid, upper)


def test_schema_change_mid_stream(erp_stream: Stream) -> None:
    stream = erp_stream
    admin = stream.env["ERP_ADMIN_DSN"]
    ddl = sql.Identifier("public", stream.ddl)
    registry = registry_client(stream.env)
    subject = f"{stream.topic(stream.ddl)}-value"
    execute(admin, sql.SQL("insert into {} values (2, 'before ddl')").format(ddl))
    before_ddl = stream.wait_events(stream.ddl, 2, lambda evs: len(evs) >= 1)[0]
    versions = registry.get_versions(subject)
    execute(admin, sql.SQL("alter table {} add column extra text").format(ddl))
    execute(admin, sql.SQL("insert into {} values (3, 'after ddl', 'new!')").format(ddl))
    after_ddl = stream.wait_events(stream.ddl, 3, lambda evs: len(evs) >= 1)[0]

    assert before_ddl.after == {"id": 2, "note": "before ddl"}
    assert after_ddl.after == {"id": 3, "note": "after ddl", "extra": "new!"}
    assert after_ddl.schema_id != before_ddl.schema_id
    assert len(registry.get_versions(subject)) == len(versions) + 1
    latest = registry.get_latest_version(subject)
    assert latest.schema_id == after_ddl.schema_id
    # Old events still decode: a fresh consumer with a fresh registry cache reads them all.
    with TopicReader(stream.env, [stream.topic(stream.ddl)]) as fresh:
        fresh.wait(lambda evs: len(evs) >= 3, what="the DDL probe topic")
        events = fresh.events
    by_id = {e.key["id"]: e for e in events if e.key}
    assert by_id[1].op == "r"
    assert by_id[1].after == {"id": 1, "note": "old"}
    assert by_id[2].after == {"id": 2, "note": "before ddl"}
    assert by_id[3].after == {"id": 3, "note": "after ddl", "extra": "new!"}


def test_echo_transactions_from_the_sink_origin_are_dropped(erp_stream: Stream) -> None:
    stream = erp_stream
    admin = stream.env["ERP_ADMIN_DSN"]
    origin = "erpcrm_sink"
    created = not execute(admin, "select 1 from pg_replication_origin where roname = %s", (origin,))
    if created:
        execute(admin, "select pg_replication_origin_create(%s)", (origin,))
    dropped_before = stream.capture.metric(
        "erpcrm_cdc_echo_transactions_dropped_total", origin=origin
    )
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            row = conn.execute(
                "insert into res_partner (name) values ('Echo probe') returning id"
            ).fetchone()
            assert row is not None
            partner = int(row[0])
            conn.execute("select pg_replication_origin_session_setup(%s)", (origin,))
            with conn.transaction():
                echo_xid = _xid(conn)
                conn.execute("update res_partner set city = 'Echo' where id = %s", (partner,))
                echo_row = conn.execute(
                    "insert into res_partner (name) values ('Echo insert') returning id"
                ).fetchone()
                assert echo_row is not None
            conn.execute("select pg_replication_origin_session_reset()")
            with conn.transaction():
                plain_xid = _xid(conn)
                conn.execute("update res_partner set city = 'Plain' where id = %s", (partner,))
        events = stream.wait_events(
            "res_partner", partner, lambda evs: any(e.source["txId"] == plain_xid for e in evs)
        )
        assert [e.op for e in events] == ["c", "u"]
        assert events[1].after is not None
        assert events[1].after["city"] == "Plain"
        assert stream.events("res_partner", int(echo_row[0])) == []
        assert not any(
            e.source["txId"] == echo_xid for e in stream.events("res_partner") if e.value
        )
        tx_ids = [e.value["id"] for e in stream.reader.of(stream.capture.tx_topic) if e.value]
        assert not any(t.startswith(f"{echo_xid}:") for t in tx_ids)
        assert any(t.startswith(f"{plain_xid}:") for t in tx_ids)
        assert (
            stream.capture.metric("erpcrm_cdc_echo_transactions_dropped_total", origin=origin)
            == dropped_before + 1
        )
    finally:
        execute(
            stream.env["ERP_DSN"],
            "delete from res_partner where name in ('Echo probe', 'Echo insert')",
        )
        if created:
            execute(admin, "select pg_replication_origin_drop(%s)", (origin,))


def test_an_idle_capture_publishes_heartbeat_transactions_in_commit_order(
    erp_stream: Stream,
) -> None:
    """A heartbeat is a transaction with no change: a BEGIN and an END counting none."""
    stream = erp_stream
    tx_topic = stream.capture.tx_topic
    # A row of its own: an earlier test of the module truncates the probe table.
    row_id = next(_ids)
    with psycopg.connect(stream.env["ERP_ADMIN_DSN"]) as conn:
        xid = _xid(conn)
        conn.execute(
            sql.SQL("insert into {} (id, note) values (%s, 'beat')").format(
                sql.Identifier(stream.probe)
            ),
            (row_id,),
        )
    changed = stream.wait_events(
        stream.probe, row_id, lambda evs: any(e.source["txId"] == xid for e in evs)
    )
    [block] = [e.transaction for e in changed if e.source["txId"] == xid]
    assert block is not None
    change_lsn = int(block["id"].split(":")[1])

    def heartbeats() -> list[dict[str, Any]]:
        ends = [e.value for e in stream.reader.of(tx_topic) if e.value]
        return [
            r
            for r in ends
            if r["status"] == "END"
            and r["event_count"] == 0
            and int(r["id"].split(":")[1]) > change_lsn
        ]

    # The capture's heartbeat comes 5 s after the last transaction it published.
    [beat, *_] = stream.reader.wait(lambda _: heartbeats(), 30, "a heartbeat transaction")
    assert beat["data_collections"] == []
    assert [r["status"] for r in stream.reader.transaction(beat["id"])] == ["BEGIN", "END"]
    order = [
        int(e.value["id"].split(":")[1])
        for e in stream.reader.of(tx_topic)
        if e.value and e.value["status"] == "END"
    ]
    assert order == sorted(order), "ENDs, heartbeats' included, in commit order"
    assert stream.capture.metric("erpcrm_cdc_heartbeats_total") >= 1


def test_crm_envelopes(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
) -> None:
    capture = capture_factory("crm", ["accounts", "aos_quotes"]).start().wait_streaming()
    tag = uuid.uuid4().hex[:8]
    with psycopg.connect(stack_env["CRM_DSN"], autocommit=True) as conn:
        xids = []
        with conn.transaction():
            xids.append(_xid(conn))
            row = conn.execute(
                "insert into accounts (name, email) values (%s, %s) returning id::text",
                (f"CDC {tag}", f"{tag}@example.org"),
            ).fetchone()
            assert row is not None
            account = str(row[0])
            row = conn.execute(
                "insert into aos_quotes (name, account_id, total_amount) "
                "values (%s, %s, 99.90) returning id::text",
                (f"Quote {tag}", account),
            ).fetchone()
            assert row is not None
            quote = str(row[0])
        with conn.transaction():
            xids.append(_xid(conn))
            conn.execute("update accounts set industry = 'Retail' where id = %s", (account,))
            conn.execute("update aos_quotes set stage = 'Closed Accepted' where id = %s", (quote,))
        with conn.transaction():
            xids.append(_xid(conn))
            conn.execute("delete from aos_quotes where id = %s", (quote,))
            conn.execute("delete from accounts where id = %s", (account,))
    with TopicReader(stack_env, capture.topics) as reader:
        for table, key, changed in (
            ("accounts", account, ("industry", "Retail")),
            ("aos_quotes", quote, ("stage", "Closed Accepted")),
        ):
            topic = capture.topic(table)
            reader.wait(
                lambda _, topic=topic, key=key: any(e.tombstone for e in reader.of(topic, key)),
                what=f"{table} {key}",
            )
            events = reader.of(topic, key)
            assert [e.op for e in events] == ["c", "u", "d", None]
            for event, xid in zip(events[:3], xids, strict=True):
                assert event.key == {"id": key}
                source = event.source
                assert (source["db"], source["table"], source["txId"]) == ("crm", table, xid)
                assert source["snapshot"] == "false"
                assert source["name"] == capture.prefix
                assert abs(source["ts_ms"] - commit_ts_ms(stack_env["CRM_ADMIN_DSN"], xid)) <= 1
            assert events[0].after is not None
            assert events[0].after["id"] == key
            if table in FULL_IDENTITY:  # the old row, the key as the message key
                assert events[1].before is not None
                assert events[1].before[changed[0]] != changed[1]
            else:
                assert events[1].before is None
            assert events[1].after is not None
            assert events[1].after[changed[0]] == changed[1]
            assert events[2].before is not None
            assert events[2].before["id"] == key
        quote_after = reader.of(capture.topic("aos_quotes"), quote)[0].after
        assert quote_after is not None
        assert str(quote_after["total_amount"]) == "99.90"
        reads = [e for e in reader.of(capture.topic("accounts")) if e.op == "r"]
        assert reads
        assert all(e.source["snapshot"] in ("true", "last") for e in reads)


# -- snapshot while writes continue -------------------------------------------------------


class Writer(threading.Thread):
    """Inserts, updates (counter + 1) and deletes rows of a table, one per transaction."""

    def __init__(self, dsn: str, table: str, existing: range, first_new_id: int) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.table = sql.Identifier("public", table)
        self.live = list(existing)
        self.next_id = first_new_id
        self.inserted: list[int] = []
        self.deleted: dict[int, tuple[int, int]] = {}  # id -> WAL position before, after
        self.commits: list[float] = []
        self.position = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.rng = random.Random(7)

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop_event.is_set():
                    self.step(conn)
        except BaseException as exc:
            self.error = exc

    def step(self, conn: psycopg.Connection[Any]) -> None:
        roll = self.rng.random()
        if roll < 0.4 or not self.live:
            row_id, self.next_id = self.next_id, self.next_id + 1
            conn.execute(
                sql.SQL("insert into {} (id, counter, note) values (%s, 0, 'new')").format(
                    self.table
                ),
                (row_id,),
            )
            self.live.append(row_id)
            self.inserted.append(row_id)
        elif roll < 0.9:
            row_id = self.rng.choice(self.live)
            conn.execute(
                sql.SQL("update {} set counter = counter + 1 where id = %s").format(self.table),
                (row_id,),
            )
        else:
            row_id = self.live.pop(self.rng.randrange(len(self.live)))
            conn.execute(sql.SQL("delete from {} where id = %s").format(self.table), (row_id,))
            self.deleted[row_id] = (self.position, 0)
        self.commits.append(time.time())
        self.position = _wal_lsn(conn)
        if row_id in self.deleted:
            self.deleted[row_id] = (self.deleted[row_id][0], self.position)


def test_snapshot_then_stream_has_no_gap_and_no_overlap(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
) -> None:
    table = unique_name("cdc_snap_")
    seeded = 20_000
    create_probe_table(
        stack_env,
        table,
        "id int primary key, counter int not null, note text",
        rows=f"select g, 0, 'seed' from generate_series(1, {seeded}) g",
    )
    admin = stack_env["ERP_ADMIN_DSN"]
    writer = Writer(admin, table, range(1, seeded + 1), first_new_id=1_000_000)
    try:
        capture = capture_factory("erp", [table], snapshot_batch_rows="200")
        writer.start()
        wait_for(lambda: len(writer.commits) >= 50, 30, "the writer to get going")
        capture.start().wait_streaming()
        writes_while_streaming = len(writer.commits) + 100
        wait_for(lambda: len(writer.commits) >= writes_while_streaming, 30, "streamed writes")
        writer.stop_event.set()
        writer.join(30)
        assert writer.error is None, writer.error
        expected = counter_table_state(admin, table)
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            wait_replayed(reader, expected, timeout=90)
            events = [e for e in reader.events if e.value is not None]
    finally:
        writer.stop_event.set()
        writer.join(30)
        drop_probe_table(stack_env, table)

    by_id: dict[int, list[Event]] = {}
    for e in events:
        by_id.setdefault(e.row["id"], []).append(e)
    reads = [e for e in events if e.op == "r"]
    streamed = [e for e in events if e.op != "r"]
    # every insert is there, unless the row was deleted before the slot's consistent point
    consistent_point = reads[0].source["lsn"]
    gone_before = {i for i, (_, after) in writer.deleted.items() if after <= consistent_point}
    maybe_gone = {i for i, (before, _) in writer.deleted.items() if before < consistent_point}
    assert gone_before.isdisjoint(by_id)
    assert set(writer.inserted) - maybe_gone <= set(by_id)
    # no row is both a snapshot read and a create; its history has no hole and no repeat
    for row_id, history in by_id.items():
        ops = [e.op for e in history]
        assert ops[0] in ("r", "c"), (row_id, ops)
        assert not {"r", "c"} & set(ops[1:]), (row_id, ops)
        assert "d" not in ops[:-1], (row_id, ops)
        # each update adds one to the counter: consecutive values = no change lost or repeated
        counters = [e.after["counter"] for e in history if e.after is not None]
        assert counters == list(range(counters[0], counters[0] + len(counters))), (row_id, ops)
    for row_id, (before, _) in writer.deleted.items():
        if before >= consistent_point:
            assert by_id[row_id][-1].op == "d", row_id
    # the scenario really happened: changes before, during and after the snapshot
    assert reads
    assert streamed
    snapshot_started = min(e.timestamp_ms for e in reads)
    snapshot_done = max(e.timestamp_ms for e in reads)
    assert any(snapshot_started <= e.source["ts_ms"] <= snapshot_done for e in streamed), (
        "no write committed while the snapshot was read"
    )
    first_ops = {by_id[i][0].op for i in writer.inserted if i in by_id}
    assert first_ops == {"r", "c"}, "inserts before and after the consistent point"


# -- tables the capture cannot key ------------------------------------------------------


def test_table_without_primary_key_is_refused(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
) -> None:
    table = unique_name("cdc_nopk_")
    create_probe_table(stack_env, table, "a int, b text", publish=False)
    capture = capture_factory("erp", ["res_partner", table])
    try:
        capture.start()
        code = capture.wait_exit(60)
        log = " ".join(capture.log().split())  # the CLI wraps its error message
        assert code != 0, log
        assert f"public.{table}" in log
        assert "primary key" in log.lower()
        assert "REPLICA IDENTITY FULL" in log
        assert slot_row(stack_env["ERP_ADMIN_DSN"], capture.slot) is None, "no slot created"
    finally:
        drop_probe_table(stack_env, table)
