"""The capture survives being killed, stops cleanly, and refuses to skip changes silently.

Slow tests: each one starts, stops and restarts a real ``erpcrm cdc`` process on a probe
table of its own (tests/integration/cdc_fixtures.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg import sql

from cdc.offsets import OFFSETS_TOPIC
from tests.integration.cdc_fixtures import (
    Capture,
    TopicReader,
    capture_factory,  # noqa: F401 - fixture
    create_probe_table,
    drop_probe_table,
    drop_slot,
    execute,
    slot_row,
    unique_name,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class Inserter(threading.Thread):
    """Inserts ``total`` rows with ids 1..total, ``per_tx`` rows per transaction."""

    def __init__(self, dsn: str, table: str, total: int, per_tx: int) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.table = sql.Identifier("public", table)
        self.total = total
        self.per_tx = per_tx
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        query = sql.SQL(
            "insert into {} (id, note) "
            "select g, 'row ' || g from generate_series(%s::int, %s::int) g"
        ).format(self.table)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while self.done < self.total:
                    last = min(self.done + self.per_tx, self.total)
                    conn.execute(query, (self.done + 1, last))
                    self.done = last
        except BaseException as exc:
            self.error = exc


def _wal_lsn(dsn: str) -> int:
    return int(execute(dsn, "select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")[0][0])


def _ids(events: list[Any]) -> set[int]:
    return {e.key["id"] for e in events if e.key is not None and e.value is not None}


def test_sigkill_under_load_loses_nothing(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
) -> None:
    admin = stack_env["ERP_ADMIN_DSN"]
    table = unique_name("cdc_kill_")
    total = 3000
    create_probe_table(stack_env, table, "id int primary key, note text")
    inserter = Inserter(admin, table, total=total, per_tx=3)
    try:
        capture = capture_factory("erp", [table]).start().wait_streaming()
        inserter.start()
        wait_for(lambda: inserter.error or inserter.done >= total // 3, 60, "a third of the rows")
        assert inserter.error is None, inserter.error
        capture.kill()
        killed_at = inserter.done
        slot = slot_row(admin, capture.slot)
        assert slot is not None
        unconfirmed = _wal_lsn(admin) - slot[1]
        capture.start().wait_streaming()
        inserter.join(120)
        assert inserter.error is None, inserter.error
        assert inserter.done == total
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            reader.wait(lambda evs: len(_ids(evs)) >= total, timeout=120, what=f"all {total} rows")
            events = [e for e in reader.events if e.value is not None]
    finally:
        inserter.join(60)
        drop_probe_table(stack_env, table)
    assert killed_at < total, "the capture was killed while rows were still being written"
    assert unconfirmed > 0, "the kill left changes that were not confirmed to the slot"
    assert _ids(events) == set(range(1, total + 1))
    assert {e.op for e in events} == {"c"}, "resumed from the slot, no second snapshot"
    assert len(events) >= total  # duplicates (replayed, unconfirmed transactions) allowed
    assert "resuming slot" in capture.log()


def test_sigterm_confirms_and_a_lost_slot_is_refused(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
) -> None:
    admin = stack_env["ERP_ADMIN_DSN"]
    table = unique_name("cdc_term_")
    create_probe_table(
        stack_env,
        table,
        "id int primary key, note text",
        rows="select g, 'seed' from generate_series(1, 5) g",
    )
    probe = sql.Identifier("public", table)
    capture = capture_factory("erp", [table])
    try:
        capture.start().wait_streaming()
        created = slot_row(admin, capture.slot)
        assert created is not None
        execute(
            admin,
            sql.SQL("insert into {} select g, 'new' from generate_series(6, 15) g").format(probe),
        )
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            reader.wait(lambda evs: len(_ids(evs)) >= 15, what="snapshot and inserts")
            inserts = [e for e in reader.events if e.op == "c"]
        assert len(inserts) == 10
        assert inserts[0].transaction is not None
        commit_lsn = int(inserts[0].transaction["id"].split(":")[1])

        # 1. SIGTERM: a clean stop, exit code 0, the slot confirmed past the last change
        assert capture.stop() == 0, capture.log()
        assert "stopped cleanly" in capture.log()
        wait_for(lambda: not (slot_row(admin, capture.slot) or (True,))[0], 30, "slot released")
        stopped = slot_row(admin, capture.slot)
        assert stopped is not None
        assert stopped[1] > commit_lsn
        assert stopped[1] > created[1]

        # 2. the slot vanishes while the capture is stopped: it must refuse to stream
        drop_slot(admin, capture.slot)
        capture.start()
        code = capture.wait_exit(60)
        log = " ".join(capture.log().split())  # the CLI wraps its error message
        assert code != 0, log
        assert capture.slot in log
        assert "may be missing" in log
        assert slot_row(admin, capture.slot) is None, "no new slot behind the operator's back"

        # 3. starting over on purpose, as the message says: delete the offset, restart
        producer = Producer({"bootstrap.servers": stack_env["KAFKA_BOOTSTRAP"]})
        producer.produce(OFFSETS_TOPIC, key=capture.slot.encode(), value=None)
        assert producer.flush(10) == 0
        capture.start().wait_streaming()
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            reader.wait(
                lambda evs: len([e for e in evs if e.op == "r"]) >= 5 + 15, what="a new snapshot"
            )
            reads = [e for e in reader.events if e.op == "r"]
        assert sorted(e.key["id"] for e in reads if e.key) == sorted([*range(1, 6), *range(1, 16)])
    finally:
        drop_probe_table(stack_env, table)
