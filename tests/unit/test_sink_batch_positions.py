"""Batch positions: advancing past non-events, and offsets safe to store while held."""

from __future__ import annotations

from sinks.batch import SinkBatch, SinkEvent, safe_offsets

TOPIC = "canonical.customer"


def ev(key: str, offset: int, partition: int = 0, topic: str = TOPIC) -> SinkEvent:
    record = {"version": 1, "op": "upsert", "source_system": "erp", "source_ts_ms": 1}
    return SinkEvent(topic, partition, offset, "customer", key, record)


# ------------------------------------------------------------------------ advance


def test_advance_moves_position_without_adding_an_event() -> None:
    batch = SinkBatch()
    batch.advance(TOPIC, 2, 41)
    assert batch.next_offsets() == {(TOPIC, 2): 42}
    assert len(batch) == 0
    assert not batch
    assert list(batch) == []
    assert batch.keys() == ()
    assert batch.collapse().latest == ()


def test_a_batch_of_passed_messages_only_moves_positions() -> None:
    """Tombstones only: no event, written all the same for the positions it stores."""
    batch = SinkBatch()
    assert not batch.moves
    batch.advance(TOPIC, 0, 7)
    assert batch.moves
    assert not batch
    assert SinkBatch([ev("erp:1", 0)]).moves


def test_advance_past_the_last_event() -> None:
    batch = SinkBatch([ev("erp:1", 5)])
    batch.advance(TOPIC, 0, 9)
    assert batch.next_offsets() == {(TOPIC, 0): 10}
    assert len(batch) == 1
    assert [e.offset for e in batch] == [5]


def test_advance_never_moves_backwards() -> None:
    batch = SinkBatch([ev("erp:1", 10)])
    batch.advance(TOPIC, 0, 3)
    assert batch.next_offsets() == {(TOPIC, 0): 11}
    batch.advance(TOPIC, 0, 20)
    batch.advance(TOPIC, 0, 15)
    assert batch.next_offsets() == {(TOPIC, 0): 21}
    # A later event below the advanced position does not pull it back either.
    batch.add(ev("erp:2", 12))
    assert batch.next_offsets() == {(TOPIC, 0): 21}
    assert len(batch) == 2


def test_advance_touches_only_its_partition() -> None:
    batch = SinkBatch([ev("erp:1", 4, partition=0), ev("erp:2", 7, partition=1)])
    batch.advance(TOPIC, 1, 8)
    batch.advance("canonical.product", 0, 0)
    assert batch.next_offsets() == {
        (TOPIC, 0): 5,
        (TOPIC, 1): 9,
        ("canonical.product", 0): 1,
    }


# ------------------------------------------------------------------- safe_offsets


def test_safe_offsets_without_held_events_is_the_batch_position() -> None:
    positions = {(TOPIC, 0): 11, (TOPIC, 1): 4}
    result = safe_offsets(positions, [])
    assert result == positions
    assert result is not positions


def test_held_event_lowers_its_partition_to_its_offset() -> None:
    positions = {(TOPIC, 0): 11, (TOPIC, 1): 4}
    result = safe_offsets(positions, [ev("erp:1", 7, partition=0)])
    # A restart reads offset 7 again; the other partition is untouched.
    assert result == {(TOPIC, 0): 7, (TOPIC, 1): 4}
    # The input is not modified.
    assert positions == {(TOPIC, 0): 11, (TOPIC, 1): 4}


def test_lowest_held_offset_wins() -> None:
    positions = {(TOPIC, 0): 20}
    held = [ev("erp:1", 15), ev("erp:2", 9), ev("erp:3", 12)]
    assert safe_offsets(positions, held) == {(TOPIC, 0): 9}


def test_held_event_of_an_unknown_partition_is_not_added() -> None:
    positions = {(TOPIC, 0): 20}
    held = [ev("erp:1", 3, partition=5), ev("erp:2", 3, topic="canonical.product")]
    assert safe_offsets(positions, held) == {(TOPIC, 0): 20}


def test_held_event_never_raises_a_position() -> None:
    assert safe_offsets({(TOPIC, 0): 5}, [ev("erp:1", 8)]) == {(TOPIC, 0): 5}


def test_safe_offsets_of_a_real_batch() -> None:
    events = [ev("erp:1", 3), ev("erp:2", 4), ev("erp:3", 5), ev("erp:4", 0, partition=1)]
    batch = SinkBatch(events)
    held = [events[1]]  # erp:2 waits for a reference
    assert safe_offsets(batch.next_offsets(), held) == {(TOPIC, 0): 4, (TOPIC, 1): 1}
