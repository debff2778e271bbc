"""Pressure across a rebalance (streams.pressure) and a set cut short by a seek (streams.fetch).

No Kafka: the intake buffer is the real one; the consumer's partition bookkeeping is a
small model of Faust's (``on_buffer_full`` / ``on_buffer_drop``, the pause of every
partition when a rebalance begins, the assignment that keeps paused what it reassigns,
the recovery's resume).
"""

from __future__ import annotations

from faust.types import TP

from streams.fetch import seek_back_targets
from streams.intake import IntakeBuffer
from streams.pressure import HeldPartitions, PartitionPressure

TX = TP("erp.transaction", 0)
ROWS = TP("erp.public.res_partner", 0)


class FaustPartitions:
    """Faust's consumer bookkeeping of fetched partitions (``faust.transport.consumer``)."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = set(assigned)
        self.active = set(assigned)
        self.paused: set[TP] = set()
        self.buffered: set[TP] = set()

    def on_buffer_full(self, tp: TP) -> None:
        self.active.discard(tp)
        self.buffered.add(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        if tp in self.buffered:
            self.active.add(tp)
            self.buffered.discard(tp)

    def rebalance(self, assigned: set[TP]) -> None:
        """Revoke (every partition paused), then assign (paused ones stay paused)."""
        self.paused |= self.assigned
        self.active.clear()
        self.assigned = set(assigned)
        self.paused &= assigned
        self.active = assigned - self.paused

    def resume(self, tps: set[TP]) -> None:
        """The recovery, once it has sought the partitions to their committed offsets."""
        self.buffered -= tps
        self.active |= tps
        self.paused -= tps

    def fetched(self, tp: TP) -> bool:
        """Whether records of ``tp`` are fetched or still delivered."""
        return tp in self.active or tp in self.buffered


def fill(buffer: IntakeBuffer[int], pressure: PartitionPressure[TP], tp: TP, n: int) -> None:
    for value in range(n):
        high, drop = pressure.callbacks(tp)
        buffer.put_nowait_enhanced(value, on_pressure_high=high, on_pressure_drop=drop)


def rebalance(
    consumer: FaustPartitions, pressure: PartitionPressure[TP], buffer: IntakeBuffer[int]
) -> None:
    """What a rebalance does to them, in Faust's order: revoke, clear, assign."""
    pressure.revoke(consumer.buffered, {TX, ROWS})  # BatchConsumer.on_partitions_revoked
    consumer.rebalance({TX, ROWS})
    buffer.clear()  # flow_control.clear()


def test_a_drop_from_before_a_rebalance_does_not_fetch_a_partition_the_rebalance_paused() -> None:
    consumer = FaustPartitions({TX, ROWS})
    pressure = PartitionPressure(consumer.on_buffer_full, consumer.on_buffer_drop)
    buffer: IntakeBuffer[int] = IntakeBuffer(10)
    fill(buffer, pressure, TX, 9)
    assert TX in consumer.buffered
    rebalance(consumer, pressure, buffer)
    # the intake's take lingering over the clear frees room: the pending drop is called
    buffer.take_nowait(5)
    assert not consumer.fetched(TX), "paused by the rebalance, fetched again before its seek"
    consumer.resume({TX, ROWS})
    assert consumer.fetched(TX)


def test_after_a_rebalance_pressure_pauses_a_partition_again_and_its_drop_resumes_it() -> None:
    consumer = FaustPartitions({TX, ROWS})
    pressure = PartitionPressure(consumer.on_buffer_full, consumer.on_buffer_drop)
    buffer: IntakeBuffer[int] = IntakeBuffer(10)
    fill(buffer, pressure, TX, 9)
    rebalance(consumer, pressure, buffer)
    consumer.resume({TX, ROWS})
    fill(buffer, pressure, TX, 10)
    assert TX in consumer.buffered, "the pressure did not pause it"
    assert TX not in consumer.active
    buffer.take_nowait(10)
    assert TX in consumer.active
    assert not consumer.buffered


def test_one_pair_per_partition_until_the_next_revoke() -> None:
    calls: list[tuple[str, TP]] = []
    pressure = PartitionPressure[TP](
        lambda tp: calls.append(("full", tp)), lambda tp: calls.append(("drop", tp))
    )
    first = pressure.callbacks(TX)
    assert pressure.callbacks(TX) is first
    pressure.revoke(set(), {TX})
    second = pressure.callbacks(TX)
    assert second[0] is not first[0]
    assert second[1] is not first[1]
    first[0]()
    first[1]()
    second[0]()
    second[1]()
    assert calls == [("full", TX), ("drop", TX)]


def test_a_partition_held_out_of_the_fetch_is_reported_once_per_period() -> None:
    now = [0.0]
    held = HeldPartitions[TP](30.0, clock=lambda: now[0])
    assert held.observe([TX]) == []
    now[0] = 29.0
    assert held.observe([TX, ROWS]) == []
    now[0] = 30.0
    assert held.observe([TX, ROWS]) == [(TX, 30.0)]
    now[0] = 45.0
    assert held.observe([TX, ROWS]) == []
    now[0] = 60.0
    assert sorted(held.observe([TX, ROWS])) == [(ROWS, 31.0), (TX, 60.0)]
    now[0] = 61.0
    assert held.observe([ROWS]) == []  # TX fetched again: its count starts over
    now[0] = 100.0
    assert held.observe([TX, ROWS]) == [(ROWS, 71.0)]


def test_a_set_cut_short_by_a_seek_goes_back_to_the_seek_or_to_its_first_record() -> None:
    other = TP("erp.public.sale_order", 0)
    gone = TP("crm.public.accounts", 0)
    first = {TX: 120, ROWS: 500, other: 70, gone: 9}
    # seeks 1-3 had begun when the set was fetched; seek 4 moved TX, seek 2 ROWS
    sought = {TX: (4, 100), ROWS: (2, 450)}
    targets = seek_back_targets(first, sought, 3, {TX, ROWS, other})
    assert targets == {TX: 100, ROWS: 500, other: 70}
