"""The streams stage's routing: one inbound message in, canonical events and state changes out.

:class:`StreamProcessor` sits between a raw message (as read from its raw topic, or
replayed through the worker's control topic, see :mod:`streams.app`) and the flows. It
picks the flows of the message's table, decodes the envelope, drops echoes, and hands
the change to the job that owns it:

- plain entities (customers, contacts, products, invoices): mapped, cleansed and
  validated by :func:`streams.transform.to_canonical`, their references kept by
  :mod:`streams.references`, deduplicated and published by :mod:`streams.work`;
- stock rows: :mod:`streams.stock`;
- order headers, lines and transaction records: :mod:`streams.orders` (a transaction's
  ``BEGIN`` is only counted and read for its time, off its bytes: :mod:`streams.begins`);
- ticks: what is due in :mod:`streams.waiting` (parked records, snapshot customers
  settling) and :mod:`streams.orders` (transactions to assemble).

It returns an :class:`~streams.outcome.Outcome`: the messages to publish (canonical events
and dead letters), the state :class:`~streams.state.Write` s, and a
:class:`~streams.outcome.Tally` of what happened. It has no Kafka, Faust or clock in it:
time is the message's timestamp, state is read through :class:`~streams.state.StateView`
and written only by :meth:`StreamProcessor.commit`, so a test drives it with
:class:`~streams.state.DictState`.

Contract with the caller (the Faust agent), in this order:

1. ``outcome = processor.process(message, state)`` -- pure apart from the in-memory
   caches (reference data, the index of pending records); raises
   :class:`~schemas.errors.RetriableError` when the schema registry is unreachable
   (retry the same message) and :class:`~streams.outcome.DeadLetterError` when the
   dead-letter policy is ``fail``.
2. publish ``outcome.outbound`` and wait until Kafka acknowledged all of it;
3. ``processor.commit(outcome, state)`` -- only now does the state change.

So state never runs ahead of what was published: after a crash anywhere, replaying the
message recomputes the same outputs (a restarted worker drops the ones already
published, see :mod:`streams.app`), and nothing is lost. Step 1 updates the in-memory
caches as it goes; if it raises, call :meth:`StreamProcessor.rollback` before retrying.
Step 2 may be retried with the same outcome.

A batch follows the same contract: process each of its messages in order against a
:class:`~streams.state.StagedState` over the committed state, staging each outcome's
writes there (so the decisions are those of one message at a time), publish all the
outcomes' messages, then commit the outcomes in order. If a step 1 raises, roll back and
restart the batch from its first message.

Entities are deduplicated by (entity key, version) and payload hash: stale and no-op
events are dropped and counted (:mod:`streams.dedupe`); a re-snapshot read
(``source_snapshot = incremental``) is never a no-op, since the target may have drifted.
Everything that fails goes to
:data:`streams.dlq.DLQ_TOPIC` with the original bytes and the reason, under the
``dlq|skip|fail`` policy, unless it only waits for a reference (:mod:`streams.waiting`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from schemas.errors import DecodeError
from schemas.horizon import SourceHorizon
from schemas.mapping import Flow, Grain
from schemas.topics import raw_topic, transaction_topic
from streams import dlq
from streams.begins import BeginRecords
from streams.decided import DecidedHorizons
from streams.horizon import ReadHorizon, produced_ms
from streams.ordering import Release, SourceOrder, commit_lsn
from streams.orders import Orders
from streams.outcome import Count, Inbound, Kind, Outcome, Tally
from streams.references import ReferenceData, References
from streams.state import ASSEMBLY, DEDUPE, REFERENCE, StateStore, StateView
from streams.stock import Stock
from streams.transform import Skipped, to_canonical
from streams.validation import Failed
from streams.waiting import ORDER_PREFIX, PARK_PREFIX, SETTLE_PREFIX, TX_PREFIX, Retry, Waiting
from streams.work import Emitter, Raw, Route, UnitOfWork, dedupe_key

__all__ = ["StreamProcessor"]

_BEGIN_COUNTS: Final[dict[tuple[str, ...], int]] = {
    (Count.EVENTS_IN.value, "transaction"): 1,
    (Count.IGNORED.value, "transaction_begin"): 1,
}
"""What a transaction's ``BEGIN`` record counts (it is read, and nothing else)."""


