"""How fetched records reach the intake buffer: a fetched set at a time, not a message at a time.

Faust's consumer loop (``Consumer._drain_messages``) hands every fetched record to the
conductor on its own: one ``Message``, one ``wait_first`` over the delivery and the
suspend event (tasks made and cancelled per message), one lock and flow-control wait
per message. :class:`BatchConsumer` keeps Faust's consumer (its thread, fetcher,
rebalance callbacks, pause and resume of partitions, offsets and commits) and replaces
only that loop: each set aiokafka's ``getmany`` returns is turned into messages and the
messages of the intake's topics (:attr:`BatchApp.intake`) go into its buffer in one
synchronous run. Messages of any other topic (the tables' changelogs while they are
restored) go through Faust's conductor, one at a time, exactly as Faust delivers them.

What each fetched set goes through, as in Faust's loop:

1. the fetch: only while the flow is active (a rebalance stops it); records of
   partitions no longer active or buffered are left out; the set is taken in the
   consumer scheduler's order (:class:`streams.scheduling.ProducedOrder`);
2. each message is stamped with the consumer generation it was read in (the intake
   drops messages of an older generation: :func:`streams.intake.current`); a message
   at an offset below the partition's read offset is dropped (read again after a
   seek), and a gap in the offsets is recorded for the commit (Faust's ``_add_gap``);
3. delivery: each message takes one reference (the intake's ``ack`` gives it back)
   and goes into the buffer with its partition's pressure callbacks (Faust's
   ``on_buffer_full`` / ``on_buffer_drop``, so a full buffer pauses the partition's
   fetching). When the buffer is full the loop waits for room. A rebalance or a
   resume of the streams (the flow suspended, the buffer cleared, a new generation,
   the partition paused) ends the set, or the partition's part of it, there: what was
   not delivered is read again from the committed offsets (see
   :mod:`streams.recovery`);
4. each delivered message's offset becomes its partition's read offset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import faust
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, ConsumerT, Message
from mode import Service

from streams.intake import InputTopics, IntakeBuffer

__all__ = ["BatchApp", "BatchConsumer"]

YIELD_EVERY = 1000
"""Messages delivered between two yields to the event loop within a fetched set."""


class BatchApp(faust.App):
    """A ``faust.App`` whose consumer is :class:`BatchConsumer`.

    ``intake``: the channel whose topics are delivered a fetched set at a time; until it
    is set, every message goes through Faust's conductor.
    """

    intake: InputTopics | None = None

    def _new_consumer(self) -> ConsumerT:
        transport = self.transport
        return BatchConsumer(
            transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=transport.loop,
        )


class BatchConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer with a loop that delivers whole fetched sets (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pressure: dict[TP, tuple[Callable[[], None], Callable[[], None]]] = {}

    async def _drain_messages(self, fetcher: Any) -> None:
        """Fetch and deliver sets until the consumer or ``fetcher`` stops."""
        consumer_stopped = cast(Service, self)._stopped.is_set
        fetcher_stopped = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                await self._drain_set()
                # the intake takes its batch while the next set is fetched
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def _drain_set(self) -> None:
        """Fetch one set and deliver it, steps 1-4 (module doc).

        Each record becomes a message only when it is delivered, as in Faust's loop, so
        a set waiting for room in the buffer is held as aiokafka's records.
        """
        app = self.app
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()
        # 1. the fetch (only while the flow is active)
        records, active = await self._wait_next_records(1.0)
        generation = app.consumer_generation_id
        if not records or self.should_stop:
            return
        if not self.flow_active:
            self.log.dev("fetched while the flow is suspended: seek back to committed offsets")
            try:
                await self.perform_seek()
            except Exception as exc:
                self.log.warning("seek while the flow is suspended failed: %r", exc)
            return
        await app.flow_control.acquire()
        await app.producer.buffer.wait_until_ebb()
        if not self._delivering(generation):
            return
        intake = cast(BatchApp, app).intake
        bulk = frozenset(intake.topics) if intake is not None else frozenset()
        buffer = intake.buffer if intake is not None else None
        buffered = self._buffered_partitions
        acks_enabled_for = app.topics.acks_enabled_for
        read_offset = self._read_offset
        to_message = self._to_message
        track_end = app.monitor.track_tp_end_offset
        pressure = self._pressure_callbacks
        seen: set[TP] = set()
        since_yield = 0
        for tp, record in self.scheduler.iterate(records):
            if active is not None and tp not in active and tp not in buffered:
                continue
            if tp not in seen:
                seen.add(tp)
                track_end(tp, self.highwater(tp))
            # 2. a message of this generation; an offset already read is dropped
            offset = record.offset
            previous = read_offset[tp]
            if previous is not None and offset < previous:
                self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, record.key, record.value)
                continue
            if previous and offset - previous > 1 and acks_enabled_for(tp.topic):
                await self._add_gap(tp, previous + 1, offset)
                if not self._delivering(generation):
                    return
            message = to_message(tp, record)
            # 3. delivery: the intake's topics into its buffer, others through the conductor
            if buffer is not None and message.topic in bulk:
                if buffer.full():
                    app.sensors.on_topic_buffer_full(tp)
                    if not await self._room(buffer, generation):
                        return
                high, drop = pressure(tp)
                message.incref(1)
                buffer.put_nowait_enhanced(message, on_pressure_high=high, on_pressure_drop=drop)
            else:
                await self.wait_first(self.callback(message), self.suspend_flow.wait())
                if not self._delivering(generation):
                    return
            # 4. the partition's read offset
            read_offset[tp] = offset
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
                if not self._delivering(generation):
                    return

    async def _room(self, buffer: IntakeBuffer[Message], generation: int) -> bool:
        """Wait until ``buffer`` has room; False if a rebalance or resume came meanwhile.

        The buffer cleared (Faust's ``flow_control`` clears it on every rebalance and
        resume) means that the rest of the set is read again from the committed
        offsets: none of it may be delivered now.
        """
        room = buffer.room()
        waited = await self.wait_first(room, self.suspend_flow.wait())
        if waited.stopped or not dict(zip(waited.done, waited.results, strict=True)).get(room):
            return False
        return self._delivering(generation)

    def _delivering(self, generation: int) -> bool:
        """Whether delivery of a set read in ``generation`` may go on."""
        return (
            self.flow_active
            and not self.should_stop
            and self.app.consumer_generation_id == generation
        )

    def _pressure_callbacks(self, tp: TP) -> tuple[Callable[[], None], Callable[[], None]]:
        """``tp``'s pressure callbacks (as Faust's conductor makes them), one pair per partition."""
        found = self._pressure.get(tp)
        if found is None:
            on_topic_buffer_full = self.app.sensors.on_topic_buffer_full
            # the fetched records' partitions are aiokafka's; the consumer's sets hold TPs
            tp = TP(tp.topic, tp.partition)

            def on_pressure_high() -> None:
                on_topic_buffer_full(tp)
                self.on_buffer_full(tp)

            def on_pressure_drop() -> None:
                self.on_buffer_drop(tp)

            found = self._pressure[tp] = (on_pressure_high, on_pressure_drop)
        return found
