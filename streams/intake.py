"""How raw messages enter the streams worker: whole batches, without Faust's per-event stream.

Faust's consumer fetches, and the messages of :class:`InputTopics` (the ``process``
path's channel) go into its :class:`IntakeBuffer` (Faust's own message objects, not
decoded: the topics are read as raw bytes): a fetched set at a time from
:class:`streams.fetch.BatchConsumer`, or one at a time from Faust's conductor, whose
side of the buffer is the same.
:class:`BatchIntake` takes them from there a batch at a time and hands each batch to the
worker whole. Faust's stream loop is left out: no ``Event`` per message, no stream
iteration, no per-event processor, merge and sensor calls; what that loop does for the
consumer's bookkeeping is done here once per message, with Faust's own calls
(:class:`ConsumerOffsets`).

Order and safety, per batch (the worker's steps 1-3 are those of
:class:`streams.app.StreamRunner`):

0. the batch is taken: up to ``batch_size`` messages in the order the conductor
   delivered them (each partition in offset order), waiting at most ``linger`` for the
   batch to fill once its first message is in. Messages read before the last rebalance
   (another consumer generation) are left out: their partitions were revoked, and the
   consumer reads them again from the committed offsets. The rest are tracked as
   started in Faust's consumer, as its stream does, so a rebalance waits for them
   (``stream_wait_empty``);
1.-3. the worker decides the batch, publishes its outputs and waits for every
   acknowledgement, then commits its state;
4. only then is every message of the batch acknowledged through Faust's consumer
   (``Message.ack``: its reference count, then ``Consumer.ack``); Faust's commit loop
   commits each partition's acknowledged prefix, so no offset beyond what the state
   holds is ever committed. A batch that fails is never acknowledged (the worker stops).

Backpressure, as Faust's stream buffer does it: when the buffer holds more than
``maxsize / 1.25`` messages, the conductor's pressure callback takes the message's
partition out of the fetch (``Consumer.on_buffer_full``) and it comes back once the
buffer is down to ``0.4 * maxsize`` (``on_buffer_drop``); a full buffer makes the
conductor wait. Nothing is dropped. On a rebalance Faust clears the buffer
(``flow_control``), as it clears its streams' queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast

import faust
from faust.types import Message

__all__ = [
    "BatchIntake",
    "ConsumerOffsets",
    "FaustOffsets",
    "InputTopics",
    "IntakeBuffer",
    "current",
]

T = TypeVar("T")

PRESSURE_HIGH_RATIO = 1.25
"""Above ``maxsize / PRESSURE_HIGH_RATIO`` buffered, a partition is taken out of the fetch."""
PRESSURE_DROP_RATIO = 0.40
"""At or below ``maxsize * PRESSURE_DROP_RATIO`` buffered, fetching resumes."""


class IntakeBuffer(Generic[T]):
    """A bounded FIFO between Faust's conductor and :class:`BatchIntake`.

    The conductor's side is the part of Faust's ``FlowControlQueue`` it uses: ``full``,
    ``put_nowait_enhanced`` (with the partition's pressure callbacks) and ``put`` (waits
    while full); ``clear`` is called by Faust's ``flow_control`` on a rebalance. The
    intake's side is :meth:`take`. One taker at a time.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.pressure_high_size = max(1, math.floor(maxsize / PRESSURE_HIGH_RATIO))
        self.pressure_drop_size = math.floor(maxsize * PRESSURE_DROP_RATIO)
        self._items: deque[T] = deque()
        self._pressed: set[Callable[[], None]] = set()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._roomers: deque[asyncio.Future[None]] = deque()
        self._clears = 0
        self._want = 0
        self._taker: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def qsize(self) -> int:
        """How many messages are buffered."""
        return len(self._items)

    def full(self) -> bool:
        """Whether a put has to wait."""
        return len(self._items) >= self.maxsize

    def empty(self) -> bool:
        """Whether nothing is buffered."""
        return not self._items

    def put_nowait_enhanced(
        self,
        value: T,
        *,
        on_pressure_high: Callable[[], None],
        on_pressure_drop: Callable[[], None],
    ) -> bool:
        """Append ``value`` even if full; returns whether this put raised the pressure.

        Past the high-pressure size, ``on_pressure_high`` is called once per
        ``on_pressure_drop`` (once per partition) until the buffer has drained.
        """
        raised = False
        if on_pressure_drop not in self._pressed and len(self._items) >= self.pressure_high_size:
            self._pressed.add(on_pressure_drop)
            on_pressure_high()
            raised = True
        self._append(value)
        return raised

    async def put(self, value: T) -> None:
        """Append ``value``, waiting while the buffer is full (cancelled by :meth:`clear`)."""
        while len(self._items) >= self.maxsize:
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(room)
            await room
        self._append(value)

    async def room(self) -> bool:
        """Wait until a put would not wait: True; False if the buffer was cleared meanwhile.

        A clear means a rebalance or a resume: what was fetched before it is read again,
        so a message waiting for room must not be put in after it.
        """
        clears = self._clears
        while len(self._items) >= self.maxsize:
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._roomers.append(room)
            await room
            if self._clears != clears:
                return False
        return self._clears == clears

    def clear(self) -> None:
        """Drop everything buffered and every waiting put (a rebalance began)."""
        self._items.clear()
        self._clears += 1
        while self._putters:
            self._putters.popleft().cancel()
        self._wake_roomers()

    def take_nowait(self, most: int) -> list[T]:
        """Remove and return up to ``most`` of the oldest values."""
        items = self._items
        n = min(most, len(items))
        taken = [items.popleft() for _ in range(n)]
        self._room_freed()
        return taken

    async def take(self, most: int, linger_s: float) -> list[T]:
        """Up to ``most`` values: waits for the first, then at most ``linger_s`` for ``most``.

        Returns at once when ``most`` are buffered; may return fewer (none if the buffer
        was cleared meanwhile).
        """
        if not self._items:
            await self._arrival(1)
        if len(self._items) < most:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival(most), linger_s)
        return self.take_nowait(most)

    def _append(self, value: T) -> None:
        self._items.append(value)
        taker = self._taker
        if taker is not None and len(self._items) >= self._want and not taker.done():
            taker.set_result(None)

    async def _arrival(self, count: int) -> None:
        """Wait until ``count`` values are buffered."""
        if len(self._items) >= count:
            return
        taker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._taker, self._want = taker, count
        try:
            await taker
        finally:
            self._taker = None

    def _wake_roomers(self) -> None:
        roomers = self._roomers
        while roomers:
            room = roomers.popleft()
            if not room.done():
                room.set_result(None)

    def _room_freed(self) -> None:
        """After a take: wake the waiting puts, and end the pressure once drained."""
        putters = self._putters
        while putters and len(self._items) < self.maxsize:
            room = putters.popleft()
            if not room.done():
                room.set_result(None)
        if len(self._items) < self.maxsize:
            self._wake_roomers()
        if self._pressed and len(self._items) <= self.pressure_drop_size:
            pressed, self._pressed = self._pressed, set()
            for on_pressure_drop in pressed:
                on_pressure_drop()


