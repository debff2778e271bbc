"""The streams stage's orchestration: one raw change in, canonical events and state changes out.

:class:`StreamProcessor` sits between a raw message (as read from the worker's sequenced
topic, see :mod:`streams.app`) and the pure functions of :mod:`streams.transform`,
:mod:`streams.dedupe`, :mod:`streams.crosswalk` and :mod:`streams.inventory`. It picks
the flows of the message's table, decodes the envelope, runs them, and returns an
:class:`Outcome`: the messages to publish (canonical events and dead letters), the
state :class:`Write` s, and a :class:`Tally` of what happened. It has no Kafka, Faust
or clock in it: time is the message's timestamp, state is read through
:class:`StateView` and written only by :meth:`StreamProcessor.commit`, so a test drives
it with :class:`DictState`.

Contract with the caller (the Faust agent), in this order:

1. ``outcome = processor.process(message, state)`` -- pure apart from the reference
   caches (see below); raises :class:`~schemas.errors.RetriableError` when the schema
   registry is unreachable (retry the same message) and :class:`DeadLetterError` when
   the dead-letter policy is ``fail``.
2. publish ``outcome.outbound`` and wait until Kafka acknowledged all of it;
3. ``processor.commit(outcome, state)`` -- only now does the state change.

So state never runs ahead of what was published: after a crash anywhere, replaying the
message recomputes the same outputs (a restarted worker drops the ones already
published, see :mod:`streams.app`), and nothing is lost. Step 1 updates the in-memory
reference caches as it goes; if it raises, call :meth:`StreamProcessor.rollback`
before retrying. Step 2 may be retried with the same outcome.

A batch follows the same contract: process each of its messages in order against a
:class:`StagedState` over the committed state, staging each outcome's writes there (so
the decisions are those of one message at a time), publish all the outcomes' messages,
then commit the outcomes in order. If a step 1 raises, roll back and restart the batch
from its first message.

State lives in four tables (:data:`TABLES`), JSON values under text keys:

- ``dedupe``: ``<entity>|<system>:<id>`` -> ``[version, payload hash]`` of the last event
  kept (:mod:`streams.dedupe`).
- ``reference``: what any record may need, mirrored in memory (:class:`ReferenceData`):
  crosswalk links ``xw|<entity>|<erp|crm>|<id>``, both systems' customers' match keys
  ``cidx|<erp|crm>|<id>`` (rule -> normalised key; an older store's ``cidx|<erp id>`` is
  read as an ERP customer's and removed when that customer is next indexed), suspected
  duplicates ``dup|customer|<erp|crm>|<id>`` -> ``[other system's id, evidence]``, ERP
  product id -> SKU ``sku|<id>``, CRM product by SKU ``crmsku|<sku>``.
- ``inventory``: per quant ``q|<flow>|<quant id>`` (product, LSN), per product its quants
  ``qs|<flow>|<product>`` and last totals ``t|<flow>|<product>``.
- ``assembly``: orders being assembled: last header ``h|<flow>|<order id>`` (with its
  original bytes, for dead letters), current lines ``l|<flow>|<order id>``, line ->
  order ``lp|<flow>|<line id>``, open transactions ``tx|<system>|<txid>`` and snapshot
  orders ``tx|snap|<flow>|<order id>``, and records waiting for a reference
  ``park|<topic>|<partition>|<offset>|<flow>``.

Decisions:

- **Dedupe.** Entities: by (entity key, version) and payload hash (stale and no-op events
  are dropped and counted). Source rows that are state (quants, order headers and
  lines) are also checked per row: a change with a lower LSN than the row's last one is
  stale; the same LSN is a re-delivery (idempotent).
- **Crosswalk.** An ERP customer with ``crm_account_id`` is linked to that account.
  Customers of both systems are indexed under their customer number, VAT id, e-mail and
  name + country (deleted and archived ones are dropped). A customer whose event carries
  no counterpart id (so it has no link) is matched against the other system's index
  (:func:`streams.crosswalk.resolve_customer`): matched with a free record, the two are
  linked and the event carries the other id; matched with a record linked to another
  one, it is a suspected duplicate: not linked, its event carries ``duplicate_of`` and
  ``duplicate_rule`` (the evidence, ``rule=normalised key``) so the sink holds it
  instead of creating a second copy, and the flag is kept (and repeated on later
  changes) until the record is linked. Records the sinks create come back linked: an
  ERP partner created for an account carries ``crm_account_id``, a CRM account created
  for a customer carries its customer number, the strongest rule. Products are linked
  by SKU.
- **Orders by transaction.** A header (``sale_order``, ``aos_quotes``) and its lines
  are kept per order. Each change is registered with its source transaction
  (``transaction.id``); the transaction completes when the ``END`` record of
  ``<system>.transaction`` has arrived and as many changes of each order table as it
  counts have been seen (in any order: the topics are read concurrently). Then each
  order it touched is assembled once from the current header and lines. The event's
  position (event id, LSN) is its latest change in that transaction, so a later line
  edit gives a new, higher version. Snapshot reads have no transaction: their orders
  are assembled once no row of theirs arrived for ``snapshot_settle``; a transaction
  whose ``END`` is missing is assembled after ``assembly_timeout``.
- **Waiting for references.** A record failing only because a reference is not known yet
  (``unresolved_reference``, ``unknown_sku``: the product may be in a topic not read
  that far) is parked and retried on every tick for ``reference_wait``, then
  dead-lettered. Ticks come through the same sequenced topic as the data, so every
  decision depends only on that log and replays the same.
- **Dead letters.** Everything that fails goes to :data:`streams.dlq.DLQ_TOPIC` with the
  original bytes and the reason, under the ``dlq|skip|fail`` policy; an assembled order
  is dead-lettered with its header's bytes (replaying it re-assembles the order).
"""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Literal, Protocol

from schemas.errors import DecodeError, PermanentError, ValidationError
from schemas.mapping import Cast, Flow, Grain, convert
from schemas.payload import never_noop
from schemas.topics import raw_topic, transaction_topic
from streams import dlq, inventory
from streams.crosswalk import (
    CrosswalkState,
    CustomerIndex,
    CustomerMatch,
    SuspectedDuplicate,
    crm_id_for,
    erp_id_for,
    index_customer,
    index_keys,
    new_crosswalk,
    new_customer_index,
    other_system,
    resolve_customer,
)
from streams.dedupe import Verdict, decide, payload_hash
from streams.dlq import DeadLetter, Origin
from streams.transform import (
    CanonicalEvent,
    Skipped,
    inventory_event,
    line_parent,
    to_canonical,
    to_stock_change,
)
from streams.validation import Failed, Fix, Reason

