"""Batches in the streams worker: the same decisions as one message at a time.

:class:`streams.state.StagedState` lets a batch's messages see each other's writes
before any is committed; :meth:`streams.app.StreamRunner.handle_batch` decides a batch,
publishes it, then commits. A property checks that any split of any message sequence
into batches, with or without a transient failure in the middle of a batch, publishes
the same messages and leaves the same state as processing one message at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from schemas.errors import RetriableError
from streams.app import StreamRunner
from streams.metrics import StreamsMetrics
from streams.outcome import Inbound, Outbound
from streams.processor import StreamProcessor
from streams.state import DictState, StagedState, Write
from tests.unit.test_processor import FLOWS, SERDE, Harness, account, encode_canonical, quant
from tests.unit.test_streams_app import Recorder
from tests.unit.test_transform import (
    ACCOUNTS,
    ORDER,
    PARTNER,
    PRODUCT,
    PRODUCT_PRODUCT,
    RES_PARTNER,
    SALE_ORDER,
    SALE_ORDER_LINE,
    STOCK_QUANT,
    order_line,
)

OPTIONS: dict[str, int] = {
    "reference_wait_ms": 5_000,
    "snapshot_settle_ms": 3_000,
    "assembly_timeout_ms": 30_000,
}

# ------------------------------------------------------------------- staged state


def test_staged_reads_see_staged_writes_and_leave_the_base_alone() -> None:
    base = DictState()
    base.apply([Write("dedupe", "a", [1, "h1"]), Write("dedupe", "b", [2, "h2"])])
    staged = StagedState(base)
    staged.stage([Write("dedupe", "a", [3, "h3"]), Write("dedupe", "b", None)])
    staged.stage([Write("dedupe", "c", {"x": [1]}), Write("reference", "a", "other table")])
    assert (staged.get("dedupe", "a"), staged.get("dedupe", "b")) == ([3, "h3"], None)
    assert list(staged.scan("dedupe", "")) == [("a", [3, "h3"]), ("c", {"x": [1]})]
    assert list(staged.scan("reference", "a")) == [("a", "other table")]
    assert base.values("dedupe") == {"a": [1, "h1"], "b": [2, "h2"]}
    assert base.values("reference") == {}


_WRITES = st.lists(
    st.builds(
        Write,
        st.sampled_from(["dedupe", "assembly"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.none() | st.integers() | st.lists(st.integers(), max_size=2),
    ),
    max_size=30,
)


@given(base_writes=_WRITES, batch=st.lists(_WRITES, max_size=5))
def test_a_batch_commits_each_key_once_with_the_state_of_every_write_in_order(
    base_writes: list[Write], batch: list[list[Write]]
) -> None:
    one_by_one, collapsed = DictState(), DictState()
    one_by_one.apply(base_writes)
    collapsed.apply(base_writes)
    staged = StagedState(collapsed)
    for writes in batch:
        staged.stage(writes)
        one_by_one.apply(writes)
    commit = staged.writes()
    assert len({(w.table, w.key) for w in commit}) == len(commit)
    collapsed.apply(commit)
    assert collapsed.tables == one_by_one.tables


def test_staged_values_are_fresh_copies_shaped_as_stored() -> None:
    staged = StagedState(DictState())
    value = {"lines": [("tuple", 1)]}
    staged.stage([Write("assembly", "l|x", value)])
    read = staged.get("assembly", "l|x")
    assert read == {"lines": [["tuple", 1]]}  # as JSON keeps it, like DictState and RocksDB
    read["lines"].clear()
    value["lines"].clear()
    assert staged.get("assembly", "l|x") == {"lines": [["tuple", 1]]}


def test_peeks_share_one_decoded_value_until_the_key_is_staged_again() -> None:
    base = DictState()
    base.apply([Write("assembly", "h", {"held": 1})])
    staged = StagedState(base)
    first = staged.peek("assembly", "h")
    assert first == {"held": 1}
    assert staged.peek("assembly", "h") is first  # decoded once
    assert staged.get("assembly", "h") is not first  # a reader that may change it: a copy
    staged.stage([Write("assembly", "h", {"held": 2})])
    assert staged.peek("assembly", "h") == {"held": 2}
    staged.stage([Write("assembly", "h", None)])
    assert staged.peek("assembly", "h") is None
    assert staged.peek("assembly", "absent") is None


# ------------------------------------------------------------------------ scenarios


@st.composite
def scenarios(draw: st.DrawFn) -> list[Inbound]:
    """Customers of both systems, products, stock (some waiting for a product), orders
    in transactions (pieces in any order) and ticks, in one sequence."""
    h = Harness()
    lsn = 100
    messages: list[Inbound] = []
    for kind in draw(
        st.lists(
            st.sampled_from(["partner", "account", "product", "quant", "order", "tick"]),
            min_size=1,
            max_size=30,
        )
    ):
        lsn += 10
        if kind == "partner":
            pid = draw(st.sampled_from([41, 42]))
            vat = draw(st.sampled_from(["de136695976", "de987654328", None]))
            row = PARTNER | {"id": pid, "ref": f"c{pid:05d}", "vat": vat}
            messages.append(h.change(RES_PARTNER, "u", after=row, lsn=lsn))
        elif kind == "account":
            vat = draw(st.sampled_from(["de 136 695 976", "de 987 654 328"]))
            deleted = draw(st.booleans())
            messages.append(
                h.change(ACCOUNTS, "u", after=account(vat=vat, deleted=deleted), lsn=lsn)
            )
        elif kind == "product":
            pid = draw(st.sampled_from([7, 8]))
            price = draw(st.sampled_from(["12.50", "13.00"]))
            row = PRODUCT | {
                "id": pid,
                "default_code": f"sku-{pid:05d}",
                "barcode": f"400{pid:010d}",
                "list_price": Decimal(price),
            }
            messages.append(h.change(PRODUCT_PRODUCT, "u", after=row, lsn=lsn))
        elif kind == "quant":
            qid = draw(st.integers(1, 3))
            product = draw(st.sampled_from([7, 8, 9]))  # 9: never known, waits
            qty = draw(st.sampled_from(["0", "4", "10"]))
            messages.append(h.change(STOCK_QUANT, "u", after=quant(qid, product, 1, qty), lsn=lsn))
        elif kind == "order":
            tx = (lsn, lsn + 5)
            pieces = [
                h.change(SALE_ORDER, "u", after=ORDER, lsn=lsn + 1, tx=tx),
                h.change(
                    SALE_ORDER_LINE,
                    "u",
                    after=order_line(501, 10, draw(st.sampled_from([7, 8])), "2"),
                    lsn=lsn + 2,
                    tx=tx,
                ),
                h.end("erp", tx, {"public.sale_order": 1, "public.sale_order_line": 1}),
            ]
            messages.extend(draw(st.permutations(pieces)))
        else:
            messages.append(h.tick(draw(st.sampled_from([500, 4_000, 20_000]))))
    return messages


def one_at_a_time(messages: Sequence[Inbound]) -> tuple[list[Outbound], DictState]:
    h = Harness(**OPTIONS)
    sent = []
    for message in messages:
        sent.extend(h.run(message).outbound)
    return sent, h.state


def flaky(fail_at: int | None) -> Callable[[bytes], Any]:
    """The serde's decode, raising a transient failure once, at call ``fail_at``."""
    calls = 0

    def decode(data: bytes) -> Any:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise RetriableError("schema registry away")
        return SERDE.decode(data)

    return decode