class InputTopics(faust.Topic):
    """The topics the worker reads: the raw topics, then the control topic.

    Registered with Faust's conductor as a subscriber of its own (no stream iterates
    it): the conductor's messages go, undecoded, into :attr:`buffer` (``queue``, for the
    conductor). Declaring it creates only the control topic (one partition); the
    captures create the raw topics with their own partitioning. Faust declares it before
    it subscribes.
    """

    def __init__(self, app: faust.App, *, buffer: IntakeBuffer[Message], **kwargs: Any) -> None:
        # the conductor uses the part of Faust's queue IntakeBuffer has
        super().__init__(app, queue=cast(Any, buffer), is_iterator=True, **kwargs)
        self.buffer = buffer

    def _compile_decode(self) -> None:
        """No per-message decoding: the message goes to the buffer as Faust read it."""

    async def decode(self, message: Message, *, propagate: bool = False) -> Any:
        """The message itself (keys and values are raw bytes; no ``Event`` is made)."""
        return message

    async def declare(self) -> None:
        """Create the control topic (the last of :attr:`topics`) if it does not exist."""
        control = self.app.topic(self.topics[-1], partitions=1, internal=True)
        await control.declare()


class ConsumerOffsets(Protocol):
    """The consumer's bookkeeping of messages: started, then done (committable)."""

    def started(self, messages: Sequence[Message]) -> None:
        """``messages`` are being processed: a rebalance waits for them."""
        ...

    def done(self, messages: Sequence[Message]) -> None:
        """``messages`` are processed: their offsets may be committed."""
        ...


