"""The read horizon: how far the worker has read its sources, the clock waits are measured on.

A record waits for what may still come (a transaction's ``END`` or missing change, a
reference, a snapshot order's last line) for a while, then it is released or
dead-lettered. Measured in wall time, a worker draining a backlog gives up on things
that are merely further back in another partition: Kafka hands over the partitions at
their own paces (the single partition of a transaction topic falls behind the many of
the table topics), so a transaction's ``END`` may be read a minute after its changes.

So every wait is measured against the read horizon instead: the production time
(``ts_ms`` of the change or transaction record) of the oldest record read in a stretch
between ticks, never later than the wall clock, never going back. While the worker reads
a backlog it is the backlog's time; a stretch with no record read means the worker has
caught up, and the horizon is the wall clock. A stretch lasts at least
``min_stretch_ms``: a tick that follows the last one at once (the next part of a round,
see :meth:`streams.processor.StreamProcessor.round_unfinished`) does not end it, or an
empty moment between two batches of a backlog would pass for having caught up.

A deadline ``D`` (set as "wall clock when registered + wait") has passed once the
horizon reaches ``D``: every partition that delivered records has been read past the
moment the waiting record was read, plus the wait. After a (re)start the horizon is
unknown (0) until a first stretch has been seen, from the first tick on (the records
read before it count in it). Pure: no clock of its own, no I/O; in memory only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ReadHorizon", "produced_ms"]


def produced_ms(envelope: Mapping[str, Any]) -> int | None:
    """When the capture produced a change or transaction record (its ``ts_ms``), if known."""
    value = envelope.get("ts_ms")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ReadHorizon:
    """The read horizon (see the module docstring)."""

    def __init__(self, min_stretch_ms: int = 1_000) -> None:
        self._min_stretch_ms = min_stretch_ms
        self._horizon_ms = 0
        self._oldest_ms: int | None = None
        self._started_ms: int | None = None
        """When the current stretch began (None: none yet, after a start)."""

    @property
    def horizon_ms(self) -> int:
        """How far the sources have been read, ms since the epoch (0: not known yet)."""
        return self._horizon_ms

    def observe(self, produced: int | None) -> None:
        """A source record read (not a tick, not a replay), produced at ``produced``."""
        if produced is not None and (self._oldest_ms is None or produced < self._oldest_ms):
            self._oldest_ms = produced

    def tick(self, now_ms: int) -> int:
        """A tick at wall time ``now_ms``: end the stretch if it is long enough; the horizon."""
        if self._started_ms is None:
            self._started_ms = now_ms
        elif now_ms - self._started_ms >= self._min_stretch_ms:
            reached = now_ms if self._oldest_ms is None else min(now_ms, self._oldest_ms)
            self._horizon_ms = max(self._horizon_ms, reached)
            self._started_ms = now_ms
            self._oldest_ms = None
        return self._horizon_ms
