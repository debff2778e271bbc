"""A broker outage reads as a few clear lines in a worker's log, and the worker goes on.

The capture's librdkafka clients (its producer, its offsets' producer and readers, its
admin clients) log through the worker's ``erpcrm.kafka.<worker>`` logger, folded: the
broker stopped for about 20 s under a streaming capture gives a line saying it is
unreachable, one saying it is back, and no stream of per-attempt failures. It stops the
shared stack's broker and starts it again, leaving the stack as it found it.
"""

from __future__ import annotations

import re
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
    insert_notes,
    row_ids,
    unique_name,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OUTAGE_SECONDS = 20.0
MAX_KAFKA_LINES = 20
"""Kafka client lines allowed for the whole outage: librdkafka alone wrote one or more per
connection attempt and client (hundreds for 20 s)."""

_KAFKA_LINE = re.compile(r"rdkafka|erpcrm\.kafka\.")
_SECRET = "hunter2-not-a-real-password"


def test_broker_outage_is_a_few_clear_lines_and_the_capture_delivers_after_it(
    local_stack: LocalStack,
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
) -> None:
    admin = stack_env["ERP_ADMIN_DSN"]
    table = unique_name("kafkalog_")
    create_probe_table(stack_env, table, "id int primary key, note text")
    try:
        # A secret in the client settings (librdkafka ignores SASL settings on a
        # PLAINTEXT connection) must appear nowhere in the log.
        capture = capture_factory("erp", [table])
        capture.stack_env = {
            **stack_env,
            "ERPCRM_KAFKA__EXTRA": f'{{"sasl.password": "{_SECRET}"}}',
        }
        capture.start().wait_streaming()
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            insert_notes(admin, table, 1, 10)
            reader.wait(lambda evs: len(row_ids(evs)) >= 10, timeout=60, what="the first rows")
        before = len(capture.log().splitlines())
        local_stack.kafka.stop()
        insert_notes(admin, table, 11, 30)  # committed while the broker is away
        time.sleep(OUTAGE_SECONDS)
        assert capture.running, f"the capture waits for Kafka:\n{capture.log()}"
        local_stack.up()
        with TopicReader(stack_env, [capture.topic(table)]) as reader:
            reader.wait(lambda evs: len(row_ids(evs)) >= 30, timeout=180, what="every row")
            insert_notes(admin, table, 31, 40)  # and it still delivers what comes after
            reader.wait(lambda evs: len(row_ids(evs)) >= 40, timeout=120, what="the later rows")
        log_text = capture.log()
        # "back" is told once a client's statistics see the broker up (every 5 s)
        deadline = time.monotonic() + 30
        while "reachable again" not in log_text and time.monotonic() < deadline:
            time.sleep(1)
            log_text = capture.log()
    finally:
        local_stack.up()
        drop_probe_table(stack_env, table)
    outage = log_text.splitlines()[before:]
    kafka_lines = [line for line in outage if _KAFKA_LINE.search(line)]
    shown = "\n".join(kafka_lines[:60])
    assert len(kafka_lines) <= MAX_KAFKA_LINES, f"{len(kafka_lines)} Kafka lines:\n{shown}"
    down = [line for line in kafka_lines if "unreachable since" in line]
    back = [line for line in kafka_lines if "reachable again after" in line]
    assert len(down) == 1, shown
    assert len(back) == 1, shown
    assert _SECRET not in log_text
