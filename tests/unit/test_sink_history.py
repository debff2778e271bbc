"""A key's history in a batch: the events newer than the stored version, up to the latest."""

from __future__ import annotations

from typing import Any

from sinks.batch import SinkBatch, SinkEvent
from sinks.postgres import PostgresUpsertSink, _Outcome
from sinks.state import Applied


def event(offset: int, key: str, version: int) -> SinkEvent:
    record: dict[str, Any] = {"version": version, "op": "upsert", "source_system": "erp"}
    return SinkEvent("canonical.customer", 0, offset, "customer", key, record)


def test_a_key_with_one_event_is_its_own_history() -> None:
    only = event(0, "erp:1", 7)
    batch = SinkBatch([only, event(1, "erp:2", 3), event(2, "erp:2", 4)])
    history = PostgresUpsertSink._history(batch, only, Applied(5, "h"), _Outcome())
    assert history == (only,)
    assert PostgresUpsertSink._history(batch, only, None, _Outcome()) == (only,)


def test_a_key_with_several_events_keeps_those_above_the_stored_version_in_order() -> None:
    events = [
        event(0, "erp:1", 9),
        event(1, "erp:1", 4),
        event(2, "erp:1", 6),
        event(3, "erp:1", 2),
    ]
    batch = SinkBatch(events)
    latest = events[0]
    history = PostgresUpsertSink._history(batch, latest, Applied(3, "h"), _Outcome())
    assert [e.version for e in history] == [4, 6, 9]
    assert [e.version for e in PostgresUpsertSink._history(batch, latest, None, _Outcome())] == [
        2,
        4,
        6,
        9,
    ]