class FaustOffsets:
    """:class:`ConsumerOffsets` through Faust's consumer, as its stream loop does per event.

    Started: tracked in the consumer (``Consumer.track_message``: pending for
    ``wait_empty``, the ``on_message_in`` sensors) and the partition's stream inbound
    time set, which Faust's livelock detector reads. Done: ``Message.ack`` (one
    reference each, taken by the conductor), whose last reference marks the offset
    acknowledged in the consumer (``Consumer.ack``); then the ``on_message_out``
    sensors.
    """

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def started(self, messages: Sequence[Message]) -> None:
        """Track every message not yet tracked, as Faust's stream does when it takes one."""
        app = self._app
        track = app.consumer.track_message
        acks_enabled_for = app.topics.acks_enabled_for
        inbound = app.monitor.stream_inbound_time
        now = time.monotonic()
        for message in messages:
            if not message.tracked and acks_enabled_for(message.topic):
                message.tracked = True
                track(message)
            inbound[message.tp] = now

    def done(self, messages: Sequence[Message]) -> None:
        """Acknowledge every message, in order: its offset may be committed."""
        app = self._app
        consumer = app.consumer
        on_message_out = app.sensors.on_message_out
        for message in messages:
            if message.ack(consumer):
                on_message_out(message.tp, message.offset, message)


def current(messages: Iterable[Message], generation: int) -> list[Message]:
    """The messages read in consumer generation ``generation`` (older ones are read again)."""
    return [message for message in messages if message.generation_id == generation]


class FlowControl(Protocol):
    """Faust's ``app.flow_control``: suspended while a rebalance is under way."""

    def is_active(self) -> bool:
        """Whether messages may be processed."""
        ...

    async def acquire(self) -> None:
        """Wait until the flow is resumed."""
        ...


class BatchIntake:
    """Takes batches from an :class:`IntakeBuffer` and hands each to the worker (module doc)."""

    def __init__(
        self,
        buffer: IntakeBuffer[Message],
        offsets: ConsumerOffsets,
        flow: FlowControl,
        generation: Callable[[], int],
        *,
        batch_size: int,
        linger_s: float,
    ) -> None:
        self.buffer = buffer
        self.offsets = offsets
        self.flow = flow
        self.generation = generation
        self.batch_size = batch_size
        self.linger_s = linger_s

    async def next_batch(self) -> list[Message]:
        """The next batch of current messages, tracked as started; never empty."""
        while True:
            await self.flow.acquire()
            taken = await self.buffer.take(self.batch_size, self.linger_s)
            if not self.flow.is_active():
                continue  # a rebalance began: the partitions are read again after it
            batch = current(taken, self.generation())
            if batch:
                self.offsets.started(batch)
                return batch

    async def run(self, handle: Callable[[Sequence[Message]], Awaitable[None]]) -> None:
        """Hand every batch to ``handle``, then acknowledge it; runs until cancelled.

        ``handle`` returns once the batch's outputs are acknowledged and its state
        committed; if it raises, the batch stays unacknowledged and the error propagates.
        """
        while True:
            # 0. take a batch (current generation only), tracked as started;
            batch = await self.next_batch()
            # 1.-3. decide, publish and wait for every ack, commit state;
            await handle(batch)
            # 4. only then acknowledge it: Faust's commit loop may commit its offsets.
            self.offsets.done(batch)
