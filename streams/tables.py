"""The processor's state over the worker's Faust tables, committed a batch at a time.

The worker's four tables (:data:`streams.state.TABLES`) have one partition each and one
writer (see :mod:`streams.assignment`). A batch's state is committed in one go, not key
by key through Faust's table API (which sends each key to the changelog through a
buffer drained one message at a time, and does not wait for those sends before the
consumer's offsets are committed):

1. every write (its value as JSON text already, :class:`~streams.state.TextWrite`) is
   sent to its table's changelog (partition 0), the key in the store's own encoding, in
   one :meth:`~streams.producer.BatchSender.send_all`: every acknowledgement is awaited;
2. only then are the writes applied to the local stores, the way Faust applies a
   changelog batch when it recovers a table: one RocksDB write batch per table, with
   the changelog offset reached (the store's "persisted offset").

So when :meth:`FaustState.commit` returns, the batch's state is in Kafka, and the
worker only then asks for the next batch (which lets Faust commit the batch's input
offsets). A crash between 1 and 2 leaves the local store behind its changelog, which
Faust reads back at start; another worker taking over restores from the changelog.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import orjson
from faust.types import TP

from streams.producer import BatchSender, Record
from streams.state import StateView, TextWrite, dump, load

__all__ = ["CommittedState", "FaustState"]


_JSON_KEY = json.JSONEncoder().encode
"""The standard library's JSON text of a str key (ASCII, non-ASCII escaped)."""

_KEY_PROBES = ("customer|erp:42", 'xw|customer|crm|Zoë Ltd "ü"\\/\n\u2028\x7f', "")


def _stdlib_json_key(key: str) -> bytes:
    return _JSON_KEY(key).encode("ascii")


def _orjson_key(key: str) -> bytes:
    return orjson.dumps(key)


