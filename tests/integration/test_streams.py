"""The streams worker (``erpcrm streams``) against the real stack.

Two captures (``erpcrm cdc --system erp|crm``, each with its own slot and topic prefix)
feed one streams worker with a unique Faust app id, data directory and web port. The
tests write into the demo databases with psycopg and read ``canonical.*`` and
``dlq.streams`` with confluent-kafka's ``Consumer`` and ``AvroDeserializer``, keeping
only what this worker published (header ``erpcrm.app_id``): other runs may share the
canonical topics.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg import sql

from streams.cleansing import clean_vat
from streams.validation import Ok
from tests.integration.cdc_fixtures import (
    Capture,
    CliProcess,
    execute,
    registry_client,
    unique_name,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ERP_TABLES = (
    "res_partner",
    "product_product",
    "stock_quant",
    "sale_order",
    "sale_order_line",
    "account_move",
)
CRM_TABLES = ("accounts", "contacts", "aos_products", "aos_quotes", "aos_products_quotes")
OUTPUT_TOPICS = (
    "canonical.customer",
    "canonical.contact",
    "canonical.product",
    "canonical.inventory",
    "canonical.sales_order",
    "canonical.invoice",
    "dlq.streams",
)
H_APP_ID = "erpcrm.app_id"


# ------------------------------------------------------------------ the worker


class StreamsProcess(CliProcess):
    """``erpcrm streams`` as a subprocess with its own app id, data dir and web port."""

    def __init__(self, stack_env: dict[str, str], prefixes: dict[str, str], log_dir: Path) -> None:
        super().__init__(stack_env, log_dir)
        self.prefixes = prefixes
        self.app_id = unique_name("streams")
        self.data_dir = log_dir / f"{self.app_id}-data"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.app_id}-{self.runs}.log"

    def start(self, settings: dict[str, str] | None = None) -> StreamsProcess:
        """Start the worker; ``settings``: more ``ERPCRM_STREAMS_*`` variables."""
        self.launch(
            ["streams"],
            {
                "ERPCRM_STREAMS_APP_ID": self.app_id,
                "ERPCRM_STREAMS_DATA_DIR": str(self.data_dir),
                "ERPCRM_STREAMS_WEB_PORT": str(self.port),
                "ERPCRM_STREAMS_ERP_TOPIC_PREFIX": self.prefixes["erp"],
                "ERPCRM_STREAMS_CRM_TOPIC_PREFIX": self.prefixes["crm"],
                **(settings or {}),
            },
        )
        return self

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def wait_ready(self, timeout: float = 120.0) -> StreamsProcess:
        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"streams exited:\n{self.tail()}")
            try:
                return self.get("/metrics").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "the streams worker's web server", interval=0.5)
        return self

    def exit_code(self, timeout: float, what: str) -> int:
        """Wait for the worker to exit by itself; fails the test with ``what`` if it does not."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{what}:\n{self.tail()}")

    def cleanup(self) -> None:
        """Stop, and delete the worker's own topics (control, changelogs) and its group."""
        self.stop()
        admin = AdminClient({"bootstrap.servers": self.stack_env["KAFKA_BOOTSTRAP"]})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{self.app_id}-")]
        if mine:
            for future in admin.delete_topics(mine, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result(timeout=30)
        if self.runs:
            for future in admin.delete_consumer_groups([self.app_id], request_timeout=30).values():
                with contextlib.suppress(Exception):  # never joined: nothing to delete
                    future.result(timeout=30)


# ------------------------------------------------------------------ the outputs


@dataclass(frozen=True, slots=True)
class Output:
    """One message this worker published to a canonical or the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: dict[str, Any] | None
    headers: dict[str, str]

    @property
    def entity_key(self) -> str:
        assert self.key is not None
        return self.key.decode()


def _wait_for_leaders(admin: AdminClient, topics: tuple[str, ...], timeout: float = 60.0) -> None:
    """Wait until every partition of ``topics`` has a leader (new topics take a moment)."""

    def led() -> bool:
        metadata = admin.list_topics(timeout=10)
        for topic in topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                return False
            if any(p.leader < 0 or p.error is not None for p in found.partitions.values()):
                return False
        return True

    wait_for(led, timeout, f"leaders of {', '.join(topics)}", interval=0.2)


class OutputReader:
    """Reads the output topics from where they ended before the worker started."""

    def __init__(self, stack_env: dict[str, str], app_id: str) -> None:
        bootstrap = stack_env["KAFKA_BOOTSTRAP"]
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topics = [NewTopic(t, num_partitions=3) for t in OUTPUT_TOPICS]
        for future in admin.create_topics(topics).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)  # exists already: fine
        _wait_for_leaders(admin, OUTPUT_TOPICS)
        self.app_id = app_id
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"erpcrm-test-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        metadata = self._consumer.list_topics(timeout=10)
        start = []
        for topic in OUTPUT_TOPICS:
            for partition in metadata.topics[topic].partitions:
                _, high = self._watermarks(TopicPartition(topic, partition))
                start.append(TopicPartition(topic, partition, high if high >= 0 else OFFSET_END))
        self._consumer.assign(start)
        self._values = AvroDeserializer(registry_client(stack_env))
        self.outputs: list[Output] = []

    def _watermarks(self, partition: TopicPartition) -> tuple[int, int]:
        """The partition's offsets; a leader just elected may still say NOT_LEADER briefly."""
        deadline = time.monotonic() + 30
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(partition, timeout=10)
                return int(low), int(high)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self._consumer.close()

    def _decode(self, topic: str, data: bytes) -> Any:
        for attempt in range(3):
            try:
                return self._values(data, SerializationContext(topic, MessageField.VALUE))
            except Exception:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def poll(self) -> None:
        for message in self._consumer.consume(1000, 0.3):
            assert message.error() is None, message.error()
            headers = {}
            for header in message.headers() or ():
                value = header[1]
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                headers[str(header[0])] = text or ""
            if headers.get(H_APP_ID) != self.app_id:
                continue
            topic = str(message.topic())
            raw = message.value()
            self.outputs.append(
                Output(
                    topic,
                    int(message.partition() or 0),
                    int(message.offset() or 0),
                    message.key(),
                    None if raw is None else self._decode(topic, raw),
                    headers,
                )
            )

    def of(self, topic: str, key: str | None = None) -> list[Output]:
        return [
            o
            for o in self.outputs
            if o.topic == topic and (key is None or (o.key is not None and o.entity_key == key))
        ]

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = predicate()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            self.poll()

    def event(
        self,
        entity: str,
        key: str,
        matches: Callable[[dict[str, Any]], bool] = lambda _: True,
        timeout: float = 90.0,
    ) -> dict[str, Any]:
        """Wait for an event of ``canonical.<entity>`` with ``key`` that ``matches``."""

        def found() -> dict[str, Any] | None:
            for output in self.of(f"canonical.{entity}", key):
                if output.value is not None and matches(output.value):
                    return output.value
            return None

        result: dict[str, Any] = self.wait(found, timeout, f"canonical.{entity} {key}")
        return result


# ------------------------------------------------------------------ the pipeline


@dataclass
class Pipeline:
    env: dict[str, str]
    erp: Capture
    crm: Capture
    streams: StreamsProcess
    reader: OutputReader

    def erp_rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return execute(self.env["ERP_DSN"], query, params)

    def crm_rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return execute(self.env["CRM_DSN"], query, params)


def wait_snapshots_processed(streams: StreamsProcess, rows: int, timeout: float) -> None:
    """Wait until ``streams`` has taken in ``rows`` change events (its captures' snapshots)."""

    def caught_up() -> bool:
        if not streams.running:
            raise AssertionError(f"streams exited:\n{streams.tail()}")
        seen = sum(
            value
            for (name, labels), value in streams.metrics().items()
            if name == "erpcrm_streams_events_in_total" and ("flow", "transaction") not in labels
        )
        return seen >= rows

    wait_for(caught_up, timeout, "the worker to process both snapshots", interval=1.0)


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    log_dir = tmp_path_factory.mktemp("streams")
    erp = Capture(stack_env, "erp", ERP_TABLES, log_dir)
    crm = Capture(stack_env, "crm", CRM_TABLES, log_dir)
    streams = StreamsProcess(stack_env, {"erp": erp.prefix, "crm": crm.prefix}, log_dir)
    reader = OutputReader(stack_env, streams.app_id)
    try:
        rows = _row_count(stack_env)
        erp.start()
        crm.start()
        erp.wait_streaming(180)
        crm.wait_streaming(180)
        streams.start().wait_ready()

        # Every snapshot row has been through the worker: the tests' own changes come next.
        wait_snapshots_processed(streams, rows, 600)
        yield Pipeline(stack_env, erp, crm, streams, reader)
    finally:
        streams.cleanup()
        reader.close()
        erp.cleanup()
        crm.cleanup()


def _row_count(env: dict[str, str]) -> int:
    """Rows of the captured tables: what the two snapshots will send at least."""
    total = 0
    for dsn, tables in ((env["ERP_DSN"], ERP_TABLES), (env["CRM_DSN"], CRM_TABLES)):
        for table in tables:
            query = sql.SQL("select count(*) from {}").format(sql.Identifier("public", table))
            total += int(execute(dsn, query)[0][0])
    return total


def _tag() -> str:
    return uuid.uuid4().hex[:8].upper()


def new_customer(p: Pipeline, **columns: Any) -> int:
    row = {"name": f"Test Customer {_tag()}", "ref": f"T{_tag()}", "is_company": True} | columns
    names = list(row)
    query = (
        f"insert into res_partner ({', '.join(names)}) "
        f"values ({', '.join(['%s'] * len(names))}) returning id"
    )
    return int(p.erp_rows(query, [row[n] for n in names])[0][0])


# ---------------------------------------------------------------------------- tests


def test_a_dirty_erp_customer_comes_out_cleansed(pipeline: Pipeline) -> None:
    ref = f"t{_tag().lower()}"
    partner = new_customer(
        pipeline,
        name="  Dirty   Trading   GmbH ",
        ref=ref,
        email=" JOHN.DOE@EXAMPLE.COM ",
        phone="030 1234567",
        country_code="Deutschland",
    )
    record = pipeline.reader.event("customer", f"erp:{partner}")
    assert (record["phone"], record["country_code"], record["email"]) == (
        "+49301234567",
        "DE",
        "john.doe@example.com",
    )
    # The customer number travels as entered (trimmed), never re-cased.
    assert (record["name"], record["customer_number"]) == ("Dirty Trading GmbH", ref)
    assert (record["source_system"], record["op"], record["erp_id"]) == (
        "erp",
        "upsert",
        str(partner),
    )


def test_an_invalid_record_lands_in_the_dead_letter_topic(pipeline: Pipeline) -> None:
    partner = new_customer(pipeline, ref=None)  # a customer without its customer number

    def letter() -> Any:
        for output in pipeline.reader.of("dlq.streams"):
            row = (output.value or {}).get("after") or {}
            if output.headers.get("erpcrm.flow") == "erp_res_partner__customer" and (
                row.get("id") == partner
            ):
                return output
        return None

    found = pipeline.reader.wait(letter, 90, f"the dead letter of res_partner {partner}")
    headers = found.headers
    assert headers["erpcrm.error.class"] == "ValidationError"
    assert headers["erpcrm.error.reason"] == "missing_required"
    assert headers["erpcrm.error.field"] == "customer_number"
    assert headers["erpcrm.stage"] == "streams"
    assert headers["erpcrm.flow"] == "erp_res_partner__customer"
    assert headers["erpcrm.origin.topic"] == pipeline.erp.topic("res_partner")
    assert int(headers["erpcrm.origin.offset"]) >= 0
    assert headers["erpcrm.error.message"].startswith("missing_required [customer_number]")
    assert pipeline.reader.of("canonical.customer", f"erp:{partner}") == []


def _raw_messages(env: dict[str, str], topic: str) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": env["KAFKA_BOOTSTRAP"],
            "group.id": f"erpcrm-test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        remaining, found = set(partitions), []
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                remaining.discard(message.partition())
                continue
            found.append(message)
        return found
    finally:
        consumer.close()


def test_replayed_raw_events_produce_no_second_canonical_event(pipeline: Pipeline) -> None:
    partner = new_customer(pipeline, email=f"replay-{_tag().lower()}@example.com")
    first = pipeline.reader.event("customer", f"erp:{partner}")
    topic = pipeline.erp.topic("res_partner")
    keys = AvroDeserializer(registry_client(pipeline.env))
    context = SerializationContext(topic, MessageField.KEY)
    mine = [
        m
        for m in _raw_messages(pipeline.env, topic)
        if m.key() is not None and m.value() is not None and keys(m.key(), context)["id"] == partner
    ]
    assert mine, "the capture's event of the new customer"
    flow = "erp_res_partner__customer"
    deduped = pipeline.streams.metric("erpcrm_streams_deduped_total", flow=flow)
    producer = Producer({"bootstrap.servers": pipeline.env["KAFKA_BOOTSTRAP"]})
    for message in mine * 2:  # the same bytes, twice: a capture replaying after a crash
        producer.produce(topic, key=message.key(), value=message.value())
    assert producer.flush(30) == 0
    wait_for(
        lambda: (
            pipeline.streams.metric("erpcrm_streams_deduped_total", flow=flow)
            >= deduped + 2 * len(mine)
        ),
        90,
        "the replayed events to be deduped",
        interval=0.5,
    )
    pipeline.reader.poll()
    events = pipeline.reader.of("canonical.customer", f"erp:{partner}")
    assert [e.value["event_id"] for e in events if e.value] == [first["event_id"]]


def _vat_digits() -> str:
    """Nine digits that make a German VAT id whose check digit holds (else quarantined)."""
    while True:
        digits = f"{random.randrange(10**8, 10**9)}"
        if isinstance(clean_vat(f"DE{digits}"), Ok):
            return digits


def test_an_account_typed_while_its_customer_is_being_created_is_held_and_the_copy_links(
    pipeline: Pipeline,
) -> None:
    digits = _vat_digits()
    ref = f"T{_tag()}"
    partner = new_customer(
        pipeline, ref=ref, vat=f"DE{digits}", email=f"erp-{digits}@example.com", country_code="DE"
    )
    assert pipeline.reader.event("customer", f"erp:{partner}")["crm_id"] is None
    # The customer went out as new: the CRM sink makes its account. The same customer
    # typed into the CRM meanwhile (VAT id in other spacing and case) is held, not linked.
    typed = _new_account(
        pipeline,
        name=f"Typed Account {digits}",
        vat=f"de {digits[:3]} {digits[3:6]} {digits[6:]}",
        email=f"crm-{digits}@example.com",
        billing_address_country="Germany",
    )
    held = pipeline.reader.event("customer", f"crm:{typed}")
    assert (held["erp_id"], held["duplicate_of"], held["duplicate_rule"]) == (
        None,
        str(partner),
        f"vat=DE{digits}",
    )
    # The account the sink makes carries the customer number: the counterpart, linked.
    copy = _new_account(
        pipeline,
        name=f"Test Customer {digits}",
        account_number=ref,
        vat=f"DE{digits}",
        billing_address_country="Germany",
    )
    linked = pipeline.reader.event("customer", f"crm:{copy}")
    assert (linked["erp_id"], linked["duplicate_of"]) == (str(partner), None)
    execute(
        pipeline.env["ERP_DSN"], "update res_partner set city = 'Potsdam' where id = %s", (partner,)
    )
    later = pipeline.reader.event("customer", f"erp:{partner}", lambda r: r["city"] == "Potsdam")
    assert (later["erp_id"], later["crm_id"]) == (str(partner), copy)


def _new_account(p: Pipeline, **columns: Any) -> str:
    names = list(columns)
    query = (
        f"insert into accounts ({', '.join(names)}) "
        f"values ({', '.join(['%s'] * len(names))}) returning id::text"
    )
    return str(p.crm_rows(query, [columns[n] for n in names])[0][0])


def test_a_customer_typed_in_again_is_flagged_as_a_duplicate_both_ways(
    pipeline: Pipeline,
) -> None:
    digits = _vat_digits()
    tag = _tag()
    ref = f"T{tag}"
    partner = new_customer(
        pipeline,
        ref=ref,
        name=f"Müller & Söhne {tag} GmbH",
        vat=f"DE{digits}",
        email=f"erp-{digits}@example.com",
        country_code="DE",
    )
    pipeline.reader.event("customer", f"erp:{partner}")
    # its account, as the CRM sink makes it (with the customer number): linked
    account = _new_account(
        pipeline,
        name=f"Linked Account {tag}",
        account_number=ref,
        vat=f"de {digits}",
        email=f"crm-{digits}@example.com",
        billing_address_country="Germany",
    )
    linked = pipeline.reader.event("customer", f"crm:{account}")
    assert (linked["erp_id"], linked["duplicate_of"]) == (str(partner), None)

    # Typed into the CRM again: by VAT id in other spacing, e-mail in other case, name in
    # other case without accents and legal form; each is held, not linked.
    again = {
        f"vat=DE{digits}": {"name": f"Again A {tag}", "vat": f"DE-{digits[:3]} {digits[3:]}"},
        f"email=erp-{digits}@example.com": {
            "name": f"Again B {tag}",
            "email": f"ERP-{digits}@Example.COM",
        },
        f"name_country=MULLER SOHNE {tag}|DE": {"name": f"MULLER & SOHNE {tag}"},
    }
    for evidence, columns in again.items():
        copy = _new_account(pipeline, billing_address_country="Germany", **columns)
        record = pipeline.reader.event("customer", f"crm:{copy}")
        assert (record["erp_id"], record["duplicate_of"], record["duplicate_rule"]) == (
            None,
            str(partner),
            evidence,
        )
    # Typed into the ERP again: by the account's e-mail.
    copy_id = new_customer(
        pipeline, name=f"Again C {tag}", email=f"CRM-{digits}@example.com", country_code="DE"
    )
    record = pipeline.reader.event("customer", f"erp:{copy_id}")
    assert (record["crm_id"], record["duplicate_of"], record["duplicate_rule"]) == (
        None,
        account,
        f"email=crm-{digits}@example.com",
    )
    # The pair stays linked, and the duplicates are counted.
    execute(
        pipeline.env["ERP_DSN"], "update res_partner set city = 'Potsdam' where id = %s", (partner,)
    )
    later = pipeline.reader.event("customer", f"erp:{partner}", lambda r: r["city"] == "Potsdam")
    assert (later["crm_id"], later["duplicate_of"]) == (account, None)
    streams = pipeline.streams
    for system, rule in (
        ("crm", "vat"),
        ("crm", "email"),
        ("crm", "name_country"),
        ("erp", "email"),
    ):
        labels = {"entity": "customer", "system": system, "rule": rule}
        assert streams.metric("erpcrm_streams_duplicates_total", **labels) >= 1, labels


def test_stock_quants_produce_inventory_totals(pipeline: Pipeline) -> None:
    sku = f"T-{_tag()}"
    locations = [
        row[0]
        for row in pipeline.erp_rows(
            "select id from stock_location where usage = 'internal' order by id limit 2"
        )
    ]
    assert len(locations) == 2
    with psycopg.connect(pipeline.env["ERP_DSN"]) as conn, conn.transaction():
        product = conn.execute(
            "insert into product_product (default_code, name) values (%s, %s) returning id",
            (sku, f"Test product {sku}"),
        ).fetchone()
        assert product is not None
        conn.execute(
            "insert into stock_quant (product_id, location_id, quantity, reserved_quantity) "
            "values (%s, %s, 10, 2), (%s, %s, 5, 0)",
            (product[0], locations[0], product[0], locations[1]),
        )
    product_id = int(product[0])
    key = f"erp:{product_id}"
    record = pipeline.reader.event("inventory", key, lambda r: r["on_hand"] == Decimal(15))
    assert (record["sku"], record["reserved"], record["available"]) == (
        sku,
        Decimal(2),
        Decimal(13),
    )
    execute(
        pipeline.env["ERP_DSN"],
        "update stock_quant set quantity = 7 where product_id = %s and location_id = %s",
        (product_id, locations[1]),
    )
    updated = pipeline.reader.event("inventory", key, lambda r: r["on_hand"] == Decimal(17))
    assert [loc["on_hand"] for loc in updated["locations"]] == [Decimal(10), Decimal(7)]
    assert updated["version"] > record["version"]
    view = pipeline.streams.get(f"/inventory/{sku.lower()}")
    assert view.status_code == 200
    assert (view.json()["on_hand"], view.json()["available"]) == ("17.000", "15.000")
    assert pipeline.streams.get("/inventory/NO-SUCH-SKU").status_code == 404


def test_a_quote_with_lines_in_one_transaction_is_one_sales_order(pipeline: Pipeline) -> None:
    (account,) = pipeline.crm_rows(
        "select id::text from accounts where account_number is not null and not deleted "
        "order by account_number limit 1"
    )[0]
    skus = [
        row[0]
        for row in pipeline.erp_rows(
            "select default_code from product_product where active order by id limit 2"
        )
    ]
    with psycopg.connect(pipeline.env["CRM_DSN"]) as conn, conn.transaction():
        quote = conn.execute(
            "insert into aos_quotes (name, account_id, stage, subtotal_amount, tax_amount, "
            "total_amount) values (%s, %s, 'Closed Accepted', 30, 5.70, 35.70) "
            "returning id::text, number",
            (f"Quote {_tag()}", account),
        ).fetchone()
        assert quote is not None
        for number, sku in enumerate(skus, start=1):
            conn.execute(
                "insert into aos_products_quotes (parent_id, number, name, part_number, "
                "product_qty, product_list_price, product_total_price) "
                "values (%s, %s, %s, %s, %s, 10, %s)",
                (quote[0], number, f"Line {number}", sku, number, 10 * number),
            )
    key = f"crm:{quote[0]}"
    record = pipeline.reader.event("sales_order", key)
    assert (record["quote_number"], record["state"], record["customer_crm_id"]) == (
        str(quote[1]),
        "confirmed",
        account,
    )
    assert [(line["sku"], line["quantity"]) for line in record["lines"]] == [
        (skus[0], Decimal(1)),
        (skus[1], Decimal(2)),
    ]
    time.sleep(5)  # anything partial would have come by now
    pipeline.reader.poll()
    assert len(pipeline.reader.of("canonical.sales_order", key)) == 1


def test_an_order_with_an_unknown_sku_is_dead_lettered_once(pipeline: Pipeline) -> None:
    """A won quote, then two lines with an unknown SKU, one transaction each: both lines'
    transactions fail on the SKU and wait; one letter comes out, not one per transaction."""
    (account,) = pipeline.crm_rows(
        "select id::text from accounts where account_number is not null and not deleted "
        "order by account_number limit 1"
    )[0]
    unknown = f"ZZ-{_tag()}"
    ((quote,),) = pipeline.crm_rows(
        "insert into aos_quotes (name, account_id, stage, subtotal_amount, total_amount) "
        "values (%s, %s, 'Closed Accepted', 20, 20) returning id::text",
        (f"Quote {_tag()}", account),
    )
    for number in (1, 2):
        pipeline.crm_rows(
            "insert into aos_products_quotes (parent_id, number, name, part_number, "
            "product_qty, product_list_price, product_unit_price, product_total_price) "
            "values (%s, %s, %s, %s, 1, 10, 10, 10) returning id",
            (quote, number, f"Line {number}", unknown),
        )

    def letters() -> list[Output]:
        pipeline.reader.poll()
        return [
            o
            for o in pipeline.reader.of("dlq.streams")
            if o.headers.get("erpcrm.context.order") == quote
        ]

    first = pipeline.reader.wait(letters, 120, "the order's dead letter")[0]
    assert first.headers["erpcrm.error.reason"] == "unknown_sku"
    # every transaction of the order gave up by now (reference wait 15 s, ticks 1 s)
    time.sleep(20)
    found = letters()
    ids = Counter(o.headers["erpcrm.output_id"] for o in found)
    assert [(i, n) for i, n in ids.items() if n > 1] == []
    assert len(found) == 1, [(o.partition, o.offset) for o in found]


def test_a_wait_expires_after_a_restart_while_changes_keep_coming(pipeline: Pipeline) -> None:
    """A record parked for a reference before a SIGKILL is dead-lettered after the restart
    while changes go on arriving: the read horizon moves on from the first tick stretch
    after the restart, not from the first moment nothing is read."""
    partner = new_customer(pipeline)
    pipeline.reader.event("customer", f"erp:{partner}")
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:  # a change every 50 ms: every stretch between ticks reads some
        try:
            with psycopg.connect(pipeline.env["ERP_DSN"], autocommit=True) as conn:
                n = 0
                while not stop.is_set():
                    n += 1
                    conn.execute(
                        "update res_partner set city = %s where id = %s",
                        (f"Load City {n}", partner),
                    )
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    try:
        parked_before = pipeline.streams.metric("erpcrm_streams_parked_total", reason="unknown_sku")
        unknown = f"ZZ-{_tag()}"
        pipeline.crm_rows(
            "insert into aos_products (name, part_number, price) values (%s, %s, 5) returning id",
            (f"Product {_tag()}", unknown),
        )
        wait_for(
            lambda: (
                pipeline.streams.metric("erpcrm_streams_parked_total", reason="unknown_sku")
                > parked_before
            ),
            60,
            "the product to be parked for its SKU",
        )
        time.sleep(3)  # the parked record is committed (offsets every second)
        pipeline.streams.kill()
        pipeline.streams.start().wait_ready()
        restarted = time.monotonic()

        def letter() -> list[Output]:
            pipeline.reader.poll()
            return [
                o
                for o in pipeline.reader.of("dlq.streams")
                if o.headers.get("erpcrm.error.reason") == "unknown_sku"
                and unknown in o.headers.get("erpcrm.error.message", "")
            ]

        # 15 s of reference wait from the parking; the group takes up to its session
        # timeout (15 s) to give the restarted worker the partitions
        pipeline.reader.wait(letter, 90, "the parked product's dead letter after the restart")
        assert writer.is_alive(), f"the load stopped: {errors}"
        print(f"dead letter {time.monotonic() - restarted:.1f}s after the restart")
    finally:
        stop.set()
        writer.join(10)
    assert not errors, errors


def test_a_killed_worker_restarts_without_losing_or_repeating_events(pipeline: Pipeline) -> None:
    partners = [
        new_customer(pipeline, email=f"kill-{_tag().lower()}@example.com") for _ in range(5)
    ]
    for partner in partners:
        pipeline.reader.event("customer", f"erp:{partner}")
    updates = 300
    cities = [f"Kill City {i}" for i in range(updates)]
    done = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with psycopg.connect(pipeline.env["ERP_DSN"], autocommit=True) as conn:
                for i, city in enumerate(cities):
                    conn.execute(
                        "update res_partner set city = %s where id = %s",
                        (city, partners[i % len(partners)]),
                    )
                    time.sleep(0.03)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    keys = {f"erp:{p}" for p in partners}

    def seen_cities() -> set[str]:
        return {
            o.value["city"]
            for o in pipeline.reader.of("canonical.customer")
            if o.value is not None and o.entity_key in keys and o.value["city"] in cities
        }

    pipeline.reader.wait(lambda: len(seen_cities()) >= 40, 120, "the load to flow")
    pipeline.streams.kill()  # SIGKILL, mid-stream
    assert not done.is_set(), "the load ended before the kill; make it longer"
    pipeline.streams.start().wait_ready()
    assert done.wait(120)
    writer.join(10)
    assert not errors, errors
    pipeline.reader.wait(lambda: len(seen_cities()) == updates, 240, "every update after restart")
    time.sleep(5)  # let late duplicates, if any, arrive
    pipeline.reader.poll()
    ours = [o for o in pipeline.reader.of("canonical.customer") if o.entity_key in keys]
    per_city = Counter(o.value["city"] for o in ours if o.value is not None)
    assert all(per_city[city] == 1 for city in cities), [c for c in cities if per_city[c] != 1]
    every_id = Counter(
        o.value["event_id"]
        for o in pipeline.reader.outputs
        if o.value is not None and o.topic != "dlq.streams"
    )
    assert [event for event, n in every_id.items() if n > 1] == []