def batched(
    messages: Sequence[Inbound], sizes: Sequence[int], fail_at: int | None
) -> tuple[list[Outbound], DictState, StreamRunner]:
    state = DictState()
    processor = StreamProcessor(FLOWS, decode=flaky(fail_at), encode=encode_canonical, **OPTIONS)
    publisher = Recorder()
    runner = StreamRunner(
        processor=processor,
        state=state,
        publisher=publisher,
        metrics=StreamsMetrics.create(CollectorRegistry()),
        generation=lambda: 1,
        retry_initial_s=0.0001,
    )

    async def run() -> None:
        start, turn = 0, 0
        while start < len(messages):
            size = sizes[turn % len(sizes)]
            await runner.handle_batch(messages[start : start + size])
            start, turn = start + size, turn + 1

    asyncio.run(run())
    return publisher.sent, state, runner


def published(messages: Sequence[Outbound]) -> list[tuple[Any, ...]]:
    return [(m.topic, m.key, m.value, m.headers, m.output_id) for m in messages]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=scenarios(),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=4),
    fail_at=st.none() | st.integers(1, 15),
)
def test_any_batches_decide_as_one_message_at_a_time(
    messages: list[Inbound], sizes: list[int], fail_at: int | None
) -> None:
    expected_sent, expected_state = one_at_a_time(messages)
    sent, state, runner = batched(messages, sizes, fail_at)
    assert published(sent) == published(expected_sent)
    assert state.tables == expected_state.tables
    retries = runner.metrics.retries.labels("process")._value.get()
    assert retries <= 1


