"""The watermark bookkeeping of incremental snapshots, against a model database and stream.

The property: whatever the interleaving of committed writes, writes still in progress,
stream progress and chunk reads, (1) the last image emitted per key is the table's
final row, and (2) a consumer that keeps, per key, only events above the last version
it kept (the streams stage's dedupe) ends with the table's final state as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.incremental import (
    ChunkPlan,
    ChunkRow,
    IncrementalSnapshots,
    ProgressLog,
    TxSnapshot,
    Watermark,
)
from cdc.signals import ResnapshotRequest

EXAMPLES = int(os.environ.get("ERPCRM_PROPERTY_EXAMPLES", "400"))
TABLE = ("public", "t")


def _snapshots(chunk_rows: int) -> IncrementalSnapshots[Any]:
    return IncrementalSnapshots(chunk_rows, lambda _table: ("id",))


@dataclass
class Model:
    """A one-table database with a WAL in commit order, and a capture reading it."""

    table: dict[int, int]
    chunk_rows: int
    lsn: int = 0
    wal: list[tuple[Any, ...]] = field(default_factory=list)
    in_progress: dict[int, tuple[int, int | None]] = field(default_factory=dict)
    position: int = 0
    emitted: list[tuple[int, int | None, int]] = field(default_factory=list)
    chunks: int = 0
    phase: str = "idle"
    plan: ChunkPlan | None = None

    def __post_init__(self) -> None:
        self.snap = _snapshots(self.chunk_rows)

    def tick(self) -> int:
        self.lsn += 1
        return self.lsn

    # -- the database -----------------------------------------------------------------

    def write(self, key: int, value: int | None) -> None:
        """A one-row transaction that commits at once (unless the row is locked)."""
        if key in self.in_progress:
            return
        record = self.tick()
        self._commit(key, value, record)

    def begin(self, key: int, value: int | None) -> None:
        """A transaction writes the row now and commits (or aborts) later."""
        if key not in self.in_progress:
            self.in_progress[key] = (self.tick(), value)

    def finish(self, key: int, commit: bool) -> None:
        if key in self.in_progress:
            record, value = self.in_progress.pop(key)
            if commit:
                self._commit(key, value, record)

    def _commit(self, key: int, value: int | None, record: int) -> None:
        if value is None and key not in self.table:
            return
        commit = self.tick()
        if value is None:
            del self.table[key]
        else:
            self.table[key] = value
        self.wal.append(("change", key, value, record, commit))

    def _watermark(self, chunk_id: str, kind: str) -> None:
        self.wal.append(("mark", Watermark("slot", chunk_id, kind), self.tick()))  # type: ignore[arg-type]

    # -- the capture ------------------------------------------------------------------

    def stream_step(self) -> bool:
        if self.position >= len(self.wal):
            return False
        item = self.wal[self.position]
        self.position += 1
        if item[0] == "change":
            _, key, value, record, _commit = item
            self.emitted.append((key, value, record))
            self.snap.changed(*TABLE, (key,))
        else:
            _, mark, commit = item
            closed = self.snap.watermark(mark, commit)
            if closed is not None:
                for key, value in closed.rows:
                    self.emitted.append((key, value, closed.version))
        return True

    def chunk_step(self) -> bool:
        """One step of a chunk: low watermark, read, high watermark (writes may interleave)."""
        if self.phase == "idle":
            plan = self.snap.plan()
            if plan is None:
                return False
            self.chunks += 1
            self.plan = plan
            self.snap.begin_chunk(f"c{self.chunks}", plan)
            self._watermark(f"c{self.chunks}", "open")
            self.phase = "low"
        elif self.phase == "low":
            assert self.plan is not None
            until = None
            if self.plan.needs_bounds:
                until = (str(max(self.table)),) if self.table else None
            rows = self._select(self.plan, until)
            self.snap.chunk_read(self.plan, rows, until=until)
            self.phase = "read"
        else:
            self._watermark(f"c{self.chunks}", "close")
            self.phase = "idle"
        return True

    def _select(self, plan: ChunkPlan, until: tuple[str, ...] | None) -> list[ChunkRow[Any]]:
        if plan.keys is not None:
            wanted = sorted(int(k["id"]) for k in plan.keys)
            keys = [k for k in wanted if k in self.table]
        else:
            low = -1 if plan.after is None else int(plan.after[0])
            bound = until if plan.needs_bounds else plan.until
            high = -1 if bound is None else int(bound[0])
            keys = sorted(k for k in self.table if low < k <= high)[: plan.limit]
        return [
            ChunkRow((k,), {"id": str(k)}, k in self.in_progress, (k, self.table[k])) for k in keys
        ]


actions = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 12), st.none() | st.integers(0, 1000)),
        st.tuples(st.just("begin"), st.integers(0, 12), st.none() | st.integers(0, 1000)),
        st.tuples(st.just("finish"), st.integers(0, 12), st.booleans()),
        st.tuples(st.just("stream"), st.integers(1, 5), st.none()),
        st.tuples(st.just("chunk"), st.none(), st.none()),
    ),
    max_size=120,
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.dictionaries(st.integers(0, 12), st.integers(0, 1000), max_size=25),
    chunk_rows=st.integers(1, 8),
    steps=actions,
)
def test_last_emitted_image_per_key_is_the_final_row(
    initial: dict[int, int], chunk_rows: int, steps: list[tuple[Any, Any, Any]]
) -> None:
    model = Model(dict(initial), chunk_rows)
    model.snap.enqueue(ResnapshotRequest("sig", *TABLE))
    for kind, a, b in steps:
        if kind == "write":
            model.write(a, b)
        elif kind == "begin":
            model.begin(a, b)
        elif kind == "finish":
            model.finish(a, b)
        elif kind == "stream":
            for _ in range(a):
                model.stream_step()
        else:
            model.chunk_step()
    for key in list(model.in_progress):
        model.finish(key, commit=key % 2 == 0)
    # drain: stream everything, read the remaining chunks (retries included)
    while model.stream_step() or model.chunk_step() or model.snap.pending:
        if not model.snap.window_pending and model.snap.pending and model.snap.plan() is None:
            raise AssertionError("a request is stuck")

    latest: dict[int, int | None] = {}
    kept: dict[int, tuple[int, int | None]] = {}
    for key, value, version in model.emitted:
        latest[key] = value
        if key not in kept or version > kept[key][0]:
            kept[key] = (version, value)
    final = {k: v for k, v in latest.items() if v is not None}
    assert final == model.table
    assert {k: v for k, (_, v) in kept.items() if v is not None} == model.table


def test_a_row_changed_inside_the_window_is_left_to_the_stream() -> None:
    snap = _snapshots(10)
    request = ResnapshotRequest("sig", *TABLE)
    snap.enqueue(request)
    plan = snap.plan()
    assert plan is not None
    assert plan.needs_bounds
    rows = [ChunkRow((k,), {"id": str(k)}, False, k) for k in (1, 2, 3)]
    snap.begin_chunk("c1", plan)
    snap.chunk_read(plan, rows, until=("3",))
    snap.changed(*TABLE, (2,))  # before the low watermark: the read is newer, kept
    assert snap.watermark(Watermark("slot", "other", "open"), 5) is None
    snap.watermark(Watermark("slot", "c1", "open"), 7)
    snap.changed(*TABLE, (3,))
    snap.changed("public", "other", (1,))
    closed = snap.watermark(Watermark("slot", "c1", "close"), 9)
    assert closed is not None
    assert (closed.rows, closed.version, closed.finished) == ([1, 2], 7, True)
    assert snap.pending == ()
    assert not snap.enqueue(request)


def test_locked_rows_are_read_again_after_their_writers() -> None:
    snap = _snapshots(2)
    snap.enqueue(ResnapshotRequest("sig", *TABLE, keys=({"id": "1"}, {"id": "2"})))
    plan = snap.plan()
    assert plan is not None
    assert plan.keys == ({"id": "1"}, {"id": "2"})
    snap.begin_chunk("c1", plan)
    snap.chunk_read(
        plan,
        [ChunkRow((1,), {"id": "1"}, True, 1), ChunkRow((2,), {"id": "2"}, False, 2)],
    )
    snap.watermark(Watermark("s", "c1", "open"), 3)
    closed = snap.watermark(Watermark("s", "c1", "close"), 4)
    assert closed is not None
    assert closed.rows == [2]
    assert not closed.finished
    snap.retry_after(1000)
    assert snap.plan(now_ms=1500) is None
    retry = snap.plan(now_ms=2000)
    assert retry is not None
    assert retry.keys == ({"id": "1"},)


def test_progress_restores_the_position_after_the_last_closed_chunk() -> None:
    snap = _snapshots(2)
    snap.enqueue(ResnapshotRequest("sig", *TABLE, where="x > 1"))
    plan = snap.plan()
    assert plan is not None
    rows = [ChunkRow((k,), {"id": str(k)}, False, k) for k in (4, 6)]
    snap.begin_chunk("c1", plan)
    snap.chunk_read(plan, rows, until=("9",))
    snap.watermark(Watermark("s", "c1", "open"), 1)
    snap.watermark(Watermark("s", "c1", "close"), 2)
    state = snap.state()
    plan_two = snap.plan()
    assert plan_two is not None
    snap.begin_chunk("c2", plan_two)
    snap.chunk_read(plan_two, rows[:1], until=None)  # pending: not in the state
    assert snap.state() == state
    restored = _snapshots(2)
    restored.restore(state)
    assert restored.plan() == ChunkPlan(
        ResnapshotRequest("sig", *TABLE, where="x > 1"), after=("6",), until=("9",), limit=2
    )
    assert not restored.enqueue(ResnapshotRequest("sig", *TABLE))


def test_progress_log_holds_confirmation_until_the_state_is_stored() -> None:
    log = ProgressLog()
    log.record(100, {"queue": ["a"]})
    assert log.confirmable(90) == 90
    assert log.confirmable(150) == 0
    assert log.at(150) == {"queue": ["a"]}
    assert log.at(99) is None
    log.record(120, {"queue": ["b"]})  # never below an earlier entry
    assert log.at(101) == {"queue": ["a"]}
    log.stored(150)
    assert log.confirmable(150) == 150
    log.record(200, None)
    assert log.confirmable(250) == 150
    log.stored(250)
    assert log.at(300) is None
    assert log.at(10) is None  # below the stored LSN: the stored state
    assert log.confirmable(300) == 300


@pytest.mark.parametrize(
    ("snapshot", "xid", "running"),
    [
        ("100:105:100,103", 0, False),
        ("100:105:100,103", 103, True),
        ("100:105:100,103", 101, False),
        ("100:105:100,103", 105, True),
        ("100:105:100,103", 99, False),
        (f"{(1 << 32) + 5}:{(1 << 32) + 10}:", 12, True),  # a 32-bit id after wraparound
        (f"{(1 << 32) + 5}:{(1 << 32) + 10}:", 7, False),
        (f"{(1 << 32) + 5}:{(1 << 32) + 10}:", 0xFFFFFFF0, False),  # before it
    ],
)
def test_in_progress_in_a_snapshot(snapshot: str, xid: int, running: bool) -> None:
    assert TxSnapshot.parse(snapshot).in_progress(xid) is running


def test_watermarks_round_trip_and_other_messages_are_not_watermarks() -> None:
    mark = Watermark("erpcrm_erp", "c1", "close")
    assert Watermark.decode(mark.encode().encode()) == mark
    assert Watermark.decode(b"not json") is None
    assert Watermark.decode(b'{"slot": "s", "chunk": "c", "kind": "other"}') is None
