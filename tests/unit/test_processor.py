"""The streams processor (streams/processor.py) with plain dict-backed state, no Kafka.

Raw messages are built with the capture stage's own envelope code and framed in the
Confluent wire format, so the processor sees the bytes it reads from the bus.
"""

from __future__ import annotations

import math
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.envelope import (
    SourceInfo,
    TableShape,
    TransactionBlock,
    envelope_record,
    key_record,
    key_schema,
    transaction_end_record,
    transaction_id,
    transaction_key_record,
    transaction_key_schema,
    transaction_value_schema,
    value_schema,
)
from schemas.canonical import canonical_schema
from schemas.mapping import load_mappings
from schemas.payload import carried_digest, payload_hash, payload_hash_header
from schemas.serde import AvroSerde, LocalSchemaRegistry
from schemas.topics import canonical_topic, value_subject
from streams import dlq
from streams.dlq import Origin
from streams.outcome import Count, DeadLetterError, Inbound, Kind, Outcome
from streams.processor import StreamProcessor
from streams.quality import DefectOutcome, QualityEntry
from streams.state import DictState, b64, dump, freeze, fresh_copy, load, thaw
from streams.transform import event_id
from tests.unit.test_transform import (
    ACCOUNT_ID,
    ACCOUNTS,
    AOS_PRODUCTS,
    AOS_PRODUCTS_QUOTES,
    AOS_QUOTES,
    CONTACTS,
    ORDER,
    PARTNER,
    PRODUCT,
    PRODUCT_PRODUCT,
    QUOTE,
    QUOTE_ID,
    RES_PARTNER,
    SALE_ORDER,
    SALE_ORDER_LINE,
    STOCK_QUANT,
    TS_MS,
    order_line,
)

FLOWS = load_mappings()
SERDE = AvroSerde(LocalSchemaRegistry())
START_MS = 1_717_236_000_000


def encode_canonical(entity: str, record: dict[str, Any]) -> bytes:
    return SERDE.encode(value_subject(canonical_topic(entity)), canonical_schema(entity), record)


class Harness:
    """A processor with dict state, a clock, and a builder of raw messages."""

    def __init__(self, **options: Any) -> None:
        self.processor = StreamProcessor(
            FLOWS, decode=SERDE.decode, encode=encode_canonical, **options
        )
        self.state = DictState()
        self.processor.load(self.state)
        self.now = START_MS
        self.offsets: Counter[str] = Counter()

    def run(self, message: Inbound) -> Outcome:
        """Process and commit, as the agent does after publishing.

        Every canonical event published carries the payload hash a sink would compute
        from the record it decodes (the sinks trust that header).
        """
        outcome = self.processor.process(message, self.state)
        self.processor.commit(outcome, self.state)
        for o in outcome.outbound:
            if o.event is not None and o.value:
                assert carried_digest(o.headers, o.value) == payload_hash(SERDE.decode(o.value)), (
                    o.topic
                )
        return outcome

    def _origin(self, topic: str) -> Origin:
        offset = self.offsets[topic]
        self.offsets[topic] += 1
        return Origin(topic, 0, offset)

    def change(
        self,
        shape: TableShape,
        op: str,
        *,
        after: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        lsn: int,
        tx: tuple[int, int] | None = None,
        origin: str | None = None,
    ) -> Inbound:
        """A change like the capture's; ``tx`` is (xid, commit LSN), None for snapshot reads."""
        topic = f"{shape.server}.public.{shape.table}"
        source = SourceInfo(
            version="test",
            name=shape.server,
            ts_ms=TS_MS,
            snapshot="true" if op == "r" else "false",
            db=shape.server,
            schema="public",
            table=shape.table,
            tx_id=None if tx is None else tx[0],
            lsn=lsn,
            origin=origin,
        )
        # The capture numbers a transaction's changes in commit order: the LSN orders them.
        block = None if tx is None else TransactionBlock(transaction_id(*tx), lsn, 1)
        datum = envelope_record(
            shape,
            op=op,  # type: ignore[arg-type]
            before=before,
            after=after,
            source=source,
            ts_ms=TS_MS + 5,
            transaction=block,
        )
        row = after if after is not None else before
        assert row is not None
        key = SERDE.encode(f"{topic}-key", key_schema(shape), key_record(shape, row))
        value = SERDE.encode(f"{topic}-value", value_schema(shape), datum)
        return Inbound(self._origin(topic), key, value, self.now)

    def end(self, system: str, tx: tuple[int, int], counts: dict[str, int]) -> Inbound:
        """The END record of a transaction on ``<system>.transaction``."""
        topic = f"{system}.transaction"
        tid = transaction_id(*tx)
        key = SERDE.encode(f"{topic}-key", transaction_key_schema(), transaction_key_record(tid))
        value = SERDE.encode(
            f"{topic}-value",
            transaction_value_schema(),
            transaction_end_record(tid, ts_ms=TS_MS, event_counts=counts),
        )
        return Inbound(self._origin(topic), key, value, self.now)

    def committed(self, system: str, tx: tuple[int, int], *changes: Inbound) -> Outcome:
        """Run ``changes`` of transaction ``tx`` and its END; the END's outcome.

        Source order holds a transaction's changes until its END: the END's outcome holds
        what they produced.
        """
        counts: Counter[str] = Counter()
        for change in changes:
            counts[change.origin.topic.split(".", 1)[1]] += 1
            self.run(change)
        return self.run(self.end(system, tx, dict(counts)))

    def tick(self, advance_ms: int) -> Inbound:
        self.now += advance_ms
        return Inbound(self._origin("streams-control"), None, None, self.now, Kind.TICK)


def decoded(outcome: Outcome) -> list[dict[str, Any]]:
    """The canonical values of an outcome, as a consumer decodes them."""
    return [SERDE.decode(o.value) for o in outcome.outbound if o.event is not None and o.value]


def account(**changes: Any) -> dict[str, Any]:
    row = {
        "id": ACCOUNT_ID,
        "name": "Nordwind Trading",
        "account_number": None,
        "vat": "de 136 695 976",
        "email": "einkauf@nordwind.example.com",
        "phone_office": "+49 30 6610918",
        "website": None,
        "billing_address_street": "Friedrichstraße 12",
        "billing_address_city": "Berlin",
        "billing_address_postalcode": "10117",
        "billing_address_country": "Germany",
        "industry": "Wholesale",
        "deleted": False,
    }
    return row | changes


