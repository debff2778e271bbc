"""The worker's local table stores, checked against their changelogs before Faust starts.

A Faust table lives twice: in its changelog topic (the truth) and in a local RocksDB
store per table partition (``<tabledir>/<table>-<partition>.db``), a cache of the
changelog that also remembers the offset of the last changelog message it holds (the
*persisted offset*). At start Faust reads the changelog from that offset on. When the
changelog no longer reaches that far, the cache is of a Kafka cluster that is gone: the
cluster was reset (``make clean`` removed Kafka's data, not the worker's) or restored
from an older backup, or the topic was deleted. Faust then stops the worker with a
``ConsistencyError`` ("persisted offset ... is higher than ... highwater").

What the worker does instead, before Faust opens any store:

1. find the local stores and read each one's persisted offset (read-only);
2. read the high watermark of every changelog partition from Kafka;
3. decide, without I/O, which stores are ahead (:func:`stores_ahead`);
4. log a warning for each and delete its directory; Faust then rebuilds that table from
   its changelog, as on a machine that never ran the worker.

A store is ahead when its changelog partition does not exist or when its persisted offset
is at or beyond the partition's high watermark (the offset the next message will get).
Stores that are merely behind are left alone: Faust catches them up from the changelog.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from faust.stores.rocksdb import Store as RocksDBStore
from rocksdict import AccessType, Options, Rdict

from schemas.errors import RetriableError
from schemas.settings import KafkaSettings

__all__ = [
    "AheadStore",
    "LocalStore",
    "changelog_highwaters",
    "discard_stores_ahead",
    "find_local_stores",
    "read_persisted_offset",
    "stores_ahead",
]

log = logging.getLogger(__name__)

_STORE_NAME = re.compile(r"^(?P<table>.+)-(?P<partition>\d+)\.db$")
"""Faust's file name of one table partition's RocksDB store."""


@dataclass(frozen=True, slots=True)
class LocalStore:
    """One table partition's local RocksDB store.

    Attributes:
        table: the Faust table's name.
        partition: the table (and changelog) partition the store holds.
        changelog: the table's changelog topic.
        path: the store's directory.
        persisted_offset: offset of the last changelog message the store holds; None
            when Faust never recorded one (nothing committed yet).
    """

    table: str
    partition: int
    changelog: str
    path: Path
    persisted_offset: int | None

    @property
    def changelog_partition(self) -> tuple[str, int]:
        """``(changelog topic, partition)`` this store caches."""
        return (self.changelog, self.partition)


@dataclass(frozen=True, slots=True)
class AheadStore:
    """A local store its changelog cannot have produced, and why.

    Attributes:
        store: the store.
        highwater: the changelog partition's high watermark; None when the partition
            does not exist.
    """

    store: LocalStore
    highwater: int | None

    @property
    def reason(self) -> str:
        """Why the store is ahead, for logs: offsets or the missing partition."""
        if self.highwater is None:
            return "the changelog partition does not exist"
        return f"stored offset={self.store.persisted_offset} >= highwater={self.highwater}"


def stores_ahead(
    stores: Iterable[LocalStore], highwaters: Mapping[tuple[str, int], int]
) -> list[AheadStore]:
    """Return the stores that hold more than their changelog partitions do, in input order.

    Pure. ``highwaters`` maps every existing changelog partition ``(topic, partition)``
    to its high watermark (the offset of the next message; 0 when empty); a partition
    missing from it does not exist. A store is ahead when its partition does not exist,
    or when its persisted offset is at or beyond the high watermark (it holds a message
    the changelog has not got). A store without a persisted offset whose partition exists
    is not ahead: Faust replays the whole changelog into it.
    """
    ahead: list[AheadStore] = []
    for store in stores:
        highwater = highwaters.get(store.changelog_partition)
        if highwater is None:
            ahead.append(AheadStore(store, None))
        elif store.persisted_offset is not None and store.persisted_offset >= highwater:
            ahead.append(AheadStore(store, highwater))
    return ahead


def read_persisted_offset(path: Path) -> int | None:
    """Return the persisted offset Faust recorded in the RocksDB store at ``path``, or None.

    Opens the store read-only (no lock, nothing written) with Faust's own key and
    encoding (``faust.stores.rocksdb.Store``, rocksdict driver) and closes it again.
    """
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        value = db.get(RocksDBStore.offset_key)
    finally:
        db.close()
    return None if value is None else int(value)


def find_local_stores(tabledir: Path, changelogs: Mapping[str, str]) -> list[LocalStore]:
    """Return the local stores of the tables in ``changelogs`` (table -> changelog topic).

    Looks for ``<tabledir>/<table>-<partition>.db`` directories, sorted by path; stores
    of other tables are not returned (and never touched). A missing ``tabledir`` has none.
    """
    if not tabledir.is_dir():
        return []
    stores: list[LocalStore] = []
    for path in sorted(tabledir.iterdir()):
        match = _STORE_NAME.match(path.name)
        if match is None or not path.is_dir() or match["table"] not in changelogs:
            continue
        table, partition = match["table"], int(match["partition"])
        stores.append(
            LocalStore(table, partition, changelogs[table], path, read_persisted_offset(path))
        )
    return stores


def changelog_highwaters(
    kafka: KafkaSettings, topics: Collection[str], *, timeout_s: float = 60.0
) -> dict[tuple[str, int], int]:
    """Return the high watermark of every existing partition of ``topics``.

    Partitions of topics that do not exist are absent from the result. Waits up to
    ``timeout_s`` for Kafka and for partition leaders (a broker that has just started
    may not have elected them yet).

    Raises:
        RetriableError: Kafka could not be read within ``timeout_s``.
    """
    consumer = Consumer(
        kafka.client_config(
            **{"group.id": "erpcrm-streams-store-check", "enable.auto.commit": False}
        )
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return _highwaters(consumer, topics, deadline)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise RetriableError(f"reading changelog high watermarks: {exc}") from exc
                time.sleep(0.5)
    finally:
        consumer.close()


def _highwaters(
    consumer: Consumer, topics: Collection[str], deadline: float
) -> dict[tuple[str, int], int]:
    """One attempt of :func:`changelog_highwaters`; KafkaException when worth retrying."""
    remaining = max(1.0, deadline - time.monotonic())
    metadata = consumer.list_topics(timeout=remaining)
    highwaters: dict[tuple[str, int], int] = {}
    for topic in topics:
        found = metadata.topics.get(topic)
        if found is None:
            continue
        if found.error is not None:
            if found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise KafkaException(found.error)
        for partition in found.partitions:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=remaining
            )
            highwaters[(topic, partition)] = int(high)
    return highwaters


def discard_stores_ahead(
    tabledir: Path,
    changelogs: Mapping[str, str],
    kafka: KafkaSettings,
    *,
    timeout_s: float = 60.0,
) -> list[AheadStore]:
    """Delete the local stores ahead of their changelogs, with a warning each; return them.

    Must run before Faust opens the stores (the worker's start). ``changelogs`` maps each
    table to its changelog topic. Kafka is not asked when there is no local store.

    Raises:
        RetriableError: Kafka could not be read within ``timeout_s``; nothing was deleted.
    """
    # 1. the local stores and their persisted offsets
    stores = find_local_stores(tabledir, changelogs)
    if not stores:
        return []
    # 2. the changelogs' high watermarks
    highwaters = changelog_highwaters(
        kafka, sorted({s.changelog for s in stores}), timeout_s=timeout_s
    )
    # 3. the decision
    ahead = stores_ahead(stores, highwaters)
    # 4. discard: Faust rebuilds these tables from their changelogs
    for stale in ahead:
        store = stale.store
        log.warning(
            "table %s: local store is ahead of its changelog %s[%d] (%s); Kafka was reset, "
            "restored or the topic deleted. Removing %s: the table is rebuilt from the changelog",
            store.table,
            store.changelog,
            store.partition,
            stale.reason,
            store.path,
        )
        shutil.rmtree(store.path)
    return ahead