__all__ = [
    "ASSEMBLY",
    "DEDUPE",
    "H_KIND",
    "INVENTORY",
    "KIND_TICK",
    "REFERENCE",
    "TABLES",
    "Count",
    "DeadLetterError",
    "DictState",
    "Inbound",
    "Kind",
    "Outbound",
    "Outcome",
    "ReferenceData",
    "StagedState",
    "StateStore",
    "StateView",
    "StreamProcessor",
    "Tally",
    "Write",
    "freeze",
    "thaw",
]

DEDUPE: Final = "dedupe"
REFERENCE: Final = "reference"
INVENTORY: Final = "inventory"
ASSEMBLY: Final = "assembly"
TABLES: Final = (DEDUPE, REFERENCE, INVENTORY, ASSEMBLY)
"""The state tables; each a text key -> JSON value mapping."""

H_KIND: Final = "erpcrm.kind"
"""Header of a sequenced message saying what it is; absent: a raw change."""
KIND_TICK: Final = b"tick"

PARKABLE: Final = frozenset({Reason.UNRESOLVED_REFERENCE, Reason.UNKNOWN_SKU})
"""Failures that a later record may cure: retried for a while before dead-lettering."""

_UPSERT_OPS: Final = frozenset({"c", "u", "r"})
_ROWLESS_OPS: Final = frozenset({"t", "m"})
_TX_PREFIX: Final = "tx|"
_SNAP_PREFIX: Final = "tx|snap|"
_PARK_PREFIX: Final = "park|"
_DECIMAL: Final = "$decimal"
_BYTES: Final = "$bytes"
_DATETIME: Final = "$datetime"
_DATE: Final = "$date"


# ------------------------------------------------------------------------ counting


class Count(StrEnum):
    """What the processor counts; each with fixed labels (see :mod:`streams.metrics`)."""

    EVENTS_IN = "events_in"
    """Raw change events per flow (``transaction`` for transaction metadata)."""
    EVENTS_OUT = "events_out"
    """Canonical events published, per flow."""
    DEAD_LETTERS = "dead_letters"
    """Rejected records per reason, whatever the dead-letter policy."""
    DEDUPED = "deduped"
    """Stale events dropped (duplicate or overtaken), per flow."""
    NO_OPS = "no_ops"
    """Events dropped because their payload equals the last one, per flow."""
    ECHOES = "echoes"
    """Changes carrying a sink's replication origin, per system."""
    SKIPPED = "skipped"
    """Changes that are no business event (filtered out, truncates), per flow."""
    FIXES = "fixes"
    """Cleansing fixes, per flow and rule."""
    LINKS = "links"
    """Crosswalk links made, per entity and rule."""
    AMBIGUOUS = "ambiguous"
    """Matches that had several candidates (the lowest id was linked), per entity."""
    DUPLICATES = "duplicates"
    """Records newly held as suspected duplicates, per entity, system and match rule."""
    ORDERS = "orders"
    """Orders assembled, per how: complete, timeout, settled, replay, no_header."""
    PARKED = "parked"
    """Records parked to wait for a reference, per reason."""
    IGNORED = "ignored"
    """Messages that carry nothing to process, per what (tombstone, unrouted, ...)."""


class Tally(Counter[tuple[str, ...]]):
    """Counts keyed by ``(Count, *labels)``."""

    def add(self, what: Count, *labels: str, n: int = 1) -> None:
        """Count ``n`` of ``what`` under ``labels``."""
        self[(what.value, *labels)] += n

    def of(self, what: Count, *labels: str) -> int:
        """The count of ``what`` under exactly ``labels``."""
        return self[(what.value, *labels)]


# --------------------------------------------------------------------- messages


class Kind(StrEnum):
    """What a sequenced message is."""

    CHANGE = "change"
    TICK = "tick"


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as the processor sees it.

    Attributes:
        origin: where the raw message was read (for ticks: the sequenced position).
        key: the raw key bytes.
        value: the raw value bytes (None: a tombstone).
        timestamp_ms: the sequenced message's timestamp; the processor's only clock.
        kind: a raw change, or a tick.
    """

    origin: Origin
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    kind: Kind = Kind.CHANGE


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to publish: a canonical event or a dead letter.

    ``output_id`` (also the ``erpcrm.output_id`` header) is the event id, or the dead
    letter's deterministic id.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    output_id: str
    flow: str | None = None
    event: CanonicalEvent | None = None
    dead_letter: DeadLetter | None = None


@dataclass(frozen=True, slots=True)
class Write:
    """One state change: ``value`` None deletes the key."""

    table: str
    key: str
    value: Any


@dataclass
class Outcome:
    """What one message produced: messages to publish, state writes, counts."""

    outbound: list[Outbound] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)

    @property
    def events(self) -> list[CanonicalEvent]:
        """The canonical events to publish, in order."""
        return [o.event for o in self.outbound if o.event is not None]

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters to publish, in order."""
        return [o.dead_letter for o in self.outbound if o.dead_letter is not None]


class DeadLetterError(PermanentError):
    """A record was rejected and the dead-letter policy is ``fail``."""

    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(f"{letter.origin}: {letter.message}")
        self.letter = letter


# ------------------------------------------------------------------------ state


class StateView(Protocol):
    """Read access to the state tables. Every call returns a fresh value."""

    def get(self, table: str, key: str) -> Any:
        """Return the value of ``key`` in ``table``, or None."""
        ...

    def scan(self, table: str, prefix: str) -> Iterator[tuple[str, Any]]:
        """Yield every ``(key, value)`` of ``table`` whose key starts with ``prefix``."""
        ...


class StateStore(StateView, Protocol):
    """State that can be changed (only by :meth:`StreamProcessor.commit`)."""

    def apply(self, writes: Sequence[Write]) -> None:
        """Apply ``writes`` in order."""
        ...


class DictState:
    """State in plain dicts, values kept as JSON text (what a Faust table would hold)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, str]] = {name: {} for name in TABLES}

    def get(self, table: str, key: str) -> Any:
        """Return a fresh copy of the value of ``key``, or None."""
        text = self.tables[table].get(key)
        return None if text is None else json.loads(text)

    def scan(self, table: str, prefix: str) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, value)`` of ``table`` for keys starting with ``prefix``, sorted."""
        for key in sorted(self.tables[table]):
            if key.startswith(prefix):
                yield key, json.loads(self.tables[table][key])

    def apply(self, writes: Sequence[Write]) -> None:
        """Apply ``writes``; values must be JSON-serialisable."""
        for write in writes:
            if write.value is None:
                self.tables[write.table].pop(write.key, None)
            else:
                self.tables[write.table][write.key] = json.dumps(write.value)

    def values(self, table: str) -> dict[str, Any]:
        """Every entry of ``table``, decoded (for tests and tools)."""
        return dict(self.scan(table, ""))