def quant(
    quant_id: int, product: int, location: int, qty: str, reserved: str = "0"
) -> dict[str, Any]:
    return {
        "id": quant_id,
        "product_id": product,
        "location_id": location,
        "quantity": Decimal(qty),
        "reserved_quantity": Decimal(reserved),
    }


def with_catalogue(h: Harness, *products: tuple[int, str]) -> None:
    for product_id, sku in products:
        row = PRODUCT | {"id": product_id, "default_code": sku, "barcode": f"400{product_id:010d}"}
        h.run(h.change(PRODUCT_PRODUCT, "r", after=row, lsn=10))


# --------------------------------------------------------------------- customers


def test_a_dirty_erp_customer_comes_out_cleansed() -> None:
    h = Harness()
    outcome = h.committed(
        "erp", (771, 120), h.change(RES_PARTNER, "u", after=PARTNER, lsn=100, tx=(771, 120))
    )
    (record,) = decoded(outcome)
    assert (record["phone"], record["country_code"], record["email"]) == (
        "+49306610918",
        "DE",
        "info@nordwind.example.com",
    )
    assert (record["name"], record["customer_number"], record["vat"]) == (
        "Nordwind Trading GmbH",
        "c00042",
        "DE136695976",
    )
    assert record["event_id"] == event_id("erp", 100, "public", "res_partner", "42")
    message, logged = outcome.outbound
    assert (message.topic, message.key) == ("canonical.customer", b"erp:42")
    assert message.headers == (
        (dlq.H_OUTPUT_ID, record["event_id"].encode()),
        payload_hash_header(payload_hash(record), message.value or b""),
    )
    tally = outcome.tally
    assert tally.of(Count.EVENTS_IN, "transaction") == 1  # the change came before its END
    assert tally.of(Count.EVENTS_OUT, "erp_res_partner__customer") == 1
    assert tally.of(Count.FIXES, "erp_res_partner__customer", "phone") == 1
    # The fixes are in the data-quality log, keyed by the entity key, and counted.
    assert (logged.topic, logged.key) == ("quality.defects", b"erp:42")
    assert logged.output_id == f"quality:{record['event_id']}"
    entry = QualityEntry.from_json(logged.value or b"", logged.output_id)
    phone = next(d for d in entry.defects if d.field == "phone")
    assert (phone.rule, phone.outcome, phone.value, phone.after) == (
        "phone",
        DefectOutcome.FIXED,
        "030/6610918",
        "+49306610918",
    )
    assert tally.of(Count.DEFECTS, "customer", "phone", "phone", "fixed") == 1


def test_an_invalid_optional_field_is_quarantined_logged_and_the_record_published() -> None:
    h = Harness()
    outcome = h.run(h.change(RES_PARTNER, "u", after=PARTNER | {"email": "info@@nordwind"}, lsn=9))
    (record,) = decoded(outcome)
    assert (record["email"], record["quarantined_fields"]) == (None, ["email"])
    assert record["name"] == "Nordwind Trading GmbH"
    assert outcome.dead_letters == []
    logged = next(o for o in outcome.outbound if o.topic == "quality.defects")
    entry = QualityEntry.from_json(logged.value or b"")
    email = next(d for d in entry.defects if d.field == "email")
    assert (email.rule, email.outcome, email.value) == (
        "invalid_email",
        DefectOutcome.QUARANTINED,
        "info@@nordwind",
    )
    assert outcome.tally.of(Count.DEFECTS, "customer", "email", "invalid_email", "quarantined") == 1


def test_an_invalid_record_is_dead_lettered_with_its_reason_and_original_bytes() -> None:
    h = Harness()
    message = h.change(RES_PARTNER, "u", after=PARTNER | {"name": "  "}, lsn=100)
    outcome = h.run(message)
    assert outcome.events == []
    letter, logged = outcome.outbound
    assert (letter.topic, letter.key, letter.value) == ("dlq.streams", message.key, message.value)
    headers = dlq.text_headers(letter.headers)
    assert headers[dlq.H_ERROR_CLASS] == "ValidationError"
    assert headers[dlq.H_ERROR_REASON] == "missing_required"
    assert headers[dlq.H_ERROR_FIELD] == "name"
    assert headers[dlq.H_ERROR_MESSAGE].startswith("missing_required [name]: ")
    entry = QualityEntry.from_json(logged.value or b"", logged.output_id)
    assert (entry.entity, entry.flow, entry.origin) == (
        "customer",
        "erp_res_partner__customer",
        "erp.public.res_partner[0] offset=0",
    )
    (defect,) = entry.defects
    assert (defect.field, defect.rule, defect.outcome) == (
        "name",
        "missing_required",
        DefectOutcome.DEAD_LETTERED,
    )
    assert headers[dlq.H_STAGE] == "streams"
    assert (
        headers[dlq.H_ORIGIN_TOPIC],
        headers[dlq.H_ORIGIN_PARTITION],
        headers[dlq.H_ORIGIN_OFFSET],
    ) == ("erp.public.res_partner", "0", "0")
    assert headers[dlq.H_FLOW] == "erp_res_partner__customer"
    assert headers[dlq.H_OUTPUT_ID] == letter.output_id
    assert outcome.tally.of(Count.DEAD_LETTERS, "missing_required") == 1
    # a record that failed leaves no version of its entity: fixed and replayed, it goes
    # through (only the row's dead-lettered change is noted)
    assert list(h.state.values("dedupe")) == [f"dl|erp.public.res_partner|{b64(message.key)}"]


def test_undecodable_bytes_are_dead_lettered() -> None:
    h = Harness()
    origin = Origin("erp.public.res_partner", 2, 17)
    outcome = h.run(Inbound(origin, b"k", b"\x00\x00\x00\x00\x63garbage", START_MS))
    (letter,) = outcome.dead_letters
    assert (letter.reason, letter.error_class, letter.origin) == (
        "decode_error",
        "DecodeError",
        origin,
    )


