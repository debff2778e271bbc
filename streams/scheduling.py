"""The order in which the worker takes fetched records: by when they were produced.

Faust hands a consumer's fetched records to the streams round-robin by topic. The
worker reads one topic per table and one transaction topic per system, so by topic the
single transaction partition falls far behind the table partitions when a backlog is
read: changes arrive long before their transaction's ``END`` and are held
(:mod:`streams.ordering`) by the thousand, in memory and in the ``assembly`` table.

:class:`ProducedOrder` takes each fetched set in the order its records were produced
(the record timestamp; the capture produces a transaction's changes, then its ``END``),
so a transaction's ``END`` follows its changes closely and they are released soon. Within
one partition Kafka's order is kept. This only changes which record comes first; any
order is correct (source order is restored by :mod:`streams.ordering` whatever Kafka
hands over).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

__all__ = ["ProducedOrder"]


class ProducedOrder(DefaultSchedulingStrategy):
    """Faust's ``ConsumerScheduler``: fetched records merged by timestamp, partitions in order.

    Pure: each partition's records (in offset order) are merged by their ``timestamp``
    (ms); records with equal timestamps keep the order of their partitions in
    ``records``, and their own.
    """

    def __init__(self) -> None:
        """No state: each fetched set is merged on its own."""

    def iterate(self, records: Mapping[TP, Sequence[Any]]) -> Iterator[tuple[TP, Any]]:
        """Yield ``(tp, record)`` for every record of ``records``, oldest timestamp first."""
        runs = [_keyed(rank, tp, batch) for rank, (tp, batch) in enumerate(records.items())]
        for _timestamp, _rank, _index, tp, record in heapq.merge(*runs):
            yield tp, record


def _keyed(rank: int, tp: TP, batch: Sequence[Any]) -> Iterator[tuple[int, int, int, TP, Any]]:
    """``batch``'s records as merge keys: (timestamp, partition rank, index, tp, record)."""
    for index, record in enumerate(batch):
        yield record.timestamp, rank, index, tp, record
