"""The batch intake (streams/intake.py): buffer, batches, backpressure and the ack order.

No Kafka: messages are Faust ``Message`` objects as its consumer makes them; the
consumer's bookkeeping and flow control are small recorders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import faust
import pytest
from faust.types import TP, Message
from faust.types.tuples import ConsumerMessage

from streams.intake import BatchIntake, FaustOffsets, InputTopics, IntakeBuffer, current


def message(offset: int, *, generation: int = 1, topic: str = "erp.public.res_partner") -> Message:
    return Message(topic, 0, offset, 0.0, 0, None, b"k", b"v", b"", generation_id=generation)


class Pressure:
    """One partition's pressure callbacks, as Faust's conductor passes them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def high(self) -> None:
        self.calls.append("high")

    def drop(self) -> None:
        self.calls.append("drop")


def put(buffer: IntakeBuffer[int], value: int, pressure: Pressure) -> bool:
    return buffer.put_nowait_enhanced(
        value, on_pressure_high=pressure.high, on_pressure_drop=pressure.drop
    )


def test_the_buffer_hands_out_batches_in_delivery_order() -> None:
    buffer: IntakeBuffer[int] = IntakeBuffer(100)
    pressure = Pressure()
    for value in range(7):
        put(buffer, value, pressure)
    assert buffer.take_nowait(3) == [0, 1, 2]
    assert buffer.take_nowait(10) == [3, 4, 5, 6]
    assert buffer.take_nowait(10) == []


def test_pressure_stops_a_partition_above_the_high_mark_and_resumes_it_when_drained() -> None:
    buffer: IntakeBuffer[int] = IntakeBuffer(10)  # high at 8 buffered, drop at 4
    assert (buffer.pressure_high_size, buffer.pressure_drop_size) == (8, 4)
    pressure = Pressure()
    raised = [put(buffer, value, pressure) for value in range(12)]
    # the 9th put found 8 buffered: the partition leaves the fetch, once; nothing dropped
    assert raised == [False] * 8 + [True] + [False] * 3
    assert pressure.calls == ["high"]
    assert len(buffer) == 12
    assert buffer.full()
    buffer.take_nowait(7)  # 5 left: above the drop mark
    assert pressure.calls == ["high"]
    buffer.take_nowait(1)  # 4 left: fetching resumes
    assert pressure.calls == ["high", "drop"]
    buffer.take_nowait(4)
    assert pressure.calls == ["high", "drop"]


def test_a_put_into_a_full_buffer_waits_for_room_and_loses_nothing() -> None:
    async def scenario() -> list[int]:
        buffer: IntakeBuffer[int] = IntakeBuffer(2)
        await buffer.put(0)
        await buffer.put(1)
        waiting = asyncio.ensure_future(buffer.put(2))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        first = buffer.take_nowait(1)
        await asyncio.wait_for(waiting, 1)
        return first + buffer.take_nowait(5)

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_clear_drops_the_buffer_and_cancels_waiting_puts() -> None:
    async def scenario() -> None:
        buffer: IntakeBuffer[int] = IntakeBuffer(1)
        await buffer.put(0)
        waiting = asyncio.ensure_future(buffer.put(1))
        await asyncio.sleep(0.01)
        buffer.clear()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert buffer.empty()

    asyncio.run(scenario())


def test_room_waits_until_a_take_frees_a_place_and_says_when_the_buffer_was_cleared() -> None:
    async def scenario() -> None:
        buffer: IntakeBuffer[int] = IntakeBuffer(1)
        assert await asyncio.wait_for(buffer.room(), 1)  # not full: no wait
        await buffer.put(0)
        waiting = asyncio.ensure_future(buffer.room())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert buffer.take_nowait(1) == [0]
        assert await asyncio.wait_for(waiting, 1)
        await buffer.put(1)
        cleared = asyncio.ensure_future(buffer.room())
        await asyncio.sleep(0.01)
        assert not cleared.done()
        buffer.clear()  # a rebalance or resume: what waited for room is read again
        assert await asyncio.wait_for(cleared, 1) is False
        assert buffer.empty()

    asyncio.run(scenario())


def test_take_returns_a_full_batch_at_once_and_lingers_for_a_partial_one() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        buffer: IntakeBuffer[int] = IntakeBuffer(100)
        for value in range(5):
            await buffer.put(value)
        started = loop.time()
        assert await buffer.take(5, 10.0) == [0, 1, 2, 3, 4]  # full: no linger
        assert loop.time() - started < 1.0
        await buffer.put(5)
        started = loop.time()
        assert await buffer.take(5, 0.05) == [5]  # partial: after the linger
        assert loop.time() - started >= 0.04
        # empty: waits for the first message, then lingers for the rest
        taking = asyncio.ensure_future(buffer.take(3, 5.0))
        await asyncio.sleep(0.02)
        assert not taking.done()
        for value in (6, 7, 8, 9):
            await buffer.put(value)
        assert await asyncio.wait_for(taking, 1.0) == [6, 7, 8]
        assert buffer.take_nowait(5) == [9]

    asyncio.run(scenario())


def test_a_buffer_needs_room_for_one_message() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        IntakeBuffer(0)