def test_the_dead_letter_policy_skip_counts_and_fail_raises() -> None:
    bad = PARTNER | {"name": None}
    skipping = Harness(dlq_policy="skip")
    outcome = skipping.run(skipping.change(RES_PARTNER, "u", after=bad, lsn=100))
    assert [o.topic for o in outcome.outbound] == ["quality.defects"]  # logged, not sent
    assert outcome.tally.of(Count.DEAD_LETTERS, "missing_required") == 1
    assert outcome.tally.of(Count.IGNORED, "rejected_skipped") == 1
    failing = Harness(dlq_policy="fail")
    with pytest.raises(DeadLetterError) as raised:
        failing.processor.process(
            failing.change(RES_PARTNER, "u", after=bad, lsn=100), failing.state
        )
    assert raised.value.letter.reason == "missing_required"


def test_duplicates_older_versions_and_no_ops_are_dropped() -> None:
    h = Harness()
    first = h.change(RES_PARTNER, "u", after=PARTNER, lsn=300)
    assert len(h.run(first).events) == 1
    replayed = h.run(first)  # the same raw event again
    older = h.run(h.change(RES_PARTNER, "u", after=PARTNER | {"city": "Bonn"}, lsn=200))
    same = h.run(
        h.change(RES_PARTNER, "u", after=PARTNER | {"name": "Nordwind Trading GmbH"}, lsn=400)
    )
    newer = h.run(h.change(RES_PARTNER, "u", after=PARTNER | {"city": "Potsdam"}, lsn=500))
    flow = "erp_res_partner__customer"
    assert (replayed.events, older.events, same.events) == ([], [], [])
    assert replayed.tally.of(Count.DEDUPED, flow) == older.tally.of(Count.DEDUPED, flow) == 1
    assert same.tally.of(Count.NO_OPS, flow) == 1
    assert [r["city"] for r in decoded(newer)] == ["Potsdam"]
    assert h.state.get("dedupe", "customer|erp:42")[0] == 500


def test_state_changes_only_on_commit_and_replays_give_the_same_outputs() -> None:
    h = Harness()
    message = h.change(RES_PARTNER, "u", after=PARTNER, lsn=100)
    first = h.processor.process(message, h.state)
    again = h.processor.process(message, h.state)
    assert h.state.values("dedupe") == {}
    assert [(o.output_id, o.value) for o in first.outbound] == [
        (o.output_id, o.value) for o in again.outbound
    ]


def test_echoes_and_tombstones_are_counted_not_processed() -> None:
    h = Harness()
    echo = h.run(h.change(RES_PARTNER, "u", after=PARTNER, lsn=100, origin="erpcrm_sink"))
    assert echo.outbound == []
    assert echo.tally.of(Count.ECHOES, "erp") == 1
    tombstone = h.run(Inbound(Origin("erp.public.res_partner", 0, 9), b"k", None, START_MS))
    assert tombstone.tally.of(Count.IGNORED, "tombstone") == 1
    unrouted = h.run(Inbound(Origin("erp.public.stock_location", 0, 1), b"k", b"v", START_MS))
    assert unrouted.tally.of(Count.IGNORED, "unrouted") == 1


# ---------------------------------------------------------------------- crosswalk


def test_a_crm_account_with_the_vat_of_an_erp_customer_being_created_is_held() -> None:
    # The ERP customer went out as new: the CRM sink makes its account. The same
    # customer typed into the CRM meanwhile is that account's duplicate, not a link.
    h = Harness()
    h.run(h.change(RES_PARTNER, "u", after=PARTNER, lsn=100))
    assert h.state.get("reference", "new|customer|erp|42") is True
    outcome = h.committed(
        "crm", (12, 5100), h.change(ACCOUNTS, "c", after=account(), lsn=5000, tx=(12, 5100))
    )
    (record,) = decoded(outcome)
    # matched on the VAT id, compacted by its standard
    assert (record["crm_id"], record["erp_id"], record["vat"]) == (
        ACCOUNT_ID,
        None,
        "DE136695976",
    )
    assert (record["duplicate_of"], record["duplicate_rule"]) == ("42", "vat=DE136695976")
    assert outcome.tally.of(Count.LINKS, "customer", "vat") == 0
    assert outcome.tally.of(Count.DUPLICATES, "customer", "crm", "vat") == 1


def test_the_erp_column_links_and_a_new_account_matches_by_customer_number() -> None:
    h = Harness()
    linked = PARTNER | {"id": 43, "ref": "C00043", "vat": None, "crm_account_id": ACCOUNT_ID}
    outcome = h.run(h.change(RES_PARTNER, "u", after=linked, lsn=100))
    assert outcome.tally.of(Count.LINKS, "customer", "erp_column") == 1
    other = "7c1d2e3f-0000-4000-8000-000000000099"
    match = h.run(
        h.change(ACCOUNTS, "c", after=account(id=other, vat=None, account_number="c00042"), lsn=1)
    )
    # no ERP customer C00042 yet: a new account, without ERP id
    assert [r["erp_id"] for r in decoded(match)] == [None]
    # the new ERP customer C00042 finds the account (matching runs both ways)
    erp = h.run(h.change(RES_PARTNER, "u", after=PARTNER, lsn=101))
    assert decoded(erp)[0]["crm_id"] == other
    assert erp.tally.of(Count.LINKS, "customer", "customer_number") == 1
    again = h.run(
        h.change(ACCOUNTS, "u", after=account(id=other, vat=None, account_number="c00042"), lsn=2)
    )
    assert decoded(again)[0]["erp_id"] == "42"


# ---------------------------------------------------------------------- inventory