class StreamProcessor:
    """Runs inbound raw messages through the flows; see the module docstring.

    Args:
        flows: the mapping flows by name (:func:`schemas.mapping.load_mappings`).
        decode: bytes -> decoded Avro record; raises ``DecodeError`` for bad bytes and
            ``RetriableError`` when the registry cannot be reached.
        encode: (entity, canonical record) -> value bytes; raises ``ValidationError``
            when the record does not fit the entity's schema.
        prefixes: each system's raw topic prefix (``{"erp": "erp", "crm": "crm"}``).
        dlq_policy: ``dlq`` (publish dead letters), ``skip`` (count only) or ``fail``
            (raise :class:`~streams.outcome.DeadLetterError`).
        echo_origins: replication origins whose changes are dropped as echoes.
        assembly_timeout_ms, snapshot_settle_ms, reference_wait_ms: see
            :class:`streams.settings.StreamsSettings`.
        tick_limit: how many pending keys one tick looks at (see :meth:`_tick`).
    """

    def __init__(
        self,
        flows: Mapping[str, Flow],
        *,
        decode: Callable[[bytes], dict[str, Any]],
        encode: Callable[[str, dict[str, Any]], bytes],
        prefixes: Mapping[str, str] | None = None,
        dlq_policy: Literal["fail", "dlq", "skip"] = "dlq",
        echo_origins: Iterable[str] = ("erpcrm_sink",),
        assembly_timeout_ms: int = 30_000,
        snapshot_settle_ms: int = 3_000,
        reference_wait_ms: int = 15_000,
        tick_limit: int = 200,
    ) -> None:
        self._flows = dict(flows)
        self._tick_limit = max(1, tick_limit)
        self._round: list[str] = []
        """Keys due when the current round of ticks began, not looked at yet (reversed)."""
        self._decode = decode
        self._begins = BeginRecords()
        self._echo_origins = frozenset(echo_origins)
        prefixes = dict(prefixes or {"erp": "erp", "crm": "crm"})
        routes: dict[str, list[Route]] = {}
        self._tx_topics: dict[str, str] = {}
        collections: dict[str, set[str]] = {}
        order_collections: dict[str, set[str]] = {}
        for flow in self._flows.values():
            prefix = prefixes.get(flow.system, flow.system)
            topic = raw_topic(prefix, flow.schema, flow.table)
            routes.setdefault(topic, []).append(Route(flow, "entity"))
            self._tx_topics[transaction_topic(prefix)] = flow.system
            collections.setdefault(flow.system, set()).add(f"{flow.schema}.{flow.table}")
            if flow.lines is not None:
                lines_topic = raw_topic(prefix, flow.schema, flow.lines.table)
                routes.setdefault(lines_topic, []).append(Route(flow, "lines"))
                collections[flow.system].add(f"{flow.schema}.{flow.lines.table}")
                order_collections.setdefault(flow.system, set()).update(
                    {f"{flow.schema}.{flow.table}", f"{flow.schema}.{flow.lines.table}"}
                )
        self._routes = {topic: tuple(found) for topic, found in routes.items()}
        self._systems = frozenset(flow.system for flow in self._flows.values())
        self._emitter = Emitter(
            encode, dlq_policy, {name: flow.target for name, flow in self._flows.items()}
        )
        self._waiting = Waiting(self._emitter, reference_wait_ms, snapshot_settle_ms)
        self._horizon = ReadHorizon()
        self._decided = DecidedHorizons()
        self._references = References()
        self._ordering = SourceOrder(
            {system: frozenset(names) for system, names in collections.items()},
            assembly_timeout_ms,
        )
        self._stock = Stock(self._emitter, self._waiting, self._references)
        self._orders = Orders(
            self._flows,
            self._emitter,
            self._waiting,
            self._references,
            order_collections,
            decode,
            assembly_timeout_ms=assembly_timeout_ms,
            snapshot_settle_ms=snapshot_settle_ms,
        )

    # -- what to read ---------------------------------------------------------------

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the flows read: raw change topics and transaction topics, sorted."""
        return tuple(sorted({*self._routes, *self._tx_topics}))

    @property
    def system_topics(self) -> dict[str, frozenset[str]]:
        """Per source system, the topics read of it (its tables' and its transactions')."""
        found: dict[str, set[str]] = {}
        for topic, system in self._tx_topics.items():
            found.setdefault(system, set()).add(topic)
        for topic, routes in self._routes.items():
            found.setdefault(routes[0].flow.system, set()).add(topic)
        return {system: frozenset(topics) for system, topics in found.items()}

    @property
    def reference(self) -> ReferenceData:
        """The reference caches (read-only for callers)."""
        return self._references.data

    @property
    def has_pending(self) -> bool:
        """Whether orders are being assembled or records wait for a reference (ticks needed)."""
        return self._waiting.pending > 0

    @property
    def round_unfinished(self) -> bool:
        """Whether the last tick left keys of its round: another tick should follow at once."""
        return bool(self._round)

    @property
    def pending_count(self) -> int:
        """How many transactions, snapshot orders and parked records are pending."""
        return self._waiting.pending

    # -- lifecycle ------------------------------------------------------------------

    def load(self, state: StateView) -> None:
        """(Re)build the in-memory caches from ``state``; call before the first message."""
        self._references.load(state)
        self._waiting.load(state)
        self._round = []
        self._ordering.forget()
        self._orders.forget()
        self._decided.forget()

    def rollback(self, state: StateView) -> None:
        """Forget the cache changes of an outcome that will not be committed."""
        self.load(state)

    def commit(self, outcome: Outcome, state: StateStore) -> None:
        """Apply the outcome's writes, after its messages were published."""
        state.apply(outcome.writes)

    def process(self, message: Inbound, state: StateView) -> Outcome:
        """Process one inbound message; see the module docstring for the contract.

        Raises:
            RetriableError: the schema registry is unreachable; retry the message.
            DeadLetterError: a record was rejected under the ``fail`` policy.
        """
        if message.kind is Kind.TICK:
            horizon = self._horizon.tick(message.timestamp_ms)
        else:
            if message.value is not None and message.origin.topic in self._tx_topics:
                begin_ts_ms = self._begins.ts_ms(message.value)
                if begin_ts_ms is not None:
                    return self._begin(message, begin_ts_ms)
            horizon = self._horizon.horizon_ms
        work = UnitOfWork(state, message.timestamp_ms, self._mirror, horizon)
        if message.kind is Kind.TICK:
            self._tick(work)
        else:
            self._receive(work, message)
        return work.finish()

    def _begin(self, message: Inbound, ts_ms: int) -> Outcome:
        """A transaction's ``BEGIN``, read off its bytes (:mod:`streams.begins`).

        It feeds the read horizon and is counted, as a decoded one is; nothing else.
        """
        if message.replays == 0:
            self._horizon.observe(ts_ms)
        return Outcome(tally=Tally(_BEGIN_COUNTS))

    def _mirror(self, table: str, key: str, value: Any) -> None:
        """Keep the in-memory caches in step with a write as it is made."""
        if table == REFERENCE:
            self._references.mirror(key, value)
        elif table == ASSEMBLY:
            self._waiting.mirror(key, value)

    # -- receiving ------------------------------------------------------------------

    def _receive(self, work: UnitOfWork, message: Inbound) -> None:
        tally = work.tally
        topic = message.origin.topic
        if message.value is None:
            tally.add(Count.IGNORED, "tombstone")
            return
        system = self._tx_topics.get(topic)
        routes = self._routes.get(topic, ())
        if system is None and not routes:
            tally.add(Count.IGNORED, "unrouted")
            return
        envelope = self._decoded(work, message, routes)
        if envelope is None:
            return
        if message.replays == 0:
            self._horizon.observe(produced_ms(envelope))
        if system is not None:
            tally.add(Count.EVENTS_IN, "transaction")
            if envelope.get("status") != "END":
                tally.add(Count.IGNORED, "transaction_begin")
                self._begins.learn(message.value, envelope)
                return
            self._release(work, self._ordering.end(work, system, envelope, message))
            return
        for route in routes:
            tally.add(Count.EVENTS_IN, route.flow.name)
        source_system = routes[0].flow.system
        released = self._ordering.hold(work, source_system, envelope, message)
        if released is None:
            after = self._ordering.released(work, source_system, envelope)
            self._change(work, message, envelope, routes, after_release=after)
        else:
            self._release(work, released)

    def _decoded(
        self, work: UnitOfWork, message: Inbound, routes: Sequence[Route]
    ) -> dict[str, Any] | None:
        """The message's envelope; None when it does not decode (it is dead-lettered)."""
        assert message.value is not None
        try:
            return self._decode(message.value)
        except DecodeError as exc:
            flow = routes[0].flow.name if routes else None
            letter = dlq.undecodable(exc, message, flow)
            self._emitter.send(work, letter)
            return None

    def _release(self, work: UnitOfWork, released: Sequence[Release]) -> None:
        """Decide changes and transaction ENDs in the order source ordering released them."""
        for item in released:
            message = item.message
            if message is None:
                if item.expired is not None:
                    self._orders.expire(work, item.system, item.expired)
                continue
            routes = self._routes.get(message.origin.topic, ())
            envelope = dict(item.envelope) if item.envelope is not None else None
            if envelope is None and message.value is not None:
                envelope = self._decoded(work, message, routes)
            if envelope is None:
                continue
            if item.end:
                self._orders.transaction(work, item.system, envelope)
                self._decided.released(item.system, envelope)
            else:
                self._change(work, message, envelope, routes)

    def _change(
        self,
        work: UnitOfWork,
        message: Inbound,
        envelope: dict[str, Any],
        routes: Sequence[Route],
        *,
        after_release: bool = False,
    ) -> None:
        """Decide one row change: drop an echo, else run it through each of its routes.

        ``after_release``: its transaction was released before (source order).
        """
        source = envelope.get("source")
        origin = source.get("origin") if isinstance(source, Mapping) else None
        if origin is not None and origin in self._echo_origins:
            work.tally.add(Count.ECHOES, routes[0].flow.system)
            return
        for route in routes:
            self._route(work, route, envelope, message, None, after_release=after_release)

    def _route(
        self,
        work: UnitOfWork,
        route: Route,
        envelope: dict[str, Any],
        message: Inbound,
        retry: Retry | None,
        *,
        after_release: bool = False,
    ) -> None:
        flow = route.flow
        if route.role == "lines":
            self._orders.line(work, route, envelope, message, after_release=after_release)
        elif flow.grain is Grain.LOCATION:
            self._stock.change(work, route, envelope, message, retry)
        elif flow.lines is not None:
            self._orders.header(work, route, envelope, message)
        else:
            self._entity(work, route, envelope, message, retry)

    def _reroute(self, work: UnitOfWork, route: Route, message: Inbound, retry: Retry) -> None:
        """Run a parked record through its route again."""
        assert message.value is not None
        try:
            envelope = self._decode(message.value)
        except DecodeError:  # it decoded when parked; the schema is gone
            return
        self._route(work, route, envelope, message, retry)

    # -- plain entities -------------------------------------------------------------

    def _entity(
        self,
        work: UnitOfWork,
        route: Route,
        envelope: dict[str, Any],
        message: Inbound,
        retry: Retry | None,
    ) -> None:
        flow = route.flow
        ref = self._references.data
        result = to_canonical(
            flow,
            envelope,
            known_skus=ref.known_skus,
            crosswalk=ref.crosswalk,
            lookups=ref.lookups,
        )
        if isinstance(result, Skipped):
            work.tally.add(Count.SKIPPED, flow.name)
            return
        if isinstance(result, Failed):
            self._waiting.reject(work, route, result, Raw.of(message, envelope), retry)
            return
        event = result.value
        stored = work.peek(DEDUPE, dedupe_key(event))
        if stored is not None and int(event.record["version"]) <= int(stored[0]):
            # Checked before the references: an old change must not undo a newer link.
            work.tally.add(Count.DEDUPED, flow.name)
            return
        # A snapshot customer new to the other system waits for that system's snapshot
        # (once: a retry is past its wait), see streams.references.
        may_settle = retry is None and self._waiting.settle_ms > 0
        if self._references.observe(work, flow, event, may_settle=may_settle):
            self._waiting.settle(work, route, Raw.of(message, envelope))
            return
        self._emitter.publish(
            work, flow.name, event, Raw.of(message, envelope), result.fixes, result.quarantined
        )

    # -- ticks ----------------------------------------------------------------------

    def _tick(self, work: UnitOfWork) -> None:
        """Assemble what is due, retry what waits for a reference: ``tick_limit`` keys a tick.

        A round of ticks looks at every key due when it began, ``tick_limit`` keys per
        tick, so no one message holds the worker for long (a snapshot leaves thousands of
        orders to assemble at once); :attr:`round_unfinished` tells the caller to tick
        again at once. A key no longer pending or due by its turn is passed over.
        """
        if not self._round:
            self._round = self._waiting.due(work.horizon_ms)[::-1]
        for _ in range(min(self._tick_limit, len(self._round))):
            key = self._round.pop()
            if not self._waiting.is_due(key, work.horizon_ms):
                continue
            record = work.get(ASSEMBLY, key)
            if record is None:
                self._waiting.forget(key)
            elif key.startswith(ORDER_PREFIX):
                self._release(work, self._ordering.tick(work, key))
            elif key.startswith((PARK_PREFIX, SETTLE_PREFIX)):
                route = next(
                    (
                        r
                        for r in self._routes.get(record["origin"][0], ())
                        if r.flow.name == record["flow"] and r.role == record["role"]
                    ),
                    None,
                )
                self._waiting.retry(work, key, record, route, self._reroute)
            else:
                self._orders.tick(work, key, record)

    # -- the decided horizon (streams.decided) ---------------------------------------

    def settle_horizons(self, now_ms: int) -> None:
        """The batch processed last is published and committed: settle its horizons."""
        self._decided.settle(self._holds_back, now_ms)

    def ripe_horizons(self, now_ms: int) -> dict[str, SourceHorizon]:
        """Per system, the decided horizon that may be published at ``now_ms``."""
        return self._decided.ripe(now_ms)

    def _holds_back(self, system: str, lsn: int) -> bool:
        """Whether something of ``system`` decided at or before commit ``lsn`` still waits.

        Parked and settling records and orders being assembled came from transactions
        released already (so committed before the latest one released); a transaction
        whose changes are held counts if it committed at or before ``lsn``. Snapshot
        orders and orders waiting for a reference name no system: they hold back all.
        """
        for key in self._waiting.pending_keys():
            if key.startswith((PARK_PREFIX, SETTLE_PREFIX)):
                routes = self._routes.get(key.split("|", 2)[1], ())
                if not routes or routes[0].flow.system == system:
                    return True
            elif key.startswith(ORDER_PREFIX):
                held_system, _, tx = key.removeprefix(ORDER_PREFIX).partition("|")
                committed = commit_lsn(tx)
                if held_system == system and (committed is None or committed <= lsn):
                    return True
            elif key.startswith(TX_PREFIX):
                owner = key.removeprefix(TX_PREFIX).split("|", 1)[0]
                if owner == system or owner not in self._systems:
                    return True
        return False

    # -- views ----------------------------------------------------------------------

    def inventory(self, state: StateView, sku: str | None = None) -> list[dict[str, Any]]:
        """The current stock per product (all, or of one SKU); see :meth:`Stock.inventory`."""
        return self._stock.inventory(state, sku)
