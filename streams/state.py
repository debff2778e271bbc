"""The streams stage's state: four tables of JSON values under text keys, and views of them.

The processor reads state through :class:`StateView` and changes it only by returning
:class:`Write` s that the caller applies (:class:`StateStore`) after the outputs were
published. :class:`DictState` keeps the tables in plain dicts (tests, tools);
:class:`StagedState` is a batch's view: the committed state plus the writes the batch's
messages staged so far. :func:`freeze` and :func:`thaw` carry decoded Avro values
(decimals, bytes, dates) through JSON exactly.

The tables (:data:`TABLES`) and what each holds:

- ``dedupe``: ``<entity>|<system>:<id>`` -> ``[version, payload hash]`` of the last event
  kept (:mod:`streams.dedupe`).
- ``reference``: what any record may need, mirrored in memory
  (:class:`streams.references.ReferenceData`): crosswalk links
  ``xw|<entity>|<erp|crm>|<id>``, both systems' customers' match keys
  ``cidx|<erp|crm>|<id>`` (rule -> normalised key; an older store's ``cidx|<erp id>`` is
  read as an ERP customer's and removed when that customer is next indexed), suspected
  duplicates ``dup|customer|<erp|crm>|<id>`` -> ``[other system's id, evidence]``,
  customers being created in the other system ``new|customer|<erp|crm>|<id>`` -> true,
  ERP product id -> SKU ``sku|<id>``, CRM product by SKU ``crmsku|<sku>``.
- ``inventory``: per quant ``q|<flow>|<quant id>`` (product, LSN), per product its quants
  ``qs|<flow>|<product>`` and last totals ``t|<flow>|<product>`` (:mod:`streams.stock`).
- ``assembly``: orders being assembled (:mod:`streams.orders`): last header
  ``h|<flow>|<order id>`` and current lines ``l|<flow>|<order id>`` (each change as its
  original bytes), line -> order ``lp|<flow>|<line id>``, open transactions
  ``tx|<system>|<txid>`` and snapshot orders ``tx|snap|<flow>|<order id>``; and records
  waiting for a reference ``park|<topic>|<partition>|<offset>|<flow>``
  (:mod:`streams.waiting`).
"""

from __future__ import annotations

import base64
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final, Protocol, cast

from schemas.json_text import dump, load

__all__ = [
    "ASSEMBLY",
    "DEDUPE",
    "INVENTORY",
    "REFERENCE",
    "TABLES",
    "DictState",
    "StagedState",
    "StateStore",
    "StateView",
    "TextWrite",
    "Write",
    "b64",
    "dump",
    "freeze",
    "fresh_copy",
    "load",
    "thaw",
    "unb64",
]

DEDUPE: Final = "dedupe"
REFERENCE: Final = "reference"
INVENTORY: Final = "inventory"
ASSEMBLY: Final = "assembly"
TABLES: Final = (DEDUPE, REFERENCE, INVENTORY, ASSEMBLY)
"""The state tables; each a text key -> JSON value mapping."""

_UNSEEN: Final[Any] = object()
_DECIMAL: Final = "$decimal"
_BYTES: Final = "$bytes"
_DATETIME: Final = "$datetime"
_DATE: Final = "$date"
_FLOAT: Final = "$float"
_IMMUTABLE: Final = frozenset({str, int, float, bool, bytes})
"""Types whose values no caller can change: shared, not copied."""
_PLAIN: Final = frozenset({str, int, bool, type(None)})
"""Types :func:`freeze` returns as they are (JSON has them; floats only when finite)."""


@dataclass(slots=True)
class Write:
    """One state change: ``value`` None deletes the key.

    Never changed once made; not frozen, since a frozen dataclass's constructor costs
    about three times a plain one's and one is made per write (and :class:`TextWrite`
    per key committed).
    """

    table: str
    key: str
    value: Any


@dataclass(slots=True)
class TextWrite:
    """One state change with its value as JSON text (:func:`dump`): None deletes the key."""

    table: str
    key: str
    text: str | None


class StateView(Protocol):
    """Read access to the state tables. Every call returns a fresh value."""

    def get(self, table: str, key: str) -> Any:
        """Return the value of ``key`` in ``table``, or None."""
        ...

    def text(self, table: str, key: str) -> str | None:
        """Return the value of ``key`` in ``table`` as JSON text, or None."""
        ...

    def scan(self, table: str, prefix: str) -> Iterator[tuple[str, Any]]:
        """Yield every ``(key, value)`` of ``table`` whose key starts with ``prefix``."""
        ...


