"""The capture rides out a database restart and a Kafka outage without losing a change.

Each test stops a real component of the shared stack and starts it again, so they run
after the other capture tests (file order) and leave the stack as they found it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from erpcrm.stack import LocalStack
from tests.integration.cdc_fixtures import (
    Capture,
    TopicReader,
    capture_factory,  # noqa: F401 - fixture
    create_probe_table,
    drop_probe_table,
    execute,
    insert_notes,
    row_ids,
    unique_name,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _wal(dsn: str) -> int:
    return int(execute(dsn, "select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")[0][0])


def _confirmed(dsn: str, slot: str) -> int:
    rows = execute(
        dsn,
        "select (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint from pg_replication_slots "
        "where slot_name = %s",
        (slot,),
    )
    return int(rows[0][0])


def test_database_restart_mid_stream(
    local_stack: LocalStack,
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
) -> None:
    admin = stack_env["ERP_ADMIN_DSN"]
    table = unique_name("cdc_pgrestart_")
    create_probe_table(stack_env, table, "id int primary key, note text")
    try:
        capture = capture_factory("erp", [table]).start().wait_streaming()
        insert_notes(admin, table, 1, 50)
        local_stack.erp.stop()
        local_stack.up()
        insert_notes(admin, table, 51, 100)
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            reader.wait(lambda evs: len(row_ids(evs)) >= 100, timeout=120, what="all 100 rows")
            ids = row_ids(reader.events)
        assert capture.running, capture.log()
        assert capture.metric("erpcrm_cdc_reconnects_total") >= 1
    finally:
        local_stack.up()
        drop_probe_table(stack_env, table)
    assert ids == set(range(1, 101))


def test_kafka_outage_blocks_and_resumes_without_loss(
    local_stack: LocalStack,
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
) -> None:
    """Kafka away for longer than a topic creation may take (30 s), and meanwhile the
    database restarts (the capture reconnects to it) and a second capture starts: both
    wait for Kafka, neither exits, and every row arrives once it is back."""
    admin = stack_env["ERP_ADMIN_DSN"]
    table = unique_name("cdc_kafkadown_")
    late_table = unique_name("cdc_kafkalate_")
    create_probe_table(stack_env, table, "id int primary key, note text")
    create_probe_table(stack_env, late_table, "id int primary key, note text")
    try:
        capture = capture_factory("erp", [table]).start().wait_streaming()
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            insert_notes(admin, table, 1, 20)
            reader.wait(lambda evs: len(row_ids(evs)) >= 20, timeout=60, what="the first 20 rows")
        local_stack.kafka.stop()
        away = time.monotonic()
        insert_notes(admin, table, 21, 120)  # committed while Kafka is away
        insert_notes(admin, late_table, 1, 10)
        outage_end = _wal(admin)
        time.sleep(3)  # the capture must hold on, neither exit nor confirm
        assert capture.running, "the capture waits for Kafka; it does not exit"
        confirmed = _confirmed(admin, capture.slot)
        late = capture_factory("erp", [late_table]).start()
        local_stack.erp.stop()  # the capture reconnects to its database while Kafka is away
        local_stack.start([local_stack.erp])
        time.sleep(max(0.0, away + 40 - time.monotonic()))  # past every Kafka timeout
        assert capture.running, f"the capture waits for Kafka; it does not exit:\n{capture.log()}"
        assert late.running, f"a capture started without Kafka waits for it:\n{late.log()}"
        local_stack.up()
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            reader.wait(lambda evs: len(row_ids(evs)) >= 120, timeout=180, what="all 120 rows")
            ids = row_ids(reader.events)
        with TopicReader(stack_env, [late.topic(late_table)]) as reader:
            reader.wait(lambda evs: len(row_ids(evs)) >= 10, timeout=180, what="the late rows")
            late_ids = row_ids(reader.events)
        assert capture.running, capture.log()
        assert "reconnecting" in capture.log()
    finally:
        local_stack.up()  # whatever happened, the next tests get the whole stack back
        drop_probe_table(stack_env, table)
        drop_probe_table(stack_env, late_table)
    assert confirmed < outage_end, "nothing Kafka had not acknowledged was confirmed"
    assert ids == set(range(1, 121))
    assert late_ids == set(range(1, 11))