def test_stock_quants_become_per_product_totals() -> None:
    h = Harness()
    with_catalogue(h, (7, "SKU-00007"))
    first = h.run(h.change(STOCK_QUANT, "u", after=quant(1, 7, 1, "10", "2"), lsn=100))
    second = h.run(h.change(STOCK_QUANT, "u", after=quant(2, 7, 3, "5"), lsn=101))
    assert [(r["on_hand"], r["available"]) for r in decoded(first)] == [
        (Decimal("10.000"), Decimal("8.000"))
    ]
    (record,) = decoded(second)
    assert (record["sku"], record["erp_id"], record["on_hand"], record["reserved"]) == (
        "SKU-00007",
        "7",
        Decimal("15.000"),
        Decimal("2.000"),
    )
    assert [loc["location_id"] for loc in record["locations"]] == ["1", "3"]
    assert second.outbound[0].key == b"erp:7"
    replay = h.run(h.change(STOCK_QUANT, "u", after=quant(2, 7, 3, "5"), lsn=101))
    stale = h.run(h.change(STOCK_QUANT, "u", after=quant(1, 7, 1, "99"), lsn=99))
    assert (replay.outbound, stale.outbound) == ([], [])
    assert stale.tally.of(Count.DEDUPED, "erp_stock_quant__inventory") == 1
    gone = h.run(h.change(STOCK_QUANT, "d", before={"id": 1}, lsn=102))
    assert decoded(gone)[0]["on_hand"] == Decimal("5.000")
    (view,) = h.processor.inventory(h.state, "sku-00007")
    assert (view["on_hand"], view["available"], view["erp_id"]) == ("5.000", "5.000", "7")
    assert h.processor.inventory(h.state, "SKU-404") == []


def test_a_record_waiting_for_a_reference_is_retried_then_dead_lettered() -> None:
    h = Harness(reference_wait_ms=5_000)
    waiting = h.run(h.change(STOCK_QUANT, "u", after=quant(1, 9, 1, "4"), lsn=100))
    assert waiting.outbound == []
    assert waiting.tally.of(Count.PARKED, "unresolved_reference") == 1
    assert h.processor.has_pending
    with_catalogue(h, (9, "SKU-00009"))  # the product arrives from another topic
    resolved = h.run(h.tick(1_000))
    assert [(r["sku"], r["on_hand"]) for r in decoded(resolved)] == [
        ("SKU-00009", Decimal("4.000"))
    ]
    assert not h.processor.has_pending
    h.run(h.change(STOCK_QUANT, "u", after=quant(2, 99, 1, "1"), lsn=101))
    assert h.run(h.tick(1_000)).outbound == []
    (letter,) = h.run(h.tick(10_000)).dead_letters
    assert (letter.reason, letter.origin.topic) == (
        "unresolved_reference",
        "erp.public.stock_quant",
    )
    assert not h.processor.has_pending


# ------------------------------------------------------------------------- orders

ORDER_TABLES = {"public.sale_order": 1, "public.sale_order_line": 2}


def test_an_order_and_its_lines_in_one_transaction_become_one_event() -> None:
    h = Harness()
    with_catalogue(h, (7, "SKU-00007"), (8, "SKU-00008"))
    tx = (900, 1010)
    pieces = [
        h.end("erp", tx, ORDER_TABLES),
        h.change(SALE_ORDER_LINE, "c", after=order_line(502, 20, 8, "1"), lsn=1003, tx=tx),
        h.change(SALE_ORDER, "c", after=ORDER, lsn=1001, tx=tx),
        h.change(SALE_ORDER_LINE, "c", after=order_line(501, 10, 7, "2.5"), lsn=1002, tx=tx),
    ]
    outcomes = [h.run(piece) for piece in pieces]
    assert [len(o.events) for o in outcomes] == [0, 0, 0, 1]
    (record,) = decoded(outcomes[-1])
    assert (record["order_number"], record["state"], record["customer_erp_id"]) == (
        "S00051",
        "confirmed",
        "42",
    )
    assert [(line["erp_id"], line["sku"], line["quantity"]) for line in record["lines"]] == [
        ("501", "SKU-00007", Decimal("2.500")),
        ("502", "SKU-00008", Decimal("1.000")),
    ]
    # its position: the latest change of the order in the transaction
    assert record["version"] == 1003
    assert record["event_id"] == event_id("erp", 1003, "public", "sale_order_line", "502")
    assert outcomes[-1].tally.of(Count.ORDERS, "complete") == 1
    assert not h.processor.has_pending

    # a later line edit gives an updated order with a higher version
    edit = (901, 2010)
    h.run(h.change(SALE_ORDER_LINE, "u", after=order_line(501, 10, 7, "3"), lsn=2001, tx=edit))
    updated = h.run(h.end("erp", edit, {"public.sale_order_line": 1}))
    (record,) = decoded(updated)
    assert record["version"] == 2001
    assert [line["quantity"] for line in record["lines"]] == [Decimal("3.000"), Decimal("1.000")]

    # the whole transaction replayed (a capture restart): nothing new
    replay = [h.run(piece) for piece in pieces]
    assert sum(len(o.outbound) for o in replay) == 0


def quote_line(number: int, part: str) -> dict[str, Any]:
    """A line of the won quote :data:`QUOTE` that names its part number."""
    return {
        "id": f"00000000-0000-4000-8000-{number:012d}",
        "parent_id": QUOTE_ID,
        "number": number,
        "name": f"Part {part}",
        "part_number": part,
        "product_id": None,
        "product_qty": Decimal("2"),
        "product_list_price": Decimal("12.35"),
        "product_discount": Decimal("0.00"),
        "product_total_price": Decimal("24.70"),
        "deleted": False,
    }


def test_an_accepted_crm_quote_with_lines_becomes_one_sales_order() -> None:
    h = Harness()
    with_catalogue(h, (7, "SKU-00007"), (8, "SKU-00008"))
    tx = (77, 9000)
    pieces = [
        h.change(AOS_QUOTES, "c", after=QUOTE, lsn=8001, tx=tx),
        h.change(AOS_PRODUCTS_QUOTES, "c", after=quote_line(1, "SKU-00007"), lsn=8002, tx=tx),
        h.change(AOS_PRODUCTS_QUOTES, "c", after=quote_line(2, "sku-00008"), lsn=8003, tx=tx),
        h.end("crm", tx, {"public.aos_quotes": 1, "public.aos_products_quotes": 2}),
    ]
    events = [event for piece in pieces for event in decoded(h.run(piece))]
    (record,) = events
    assert (record["quote_number"], record["state"], record["crm_id"]) == (
        "1044",
        "confirmed",
        QUOTE_ID,
    )
    assert [line["sku"] for line in record["lines"]] == ["SKU-00007", "sku-00008"]


