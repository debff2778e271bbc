"""Targeted re-snapshots (``erpcrm resnapshot``) against the real stack.

A capture that took no initial snapshot (``snapshot_mode=never``) is asked, through the
CLI and the signal table, to re-read a probe table while writers change it. Its topic
then holds, for every row, a history whose last event is the row as the database holds
it (no older image wins), whose versions (``source.lsn``) rise, and whose images never
go back in time. Row count: ``ERPCRM_RESNAPSHOT_ROWS`` (default 20,000, which keeps the
test near a minute under ``CI=true``; 100,000 for the full-size run).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

from tests.integration.cdc_fixtures import (
    REPO,
    Capture,
    Event,
    TopicReader,
    capture_factory,  # noqa: F401 - fixture
    counter_table_state,
    create_probe_table,
    drop_probe_table,
    execute,
    unique_name,
    wait_for,
    wait_replayed,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROWS: Final = int(os.environ.get("ERPCRM_RESNAPSHOT_ROWS") or 20_000)
COLUMNS: Final = "id int primary key, counter int not null, note text"


class Writers:
    """Threads changing random rows of a table, one row per transaction, until stopped.

    Updates add one to ``counter`` (so a row's images are ordered by it); a few rows are
    deleted or inserted; one thread holds its row locked for a while before committing,
    so chunks meet rows an unfinished transaction has written.
    """

    def __init__(self, dsn: str, table: str, rows: int, threads: int = 2) -> None:
        self.dsn = dsn
        self.table = sql.Identifier("public", table)
        self.rows = rows
        self.stop_event = threading.Event()
        self.touched: set[int] = set()
        self.commits = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(seed, seed == 0), daemon=True)
            for seed in range(threads + 1)
        ]

    def start(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(30)
        assert not self.errors, self.errors

    def _run(self, seed: int, slow: bool) -> None:
        rng = random.Random(seed)
        next_id = self.rows + 1_000_000 * (seed + 1)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop_event.is_set():
                    row_id = rng.randint(1, self.rows)
                    roll = rng.random()
                    with conn.transaction():
                        if slow:
                            conn.execute(
                                sql.SQL("update {} set counter = counter + 1 where id = %s").format(
                                    self.table
                                ),
                                (row_id,),
                            )
                            time.sleep(0.2)
                        elif roll < 0.02:
                            conn.execute(
                                sql.SQL("delete from {} where id = %s").format(self.table),
                                (row_id,),
                            )
                        elif roll < 0.05:
                            row_id, next_id = next_id, next_id + 1
                            conn.execute(
                                sql.SQL("insert into {} values (%s, 0, 'new')").format(self.table),
                                (row_id,),
                            )
                        else:
                            conn.execute(
                                sql.SQL(
                                    "update {} set counter = counter + 1, note = %s where id = %s"
                                ).format(self.table),
                                (f"w{seed}", row_id),
                            )
                    with self._lock:
                        self.touched.add(row_id)
                        self.commits += 1
        except BaseException as exc:
            self.errors.append(exc)


def _resnapshot(stack_env: dict[str, str], *args: str) -> dict[str, Any]:
    """``erpcrm resnapshot --system erp … --json``; returns its JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERPCRM_")}
    env.update(stack_env)
    done = subprocess.run(
        [sys.executable, "-m", "erpcrm.cli", "resnapshot", "--system", "erp", *args, "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def _signals(capture: Capture, outcome: str) -> float:
    return capture.metric("erpcrm_cdc_signals_total", outcome=outcome)


def _wait_done(capture: Capture, count: int, timeout: float, failures: int = 0) -> None:
    def done() -> bool:
        failed = _signals(capture, "failed")
        assert failed <= failures, f"a re-snapshot failed:\n{capture.log()[-3000:]}"
        return _signals(capture, "done") >= count

    wait_for(done, timeout, "the re-snapshot to finish")


def _histories(events: list[Event]) -> dict[int, list[Event]]:
    by_id: dict[int, list[Event]] = {}
    for event in events:
        if event.key is not None and event.value is not None:
            by_id.setdefault(event.key["id"], []).append(event)
    return by_id


@pytest.fixture
def probe(stack_env: dict[str, str]) -> Iterator[Callable[[int], str]]:
    made: list[str] = []

    def make(rows: int) -> str:
        table = unique_name("rs_")
        create_probe_table(
            stack_env,
            table,
            COLUMNS,
            rows=f"select g, 0, 'seed' from generate_series(1, {rows}) g",
        )
        made.append(table)
        return table

    yield make
    for table in made:
        drop_probe_table(stack_env, table)


def test_resnapshot_under_concurrent_writes_leaves_the_latest_image_of_every_row(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
    probe: Callable[[int], str],
) -> None:
    table = probe(ROWS)
    admin = stack_env["ERP_ADMIN_DSN"]
    capture = capture_factory("erp", [table], snapshot_mode="never")
    capture.start().wait_streaming()
    writers = Writers(admin, table, ROWS).start()
    started = time.monotonic()
    try:
        wait_for(lambda: writers.commits >= 20, 30, "the writers to get going")
        signal = _resnapshot(stack_env, "--table", table)
        _wait_done(capture, 1, timeout=240)
        resnapshot_seconds = time.monotonic() - started
        commits_during = writers.commits
    finally:
        writers.stop()
    expected = counter_table_state(admin, table)
    with TopicReader(stack_env, [capture.topic(table)]) as reader:
        wait_replayed(reader, expected, timeout=180)
        events = [e for e in reader.events if e.value is not None]

    reads = [e for e in events if e.op == "r"]
    assert {e.source["snapshot"] for e in reads} == {"incremental"}
    assert commits_during > 50, "the writers hardly wrote while the table was re-read"
    histories = _histories(events)
    for row_id, history in histories.items():
        # versions rise along each row's history, and images never go back in time
        lsns = [e.source["lsn"] for e in history]
        assert lsns == sorted(lsns), (row_id, [(e.op, e.source["lsn"]) for e in history])
        counters = [e.after["counter"] for e in history if e.after is not None]
        assert counters == sorted(counters), (row_id, [(e.op, e.after) for e in history])
    # a row no writer touched is read exactly once, and that is all its history
    untouched = set(range(1, ROWS + 1)) - writers.touched
    assert untouched
    for row_id in untouched:
        assert [e.op for e in histories[row_id]] == ["r"], row_id
    read_counts = Counter(e.key["id"] for e in reads if e.key is not None)
    print(
        json.dumps(
            {
                "rows": ROWS,
                "signal": signal["signal_id"],
                "resnapshot_seconds": round(resnapshot_seconds, 1),
                "reads": len(reads),
                "rows_read_twice": sum(1 for n in read_counts.values() if n > 1),
                "concurrent_commits": commits_during,
            }
        )
    )


def test_resnapshot_of_chosen_rows_by_key_and_filter(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
    probe: Callable[[int], str],
) -> None:
    table = probe(500)
    capture = capture_factory("erp", [table], snapshot_mode="never", incremental_chunk_rows="7")
    capture.start().wait_streaming()
    _resnapshot(stack_env, "--table", table, "--key", "id=5", "--key", "id=300")
    _resnapshot(
        stack_env, "--table", f"public.{table}", "--where", "id % 50 = 0 and note like 's%'"
    )
    bad = _resnapshot(stack_env, "--table", table, "--where", "no_such_column = 1")
    _resnapshot(stack_env, "--table", table, "--key", "id=7")
    _wait_done(capture, 3, timeout=60, failures=1)
    wait_for(lambda: _signals(capture, "failed") >= 1, 30, "the bad filter to fail")
    with TopicReader(stack_env, [capture.topic(table)]) as reader:
        reader.wait(lambda evs: len(evs) >= 13, timeout=60, what="the reads")
        time.sleep(2)
        reader.poll()
        reads = Counter(e.key["id"] for e in reader.events if e.key is not None and e.op == "r")
    assert reads == Counter([5, 300, 7, *range(50, 501, 50)])
    assert bad["signal_id"] in capture.log()
    assert capture.running, "a failing filter stops only its own re-snapshot"


def test_a_capture_killed_during_a_resnapshot_resumes_after_its_last_confirmed_chunk(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
    probe: Callable[[int], str],
) -> None:
    rows = 60_000
    table = probe(rows)
    admin = stack_env["ERP_ADMIN_DSN"]
    capture = capture_factory("erp", [table], snapshot_mode="never", incremental_chunk_rows="200")
    capture.start().wait_streaming()
    _resnapshot(stack_env, "--table", table)
    # Killed after a third, once chunks have been confirmed. With 20,000 rows the whole
    # table took the capture about 1.2 s, and on a quiet machine the kill landed after it.
    wait_for(
        lambda: capture.metric("erpcrm_cdc_incremental_rows_total", table=table) >= rows / 3,
        60,
        "a third of the table",
    )
    capture.kill()
    assert f"{table} done" not in capture.log(), "the re-snapshot finished before the kill"
    execute(
        admin,
        sql.SQL("update {} set counter = counter + 1 where id % 1000 = 0").format(
            sql.Identifier("public", table)
        ),
    )
    capture.start().wait_streaming()
    _wait_done(capture, 1, timeout=120)
    expected = counter_table_state(admin, table)
    with TopicReader(stack_env, [capture.topic(table)]) as reader:
        wait_replayed(reader, expected, timeout=90)
        reads = [e for e in reader.events if e.op == "r"]
    read_again = len(reads) - rows
    assert read_again < rows / 2, f"{read_again} rows read again: it started over"
    assert "resuming re-snapshot" in capture.log()