def _key_encoder(store_encoding: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """A fast encoder of str keys that gives what ``store_encoding`` gives, or that itself.

    Faust's generic encoding (codec registry lookups per key) costs more than the store
    read it prepares; the tables' keys are str under Faust's ``json`` serializer, which is
    JSON text, written by orjson when it is installed (UTF-8) and by the standard library
    otherwise (ASCII): whichever gives the store's bytes on the probes is used, so a store
    encoding keys otherwise keeps its own.
    """
    for candidate in (_orjson_key, _stdlib_json_key):
        if _same_on_probes(store_encoding, candidate):
            return candidate
    return store_encoding


def _same_on_probes(encoding: Callable[[str], bytes], candidate: Callable[[str], bytes]) -> bool:
    try:
        return all(encoding(probe) == candidate(probe) for probe in _KEY_PROBES)
    except Exception:  # an encoding that refuses a probe is not JSON text
        return False


class CommittedState(StateView, Protocol):
    """State the worker reads, and commits a batch's writes to (durably, then locally).

    :class:`FaustState` in the worker; :class:`~streams.state.DictState` in tests.
    """

    async def commit(self, writes: Sequence[TextWrite]) -> None:
        """Apply ``writes`` (one per key); returns once they are durable."""
        ...

    def forget(self) -> None:
        """Drop what was kept of the stores in memory: they may have changed meanwhile.

        Called when the worker (re)takes the partitions, before it reads the state.
        """
        ...


TEXT_CACHE_BYTES: Final = 4 * 1024 * 1024
"""How much of the stores' JSON text :class:`FaustState` keeps in memory (about)."""
_ENTRY_BYTES: Final = 100
"""What an entry of that cache costs besides its text (key, tuple, dict slot), about."""
_ABSENT: Final[Any] = object()


class FaustState:
    """The processor's state over the worker's Faust tables (key: text, JSON values).

    Reads return values the caller may change: copies where the store hands out its own
    objects (``shared_values``: the memory store); a RocksDB store decodes a fresh value
    on every read, so its values are returned as they come. Writes: :meth:`commit`
    (see the module docstring).

    The worker is the tables' only writer while it owns the partitions, so the text of
    the keys it read or committed last (absent ones too) is kept in memory, up to
    ``cache_bytes`` of it, oldest dropped first: a batch reads again much of what the
    batches before it wrote (open transactions, their held changes, queues, dedupe
    entries), and a store read costs more than the dict look-up. :meth:`forget` drops
    it whenever the worker (re)takes the partitions (the stores may have been restored
    from the changelogs meanwhile).
    """

    def __init__(
        self,
        tables: Mapping[str, Any],
        sender: BatchSender,
        *,
        shared_values: bool = True,
        cache_bytes: int = TEXT_CACHE_BYTES,
    ) -> None:
        self._tables = tables
        self._sender = sender
        self._shared = shared_values
        # oldest first; an OrderedDict, since dropping a plain dict's first key again and
        # again makes each ``next(iter(...))`` step over every slot dropped before it
        # (about 20 us a drop at 30,000 entries, against 1 us here)
        self._cache: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._copy: Callable[[Any], Any] = copy.deepcopy if shared_values else _same
        self._encoders: dict[str, Callable[[str], bytes]] = {
            name: _key_encoder(table.data._encode_key) for name, table in tables.items()
        }
        self._changelogs: dict[str, TP] = {}
        """Each table's changelog partition (one per table, see the module doc), once known."""

    def _key(self, table: str, key: str) -> bytes:
        """``key`` as ``table``'s store encodes it."""
        return self._encoders[table](key)

    def get(self, table: str, key: str) -> Any:
        """Return the value of ``key`` in ``table``, or None.

        Reads the table's store directly: the table's own ``get`` looks the key up twice
        (``in``, then the value).
        """
        return self._copy(self._tables[table].data.get(key))

    def text(self, table: str, key: str) -> str | None:
        """Return the value of ``key`` in ``table`` as JSON text, or None.

        From a RocksDB store, the stored bytes as they are (nothing decoded), read from
        the one partition's database (Faust's own lookup also indexes every key read).
        """
        where = (table, key)
        cached = self._cache.get(where, _ABSENT)
        if cached is not _ABSENT:
            return cast(str | None, cached)
        text: str | None
        store = self._tables[table].data
        if self._shared:
            value = store.get(key)
            text = None if value is None else dump(value)
        else:
            stored = store._db_for_partition(0).get(self._key(table, key))
            text = None if stored is None else bytes(stored).decode("utf-8")
        self._remember(where, text)
        return text

    def forget(self) -> None:
        """Drop the cached text (see the class docstring)."""
        self._cache.clear()
        self._cache_bytes = 0

    def _remember(self, where: tuple[str, str], text: str | None) -> None:
        """Cache ``text`` as the committed value at ``where``, within the budget."""
        cache = self._cache
        old = cache.pop(where, _ABSENT)
        if old is not _ABSENT:
            self._cache_bytes -= _ENTRY_BYTES + (len(old) if old is not None else 0)
        size = _ENTRY_BYTES + (len(text) if text is not None else 0)
        if size > self._cache_limit:
            return
        cache[where] = text
        self._cache_bytes += size
        while self._cache_bytes > self._cache_limit:
            _, dropped = cache.popitem(last=False)
            self._cache_bytes -= _ENTRY_BYTES + (len(dropped) if dropped is not None else 0)

    def scan(self, table: str, prefix: str) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, value)`` of ``table`` for keys starting with ``prefix``."""
        for key, value in list(self._tables[table].items()):
            if isinstance(key, str) and key.startswith(prefix):
                yield key, self._copy(value)

    async def commit(self, writes: Sequence[TextWrite]) -> None:
        """1. send ``writes`` to the changelogs and await every ack; 2. apply them locally."""
        if not writes:
            return
        changelogs = self._changelogs
        if len(changelogs) < len(self._tables):  # the first commit: the topics are named now
            for name, table in self._tables.items():
                changelogs[name] = TP(table.changelog_topic.get_topic_name(), 0)
        keys = [self._encoders[write.table](write.key) for write in writes]
        values = [None if w.text is None else w.text.encode("utf-8") for w in writes]
        offsets = await self._sender.send_all(
            [
                Record(changelogs[write.table].topic, key, value, 0)
                for write, key, value in zip(writes, keys, values, strict=True)
            ]
        )
        # one record per write for the store, made once its changelog offset is known
        by_table: dict[str, list[_ChangelogRecord]] = {}
        for write, key, value, offset in zip(writes, keys, values, offsets, strict=True):
            message = _ChangelogMessage(changelogs[write.table], offset, key, value)
            by_table.setdefault(write.table, []).append(_ChangelogRecord(write.key, message))
        for name, records_of_table in by_table.items():
            self._tables[name].apply_changelog_batch(records_of_table)
        for write in writes:
            self._remember((write.table, write.key), write.text)


@dataclass(slots=True)
class _ChangelogMessage:
    """A changelog message as Faust's stores read one in recovery."""

    tp: TP
    offset: int
    key: bytes
    value: bytes | None

    @property
    def partition(self) -> int:
        return int(self.tp.partition)


@dataclass(slots=True)
class _ChangelogRecord:
    """A changelog event: the raw message, the decoded key and value (memory store)."""

    key: str
    message: _ChangelogMessage

    @property
    def value(self) -> Any:
        raw = self.message.value
        return None if raw is None else load(raw)


def _same(value: Any) -> Any:
    return value
