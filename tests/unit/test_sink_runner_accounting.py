"""What the sink runner counts of a written batch, and what it tells the sink (no services).

Parked events tried again (their suspect decided, their row clock still awaited) go back
to ``parked``; they were counted ``parked`` when first parked, and neither parked again
nor superseded counts them a second time, however often they are tried. The runner
tells the sink how far the target's own changes are applied; the sink's row-clock wait
counts from a horizon past the local change, never from one at its millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from schemas.serde import AvroSerde, LocalSchemaRegistry
from sinks.base import WriteResult
from sinks.batch import SinkBatch, SinkEvent
from sinks.metrics import SinkMetrics
from sinks.postgres import PostgresUpsertSink
from sinks.runner import SinkRunner
from sinks.settings import SinkSettings

TOPIC = "canonical.contact"


def _runner() -> tuple[SinkRunner, PostgresUpsertSink]:
    settings = SinkSettings(target="erp", dsn=SecretStr("postgresql://nowhere/x"))
    sink = PostgresUpsertSink(target="erp", dsn="", tables={}, ownership={}, topics=(TOPIC,))
    metrics = SinkMetrics.create(CollectorRegistry())
    return SinkRunner(settings, sink, AvroSerde(LocalSchemaRegistry()), metrics, (TOPIC,)), sink


def ev(offset: int, version: int) -> SinkEvent:
    record = {"version": version, "op": "upsert", "source_system": "crm", "source_ts_ms": version}
    return SinkEvent(TOPIC, 0, offset, "contact", "crm:c1", record)


def test_parked_events_tried_again_and_parked_again_are_not_counted_again() -> None:
    runner, _ = _runner()
    first, second = ev(3, 1), ev(4, 2)
    # First read: both parked.
    runner._account(SinkBatch([first, second]), WriteResult(parked=(first, second)), 0.0)
    assert runner.stats.outcomes == {"parked": 2}
    # Tried again, every 2 s, while their row clock is awaited: parked again each time.
    for _ in range(3):
        again = SinkBatch([first, second])
        result = WriteResult(parked=(first, second), superseded=(first,))
        runner._account(again, result, 0.0, unparked=True)
    assert runner.stats.outcomes == {"parked": 2}
    # At last applied: the latest counts as applied, the older one not as superseded.
    done = WriteResult(applied=(second,), superseded=(first,))
    runner._account(SinkBatch([first, second]), done, 0.0, unparked=True)
    assert runner.stats.outcomes == {"parked": 2, "applied": 1}


def test_a_fresh_batch_still_counts_its_parked_and_superseded_events() -> None:
    runner, _ = _runner()
    first, second = ev(3, 1), ev(4, 2)
    result = WriteResult(parked=(second,), superseded=(first,))
    runner._account(SinkBatch([first, second]), result, 0.0)
    assert runner.stats.outcomes == {"parked": 1, "superseded": 1}


def test_the_row_clock_wait_counts_from_a_horizon_past_the_local_change_only() -> None:
    _, sink = _runner()
    assert sink._own_seen() == -1
    sink.own_changes_applied(5_000)
    # A change committed at the horizon's own millisecond may come after it in commit
    # order: only the ones before count as read.
    assert sink._own_seen() == 4_999
    sink.own_changes_applied(4_000)  # never backwards
    assert sink._own_seen() == 4_999


def test_a_held_event_parked_when_tried_again_counts_as_parked() -> None:
    """Held for a reference first (counted deferred), then parked: counted parked then."""
    runner, _ = _runner()
    event = ev(3, 1)
    runner._account(SinkBatch([event]), WriteResult(deferred=(event,)), 0.0)
    runner._account(SinkBatch([event]), WriteResult(parked=(event,)), 0.0)
    assert runner.stats.outcomes == {"deferred": 1, "parked": 1}


def test_a_released_suspect_that_must_wait_is_marked_in_the_write_that_parks_it() -> None:
    """Marked carried out in the transaction that keeps its event: never in memory only."""
    runner, sink = _runner()
    record = {"version": 1, "op": "upsert", "source_system": "crm", "source_ts_ms": 1}
    event = SinkEvent("canonical.customer", 0, 3, "customer", "crm:s1", record)
    writes: list[Sequence[int]] = []
    marks: list[Sequence[int]] = []

    def write(batch: SinkBatch, **kwargs: Any) -> WriteResult:
        # As the sink does: with the suspects it marks, an event that must wait is parked.
        carried_out = kwargs.get("carried_out", ())
        writes.append(carried_out)
        return WriteResult(parked=(event,)) if carried_out else WriteResult(deferred=(event,))

    setattr(sink, "write", write)  # noqa: B010 - a pure-logic stand-in for the database
    setattr(sink, "suspects_carried_out", marks.append)  # noqa: B010
    setattr(runner, "_stored_event", lambda row: event)  # noqa: B010
    runner._carry_out([{"id": 7}])
    assert writes == [[7]]
    assert marks == []
    assert runner._held == {}
    assert runner.stats.outcomes == {"parked": 1}


def test_rows_whose_owned_field_was_refused_are_announced_after_the_commit() -> None:
    """A refused edit of an owned field re-announces its row at once, as a created row is
    announced; a batch that queued neither does not ask the target."""
    from concurrent.futures import Future

    from sinks.runner import _Pending

    runner, sink = _runner()
    calls: list[int] = []

    def announce(limit: int = 1000) -> list[tuple[str, str]]:
        calls.append(limit)
        return [("customer", "crm:a")] if len(calls) == 1 else []

    sink.announce = announce  # type: ignore[method-assign]
    for result, asked in (
        (WriteResult(applied=(ev(3, 1),)), 0),
        (WriteResult(applied=(ev(4, 2),), reasserted=(("customer", "17"),)), 2),
    ):
        calls.clear()
        done: Future[tuple[WriteResult, float]] = Future()
        done.set_result((result, 0.0))
        runner._pending = _Pending(SinkBatch(result.applied), True, done)
        runner._finish_pending()
        assert len(calls) == asked
    assert runner.stats.announced == 1
