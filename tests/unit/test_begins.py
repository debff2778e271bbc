"""Transaction BEGIN records read off their bytes (streams/begins.py), without decoding them."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cdc.envelope import (
    transaction_begin_record,
    transaction_end_record,
    transaction_id,
    transaction_value_schema,
)
from streams.begins import BeginRecords, begin_ts_ms
from streams.dlq import Origin
from streams.outcome import Count, Inbound, Kind
from tests.unit.test_processor import SERDE, START_MS, Harness

SUBJECT = "erp.transaction-value"


def begin_bytes(tx: str, ts_ms: int, schema: dict[str, Any] | None = None) -> bytes:
    schema = schema or transaction_value_schema()
    return SERDE.encode(SUBJECT, schema, transaction_begin_record(tx, ts_ms=ts_ms))


@given(
    xid=st.integers(min_value=0, max_value=2**32),
    lsn=st.integers(min_value=0, max_value=2**63 - 1),
    ts_ms=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_a_begin_reads_as_its_decoded_ts_ms(xid: int, lsn: int, ts_ms: int) -> None:
    value = begin_bytes(transaction_id(xid, lsn), ts_ms)
    assert begin_ts_ms(value) == SERDE.decode(value)["ts_ms"] == ts_ms


def test_an_end_or_a_cut_begin_is_no_begin() -> None:
    end = SERDE.encode(
        SUBJECT,
        transaction_value_schema(),
        transaction_end_record("7:99", ts_ms=5, event_counts={"public.sale_order": 1}),
    )
    begin = begin_bytes("7:99", 5)
    assert begin_ts_ms(end) is None
    for cut in range(len(begin)):
        assert begin_ts_ms(begin[:cut]) is None
    assert begin_ts_ms(begin + b"\x00") is None


def test_a_schema_id_is_trusted_only_once_a_decoded_begin_showed_the_layout() -> None:
    begins = BeginRecords()
    value = begin_bytes("7:99", 5)
    assert begins.ts_ms(value) is None  # not shown yet: decode it
    begins.learn(value, SERDE.decode(value))
    assert begins.ts_ms(value) == 5
    assert begins.ts_ms(begin_bytes("8:100", 6)) == 6

    # a schema with another field after ts_ms: its BEGINs are always decoded
    other = transaction_value_schema()
    other["fields"] = [*other["fields"], {"name": "extra", "type": "long", "default": 0}]
    odd = SERDE.encode(SUBJECT, other, transaction_begin_record("9:1", ts_ms=7) | {"extra": 3})
    begins.learn(odd, SERDE.decode(odd))
    assert begins.ts_ms(odd) is None


class CountingDecode:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value: bytes) -> dict[str, Any]:
        self.calls += 1
        return SERDE.decode(value)


def test_only_the_first_begin_of_a_schema_is_decoded_and_every_one_counts_the_same() -> None:
    h = Harness()
    decode = CountingDecode()
    h.processor._decode = decode  # the processor's decoder, counted
    outcomes = []
    for n in range(3):
        value = begin_bytes(transaction_id(10 + n, 1000 + n), START_MS + n)
        message = Inbound(Origin("erp.transaction", 0, n), b"k", value, START_MS)
        outcomes.append(h.run(message))
    assert decode.calls == 1
    for outcome in outcomes:
        assert outcome.outbound == []
        assert outcome.writes == []
        assert outcome.warnings == []
        assert dict(outcome.tally) == {
            (Count.EVENTS_IN.value, "transaction"): 1,
            (Count.IGNORED.value, "transaction_begin"): 1,
        }


def test_a_begin_read_off_its_bytes_still_holds_the_read_horizon_back() -> None:
    def horizon_after_begins(learned: bool) -> int:
        h = Harness()
        if learned:  # the schema id shown by an earlier BEGIN
            h.run(Inbound(Origin("erp.transaction", 0, 0), b"k", begin_bytes("1:1", START_MS), 0))
        h.run(Inbound(Origin("streams-control", 0, 0), None, None, START_MS, Kind.TICK))
        old = begin_bytes(transaction_id(10, 1000), START_MS - 60_000)
        h.run(Inbound(Origin("erp.transaction", 0, 1), b"k", old, START_MS))
        tick = Inbound(Origin("streams-control", 0, 1), None, None, START_MS + 5_000, Kind.TICK)
        h.processor.process(tick, h.state)
        return h.processor._horizon.horizon_ms

    assert horizon_after_begins(learned=True) == horizon_after_begins(learned=False)
    assert horizon_after_begins(learned=True) == START_MS - 60_000
