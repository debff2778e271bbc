"""The workload generator against the stack's demo databases.

These tests compare table row counts before and after a run with the run's report, so
they expect no other writer (a running sink) on the demo databases while they run.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from erpcrm.workload import APPLICATION_NAME, OpKind, System, run_workload

pytestmark = pytest.mark.integration

# table -> column stamped on every change
TABLES: dict[System, dict[str, str]] = {
    System.ERP: {
        "res_partner": "write_date",
        "product_product": "write_date",
        "stock_location": "write_date",
        "stock_quant": "write_date",
        "sale_order": "write_date",
        "sale_order_line": "write_date",
        "account_move": "write_date",
        "account_move_line": "write_date",
    },
    System.CRM: {
        "accounts": "date_modified",
        "contacts": "date_modified",
        "aos_products": "date_modified",
        "product_availability": "updated_at",
        "opportunities": "date_modified",
        "aos_quotes": "date_modified",
        "aos_products_quotes": "date_modified",
        "aos_invoices": "date_modified",
    },
}


def dsns(stack_env: dict[str, str]) -> dict[System, str]:
    return {System.ERP: stack_env["ERP_DSN"], System.CRM: stack_env["CRM_DSN"]}


def snapshot(dsn: str, tables: dict[str, str]) -> dict[str, tuple[int, Any]]:
    """Per table: (row count, latest change stamp)."""
    out: dict[str, tuple[int, Any]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, stamp in tables.items():
            row = conn.execute(
                sql.SQL("SELECT count(*), max({}) FROM {}").format(
                    sql.Identifier(stamp), sql.Identifier("public", table)
                )
            ).fetchone()
            assert row is not None
            out[table] = (int(row[0]), row[1])
    return out


def changed_since(dsn: str, table: str, stamp: str, since: Any) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} > %s").format(
                sql.Identifier("public", table), sql.Identifier(stamp)
            ),
            (since,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_workload_changes_both_databases_by_the_reported_counts(
    stack_env: dict[str, str],
) -> None:
    urls = dsns(stack_env)
    before = {system: snapshot(urls[system], TABLES[system]) for system in System}

    report = run_workload(
        urls[System.ERP],
        urls[System.CRM],
        rate=2000.0,
        duration=None,
        count=300,
        dirty_ratio=0.2,
        seed=20240601,
    )

    assert report.operations == 300
    skipped = sum(report.skipped.values())
    assert report.committed + skipped + report.failed_total == 300
    assert report.committed >= 270, report.as_dict()
    assert report.dirty > 20
    assert {OpKind(kind).system for kind in report.by_kind} == set(System)
    assert report.achieved_rate > 50

    for system in System:
        after = snapshot(urls[system], TABLES[system])
        for table, stamp in TABLES[system].items():
            rows_before, stamp_before = before[system][table]
            rows_after, _ = after[table]
            inserts = report.inserts(system.value, table)
            updates = report.updates(system.value, table)
            assert rows_after - rows_before == inserts, (system, table)
            touched = (
                changed_since(urls[system], table, stamp, stamp_before)
                if stamp_before is not None
                else rows_after
            )
            # Several updates may hit one row, and no-op updates leave the stamp alone.
            assert touched <= inserts + updates, (system, table)
            if inserts:
                assert touched >= inserts, (system, table)

    # The run really did both systems' work.
    assert report.inserts("erp", "sale_order") > 0
    assert report.inserts("erp", "sale_order_line") >= report.inserts("erp", "sale_order")
    assert report.updates("erp", "stock_quant") + report.inserts("erp", "stock_quant") > 0
    assert report.inserts("crm", "aos_quotes") > 0
    assert report.updates("crm", "accounts") > 0


def test_same_seed_repeats_the_same_operations(stack_env: dict[str, str]) -> None:
    urls = dsns(stack_env)
    runs = [
        run_workload(
            urls[System.ERP],
            urls[System.CRM],
            rate=1000.0,
            duration=None,
            count=60,
            dirty_ratio=0.3,
            seed=99,
        )
        for _ in range(2)
    ]
    assert runs[0].operations == runs[1].operations == 60
    attempted = [
        {
            kind: r.by_kind.get(kind, 0)
            + r.skipped.get(kind, 0)
            + sum(r.failed.get(kind, {}).values())
            for kind in OpKind
        }
        for r in runs
    ]
    assert attempted[0] == attempted[1]


def test_workload_is_paced(stack_env: dict[str, str]) -> None:
    urls = dsns(stack_env)
    progress: list[int] = []
    report = run_workload(
        urls[System.ERP],
        urls[System.CRM],
        rate=40.0,
        duration=2.0,
        count=None,
        dirty_ratio=0.0,
        seed=5,
        on_progress=lambda r: progress.append(r.operations),
        progress_interval=0.5,
    )
    assert 70 <= report.operations <= 82
    assert report.achieved_rate == pytest.approx(40.0, rel=0.1)
    assert report.dirty == 0
    assert len(progress) >= 3
    assert progress == sorted(progress)
    assert progress[-1] == report.operations


def test_stop_event_ends_the_run(stack_env: dict[str, str]) -> None:
    urls = dsns(stack_env)
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    report = run_workload(
        urls[System.ERP],
        urls[System.CRM],
        rate=100.0,
        duration=None,
        count=None,
        dirty_ratio=0.1,
        seed=6,
        stop=stop,
    )
    timer.cancel()
    assert time.monotonic() - started < 3.0
    assert report.operations > 0


def test_workload_survives_dropped_connections(stack_env: dict[str, str]) -> None:
    urls = dsns(stack_env)

    def kill_workload_sessions() -> None:
        for dsn in urls.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND usename = current_user"
                    " AND pid <> pg_backend_pid()",
                    (APPLICATION_NAME,),
                )

    killer = threading.Timer(0.7, kill_workload_sessions)
    killer.start()
    report = run_workload(
        urls[System.ERP],
        urls[System.CRM],
        rate=200.0,
        duration=2.0,
        count=None,
        dirty_ratio=0.1,
        seed=7,
    )
    killer.join()
    assert sum(report.reconnects.values()) >= 1, report.as_dict()
    assert report.operations > 200
    assert report.committed > 180
    # At most the operation in flight on each connection is lost.
    lost = sum(
        n
        for errors in report.failed.values()
        for cls, n in errors.items()
        if cls != "UniqueViolation"
    )
    assert lost <= 2 * len(System)
