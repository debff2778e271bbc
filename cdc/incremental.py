"""Incremental snapshots: re-reading rows in chunks while streaming, the watermark way.

This is the bookkeeping of DBLog's watermark algorithm, as Debezium's incremental
snapshots use it; pure (no database, Kafka or clock). The capture worker drives it:

1. A request (:class:`~cdc.signals.ResnapshotRequest`, from a signal row) is queued.
2. When no chunk is pending, :meth:`IncrementalSnapshots.plan` says what to read next.
   The worker announces it (:meth:`~IncrementalSnapshots.begin_chunk`), writes a **low
   watermark** (a transactional logical-decoding message), reads the chunk (``ORDER BY``
   primary key, ``LIMIT`` the chunk size, in its own REPEATABLE READ READ ONLY
   transaction), writes a **high watermark**, and hands the rows to
   :meth:`~IncrementalSnapshots.chunk_read`: they wait in the chunk buffer.
3. The stream goes on. When it reaches the low watermark, the window opens
   (:meth:`IncrementalSnapshots.watermark`). Every change of the chunk's table that the
   stream meets while the window is open drops its key from the buffer
   (:meth:`IncrementalSnapshots.changed`): the streamed change is at least as new as
   what the chunk read.
4. At the high watermark the window closes and what is left in the buffer is emitted as
   ``op = "r"`` reads, then the next chunk is planned.

Versions. Downstream orders a row's events by ``source.lsn``. A read carries the low
watermark's commit LSN: above every change the read saw (they committed before the low
watermark, or inside the window, and then the key was dropped), and below every change
it did not see -- because a row that an uncommitted transaction had already written
when the chunk was read (its ``xmax`` in progress in the read's snapshot,
:meth:`TxSnapshot.in_progress`) is not emitted from this chunk but re-read later
("deferred"), once that writer is done. So no read ever carries a row image older than
a change emitted before it or a version above a change emitted after it.

Progress. :meth:`IncrementalSnapshots.state` is JSON: the queue and, for the running
request, the position after the last closed chunk. The worker stores it with the LSN in
the offsets topic (:class:`ProgressLog` says which state belongs to a confirmed LSN), so
a restarted capture resumes the running request after its last confirmed chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar

from cdc.signals import ResnapshotRequest

WATERMARK_PREFIX: Final = "erpcrm.watermark"
RETRY_INTERVAL_MS: Final = 1000
REMEMBERED_DONE: Final = 100

Row = TypeVar("Row")
KeyText = dict[str, str]
"""A primary key in text form: column -> value as PostgreSQL prints it."""

__all__ = [
    "RETRY_INTERVAL_MS",
    "WATERMARK_PREFIX",
    "ChunkPlan",
    "ChunkRow",
    "ClosedChunk",
    "IncrementalSnapshots",
    "ProgressLog",
    "TxSnapshot",
    "Watermark",
]


@dataclass(frozen=True, slots=True)
class Watermark:
    """A low (``open``) or high (``close``) watermark of one chunk of one capture."""

    slot: str
    chunk_id: str
    kind: Literal["open", "close"]

    def encode(self) -> str:
        """The logical message's content."""
        return json.dumps({"slot": self.slot, "chunk": self.chunk_id, "kind": self.kind})

    @classmethod
    def decode(cls, content: bytes) -> Watermark | None:
        """The watermark in a message's content; None if it is not one."""
        try:
            value = json.loads(content)
            kind = value["kind"]
            if kind not in ("open", "close"):
                return None
            return cls(str(value["slot"]), str(value["chunk"]), kind)
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class TxSnapshot:
    """A PostgreSQL snapshot (``pg_current_snapshot()``): which transactions it sees."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> TxSnapshot:
        """``"xmin:xmax:xip1,xip2"`` (64-bit transaction ids)."""
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def in_progress(self, xid32: int) -> bool:
        """Whether the 32-bit ``xid`` (a row's ``xmax``) was not finished for this snapshot.

        ``0`` is no transaction. The 32-bit id is widened to the 64-bit one nearest
        below ``xmax`` (ids are at most 2^31 apart). A multixact id (several lockers)
        may be taken for an unrelated transaction; that only defers a row needlessly.
        """
        if xid32 == 0:
            return False
        epoch_base = self.xmax & ~0xFFFFFFFF
        full = epoch_base | (xid32 & 0xFFFFFFFF)
        if full > self.xmax + (1 << 31):
            full -= 1 << 32
        elif full < self.xmax - (1 << 31):
            full += 1 << 32
        return full >= self.xmax or full in self.xip


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """What the next chunk reads.

    Either a range (``keys`` None): rows with key above ``after`` (None: from the
    start) and at most ``until`` (None: read it first, the table's highest key now, so
    rows inserted later, which the stream carries anyway, never prolong the request),
    in key order, at most ``limit``; or ``keys``: exactly those rows.
    """

    request: ResnapshotRequest
    after: tuple[str, ...] | None = None
    until: tuple[str, ...] | None = None
    keys: tuple[Mapping[str, str], ...] | None = None
    limit: int = 0

    @property
    def needs_bounds(self) -> bool:
        """The range's upper bound is not known yet (first chunk of a range)."""
        return self.keys is None and self.until is None


@dataclass(frozen=True, slots=True)
class ChunkRow(Generic[Row]):
    """One row a chunk read.

    ``key`` as the stream's changes name it, ``key_text`` its text form, ``locked``
    whether an unfinished transaction had written the row (then it is deferred), and
    ``row`` what the worker emits.
    """

    key: Hashable
    key_text: Mapping[str, str]
    locked: bool
    row: Row


@dataclass(frozen=True, slots=True)
class ClosedChunk(Generic[Row]):
    """A chunk whose high watermark was reached: emit ``rows`` at ``version``."""

    request: ResnapshotRequest
    rows: list[Row]
    version: int
    finished: bool
    """The chunk was the request's last one."""


@dataclass(slots=True)
class _Window(Generic[Row]):
    chunk_id: str
    plan: ChunkPlan
    rows: dict[Hashable, Row] = field(default_factory=dict)
    read: int | None = None
    """Rows the chunk read; None until it was read."""
    last_key: tuple[str, ...] | None = None
    locked: list[Mapping[str, str]] = field(default_factory=list)
    dropped: set[Hashable] = field(default_factory=set)
    """Keys changed in the window before the rows were read."""
    truncated: bool = False
    """The table was truncated in the window before the rows were read."""
    opened: bool = False
    version: int = 0


@dataclass(slots=True)
class _Running:
    """The running request's position (JSON-able)."""

    after: tuple[str, ...] | None = None
    until: tuple[str, ...] | None = None
    index: int = 0
    main_done: bool = False
    retry: list[Mapping[str, str]] = field(default_factory=list)
    retry_not_before_ms: int = 0


class IncrementalSnapshots(Generic[Row]):
    """The queue of re-snapshot requests, the running one's position and its open chunk.

    Not thread-safe; one capture worker drives it (see the module docstring). Requests
    run one at a time, in arrival order; a request whose signal id and table are
    already queued is ignored (a signal the stream replays after a restart).
    """

    def __init__(self, chunk_rows: int, key_columns: Callable[[str], Sequence[str]]) -> None:
        """``key_columns(table)``: a captured table's primary-key columns, in key order."""
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        self._chunk_rows = chunk_rows
        self._key_columns = key_columns
        self._queue: list[ResnapshotRequest] = []
        self._running = _Running()
        self._window: _Window[Row] | None = None
        self._done: list[tuple[str, str]] = []

    # -- requests ---------------------------------------------------------------------

    def enqueue(self, request: ResnapshotRequest) -> bool:
        """Queue ``request``; False when already queued or done lately.

        A signal the stream replays after a restart is so not carried out twice.
        """
        ident = (request.signal_id, request.collection)
        if ident in self._done or any((r.signal_id, r.collection) == ident for r in self._queue):
            return False
        self._queue.append(request)
        return True

    @property
    def pending(self) -> tuple[ResnapshotRequest, ...]:
        """Queued requests, the running one first."""
        return tuple(self._queue)

    @property
    def window_pending(self) -> bool:
        """A chunk was read and waits for its watermarks."""
        return self._window is not None

    # -- chunks -----------------------------------------------------------------------

    def plan(self, now_ms: int = 0) -> ChunkPlan | None:
        """The next chunk to read; None while one is pending, or nothing is to read now.

        Nothing is to read without a request, or when only rows that waited for their
        writers remain (read again every :data:`RETRY_INTERVAL_MS`).
        """
        if self._window is not None or not self._queue:
            return None
        request = self._queue[0]
        run = self._running
        n = self._chunk_rows
        if not run.main_done:
            if request.keys is not None:
                return ChunkPlan(request, keys=request.keys[run.index : run.index + n], limit=n)
            return ChunkPlan(request, after=run.after, until=run.until, limit=n)
        if now_ms < run.retry_not_before_ms:
            return None
        return ChunkPlan(request, keys=tuple(run.retry[:n]), limit=n)

    def begin_chunk(self, chunk_id: str, plan: ChunkPlan) -> None:
        """The chunk ``plan`` is about to be read: call before writing its low watermark."""
        if self._window is not None:
            raise RuntimeError("a chunk is already pending")
        self._window = _Window(chunk_id=chunk_id, plan=plan)

    def chunk_read(
        self,
        plan: ChunkPlan,
        rows: Sequence[ChunkRow[Row]],
        *,
        until: tuple[str, ...] | None = None,
    ) -> None:
        """The rows ``plan`` read (in key order), between its low and high watermark.

        ``until``: for a plan that :attr:`~ChunkPlan.needs_bounds`, the highest key found
        (None: no row matches, the request is done once the chunk closes).
        """
        window = self._window
        if window is None or window.plan is not plan or window.read is not None:
            raise RuntimeError("chunk_read without its begin_chunk")
        if plan.needs_bounds:
            self._running.until = until
        if not window.truncated:
            window.rows = {
                r.key: r.row for r in rows if not r.locked and r.key not in window.dropped
            }
        window.read = len(rows)
        if rows:
            window.last_key = _ordered(rows[-1].key_text, self._key_columns(plan.request.table))
        window.locked = [r.key_text for r in rows if r.locked]

    def chunk_failed(self) -> None:
        """The chunk could not be read (its watermarks may or may not exist): forget it."""
        self._window = None

    @property
    def chunk_id(self) -> str | None:
        """The pending chunk's id."""
        return None if self._window is None else self._window.chunk_id

    def watermark(self, mark: Watermark, commit_lsn: int) -> ClosedChunk[Row] | None:
        """The stream reached ``mark`` (in a transaction committing at ``commit_lsn``).

        A low watermark opens the pending chunk's window; a high one closes it and
        returns what to emit. Watermarks of other chunks (replayed after a restart, or
        a chunk given up) are ignored.
        """
        window = self._window
        if window is None or mark.chunk_id != window.chunk_id:
            return None
        if mark.kind == "open":
            window.opened = True
            window.version = commit_lsn
            return None
        if not window.opened or window.read is None:  # the worker reads before the high mark
            raise RuntimeError(f"chunk {window.chunk_id} closed before it opened and was read")
        self._window = None
        finished = self._advance(window)
        return ClosedChunk(
            window.plan.request, list(window.rows.values()), window.version, finished
        )

    def changed(self, schema: str, table: str, key: Hashable) -> None:
        """The stream met a change of ``key`` in ``schema.table``: drop it from an open window."""
        window = self._window
        if window is not None and window.opened and _same_table(window.plan, schema, table):
            window.rows.pop(key, None)
            if window.read is None:
                window.dropped.add(key)

    def truncated(self, schema: str, table: str) -> None:
        """The stream met a truncate of ``schema.table``: an open window keeps nothing."""
        window = self._window
        if window is not None and window.opened and _same_table(window.plan, schema, table):
            window.rows.clear()
            if window.read is None:
                window.truncated = True

    def _advance(self, window: _Window[Row]) -> bool:
        """Move the running request past ``window``; True when the request is done."""
        run = self._running
        plan = window.plan
        request = plan.request
        if not run.main_done:
            if plan.keys is not None:
                run.index += len(plan.keys)
                run.main_done = run.index >= len(request.keys or ())
            else:
                run.after = window.last_key or run.after
                run.main_done = (window.read or 0) < plan.limit or run.until is None
        else:
            run.retry = run.retry[len(plan.keys or ()) :]
        if window.locked:
            run.retry.extend(window.locked)
            run.retry_not_before_ms = 0
        if run.main_done and run.retry:
            return False
        if run.main_done:
            self.drop_running()
            return True
        return False

    def drop_running(self) -> ResnapshotRequest | None:
        """Finish (or give up) the running request; returns it."""
        if not self._queue:
            return None
        request = self._queue.pop(0)
        self._running = _Running()
        self._window = None
        self._done = [*self._done, (request.signal_id, request.collection)][-REMEMBERED_DONE:]
        return request

    def retry_after(self, now_ms: int) -> None:
        """Rows deferred for their writers are read again no earlier than a moment later."""
        if self._running.main_done and self._running.retry:
            self._running.retry_not_before_ms = now_ms + RETRY_INTERVAL_MS

    # -- progress ---------------------------------------------------------------------

    def state(self) -> dict[str, Any] | None:
        """The queue and the running request's position after its last closed chunk.

        JSON-able; None when nothing was ever asked. A pending chunk is not part of it;
        the requests done lately are (to ignore their signals when replayed).
        """
        if not self._queue and not self._done:
            return None
        run = self._running
        return {
            "done": [list(d) for d in self._done],
            "queue": [r.as_json() for r in self._queue],
            "after": None if run.after is None else list(run.after),
            "until": None if run.until is None else list(run.until),
            "index": run.index,
            "main_done": run.main_done,
            "retry": [dict(k) for k in run.retry],
        }

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Continue from :meth:`state`'s output (None: idle); a pending chunk is dropped."""
        self._window = None
        self._running = _Running()
        self._queue = []
        self._done = []
        if not state:
            return
        self._done = [(str(a), str(b)) for a, b in state.get("done", [])]
        self._queue = [ResnapshotRequest.from_json(r) for r in state["queue"]]
        after, until = state.get("after"), state.get("until")
        self._running = _Running(
            after=None if after is None else tuple(str(v) for v in after),
            until=None if until is None else tuple(str(v) for v in until),
            index=int(state.get("index", 0)),
            main_done=bool(state.get("main_done", False)),
            retry=[{str(c): str(v) for c, v in k.items()} for k in state.get("retry", [])],
        )


def _same_table(plan: ChunkPlan, schema: str, table: str) -> bool:
    return (plan.request.schema, plan.request.table) == (schema, table)


def _ordered(key: Mapping[str, str], columns: Sequence[str]) -> tuple[str, ...]:
    return tuple(key[c] for c in columns)


class ProgressLog:
    """Which incremental-snapshot state belongs to which confirmed LSN.

    The worker records the state after every transaction that changed it (a signal, a
    closed chunk) at that transaction's end LSN. :meth:`at` gives the state to store
    with a confirmed LSN; :meth:`confirmable` holds the LSN confirmed to PostgreSQL
    back while a state change at or below it is not stored yet, so after a crash the
    slot replays it (never a chunk emitted but forgotten, never a signal lost).
    """

    def __init__(self, state: Mapping[str, Any] | None = None, lsn: int = 0) -> None:
        self._entries: list[tuple[int, dict[str, Any] | None]] = [
            (lsn, None if state is None else dict(state))
        ]
        self._stored_lsn = lsn

    def record(self, lsn: int, state: Mapping[str, Any] | None) -> None:
        """The state as of the transaction ending at ``lsn`` (never below an earlier one)."""
        lsn = max(lsn, self._entries[-1][0])
        self._entries.append((lsn, None if state is None else dict(state)))

    def at(self, lsn: int) -> dict[str, Any] | None:
        """The state after every transaction ending at or below ``lsn``.

        Below the stored state's LSN, that state: the slot then replays transactions
        it already counts, which is harmless (their signals are known, their chunks'
        watermarks no longer match, their rows were acknowledged).
        """
        found = self._entries[0][1]
        for entry_lsn, state in self._entries:
            if entry_lsn > lsn:
                break
            found = state
        return found

    def stored(self, lsn: int) -> None:
        """The state :meth:`at` ``lsn`` is durably stored; older entries are dropped."""
        self._stored_lsn = max(self._stored_lsn, lsn)
        keep = [e for e in self._entries if e[0] > self._stored_lsn]
        self._entries = [(self._stored_lsn, self.at(self._stored_lsn)), *keep]

    def unstored(self, lsn: int) -> bool:
        """Whether a state change at or below ``lsn`` is not stored yet."""
        return any(self._stored_lsn < e < lsn + 1 for e, _ in self._entries)

    def confirmable(self, acked: int) -> int:
        """What may be confirmed to PostgreSQL, Kafka having acknowledged up to ``acked``."""
        return min(acked, self._stored_lsn) if self.unstored(acked) else acked