CRM_PRODUCT_ID = "00000000-0000-4000-8000-0000000000a7"


def _quote_line_by_product(number: int, product_id: str) -> dict[str, Any]:
    """A quote line that names its product but carries no part number."""
    return {
        "id": f"00000000-0000-4000-8000-{number:012d}",
        "parent_id": QUOTE_ID,
        "number": number,
        "name": "Widget",
        "part_number": None,
        "product_id": product_id,
        "product_qty": Decimal("3"),
        "product_list_price": Decimal("12.35"),
        "product_discount": Decimal("0.00"),
        "product_total_price": Decimal("37.05"),
        "deleted": False,
    }


def _crm_product(h: Harness, lsn: int) -> list[Inbound]:
    """The sink's announcement of the CRM product it created: its change and END."""
    row = {
        "id": CRM_PRODUCT_ID,
        "name": "Widget",
        "part_number": "SKU-00007",
        "category": None,
        "type": "Good",
        "price": Decimal("12.35"),
        "cost": Decimal("7.00"),
        "currency_id": "EUR",
        "deleted": False,
    }
    tx = (60, lsn)
    return [
        h.change(AOS_PRODUCTS, "u", after=row, lsn=lsn, tx=tx),
        h.end("crm", tx, {"public.aos_products": 1}),
    ]


@pytest.mark.parametrize("product_first", [True, False])
def test_a_quote_line_without_part_number_takes_its_products_sku_whenever_it_arrives(
    product_first: bool,
) -> None:
    """The won-quote race: the CRM learns the product (the sink's announcement) on a topic
    that may be read after the quote; the order waits for it instead of being lost."""
    h = Harness(reference_wait_ms=20_000)
    with_catalogue(h, (7, "SKU-00007"))
    tx = (78, 9100)
    product = _crm_product(h, 9050)
    quote = [
        h.change(AOS_QUOTES, "c", after=QUOTE, lsn=9101, tx=tx),
        h.change(
            AOS_PRODUCTS_QUOTES,
            "c",
            after=_quote_line_by_product(1, CRM_PRODUCT_ID),
            lsn=9102,
            tx=tx,
        ),
        h.end("crm", tx, {"public.aos_quotes": 1, "public.aos_products_quotes": 1}),
    ]
    pieces = [*product, *quote] if product_first else [*quote, h.tick(1_000), *product]
    outcomes = [h.run(piece) for piece in pieces]
    outcomes.append(h.run(h.tick(1_000)))
    orders = [
        record for outcome in outcomes for record in decoded(outcome) if "quote_number" in record
    ]
    assert [line["sku"] for record in orders for line in record["lines"]] == ["SKU-00007"]
    assert not [letter for outcome in outcomes for letter in outcome.dead_letters]
    assert not h.processor.has_pending


def test_a_resent_quote_while_its_order_waits_for_the_product_is_no_dead_letter() -> None:
    """A capture that restarts sends the won quote again while its order waits for the
    line's product: the wait decides the order (before, the re-sent header assembled it
    at once as final and dead-lettered an order that was published a moment later)."""
    h = Harness(reference_wait_ms=20_000)
    with_catalogue(h, (7, "SKU-00007"))
    tx = (78, 9100)
    line = _quote_line_by_product(1, CRM_PRODUCT_ID)
    outcomes = [
        h.run(h.change(AOS_QUOTES, "c", after=QUOTE, lsn=9101, tx=tx)),
        h.run(h.change(AOS_PRODUCTS_QUOTES, "c", after=line, lsn=9102, tx=tx)),
        h.run(h.end("crm", tx, {"public.aos_quotes": 1, "public.aos_products_quotes": 1})),
        h.run(h.tick(1_000)),
    ]
    assert h.processor.has_pending
    # the same changes again, at new offsets, with no replay count
    outcomes.append(h.run(h.change(AOS_QUOTES, "c", after=QUOTE, lsn=9101, tx=tx)))
    outcomes.append(h.run(h.change(AOS_PRODUCTS_QUOTES, "c", after=line, lsn=9102, tx=tx)))
    outcomes += [h.run(piece) for piece in _crm_product(h, 9150)]
    outcomes.append(h.run(h.tick(1_000)))
    orders = [
        record for outcome in outcomes for record in decoded(outcome) if "quote_number" in record
    ]
    assert [line["sku"] for record in orders for line in record["lines"]] == ["SKU-00007"]
    assert [letter for outcome in outcomes for letter in outcome.dead_letters] == []
    assert not h.processor.has_pending


def test_a_bad_change_sent_again_by_a_restarted_capture_is_dead_lettered_once() -> None:
    """The same change of a row (same LSN) at a new offset is no second letter and no
    second data-quality entry; a later bad change of the row, or an operator's replay
    of the letter, is a letter of its own."""
    h = Harness()
    with_catalogue(h, (7, "SKU-00007"))
    bad = quant(1, 7, 1, "10", "-1")
    first = h.run(h.change(STOCK_QUANT, "u", after=bad, lsn=100))
    resent = h.run(h.change(STOCK_QUANT, "u", after=bad, lsn=100))
    later = h.run(h.change(STOCK_QUANT, "u", after=quant(1, 7, 1, "12", "-1"), lsn=105))
    (letter,) = first.dead_letters
    assert letter.reason == "negative_value"
    assert resent.outbound == []
    assert resent.tally.of(Count.DEDUPED, "erp_stock_quant__inventory") == 1
    assert [x.reason for x in later.dead_letters] == ["negative_value"]
    replayed = Inbound(letter.origin, letter.key, letter.value, h.now, replays=1)
    assert [x.reason for x in h.run(replayed).dead_letters] == ["negative_value"]
    # the same for a plain entity, through its own path
    nameless = PARTNER | {"name": "  "}
    once = h.run(h.change(RES_PARTNER, "u", after=nameless, lsn=200))
    twice = h.run(h.change(RES_PARTNER, "u", after=nameless, lsn=200))
    assert (len(once.dead_letters), len(twice.dead_letters), twice.outbound) == (1, 0, [])
    # fixed, the row's next change goes through
    fixed = h.run(h.change(STOCK_QUANT, "u", after=quant(1, 7, 1, "12", "2"), lsn=110))
    assert [(r["on_hand"], r["reserved"]) for r in decoded(fixed)] == [
        (Decimal("12.000"), Decimal("2.000"))
    ]


