"""How long an event waits for a row it refers to, measured in the sink's progress.

An event whose reference the target does not have yet (a contact's customer, an order's
customer or product) is held and tried again with every batch, so it is applied as soon
as the referenced row is. Whether that row is merely on its way or will never come is
decided by what the sink has read and applied since, not by the wall clock: under a
backlog (the sink, the streams worker or a capture behind) a row committed before the
event may still be minutes away, and a wait in seconds would dead-letter an event whose
reference comes.

A wait (:class:`ReferenceWait`) goes through three stages:

1. **upstream**: until every change of the same source system committed before the
   waiting one (the referenced row's included) has been published. The sink knows it
   when it has read an event of that system committed after the waiting one (the
   streams stage decides a system's changes in commit order), or a decided horizon of
   that system past the waiting one's commit (:mod:`schemas.horizon`): the streams
   worker publishes it while it runs and has read the system's changes to their end,
   and the capture's heartbeats move it on while the source is quiet. A worker or a
   capture that is stopped or behind moves neither, and the stage goes on.
2. **backlog**: the high watermark of every partition the sink reads is noted then (the
   *mark*); the stage lasts until the sink has applied every partition still assigned
   to it up to its mark, so whatever was published before is applied (or held itself).
3. **counted**: the reference wait of wall time, for references that take a round trip
   (an id the target learns only once the other side has linked the row).

Then the event is dead-lettered as an unresolved reference. A pipeline behind for
``behind_max`` since the event was first held no longer holds the count back (stages 1
and 2 end): a reference that never comes is dead-lettered under a load that never ends
too, and a pipeline whose streams worker or capture is stopped does not keep the
event forever.

The row-clock wait (:func:`sinks.state.clock_wait_since`) has the same first two stages
for the target's *own* changes, kept for every row at once by :class:`CaughtUp`: how far
the sink is known to have applied every own change committed, from a decided horizon of
the target system whose backlog it has applied since.

Pure: no clock of its own, no Kafka; in memory only. A restarted sink reads its held
events again from the stored positions (which never pass them) and waits afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sinks.batch import SinkBatch, SinkEvent, TopicPartition

__all__ = ["CaughtUp", "ReadProgress", "ReferenceWait"]


@dataclass(slots=True)
class ReadProgress:
    """How far the sink has got: what its applied batches held.

    Attributes:
        committed_ms: per source system, the latest commit time of its events read.
        horizon_ms: per source system, the latest commit time its decided horizon
            had reached (every change committed up to it published).
        applied: per assigned partition, the offset after the last message of the
            batches accounted (or where the partition was assigned from).
        assigned: the partitions assigned (None: not known yet, every one counts).
    """

    committed_ms: dict[str, int] = field(default_factory=dict)
    horizon_ms: dict[str, int] = field(default_factory=dict)
    applied: dict[TopicPartition, int] = field(default_factory=dict)
    assigned: frozenset[TopicPartition] | None = None

    def assign(self, starts: Mapping[TopicPartition, int]) -> None:
        """The partitions now assigned, each with the offset it is read from.

        Partitions no longer assigned are forgotten: another process applies them, and
        a mark does not wait for them.
        """
        self.applied = dict(starts)
        self.assigned = frozenset(starts)

    def observe(self, batch: SinkBatch) -> None:
        """A batch the sink has applied (its held events included)."""
        committed = self.committed_ms
        latest: dict[str, int] = {}
        for event in batch:  # the leading fields, read as plainly as they are decoded
            record = event.record
            system, ts = record["source_system"], record["source_ts_ms"]
            if ts > latest.get(system, -1):
                latest[system] = ts
        for system, ts in latest.items():
            if ts > committed.get(system, -1):
                committed[system] = int(ts)
        for tp, offset in batch.next_offsets().items():
            if offset > self.applied.get(tp, -1):
                self.applied[tp] = offset

    def horizon(self, system: str, commit_ts_ms: int) -> None:
        """A decided horizon read: every change of ``system`` committed up to it is out."""
        if commit_ts_ms > self.horizon_ms.get(system, -1):
            self.horizon_ms[system] = commit_ts_ms

    def passed(self, system: str, committed_ms: int) -> bool:
        """Whether every change of ``system`` committed before ``committed_ms`` is published.

        That is, an event of it committed later was read, or its horizon went past.
        """
        known = max(self.committed_ms.get(system, -1), self.horizon_ms.get(system, -1))
        return known > committed_ms

    def reached(self, mark: Mapping[TopicPartition, int]) -> bool:
        """Whether every partition of ``mark`` still assigned is applied up to it."""
        assigned = self.assigned
        return all(
            self.applied.get(tp, -1) >= offset
            for tp, offset in mark.items()
            if assigned is None or tp in assigned
        )


@dataclass(slots=True)
class ReferenceWait:
    """A held key's wait for a reference (module doc).

    Attributes:
        system: the source system of the event waiting.
        committed_ms: its commit time there.
        first: when it was first held (the runner's clock, seconds).
        mark: the high watermarks noted at the end of stage 1 (None: still in it).
        since: when stage 3 began (None: not yet).
    """

    system: str
    committed_ms: int
    first: float
    mark: dict[TopicPartition, int] | None = None
    since: float | None = None

    @classmethod
    def start(cls, events: Iterable[SinkEvent], now: float) -> ReferenceWait:
        """The wait of a key whose ``events`` are held for a reference, from ``now``."""
        latest = max(events, key=lambda e: e.source_ts_ms)
        return cls(latest.source_system, latest.source_ts_ms, now)

    def advance(
        self,
        progress: ReadProgress,
        now: float,
        marks: Callable[[], Mapping[TopicPartition, int]],
        behind_max: float,
    ) -> None:
        """Move on to the next stage as far as ``progress`` allows.

        Args:
            progress: what the sink has applied.
            now: the runner's clock (seconds).
            marks: the high watermarks of the assigned partitions (called at the end
                of stage 1 only).
            behind_max: how long after ``first`` stages 1 and 2 end whatever the
                progress.
        """
        if self.since is not None:
            return
        behind = now - self.first < behind_max
        if self.mark is None:
            if behind and not progress.passed(self.system, self.committed_ms):
                return
            self.mark = dict(marks())
        if behind and not progress.reached(self.mark):
            return
        self.since = now

    def expired(self, now: float, wait: float) -> bool:
        """Whether stage 3 has lasted ``wait`` seconds: the reference is not coming."""
        return self.since is not None and now - self.since >= wait


@dataclass(slots=True)
class CaughtUp:
    """How far the sink has applied one system's changes, known from its decided horizon.

    ``through_ms``: every change of ``system`` committed up to this commit time that was
    published is applied (read in a batch the sink accounted for); -1 while not known.
    It moves in the reference wait's first two stages: a decided horizon of the system
    read (every change committed up to it is published), then the high watermarks of
    the assigned partitions noted (the *mark*) and applied up to. A horizon that does not
    move (a streams worker or a capture stopped or behind) moves nothing.

    Attributes:
        system: the source system followed.
        through_ms: see above.
        pending: the horizon whose mark is still being applied, with that mark.
    """

    system: str
    through_ms: int = -1
    pending: tuple[int, dict[TopicPartition, int]] | None = None

    def advance(
        self, progress: ReadProgress, marks: Callable[[], Mapping[TopicPartition, int]]
    ) -> int:
        """Move on as far as ``progress`` allows; return :attr:`through_ms`.

        Args:
            progress: what the sink has applied, and the horizons it has read.
            marks: the high watermarks of the assigned partitions (called once per
                horizon taken, not per call).
        """
        if self.pending is None:
            horizon = progress.horizon_ms.get(self.system, -1)
            if horizon <= self.through_ms:
                return self.through_ms
            self.pending = (horizon, dict(marks()))
        horizon, mark = self.pending
        if progress.reached(mark):
            self.through_ms = max(self.through_ms, horizon)
            self.pending = None
        return self.through_ms
