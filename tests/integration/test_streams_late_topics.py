"""A streams worker started before a capture has made its topics, against the real stack.

``erpcrm run`` starts every worker at once, and a capture whose database is away at
first start makes its topics late. The worker subscribes to the raw topics by name;
one made after it started is read from within seconds (the consumer's metadata
refresh), not after Kafka's default five minutes. A broker that creates topics on
first use (the local stack's does) makes the transaction topic with its default
partition count when the worker asks for it first: the capture still writes every
``BEGIN``/``END`` to one partition, so the worker reads them in commit order.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from tests.integration.cdc_fixtures import Capture, unique_name
from tests.integration.test_streams import (
    CRM_TABLES,
    OutputReader,
    StreamsProcess,
    _tag,
    wait_snapshots_processed,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LATE_TOPIC_WAIT_S = 60.0
"""Far below the five minutes an unrefreshed subscription takes to notice a new topic."""


@pytest.fixture
def worker_first(
    stack_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[StreamsProcess, Capture, OutputReader]]:
    """A streams worker running before its CRM capture exists; the capture not started."""
    crm = Capture(stack_env, "crm", CRM_TABLES, tmp_path)
    streams = StreamsProcess(stack_env, {"erp": unique_name("erp"), "crm": crm.prefix}, tmp_path)
    reader = OutputReader(stack_env, streams.app_id)
    try:
        streams.start().wait_ready()
        yield streams, crm, reader
    finally:
        streams.cleanup()
        reader.close()
        crm.cleanup()


def _transaction_partitions(bootstrap: str, topic: str) -> Counter[int]:
    """How many records each partition of ``topic`` holds."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("count")})
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        counts: Counter[int] = Counter()
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            counts[partition] = high - low
        return counts
    finally:
        consumer.close()


def test_a_capture_that_makes_its_topics_after_the_worker_started_is_read_within_seconds(
    stack_env: dict[str, str], worker_first: tuple[StreamsProcess, Capture, OutputReader]
) -> None:
    streams, crm, reader = worker_first
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    time.sleep(5)  # the worker has subscribed and been assigned what exists
    assert streams.running
    crm.start().wait_streaming(180)
    started = time.monotonic()
    tag = _tag()
    with psycopg.connect(stack_env["CRM_DSN"], autocommit=True) as conn:
        rows = 0
        for table in CRM_TABLES:
            count = sql.SQL("select count(*) from {}").format(sql.Identifier("public", table))
            rows += int((conn.execute(count).fetchone() or (0,))[0])
        wait_snapshots_processed(streams, rows, LATE_TOPIC_WAIT_S)
        (account,) = conn.execute(
            "insert into accounts (name, email, billing_address_country)"
            " values (%s, %s, 'Germany') returning id::text",
            (f"Late Topic Account {tag}", f"late-{tag.lower()}@example.com"),
        ).fetchone() or ("",)
    event = reader.event("customer", f"crm:{account}", timeout=LATE_TOPIC_WAIT_S)
    assert event["name"] == f"Late Topic Account {tag}"
    assert time.monotonic() - started < LATE_TOPIC_WAIT_S
    # every BEGIN/END in one partition, whatever partition count the topic was made with
    counts = _transaction_partitions(bootstrap, crm.tx_topic)
    assert counts[0] >= 2
    assert {p: n for p, n in counts.items() if p != 0 and n} == {}
