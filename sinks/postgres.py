"""PostgresUpsertSink: apply batches of canonical events to one target database.

The I/O half of :mod:`sinks.base`; every decision is made by the pure modules
(:mod:`sinks.state`, :mod:`sinks.targets`, :mod:`sinks.batch`) and every statement is
built by :mod:`sinks.sql`. One :meth:`PostgresUpsertSink.write` is one database
transaction, in the order of :mod:`sinks.base`:

1. the batch collapses to the latest version per entity key (each changed field keeps
   the commit time of its own latest change);
2. the session carries the replication origin (set once per connection, so every
   transaction of the sink is tagged and its target's capture drops it: no echo);
3. the target's own changes in the batch are recorded in their rows' clocks (which
   fields a local edit changed, and when: see :mod:`sinks.state`);
4. per entity (customers and products before the orders and stock that refer to
   them), the keys' sync state is locked and each event is applied, skipped as stale,
   or skipped as a no-op;
5. missing references are filled from the target (an order's customer, a line's
   product, stock's product), the target rows are located and locked, strongest
   locator first (the crosswalk id, the id the sink gives rows it creates, then the
   business key: customer number, SKU), with the transaction that last wrote each
   (``xmin``) and its commit time; an event whose row has a local change its clock has
   not seen yet waits; an event whose row another live source record owns (its row
   owner, read with the row's clock: :func:`sinks.state.taken_by`) is a
   ``target_row_taken`` dead letter that writes nothing (:func:`_claimed`); the others
   are merged field by field (:func:`sinks.state.merge`);
6. per target row one event is written (the row's owner is then the record written):
   two source records meeting on one row in a batch, the later commit wins and the
   other is a ``target_row_contended`` dead letter that leaves nothing else (its
   conflicts, announcement and order lines are queued only for a winner:
   :func:`_settle_updates`);
   rows are updated or inserted with one multi-row statement each, order lines of
   created orders written, deletes that remove their record applied as the table's
   mode says (a soft delete carrying liveness is merged as an update is: an archive
   or delete competes by commit time, :meth:`TargetTable.removes`); the row clocks
   are stored and the conflicts audited; an update of an order whose lines the source
   changed since it last stated them queues that change as a dead letter
   (``order_lines_locked``: the target owns the lines of an order it holds, see
   :mod:`sinks.lines`), the order's own fields applied all the same;
7. the versions are recorded; 8. the offsets are stored; 9. COMMIT.

Events the target cannot take yet are held with every newer version of their key in the
batch: not recorded, and the stored offset of their partition stays at or below them. An
event *deferred* for a reference not there is dead-lettered by the runner after its
reference wait; an event *waiting* for the own event of a local change of its row
stops waiting on its own (``clock_wait_ms``). Events the target
refuses (a required value missing, a value with no target equivalent) are queued as
dead letters in the same transaction (an outbox the runner publishes from). An event
whose missing reference is a suspected duplicate held for an operator is *parked*
instead, with every later event of its key (``erpcrm_sync.parked``, in the same
transaction: :mod:`sinks.parking`); the runner applies them with :meth:`write`
(``unparked``) once the decision is carried out.

**Announcing created rows.** The capture drops the sink's own transactions, but a row
the sink creates holds news for the other side: the ids and numbers the target gave it
(the ERP's customer number and order name, the CRM's account id). Created rows of
tables with ``announce`` are queued in the same transaction; :meth:`announce` then
touches them (modification time) in a second session *without* the origin, so the
capture publishes them once, the streams link them in the crosswalk, and the other sink
writes the numbers back. That write is an update, tagged with the origin, so the
exchange ends there. The queue survives a crash; an announcement is at-least-once. A row
whose owned field the merge refused is announced the same way: its capture re-asserts
the fields the target owns, and the source system takes the owner's value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from typing import Any, Final, Literal

import orjson
import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format
from psycopg.rows import dict_row
from psycopg.sql import Composable

from schemas import json_text
from schemas.deadletter import (
    H_CONTEXT_PREFIX,
    H_ENTITY,
    H_ENTITY_KEY,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_ERROR_REASON,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_REPLAY_COUNT,
    H_STAGE,
)
from schemas.errors import (
    ConfigError,
    DecodeError,
    LinesLockedError,
    PermanentError,
    SyncError,
    TargetRowContendedError,
    TargetRowGoneError,
    TargetRowTakenError,
    UnresolvedReferenceError,
    ValidationError,
)
from schemas.mapping import Owner
from schemas.payload import never_noop, payload_hash, plain
from sinks import parking, sql
from sinks.base import Sink, WriteResult
from sinks.batch import SinkBatch, SinkEvent, TopicPartition, safe_offsets
from sinks.classify import wrap
from sinks.decisions import carried_over, finds_own_row
from sinks.lines import LinesSnapshot
from sinks.lines import compare as lines_compare
from sinks.lines import snapshot as lines_snapshot
from sinks.state import (
    LETTERED,
    Applied,
    Conflict,
    Decision,
    Merge,
    RowClock,
    RowOwner,
    changed_by,
    changed_times,
    clock_wait_since,
    decide,
    is_stale,
    last_local_change,
    merge,
    prior_digests,
    ready_clock,
    taken_by,
)
from sinks.targets import (
    KEY,
    LIVENESS,
    DeleteMode,
    Locator,
    TargetTable,
    from_row,
    is_id_field,
    to_child_rows,
    to_row,
)
from sinks.unique import UniqueKey, rows_to_park

__all__ = [
    "ENTITY_ORDER",
    "PostgresUpsertSink",
    "QueuedDeadLetter",
    "Unparked",
    "dead_letter_headers",
    "stored_event",
]

log = logging.getLogger(__name__)

ENTITY_ORDER: Final = ("customer", "product", "contact", "inventory", "sales_order", "invoice")
"""Entities referred to come first, so one batch can create a customer and its order."""

_MADE_ROW: Final = "_made_row"
"""The lookup entry holding a remembered row's key (:meth:`PostgresUpsertSink._remembered`)."""

Connect = Callable[..., psycopg.Connection[Any]]


@dataclass(frozen=True, slots=True)
class QueuedDeadLetter:
    """A dead letter waiting in the outbox (``erpcrm_sync.dead_letters``)."""

    id: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, str]


_DECIDED: Final = frozenset({"release", "released", "link", "linked"})
"""Suspect statuses that carry an operator's decision (:meth:`_settle_duplicate`)."""


@dataclass(frozen=True, slots=True)
class Unparked:
    """Parked events applied again (:mod:`sinks.parking`): their rows and suspects.

    ``ids``: the rows of ``erpcrm_sync.parked``, deleted in the batch's transaction;
    ``suspects``: per event (``id()`` of the :class:`SinkEvent`), the suspect it was
    parked for, ``(entity, key, status)`` (status None: the suspect is gone).
    """

    ids: tuple[int, ...]
    suspects: Mapping[int, tuple[str, str, str | None]]


@dataclass(slots=True)
class _Item:
    """One event being applied: its record (references filled) and target row.

    ``history``: the key's events of the batch newer than the stored version, in
    order (the last one is ``event``); ``changed``: per field the source changed in
    them, the commit time of its latest change.
    """

    event: SinkEvent
    record: dict[str, Any]
    stored: Applied | None
    digest: str
    history: tuple[SinkEvent, ...]
    changed: dict[str, int]
    current: dict[str, Any] | None = None
    pk: Any = None
    row: dict[str, Any] = field(default_factory=dict)
    linked: bool = False
    """A suspected duplicate written into its candidate: the candidate keeps its links."""
    merged: Merge | None = None
    """An update's field merge, decided before its row's writer is chosen (its conflicts
    and re-announcement are queued only for the writer: :func:`_settle_updates`)."""
    local_ms: int = 0
    """An update's row: the commit time of its last local change (for its row clock)."""
    decided: str | None = None
    """The suspect status the record goes by (:meth:`PostgresUpsertSink._earlier_decisions`)."""
    remembered: str | None = None
    """The row the sink made for the record, found by that alone (no locator found it: its
    link column was cleared in the target); announced once written, so the source hears
    of the row again (:attr:`~sinks.targets.TargetTable.remember`)."""


class _Statements:
    """The text of the sink's statements, rendered once per sink.

    The :mod:`sinks.sql` builders compose :mod:`psycopg.sql` trees, and rendering one
    walks and quotes it again: a few hundred microseconds a statement, several times
    a batch. The statements of a sink depend on its configuration only (and, for the
    row lookups, on which locators a batch uses), so each is rendered the first time.
    """

    def __init__(self) -> None:
        self._texts: dict[Hashable, bytes] = {}

    def __call__(
        self,
        cur: psycopg.Cursor[Any],
        build: Callable[..., Composable],
        *args: Hashable,
        **kwargs: Hashable,
    ) -> bytes:
        """``build(*args, **kwargs)`` rendered for ``cur``'s connection (cached)."""
        key = (build, args, tuple(kwargs.items()))
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = build(*args, **kwargs).as_bytes(cur)
        return text


_CLOCK_NAMES: Final = {name: name for name in sql.CLOCK_COLUMNS}
_JOINED_CLOCK_NAMES: Final = {name: sql.clock_column(name) for name in sql.CLOCK_COLUMNS}


def _owner(row: Mapping[str, Any], names: Mapping[str, str]) -> RowOwner | None:
    """A row's owner read with its clock (None: no record owns it yet)."""
    key = row[names["owner_key"]]
    return None if key is None else RowOwner(key, bool(row[names["owner_gone"]]))


def _times(text: str) -> Mapping[str, int]:
    """A row clock's ``field -> ms`` map from its ``jsonb`` text, exactly.

    orjson's reading is kept when it holds integers only (it reads those exactly; one
    beyond 64 bits comes back as a float): PostgreSQL's ``jsonb`` text is spaced unlike
    orjson's, so :func:`json_text.load`'s byte comparison never settles it and its walk
    looking for floats ran for every clock. Anything else is read by :func:`json_text.load`.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if type(value) is dict and all(type(v) is int for v in value.values()):
        return value
    exact: Mapping[str, int] = json_text.load(text)
    return exact


def _clock(row: Mapping[str, Any], names: Mapping[str, str]) -> RowClock:
    """A row clock read from ``row``; ``names``: its columns' names there (``written`` …)."""
    return RowClock(
        written=_times(row[names["written"]]),
        local=_times(row[names["local"]]),
        horizon_ms=row[names["horizon_ms"]],
        sink_xid=row[names["sink_xid"]],
        local_at_write_ms=row[names["local_at_write_ms"]],
    )


