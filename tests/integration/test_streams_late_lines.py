"""A quote line read after its order went out incomplete, against the real stack.

A won quote and its two lines are committed in one CRM transaction and captured by a real
capture. The worker here reads its CRM changes from topics of its own, into which the
test copies the capture's records in an order it chooses: the quote, its first line and
the transaction's ``END``, then, once the order went out without it after the (short)
assembly timeout, the second line. The ERP owns an order's lines once it created it, so
the late line can reach it only as a dead letter (``late_line``); the release and the
letter are in the worker's log as warnings and in its metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg import sql

from tests.integration.cdc_fixtures import (
    Capture,
    execute,
    registry_client,
    unique_name,
    wait_for,
)
from tests.integration.test_streams import (
    CRM_TABLES,
    ERP_TABLES,
    Output,
    OutputReader,
    StreamsProcess,
    _raw_messages,
    _tag,
    wait_snapshots_processed,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TIMEOUT_SECONDS = 3


@dataclass
class LateLines:
    env: dict[str, str]
    crm: Capture
    """The real capture of the CRM's quotes, whose records the test copies."""
    prefix: str
    """The prefix of the worker's CRM topics, fed by the test."""
    streams: StreamsProcess
    reader: OutputReader


@pytest.fixture(scope="module")
def late_lines(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LateLines]:
    log_dir = tmp_path_factory.mktemp("late-lines")
    erp = Capture(stack_env, "erp", ERP_TABLES, log_dir)
    crm = Capture(stack_env, "crm", ("aos_quotes", "aos_products_quotes"), log_dir)
    prefix = unique_name("crmfed")
    admin = AdminClient({"bootstrap.servers": stack_env["KAFKA_BOOTSTRAP"]})
    fed = [f"{prefix}.public.{table}" for table in CRM_TABLES] + [f"{prefix}.transaction"]
    for future in admin.create_topics([NewTopic(t, num_partitions=1) for t in fed]).values():
        future.result(timeout=30)
    streams = StreamsProcess(stack_env, {"erp": erp.prefix, "crm": prefix}, log_dir)
    reader = OutputReader(stack_env, streams.app_id)
    try:
        erp_rows = _erp_rows(stack_env)
        erp.start()
        crm.start()
        erp.wait_streaming(180)
        crm.wait_streaming(180)
        streams.start({"ERPCRM_STREAMS_ASSEMBLY_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)})
        streams.wait_ready()
        wait_snapshots_processed(streams, erp_rows, 600)  # every SKU known
        yield LateLines(stack_env, crm, prefix, streams, reader)
    finally:
        streams.cleanup()
        reader.close()
        erp.cleanup()
        crm.cleanup()
        for future in admin.delete_topics(fed, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)


def _erp_rows(env: dict[str, str]) -> int:
    """Rows of the captured ERP tables: what the ERP snapshot sends at least."""
    total = 0
    for table in ERP_TABLES:
        query = sql.SQL("select count(*) from {}").format(sql.Identifier("public", table))
        total += int(execute(env["ERP_DSN"], query)[0][0])
    return total


def _won_quote_with_two_lines(env: dict[str, str]) -> tuple[str, list[str], list[str]]:
    """Commit a won quote with two lines in one transaction: quote id, line ids, SKUs."""
    with psycopg.connect(env["ERP_DSN"]) as conn:
        skus = [
            str(row[0])
            for row in conn.execute(
                "select default_code from product_product where active order by id limit 2"
            )
        ]
    with psycopg.connect(env["CRM_DSN"]) as conn, conn.transaction():
        row = conn.execute(
            "select id::text from accounts where not deleted order by id limit 1"
        ).fetchone()
        assert row is not None
        quote = conn.execute(
            "insert into aos_quotes (name, account_id, stage, subtotal_amount, tax_amount, "
            "total_amount) values (%s, %s, 'Closed Accepted', 30, 5.70, 35.70) "
            "returning id::text",
            (f"Quote {_tag()}", row[0]),
        ).fetchone()
        assert quote is not None
        lines = []
        for number, sku in enumerate(skus, start=1):
            line = conn.execute(
                "insert into aos_products_quotes (parent_id, number, name, part_number, "
                "product_qty, product_list_price, product_total_price) "
                "values (%s, %s, %s, %s, %s, 10, %s) returning id::text",
                (quote[0], number, f"Line {number}", sku, number, 10 * number),
            ).fetchone()
            assert line is not None
            lines.append(str(line[0]))
    return str(quote[0]), lines, skus


def _captured(p: LateLines, quote: str, lines: list[str]) -> dict[str, Any]:
    """The capture's records of the quote's transaction: by row id, and its ``END``."""
    env = p.env
    values = AvroDeserializer(registry_client(env))

    def decode(topic: str, data: bytes) -> Any:
        return values(data, SerializationContext(topic, MessageField.VALUE))

    found: dict[str, Any] = {}

    def all_there() -> bool:
        for table in ("aos_quotes", "aos_products_quotes"):
            topic = p.crm.topic(table)
            for message in _raw_messages(env, topic):
                if message.value() is None:
                    continue
                after = decode(topic, message.value())["after"] or {}
                if after.get("id") in (quote, *lines):
                    found[str(after["id"])] = message
        tx_ids = (
            {decode(p.crm.topic("aos_quotes"), found[quote].value())["transaction"]["id"]}
            if quote in found
            else set()
        )
        for message in _raw_messages(env, p.crm.tx_topic):
            record = decode(p.crm.tx_topic, message.value())
            if record["status"] == "END" and record["id"] in tx_ids:
                found["END"] = message
        return len(found) == len(lines) + 2

    wait_for(all_there, 90, "the capture's records of the quote's transaction", interval=1.0)
    return found


def _copy(p: LateLines, producer: Producer, message: Any) -> None:
    """Produce a captured record, bytes unchanged, into the worker's CRM topic of its table."""
    table = str(message.topic()).removeprefix(f"{p.crm.prefix}.")
    producer.produce(f"{p.prefix}.{table}", key=message.key(), value=message.value())
    assert producer.flush(30) == 0


def test_a_line_read_after_its_order_went_out_incomplete_is_dead_lettered(
    late_lines: LateLines,
) -> None:
    p = late_lines
    quote, lines, skus = _won_quote_with_two_lines(p.env)
    records = _captured(p, quote, lines)
    producer = Producer({"bootstrap.servers": p.env["KAFKA_BOOTSTRAP"]})
    for record in (records[quote], records[lines[0]], records["END"]):  # the second held back
        _copy(p, producer, record)

    key = f"crm:{quote}"
    first = p.reader.event("sales_order", key, timeout=120)
    assert [line["sku"] for line in first["lines"]] == [skus[0]]
    released = p.streams.metric("erpcrm_streams_orders_assembled_total", how="timeout")
    assert released >= 1
    assert p.streams.metric("erpcrm_streams_order_timeouts_total", system="crm") >= 1

    _copy(p, producer, records[lines[1]])  # the late line

    def letter() -> Output | None:
        for output in p.reader.of("dlq.streams"):
            if output.headers.get("erpcrm.error.reason") == "late_line":
                return output
        return None

    found = p.reader.wait(letter, 120, "the late line's dead letter")
    headers = found.headers
    tx = headers["erpcrm.context.transaction"]
    assert headers["erpcrm.context.order"] == quote
    assert headers["erpcrm.flow"] == "crm_aos_quotes__sales_order"
    assert headers["erpcrm.origin.topic"] == f"{p.prefix}.public.aos_products_quotes"
    assert found.value is not None
    assert found.value["after"]["id"] == lines[1]
    assert p.streams.metric("erpcrm_streams_dead_letters_total", reason="late_line") == 1

    # No second order event comes for it (the ERP would not take its lines anyway).
    time.sleep(3 * TIMEOUT_SECONDS)
    p.reader.poll()
    assert len(p.reader.of("canonical.sales_order", key)) == 1

    log = p.streams.log_path.read_text(errors="replace")
    warnings = [line for line in log.splitlines() if "WARNING" in line and tx in line]
    assert any("released incomplete" in line for line in warnings), warnings
    assert any("assembled incomplete" in line and quote in line for line in warnings), warnings
    assert any("late_line" in line and lines[1] in line for line in warnings), warnings