def test_a_quote_line_whose_product_never_comes_is_dead_lettered_after_the_wait() -> None:
    h = Harness(reference_wait_ms=5_000)
    tx = (79, 9200)
    h.run(h.change(AOS_QUOTES, "c", after=QUOTE, lsn=9201, tx=tx))
    line = _quote_line_by_product(1, CRM_PRODUCT_ID)
    h.run(h.change(AOS_PRODUCTS_QUOTES, "c", after=line, lsn=9202, tx=tx))
    waiting = h.run(h.end("crm", tx, {"public.aos_quotes": 1, "public.aos_products_quotes": 1}))
    assert waiting.outbound == []
    assert h.processor.has_pending
    # The first tick begins the read horizon's first stretch; the records read in it were
    # produced at the start: the sources are not read past the deadline yet.
    assert h.run(h.tick(6_000)).dead_letters == []
    assert h.run(h.tick(1_000)).dead_letters == []
    given_up = h.run(h.tick(1_000))  # nothing read since: caught up, the wait is over
    (letter,) = given_up.dead_letters
    assert (letter.reason, letter.field) == ("unresolved_reference", "lines[0].sku")
    assert not h.processor.has_pending


def test_an_order_failing_in_several_transactions_is_dead_lettered_once() -> None:
    """A won quote, then two lines in transactions of their own: each line's transaction
    fails on the unknown product; the order waits once, and one letter names its latest
    change (before, each transaction dead-lettered it: two letters with one id)."""
    h = Harness(reference_wait_ms=5_000)
    lines = [_quote_line_by_product(n, CRM_PRODUCT_ID) for n in (1, 2)]
    steps = [
        ((81, 9310), AOS_QUOTES, QUOTE, 9301),
        ((82, 9320), AOS_PRODUCTS_QUOTES, lines[0], 9311),
        ((83, 9330), AOS_PRODUCTS_QUOTES, lines[1], 9321),
    ]
    outcomes = []
    for tx, shape, row, lsn in steps:
        outcomes.append(h.run(h.change(shape, "c", after=row, lsn=lsn, tx=tx)))
        outcomes.append(h.run(h.end("crm", tx, {f"public.{shape.table}": 1})))
        outcomes.append(h.run(h.tick(2_000)))
    assert [len(record["lines"]) for o in outcomes for record in decoded(o)] == [0]
    outcomes += [h.run(h.tick(1_000)) for _ in range(12)]
    letters = [letter for outcome in outcomes for letter in outcome.dead_letters]
    assert [(letter.reason, dict(letter.context)) for letter in letters] == [
        ("unresolved_reference", {"order": QUOTE_ID, "lsn": "9321"})
    ]
    assert not h.processor.has_pending
    # a later change that fails again is a letter of its own, with an id of its own
    tx = (84, 9340)
    edited = lines[0] | {"product_qty": 2}
    h.run(h.change(AOS_PRODUCTS_QUOTES, "u", after=edited, lsn=9331, tx=tx))
    h.run(h.end("crm", tx, {"public.aos_products_quotes": 1}))
    later = [h.run(h.tick(1_000)) for _ in range(12)]
    (again,) = [letter for outcome in later for letter in outcome.dead_letters]
    assert dict(again.context)["lsn"] == "9331"
    assert again.output_id != letters[0].output_id


def test_snapshot_orders_settle_and_late_transactions_time_out() -> None:
    h = Harness(snapshot_settle_ms=3_000, assembly_timeout_ms=30_000)
    with_catalogue(h, (7, "SKU-00007"))
    h.run(h.change(SALE_ORDER, "r", after=ORDER, lsn=500))
    h.run(h.change(SALE_ORDER_LINE, "r", after=order_line(501, 10, 7, "1"), lsn=500))
    assert h.run(h.tick(1_000)).outbound == []
    assert h.run(h.tick(1_000)).outbound == []  # read so far: records of the start
    settled = h.run(h.tick(3_000))
    (record,) = decoded(settled)
    assert (record["version"], len(record["lines"])) == (500, 1)
    assert settled.tally.of(Count.ORDERS, "settled") == 1

    tx = (950, 3010)  # its END never arrives
    h.run(h.change(SALE_ORDER_LINE, "u", after=order_line(501, 10, 7, "4"), lsn=3001, tx=tx))
    assert h.run(h.tick(10_000)).outbound == []
    late = h.run(h.tick(25_000))
    assert [r["lines"][0]["quantity"] for r in decoded(late)] == [Decimal("4.000")]
    assert late.tally.of(Count.ORDERS, "timeout") == 1


def _snapshot_orders(h: Harness, count: int) -> None:
    with_catalogue(h, (7, "SKU-00007"))
    for n in range(count):
        order = {**ORDER, "id": 10 + n, "name": f"S{10 + n:05d}"}
        h.run(h.change(SALE_ORDER, "r", after=order, lsn=500))
        h.run(h.change(SALE_ORDER_LINE, "r", after=order_line(501 + n, 10 + n, 7, "1"), lsn=500))


def catch_up(h: Harness) -> None:
    """Two ticks with nothing read after them: the read horizon reaches the records read."""
    assert h.run(h.tick(0)).outbound == []
    assert h.run(h.tick(1_000)).outbound == []


def test_a_tick_looks_at_tick_limit_keys_and_its_round_goes_on_at_once() -> None:
    bounded = Harness(snapshot_settle_ms=3_000, tick_limit=4)
    _snapshot_orders(bounded, 10)
    catch_up(bounded)
    first = bounded.run(bounded.tick(3_000))
    assert len(decoded(first)) == 4
    assert bounded.processor.round_unfinished
    rest = [bounded.run(bounded.tick(0)) for _ in range(2)]
    assert [len(decoded(outcome)) for outcome in rest] == [4, 2]
    assert not bounded.processor.round_unfinished
    assert not bounded.processor.has_pending

    at_once = Harness(snapshot_settle_ms=3_000)
    _snapshot_orders(at_once, 10)
    catch_up(at_once)
    everything = at_once.run(at_once.tick(3_000))
    in_rounds = [message.value for outcome in [first, *rest] for message in outcome.outbound]
    assert in_rounds == [message.value for message in everything.outbound]