# ---------------------------------------------------------------------------- runner


def test_a_batch_is_published_in_one_call_and_later_messages_see_earlier_writes() -> None:
    h = Harness()
    first = h.change(RES_PARTNER, "u", after=PARTNER, lsn=100)
    again = h.change(RES_PARTNER, "u", after=PARTNER, lsn=100)  # a re-delivery: stale
    newer = h.change(RES_PARTNER, "u", after=PARTNER | {"email": "new@example.com"}, lsn=200)
    sent, state, runner = batched([first, again, newer], [3], None)
    assert isinstance(runner.publisher, Recorder)
    assert len(runner.publisher.batches) == 1
    assert [m.event.record["version"] for m in sent if m.event] == [100, 200]
    assert state.get("dedupe", "customer|erp:42")[0] == 200
    assert runner.metrics.deduped.labels("erp_res_partner__customer")._value.get() == 1


def test_a_transient_failure_mid_batch_restarts_it_from_its_first_message() -> None:
    h = Harness()
    messages = [
        h.change(RES_PARTNER, "u", after=PARTNER | {"id": pid, "ref": f"c{pid}"}, lsn=100 + pid)
        for pid in (41, 42, 43)
    ]
    sent, state, runner = batched(messages, [3], fail_at=3)
    assert [m.key for m in sent if m.event] == [b"erp:41", b"erp:42", b"erp:43"]
    assert [m.key for m in sent if m.topic == "quality.defects"] == [
        b"erp:41",
        b"erp:42",
        b"erp:43",
    ]
    assert sorted(state.values("dedupe")) == [
        "customer|erp:41",
        "customer|erp:42",
        "customer|erp:43",
    ]
    assert runner.metrics.retries.labels("process")._value.get() == 1


def test_outputs_published_before_a_restart_are_dropped_from_a_batch() -> None:
    h = Harness()
    first = h.change(RES_PARTNER, "u", after=PARTNER, lsn=100)
    second = h.change(RES_PARTNER, "u", after=PARTNER | {"email": "new@example.com"}, lsn=200)
    already, logged = Harness().run(first).outbound
    state = DictState()
    publisher = Recorder()
    runner = StreamRunner(
        processor=StreamProcessor(FLOWS, decode=SERDE.decode, encode=encode_canonical),
        state=state,
        publisher=publisher,
        metrics=StreamsMetrics.create(CollectorRegistry()),
        generation=lambda: 1,
    )

    async def recent() -> set[str]:
        return {already.output_id, logged.output_id}

    runner.recent_loader = recent
    asyncio.run(runner.handle_batch([first, second]))
    assert [m.event.record["version"] for m in publisher.sent if m.event] == [200]
    assert state.get("dedupe", "customer|erp:42")[0] == 200
    assert runner.metrics.deduped.labels("erp_res_partner__customer")._value.get() == 1
