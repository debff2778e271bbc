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

A seek (the recovery's, after every rebalance) moves partitions while a set may be
waiting between steps 1 and 4. A set is delivered only while no seek came since it was
fetched; when one did, its rest is not delivered and each partition it still held
records of is sought again: to where the seek put it, or, if the seek left it alone, to
the first record not delivered (the client's position is past the whole set). Nothing
fetched before a seek reaches the buffer after it, and nothing is skipped: a record
delivered ahead of the sought offset would have been taken for read, the records
between recorded as a gap, and committed unread.

Pressure callbacks are made per partition and assignment (:mod:`streams.pressure`):
after a rebalance a partition is paused by pressure and resumed by its own new pair, and
no pair of before it puts a partition back into the fetch. A partition of the intake
held out of the fetch (paused, or by pressure) for :data:`HELD_WARN_SECONDS` is logged
with its state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterator, Mapping
from typing import Any, cast

import faust
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, ConsumerT, Message
from mode import Service

from streams.intake import InputTopics, IntakeBuffer
from streams.pressure import HeldPartitions, PartitionPressure

__all__ = ["BatchApp", "BatchConsumer", "seek_back_targets"]

logger = logging.getLogger(__name__)

YIELD_EVERY = 1000
"""Messages delivered between two yields to the event loop within a fetched set."""
HELD_WARN_SECONDS = 30.0
"""An intake partition held out of the fetch this long is logged (WARNING), again as long."""


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
        self._pressure: PartitionPressure[TP] = PartitionPressure(
            self._on_pressure_full, self._on_pressure_drop
        )
        self._held: HeldPartitions[TP] = HeldPartitions(HELD_WARN_SECONDS)
        self._held_checked = 0.0
        # seeks: how many began; where each partition was last sought, in which one
        self._seeks = 0
        self._seeks_running = 0
        self._seeks_done = asyncio.Event()
        self._seeks_done.set()
        self._sought: dict[TP, tuple[int, int]] = {}

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """A rebalance began: pressure callbacks made so far stop acting (module doc).

        Revoked partitions leave the pressure bookkeeping too (Faust keeps them in its
        buffered set): the rebalance pauses them, and they are fetched again only once the
        recovery has sought and resumed them.
        """
        self._pressure.revoke(self._buffered_partitions, revoked)
        await super().on_partitions_revoked(revoked)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek of every partition to its committed offset, recorded (module doc)."""
        seek = self._seek_began()
        try:
            sought = await super().seek_to_committed()
            for tp, offset in sought.items():
                if offset is not None and offset >= 0:
                    self._sought[TP(tp.topic, tp.partition)] = (seek, offset)
            return sought
        finally:
            self._seek_ended()

    async def _seek(self, partition: TP, offset: int) -> None:
        """Faust's seek of one partition, recorded (module doc)."""
        seek = self._seek_began()
        try:
            await super()._seek(partition, offset)
            self._sought[TP(partition.topic, partition.partition)] = (seek, offset)
        finally:
            self._seek_ended()

    def _seek_began(self) -> int:
        self._seeks += 1
        self._seeks_running += 1
        self._seeks_done.clear()
        return self._seeks

    def _seek_ended(self) -> None:
        self._seeks_running -= 1
        if not self._seeks_running:
            self._seeks_done.set()

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
        self._check_held()
        # 1. the fetch (only while the flow is active), as of the seeks so far
        seeks = self._seeks
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
        if self._seeks != seeks:
            await self._seek_back(self.scheduler.iterate(records), seeks, generation)
            return
        intake = cast(BatchApp, app).intake
        bulk = frozenset(intake.topics) if intake is not None else frozenset()
        buffer = intake.buffer if intake is not None else None
        buffered = self._buffered_partitions
        acks_enabled_for = app.topics.acks_enabled_for
        read_offset = self._read_offset
        to_message = self._to_message
        track_end = app.monitor.track_tp_end_offset
        pressure = self._pressure.callbacks
        seen: set[TP] = set()
        since_yield = 0
        pending = self.scheduler.iterate(records)
        for tp, record in pending:
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
                if self._seeks != seeks:
                    await self._seek_back(_chain((tp, record), pending), seeks, generation)
                    return
            message = to_message(tp, record)
            # 3. delivery: the intake's topics into its buffer, others through the conductor
            if buffer is not None and message.topic in bulk:
                if buffer.full():
                    app.sensors.on_topic_buffer_full(tp)
                    if not await self._room(buffer, generation):
                        return
                    if self._seeks != seeks:
                        await self._seek_back(_chain((tp, record), pending), seeks, generation)
                        return
                high, drop = pressure(tp)
                message.incref(1)
                buffer.put_nowait_enhanced(message, on_pressure_high=high, on_pressure_drop=drop)
            else:
                await self.wait_first(self.callback(message), self.suspend_flow.wait())
                if not self._delivering(generation):
                    return
                if self._seeks != seeks:
                    # delivered: the rest of the set follows it
                    read_offset[tp] = offset
                    await self._seek_back(pending, seeks, generation)
                    return
            # 4. the partition's read offset
            read_offset[tp] = offset
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
                if not self._delivering(generation):
                    return
                if self._seeks != seeks:
                    await self._seek_back(pending, seeks, generation)
                    return

    async def _seek_back(self, rest: Iterator[tuple[TP, Any]], seeks: int, generation: int) -> None:
        """A seek came since the set was fetched: undo the fetch of its ``rest`` (module doc).

        Each partition ``rest`` holds records of is sought to where the last seek since
        ``seeks`` put it, or, if none moved it, to its first record in ``rest``. Nothing
        if a rebalance came (the set was read in ``generation``): its recovery seeks them.
        """
        await self._seeks_done.wait()
        first: dict[TP, int] = {}
        for tp, record in rest:
            first.setdefault(tp, record.offset)
        if not first or not self._delivering(generation):
            return
        targets = seek_back_targets(first, self._sought, seeks, self.assignment())
        for tp, to in targets.items():
            self.log.dev("seek %r back to %r: fetched before a seek", tp, to)
            await self.seek(tp, to)

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

    def _on_pressure_full(self, tp: TP) -> None:
        """A partition's buffer pressure is high: the sensor, then Faust's ``on_buffer_full``.

        The fetched records' partitions are aiokafka's; the consumer's sets hold TPs.
        """
        tp = TP(tp.topic, tp.partition)
        self.app.sensors.on_topic_buffer_full(tp)
        self.on_buffer_full(tp)

    def _on_pressure_drop(self, tp: TP) -> None:
        """A partition's buffer pressure has dropped: Faust's ``on_buffer_drop``."""
        self.on_buffer_drop(TP(tp.topic, tp.partition))

    def _check_held(self) -> None:
        """Log the intake's partitions held out of the fetch too long (module doc)."""
        now = asyncio.get_running_loop().time()
        if now - self._held_checked < 1.0:
            return
        self._held_checked = now
        intake = cast(BatchApp, self.app).intake
        if intake is None:
            return
        bulk = set(intake.topics)
        active = self._get_active_partitions()
        held = (tp for tp in self.assignment() if tp.topic in bulk and tp not in active)
        for tp, seconds in self._held.observe(held):
            logger.warning(
                "%s[%s] held out of the fetch for %.0f s: paused=%s by_pressure=%s "
                "flow_active=%s rebalancing=%s buffered=%d/%d",
                tp.topic,
                tp.partition,
                seconds,
                tp in self._paused_partitions,
                tp in self._buffered_partitions,
                self.flow_active,
                self.app.rebalancing,
                len(intake.buffer),
                intake.buffer.maxsize,
            )


def seek_back_targets(
    first: Mapping[TP, int],
    sought: Mapping[TP, tuple[int, int]],
    seeks: int,
    assigned: Collection[TP],
) -> dict[TP, int]:
    """Where to seek the partitions of a set cut short by a seek (see the module doc).

    ``first``: each partition's first record not delivered; ``sought``: each partition's
    last seek (its number, its offset); ``seeks``: how many seeks had begun when the set
    was fetched. A partition sought since goes back to that seek's offset, any other to
    its first record not delivered; partitions no longer assigned are left out.
    """
    targets: dict[TP, int] = {}
    for fetched, offset in first.items():
        tp = TP(fetched.topic, fetched.partition)
        if tp not in assigned:
            continue
        last = sought.get(tp)
        targets[tp] = last[1] if last is not None and last[0] > seeks else offset
    return targets


def _chain(head: tuple[TP, Any], rest: Iterator[tuple[TP, Any]]) -> Iterator[tuple[TP, Any]]:
    """``head``, then ``rest``."""
    yield head
    yield from rest
