"""Buffer-pressure callbacks of the intake's partitions, valid for one assignment.

The intake buffer (:class:`streams.intake.IntakeBuffer`) takes a partition out of the
fetch through its pressure callbacks: past the high-pressure size ``high`` calls the
consumer's ``on_buffer_full(tp)`` (the partition leaves the fetch, only what was fetched
for it is still delivered); once the buffer has drained, ``drop`` calls
``on_buffer_drop(tp)`` (it is fetched again). The buffer calls ``high`` once per ``drop``,
keyed by the ``drop`` callable.

A rebalance pauses every partition, clears the buffer and resumes the partitions only
after it has sought them back to their committed offsets (:mod:`streams.recovery`).
Callbacks made before it must not act after it: a ``drop`` left pending in the buffer
would put a partition the rebalance paused back into the fetch before the seek (its
records delivered from wherever the client stood), and, being the same callable, would
keep the buffer from ever calling the partition's new ``high``. So, as Faust's conductor
makes new callbacks for every assignment, :class:`PartitionPressure` hands out one pair
per partition per assignment; :meth:`PartitionPressure.revoke` makes every pair handed
out so far inert and takes the revoked partitions out of the consumer's pressure
bookkeeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["HeldPartitions", "PartitionPressure", "PressurePair"]

P = TypeVar("P")

PressurePair = tuple[Callable[[], None], Callable[[], None]]
"""``(on_pressure_high, on_pressure_drop)`` of one partition."""


class PartitionPressure(Generic[P]):
    """One pair of pressure callbacks per partition and assignment (module doc).

    ``on_full(tp)`` / ``on_drop(tp)`` are the consumer's ``on_buffer_full`` /
    ``on_buffer_drop``; a pair calls them only until the next :meth:`revoke`.
    """

    def __init__(self, on_full: Callable[[P], None], on_drop: Callable[[P], None]) -> None:
        self._on_full = on_full
        self._on_drop = on_drop
        self._pairs: dict[P, PressurePair] = {}
        self._round = 0

    def callbacks(self, tp: P) -> PressurePair:
        """``tp``'s pair for the current assignment (the same callables until a revoke)."""
        pair = self._pairs.get(tp)
        if pair is None:
            pair = self._pairs[tp] = self._make(tp, self._round)
        return pair

    def revoke(self, buffered: set[P], revoked: Iterable[P]) -> None:
        """A rebalance began: every pair handed out so far stops acting.

        ``buffered``: the consumer's partitions held out of the fetch by pressure (Faust's
        ``_buffered_partitions``, whose records already fetched are still delivered);
        the ``revoked`` ones leave it. Faust keeps them there across the rebalance, so a
        partition it pauses would still be delivered, and fetched again by the pair's
        ``drop``, before the recovery has sought it.
        """
        self._round += 1
        self._pairs.clear()
        buffered.difference_update(revoked)

    def _make(self, tp: P, made_in: int) -> PressurePair:
        on_full, on_drop = self._on_full, self._on_drop

        def on_pressure_high() -> None:
            if self._round == made_in:
                on_full(tp)

        def on_pressure_drop() -> None:
            if self._round == made_in:
                on_drop(tp)

        return on_pressure_high, on_pressure_drop


class HeldPartitions(Generic[P]):
    """Since when each partition has been held out of the fetch; which ones for too long.

    ``observe`` is called now and then with the partitions held at that moment (assigned,
    not fetched); it returns each one held for ``warn_after_s`` or more, with how long,
    once per ``warn_after_s`` while it stays held.
    """

    def __init__(self, warn_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.warn_after_s = warn_after_s
        self._clock = clock
        self._since: dict[P, float] = {}
        self._warned: dict[P, float] = {}

    def observe(self, held: Iterable[P]) -> list[tuple[P, float]]:
        """Record ``held``; the partitions held too long, with their seconds held."""
        now = self._clock()
        current = set(held)
        for tp in list(self._since):
            if tp not in current:
                del self._since[tp]
                self._warned.pop(tp, None)
        overdue: list[tuple[P, float]] = []
        for tp in current:
            since = self._since.setdefault(tp, now)
            if now - since >= self.warn_after_s and (
                now - self._warned.get(tp, since) >= self.warn_after_s
            ):
                self._warned[tp] = now
                overdue.append((tp, now - since))
        return overdue