class _Clocks:
    """The row clocks one batch reads and writes (``erpcrm_sync.row_clock``), locked.

    With each clock, the row's owner (:class:`sinks.state.RowOwner`): read, locked and
    stored with it, in the same statements.
    """

    def __init__(self, schema: str, statements: _Statements) -> None:
        self._schema = schema
        self._sql = statements
        self._clocks: dict[tuple[str, str], RowClock | None] = {}
        self._owners: dict[tuple[str, str], RowOwner] = {}
        self._dirty: set[tuple[str, str]] = set()

    def load(self, cur: psycopg.Cursor[dict[str, Any]], entity: str, rows: Iterable[str]) -> None:
        """Read (and lock) the clocks of ``rows`` not read yet."""
        wanted = sorted({r for r in rows if (entity, r) not in self._clocks})
        if not wanted:
            return
        query = self._sql(cur, sql.row_clock_select, self._schema)
        cur.execute(query, (entity, wanted), binary=True)
        for r in cur.fetchall():
            key = (entity, r["row_id"])
            self._clocks[key] = _clock(r, _CLOCK_NAMES)
            if (owner := _owner(r, _CLOCK_NAMES)) is not None:
                self._owners[key] = owner
        for row_id in wanted:
            self._clocks.setdefault((entity, row_id), None)

    def take(self, entity: str, rows: Iterable[Mapping[str, Any]], pk: str) -> None:
        """Keep the clocks read (and locked) with their rows (:func:`sinks.sql.select_current`).

        A clock already loaded in this batch stays as it is (it may be changed already).
        """
        for r in rows:
            key = (entity, str(r[pk]))
            if key not in self._clocks:
                found = r[sql.ROW_CLOCK] is not None
                self._clocks[key] = _clock(r, _JOINED_CLOCK_NAMES) if found else None
                if found and (owner := _owner(r, _JOINED_CLOCK_NAMES)) is not None:
                    self._owners[key] = owner

    def get(self, entity: str, row_id: str) -> RowClock | None:
        """A loaded clock; None when the row has none yet."""
        return self._clocks.get((entity, row_id))

    def put(self, entity: str, row_id: str, clock: RowClock) -> None:
        """Replace a clock (stored by :meth:`save`)."""
        self._clocks[(entity, row_id)] = clock
        self._dirty.add((entity, row_id))

    def owner(self, entity: str, row_id: str) -> RowOwner | None:
        """A loaded row's owner; None when no record owns it yet."""
        return self._owners.get((entity, row_id))

    def own(self, entity: str, row_id: str, owner: RowOwner) -> None:
        """Set a row's owner, stored with its clock (which the caller puts too)."""
        self._owners[(entity, row_id)] = owner

    def save(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        """Store the changed clocks with one statement."""
        if not self._dirty:
            return
        rows = []
        for entity, row_id in sorted(self._dirty):
            c = self._clocks[(entity, row_id)] or RowClock()
            owner = self._owners.get((entity, row_id))
            rows.append(
                (
                    entity,
                    row_id,
                    c.written,
                    c.local,
                    c.horizon_ms,
                    c.sink_xid,
                    c.local_at_write_ms,
                    None if owner is None else owner.key,
                    owner is not None and owner.gone,
                )
            )
        cur.execute(self._sql(cur, sql.row_clock_upsert, self._schema), (sql.records(rows),))
        self._dirty.clear()


@dataclass(slots=True)
class _Outcome:
    applied: list[SinkEvent] = field(default_factory=list)
    stale: list[SinkEvent] = field(default_factory=list)
    noop: list[SinkEvent] = field(default_factory=list)
    skipped: list[SinkEvent] = field(default_factory=list)
    unknown: list[SinkEvent] = field(default_factory=list)
    deferred: list[SinkEvent] = field(default_factory=list)
    waiting: list[SinkEvent] = field(default_factory=list)
    dead: list[tuple[SinkEvent, SyncError]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    created: list[tuple[str, str]] = field(default_factory=list)
    reasserted: list[tuple[str, str]] = field(default_factory=list)
    held: list[_Item] = field(default_factory=list)
    recorded: list[tuple[SinkEvent, str]] = field(default_factory=list)
    announce: list[tuple[SinkEvent, str]] = field(default_factory=list)
    undecodable: set[int] = field(default_factory=set)
    """``id`` of the events whose rest did not decode (in ``dead``)."""
    parked: list[tuple[SinkEvent, tuple[str, str]]] = field(default_factory=list)
    """Events parked for the suspect ``(entity, key)`` they wait for, in order."""
    unparked: Unparked | None = None
    source_lines: list[tuple[SinkEvent, LinesSnapshot]] = field(default_factory=list)
    """Orders whose lines as the source states them are stored (:mod:`sinks.lines`)."""
    refused_parts: list[tuple[SinkEvent, SyncError]] = field(default_factory=list)
    """Applied events with a part dead-lettered (an order's locked lines)."""
    made: list[tuple[str, str, str]] = field(default_factory=list)
    """Rows created for source records, remembered: ``(entity, entity_key, row_id)``."""

    def complete(self, event: SinkEvent) -> bool:
        """Read the rest of a lazily decoded event; one that does not decode is dead (False).

        The runner dead-letters an event whose leading fields do not decode before the
        batch; the rest of one is read here, only for an event that proceeds, and one
        that fails goes to the dead-letter topic with the batch.
        """
        if id(event) in self.undecodable:
            return False
        try:
            event.complete()
        except DecodeError as exc:
            self.dead.append((event, exc))
            self.undecodable.add(id(event))
            return False
        return True


class _UuidTextLoader(Loader):
    """A ``uuid`` read as its canonical text: ids are text on the bus and in the state.

    The sink compares, keys and writes row ids as text; a :class:`uuid.UUID` per id read
    (psycopg's default) was then turned into text several times per row.
    """

    def load(self, data: Buffer) -> str:
        return bytes(data).decode("ascii")


class _UuidBinaryTextLoader(Loader):
    """The binary form of a ``uuid`` (16 bytes) as its canonical text."""

    format = Format.BINARY

    def load(self, data: Buffer) -> str:
        h = bytes(data).hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _lazy_digest(event: SinkEvent) -> Callable[[], str]:
    """The event's payload hash: the one it carries, or computed on the first call only.

    A closure, not ``functools.cache``: one is made per event, and building a cached
    wrapper costs more than most events need.
    """
    carried = event.digest()
    if carried is not None:
        return lambda: carried
    memo: list[str] = []
    record = event.record

    def digest() -> str:
        if not memo:
            memo.append(payload_hash(record))
        return memo[0]

    return digest


def _ms(value: Any) -> int | None:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return None


_PARAM: Final[Mapping[str, Callable[[Any], Any]]] = {
    "bigint": int,
    "integer": int,
    "uuid": str,
    "text": str,
}
"""A locator value's conversion per column type (none for the others)."""


def _param(value: Any, pg_type: str) -> Any:
    """A locator value as its column's type (ids travel as text on the bus)."""
    if value is None:
        return None
    convert = _PARAM.get(pg_type)
    return value if convert is None else convert(value)


def _text(value: Any) -> str | None:
    """A conflict value as the audit table stores it."""
    if value is None:
        return None
    if isinstance(value, Decimal | date | datetime):
        return json.dumps(plain(value))
    return str(value)


def dead_letter_headers(event: SinkEvent, error: SyncError, target: str) -> dict[str, str]:
    """The headers of a sink dead letter: the shared ones, the entity and its key.

    The origin is the event's canonical position (for a replayed event, the position
    it was first read at); a replayed event's dead letter also carries its replay count,
    and an error with a ``context`` (:class:`~schemas.errors.LinesLockedError`) its
    ``erpcrm.context.*`` headers.
    """
    topic, partition, offset = event.replayed_from or (event.topic, event.partition, event.offset)
    headers = {
        H_ERROR_CLASS: type(error).__name__,
        H_ERROR_MESSAGE: str(error)[:1000],
        H_ERROR_REASON: getattr(error, "reason", None) or type(error).__name__,
        H_STAGE: f"sinks.{target}",
        H_ORIGIN_TOPIC: topic,
        H_ORIGIN_PARTITION: str(partition),
        H_ORIGIN_OFFSET: str(offset),
        H_ENTITY: event.entity,
        H_ENTITY_KEY: event.key,
    }
    if event.replays:
        headers[H_REPLAY_COUNT] = str(event.replays)
    for name, value in getattr(error, "context", ()):
        headers[f"{H_CONTEXT_PREFIX}{name}"] = value
    return headers


class PostgresUpsertSink(Sink):
    """Applies canonical events to one PostgreSQL target (see module doc).

    Args:
        target: ``erp`` or ``crm``: the system written to.
        dsn: libpq URI of the sink role.
        tables: the target's tables by canonical entity (:func:`sinks.targets.build_tables`
            for the sink's direction).
        ownership: per entity, the owner of each canonical field.
        provided: per entity, the fields the source system's flows map; a field the
            source never provides (the CRM's industry, for the ERP) is neither compared
            nor overwritten on an existing row. An entity not in it: every field.
        topics: the canonical topics consumed (their stored positions are returned by
            :meth:`setup`).
        origin: the replication origin of the sink's sessions.
        schema: the sync-state schema.
        decisions: the schema where what is held or decided about suspects is kept
            beyond the sync state (:meth:`_earlier_decisions`).
        announce: announce rows the sink creates.
        duplicates: what becomes of a new record the streams flag as a suspected
            duplicate of a linked one (``duplicate_of``): ``hold`` it in
            ``erpcrm_sync.suspects`` for an operator, ``link`` it to that record, or
            ``create`` it anyway.
        clock_wait_ms: how long an event waits for the target's own events to tell the
            fields of a recent local change of its row, counted once the sink has read
            own events of the entity committed after that change; after that, the
            change counts for every field (:mod:`sinks.state`).
        clock_behind_max_ms: the longest own events that are behind (not yet past the
            local change, and the target's decided horizon not either) hold that count
            back.
        local_events: the entities the target system itself publishes (its own flows);
            for the others no own event will come, so a local change counts at once.
            None: every entity.
        connect: ``psycopg.connect`` (injectable for tests of connection loss).
    """

    def __init__(
        self,
        *,
        target: str,
        dsn: str,
        tables: Mapping[str, TargetTable],
        ownership: Mapping[str, Mapping[str, Owner]],
        topics: Sequence[str],
        provided: Mapping[str, frozenset[str]] | None = None,
        origin: str = "erpcrm_sink",
        schema: str = sql.SYNC_SCHEMA,
        decisions: str = sql.DECISIONS_SCHEMA,
        announce: bool = True,
        duplicates: Literal["hold", "link", "create"] = "hold",
        clock_wait_ms: int = 60_000,
        clock_behind_max_ms: int = 600_000,
        local_events: Collection[str] | None = None,
        connect: Connect = psycopg.connect,
    ) -> None:
        self.target = target
        self._dsn = dsn
        self._tables = dict(tables)
        self._ownership = ownership
        self._provided = provided
        self._topics = tuple(topics)
        self._origin = origin
        self._schema = schema
        self._decisions = decisions
        self._announce = announce
        self._clock_wait_ms = clock_wait_ms
        self._local_events = None if local_events is None else frozenset(local_events)
        self._clock_behind_max_ms = clock_behind_max_ms
        self._waiting: dict[tuple[str, str], tuple[int, int | None]] = {}
        """Rows an event waits for the clock of: since when it waits, and since when
        that wait counts (target clock, ms; :func:`sinks.state.clock_wait_since`)."""
        self._own_seen_ms = -1
        """The latest commit time of the target's own events read, of any entity (the
        streams stage decides a system's changes in commit order)."""
        self._own_through_ms = -1
        """Every own change committed up to it is applied (:meth:`own_changes_applied`)."""
        self._duplicates = duplicates
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._plain: psycopg.Connection[Any] | None = None
        self._sql = _Statements()
        self._parked: dict[tuple[str, str], tuple[str, str]] = {}
        """The keys with parked events (as committed), and the suspect they wait for."""
        self._unique: dict[str, tuple[UniqueKey, ...]] = {}
        """Per entity, the unique keys of its target table (read at set-up)."""

    # ---------------------------------------------------------------- connections

    def _session(self) -> psycopg.Connection[Any]:
        """The origin-tagged session, (re)connected on demand."""
        if self._conn is None or self._conn.closed:
            conn = self._connect(self._dsn, autocommit=True, application_name="erpcrm-sink")
            conn.adapters.register_loader("uuid", _UuidTextLoader)
            conn.adapters.register_loader("uuid", _UuidBinaryTextLoader)
            try:
                conn.execute(sql.origin_create(), (self._origin, self._origin))
                conn.execute(sql.origin_session_setup(), (self._origin,))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _untagged(self) -> psycopg.Connection[Any]:
        """A session without the origin (announcements only)."""
        if self._plain is None or self._plain.closed:
            self._plain = self._connect(
                self._dsn, autocommit=True, application_name="erpcrm-sink-announce"
            )
        return self._plain

    def _guard(self, action: Callable[[], Any]) -> Any:
        """Run ``action``; a database failure becomes Retriable/PermanentError.

        A retriable failure drops the connections, so the next call reconnects.
        """
        try:
            return action()
        except SyncError:
            raise
        except (psycopg.Error, OSError) as exc:
            error = wrap(exc)
            if not isinstance(error, PermanentError):
                self.close()
            raise error from exc

    # ---------------------------------------------------------------------- setup

    def setup(self) -> dict[TopicPartition, int]:
        """Create the sync schema and origin, check the tables; return stored positions."""
        return dict(self._guard(self._setup))

    def _setup(self) -> dict[TopicPartition, int]:
        conn = self._session()
        exists = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._schema,)
        ).fetchone()
        decisions_exist = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._decisions,)
        ).fetchone()
        statements = sql.create_sync_schema(self._schema)
        kept = sql.create_decisions(self._decisions)
        with conn.transaction():
            # CREATE SCHEMA needs CREATE on the database, even with IF NOT EXISTS: a
            # schema made by the owner for the sink role is left as it is.
            for statement in statements[1:] if exists else statements:
                conn.execute(statement)
            for statement in kept[1:] if decisions_exist else kept:
                conn.execute(statement)
        missing = []
        for table in self._tables.values():
            found = conn.execute(
                "SELECT has_table_privilege(%s, 'SELECT') AND has_table_privilege(%s, 'UPDATE')",
                (f"{table.schema}.{table.table}",) * 2,
            ).fetchone()
            if not found or not found[0]:
                missing.append(f"{table.schema}.{table.table}")
        if missing:
            raise ConfigError(
                f"the sink role may not read and write {', '.join(missing)}: grant it "
                "(erpcrm stack up does for the local stack)"
            )
        for table in self._tables.values():
            if table.remember:
                conn.execute(
                    sql.made_backfill(table.ref, table.pk_column, table.key_column, self._schema),
                    (table.entity, f"{table.direction.source}:", table.entity),
                )
        for entity, table in self._tables.items():
            found_keys = conn.execute(sql.unique_keys(), (table.schema, table.table))
            self._unique[entity] = tuple(
                UniqueKey(
                    str(name),
                    tuple(columns),
                    tuple(c for c, null in zip(columns, nullable, strict=True) if null),
                )
                for name, columns, nullable in found_keys
            )
        self._parked = {
            (str(e), str(k)): (str(se), str(sk))
            for e, k, se, sk in conn.execute(sql.parked_all(self._schema))
        }
        tracked = conn.execute("SELECT current_setting('track_commit_timestamp') = 'on'")
        if not (tracked.fetchone() or (False,))[0]:
            raise ConfigError(
                "the target database does not record commit times: set "
                "track_commit_timestamp = on (the field-level merge compares them)"
            )
        return self._positions()

    def positions(self) -> dict[TopicPartition, int]:
        """The stored next offset per ``(topic, partition)`` of the consumed topics."""
        return dict(self._guard(self._positions))

    def _positions(self) -> dict[TopicPartition, int]:
        conn = self._session()
        positions: dict[TopicPartition, int] = {}
        for topic in self._topics:
            for partition, next_offset in conn.execute(sql.offsets_select(self._schema), (topic,)):
                positions[(topic, int(partition))] = int(next_offset)
        return positions

    # ---------------------------------------------------------------------- write

    def write(
        self,
        batch: SinkBatch,
        *,
        store_offsets: bool = True,
        unparked: Unparked | None = None,
        carried_out: Sequence[int] = (),
    ) -> WriteResult:
        """Apply ``batch`` in one transaction (module doc); see :meth:`Sink.write`.

        Args:
            batch: the events.
            store_offsets: store the batch's positions (False while the runner isolates
                a failing event in parts of a batch; it stores them at the end).
            unparked: the batch is parked events (:meth:`ready_parked`): their rows are
                deleted in the transaction, and one whose reference still does not
                resolve is dead-lettered (:mod:`sinks.parking`).
            carried_out: the batch is the events of these suspects, released or linked
                (:meth:`pending_suspects`): they are marked carried out in the
                transaction, and an event of theirs that must wait (a reference, a row
                clock) is parked on its own suspect rather than returned to be held in
                memory. Its position was stored long ago: held in memory only, a
                restart would lose it.
        """
        result: WriteResult = self._guard(
            lambda: self._write(batch, store_offsets, unparked, carried_out)
        )
        return result

    def _write(
        self,
        batch: SinkBatch,
        store_offsets: bool,
        unparked: Unparked | None = None,
        carried_out: Sequence[int] = (),
    ) -> WriteResult:
        collapsed = batch.collapse()
        out = _Outcome(unparked=unparked)
        conn = self._session()
        # One pipeline around the transaction: BEGIN travels with the first statement,
        # the statements that read nothing back and COMMIT with the last round trip; a
        # statement whose rows are read waits for them (a flush, not a sync), so the
        # transaction's statements run in order as before.
        with conn.pipeline(), conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            clocks = _Clocks(self._schema, self._sql)
            if unparked is not None:
                cur.execute(sql.parked_delete(self._schema), (list(unparked.ids),))
            # The target's own changes first: they tell the fields of its local edits.
            self._observe_local(cur, batch, clocks, out)
            by_entity: dict[str, list[SinkEvent]] = {}
            for event in collapsed.latest:
                by_entity.setdefault(event.entity, []).append(event)
            order = sorted(
                by_entity, key=lambda e: ENTITY_ORDER.index(e) if e in ENTITY_ORDER else 99
            )
            for entity in order:
                self._apply_entity(cur, entity, by_entity[entity], batch, clocks, out)
            if unparked is not None:
                self._park_again(out, unparked)
            if carried_out:
                self._park_carried_out(out)
            # What is left writes state only and reads nothing back: it goes with
            # COMMIT, in one round trip.
            offsets = self._record_state(cur, batch, clocks, out, store_offsets)
            if carried_out:
                done = sql.suspects_carried_out(self._schema, self._decisions)
                cur.execute(done, (list(carried_out),))
        if unparked is not None:
            for event in batch:
                self._parked.pop(event.entity_key, None)
        for event, suspect in out.parked:
            self._parked[event.entity_key] = suspect
        return WriteResult(
            applied=tuple(out.applied),
            stale=tuple(out.stale),
            noop=tuple(out.noop),
            superseded=collapsed.superseded,
            conflicts=tuple(out.conflicts),
            offsets=offsets,
            skipped=tuple(out.skipped),
            unknown=tuple(out.unknown),
            deferred=tuple(out.deferred),
            waiting=tuple(out.waiting),
            dead=tuple(out.dead),
            created=tuple(out.created),
            held=tuple(i.event for i in out.held),
            parked=tuple(e for e, _ in out.parked),
            refused_parts=tuple(out.refused_parts),
            reasserted=tuple(out.reasserted),
        )

    def _record_state(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        batch: SinkBatch,
        clocks: _Clocks,
        out: _Outcome,
        store_offsets: bool,
    ) -> dict[TopicPartition, int]:
        """Queue the batch's sync state; return the offsets stored.

        Row clocks, conflicts, versions, announcements, suspects, the lines the source
        states for orders, dead letters and offsets. Nothing is read back: in the
        write's pipeline, the statements go with COMMIT.
        """
        clocks.save(cur)
        if out.conflicts:
            cur.execute(
                self._sql(cur, sql.conflicts_insert, self._schema),
                (sql.records(self._conflict_rows(out.conflicts)),),
            )
        if out.recorded:
            recorded = [(e.entity, e.key, e.version, d) for e, d in out.recorded]
            query = self._sql(cur, sql.applied_upsert, self._schema)
            cur.execute(query, (sql.records(recorded), LETTERED))
        if out.announce and self._announce:
            announced = [(e.entity, e.key, pk) for e, pk in out.announce]
            cur.execute(
                self._sql(cur, sql.announce_insert, self._schema), (sql.records(announced),)
            )
        if out.held:
            self._hold(cur, out.held)
        if out.parked:
            self._park(cur, out.parked)
        if out.made:
            cur.execute(self._sql(cur, sql.made_upsert, self._schema), (sql.records(out.made),))
        if out.source_lines:
            cur.execute(
                self._sql(cur, sql.source_lines_upsert, self._schema),
                (
                    sql.records(
                        (e.entity, e.key, json_text.dump(lines, sort_keys=True))
                        for e, lines in out.source_lines
                    ),
                ),
            )
        for event, error in (*out.dead, *out.refused_parts):
            self._queue_dead_letter(cur, event, error)
        held = [*out.deferred, *out.waiting]
        offsets = safe_offsets(batch.next_offsets(), held) if store_offsets else {}
        if offsets:
            self._store_offsets(cur, offsets)
        return offsets

    def _observe_local(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        batch: SinkBatch,
        clocks: _Clocks,
        out: _Outcome,
    ) -> None:
        """Record the fields and commit times of the target's own changes in row clocks.

        Every event of the batch counts, not only each key's latest: each names the
        fields its own change changed. The latest commit time of the own events read
        is kept (see :meth:`_row_clock`).
        """
        id_field = f"{self.target}_id"
        by_entity: dict[str, list[tuple[str, SinkEvent]]] = {}
        for event in batch:
            if event.source_system != self.target or not out.complete(event):
                continue
            self._own_seen_ms = max(self._own_seen_ms, event.source_ts_ms)
            table = self._tables.get(event.entity)
            row_id = event.record.get(id_field)
            if table is None or row_id is None:
                continue
            by_entity.setdefault(event.entity, []).append((str(row_id), event))
        for entity, seen in by_entity.items():
            clocks.load(cur, entity, (r for r, _ in seen))
            fields = _merged_fields(self._tables[entity])
            for row_id, event in seen:
                # A quarantined field is no change: a valid value from the other side
                # replaces the invalid one, and both systems converge on it.
                changed = changed_by(event.record, fields)
                clock = (clocks.get(entity, row_id) or RowClock()).seen_locally(
                    changed, event.source_ts_ms
                )
                if event.record.get("source_tx_id") is None:
                    # A snapshot read: where the sync starts from, not an edit the other
                    # side has not heard of (its next change there is no conflict).
                    clock = clock.synced(changed or fields, event.source_ts_ms)
                clocks.put(entity, row_id, clock)

    def _apply_entity(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        entity: str,
        events: list[SinkEvent],
        batch: SinkBatch,
        clocks: _Clocks,
        out: _Outcome,
    ) -> None:
        table = self._tables.get(entity)
        if table is None:
            out.skipped.extend(events)
            return
        taken: list[SinkEvent] = []
        for event in events:
            # What ``accept`` reads may lie beyond the leading fields.
            if (table.accept is not None or id(event) in out.undecodable) and not out.complete(
                event
            ):
                continue
            (taken if table.accepts(event.record) else out.skipped).append(event)
        if not taken:
            return
        query = self._sql(cur, sql.select_applied, self._schema)
        cur.execute(query, (entity, [e.key for e in taken]), binary=True)
        stored = {r["entity_key"]: Applied(r["version"], r["payload_hash"]) for r in cur.fetchall()}
        fields = _merged_fields(table)
        items: list[_Item] = []
        for event in taken:
            known = stored.get(event.key)
            if is_stale(known, event.version, event.replays):
                out.stale.append(event)  # a replay: decided by the version alone
                continue
            # Newer than the stored version: now the rest of the record is read. One
            # whose rest does not decode is dead-lettered; the key's older events in
            # the batch stay superseded by it (its dead letter can be replayed).
            if not out.complete(event):
                continue
            suspect = self._parked_for(event, out)
            if suspect is not None:
                # Behind the key's parked events: parked too, whatever it is.
                out.parked.extend((e, suspect) for e in self._history(batch, event, known, out))
                continue
            # Hashed (unless the event carries its hash) only when the version does not
            # settle it.
            digest = _lazy_digest(event)
            verdict = decide(
                known, event.version, digest, merged=never_noop(event.record), replays=event.replays
            )
            if verdict is Decision.SKIP_NOOP:
                out.noop.append(event)
                out.recorded.append((event, digest()))
            else:
                history = self._history(batch, event, known, out)
                record = {**event.record, KEY: event.key}
                changed = changed_times((e.record for e in history), fields)
                items.append(_Item(event, record, known, digest(), history, changed))
        if not items:
            return
        items = self._fill_references(cur, table, items, out)
        self._earlier_decisions(cur, table, items)
        self._locate(cur, table, items, clocks)
        if table.remember:
            items = self._remembered(cur, table, items, clocks, out)
        clocks.load(cur, entity, (str(i.pk) for i in items if i.current is not None))
        items = _claimed(table, items, clocks, out)
        # A soft delete carrying liveness is merged as an upsert (TargetTable.removes).
        deletes = [i for i in items if table.removes(i.record)]
        upserts = [i for i in items if not table.removes(i.record)]
        self._delete(cur, table, deletes, clocks, out)
        self._upsert(cur, table, upserts, clocks, out)

    @staticmethod
    def _history(
        batch: SinkBatch, event: SinkEvent, known: Applied | None, out: _Outcome
    ) -> tuple[SinkEvent, ...]:
        """The key's events of the batch newer than the stored version, up to ``event``.

        ``event`` is newer than the stored version and read whole (the callers make
        sure): the key's only event in the batch is its own history, without a look at
        versions (most keys of a batch have one event).
        """
        events = batch.events(event.entity_key)
        if len(events) == 1 and events[0] is event:
            return events
        floor = known.version if known is not None else -1
        history = tuple(e for e in events if floor < e.version <= event.version and out.complete(e))
        return tuple(sorted(history, key=lambda e: e.version)) or (event,)

    @staticmethod
    def _park_again(out: _Outcome, unparked: Unparked) -> None:
        """Parked events that must wait again (a row clock) stay parked, not in memory.

        Their suspect is decided: they are tried again with the next parked events.
        """
        for name in ("waiting", "deferred"):
            kept: list[SinkEvent] = []
            for event in getattr(out, name):
                suspect = unparked.suspects.get(id(event))
                if suspect is None:
                    kept.append(event)
                else:
                    out.parked.append((event, suspect[:2]))
            setattr(out, name, kept)

    @staticmethod
    def _park_carried_out(out: _Outcome) -> None:
        """Suspects' events that must wait once released or linked: parked, not in memory.

        Each is parked on its own suspect, marked carried out in the same transaction: the
        next parked events tried take it up, and it is applied, parked again (a row
        clock) or dead-lettered, saying why (:meth:`_unpark_in_vain`), once.
        """
        for name in ("waiting", "deferred"):
            out.parked.extend((e, (e.entity, e.key)) for e in getattr(out, name))
            setattr(out, name, [])

    def _parked_for(self, event: SinkEvent, out: _Outcome) -> tuple[str, str] | None:
        """The suspect an event's key has events parked for (None: none parked).

        The parked events being applied again in this batch no longer count: they are
        the batch's own, and go first.
        """
        suspect = self._parked.get(event.entity_key)
        if suspect is None or (out.unparked is not None and id(event) in out.unparked.suspects):
            return None
        return suspect

    # -- references -------------------------------------------------------------------

    def _fill_references(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        table: TargetTable,
        items: list[_Item],
        out: _Outcome,
    ) -> list[_Item]:
        """Fill missing reference ids from the target; defer items still missing one.

        One lookup per reference: every locator's values together, and per holder the
        strongest locator that found a row.
        """
        for ref in table.refs:
            holders: list[dict[str, Any]] = []
            for item in items:
                if table.removes(item.record):
                    continue
                if ref.lines:
                    lines = [dict(line) for line in item.record.get("lines") or ()]
                    item.record["lines"] = lines
                    holders.extend(line for line in lines if line.get(ref.field) is None)
                elif item.record.get(ref.field) is None:
                    holders.append(item.record)
            found = self._find(cur, ref.ref, [ref.column], ref.by, holders, lock=False)
            for holder, row in zip(holders, found, strict=True):
                if row is not None:
                    holder[ref.field] = str(row[ref.column])
        lacking = [
            i for i in items if not table.removes(i.record) and table.missing_references(i.record)
        ]
        waits = self._await_suspects(cur, table, lacking, out)
        kept: list[_Item] = []
        for item in items:
            if table.removes(item.record) or not table.missing_references(item.record):
                kept.append(item)
            elif (suspect := waits.get(id(item))) is not None:
                out.parked.extend((e, suspect) for e in item.history)
            elif out.unparked is not None and id(item.event) in out.unparked.suspects:
                self._unpark_in_vain(table, item, out)
            else:
                out.deferred.extend(item.history)
        return kept

    def _await_suspects(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        table: TargetTable,
        items: Sequence[_Item],
        out: _Outcome,
    ) -> dict[int, tuple[str, str]]:
        """Resolve missing references that name suspected duplicates (:mod:`sinks.parking`).

        A reference to a linked suspect is filled with its candidate; per item (``id``)
        still waiting for an undecided one (held by now, or in this batch), that suspect.
        """
        if not items:
            return {}
        lines = {ref.field: ref.lines for ref in table.refs}
        lookups: list[list[parking.Lookup]] = []
        for item in items:
            system = item.event.source_system
            lookups.append(
                [
                    parking.Lookup(
                        ref_field, lines.get(ref_field, False), [f"{system}:{v}" for _, v in found]
                    )
                    for ref_field, found in table.missing_lookups(item.record)
                ]
            )
        keys = sorted({k for found in lookups for lookup in found for k in lookup.keys})
        suspects: dict[str, parking.SuspectState] = {}
        if keys:
            cur.execute(sql.suspects_of(self._schema), (keys,))
            for r in cur.fetchall():
                suspects[r["entity_key"]] = parking.SuspectState(
                    r["entity"], r["entity_key"], r["status"], r["candidate"]
                )
        for held in out.held:  # held in this batch: stored with it
            key = held.event.key
            suspects[key] = parking.SuspectState(
                held.event.entity, key, "held", str(held.record["duplicate_of"])
            )
        waits: dict[int, tuple[str, str]] = {}
        for item, found in zip(items, lookups, strict=True):
            resolution = parking.resolve(found, suspects)
            item.record.update(resolution.fill)
            if resolution.park_on is not None:
                waits[id(item)] = resolution.park_on
        return waits

    def _unpark_in_vain(self, table: TargetTable, item: _Item, out: _Outcome) -> None:
        """Dead-letter a parked event whose suspect was decided and that still lacks a row."""
        assert out.unparked is not None
        entity, key, status = out.unparked.suspects[id(item.event)]
        described = [
            f"{ref_field} ({', '.join(f'{c}={v}' for c, v in found) or 'no value'})"
            for ref_field, found in table.missing_lookups(item.record)
        ]
        message = parking.waited_for(
            item.event.entity, item.event.key, (entity, key), status, " and ".join(described)
        )
        out.dead.append((item.event, UnresolvedReferenceError(message)))

    def _find(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        ref: sql.Table,
        columns: Sequence[str],
        locators: Sequence[Locator],
        records: Sequence[Mapping[str, Any]],
        *,
        lock: bool,
        clock: tuple[str, _Clocks] | None = None,
    ) -> list[dict[str, Any] | None]:
        """Per record, the row of ``ref`` its strongest locator finds (None: none does).

        One statement for the whole batch, whatever the number of locators: each
        record's values are looked up locator by locator, a weaker locator only for the
        records the stronger ones found nothing for (:func:`sinks.sql.select_current`),
        and with ``lock`` the rows found are locked and come with their row facts. A
        locator with ``dead`` finds live rows only. Records with the same values share
        one lookup. ``clock``: ``(entity, clocks)``: the rows' clocks are read (and
        locked) in the same statement, kept in ``clocks`` (``columns[0]`` is the primary
        key).
        """
        wanted = _locator_values(locators, records)
        used = [i for i in range(len(locators)) if any(f[i] is not None for f in wanted)]
        if not used:
            return [None] * len(records)
        # Per record, the position of its lookup (None: no value to look up).
        lookups: dict[tuple[Any, ...], int] = {}
        positions: list[int | None] = []
        every = len(used) == len(locators)
        for found in wanted:
            values = found if every else tuple(found[i] for i in used)
            if all(v is None for v in values):
                positions.append(None)
            else:
                positions.append(lookups.setdefault(values, len(lookups) + 1))
        keys = tuple(
            sql.Key(sql.Column(locators[i].column, locators[i].pg_type), locators[i].dead)
            for i in used
        )
        names = [*columns, *(k.column.name for k in keys), *(k.live for k in keys if k.live)]
        query = self._sql(
            cur,
            sql.select_current,
            ref,
            tuple(dict.fromkeys(names)),
            keys,
            lock=lock,
            row_facts=lock,
            clock=None if clock is None else (self._schema, columns[0]),
        )
        params: list[Any] = [sql.records(list(lookups))]
        if clock is not None:
            params.append(clock[0])
        cur.execute(query, params, binary=True)
        rows = cur.fetchall()
        if clock is not None:
            clock[1].take(clock[0], rows, columns[0])
        by_lookup: dict[int, dict[str, Any]] = {}
        for r in rows:
            by_lookup.setdefault(r[sql.ROW_LOOKUP], r)
        return [None if p is None else by_lookup.get(p) for p in positions]

    # -- locating ---------------------------------------------------------------------

    def _locate(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        table: TargetTable,
        items: list[_Item],
        clocks: _Clocks,
    ) -> None:
        """Find and lock each item's current row, strongest locator first, and its clock."""
        # A record held (or linked) by an earlier decision finds no row of its own: it
        # is held, or written into its candidate (_settle_duplicate).
        open_items = [i for i in items if i.current is None and finds_own_row(i.decided)]
        found = self._lock_rows(cur, table, table.locators, [i.record for i in open_items], clocks)
        for item, row in zip(open_items, found, strict=True):
            if row is not None:
                item.current = row
                item.pk = row[table.pk]

    def _lock_rows(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        table: TargetTable,
        locators: Sequence[Locator],
        records: Sequence[Mapping[str, Any]],
        clocks: _Clocks,
    ) -> list[dict[str, Any] | None]:
        """Per record, its row of ``table`` (as :meth:`_find` finds it), locked, with its clock."""
        columns = list(table.read_columns)
        if table.modified:
            columns.append(table.modified)
        return self._find(
            cur, table.ref, columns, locators, records, lock=True, clock=(table.entity, clocks)
        )

    def _remembered(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        table: TargetTable,
        items: list[_Item],
        clocks: _Clocks,
        out: _Outcome,
    ) -> list[_Item]:
        """Find the rows no locator found by the row the sink made for their record.

        A source record has one row, ever (:attr:`~sinks.targets.TargetTable.remember`):
        one whose link column was cleared in the target is still its record's, found
        here, locked, and written as any located row (its link put back). One deleted in
        the target is not made again: the event is a ``target_row_gone`` dead letter (a
        delete of its record has nothing to do, as for any row not found).
        Returns the items still to apply.
        """
        unfound = [i for i in items if i.current is None]
        if not unfound:
            return items
        query = self._sql(cur, sql.made_select, self._schema)
        cur.execute(query, (table.entity, [i.event.key for i in unfound]), binary=True)
        made = {str(r["entity_key"]): str(r["row_id"]) for r in cur.fetchall()}
        remembered = [i for i in unfound if i.event.key in made]
        if not remembered:
            return items
        to_pk = int if table.pk_type in ("bigint", "integer") else str
        found = self._lock_rows(
            cur,
            table,
            (Locator(table.pk, table.pk_type, lambda r: r[_MADE_ROW]),),
            [{_MADE_ROW: to_pk(made[i.event.key])} for i in remembered],
            clocks,
        )
        gone: set[int] = set()
        for item, row in zip(remembered, found, strict=True):
            row_id = made[item.event.key]
            if row is not None:
                item.current, item.pk, item.remembered = row, row[table.pk], row_id
                continue
            if table.removes(item.record):
                continue  # a delete of a record whose row is gone: nothing to do
            gone.add(id(item))
            target_row = f"{table.schema}.{table.table}.{table.pk}={row_id}"
            out.dead.append(
                (
                    item.event,
                    TargetRowGoneError(
                        f"target_row_gone: {item.event.entity} {item.event.key} made "
                        f"{target_row}, which is gone from the target; not made again",
                        (("target_row", target_row),),
                    ),
                )
            )
        return [i for i in items if id(i) not in gone]

    # -- deletes ----------------------------------------------------------------------

    def _delete(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        table: TargetTable,
        items: list[_Item],
        clocks: _Clocks,
        out: _Outcome,
    ) -> None:
        found = [i for i in items if i.current is not None]
        for item in items:
            (out.applied if item.current is not None else out.unknown).append(item.event)
            out.recorded.append((item.event, item.digest))
        if not found:
            return
        if table.delete is DeleteMode.IGNORE:
            # The row stays, its owner is gone: it gives the row up (:func:`taken_by`).
            for item in found:
                row_id = str(item.pk)
                clock = clocks.get(table.entity, row_id)
                owner = clocks.owner(table.entity, row_id)
                if clock is not None and owner is not None and owner.key == item.event.key:
                    clocks.own(table.entity, row_id, RowOwner(owner.key, gone=True))
                    clocks.put(table.entity, row_id, clock)
            return
        pks = sql.array(table.pk_type, (i.pk for i in found))
        if table.delete is DeleteMode.HARD:
            query = self._sql(cur, sql.delete_rows, table.ref, table.pk_column)
            cur.execute(query, (pks,), binary=True)
            return
        column, value = table.delete_flag
        cur.execute(
            self._sql(
                cur,
                sql.soft_delete_rows,
                table.ref,
                table.pk_column,
                column,
                value=value,
                returning=True,
                stamp=table.modified,
            ),
            (pks,),
            binary=True,
        )
        # Only a row the statement changed has the sink's transaction as its xmin.
        marked = {str(r[table.pk]): r[sql.ROW_XMIN] for r in cur.fetchall()}
        for item in found:
            assert item.current is not None
            row_id = str(item.pk)
            clock = clocks.get(table.entity, row_id) or RowClock()
            last_local = last_local_change(
                clock, item.current[sql.ROW_XMIN], item.current[sql.ROW_COMMIT_MS]
            )
            after = clock.after_write({}, xid=marked.get(row_id), last_local_ms=last_local)
            clocks.own(table.entity, row_id, RowOwner(item.event.key, gone=True))
            clocks.put(table.entity, row_id, after)

    # -- upserts ----------------------------------------------------------------------

    def _upsert(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        table: TargetTable,
        items: list[_Item],
        clocks: _Clocks,
        out: _Outcome,
    ) -> None:
        fields = self._fields(table)
        update_columns = table.written_columns(insert=False)
        # Per mapped column: whether it holds an id (a link, written when the event
        # has one) or a business field (written when the merge says so).
        kept = [
            (c.column, c.field, is_id_field(c.field)) for c in table.columns if c.field is not None
        ]
        # 1. Decide every item: its row, its values, its merge (one refused, held or
        # waiting is queued as such; nothing an update brings is queued yet). 2. Per
        # target row, choose the one written (_latest: another record's is a letter).
        # 3. Only then queue what the written ones bring: conflicts, announcements, lines.
        changing: list[_Item] = []
        creating: list[_Item] = []
        stated = self._source_lines(cur, table, [i for i in items if i.current is not None])
        for item in items:
            try:
                row = to_row(table, item.record)
            except ValidationError as exc:
                out.dead.append((item.event, exc))
                continue
            # Unlocated: a new record, or one an earlier decision holds or links (_locate).
            flagged = item.current is None and item.record.get("duplicate_of") is not None
            if flagged and not self._find_candidate(cur, table, item):
                out.deferred.extend(item.history)
                continue
            if flagged and not self._settle_duplicate(cur, table, item, clocks):
                out.held.append(item)
                continue
            if item.current is None:
                if table.update_only:
                    out.unknown.append(item.event)
                    out.recorded.append((item.event, item.digest))
                    continue
                item.row = row  # to_row makes just the columns an insert writes
                creating.append(item)
                continue
            current = from_row(table, item.current)
            clock, local_ms = self._row_clock(table, item, current, clocks, fields)
            if clock is None:
                out.waiting.extend(item.history)
                continue
            item.merged = decided = merge(
                table.entity,
                item.event.key,
                item.record,
                target=table.direction.target,
                ownership=self._ownership.get(table.entity, {}),
                fields=fields,
                changed=item.changed,
                current=current,
                clock=clock,
                prior=partial(prior_digests, (e.record for e in item.history), fields),
            )
            item.local_ms = local_ms
            # A column computed from the whole record (no field) is always current.
            writes = decided.writes
            for column, name, is_id in kept:
                if (not is_id and name not in writes) or (
                    is_id and (item.linked or item.record.get(name) is None)
                ):
                    row[column] = item.current.get(column)
            row.pop(table.pk, None)  # to_row's columns less the key: what an update writes
            item.row = row
            changing.append(item)
        updates = _settle_updates(table, changing, stated, out)
        locator = table.locators[0].column
        inserts = _contend(table, creating, locator, lambda i: str(i.row[locator]), out)
        if updates:
            columns = [sql.Column(c.column, c.pg_type) for c in update_columns]
            rows = list(updates.values())
            names = [c.name for c in columns]
            values = [[i.pk, *map(i.row.__getitem__, names)] for i in rows]
            self._park_rotated(cur, table, rows)
            query = self._sql(
                cur,
                sql.update_rows,
                table.ref,
                table.pk_column,
                tuple(columns),
                returning=(table.pk,),
                xmin=True,
                stamp=table.modified,
            )
            cur.execute(query, (sql.records(values),), binary=True)
            # Only a row the statement changed has the sink's transaction as its xmin.
            changed_rows = {str(r[table.pk]): r[sql.ROW_XMIN] for r in cur.fetchall()}
            for item in rows:
                assert item.merged is not None
                out.applied.append(item.event)
                out.recorded.append((item.event, item.digest))
                row_id = str(item.pk)
                clock = clocks.get(table.entity, row_id) or RowClock()
                if not item.linked:  # a linked duplicate's candidate keeps its owner
                    clocks.own(table.entity, row_id, _written_for(item))
                clocks.put(
                    table.entity,
                    row_id,
                    clock.after_write(
                        item.merged.written_at,
                        xid=changed_rows.get(row_id),
                        last_local_ms=item.local_ms,
                    ),
                )
        if inserts:
            xid = self._insert(cur, table, list(inserts.values()), out)
            for item in inserts.values():
                times = {f: item.changed[f] for f in fields if f in item.changed}
                clocks.own(table.entity, str(item.pk), _written_for(item))
                clocks.put(
                    table.entity,
                    str(item.pk),
                    RowClock().after_write(times, xid=xid, last_local_ms=0),
                )
        if table.lines is not None:
            self._insert_lines(cur, table, list(inserts.values()))
            out.source_lines.extend((i.event, _stated_lines(table, i)) for i in inserts.values())

    def _park_rotated(
        self, cur: psycopg.Cursor[dict[str, Any]], table: TargetTable, rows: Sequence[_Item]
    ) -> None:
        """Park the rows whose unique values other rows of the update take.

        A swap or a rotation: set NULL in the same transaction, the update then writes
        the final values (:mod:`sinks.unique`). No rotation, no statement.
        """
        parks = rows_to_park(
            self._unique.get(table.entity, ()),
            ((i.pk, i.current or {}, i.row) for i in rows),
        )
        for column, pks in parks.items():
            log.info(
                "sink %s: %s.%s: %d rows trade unique values in one batch; parked first",
                self.target,
                table.table,
                column,
                len(pks),
            )
            cur.execute(
                self._sql(cur, sql.park_unique, table.ref, table.pk_column, column),
                (sql.array(table.pk_type, pks),),
                binary=True,
            )

    # -- lines of orders the target owns ---------------------------------------------

    def _source_lines(
        self, cur: psycopg.Cursor[dict[str, Any]], table: TargetTable, items: Sequence[_Item]
    ) -> dict[str, LinesSnapshot]:
        """The lines the source last stated for the orders of ``items`` (by entity key).

        Read only for a table with lines and orders the target has; an order missing
        here has none stored yet (created before the sink kept them).
        """
        if table.lines is None or not items:
            return {}
        query = self._sql(cur, sql.source_lines_select, self._schema)
        cur.execute(query, (table.entity, sorted({i.event.key for i in items})), binary=True)
        return {r["entity_key"]: json_text.load(r["lines"]) for r in cur.fetchall()}

    def _settle_duplicate(
        self, cur: psycopg.Cursor[dict[str, Any]], table: TargetTable, item: _Item, clocks: _Clocks
    ) -> bool:
        """A new record flagged as a duplicate: create it, link it, or hold it (False).

        An operator's decision for the key (``released``: create; ``linked``: write into
        the candidate) comes first, then the ``duplicates`` policy. Linking locates the
        candidate row as the item's row; a candidate that is gone holds the record.
        """
        cur.execute(sql.suspects_decided(self._schema), (table.entity, [item.event.key]))
        decided = cur.fetchone()
        status = decided["status"] if decided is not None else item.decided
        if status in ("release", "released") or (status is None and self._duplicates == "create"):
            return True
        if status not in ("link", "linked") and self._duplicates != "link":
            return False
        candidate = item.record["duplicate_of"] if decided is None else decided["candidate"]
        columns = list(table.read_columns)
        by_pk = Locator(table.pk, table.pk_type, lambda r: r["pk"])
        [row] = self._find(cur, table.ref, columns, [by_pk], [{"pk": candidate}], lock=True)
        if row is None:
            return False
        item.current, item.pk, item.linked = row, row[table.pk], True
        clocks.load(cur, table.entity, [str(item.pk)])
        return True

    def _find_candidate(
        self, cur: psycopg.Cursor[dict[str, Any]], table: TargetTable, item: _Item
    ) -> bool:
        """Name a flagged record's candidate by its id in the target; False: not there yet.

        ``duplicate_of`` is the target's id, or ``<source system>:<id>``: a record of the
        source system being created in the target (the same customer typed twice before
        the first one's counterpart was linked). That one is the row the sink made for
        the record, found as an event of that key finds its row; until it is made, the
        flagged event waits like one whose reference is not there yet. An operator's
        decision for the key does not wait for it: released, no candidate is needed;
        linked, the decision names its own (:meth:`_settle_duplicate`).
        """
        of = str(item.record["duplicate_of"])
        system, colon, source_id = of.partition(":")
        if not colon or system != item.event.source_system:
            return True
        record = {KEY: of, f"{system}_id": source_id}
        [row] = self._find(cur, table.ref, [table.pk], table.locators, [record], lock=False)
        if row is None:
            cur.execute(sql.suspects_decided(self._schema), (table.entity, [item.event.key]))
            decided = cur.fetchone()
            return decided is not None and decided["status"] in _DECIDED
        item.record["duplicate_of"] = str(row[table.pk])
        return True

    def _earlier_decisions(
        self, cur: psycopg.Cursor[dict[str, Any]], table: TargetTable, items: Sequence[_Item]
    ) -> None:
        """Records held or decided as suspects before keep to that, whatever they match now.

        For a record of an entity the streams may flag (``duplicate_of``) that this sync
        state has never applied, the suspect of its key decides: this sync state's own,
        else the one kept in the decisions schema by any sync state before (a pipeline
        reset, a new sync schema, fresh streams state). Held (or released, or linked,
        and not carried out yet), the record is flagged as a duplicate of the suspect's
        candidate and its counterpart id is dropped, so its event is neither written
        into a record the streams now pair it with (a copy left unlinked, the merge of
        two copies) nor deleting it: it is held again, created, or written into the
        candidate (:meth:`_settle_duplicate`). Whether the streams flag it or pair it
        with a record now, a record held or linked is not located by its own locators
        either (:func:`sinks.decisions.finds_own_row`): a row its customer number (or
        the id the sink would give it) finds is not its own, and it never contends for
        one. A decision kept from before and not carried out then (``release``,
        ``link``) is held again for an operator. Released and carried out, the record
        flows as the streams decide it now. One statement per batch, for the keys this
        sync state never applied only.
        """
        fresh = [i for i in items if i.stored is None and "duplicate_of" in i.record]
        if not fresh:
            return
        query = self._sql(cur, sql.decisions_of, self._schema, self._decisions)
        cur.execute(query, ([i.event.key for i in fresh], table.entity, table.entity))
        found = {r["entity_key"]: r for r in cur.fetchall()}
        for item in fresh:
            row = found.get(item.event.key)
            status = None if row is None else carried_over(row["status"], own=row["own"])
            if row is None or status is None:
                continue
            item.record[f"{self.target}_id"] = None
            item.record["duplicate_of"] = row["candidate"]
            item.record["duplicate_rule"] = row["evidence"]
            item.decided = status

    def _hold(self, cur: psycopg.Cursor[Any], items: Sequence[_Item]) -> None:
        """Keep suspected duplicates for an operator (their latest event, with its bytes)."""
        events = [i.event for i in items]
        cur.execute(
            sql.suspects_hold(self._schema, self._decisions),
            (
                [e.entity for e in events],
                [e.key for e in events],
                [str(i.record["duplicate_of"]) for i in items],
                [i.record.get("duplicate_rule") for i in items],
                *_stored(events),
            ),
            binary=True,
        )

    def _park(
        self, cur: psycopg.Cursor[Any], parked: Sequence[tuple[SinkEvent, tuple[str, str]]]
    ) -> None:
        """Park events until their suspect is decided, in order (:mod:`sinks.parking`)."""
        events = [e for e, _ in parked]
        cur.execute(
            self._sql(cur, sql.parked_insert, self._schema),
            (
                [e.entity for e in events],
                [e.key for e in events],
                [s for _, (s, _) in parked],
                [k for _, (_, k) in parked],
                *_stored(events),
            ),
            binary=True,
        )

    @property
    def parked_records(self) -> int:
        """How many records (keys) have parked events, as committed."""
        return len(self._parked)

    def ready_parked(self, limit: int = 100) -> list[dict[str, Any]]:
        """Parked events whose suspect was carried out (or is gone): whole keys, in order.

        Rows as :func:`sinks.sql.parked_ready`; at most ``limit`` keys.
        """

        def run() -> list[dict[str, Any]]:
            if not self._parked:
                return []
            with self._session().cursor(row_factory=dict_row) as cur:
                cur.execute(sql.parked_ready(self._schema), (limit,))
                return list(cur.fetchall())

        result: list[dict[str, Any]] = self._guard(run)
        return result

    def pending_suspects(self, limit: int = 100) -> list[dict[str, Any]]:
        """Suspects an operator released or linked and the sink has not carried out."""

        def run() -> list[dict[str, Any]]:
            with self._session().cursor(row_factory=dict_row) as cur:
                cur.execute(sql.suspects_pending(self._schema), (limit,))
                return list(cur.fetchall())

        result: list[dict[str, Any]] = self._guard(run)
        return result

    def suspects_carried_out(self, ids: Sequence[int]) -> None:
        """Mark suspects as released or linked, once their event was applied."""
        self._guard(
            lambda: self._session().execute(
                sql.suspects_carried_out(self._schema, self._decisions), (list(ids),)
            )
        )

    def _fields(self, table: TargetTable) -> list[str]:
        """The business fields the sink decides on: mapped here and provided by the source."""
        provided = (self._provided or {}).get(table.entity)
        return [f for f in _merged_fields(table) if provided is None or f in provided]

    def _row_clock(
        self,
        table: TargetTable,
        item: _Item,
        current: Mapping[str, Any],
        clocks: _Clocks,
        fields: Sequence[str],
    ) -> tuple[RowClock | None, int]:
        """The row's clock, complete, and its last local change; None: wait for it.

        ``current``: the row's values as canonical fields (:func:`sinks.targets.from_row`).

        See :func:`sinks.state.ready_clock`; the wait counts from the first time an event
        for the row waited in this process once the sink has read own events (of any
        entity) past the row's local change, or applied every own change up to a decided
        horizon of the target past it (:meth:`own_changes_applied`; see
        :func:`sinks.state.clock_wait_since`; a restarted sink waits afresh: its own
        events are in the backlog it is catching up on).
        """
        assert item.current is not None
        key = (table.entity, str(item.pk))
        facts = item.current
        stored = clocks.get(*key)
        published = self._local_events is None or table.entity in self._local_events
        now_ms = facts[sql.ROW_NOW_MS]
        xmin, commit_ms = facts[sql.ROW_XMIN], facts[sql.ROW_COMMIT_MS]
        first, since = self._waiting.get(key, (now_ms, None))
        local = last_local_change(stored, xmin, commit_ms)
        since = clock_wait_since(
            first,
            since,
            now_ms=now_ms,
            local_ms=local,
            own_seen_ms=self._own_seen() if published else now_ms,
            behind_max_ms=self._clock_behind_max_ms,
        )
        clock, local_ms, assumed = ready_clock(
            stored,
            xmin=xmin,
            commit_ms=commit_ms,
            now_ms=now_ms,
            # Read only for a clock that does not know the last local change: none here
            # for a row whose clock does (most rows), so none is made for it.
            values={}
            if stored is not None and stored.knows(local)
            else {f: current.get(f) for f in fields},
            waited_ms=0 if since is None else now_ms - since,
            wait_ms=self._clock_wait_ms if published else 0,
        )
        if clock is None:
            self._waiting[key] = (first, since)
            return None, local_ms
        self._waiting.pop(key, None)
        if assumed:
            if stored is not None and published:
                log.warning(
                    "sink %s: %s row %s changed locally at %d ms and no own event of it "
                    "arrived in %d ms; counting the change for every field",
                    self.target,
                    table.entity,
                    key[1],
                    local_ms,
                    self._clock_wait_ms,
                )
            clocks.put(*key, clock)
        return clock, local_ms

    def own_changes_applied(self, through_ms: int) -> None:
        """See :meth:`Sink.own_changes_applied`: a row-clock wait counts from there too."""
        self._own_through_ms = max(self._own_through_ms, through_ms)

    def _own_seen(self) -> int:
        """How far the target's own events are known to be read (for a row-clock wait).

        The latest own event read, or the own changes applied up to the target's decided
        horizon: a change committed at the horizon's own millisecond may be later in
        commit order, so only the ones before it count (``- 1``).
        """
        return max(self._own_seen_ms, self._own_through_ms - 1)

    def _insert(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        table: TargetTable,
        items: list[_Item],
        out: _Outcome,
    ) -> int | None:
        """Insert new rows; return the transaction id their ``xmin`` shows (None: no row)."""
        columns = [sql.Column(c.column, c.pg_type) for c in table.written_columns(insert=True)]
        first = table.locators[0].column
        returning = tuple(dict.fromkeys([table.pk, first]))
        query = self._sql(
            cur, sql.insert_children, table.ref, tuple(columns), returning=returning, xmin=True
        )
        names = [c.name for c in columns]
        values = [list(map(i.row.__getitem__, names)) for i in items]
        cur.execute(query, (sql.records(values),), binary=True)
        created = cur.fetchall()
        pks = {str(r[first]): r[table.pk] for r in created}
        for item in items:
            item.pk = pks[str(item.row[first])]
            out.applied.append(item.event)
            out.recorded.append((item.event, item.digest))
            out.created.append((table.entity, str(item.pk)))
            if table.announce:
                out.announce.append((item.event, str(item.pk)))
            if table.remember:
                out.made.append((table.entity, item.event.key, str(item.pk)))
        return int(created[0][sql.ROW_XMIN]) if created else None

    def _insert_lines(
        self, cur: psycopg.Cursor[dict[str, Any]], table: TargetTable, items: list[_Item]
    ) -> None:
        """Write the lines of orders the sink created.

        Lines are written with the order only: once the order exists, the target owns
        it (deliveries and invoices refer to its lines), and a later change of the
        quote updates the order's own fields; a change of its lines is dead-lettered
        (:func:`_lines_locked`).
        """
        lines = table.lines
        if lines is None or not items:
            return
        children: list[dict[str, Any]] = []
        for item in items:
            children.extend(to_child_rows(lines, item.record, item.pk))
        if children:
            columns = lines.sql_columns
            values = [[row.get(c.name) for c in columns] for row in children]
            cur.execute(
                self._sql(cur, sql.insert_children, lines.ref, columns), (sql.records(values),)
            )

    # -- state ------------------------------------------------------------------------

    def _store_offsets(
        self, cur: psycopg.Cursor[Any], offsets: Mapping[TopicPartition, int]
    ) -> None:
        rows = [(t, p, o) for (t, p), o in sorted(offsets.items())]
        cur.execute(self._sql(cur, sql.offsets_upsert, self._schema), (sql.records(rows),))

    def store_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store positions alone (after a batch was applied in parts)."""

        def run() -> None:
            conn = self._session()
            with conn.transaction(), conn.cursor() as cur:
                self._store_offsets(cur, offsets)

        self._guard(run)

    @staticmethod
    def _conflict_rows(conflicts: Sequence[Conflict]) -> list[tuple[str | None, ...]]:
        """The :func:`sinks.sql.conflicts_insert` rows of conflicts."""
        rows: list[tuple[str | None, ...]] = []
        for c in conflicts:
            erp, crm = c.values_by_system()
            rows.append(
                (c.entity, c.entity_key, c.field, _text(erp), _text(crm), c.winner, c.reason)
            )
        return rows

    # ------------------------------------------------------------------ dead letters

    def _queue_dead_letter(
        self, cur: psycopg.Cursor[Any], event: SinkEvent, error: SyncError
    ) -> None:
        headers = dead_letter_headers(event, error, self.target)
        cur.execute(
            sql.dead_letter_insert(self._schema),
            (
                event.topic,
                event.partition,
                event.offset,
                event.raw_key,
                event.raw_value,
                json.dumps(headers),
            ),
        )

    def unresolved(self, event: SinkEvent) -> tuple[str, list[str]]:
        """What a deferred event lacks, for its dead letter, and why, where known.

        Each missing reference with the values it is looked up by
        (``customer_erp_id (crm_account_id=…)``); then, for each of those that is the
        key of a record held as a suspected duplicate (it comes once an operator
        decides), a note saying so.
        """
        table = self._tables.get(event.entity)
        if table is None:
            return "a row", []
        record = {**event.complete(), KEY: event.key}
        described: list[str] = []
        keys: list[str] = []
        for ref_field, found in table.missing_lookups(record):
            keys.extend(f"{event.source_system}:{value}" for _, value in found)
            looked_up = ", ".join(f"{column}={value}" for column, value in found)
            described.append(f"{ref_field} ({looked_up or 'no value to look it up by'})")

        def held() -> list[tuple[Any, ...]]:
            rows = self._session().execute(sql.suspects_held(self._schema), (keys,))
            return list(rows)

        suspects = self._guard(held) if keys else []
        notes = [
            f"{entity} {key} is held as a suspected duplicate of {candidate} "
            "(decide it with erpcrm suspects, then replay this letter: erpcrm dlq replay "
            "--reason unresolved_reference)"
            for entity, key, candidate in suspects
        ]
        return " and ".join(described) or "a row", notes

    def dead_letter(
        self,
        event: SinkEvent,
        error: SyncError,
        *,
        unpark: Sequence[int] = (),
        offsets: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        """Queue one dead letter on its own (an event isolated from a failing batch).

        ``unpark``: parked rows (of the event's key) deleted in the same transaction.
        ``offsets``: positions stored in the same transaction (a held event given up on).
        """

        def run() -> None:
            conn = self._session()
            with conn.transaction(), conn.cursor() as cur:
                if unpark:
                    cur.execute(sql.parked_delete(self._schema), (list(unpark),))
                self._queue_dead_letter(cur, event, error)
                if offsets:
                    self._store_offsets(cur, offsets)
            if unpark:
                self._parked.pop(event.entity_key, None)

        self._guard(run)

    def queued_dead_letters(self, limit: int = 500) -> list[QueuedDeadLetter]:
        """The dead letters waiting to be published, oldest first."""

        def run() -> list[QueuedDeadLetter]:
            rows = self._session().execute(sql.dead_letter_select(self._schema), (limit,))
            return [
                QueuedDeadLetter(
                    int(r[0]),
                    r[1],
                    int(r[2]),
                    int(r[3]),
                    bytes(r[4]) if r[4] is not None else None,
                    bytes(r[5]) if r[5] is not None else None,
                    dict(r[6]),
                )
                for r in rows
            ]

        result: list[QueuedDeadLetter] = self._guard(run)
        return result

    def dead_letters_published(self, ids: Sequence[int]) -> None:
        """Remove published dead letters from the outbox."""
        self._guard(
            lambda: self._session().execute(sql.dead_letter_delete(self._schema), (list(ids),))
        )

    # ------------------------------------------------------------------ announcements

    def announce(self, limit: int = 1000) -> list[tuple[str, str]]:
        """Touch queued created rows without the origin, so their capture publishes them.

        Returns:
            ``(entity, entity key)`` of the rows announced.
        """
        result: list[tuple[str, str]] = self._guard(lambda: self._announce_queued(limit))
        return result

    def _announce_queued(self, limit: int) -> list[tuple[str, str]]:
        conn = self._untagged()
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(sql.announce_select(self._schema), (limit,))
            queued = [(str(e), str(k), str(pk)) for e, k, pk in cur.fetchall()]
            if not queued:
                return []
            by_entity: dict[str, list[str]] = {}
            for entity, _, pk in queued:
                by_entity.setdefault(entity, []).append(pk)
            for entity, pks in by_entity.items():
                table = self._tables.get(entity)
                if table is None or table.modified is None:
                    continue
                values = [_param(pk, table.pk_type) for pk in pks]
                cur.execute(sql.touch_rows(table.ref, table.pk_column, table.modified), (values,))
                if table.lines is not None:
                    parent = sql.Column(table.lines.parent, table.pk_type)
                    cur.execute(sql.touch_children(table.lines.ref, parent), (values,))
            keys = ([e for e, _, _ in queued], [k for _, k, _ in queued])
            cur.execute(sql.announce_done(self._schema), keys)
        return [(e, k) for e, k, _ in queued]

    # ---------------------------------------------------------------------- close

    def close(self) -> None:
        """Close both sessions; an open transaction is rolled back. Idempotent."""
        for conn in (self._conn, self._plain):
            if conn is not None and not conn.closed:
                try:
                    conn.close()
                except psycopg.Error:  # pragma: no cover - closing a broken socket
                    log.debug("closing a broken connection", exc_info=True)
        self._conn = None
        self._plain = None


def _stored(events: Sequence[SinkEvent]) -> tuple[list[Any], ...]:
    """The :data:`sinks.sql.STORED_EVENT` parameters of events.

    Positions and bytes, and for a replayed event its original position and replay
    count (:meth:`stored_event` makes the same event of them again).
    """
    origins = [e.replayed_from or (None, None, None) for e in events]
    return (
        [e.topic for e in events],
        [e.partition for e in events],
        [e.offset for e in events],
        [e.raw_key for e in events],
        [e.raw_value for e in events],
        [t for t, _, _ in origins],
        [p for _, p, _ in origins],
        [o for _, _, o in origins],
        [e.replays for e in events],
    )


def stored_event(
    row: Mapping[str, Any], decode: Callable[[bytes], dict[str, Any]]
) -> SinkEvent | None:
    """An event stored in the sync schema (:data:`sinks.sql.STORED_EVENT`), decoded.

    The event as it was read: its position, bytes, and for a replayed dead letter its
    original position and replay count, so a dead letter made of it names where it came
    from as one made when it was read would. None: it has no value.

    Args:
        row: a row with the stored columns, ``entity`` and ``entity_key``.
        decode: the value's bytes to its record.
    """
    value = bytes(row["value"]) if row["value"] is not None else None
    if value is None:
        return None
    origin = None
    if row.get("origin_topic") is not None:
        origin = (str(row["origin_topic"]), int(row["origin_partition"]), int(row["origin_offset"]))
    return SinkEvent(
        row["topic"],
        int(row["partition"]),
        int(row["offset"]),
        str(row["entity"]),
        str(row["entity_key"]),
        decode(value),
        bytes(row["key"]) if row["key"] is not None else None,
        value,
        int(row.get("replays") or 0),
        origin,
    )


def _merged_fields(table: TargetTable) -> list[str]:
    """The business fields of a target table (ids are links, not merged)."""
    return [f for f in table.fields if not is_id_field(f)]


def _locator_values(
    locators: Sequence[Locator], records: Sequence[Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """Per record, each locator's value as its column's type (:func:`_param`), in order.

    None where the record's value cannot be one (a bad id). Each locator's conversion is
    looked up once, not per record.
    """
    plan = [(locator.value, _PARAM.get(locator.pg_type)) for locator in locators]
    wanted: list[tuple[Any, ...]] = []
    for record in records:
        found: list[Any] = []
        for value_of, convert in plan:
            try:
                value = value_of(record)
                if value is not None and convert is not None:
                    value = convert(value)
            except (ValueError, TypeError):
                value = None
            found.append(value)
        wanted.append(tuple(found))
    return wanted


def _row_name(table: TargetTable, column: str, value: Any) -> str:
    """A target row as letters name it: ``schema.table column=value``."""
    return f"{table.schema}.{table.table} {column}={value}"


def _ends(record: Mapping[str, Any]) -> bool:
    """Whether a record's event ends it at its source: a delete, or an archive."""
    return record.get("op") == "delete" or record.get(LIVENESS) is False


def _written_for(item: _Item) -> RowOwner:
    """The owner a row gets when the sink writes ``item``'s event into it."""
    return RowOwner(item.event.key, gone=_ends(item.record))


def _claimed(
    table: TargetTable, items: Sequence[_Item], clocks: _Clocks, out: _Outcome
) -> list[_Item]:
    """The items whose located row they may write: its owner's, a free one, a gone one's.

    An item whose row another live record owns (:func:`sinks.state.taken_by`; a link
    column moved onto that record's row) is dead-lettered (``target_row_taken``) and
    its version recorded as :data:`~sinks.state.LETTERED`, as a contended loser's: read
    again, it stays out of the row; a replay of its letter, once the link is put back
    or the owner gone, applies it. A suspected duplicate (``duplicate_of``) is not
    lettered: it goes on as if it had found no row, to be held (or created, or linked)
    as a suspect. A delete that leaves the row alone (:attr:`DeleteMode.IGNORE`) writes
    nothing and is kept. Source identity only (entity and key), never the row's values:
    a renamed order, or an owned field edited on the other side, is its owner's.
    """
    ended = [i.event.key for i in items if _ends(i.record)]
    kept: list[_Item] = []
    for item in items:
        if item.current is None or (
            table.delete is DeleteMode.IGNORE and table.removes(item.record)
        ):
            kept.append(item)
            continue
        row_id = str(item.pk)
        holder = taken_by(clocks.owner(table.entity, row_id), item.event.key, ended=ended)
        if holder is None:
            kept.append(item)
        elif item.record.get("duplicate_of") is not None:
            item.current, item.pk = None, None
            kept.append(item)
        else:
            out.dead.append((item.event, _taken(table, item, holder)))
            out.recorded.append((item.event, LETTERED))
    return kept


def _taken(table: TargetTable, item: _Item, owner: str) -> TargetRowTakenError:
    """The dead letter's error for ``item``, whose row the live record ``owner`` owns."""
    event = item.event
    row = _row_name(table, table.pk, item.pk)
    message = (
        f"target_row_taken: {event.entity} {event.key} (version {event.version}) resolves "
        f"to the target row {row}, which was written for {owner}, a live record: a link "
        f"column was moved onto {owner}'s row (or both records carry one link). Nothing "
        f"was written. Put the link back at the source (a record deleted or archived "
        f"there gives its row up), then replay this letter if its data is still wanted."
    )
    return TargetRowTakenError(message, (("target_row", row), ("owner_key", owner)))


def _contend(
    table: TargetTable,
    items: Iterable[_Item],
    column: str,
    value_of: Callable[[_Item], Hashable],
    out: _Outcome,
) -> dict[Hashable, _Item]:
    """Per target row (its ``column``'s value), the item written: see :func:`_latest`."""
    rows: dict[Hashable, _Item] = {}
    for item in items:
        value = value_of(item)
        rows[value] = _latest(rows.get(value), item, out, _row_name(table, column, value))
    return rows


def _settle_updates(
    table: TargetTable,
    items: Iterable[_Item],
    stated: Mapping[str, LinesSnapshot],
    out: _Outcome,
) -> dict[Hashable, _Item]:
    """Choose the update written per row, then queue what each written one brings.

    Decide first, then apply: an item merged (``merged``) but not written (it lost its
    row to another source record, :func:`_latest`) leaves only its dead letter, so that
    the conflict audit and metrics, the announcements and an order's stated lines tell
    what was written, and a replay of the letter applies it as if never read. For the
    written ones, in the batch's transaction: the merge's conflicts, a re-announcement of
    the row when a field the target owns was refused, or when the row was found only as
    the one made for the record (its link put back: the source hears of it again), and for an
    order a change of its lines (:func:`_lines_locked`; ``stated``: the lines the source
    stated last, by key).
    """
    written = _contend(table, items, table.pk, lambda i: i.pk, out)
    for item in written.values():
        assert item.merged is not None
        out.conflicts.extend(item.merged.conflicts)
        if (item.merged.reassert and never_noop(item.record)) or item.remembered is not None:
            out.announce.append((item.event, str(item.pk)))
            out.reasserted.append((table.entity, str(item.pk)))
        if table.lines is not None:
            _lines_locked(table, item, stated.get(item.event.key), out)
    return written


def _stated_lines(table: TargetTable, item: _Item) -> LinesSnapshot:
    """The lines of an item's event as compared (:func:`sinks.lines.snapshot`)."""
    assert table.lines is not None
    lines = item.record.get(table.lines.source) or ()
    return lines_snapshot(lines, f"{item.event.source_system}_id")


def _lines_locked(
    table: TargetTable, item: _Item, before: LinesSnapshot | None, out: _Outcome
) -> None:
    """An update of an order the target has: dead-letter a change of its lines.

    The target owns the lines of an order it holds
    (:meth:`PostgresUpsertSink._insert_lines`), so the update writes the order's own
    fields only. Its lines are compared with those the source stated last (``before``;
    not with the target's rows, which the target may change itself: :mod:`sinks.lines`):
    a difference is queued as a dead letter (``order_lines_locked``) in the batch's
    transaction, and the stored lines move to the new ones, so each edit makes one letter
    and a header-only change none. An order with no stored lines (created before the sink
    kept them) starts from these. Only for the update written (:func:`_settle_updates`).
    """
    now = _stated_lines(table, item)
    if before == now:
        return
    out.source_lines.append((item.event, now))
    change = lines_compare(before, now) if before is not None else None
    if not change:
        return
    assert item.current is not None
    order = item.event.key.partition(":")[2]
    source, target = item.event.source_system, table.direction.target
    generated = "".join(f" {g}={item.current.get(g)}" for g in sorted(table.generated))
    row = _row_name(table, table.pk, item.pk) + generated
    message = (
        f"order_lines_locked: the {source} changed the lines of {item.event.entity} "
        f"{item.event.key} (version {item.event.version}) after the {target} created "
        f"its order ({row}): {change.describe()}. The {target} owns the lines of an "
        f"order it holds, so they were not written: make the change there. The "
        "order's other fields were applied."
    )
    context = (("order", order), ("target_row", row), *change.context())
    out.refused_parts.append((item.event, LinesLockedError(message, context)))


def _latest(current: _Item | None, item: _Item, out: _Outcome, row: str) -> _Item:
    """Of two events writing the same target ``row`` in one batch, the later commit wins.

    The batch is collapsed per entity key first, so two events meeting here are of
    different source records (``erp:805`` and ``erp:808`` both linked to one CRM row):
    the loser is not written, and it is dead-lettered (``target_row_contended``, with
    the row and the winning record as context) rather than applied; its version is
    recorded as :data:`~sinks.state.LETTERED`, so the topics read again do not write it
    over the winner (an operator's replay of the letter does). Two
    events of the same key (not expected after the collapse) stay as before: the older
    one is recorded as applied, its state overwritten by the newer one's. On a tie of
    commit times ``item`` (the one met later) wins. Nothing else of the loser's is queued
    here or by the callers, which queue the winner's effects only once it is chosen
    (:func:`_settle_updates`).
    """
    if current is None:
        return item
    winner, loser = (
        (item, current)
        if item.event.source_ts_ms >= current.event.source_ts_ms
        else (current, item)
    )
    if loser.event.entity_key == winner.event.entity_key:
        out.applied.append(loser.event)
        out.recorded.append((loser.event, loser.digest))
    else:
        out.dead.append((loser.event, _contended(loser.event, winner.event, row)))
        # Its version is decided: read again (the topics re-read), it stays out of the row.
        out.recorded.append((loser.event, LETTERED))
    return winner


def _contended(loser: SinkEvent, winner: SinkEvent, row: str) -> TargetRowContendedError:
    """The dead letter's error for ``loser``, which lost ``row`` to ``winner`` in a batch."""
    message = (
        f"target_row_contended: {loser.entity} {loser.key} (version {loser.version}) and "
        f"{winner.key} (version {winner.version}) resolve to the same target row ({row}) "
        f"in one batch; {winner.key}, committed later, was written and {loser.key} was "
        "not. Two source records linked to one row: fix the link in the source or the "
        "crosswalk, then replay this letter if its data is still wanted."
    )
    context = (
        ("target_row", row),
        ("winner_key", winner.key),
        ("winner_version", str(winner.version)),
    )
    return TargetRowContendedError(message, context)