def test_only_messages_of_the_current_generation_are_processed() -> None:
    old, new = message(1, generation=3), message(2, generation=4)
    assert current([old, new], 4) == [new]


class Offsets:
    """Records the consumer bookkeeping calls, in order, with the handler's."""

    def __init__(self, log: list[tuple[str, list[int]]]) -> None:
        self.log = log

    def started(self, messages: Sequence[Message]) -> None:
        self.log.append(("started", [m.offset for m in messages]))

    def done(self, messages: Sequence[Message]) -> None:
        self.log.append(("done", [m.offset for m in messages]))


class Flow:
    """Faust's flow control: active unless a rebalance is under way."""

    def __init__(self) -> None:
        self.active = True
        self.resumed = asyncio.Event()
        self.resumed.set()

    def is_active(self) -> bool:
        return self.active

    async def acquire(self) -> None:
        await self.resumed.wait()


def intake(
    buffer: IntakeBuffer[Message], log: list[tuple[str, list[int]]], flow: Flow, generation: int
) -> BatchIntake:
    return BatchIntake(buffer, Offsets(log), flow, lambda: generation, batch_size=3, linger_s=0.01)


def test_a_batch_is_acknowledged_only_after_its_handler_returned() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        log: list[tuple[str, list[int]]] = []
        buffer: IntakeBuffer[Message] = IntakeBuffer(100)
        for offset in range(5):
            await buffer.put(message(offset))
        batches = intake(buffer, log, Flow(), 1)
        handled = asyncio.Event()

        async def handle(batch: Sequence[Message]) -> None:
            log.append(("handled", [m.offset for m in batch]))
            if len(log) >= 5:
                handled.set()

        running = asyncio.ensure_future(batches.run(handle))
        await asyncio.wait_for(handled.wait(), 1.0)
        await asyncio.sleep(0.01)
        running.cancel()
        return log

    assert asyncio.run(scenario()) == [
        ("started", [0, 1, 2]),
        ("handled", [0, 1, 2]),
        ("done", [0, 1, 2]),
        ("started", [3, 4]),
        ("handled", [3, 4]),
        ("done", [3, 4]),
    ]


def test_a_failed_batch_is_never_acknowledged() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        log: list[tuple[str, list[int]]] = []
        buffer: IntakeBuffer[Message] = IntakeBuffer(100)
        await buffer.put(message(0))

        async def handle(batch: Sequence[Message]) -> None:
            raise RuntimeError("publish refused")

        with pytest.raises(RuntimeError, match="publish refused"):
            await intake(buffer, log, Flow(), 1).run(handle)
        return log

    assert asyncio.run(scenario()) == [("started", [0])]


def test_messages_read_before_a_rebalance_are_left_for_the_consumer_to_read_again() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        log: list[tuple[str, list[int]]] = []
        buffer: IntakeBuffer[Message] = IntakeBuffer(100)
        flow = Flow()
        for offset in range(2):
            await buffer.put(message(offset, generation=1))
        flow.active = False  # a rebalance began after they were buffered
        batches = intake(buffer, log, flow, 2)
        taking = asyncio.ensure_future(batches.next_batch())
        await asyncio.sleep(0.05)
        assert not taking.done()  # nothing processed while the flow is suspended
        flow.active = True
        # the consumer reads them again in the new generation, from the committed offset
        for offset in range(3):
            await buffer.put(message(offset, generation=1 if offset == 0 else 2))
        batch = await asyncio.wait_for(taking, 1.0)
        return [*log, ("batch", [m.offset for m in batch])]

    assert asyncio.run(scenario()) == [("started", [1, 2]), ("batch", [1, 2])]


def test_faust_would_commit_exactly_the_prefix_acknowledged_after_its_batch() -> None:
    """Through Faust's own consumer bookkeeping (nothing connects)."""

    async def scenario() -> None:
        app = faust.App("erpcrm-intake-test", broker="kafka://127.0.0.1:1", store="memory://")
        buffer: IntakeBuffer[Message] = IntakeBuffer(10)
        raw = "erp.public.res_partner"
        inputs = InputTopics(
            app,
            buffer=buffer,
            topics=[raw, "control"],
            key_serializer="raw",
            value_serializer="raw",
        )
        app.topics.add(inputs)
        await cast(
            Any, app.topics
        )._update_indices()  # what the conductor does before it subscribes
        consumer = cast(Any, app.consumer)
        tp = TP(raw, 0)
        read = [
            ConsumerMessage(raw, 0, offset, 0.0, 0, None, b"k", b"v", b"", tp=tp)
            for offset in range(10, 15)
        ]
        for message in read:
            message.incref()  # the conductor's reference: one subscribing channel
        offsets = FaustOffsets(app)
        offsets.started(read[:3])
        assert set(consumer.unacked) == set(read[:3])  # a rebalance would wait for them
        assert consumer._new_offset(tp) is None  # nothing committable while in flight
        offsets.done(read[:3])
        assert not consumer.unacked
        assert [message.acked for message in read] == [True] * 3 + [False] * 2
        assert consumer._new_offset(tp) == 13  # the next offset to read: after the batch
        assert app.monitor.messages_active == 0

    asyncio.run(scenario())