class StagedState:
    """A batch's view of the state: ``base`` as committed, plus the writes staged so far.

    A worker that decides many messages before it publishes and commits any of them
    processes each against this view and stages its writes here, so every message sees
    the writes of the ones before it, as if they had been committed one at a time.
    Values are kept as JSON text, as :class:`DictState` keeps them and as the tables
    store them: a read returns a fresh value, shaped as a committed one would be.
    ``base`` is never changed; to commit, apply each outcome's writes to it in order.
    """

    def __init__(self, base: StateView) -> None:
        self._base = base
        self._staged: dict[tuple[str, str], str | None] = {}

    def get(self, table: str, key: str) -> Any:
        """Return the staged value of ``key``, else the committed one; None if absent."""
        try:
            text = self._staged[(table, key)]
        except KeyError:
            return self._base.get(table, key)
        return None if text is None else json.loads(text)

    def scan(self, table: str, prefix: str) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, value)`` of ``table`` for keys starting with ``prefix``, sorted."""
        found = dict(self._base.scan(table, prefix))
        for (staged_table, key), text in self._staged.items():
            if staged_table != table or not key.startswith(prefix):
                continue
            if text is None:
                found.pop(key, None)
            else:
                found[key] = json.loads(text)
        for key in sorted(found):
            yield key, found[key]

    def stage(self, writes: Sequence[Write]) -> None:
        """Stage ``writes`` (in order) on top of what is staged already."""
        for write in writes:
            value = write.value
            self._staged[(write.table, write.key)] = None if value is None else json.dumps(value)


def freeze(value: Any) -> Any:
    """Return a JSON-able form of a decoded Avro value; :func:`thaw` inverts it exactly.

    Decimals keep their scale, bytes are base64, dates and times ISO-8601.
    """
    if isinstance(value, Decimal):
        return {_DECIMAL: format(value, "f")}
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, date):
        return {_DATE: value.isoformat()}
    if isinstance(value, Mapping):
        return {str(k): freeze(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [freeze(v) for v in value]
    return value


def thaw(value: Any) -> Any:
    """Return the value :func:`freeze` was given."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, text),) = value.items()
            if tag == _DECIMAL:
                return Decimal(text)
            if tag == _BYTES:
                return base64.b64decode(text)
            if tag == _DATETIME:
                return datetime.fromisoformat(text)
            if tag == _DATE:
                return date.fromisoformat(text)
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    return value


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


# -------------------------------------------------------------------- references


class ReferenceData:
    """The reference state every record may need, in memory; mirrors the ``reference`` table.

    Updated by :meth:`apply` with each reference write as it is made, rebuilt from the
    table by :meth:`load` (at start, and to undo writes that were not committed).
    """

    def __init__(self) -> None:
        self.crosswalk: CrosswalkState = new_crosswalk()
        self.customers: dict[str, CustomerIndex] = {
            "erp": new_customer_index(),
            "crm": new_customer_index(),
        }
        """Per system, its customers by match key."""
        self.duplicates: dict[str, dict[str, SuspectedDuplicate]] = {"erp": {}, "crm": {}}
        """Per system, its customers held as suspected duplicates."""
        self.legacy_index: set[str] = set()
        """ERP ids still indexed under an older store's ``cidx|<erp id>`` key."""
        self.skus: dict[str, str] = {}
        """ERP product id -> SKU (the ``erp_product_sku`` lookup)."""
        self.products_by_sku: dict[str, str] = {}
        """SKU -> ERP product id (the ERP catalogue, for ``known_sku``)."""
        self.crm_products_by_sku: dict[str, str] = {}
        """SKU -> CRM product id."""

    @classmethod
    def load(cls, state: StateView) -> ReferenceData:
        """Build the caches from the ``reference`` table."""
        data = cls()
        for key, value in state.scan(REFERENCE, ""):
            data.apply(key, value)
        return data

    @property
    def lookups(self) -> Mapping[str, Mapping[str, str]]:
        """Lookup tables for :func:`~streams.transform.to_canonical`."""
        return {"erp_product_sku": self.skus}

    @property
    def known_skus(self) -> Container[str]:
        """The SKUs of the ERP catalogue."""
        return self.products_by_sku

    def apply(self, key: str, value: Any) -> None:
        """Mirror one write of the ``reference`` table (``value`` None: deleted)."""
        kind, _, rest = key.partition("|")
        if kind == "xw":
            entity, side, entity_id = rest.split("|", 2)
            sides = self.crosswalk.setdefault(entity, {"erp": {}, "crm": {}})
            if value is None:
                sides[side].pop(entity_id, None)
            else:
                sides[side][entity_id] = str(value)
        elif kind == "cidx":
            self._apply_index(rest, value)
        elif kind == "dup":
            _, system, entity_id = rest.split("|", 2)
            if value is None:
                self.duplicates[system].pop(entity_id, None)
            else:
                self.duplicates[system][entity_id] = SuspectedDuplicate(
                    str(value[0]), str(value[1])
                )
        elif kind == "sku":
            old = self.skus.pop(rest, None)
            if old is not None and self.products_by_sku.get(old) == rest:
                del self.products_by_sku[old]
            if value is not None:
                self.skus[rest] = str(value)
                self.products_by_sku[str(value)] = rest
        elif kind == "crmsku":
            if value is None:
                self.crm_products_by_sku.pop(rest, None)
            else:
                self.crm_products_by_sku[rest] = str(value)

    def _apply_index(self, rest: str, value: Any) -> None:
        system, _, entity_id = rest.partition("|")
        if system in self.customers and entity_id:
            index_customer(self.customers[system], entity_id, value or {})
            return
        # An older store's ``cidx|<erp id>``: an ERP customer's keys. Scanned before the
        # ``cidx|erp|`` keys (digits sort first), so a newer entry wins; it is deleted
        # only together with a write of the newer key, which keeps the index as it is.
        if value is None:
            self.legacy_index.discard(rest)
            return
        self.legacy_index.add(rest)
        index_customer(self.customers["erp"], rest, _legacy_keys(value))


def _legacy_keys(value: Mapping[str, Any]) -> dict[str, str]:
    """An older index entry's keys (customer number, VAT id, e-mail; no name + country)."""
    return {
        rule: str(key) for rule, key in value.items() if rule in ("customer_number", "vat", "email")
    }


# ------------------------------------------------------------------- internals


@dataclass(frozen=True, slots=True)
class _Route:
    flow: Flow
    role: Literal["entity", "lines"]


