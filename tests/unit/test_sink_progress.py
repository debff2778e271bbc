"""The reference wait, measured in the sink's progress (sinks.progress)."""

from __future__ import annotations

from sinks.batch import SinkBatch, SinkEvent
from sinks.progress import CaughtUp, ReadProgress, ReferenceWait

CONTACTS = ("canonical.contact", 0)
CUSTOMERS = ("canonical.customer", 0)
WAIT = 30.0
BEHIND_MAX = 600.0


def ev(
    key: str,
    offset: int,
    ts: int,
    *,
    system: str = "crm",
    tp: tuple[str, int] = CONTACTS,
) -> SinkEvent:
    record = {"version": ts, "op": "upsert", "source_system": system, "source_ts_ms": ts}
    return SinkEvent(tp[0], tp[1], offset, tp[0].rsplit(".", 1)[-1], key, record)


class Marks:
    """High watermarks handed out, and how often they were asked for."""

    def __init__(self, marks: dict[tuple[str, int], int]) -> None:
        self.marks = marks
        self.calls = 0

    def __call__(self) -> dict[tuple[str, int], int]:
        self.calls += 1
        return dict(self.marks)


def test_progress_keeps_the_latest_commit_per_system_and_the_furthest_offsets() -> None:
    progress = ReadProgress()
    progress.observe(SinkBatch([ev("crm:a", 4, 1_000), ev("erp:b", 9, 5_000, system="erp")]))
    # A held event tried again, from further back: nothing goes backwards.
    progress.observe(SinkBatch([ev("crm:c", 2, 500)]))
    assert progress.committed_ms == {"crm": 1_000, "erp": 5_000}
    assert progress.applied == {CONTACTS: 10}


def test_progress_reached_only_when_every_assigned_partition_is_applied_up_to_the_mark() -> None:
    progress = ReadProgress()
    progress.assign({CONTACTS: 3, CUSTOMERS: 100})
    mark = {CONTACTS: 3, CUSTOMERS: 120}
    assert not progress.reached(mark)
    batch = SinkBatch()
    batch.advance(*CUSTOMERS, 119)
    progress.observe(batch)
    assert progress.reached(mark)


def test_progress_does_not_wait_for_partitions_assigned_elsewhere() -> None:
    progress = ReadProgress()
    progress.assign({CONTACTS: 50})
    assert progress.reached({CONTACTS: 50, CUSTOMERS: 900})
    assert not progress.reached({CONTACTS: 51})


def test_progress_an_idle_partition_is_reached_where_it_was_assigned_from() -> None:
    progress = ReadProgress()
    progress.assign({CONTACTS: 0, CUSTOMERS: 7})
    assert progress.reached({CONTACTS: 0, CUSTOMERS: 7})
    assert not progress.reached({CUSTOMERS: 8})


def test_wait_starts_from_the_latest_commit_of_the_key() -> None:
    wait = ReferenceWait.start([ev("crm:a", 4, 2_000), ev("crm:a", 6, 3_000)], now=7.0)
    assert (wait.system, wait.committed_ms, wait.first) == ("crm", 3_000, 7.0)
    assert wait.mark is None
    assert wait.since is None


def test_wait_does_not_count_while_the_source_is_not_read_past_the_event() -> None:
    """The streams (or a capture) behind: the referenced row may still be published."""
    progress = ReadProgress()
    progress.assign({CONTACTS: 0, CUSTOMERS: 0})
    waiting = ev("crm:a", 0, 2_000)
    progress.observe(SinkBatch([waiting]))
    wait = ReferenceWait.start([waiting], now=0.0)
    marks = Marks({CONTACTS: 1, CUSTOMERS: 0})
    # Hours of wall time would not do it; another system's later events do not either.
    progress.observe(SinkBatch([ev("erp:x", 0, 9_000, system="erp", tp=CUSTOMERS)]))
    for now in (1.0, 100.0, 500.0):
        wait.advance(progress, now, marks, BEHIND_MAX)
        assert not wait.expired(now, WAIT)
    assert wait.mark is None
    assert marks.calls == 0