def test_an_order_a_transaction_assembles_is_not_assembled_again_when_its_snapshot_settles() -> (
    None
):
    h = Harness(snapshot_settle_ms=3_000)
    with_catalogue(h, (7, "SKU-00007"))
    h.run(h.change(SALE_ORDER, "r", after=ORDER, lsn=500))
    h.run(h.change(SALE_ORDER_LINE, "r", after=order_line(501, 10, 7, "-1"), lsn=500))
    tx = (900, 1010)  # the order is edited before its snapshot settled
    h.run(h.change(SALE_ORDER, "u", after=ORDER | {"state": "done"}, lsn=1001, tx=tx))
    edited = h.run(h.end("erp", tx, {"public.sale_order": 1}))
    (letter,) = edited.dead_letters
    assert (letter.reason, letter.field) == ("negative_value", "lines[0].quantity")
    later = [h.run(h.tick(2_000)) for _ in range(4)]
    assert [o.dead_letters for o in later] == [[], [], [], []]
    assert not h.processor.has_pending


def test_a_transaction_whose_end_is_further_back_in_a_backlog_does_not_time_out() -> None:
    h = Harness(assembly_timeout_ms=30_000)
    with_catalogue(h, (7, "SKU-00007"))
    tx = (900, 1010)
    h.run(h.change(SALE_ORDER, "c", after=ORDER, lsn=1001, tx=tx))
    h.run(h.change(SALE_ORDER_LINE, "c", after=order_line(501, 10, 7, "1"), lsn=1002, tx=tx))
    # A minute of wall time passes while the worker reads other records of the backlog,
    # produced at the start (the transaction topic is read behind the table topics).
    for _ in range(60):
        h.run(h.change(PRODUCT_PRODUCT, "r", after=PRODUCT | {"id": 7}, lsn=10))
        assert h.run(h.tick(1_000)).outbound == []
    # The END comes at last: the order is assembled complete, in source order.
    outcome = h.run(h.end("erp", tx, {"public.sale_order": 1, "public.sale_order_line": 1}))
    (record,) = decoded(outcome)
    assert len(record["lines"]) == 1
    assert outcome.tally.of(Count.ORDERS, "complete") == 1
    assert h.processor.has_pending is False


def test_a_failing_order_is_dead_lettered_with_its_header_bytes() -> None:
    h = Harness(reference_wait_ms=0)
    tx = (900, 1010)
    header = h.change(SALE_ORDER, "c", after=ORDER, lsn=1001, tx=tx)
    h.run(header)
    h.run(h.change(SALE_ORDER_LINE, "c", after=order_line(501, 10, 7, "1"), lsn=1002, tx=tx))
    outcome = h.run(h.end("erp", tx, {"public.sale_order": 1, "public.sale_order_line": 1}))
    (letter,) = outcome.dead_letters
    assert (letter.value, letter.origin, letter.reason, letter.field) == (
        header.value,
        header.origin,
        "unresolved_reference",
        "lines[0].sku",
    )
    assert ("order", "51") in letter.context
    # once the product is known, replaying the dead letter assembles the order (a replay
    # carries its count, as ``erpcrm dlq replay`` sends it)
    with_catalogue(h, (7, "SKU-00007"))
    replayed = h.run(Inbound(header.origin, header.key, header.value, h.now, replays=1))
    assert [len(r["lines"]) for r in decoded(replayed)] == [1]
    assert replayed.tally.of(Count.ORDERS, "replay") == 1


def test_a_replayed_order_that_fails_again_is_dead_lettered_with_its_replay_count() -> None:
    h = Harness(reference_wait_ms=0)
    tx = (900, 1010)
    header = h.change(SALE_ORDER, "c", after=ORDER, lsn=1001, tx=tx)
    h.run(header)
    h.run(h.change(SALE_ORDER_LINE, "c", after=order_line(501, 10, 7, "1"), lsn=1002, tx=tx))
    ended = h.run(h.end("erp", tx, {"public.sale_order": 1, "public.sale_order_line": 1}))
    (first,) = ended.dead_letters
    # replayed while the product is still unknown: it fails again, counted
    again = h.run(Inbound(header.origin, header.key, header.value, h.now, replays=1))
    (letter,) = again.dead_letters
    assert (letter.origin, letter.reason, letter.replays) == (
        header.origin,
        "unresolved_reference",
        1,
    )
    headers = dlq.text_headers(letter.headers())
    assert headers[dlq.H_REPLAY_COUNT] == "1"
    # a new id: a worker's check against ids already published must not drop it
    assert letter.output_id != first.output_id
    assert dlq.H_REPLAY_COUNT not in dlq.text_headers(first.headers())
    # the second replay, once the product is known, publishes the order once
    with_catalogue(h, (7, "SKU-00007"))
    fixed = h.run(Inbound(header.origin, header.key, header.value, h.now, replays=2))
    assert [len(r["lines"]) for r in decoded(fixed)] == [1]
    assert h.run(Inbound(header.origin, header.key, header.value, h.now, replays=3)).events == []


def test_a_replayed_record_parked_for_a_reference_keeps_its_replay_count() -> None:
    h = Harness(reference_wait_ms=5_000)
    quant_change = h.change(STOCK_QUANT, "u", after=quant(2, 99, 1, "1"), lsn=101)
    replayed = Inbound(quant_change.origin, quant_change.key, quant_change.value, h.now, replays=4)
    assert h.run(replayed).tally.of(Count.PARKED, "unresolved_reference") == 1
    assert h.run(h.tick(1_000)).outbound == []
    (letter,) = h.run(h.tick(10_000)).dead_letters
    assert (letter.origin, letter.replays) == (quant_change.origin, 4)