class StateStore(StateView, Protocol):
    """State that can be changed (only by :meth:`~streams.processor.StreamProcessor.commit`)."""

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
        return None if text is None else load(text)

    def text(self, table: str, key: str) -> str | None:
        """Return the value of ``key`` as JSON text, or None."""
        return self.tables[table].get(key)

    def scan(self, table: str, prefix: str) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, value)`` of ``table`` for keys starting with ``prefix``, sorted."""
        for key in sorted(self.tables[table]):
            if key.startswith(prefix):
                yield key, load(self.tables[table][key])

    def apply(self, writes: Sequence[Write]) -> None:
        """Apply ``writes``; values must be JSON-serialisable."""
        for write in writes:
            if write.value is None:
                self.tables[write.table].pop(write.key, None)
            else:
                self.tables[write.table][write.key] = dump(write.value)

    def forget(self) -> None:
        """Nothing is kept besides the tables themselves."""

    async def commit(self, writes: Sequence[TextWrite]) -> None:
        """Apply ``writes`` at once (the worker's commit of a batch's state)."""
        for write in writes:
            if write.text is None:
                self.tables[write.table].pop(write.key, None)
            else:
                self.tables[write.table][write.key] = write.text

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
    ``base`` is never changed; to commit, apply :meth:`writes` (or each outcome's writes,
    in order) to it.
    """

    def __init__(self, base: StateView) -> None:
        self._base = base
        self._staged: dict[tuple[str, str], str | None] = {}
        self._read: dict[tuple[str, str], str | None] = {}
        """Committed values read so far (``base`` does not change while a batch runs)."""
        self._peeked: dict[tuple[str, str], Any] = {}
        """Values :meth:`peek` decoded, shared by its callers until the key is staged again."""

    def get(self, table: str, key: str) -> Any:
        """Return the staged value of ``key``, else the committed one; None if absent."""
        text = self.text(table, key)
        return None if text is None else load(text)

    def peek(self, table: str, key: str) -> Any:
        """:meth:`get` for a caller that only reads the value: never to be changed.

        The value is decoded once and shared by every peek of the key until it is staged
        again (a batch reads the same transaction headers, queues and dedupe entries many
        times).
        """
        where = (table, key)
        value = self._peeked.get(where, _UNSEEN)
        if value is _UNSEEN:
            text = self.text(table, key)
            value = self._peeked[where] = None if text is None else load(text)
        return value

    def text(self, table: str, key: str) -> str | None:
        """Return the staged value of ``key`` as JSON text, else the committed one."""
        where = (table, key)
        text = self._staged.get(where, _UNSEEN)
        if text is _UNSEEN:
            text = self._read.get(where, _UNSEEN)
            if text is _UNSEEN:
                text = self._read[where] = self._base.text(table, key)
        return cast(str | None, text)

    def scan(self, table: str, prefix: str) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, value)`` of ``table`` for keys starting with ``prefix``, sorted."""
        found = dict(self._base.scan(table, prefix))
        for (staged_table, key), text in self._staged.items():
            if staged_table != table or not key.startswith(prefix):
                continue
            if text is None:
                found.pop(key, None)
            else:
                found[key] = load(text)
        for key in sorted(found):
            yield key, found[key]

    def stage(self, writes: Sequence[Write]) -> None:
        """Stage ``writes`` (in order) on top of what is staged already."""
        staged, peeked = self._staged, self._peeked
        for write in writes:
            value = write.value
            where = (write.table, write.key)
            staged[where] = None if value is None else dump(value)
            if peeked:
                peeked.pop(where, None)

    def writes(self) -> list[Write]:
        """Every key staged, with its last value, in the order keys were first staged.

        Applied to ``base``, they leave it as applying every staged write in order would:
        only a key's last value counts.
        """
        return [
            Write(write.table, write.key, None if write.text is None else load(write.text))
            for write in self.text_writes()
        ]

    def text_writes(self) -> list[TextWrite]:
        """:meth:`writes` with the values as JSON text: what a batch commits, one per key."""
        return [
            TextWrite(table, key, text)
            for (table, key), text in self._staged.items()
            # a key deleted that the base is known not to hold needs no write
            if text is not None or self._read.get((table, key), _UNSEEN) is not None
        ]


def fresh_copy(value: Any) -> Any:
    """Return a copy of a state value that shares no dict or list with ``value``.

    What :func:`copy.deepcopy` returns for the values the tables hold (JSON-able data:
    dicts, lists, tuples, text, numbers, None), for a fraction of its cost: the scalars
    are immutable and shared; anything else goes to :func:`copy.deepcopy`.
    """
    kind = type(value)
    if kind is dict:  # scalars are shared without a call: most of a value's leaves
        return {
            k: v if type(v) in _IMMUTABLE or v is None else fresh_copy(v) for k, v in value.items()
        }
    if kind is list:
        return [v if type(v) in _IMMUTABLE or v is None else fresh_copy(v) for v in value]
    if kind in _IMMUTABLE or value is None:
        return value
    if kind is tuple:
        return tuple(fresh_copy(v) for v in value)
    return copy.deepcopy(value)


def freeze(value: Any) -> Any:
    """Return a JSON-able form of a decoded Avro value; :func:`thaw` inverts it exactly.

    Decimals keep their scale, bytes are base64, dates and times ISO-8601, floats that
    are not finite their repr (JSON has no form for them).
    """
    kind = type(value)
    if kind in _PLAIN:  # most values of a decoded row: checked first, by exact type
        return value
    if kind is float:
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if kind is dict:  # plain leaves are taken without a call: most of a row's values
        return {
            k if type(k) is str else str(k): v if type(v) in _PLAIN else freeze(v)
            for k, v in value.items()
        }
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
    if type(value) in _PLAIN or type(value) is float:
        return value
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, text),) = value.items()
            if tag == _FLOAT:
                return float(text)
            if tag == _DECIMAL:
                return Decimal(text)
            if tag == _BYTES:
                return base64.b64decode(text)
            if tag == _DATETIME:
                return datetime.fromisoformat(text)
            if tag == _DATE:
                return date.fromisoformat(text)
        return {k: v if type(v) in _PLAIN else thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _PLAIN else thaw(v) for v in value]
    return value


def b64(data: bytes | None) -> str | None:
    """``data`` as base64 text (None stays None)."""
    return None if data is None else base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes | None:
    """The bytes :func:`b64` was given."""
    return None if text is None else base64.b64decode(text)