def test_wait_counts_once_the_backlog_published_before_the_event_is_applied() -> None:
    progress = ReadProgress()
    progress.assign({CONTACTS: 0, CUSTOMERS: 0})
    waiting = ev("crm:a", 0, 2_000)
    progress.observe(SinkBatch([waiting]))
    wait = ReferenceWait.start([waiting], now=0.0)
    # 1. a later change of the same system is read: the watermarks are noted.
    progress.observe(SinkBatch([ev("crm:b", 1, 2_001)]))
    marks = Marks({CONTACTS: 2, CUSTOMERS: 800})
    wait.advance(progress, 40.0, marks, BEHIND_MAX)
    assert wait.mark == {CONTACTS: 2, CUSTOMERS: 800}
    assert wait.since is None
    # 2. the customers' backlog is applied slowly: no count while it is behind the mark.
    for now, applied in ((80.0, 300), (160.0, 799)):
        batch = SinkBatch()
        batch.advance(*CUSTOMERS, applied - 1)
        progress.observe(batch)
        wait.advance(progress, now, marks, BEHIND_MAX)
        assert not wait.expired(now + WAIT, WAIT)
    batch = SinkBatch()
    batch.advance(*CUSTOMERS, 799)
    progress.observe(batch)
    wait.advance(progress, 170.0, marks, BEHIND_MAX)
    assert wait.since == 170.0
    # 3. then the wall-clock wait.
    assert not wait.expired(199.0, WAIT)
    assert wait.expired(200.0, WAIT)
    assert marks.calls == 1


def test_wait_stops_being_held_back_after_behind_max() -> None:
    """A reference that never comes is dead-lettered under a load that never ends too."""
    progress = ReadProgress()
    progress.assign({CONTACTS: 0})
    wait = ReferenceWait.start([ev("crm:a", 0, 2_000)], now=0.0)
    marks = Marks({CONTACTS: 1_000_000})
    wait.advance(progress, BEHIND_MAX - 1, marks, BEHIND_MAX)
    assert wait.since is None
    wait.advance(progress, BEHIND_MAX, marks, BEHIND_MAX)
    assert wait.since == BEHIND_MAX
    assert wait.expired(BEHIND_MAX + WAIT, WAIT)


def test_wait_on_a_caught_up_sink_is_the_wall_clock_wait() -> None:
    """Nothing behind: a genuinely missing reference is dead-lettered after the wait."""
    progress = ReadProgress()
    progress.assign({CONTACTS: 0, CUSTOMERS: 40})
    waiting = ev("crm:a", 0, 2_000)
    progress.observe(SinkBatch([waiting, ev("crm:b", 1, 2_500)]))
    wait = ReferenceWait.start([waiting], now=1.0)
    wait.advance(progress, 1.5, Marks({CONTACTS: 2, CUSTOMERS: 40}), BEHIND_MAX)
    assert wait.since == 1.5
    assert not wait.expired(31.0, WAIT)
    assert wait.expired(31.5, WAIT)


def test_progress_keeps_the_furthest_horizon_per_system() -> None:
    progress = ReadProgress()
    progress.horizon("crm", 5_000)
    progress.horizon("crm", 4_000)  # an older record read after a newer one
    progress.horizon("erp", 1_000)
    assert progress.horizon_ms == {"crm": 5_000, "erp": 1_000}
    assert progress.passed("crm", 4_999)
    assert not progress.passed("crm", 5_000)  # only a horizon past the commit counts
    assert not progress.passed("other", 0)


