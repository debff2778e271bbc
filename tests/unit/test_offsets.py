"""AckTracker: the confirmable LSN never passes an unacknowledged record."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from cdc.lsn import Lsn
from cdc.offsets import AckTracker


def test_confirms_only_after_every_record_of_a_transaction_is_acked() -> None:
    tracker = AckTracker(Lsn(100))
    tx = tracker.begin(1)
    first, second = tracker.add(tx), tracker.add(tx)
    tracker.commit(tx, Lsn(200))
    assert tracker.confirmable == Lsn(100)
    tracker.ack(first)
    assert tracker.confirmable == Lsn(100)
    tracker.ack(second)
    assert tracker.confirmable == Lsn(200)


def test_a_later_transaction_waits_for_an_earlier_one() -> None:
    tracker = AckTracker(Lsn(10))
    slow, fast = tracker.begin(1), tracker.begin(2)
    tracker.add(slow)
    tracker.add(fast)
    tracker.commit(slow, Lsn(20))
    tracker.commit(fast, Lsn(30))
    tracker.ack(fast)
    assert tracker.confirmable == Lsn(10)
    tracker.ack(slow)
    assert tracker.confirmable == Lsn(30)


def test_empty_transaction_is_confirmable_at_commit() -> None:
    tracker = AckTracker(Lsn(5))
    tx = tracker.begin(7)  # e.g. an echo transaction whose changes were all dropped
    tracker.commit(tx, Lsn(9))
    assert tracker.confirmable == Lsn(9)
    assert tracker.in_flight == 0


def test_idle_position_only_once_nothing_is_in_flight() -> None:
    tracker = AckTracker(Lsn(1))
    tx = tracker.begin(1)
    token = tracker.add(tx)
    tracker.commit(tx, Lsn(50))
    tracker.idle(Lsn(80))
    assert tracker.confirmable == Lsn(1)
    tracker.ack(token)
    assert tracker.confirmable == Lsn(80)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=30),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_confirmable_is_the_end_of_the_longest_fully_acked_prefix(
    sizes: list[int], seed: int
) -> None:
    """Whatever the delivery order, the confirmable LSN is monotonic and never skips a gap."""
    tracker = AckTracker(Lsn(0))
    records = []
    ends = []
    for index, size in enumerate(sizes):
        tx = tracker.begin(index)
        records.extend((index, tracker.add(tx)) for _ in range(size))
        end = Lsn((index + 1) * 100)
        tracker.commit(tx, end)
        ends.append(end)
    random.Random(seed).shuffle(records)
    pending = [size for size in sizes]
    last = tracker.confirmable
    for index, token in records:
        tracker.ack(token)
        pending[index] -= 1
        prefix = 0
        while prefix < len(pending) and pending[prefix] == 0:
            prefix += 1
        expected = ends[prefix - 1] if prefix else Lsn(0)
        assert tracker.confirmable == expected
        assert tracker.confirmable >= last
        last = tracker.confirmable
    assert tracker.confirmable == ends[-1]