@dataclass(frozen=True, slots=True)
class _Raw:
    """The original bytes and position a result is attributed to (for dead letters)."""

    key: bytes | None
    value: bytes | None
    origin: Origin


@dataclass(frozen=True, slots=True)
class _Basics:
    """What a row change carries, read without mapping it."""

    op: str
    lsn: int
    tx: str | None
    key: str
    row: Mapping[str, Any]


@dataclass
class _Retry:
    """A parked record's retry: ``final`` means dead-letter instead of parking again."""

    final: bool
    parked_again: bool = False


class _Work:
    """One message's unit of work: reads see its own writes; writes are collected."""

    def __init__(self, state: StateView, now_ms: int) -> None:
        self.state = state
        self.now_ms = now_ms
        self.overlay: dict[tuple[str, str], Any] = {}
        self.outcome = Outcome()

    def get(self, table: str, key: str) -> Any:
        if (table, key) in self.overlay:
            return copy.deepcopy(self.overlay[(table, key)])
        return self.state.get(table, key)

    def put(self, table: str, key: str, value: Any) -> None:
        self.overlay[(table, key)] = value

    def finish(self) -> Outcome:
        self.outcome.writes = [Write(t, k, v) for (t, k), v in self.overlay.items()]
        return self.outcome


def _text_id(value: object) -> str | None:
    """An id column's value as text, or None if it has no usable one."""
    if value is None:
        return None
    try:
        text = str(convert(Cast.STR, value))
    except (TypeError, ValueError):
        return None
    return text or None


def _basics(envelope: Mapping[str, Any], key_column: str) -> _Basics | Failed | Skipped:
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
    key = _text_id(row.get(key_column))
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
    return _Basics(op=op, lsn=lsn, tx=tx, key=key, row=row)


def _dedupe_key(event: CanonicalEvent) -> str:
    return f"{event.entity}|{event.key}"


def _quant_value(quant: inventory.Quant) -> list[Any]:
    return [quant.location, format(quant.quantity, "f"), format(quant.reserved, "f"), quant.sku]


def _quant(product: str, value: Sequence[Any]) -> inventory.Quant:
    location, quantity, reserved, sku = value
    return inventory.Quant(product, location, Decimal(quantity), Decimal(reserved), sku)


def _totals_value(totals: inventory.StockTotals) -> dict[str, Any]:
    return {
        "product": totals.product,
        "sku": totals.sku,
        "on_hand": format(totals.on_hand, "f"),
        "reserved": format(totals.reserved, "f"),
        "available": format(totals.available, "f"),
        "locations": [
            [loc.location, format(loc.on_hand, "f"), format(loc.reserved, "f")]
            for loc in totals.locations
        ],
        "version": totals.version,
    }


def _totals(value: Mapping[str, Any]) -> inventory.StockTotals:
    return inventory.StockTotals(
        product=value["product"],
        sku=value["sku"],
        on_hand=Decimal(value["on_hand"]),
        reserved=Decimal(value["reserved"]),
        available=Decimal(value["available"]),
        locations=tuple(
            inventory.LocationStock(loc, Decimal(on_hand), Decimal(reserved))
            for loc, on_hand, reserved in value["locations"]
        ),
        version=value["version"],
    )


# ------------------------------------------------------------------- processor