def test_wait_on_a_quiet_source_counts_once_its_horizon_passes_the_event() -> None:
    """No later change comes: the decided horizon tells the sink everything before is out."""
    progress = ReadProgress()
    progress.assign({CONTACTS: 0, CUSTOMERS: 40})
    waiting = ev("crm:a", 0, 2_000)
    progress.observe(SinkBatch([waiting]))
    wait = ReferenceWait.start([waiting], now=0.0)
    marks = Marks({CONTACTS: 1, CUSTOMERS: 40})
    # The horizon has not reached the event's commit yet (the capture's last heartbeat
    # was before it): stage 1 goes on, for as long as it takes.
    progress.horizon("crm", 2_000)
    progress.horizon("erp", 9_000)  # another system's horizon says nothing about crm
    wait.advance(progress, 5.0, marks, BEHIND_MAX)
    assert wait.mark is None
    # The next heartbeat, decided and published by the streams: stage 1 ends, nothing is
    # behind, and the wait counts from here.
    progress.horizon("crm", 7_000)
    wait.advance(progress, 7.0, marks, BEHIND_MAX)
    assert wait.mark == {CONTACTS: 1, CUSTOMERS: 40}
    assert wait.since == 7.0
    assert not wait.expired(36.9, WAIT)
    assert wait.expired(37.0, WAIT)


def test_wait_with_a_stopped_streams_worker_is_held_back_until_behind_max() -> None:
    """No horizon moves past the event and no later event comes: the reference may come."""
    progress = ReadProgress()
    progress.assign({CONTACTS: 0})
    waiting = ev("crm:a", 0, 2_000)
    progress.observe(SinkBatch([waiting]))
    progress.horizon("crm", 1_500)  # the last horizon the worker published before it stopped
    wait = ReferenceWait.start([waiting], now=0.0)
    marks = Marks({CONTACTS: 1})
    for now in (10.0, 100.0, BEHIND_MAX - 1):
        wait.advance(progress, now, marks, BEHIND_MAX)
        assert wait.mark is None
    wait.advance(progress, BEHIND_MAX, marks, BEHIND_MAX)
    assert wait.since == BEHIND_MAX


# ------------------------------------------------------------------ own changes applied


def test_caught_up_moves_nothing_while_no_horizon_of_the_system_is_read() -> None:
    """A stopped streams worker or capture: no horizon, so nothing is known applied."""
    progress = ReadProgress()
    progress.assign({CONTACTS: 0})
    own = CaughtUp("erp")
    marks = Marks({CONTACTS: 0})
    # The other system's horizon and own events read say nothing about the horizon.
    progress.horizon("crm", 9_000)
    progress.observe(SinkBatch([ev("erp:x", 0, 8_000, system="erp")]))
    assert own.advance(progress, marks) == -1
    assert marks.calls == 0


def test_caught_up_reaches_a_horizon_once_its_backlog_is_applied() -> None:
    progress = ReadProgress()
    progress.assign({CONTACTS: 0, CUSTOMERS: 0})
    own = CaughtUp("erp")
    marks = Marks({CONTACTS: 0, CUSTOMERS: 300})
    progress.horizon("erp", 5_000)
    # 1. the horizon read: the watermarks are noted; 2. not applied up to them yet.
    assert own.advance(progress, marks) == -1
    assert own.pending == (5_000, {CONTACTS: 0, CUSTOMERS: 300})
    # A newer horizon meanwhile does not move the mark further away.
    progress.horizon("erp", 6_000)
    marks.marks = {CONTACTS: 0, CUSTOMERS: 900}
    batch = SinkBatch()
    batch.advance(*CUSTOMERS, 298)
    progress.observe(batch)
    assert own.advance(progress, marks) == -1
    batch.advance(*CUSTOMERS, 299)
    progress.observe(batch)
    assert own.advance(progress, marks) == 5_000
    assert marks.calls == 1
    # The newer horizon is taken next, with the watermarks of then.
    assert own.advance(progress, marks) == 5_000
    assert own.pending == (6_000, {CONTACTS: 0, CUSTOMERS: 900})
    assert marks.calls == 2


def test_caught_up_on_an_idle_sink_reaches_a_horizon_at_once() -> None:
    progress = ReadProgress()
    progress.assign({CONTACTS: 4})
    own = CaughtUp("erp")
    progress.horizon("erp", 7_000)
    assert own.advance(progress, Marks({CONTACTS: 4})) == 7_000
    assert own.pending is None
    # A horizon that does not move (a stopped worker) moves nothing more.
    assert own.advance(progress, Marks({CONTACTS: 4})) == 7_000
