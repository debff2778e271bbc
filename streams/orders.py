"""Orders by transaction: a header and its lines, assembled once per source transaction.

A header (``sale_order``, ``aos_quotes``) and its lines are kept per order in the
``assembly`` table: the last header ``h|<flow>|<order id>`` (its LSN, op, origin and
original bytes), the current lines ``l|<flow>|<order id>`` (per line its LSN, op and
original bytes) and line -> order ``lp|<flow>|<line id>``. A change is stored once, as its
bytes (base64); an older worker stored the envelope or row frozen beside or instead of
them, which is still read. What this process read is also kept decoded in memory, and each
line mapped once while the reference data it reads is unchanged, so an order touched by
many transactions is not decoded and mapped again line by line each time.

Each change is registered with its source transaction (``transaction.id``) under
``tx|<system>|<txid>``; the transaction completes when the ``END`` record of
``<system>.transaction`` has arrived and as many changes of each order table as it counts
have been seen (in any order: the topics are read concurrently). Then
each order it touched is assembled once from the current header and lines. The event's
position (event id, LSN) is its latest change in that transaction, so a later line edit
gives a new, higher version. Snapshot reads have no transaction: their orders
(``tx|snap|<flow>|<order id>``) are assembled once no row of theirs arrived for
``snapshot_settle``, unless a transaction changes them first (it assembles them); a
transaction whose ``END`` is missing is assembled after
``assembly_timeout``. An order that fails for a reference not known yet (its customer,
a line's product) waits in one record of its own, ``tx|wait|<flow>|<order id>``, whichever
transactions touched it (each one that fails again moves the wait on), and is assembled
again on each tick until ``reference_wait`` has passed, then dead-lettered once with the
header's bytes (replaying it re-assembles the order). The letter's context names the
order and the LSN of its latest change, so a later change that fails again is a new
letter with an id of its own.

An order released incomplete (``timeout``) is counted and logged as a warning. A line of
its transaction read after that is *late*: its target has created the order with the
lines it had and owns them from then on (deliveries and invoices refer to them), so
publishing the order again would not bring the line there. The line is dead-lettered
(``late_line``, its context naming the order, the transaction and the line's LSN), never
dropped unseen; it is still kept as the order's current line. A line changed in a later
transaction is published with its order's next event as usual: whether its target has
created that order (and so refuses the change) is the sink's to know, and it
dead-letters the change there (``order_lines_locked``, :mod:`sinks.lines`).

Source rows are state here, so a change with a lower LSN than the row's last one is
stale; the same LSN is a re-delivery (idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from schemas.errors import DecodeError
from schemas.mapping import Cast, Flow, convert
from streams import dlq
from streams.dlq import Origin
from streams.outcome import Count, Inbound
from streams.references import References
from streams.state import ASSEMBLY, DEDUPE, b64, thaw, unb64
from streams.transform import LineMemo, Skipped, entity_key, line_parent, to_canonical
from streams.validation import Failed, Reason
from streams.waiting import PARKABLE, TX_PREFIX, Waiting
from streams.work import Emitter, Raw, Route, UnitOfWork, entity_dedupe_key

__all__ = ["SNAP_PREFIX", "WAIT_PREFIX", "Orders", "RowBasics", "row_basics", "text_id"]

SNAP_PREFIX: Final = f"{TX_PREFIX}snap|"
"""``assembly`` keys of orders read by a snapshot, waiting to settle."""
WAIT_PREFIX: Final = f"{TX_PREFIX}wait|"
"""``assembly`` keys of orders waiting for a reference, one each."""

_KEPT_MAX: Final = 20_000
"""How many line changes and headers :class:`Orders` keeps decoded in memory (then it
starts again: what is not kept is read back from the ``assembly`` table)."""

_TRIGGER_LINE: Final = "line"
_TRIGGER_BYTES: Final = "value"
"""A trigger as stored: ``{"line": <line id>, "value": <its change's bytes, base64>}``."""

_UPSERT_OPS: Final = frozenset({"c", "u", "r"})
_ROWLESS_OPS: Final = frozenset({"t", "m"})


@dataclass(frozen=True, slots=True)
class RowBasics:
    """What a row change carries, read without mapping it."""

    op: str
    lsn: int
    tx: str | None
    key: str
    row: Mapping[str, Any]


def text_id(value: object) -> str | None:
    """An id column's value as text, or None if it has no usable one."""
    if value is None:
        return None
    try:
        text = str(convert(Cast.STR, value))
    except (TypeError, ValueError):
        return None
    return text or None


def row_basics(envelope: Mapping[str, Any], key_column: str) -> RowBasics | Failed | Skipped:
    """Op, LSN, transaction, key and row of a change, or why it has none."""
    op = envelope.get("op")
    if op in _ROWLESS_OPS:
        return Skipped(f"op {op!r} carries no row")
    source = envelope.get("source")
    if (op not in _UPSERT_OPS and op != "d") or not isinstance(source, Mapping):
        return Failed(Reason.MALFORMED_EVENT, None, f"op {op!r} or its source block is unusable")
    lsn = source.get("lsn")
    row = envelope.get("before" if op == "d" else "after")
    if not isinstance(lsn, int) or not isinstance(row, Mapping):
        return Failed(Reason.MALFORMED_EVENT, None, "no source.lsn or no row")
    key = text_id(row.get(key_column))
    if key is None:
        return Failed(Reason.MALFORMED_EVENT, None, f"no usable key column {key_column!r}")
    block = envelope.get("transaction")
    tx_id = source.get("txId")
    if isinstance(block, Mapping) and isinstance(block.get("id"), str):
        tx: str | None = block["id"]
    elif isinstance(tx_id, int) and op != "r":
        tx = str(tx_id)
    else:
        tx = None
    return RowBasics(op=op, lsn=lsn, tx=tx, key=key, row=row)


class Orders:
    """Assembles orders from their headers and lines, one transaction at a time.

    Args:
        flows: every flow by name (an order's flow is looked up when it is assembled).
        emitter: publishes orders and dead letters.
        waiting: how long an order may wait for a reference; indexes pending records.
        references: the crosswalk and SKUs orders are mapped with.
        order_collections: per system, the ``schema.table`` names of its order tables.
        decode: bytes -> decoded envelope (the processor's decoder), for the changes
            kept as bytes in the ``assembly`` table and not in memory.
        assembly_timeout_ms, snapshot_settle_ms: see :class:`streams.settings.StreamsSettings`.
    """

    def __init__(
        self,
        flows: Mapping[str, Flow],
        emitter: Emitter,
        waiting: Waiting,
        references: References,
        order_collections: Mapping[str, set[str]],
        decode: Callable[[bytes], dict[str, Any]],
        *,
        assembly_timeout_ms: int,
        snapshot_settle_ms: int,
    ) -> None:
        self._flows = flows
        self._emitter = emitter
        self._waiting = waiting
        self._references = references
        self._order_collections = order_collections
        self._decode = decode
        self._timeout_ms = assembly_timeout_ms
        self._settle_ms = snapshot_settle_ms
        self._lines: dict[tuple[str, str], tuple[int, str, Mapping[str, Any]]] = {}
        """Per (order, line id), its current change as decoded: LSN, op and envelope
        (never changed; the ``assembly`` table holds the same, frozen)."""
        self._headers: dict[str, tuple[int, Mapping[str, Any]]] = {}
        """Per order, its header's LSN and envelope, as decoded."""
        self._line_memo: LineMemo = {}
        """Lines mapped from the row objects of :attr:`_lines`, while the reference data
        they were mapped with is unchanged (:attr:`_memo_of`)."""
        self._memo_of: tuple[object, int] | None = None

    def forget(self) -> None:
        """Drop what is kept in memory (after a rollback or a reload it may be stale)."""
        self._lines.clear()
        self._headers.clear()
        self._line_memo.clear()
        self._memo_of = None

    def _keep_line(self, order: str, line_id: str, lsn: int, op: str, envelope: Any) -> None:
        if len(self._lines) >= _KEPT_MAX:
            self.forget()
        self._lines[(order, line_id)] = (lsn, op, envelope)

    def _keep_header(self, order: str, lsn: int, envelope: Mapping[str, Any]) -> None:
        if len(self._headers) >= _KEPT_MAX:
            self.forget()
        self._headers[order] = (lsn, envelope)

    def _line_envelope(self, order: str, line_id: str, line: Mapping[str, Any]) -> Any:
        """The envelope of a current line's change (``line``: its stored form), as decoded.

        Raises DecodeError (and RetriableError) as the decoder does for its stored bytes.
        """
        lsn, op = int(line["lsn"]), line["op"]
        kept = self._lines.get((order, line_id))
        if kept is not None and kept[0] == lsn and kept[1] == op:
            return kept[2]
        if "row" in line:  # as stored before: the row alone, frozen
            row = thaw(line["row"])
            envelope: Any = {"before": row} if op == "d" else {"after": row}
        else:
            envelope = self._decode(_unb64(line["value"]))
        self._keep_line(order, line_id, lsn, op, envelope)
        return envelope

    def _header_envelope(self, order: str, header: Mapping[str, Any]) -> Mapping[str, Any]:
        """The envelope of an order's last header change (``header``: its stored form).

        Raises DecodeError (and RetriableError) as the decoder does for its stored bytes.
        """
        lsn = int(header["lsn"])
        kept = self._headers.get(order)
        if kept is not None and kept[0] == lsn:
            return kept[1]
        envelope: Mapping[str, Any]
        if "env" in header:  # as stored before: the envelope frozen, besides the bytes
            envelope = thaw(header["env"])
        else:
            envelope = self._decode(_unb64(header["value"]))
        self._keep_header(order, lsn, envelope)
        return envelope

    def _trigger(self, order: str, flow: Flow, info: Mapping[str, Any]) -> Any:
        """The line change that caused an order's next event, as decoded.

        Stored as the line's id and its change's bytes (:func:`_trigger_of`), or, as
        stored before, the change frozen. Raises as :meth:`_line_envelope`.
        """
        stored = info["trigger"]
        lines = flow.lines
        if _TRIGGER_BYTES in stored:
            line_id: str | None = stored[_TRIGGER_LINE]
        elif lines is not None:
            row = stored.get("before" if stored.get("op") == "d" else "after")
            line_id = text_id(row.get(lines.key)) if isinstance(row, Mapping) else None
        else:
            line_id = None
        kept = None if line_id is None else self._lines.get((order, line_id))
        if kept is not None and kept[0] == int(info["lsn"]) and "source" in kept[2]:
            return kept[2]
        if _TRIGGER_BYTES in stored:
            return self._decode(_unb64(stored[_TRIGGER_BYTES]))
        return thaw(stored)

    def _memo(self) -> LineMemo:
        """The lines mapped so far, unless the reference data changed since."""
        data = self._references.data
        now = (data, data.generation)
        if self._memo_of != now or len(self._line_memo) >= _KEPT_MAX:
            self._line_memo.clear()
            self._memo_of = now
        return self._line_memo

    def _row_basics(
        self,
        work: UnitOfWork,
        route: Route,
        envelope: dict[str, Any],
        message: Inbound,
        column: str,
    ) -> RowBasics | None:
        basics = row_basics(envelope, column)
        if isinstance(basics, Skipped):
            work.tally.add(Count.SKIPPED, route.flow.name)
            return None
        if isinstance(basics, Failed):
            raw = Raw.of(message, envelope)
            self._emitter.dead_letter(work, route.flow.name, basics, raw, ())
            return None
        return basics

    def header(
        self, work: UnitOfWork, route: Route, envelope: dict[str, Any], message: Inbound
    ) -> None:
        """A header change: keep the header, register the change with its transaction."""
        flow = route.flow
        basics = self._row_basics(work, route, envelope, message, flow.key)
        if basics is None:
            return
        order = f"{flow.name}|{basics.key}"
        stored = work.peek(ASSEMBLY, f"h|{order}")
        if stored is not None and basics.lsn < int(stored["lsn"]):
            work.tally.add(Count.DEDUPED, flow.name)
            return
        replay = stored is not None and basics.lsn == int(stored["lsn"])
        if not replay:
            work.put(
                ASSEMBLY,
                f"h|{order}",
                {
                    "lsn": basics.lsn,
                    "op": basics.op,
                    "key": b64(message.key),
                    "value": b64(message.value),
                    "origin": [
                        message.origin.topic,
                        message.origin.partition,
                        message.origin.offset,
                    ],
                },
            )
            self._keep_header(order, basics.lsn, envelope)
        collection = f"{flow.schema}.{flow.table}"
        self._register(
            work, flow, order, basics, None, collection, replay=replay, replays=message.replays
        )

    def line(
        self,
        work: UnitOfWork,
        route: Route,
        envelope: dict[str, Any],
        message: Inbound,
        *,
        after_release: bool = False,
    ) -> None:
        """A line change: keep the line under its order, register it with its transaction.

        ``after_release``: source order released the line's transaction before (see
        :meth:`streams.ordering.SourceOrder.released`). A new change of it (not one sent
        again) whose order that transaction published already is late: see
        :meth:`_late_line`.
        """
        flow = route.flow
        lines = flow.lines
        assert lines is not None
        basics = self._row_basics(work, route, envelope, message, lines.key)
        if basics is None:
            return
        collection = f"{flow.schema}.{lines.table}"
        parent_key = f"lp|{flow.name}|{basics.key}"
        known_parent = work.peek(ASSEMBLY, parent_key)
        # A delete's old row may hold only the key (REPLICA IDENTITY DEFAULT): use the index.
        parent = None if basics.op == "d" else line_parent(flow, basics.row)
        parent = parent or known_parent
        if parent is None:
            work.tally.add(Count.IGNORED, "orphan_line")
            self._register(work, flow, None, basics, None, collection, replay=False)
            return
        order = f"{flow.name}|{parent}"
        current_lines = _lines_to_change(work, order)
        current = current_lines.get(basics.key)
        if current is not None and basics.lsn < int(current["lsn"]):
            work.tally.add(Count.DEDUPED, flow.name)
            return
        replay = current is not None and basics.lsn == int(current["lsn"])
        # Its bytes, once: the line keeps them, its transaction too (what triggered it).
        value = b64(message.value)
        trigger = _trigger_of(basics.key, value)
        if not replay:
            current_lines[basics.key] = {"lsn": basics.lsn, "op": basics.op, "value": value}
            work.put(ASSEMBLY, f"l|{order}", current_lines)
            self._keep_line(order, basics.key, basics.lsn, basics.op, envelope)
            work.put(ASSEMBLY, parent_key, None if basics.op == "d" else parent)
            if known_parent is not None and known_parent != parent:
                moved_from = f"{flow.name}|{known_parent}"
                old_lines = _lines_to_change(work, moved_from)
                old_lines.pop(basics.key, None)
                work.put(ASSEMBLY, f"l|{moved_from}", old_lines or None)
                self._register(
                    work, flow, moved_from, basics, trigger, collection, replay=False, count=False
                )
        if (
            after_release
            and (not replay or message.replays)
            and self._went_out_before(work, flow, order, basics)
        ):
            self._late_line(work, flow, parent, basics, Raw.of(message, envelope))
            return
        self._register(
            work, flow, order, basics, trigger, collection, replay=replay, replays=message.replays
        )

    def _went_out_before(self, work: UnitOfWork, flow: Flow, order: str, basics: RowBasics) -> bool:
        """Whether the line's transaction is decided and ``order`` went out without the line.

        Not while the transaction is assembled (its pending record is there) or the order
        waits for a reference (it is assembled again, with the line); not when the order
        never went out (filtered out, no header yet) or is deleted.
        """
        if work.peek(ASSEMBLY, f"{TX_PREFIX}{flow.system}|{basics.tx}") is not None:
            return False
        if work.peek(ASSEMBLY, _wait_key(order)) is not None:
            return False
        header = work.peek(ASSEMBLY, f"h|{order}")
        if header is None or _header_op(header) == "d":
            return False
        order_id = order.split("|", 1)[1]
        return (
            work.peek(DEDUPE, entity_dedupe_key(flow.target, entity_key(flow, order_id)))
            is not None
        )

    def _late_line(
        self, work: UnitOfWork, flow: Flow, order_id: str, basics: RowBasics, raw: Raw
    ) -> None:
        """Dead-letter a line read after its transaction's order was published without it.

        The order left incomplete (its transaction was released after the assembly
        timeout) and its target owns the lines of an order it created, so publishing the
        order again would not bring the line there: the letter (``late_line``, naming
        the order, the transaction and the line's LSN) is what carries it to someone who
        can. The line is kept as the order's current line all the same.
        """
        failed = Failed(
            Reason.LATE_LINE,
            None,
            f"line {basics.key} of order {order_id} read after its transaction {basics.tx} "
            "was released without it (assembly timeout): the order went out without this "
            "line, and its target owns the lines of an order it created",
        )
        context = (("order", order_id), ("transaction", str(basics.tx)), ("lsn", str(basics.lsn)))
        self._emitter.dead_letter(work, flow.name, failed, raw, context)

    def _register(
        self,
        work: UnitOfWork,
        flow: Flow,
        order: str | None,
        basics: RowBasics,
        trigger: dict[str, Any] | None,
        collection: str,
        *,
        replay: bool,
        count: bool = True,
        replays: int = 0,
    ) -> None:
        """Note a row change of ``order`` in its transaction; assemble when it completes.

        ``trigger``: a line's change (:func:`_trigger_of`: its id and bytes), kept as
        what caused the order's next event (None for a header, or a line of no order).
        ``replays``: the replay count of a replayed dead letter (assembled at once).
        """
        snapshot = basics.tx is None
        if snapshot:
            if order is None:
                return
            pending = f"{SNAP_PREFIX}{order}"
        else:
            pending = f"{TX_PREFIX}{flow.system}|{basics.tx}"
            if order is not None and work.peek(ASSEMBLY, f"{SNAP_PREFIX}{order}") is not None:
                # The transaction assembles the order from every row read so far, its
                # snapshot rows included: settling the snapshot would assemble (or
                # dead-letter) the same order again. A snapshot row read later waits anew.
                work.put(ASSEMBLY, f"{SNAP_PREFIX}{order}", None)
        record = _pending_to_change(work, pending)
        if replay:
            if record is None and order is not None and replays:
                # A replayed dead letter, its order assembled or given up on before:
                # assemble again now; dedupe drops it if nothing changed. The same change
                # sent again by a restarted capture (no replay count) was taken in with
                # its transaction, whose decision stands: assembling it now, as final,
                # would dead-letter an order still waiting for its reference.
                info = {
                    "flow": flow.name,
                    "lsn": basics.lsn,
                    "trigger": trigger,
                    "replays": replays,
                }
                self._assemble(work, order, info, "replay", final=True)
            return
        if record is None:
            record = {
                "due": work.now_ms + (self._settle_ms if snapshot else self._timeout_ms),
                "expected": None,
                "seen": {},
                "orders": {},
                "give_up": None,
            }
        if snapshot:
            record["due"] = work.now_ms + self._settle_ms
        if count:
            record["seen"][collection] = record["seen"].get(collection, 0) + 1
        if order is not None:
            info = record["orders"].setdefault(
                order, {"flow": flow.name, "lsn": basics.lsn, "trigger": None}
            )
            if basics.lsn >= int(info["lsn"]):
                info["lsn"] = basics.lsn
                info["trigger"] = trigger
        self.complete(work, pending, record, how="complete", forced=False)

    def transaction(self, work: UnitOfWork, system: str, envelope: dict[str, Any]) -> None:
        """A ``<system>.transaction`` record: an END tells how many changes to expect."""
        tally = work.tally
        tx = envelope.get("id")
        if envelope.get("status") != "END" or not isinstance(tx, str):
            tally.add(Count.IGNORED, "transaction_begin")
            return
        wanted = self._order_collections.get(system, set())
        expected: dict[str, int] = {}
        for item in envelope.get("data_collections") or ():
            if not isinstance(item, Mapping):
                continue
            name, count = item.get("data_collection"), item.get("event_count")
            if name in wanted and isinstance(count, int) and count > 0:
                expected[name] = count
        if not expected:
            tally.add(Count.IGNORED, "transaction_end")
            return
        pending = f"{TX_PREFIX}{system}|{tx}"
        record = _pending_to_change(work, pending) or {
            "due": work.now_ms + self._timeout_ms,
            "expected": None,
            "seen": {},
            "orders": {},
            "give_up": None,
        }
        record["expected"] = expected
        self.complete(work, pending, record, how="complete", forced=False)

    def complete(
        self, work: UnitOfWork, pending: str, record: dict[str, Any], *, how: str, forced: bool
    ) -> None:
        """Assemble the orders of a pending record if it is complete (or ``forced``).

        An order that fails for a missing reference waits in its own record (see
        :meth:`_wait`), retried on each tick until its ``give_up``; the pending record is
        deleted once its orders are assembled, dead-lettered or waiting.
        """
        expected = record["expected"]
        complete = expected is not None and all(
            record["seen"].get(name, 0) >= count for name, count in expected.items()
        )
        if not complete and not forced:
            work.put(ASSEMBLY, pending, record)
            return
        if not complete and how == "timeout" and record["orders"]:
            work.warn(
                f"orders {', '.join(sorted(record['orders']))} of transaction "
                f"{pending.removeprefix(TX_PREFIX)} assembled incomplete after the assembly "
                f"timeout: read {record['seen']}, expected {expected or 'an END never read'}"
            )
        if record["give_up"] is None:
            record["give_up"] = work.now_ms + self._waiting.wait_ms
        final = self._waiting.wait_ms == 0 or work.horizon_ms >= int(record["give_up"])
        still_here = False
        for order, info in sorted(record["orders"].items()):
            waits = _wait_key(order)
            if not self._assemble(work, order, info, how, final=final):
                if waits == pending:
                    still_here = True
                else:
                    self._wait(work, order, info, int(record["give_up"]))
            elif waits != pending and work.peek(ASSEMBLY, waits) is not None:
                work.put(ASSEMBLY, waits, None)  # assembled or dead-lettered: it waits no more
        if not still_here:
            work.put(ASSEMBLY, pending, None)

    def _wait(self, work: UnitOfWork, order: str, info: Mapping[str, Any], give_up: int) -> None:
        """Let ``order`` wait for its reference in its one record, until ``give_up`` at least.

        Whichever transactions failed on it, the order waits (and is dead-lettered) once:
        as of its latest change, until the latest of their give-ups.
        """
        key = _wait_key(order)
        found = work.peek(ASSEMBLY, key)  # only read
        if found is not None:
            before = found["orders"].get(order)
            if before is not None and int(before["lsn"]) > int(info["lsn"]):
                info = before
            give_up = max(give_up, int(found["give_up"]))
        work.put(
            ASSEMBLY,
            key,
            {
                "due": give_up,
                "expected": None,
                "seen": {},
                "orders": {order: dict(info)},
                "give_up": give_up,
            },
        )

    def _assemble(
        self, work: UnitOfWork, order: str, info: Mapping[str, Any], how: str, *, final: bool
    ) -> bool:
        """Build and publish one order from its header and current lines.

        Returns False when it failed for a missing reference and may be retried.
        """
        flow = self._flows[info["flow"]]
        tally = work.tally
        header = work.peek(ASSEMBLY, f"h|{order}")  # both only read here
        if header is None:
            tally.add(Count.ORDERS, "no_header")
            return True
        line_rows = work.peek(ASSEMBLY, f"l|{order}") or {}
        topic, partition, offset = header["origin"]
        raw = Raw(
            unb64(header["key"]),
            unb64(header["value"]),
            Origin(topic, partition, offset),
            int(info.get("replays", 0)),
        )
        try:
            envelope = self._header_envelope(order, header)
            rows = [
                self._line_envelope(order, line_id, line)["after"]
                for line_id, line in line_rows.items()
                if line["op"] != "d"
            ]
            trigger = None
            if info.get("trigger") is not None and int(info["lsn"]) > int(header["lsn"]):
                trigger = self._trigger(order, flow, info)
        except DecodeError as exc:  # its bytes decoded when read: the schema is gone
            letter = dlq.undecodable(exc, raw, flow.name)
            self._emitter.send(work, letter)
            return True
        ref = self._references.data
        result = to_canonical(
            flow,
            envelope,
            known_skus=ref.known_skus,
            crosswalk=ref.crosswalk,
            lookups=ref.lookups,
            lines=rows,
            trigger=trigger,
            line_memo=self._memo(),
        )
        if isinstance(result, Skipped):
            tally.add(Count.SKIPPED, flow.name)
            return True
        if isinstance(result, Failed):
            if result.reason in PARKABLE and not final:
                return False
            context = (("order", order.split("|", 1)[1]), ("lsn", str(info["lsn"])))
            self._emitter.dead_letter(work, flow.name, result, raw, context)
            return True
        if self._emitter.publish(
            work, flow.name, result.value, raw, result.fixes, result.quarantined
        ):
            tally.add(Count.ORDERS, how)
        if _header_op(header) == "d":
            for line_id in line_rows:
                work.put(ASSEMBLY, f"lp|{flow.name}|{line_id}", None)
            work.put(ASSEMBLY, f"l|{order}", None)
        return True

    # -- ticks ----------------------------------------------------------------------

    def expire(self, work: UnitOfWork, system: str, tx: str) -> None:
        """Transaction ``tx`` will get no ``END``: assemble its orders from what they have."""
        key = f"{TX_PREFIX}{system}|{tx}"
        record = _pending_to_change(work, key)
        if record is not None:
            self.complete(work, key, record, how="timeout", forced=True)

    def tick(self, work: UnitOfWork, key: str, record: dict[str, Any]) -> None:
        """A tick found the pending record ``key`` due: assemble what it holds."""
        if record["give_up"] is not None:
            how = "complete"
        elif key.startswith(SNAP_PREFIX):
            how = "settled"
        else:
            how = "timeout"
        self.complete(work, key, record, how=how, forced=True)


def _lines_to_change(work: UnitOfWork, order: str) -> dict[str, Any]:
    """The current lines of ``order`` (``<flow>|<order id>``), to change and put back.

    Only the mapping of line id -> line is changed (a line is replaced or removed, never
    changed in place), so it alone is copied: a transaction of many lines of one order
    read each other's writes, and a deep copy of every line each time cost as much as
    the lines' other work.
    """
    current = work.peek(ASSEMBLY, f"l|{order}")
    return {} if current is None else dict(current)


def _pending_to_change(work: UnitOfWork, key: str) -> dict[str, Any] | None:
    """A pending record (``tx|...``), to change and put back; None if there is none.

    What its changes touch is copied: the record, its ``seen`` counts, its ``orders`` and
    each order's entry. The entries' triggers (line changes, the bulk of a record
    of many lines) are replaced, never changed in place, so they are shared.
    """
    found = work.peek(ASSEMBLY, key)
    if found is None:
        return None
    record = dict(found)
    record["seen"] = dict(found["seen"])
    record["orders"] = {order: dict(info) for order, info in found["orders"].items()}
    return record


def _trigger_of(line_id: str, value: str | None) -> dict[str, Any]:
    """A line change as an order's transaction keeps it: the line's id and its bytes."""
    return {_TRIGGER_LINE: line_id, _TRIGGER_BYTES: value}


def _header_op(header: Mapping[str, Any]) -> Any:
    """The op of an order's last header change, from its stored form (either format)."""
    env = header.get("env")
    return env.get("op") if env is not None else header.get("op")


def _unb64(text: str | None) -> bytes:
    """Stored bytes (base64) of a change: a change always has a value."""
    data = unb64(text)
    if data is None:
        raise DecodeError("a stored change has no bytes")
    return data


def _wait_key(order: str) -> str:
    """The ``assembly`` key where ``order`` (``<flow>|<order id>``) waits for a reference."""
    return f"{WAIT_PREFIX}{order}"
