"""Faust's table recovery, with the stream partitions resumed without losing records.

After every rebalance Faust restores the tables, then resumes the stream partitions:
``resume_partitions``, ``perform_seek`` (back to the committed offsets), and last
``flow_control.resume()``, which *clears every stream buffer*. The fetcher runs all
along, so whatever it delivered between the seek and that clear is dropped: the
consumer's position is already past it, the agent never sees it, it is never
acknowledged, and the committed offset stops there until the next restart. With a
backlog of a few thousand records that is most of a buffer (measured: a worker
restarted over 5,590 sequenced records decided 1,579 and then waited forever;
a bare Faust app with one table over 30,000 records saw 193).

:class:`StreamsRecovery` resumes them in the order that cannot lose a record:

1. pause the stream partitions (nothing more of them is delivered);
2. resume flow control, which clears the buffers: everything in them was fetched
   before the seek and is read again after it;
3. seek every partition back to its committed offset (to its beginning when it has
   none: the client leaves those where they are, possibly past records the pause
   dropped);
4. resume the stream partitions: the fetcher starts at the committed offsets.

:class:`StreamsTableManager` is the table manager that uses it (Faust's
``TableManager`` setting). Everything else is Faust's recovery unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from faust.tables import TableManager
from faust.tables.recovery import Recovery

__all__ = ["StreamsRecovery", "StreamsTableManager"]

_SETTLE_TURNS = 3
"""Event-loop turns after the clear, so that a delivery it cancelled (a fetcher
callback blocked on a full buffer) has recorded its read offset before the seek
resets it."""


class StreamsRecovery(Recovery):
    """Faust's ``Recovery`` that clears the stream buffers before the seek, not after."""

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """Resume the streams after a rebalance with no tables to recover."""
        app = self.app
        await app.on_rebalance_complete.send()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._resume(standbys_ready=True)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Resume the streams once the active tables are restored."""
        app = self.app
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        if app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again app id %s param %s",
                app.consumer_generation_id,
                generation_id,
            )
            return
        await self._resume(standbys_ready=not app.assignor.assigned_standbys())

    async def _resume(self, *, standbys_ready: bool) -> None:
        """Reopen the stream partitions, then tell Faust the rebalance is over."""
        app = self.app
        await self._reopen_stream_partitions()
        self.completed.set()
        await cast(Any, app)._fetcher.maybe_start()  # Faust's own, not in AppT
        self.tables.on_actives_ready()
        if standbys_ready:
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    async def _reopen_stream_partitions(self) -> None:
        """Clear the stream buffers, seek to the committed offsets, then resume fetching.

        Flow control is resumed here, once: every ``resume()`` clears the buffers, so
        none may follow the moment the stream partitions are fetched again.
        """
        app = self.app
        consumer = app.consumer
        streams = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
        consumer.pause_partitions(streams)
        # A partition under buffer pressure is still delivered while paused (Faust
        # delivers what it already fetched for it); stop that too.
        cast(Any, consumer)._buffered_partitions.difference_update(streams)
        app.flow_control.resume()  # clears the buffers: all of it is read again below
        consumer.resume_flow()
        for _ in range(_SETTLE_TURNS):
            await asyncio.sleep(0)
        if not streams:
            self.log.info("Resuming streams with empty assignment")
            return
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        if app.conf.consumer_auto_offset_reset == "earliest":
            # The client seeks only partitions with a committed offset above 0; one with
            # none may have been read ahead (and its records dropped while paused).
            committed = cast(Any, consumer)._committed_offset
            for tp in sorted(streams):
                if not committed.get(tp):
                    await consumer.seek(tp, 0)
        consumer.resume_partitions(streams)


class StreamsTableManager(TableManager):
    """Faust's table manager with :class:`StreamsRecovery` as its recovery service."""

    @property
    def recovery(self) -> StreamsRecovery:
        """The recovery service of this table manager."""
        if self._recovery is None:
            self._recovery = StreamsRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return cast(StreamsRecovery, self._recovery)