# -------------------------------------------------------------------------- state


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.text()
        | st.binary()
        | st.decimals(allow_nan=False, allow_infinity=False),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_freeze_and_thaw_round_trip(value: Any) -> None:
    import json

    assert thaw(json.loads(json.dumps(freeze(value)))) == value
    assert thaw(load(dump(freeze(value)))) == value


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_a_frozen_value_survives_the_tables_text_exactly(value: Any) -> None:
    """Integers of any size, floats (NaN and infinities too), any text."""
    back = thaw(load(dump(freeze(value))))
    assert repr(back) == repr(value)


def test_table_text_the_standard_library_wrote_still_loads() -> None:
    import json

    old = json.dumps({"q": float("nan"), "n": 2**70, "s": "Zo\u00eb"}, separators=(",", ":"))
    loaded = load(old)
    assert (math.isnan(loaded["q"]), loaded["n"], loaded["s"]) == (True, 2**70, "Zo\u00eb")


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats()
        | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_table_text_loads_as_the_standard_library_reads_it(value: Any) -> None:
    """The fast reader gives the same value: big integers, long digit runs, surrogates."""
    import json

    for text in (dump(value), json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert repr(load(text)) == repr(json.loads(text))
        assert repr(load(text.encode("utf-8", "surrogatepass"))) == repr(json.loads(text))


_STATE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


def _containers(value: Any) -> list[Any]:
    found = [value] if isinstance(value, dict | list) else []
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list | tuple):
        for child in children:
            found.extend(_containers(child))
    return found


@given(_STATE_VALUES)
def test_a_fresh_copy_equals_a_deep_copy_and_shares_no_container(value: Any) -> None:
    import copy

    fresh = fresh_copy(value)
    assert fresh == copy.deepcopy(value)
    assert type(fresh) is type(value)
    originals = {id(c) for c in _containers(value)}
    assert not originals & {id(c) for c in _containers(fresh)}


def test_caches_are_rebuilt_from_state_by_a_new_processor() -> None:
    h = Harness()
    h.run(h.change(RES_PARTNER, "u", after=PARTNER, lsn=100))
    with_catalogue(h, (7, "SKU-00007"))
    fresh = StreamProcessor(FLOWS, decode=SERDE.decode, encode=encode_canonical)
    fresh.load(h.state)
    assert fresh.reference.skus == {"7": "SKU-00007"}
    assert fresh.reference.customers["erp"]["keys"]["42"]["vat"] == "DE136695976"
    assert fresh.reference.creating == {"erp": {"42"}, "crm": set()}
    outcome = fresh.process(h.change(ACCOUNTS, "c", after=account(), lsn=1), h.state)
    assert decoded(outcome)[0]["duplicate_of"] == "42"


# ------------------------------------------------------------------ source order


def _contact() -> dict[str, Any]:
    return {
        "id": "5d6e7f80-91a2-4b3c-8d4e-5f6a7b8c9d0e",
        "account_id": ACCOUNT_ID,
        "first_name": "Greta",
        "last_name": "Sommer",
        "title": "Einkauf",
        "email": "greta.sommer@nordwind.example.com",
        "phone_work": "+49 30 6610919",
        "phone_mobile": None,
        "primary_address_country": "DE",
        "deleted": False,
    }


def _crm_transaction(h: Harness) -> list[list[Inbound]]:
    """One CRM transaction as Kafka holds it: per topic, its messages in order.

    A new account, its contact, the CRM product the sink announced, and an accepted quote
    with two lines naming that product by id only.
    """
    tx = (81, 9400)
    product, product_end = _crm_product(h, 9301)  # committed just before
    line = _quote_line_by_product
    changes = [
        h.change(ACCOUNTS, "c", after=account(), lsn=9350, tx=tx),
        h.change(CONTACTS, "c", after=_contact(), lsn=9351, tx=tx),
        h.change(AOS_QUOTES, "c", after=QUOTE, lsn=9352, tx=tx),
        h.change(AOS_PRODUCTS_QUOTES, "c", after=line(1, CRM_PRODUCT_ID), lsn=9353, tx=tx),
        h.change(AOS_PRODUCTS_QUOTES, "c", after=line(2, CRM_PRODUCT_ID), lsn=9354, tx=tx),
    ]
    end = h.end(
        "crm",
        tx,
        {
            "public.accounts": 1,
            "public.contacts": 1,
            "public.aos_quotes": 1,
            "public.aos_products_quotes": 2,
        },
    )
    by_topic: dict[str, list[Inbound]] = {}
    for message in [product, *changes, product_end, end]:
        by_topic.setdefault(message.origin.topic, []).append(message)
    return list(by_topic.values())


def _interleavings(draw: st.DrawFn, topics: list[list[Inbound]]) -> list[Inbound]:
    """One merge of the topics that keeps each topic's order (what a consumer may see)."""
    queues = [list(messages) for messages in topics]
    merged: list[Inbound] = []
    while any(queues):
        pick = draw(st.sampled_from([i for i, q in enumerate(queues) if q]))
        merged.append(queues[pick].pop(0))
    return merged


def _canonical_outputs(messages: list[Inbound]) -> list[tuple[str, bytes | None]]:
    h = Harness(reference_wait_ms=20_000)
    with_catalogue(h, (7, "SKU-00007"))
    outputs = []
    for message in [*messages, h.tick(1_000)]:
        outcome = h.run(Inbound(message.origin, message.key, message.value, h.now, message.kind))
        outputs += [(o.topic, o.value) for o in outcome.outbound]
        assert not outcome.tally.of(Count.PARKED, "unresolved_reference")
    assert not h.processor.has_pending
    return sorted(outputs, key=lambda item: (item[0], item[1] or b""))


@given(st.data())
def test_any_interleaving_of_a_transactions_topics_gives_the_same_canonical_events(
    data: st.DataObject,
) -> None:
    """Kafka may hand a transaction's tables over in any order; the outputs do not change,
    and nothing waits for a reference the source committed before it."""
    topics = _crm_transaction(Harness())
    expected = _canonical_outputs([m for messages in topics for m in messages])
    assert any(topic == "canonical.sales_order" for topic, _ in expected)
    assert any(topic == "canonical.contact" for topic, _ in expected)
    interleaved = data.draw(st.composite(_interleavings)(topics))
    assert _canonical_outputs(interleaved) == expected