class StreamProcessor:
    """Runs sequenced raw messages through the flows; see the module docstring.

    Args:
        flows: the mapping flows by name (:func:`schemas.mapping.load_mappings`).
        decode: bytes -> decoded Avro record; raises ``DecodeError`` for bad bytes and
            ``RetriableError`` when the registry cannot be reached.
        encode: (entity, canonical record) -> value bytes; raises ``ValidationError``
            when the record does not fit the entity's schema.
        prefixes: each system's raw topic prefix (``{"erp": "erp", "crm": "crm"}``).
        dlq_policy: ``dlq`` (publish dead letters), ``skip`` (count only) or ``fail``
            (raise :class:`DeadLetterError`).
        echo_origins: replication origins whose changes are dropped as echoes.
        assembly_timeout_ms, snapshot_settle_ms, reference_wait_ms: see
            :class:`streams.settings.StreamsSettings`.
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
    ) -> None:
        self._flows = dict(flows)
        self._decode = decode
        self._encode = encode
        self._policy = dlq_policy
        self._echo_origins = frozenset(echo_origins)
        self._timeout_ms = assembly_timeout_ms
        self._settle_ms = snapshot_settle_ms
        self._wait_ms = reference_wait_ms
        prefixes = dict(prefixes or {"erp": "erp", "crm": "crm"})
        routes: dict[str, list[_Route]] = {}
        self._tx_topics: dict[str, str] = {}
        self._order_collections: dict[str, set[str]] = {}
        for flow in self._flows.values():
            prefix = prefixes.get(flow.system, flow.system)
            topic = raw_topic(prefix, flow.schema, flow.table)
            routes.setdefault(topic, []).append(_Route(flow, "entity"))
            if flow.lines is not None:
                lines_topic = raw_topic(prefix, flow.schema, flow.lines.table)
                routes.setdefault(lines_topic, []).append(_Route(flow, "lines"))
                self._tx_topics[transaction_topic(prefix)] = flow.system
                self._order_collections.setdefault(flow.system, set()).update(
                    {f"{flow.schema}.{flow.table}", f"{flow.schema}.{flow.lines.table}"}
                )
        self._routes = {topic: tuple(found) for topic, found in routes.items()}
        self._ref = ReferenceData()
        self._due: dict[str, int] = {}

    # -- what to read ---------------------------------------------------------------

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the flows read: raw change topics and transaction topics, sorted."""
        return tuple(sorted({*self._routes, *self._tx_topics}))

    @property
    def reference(self) -> ReferenceData:
        """The reference caches (read-only for callers)."""
        return self._ref

    @property
    def has_pending(self) -> bool:
        """Whether orders are being assembled or records wait for a reference (ticks needed)."""
        return bool(self._due)

    @property
    def pending_count(self) -> int:
        """How many transactions, snapshot orders and parked records are pending."""
        return len(self._due)

    # -- lifecycle ------------------------------------------------------------------

    def load(self, state: StateView) -> None:
        """(Re)build the in-memory caches from ``state``; call before the first message."""
        self._ref = ReferenceData.load(state)
        self._due = {}
        for prefix in (_TX_PREFIX, _PARK_PREFIX):
            for key, value in state.scan(ASSEMBLY, prefix):
                self._index(key, value)

    def rollback(self, state: StateView) -> None:
        """Forget the cache changes of an outcome that will not be committed."""
        self.load(state)

    def commit(self, outcome: Outcome, state: StateStore) -> None:
        """Apply the outcome's writes, after its messages were published."""
        state.apply(outcome.writes)

    def process(self, message: Inbound, state: StateView) -> Outcome:
        """Process one sequenced message; see the module docstring for the contract.

        Raises:
            RetriableError: the schema registry is unreachable; retry the message.
            DeadLetterError: a record was rejected under the ``fail`` policy.
        """
        work = _Work(state, message.timestamp_ms)
        if message.kind is Kind.TICK:
            self._tick(work)
        else:
            self._receive(work, message, None)
        return work.finish()

    # -- writing --------------------------------------------------------------------

    def _put(self, work: _Work, table: str, key: str, value: Any) -> None:
        work.put(table, key, value)
        if table == REFERENCE:
            self._ref.apply(key, value)
        elif table == ASSEMBLY and key.startswith((_TX_PREFIX, _PARK_PREFIX)):
            self._index(key, value)

    def _index(self, key: str, value: Any) -> None:
        """Keep the in-memory index of pending records: key -> when a tick should look."""
        if value is None:
            self._due.pop(key, None)
        elif key.startswith(_PARK_PREFIX) or value.get("give_up") is not None:
            self._due[key] = 0
        else:
            self._due[key] = int(value["due"])

    def _publish(
        self, work: _Work, flow: str, event: CanonicalEvent, raw: _Raw, fixes: Sequence[Fix]
    ) -> bool:
        """Dedupe an event and, unless dropped, queue it for publishing.

        Returns False when the event was stale (nothing new about the entity).
        """
        record = event.record
        key = _dedupe_key(event)
        stored = work.get(DEDUPE, key)
        known = {} if stored is None else {key: (int(stored[0]), str(stored[1]))}
        digest = payload_hash(record)
        verdict = decide(known, key, int(record["version"]), digest)
        if verdict is Verdict.NO_OP and never_noop(record):
            verdict = Verdict.EMIT
        if verdict is Verdict.STALE:
            work.outcome.tally.add(Count.DEDUPED, flow)
            return False
        for fix in fixes:
            work.outcome.tally.add(Count.FIXES, flow, fix.rule)
        if verdict is Verdict.NO_OP:
            self._put(work, DEDUPE, key, [record["version"], digest])
            work.outcome.tally.add(Count.NO_OPS, flow)
            return True
        try:
            value = self._encode(event.entity, record)
        except ValidationError as exc:
            failed = Failed(Reason.SCHEMA_MISMATCH, None, str(exc))
            self._dead_letter(work, flow, failed, raw, ())
            return True
        self._put(work, DEDUPE, key, [record["version"], digest])
        event_id = str(record["event_id"])
        work.outcome.outbound.append(
            Outbound(
                topic=event.topic,
                key=event.key.encode("utf-8"),
                value=value,
                headers=((dlq.H_OUTPUT_ID, event_id.encode("ascii")),),
                output_id=event_id,
                flow=flow,
                event=event,
            )
        )
        work.outcome.tally.add(Count.EVENTS_OUT, flow)
        return True

    def _dead_letter(
        self,
        work: _Work,
        flow: str | None,
        failed: Failed,
        raw: _Raw,
        context: Iterable[tuple[str, str]],
    ) -> None:
        letter = dlq.from_failure(
            failed, origin=raw.origin, key=raw.key, value=raw.value, flow=flow, context=context
        )
        self._send_dead_letter(work, letter)

    def _send_dead_letter(self, work: _Work, letter: DeadLetter) -> None:
        work.outcome.tally.add(Count.DEAD_LETTERS, letter.reason)
        if self._policy == "fail":
            raise DeadLetterError(letter)
        if self._policy == "skip":
            work.outcome.tally.add(Count.IGNORED, "rejected_skipped")
            return
        work.outcome.outbound.append(
            Outbound(
                topic=dlq.DLQ_TOPIC,
                key=letter.key,
                value=letter.value,
                headers=tuple(letter.headers()),
                output_id=letter.output_id,
                flow=letter.flow,
                dead_letter=letter,
            )
        )

    def _reject(
        self,
        work: _Work,
        route: _Route,
        failed: Failed,
        message: Inbound,
        retry: _Retry | None,
    ) -> None:
        """Park a record that may succeed later, or dead-letter it."""
        if failed.reason in PARKABLE and self._wait_ms > 0:
            if retry is None:
                key = (
                    f"{_PARK_PREFIX}{message.origin.topic}|{message.origin.partition}"
                    f"|{message.origin.offset}|{route.flow.name}"
                )
                self._put(
                    work,
                    ASSEMBLY,
                    key,
                    {
                        "flow": route.flow.name,
                        "role": route.role,
                        "key": _b64(message.key),
                        "value": _b64(message.value),
                        "origin": [
                            message.origin.topic,
                            message.origin.partition,
                            message.origin.offset,
                        ],
                        "until": work.now_ms + self._wait_ms,
                    },
                )
                work.outcome.tally.add(Count.PARKED, failed.reason.value)
                return
            if not retry.final:
                retry.parked_again = True
                return
        raw = _Raw(message.key, message.value, message.origin)
        self._dead_letter(work, route.flow.name, failed, raw, ())

    # -- receiving ------------------------------------------------------------------

    def _receive(self, work: _Work, message: Inbound, retry: _Retry | None) -> None:
        tally = work.outcome.tally
        topic = message.origin.topic
        if message.value is None:
            tally.add(Count.IGNORED, "tombstone")
            return
        system = self._tx_topics.get(topic)
        routes = self._routes.get(topic, ())
        if system is None and not routes:
            tally.add(Count.IGNORED, "unrouted")
            return
        try:
            envelope = self._decode(message.value)
        except DecodeError as exc:
            flow = routes[0].flow.name if routes else None
            letter = dlq.from_error(
                exc,
                reason=dlq.DECODE_ERROR,
                origin=message.origin,
                key=message.key,
                value=message.value,
                flow=flow,
            )
            self._send_dead_letter(work, letter)
            return
        if system is not None:
            tally.add(Count.EVENTS_IN, "transaction")
            self._transaction(work, system, envelope)
            return
        source = envelope.get("source")
        origin = source.get("origin") if isinstance(source, Mapping) else None
        if origin is not None and origin in self._echo_origins:
            tally.add(Count.ECHOES, routes[0].flow.system)
            return
        for route in routes:
            if retry is None:
                tally.add(Count.EVENTS_IN, route.flow.name)
            self._route(work, route, envelope, message, retry)

    def _route(
        self,
        work: _Work,
        route: _Route,
        envelope: dict[str, Any],
        message: Inbound,
        retry: _Retry | None,
    ) -> None:
        flow = route.flow
        if route.role == "lines":
            self._line(work, route, envelope, message)
        elif flow.grain is Grain.LOCATION:
            self._stock(work, route, envelope, message, retry)
        elif flow.lines is not None:
            self._header(work, route, envelope, message)
        else:
            self._entity(work, route, envelope, message, retry)

    # -- plain entities -------------------------------------------------------------

    def _entity(
        self,
        work: _Work,
        route: _Route,
        envelope: dict[str, Any],
        message: Inbound,
        retry: _Retry | None,
    ) -> None:
        flow = route.flow
        ref = self._ref
        result = to_canonical(
            flow,
            envelope,
            known_skus=ref.known_skus,
            crosswalk=ref.crosswalk,
            lookups=ref.lookups,
        )
        if isinstance(result, Skipped):
            work.outcome.tally.add(Count.SKIPPED, flow.name)
            return
        if isinstance(result, Failed):
            self._reject(work, route, result, message, retry)
            return
        event = result.value
        stored = work.get(DEDUPE, _dedupe_key(event))
        if stored is not None and int(event.record["version"]) <= int(stored[0]):
            # Checked before the references: an old change must not undo a newer link.
            work.outcome.tally.add(Count.DEDUPED, flow.name)
            return
        if event.entity == "customer":
            self._customer_reference(work, flow, event)
        elif event.entity == "product":
            self._product_reference(work, flow, event)
        raw = _Raw(message.key, message.value, message.origin)
        self._publish(work, flow.name, event, raw, result.fixes)

    def _link(self, work: _Work, entity: str, erp_id: str, crm_id: str, rule: str) -> None:
        """Link two ids one to one (as :func:`streams.crosswalk.link`), as state writes.

        A suspected-duplicate flag of either id ends with the link.
        """
        crosswalk = self._ref.crosswalk
        old_crm = crm_id_for(crosswalk, entity, erp_id)
        if old_crm == crm_id:
            return
        old_erp = erp_id_for(crosswalk, entity, crm_id)
        if old_crm is not None:
            self._put(work, REFERENCE, f"xw|{entity}|crm|{old_crm}", None)
        if old_erp is not None:
            self._put(work, REFERENCE, f"xw|{entity}|erp|{old_erp}", None)
        self._put(work, REFERENCE, f"xw|{entity}|erp|{erp_id}", crm_id)
        self._put(work, REFERENCE, f"xw|{entity}|crm|{crm_id}", erp_id)
        if entity == "customer":
            self._flag(work, "erp", erp_id, None)
            self._flag(work, "crm", crm_id, None)
        work.outcome.tally.add(Count.LINKS, entity, rule)

    def _flag(
        self, work: _Work, system: str, entity_id: str, flag: SuspectedDuplicate | None
    ) -> None:
        """Record (or, with None, clear) a customer's suspected-duplicate flag."""
        if self._ref.duplicates[system].get(entity_id) == flag:
            return
        value = None if flag is None else [flag.of, flag.evidence]
        self._put(work, REFERENCE, f"dup|customer|{system}|{entity_id}", value)

    def _index_customer(
        self, work: _Work, system: str, entity_id: str, keys: dict[str, str]
    ) -> None:
        """Keep a customer's index entry at ``keys`` (empty: not indexed)."""
        ref = self._ref
        if system == "erp" and entity_id in ref.legacy_index:
            self._put(work, REFERENCE, f"cidx|{entity_id}", None)
        elif ref.customers[system]["keys"].get(entity_id, {}) == keys:
            return
        self._put(work, REFERENCE, f"cidx|{system}|{entity_id}", keys or None)

    def _customer_reference(self, work: _Work, flow: Flow, event: CanonicalEvent) -> None:
        """Link, index and match a customer record; see the module docstring (Crosswalk).

        1. an ERP customer's ``crm_account_id`` links it; 2. the record is (re-)indexed
        under its keys, or dropped from its index when deleted or archived; 3. a
        record without a counterpart is resolved against the other system's index:
        linked, flagged as a suspected duplicate, or left new.
        """
        record = event.record
        system = flow.system
        own_id = str(record[flow.id_field])
        deleted = record["op"] == "delete"
        ref = self._ref
        if system == "erp" and not deleted and record.get("crm_id"):
            self._link(work, "customer", own_id, str(record["crm_id"]), "erp_column")
        self._index_customer(work, system, own_id, index_keys(record))
        if deleted or record.get(flow.other_id_field):
            self._flag(work, system, own_id, None)
            return
        flagged = ref.duplicates[system].get(own_id)
        found = resolve_customer(
            ref.customers[other_system(system)],
            record,
            system=system,
            record_id=own_id,
            crosswalk=ref.crosswalk,
            flagged=flagged,
        )
        if isinstance(found, CustomerMatch):
            erp_id, crm_id = (
                (own_id, found.other_id) if system == "erp" else (found.other_id, own_id)
            )
            self._link(work, "customer", erp_id, crm_id, found.rule)
            if found.ambiguous:
                work.outcome.tally.add(Count.AMBIGUOUS, "customer")
            record[flow.other_id_field] = found.other_id
        elif isinstance(found, SuspectedDuplicate):
            record["duplicate_of"] = found.of
            record["duplicate_rule"] = found.evidence
            if flagged is None:
                work.outcome.tally.add(Count.DUPLICATES, "customer", system, found.rule)
            self._flag(work, system, own_id, found)

    def _product_reference(self, work: _Work, flow: Flow, event: CanonicalEvent) -> None:
        record = event.record
        sku = record.get("sku")
        ref = self._ref
        if flow.system == "erp":
            erp_id = str(record["erp_id"])
            if record["op"] == "delete":
                if erp_id in ref.skus:
                    self._put(work, REFERENCE, f"sku|{erp_id}", None)
                return
            if sku is None:
                return
            if ref.skus.get(erp_id) != sku:
                self._put(work, REFERENCE, f"sku|{erp_id}", sku)
            crm_id = ref.crm_products_by_sku.get(sku)
            if crm_id is not None and record.get("crm_id") is None:
                self._link(work, "product", erp_id, crm_id, "sku")
                record["crm_id"] = crm_id
            return
        crm_id = str(record["crm_id"])
        if record["op"] == "delete" or sku is None:
            return
        if ref.crm_products_by_sku.get(sku) != crm_id:
            self._put(work, REFERENCE, f"crmsku|{sku}", crm_id)
        catalogue_id = ref.products_by_sku.get(sku)
        if catalogue_id is not None and record.get("erp_id") is None:
            self._link(work, "product", catalogue_id, crm_id, "sku")
            record["erp_id"] = catalogue_id

    # -- stock ----------------------------------------------------------------------

    def _stock(
        self,
        work: _Work,
        route: _Route,
        envelope: dict[str, Any],
        message: Inbound,
        retry: _Retry | None,
    ) -> None:
        flow = route.flow
        tally = work.outcome.tally
        result = to_stock_change(flow, envelope, lookups=self._ref.lookups)
        if isinstance(result, Skipped):
            tally.add(Count.SKIPPED, flow.name)
            return
        if isinstance(result, Failed):
            self._reject(work, route, result, message, retry)
            return
        change = result.value
        lsn = int(envelope["source"]["lsn"])
        quant_key = f"q|{flow.name}|{change.quant_id}"
        stored = work.get(INVENTORY, quant_key)
        if stored is not None and lsn < int(stored["lsn"]):
            tally.add(Count.DEDUPED, flow.name)
            return
        for fix in result.fixes:
            tally.add(Count.FIXES, flow.name, fix.rule)
        old = None if stored is None else stored["product"]
        new = None if change.quant is None else change.quant.product
        products = [p for p in dict.fromkeys((old, new)) if p is not None]
        state = inventory.InventoryState()
        for product in products:
            quants = work.get(INVENTORY, f"qs|{flow.name}|{product}") or {}
            if quants:
                state.quants[product] = {q: _quant(product, v) for q, v in quants.items()}
                state.product_of.update(dict.fromkeys(quants, product))
            totals = work.get(INVENTORY, f"t|{flow.name}|{product}")
            if totals is not None:
                state.emitted[product] = _totals(totals)
        changed = inventory.apply(state, change, version=lsn)
        self._put(work, INVENTORY, quant_key, {"product": new, "lsn": lsn})
        for product in products:
            quants_now = state.quants.get(product)
            self._put(
                work,
                INVENTORY,
                f"qs|{flow.name}|{product}",
                {q: _quant_value(v) for q, v in quants_now.items()} if quants_now else None,
            )
            if product in state.emitted:
                self._put(
                    work,
                    INVENTORY,
                    f"t|{flow.name}|{product}",
                    _totals_value(state.emitted[product]),
                )
        if not changed:
            # The product's totals are what was last published (a delivery from an empty
            # quant, a touch without a change): a no-op, counted so that every change in
            # is accounted for.
            tally.add(Count.NO_OPS, flow.name)
        raw = _Raw(message.key, message.value, message.origin)
        for totals in changed:
            built = inventory_event(flow, totals, envelope, crosswalk=self._ref.crosswalk)
            if isinstance(built, Failed):
                self._dead_letter(work, flow.name, built, raw, (("product", totals.product),))
            else:
                self._publish(work, flow.name, built.value, raw, ())

    # -- orders ---------------------------------------------------------------------

    def _row_basics(
        self, work: _Work, route: _Route, envelope: dict[str, Any], message: Inbound, column: str
    ) -> _Basics | None:
        basics = _basics(envelope, column)
        if isinstance(basics, Skipped):
            work.outcome.tally.add(Count.SKIPPED, route.flow.name)
            return None
        if isinstance(basics, Failed):
            raw = _Raw(message.key, message.value, message.origin)
            self._dead_letter(work, route.flow.name, basics, raw, ())
            return None
        return basics

    def _header(
        self, work: _Work, route: _Route, envelope: dict[str, Any], message: Inbound
    ) -> None:
        flow = route.flow
        basics = self._row_basics(work, route, envelope, message, flow.key)
        if basics is None:
            return
        order = f"{flow.name}|{basics.key}"
        stored = work.get(ASSEMBLY, f"h|{order}")
        if stored is not None and basics.lsn < int(stored["lsn"]):
            work.outcome.tally.add(Count.DEDUPED, flow.name)
            return
        replay = stored is not None and basics.lsn == int(stored["lsn"])
        if not replay:
            self._put(
                work,
                ASSEMBLY,
                f"h|{order}",
                {
                    "lsn": basics.lsn,
                    "env": freeze(envelope),
                    "key": _b64(message.key),
                    "value": _b64(message.value),
                    "origin": [
                        message.origin.topic,
                        message.origin.partition,
                        message.origin.offset,
                    ],
                },
            )
        collection = f"{flow.schema}.{flow.table}"
        self._register(work, flow, order, basics, None, collection, replay=replay)

    def _line(self, work: _Work, route: _Route, envelope: dict[str, Any], message: Inbound) -> None:
        flow = route.flow
        lines = flow.lines
        assert lines is not None
        basics = self._row_basics(work, route, envelope, message, lines.key)
        if basics is None:
            return
        collection = f"{flow.schema}.{lines.table}"
        parent_key = f"lp|{flow.name}|{basics.key}"
        known_parent = work.get(ASSEMBLY, parent_key)
        # A delete's old row may hold only the key (REPLICA IDENTITY DEFAULT): use the index.
        parent = None if basics.op == "d" else line_parent(flow, basics.row)
        parent = parent or known_parent
        if parent is None:
            work.outcome.tally.add(Count.IGNORED, "orphan_line")
            self._register(work, flow, None, basics, envelope, collection, replay=False)
            return
        order = f"{flow.name}|{parent}"
        current_lines = work.get(ASSEMBLY, f"l|{order}") or {}
        current = current_lines.get(basics.key)
        if current is not None and basics.lsn < int(current["lsn"]):
            work.outcome.tally.add(Count.DEDUPED, flow.name)
            return
        replay = current is not None and basics.lsn == int(current["lsn"])
        if not replay:
            current_lines[basics.key] = {
                "lsn": basics.lsn,
                "op": basics.op,
                "row": freeze(basics.row),
            }
            self._put(work, ASSEMBLY, f"l|{order}", current_lines)
            self._put(work, ASSEMBLY, parent_key, None if basics.op == "d" else parent)
            if known_parent is not None and known_parent != parent:
                moved_from = f"{flow.name}|{known_parent}"
                old_lines = work.get(ASSEMBLY, f"l|{moved_from}") or {}
                old_lines.pop(basics.key, None)
                self._put(work, ASSEMBLY, f"l|{moved_from}", old_lines or None)
                self._register(
                    work, flow, moved_from, basics, envelope, collection, replay=False, count=False
                )
        self._register(work, flow, order, basics, envelope, collection, replay=replay)

    def _register(
        self,
        work: _Work,
        flow: Flow,
        order: str | None,
        basics: _Basics,
        trigger: dict[str, Any] | None,
        collection: str,
        *,
        replay: bool,
        count: bool = True,
    ) -> None:
        """Note a row change of ``order`` in its transaction; assemble when it completes."""
        snapshot = basics.tx is None
        if snapshot:
            if order is None:
                return
            pending = f"{_SNAP_PREFIX}{order}"
        else:
            pending = f"{_TX_PREFIX}{flow.system}|{basics.tx}"
        record = work.get(ASSEMBLY, pending)
        if replay:
            if record is None and order is not None:
                # Re-delivered after its order was assembled (a replayed dead letter):
                # assemble again now; dedupe drops it if nothing changed.
                info = {"flow": flow.name, "lsn": basics.lsn, "trigger": freeze(trigger)}
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
                info["trigger"] = None if trigger is None else freeze(trigger)
        self._try_complete(work, pending, record, how="complete", forced=False)

    def _transaction(self, work: _Work, system: str, envelope: dict[str, Any]) -> None:
        """A ``<system>.transaction`` record: an END tells how many changes to expect."""
        tally = work.outcome.tally
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
        pending = f"{_TX_PREFIX}{system}|{tx}"
        record = work.get(ASSEMBLY, pending) or {
            "due": work.now_ms + self._timeout_ms,
            "expected": None,
            "seen": {},
            "orders": {},
            "give_up": None,
        }
        record["expected"] = expected
        self._try_complete(work, pending, record, how="complete", forced=False)

    def _try_complete(
        self, work: _Work, pending: str, record: dict[str, Any], *, how: str, forced: bool
    ) -> None:
        """Assemble the orders of a pending record if it is complete (or ``forced``).

        Orders that fail for a missing reference stay in the record, retried on each
        tick until ``give_up``; the record is deleted once it holds no more orders.
        """
        expected = record["expected"]
        complete = expected is not None and all(
            record["seen"].get(name, 0) >= count for name, count in expected.items()
        )
        if not complete and not forced:
            self._put(work, ASSEMBLY, pending, record)
            return
        if record["give_up"] is None:
            record["give_up"] = work.now_ms + self._wait_ms
        final = work.now_ms >= int(record["give_up"])
        waiting = {}
        for order, info in sorted(record["orders"].items()):
            if not self._assemble(work, order, info, how, final=final):
                waiting[order] = info
        if waiting:
            record["orders"] = waiting
            self._put(work, ASSEMBLY, pending, record)
        else:
            self._put(work, ASSEMBLY, pending, None)

    def _assemble(
        self, work: _Work, order: str, info: Mapping[str, Any], how: str, *, final: bool
    ) -> bool:
        """Build and publish one order from its header and current lines.

        Returns False when it failed for a missing reference and may be retried.
        """
        flow = self._flows[info["flow"]]
        tally = work.outcome.tally
        header = work.get(ASSEMBLY, f"h|{order}")
        if header is None:
            tally.add(Count.ORDERS, "no_header")
            return True
        line_rows = work.get(ASSEMBLY, f"l|{order}") or {}
        rows = [thaw(line["row"]) for line in line_rows.values() if line["op"] != "d"]
        trigger = None
        if info.get("trigger") is not None and int(info["lsn"]) > int(header["lsn"]):
            trigger = thaw(info["trigger"])
        ref = self._ref
        result = to_canonical(
            flow,
            thaw(header["env"]),
            known_skus=ref.known_skus,
            crosswalk=ref.crosswalk,
            lookups=ref.lookups,
            lines=rows,
            trigger=trigger,
        )
        if isinstance(result, Skipped):
            tally.add(Count.SKIPPED, flow.name)
            return True
        topic, partition, offset = header["origin"]
        raw = _Raw(_unb64(header["key"]), _unb64(header["value"]), Origin(topic, partition, offset))
        if isinstance(result, Failed):
            if result.reason in PARKABLE and not final:
                return False
            context = (("order", order.split("|", 1)[1]),)
            self._dead_letter(work, flow.name, result, raw, context)
            return True
        if self._publish(work, flow.name, result.value, raw, result.fixes):
            tally.add(Count.ORDERS, how)
        if thaw(header["env"]).get("op") == "d":
            for line_id in line_rows:
                self._put(work, ASSEMBLY, f"lp|{flow.name}|{line_id}", None)
            self._put(work, ASSEMBLY, f"l|{order}", None)
        return True

    # -- ticks ----------------------------------------------------------------------

    def _tick(self, work: _Work) -> None:
        """Assemble what is due, retry what waits for a reference."""
        due = sorted(key for key, when in self._due.items() if when <= work.now_ms)
        for key in due:
            record = work.get(ASSEMBLY, key)
            if record is None:
                self._due.pop(key, None)
            elif key.startswith(_PARK_PREFIX):
                self._retry_parked(work, key, record)
            else:
                if record["give_up"] is not None:
                    how = "complete"
                elif key.startswith(_SNAP_PREFIX):
                    how = "settled"
                else:
                    how = "timeout"
                self._try_complete(work, key, record, how=how, forced=True)

    def _retry_parked(self, work: _Work, key: str, record: Mapping[str, Any]) -> None:
        topic, partition, offset = record["origin"]
        message = Inbound(
            origin=Origin(topic, partition, offset),
            key=_unb64(record["key"]),
            value=_unb64(record["value"]),
            timestamp_ms=work.now_ms,
        )
        retry = _Retry(final=work.now_ms >= int(record["until"]))
        route = next(
            (
                r
                for r in self._routes.get(topic, ())
                if r.flow.name == record["flow"] and r.role == record["role"]
            ),
            None,
        )
        if route is not None and message.value is not None:
            try:
                envelope = self._decode(message.value)
            except DecodeError:  # it decoded when parked; the schema is gone
                envelope = None
            if envelope is not None:
                self._route(work, route, envelope, message, retry)
        if not retry.parked_again:
            self._put(work, ASSEMBLY, key, None)

    # -- views ----------------------------------------------------------------------

    def inventory(self, state: StateView, sku: str | None = None) -> list[dict[str, Any]]:
        """The current stock per product (all, or of one SKU), sorted by SKU.

        Each item: ``sku``, ``erp_id``, ``crm_id``, ``on_hand``, ``reserved``,
        ``available`` (decimal text), ``locations`` and ``version``.
        """
        wanted = None if sku is None else sku.strip().upper()
        items = []
        for _, value in state.scan(INVENTORY, "t|"):
            if wanted is not None and (value.get("sku") or "").upper() != wanted:
                continue
            product = value["product"]
            items.append(
                {
                    "sku": value["sku"],
                    "erp_id": product,
                    "crm_id": crm_id_for(self._ref.crosswalk, "product", product),
                    "on_hand": value["on_hand"],
                    "reserved": value["reserved"],
                    "available": value["available"],
                    "locations": [
                        {"location_id": loc, "on_hand": on_hand, "reserved": reserved}
                        for loc, on_hand, reserved in value["locations"]
                    ],
                    "version": value["version"],
                }
            )
        items.sort(key=lambda item: (item["sku"] or "", item["erp_id"]))
        return items
