"""A refused batch in parts: keys that trade unique values stay together (no services).

The fake target holds one unique value per key and applies a batch whole when its end
state is unique (as the sink does, parking traded values first), else refuses it with
:class:`~schemas.errors.KeyTakenError`. Bisecting a refused batch may cut a swap apart;
the keys that failed alone on a taken value are tried together again, and only the
genuine duplicate is held back (for the rest of a trade a later batch may bring; it is
dead-lettered with its ``KeyTakenError`` when its wait is over), never lettered at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from schemas.errors import KeyTakenError, PermanentError, SyncError
from schemas.serde import AvroSerde, LocalSchemaRegistry
from sinks.base import WriteResult
from sinks.batch import SinkBatch, SinkEvent, TopicPartition
from sinks.metrics import SinkMetrics
from sinks.postgres import PostgresUpsertSink
from sinks.runner import SinkRunner
from sinks.settings import SinkSettings

TOPIC = "canonical.customer"


class UniqueTarget:
    """Rows by key, each holding a number no other row may hold (None holds nothing)."""

    parked_records = 0

    def __init__(self, rows: Mapping[str, str | None]) -> None:
        self.rows = dict(rows)
        self.letters: list[tuple[str, SyncError]] = []
        self.writes = 0

    def write(self, batch: SinkBatch, *, store_offsets: bool = True) -> WriteResult:
        self.writes += 1
        after = dict(self.rows)
        latest = batch.collapse().latest
        for event in latest:
            after[event.key] = event.record["number"]
        held = [v for v in after.values() if v is not None]
        if len(held) != len(set(held)):
            raise KeyTakenError("duplicate key value violates unique constraint")
        if any(e.record.get("bad") for e in latest):
            raise PermanentError("a value the column cannot take")
        self.rows = after
        return WriteResult(applied=tuple(latest))

    def dead_letter(self, event: SinkEvent, error: SyncError) -> None:
        self.letters.append((event.key, error))

    def store_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        pass


def _runner(target: UniqueTarget) -> SinkRunner:
    settings = SinkSettings(target="crm", dsn=SecretStr("postgresql://nowhere/x"))
    sink = PostgresUpsertSink(target="crm", dsn="", tables={}, ownership={}, topics=(TOPIC,))
    metrics = SinkMetrics.create(CollectorRegistry())
    runner = SinkRunner(settings, sink, AvroSerde(LocalSchemaRegistry()), metrics, (TOPIC,))
    runner._sink = target  # type: ignore[assignment]
    return runner


def _batch(*changes: tuple[str, str | None] | tuple[str, str | None, bool]) -> SinkBatch:
    events = []
    for offset, change in enumerate(changes):
        key, number = change[0], change[1]
        record: dict[str, Any] = {
            "version": 1,
            "op": "upsert",
            "number": number,
            "source_system": "erp",
            "source_ts_ms": 1_000 + offset,
        }
        if len(change) > 2:
            record["bad"] = change[2]
        events.append(SinkEvent(TOPIC, 0, offset, "customer", key, record))
    return SinkBatch(events)


def _lettered(target: UniqueTarget) -> list[str]:
    return [key for key, _ in target.letters]


def test_a_swap_cut_apart_is_applied_and_only_the_duplicate_held() -> None:
    # b and c swap; a wants the number a row outside the batch holds. Bisection tries
    # [b] alone first, which fails while c holds its number.
    target = UniqueTarget({"b": "C1", "c": "C2", "a": "C3", "x": "X"})
    runner = _runner(target)
    result = runner._isolate(_batch(("b", "C2"), ("c", "C1"), ("a", "X")))
    assert target.letters == []
    assert target.rows == {"b": "C2", "c": "C1", "a": "C3", "x": "X"}
    assert sorted(e.key for e in result.applied) == ["b", "c"]
    assert [e.key for e in result.deferred] == ["a"]
    assert list(runner._taken) == [("customer", "a")]
    assert isinstance(runner._taken[("customer", "a")], KeyTakenError)


def test_the_rest_of_a_trade_in_a_later_batch_applies_the_held_change() -> None:
    # The sink reads b's new number before c's: b waits, and with c's change it applies.
    target = UniqueTarget({"b": "C1", "c": "C2"})
    runner = _runner(target)
    first = _batch(("b", "C2"))
    result = runner._isolate(first)
    runner._account(first, result, 0.0)
    assert [e.key for e in result.deferred] == ["b"]
    later = _batch(("c", "C1"))
    for event in result.deferred:
        later.add(event)
    result = runner._isolate(later)
    runner._account(later, result, 0.0)
    assert target.rows == {"b": "C2", "c": "C1"}
    assert target.letters == []
    assert runner._taken == {}
    assert runner._held == {}


def test_two_rows_wanting_one_number_hold_one_of_them() -> None:
    target = UniqueTarget({"a": "C1", "b": "C2"})
    result = _runner(target)._isolate(_batch(("a", "N"), ("b", "N")))
    assert target.letters == []
    assert [e.key for e in result.deferred] == ["b"]
    assert target.rows == {"a": "N", "b": "C2"}


def test_a_chain_whose_freeing_part_came_later_applies() -> None:
    # b takes c's number; c moves to a free one in the other half of the bisection.
    target = UniqueTarget({"b": "C1", "c": "C2"})
    result = _runner(target)._isolate(_batch(("b", "C2"), ("c", "N"), ("d", "D", True)))
    assert _lettered(target) == ["d"]
    assert result.deferred == ()
    assert target.rows == {"b": "C2", "c": "N"}


def test_other_permanent_failures_are_lettered_at_once() -> None:
    target = UniqueTarget({"a": "C1"})
    result = _runner(target)._isolate(_batch(("a", "C9", True), ("b", "C1")))
    assert _lettered(target) == ["a"]
    assert not isinstance(target.letters[0][1], KeyTakenError)
    assert [e.key for e in result.deferred] == ["b"]
