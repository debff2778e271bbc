"""The decided horizon: per source system, how far its changes are decided and published.

The sinks wait for a row an event refers to until every change committed before that
event has been published (:mod:`sinks.progress`). On a busy pipeline a later change of
the same system tells them; on a quiet one nothing later comes. This worker tells them
instead, with a horizon record per system (:mod:`schemas.horizon`): *every change of
the system committed at or before this commit is decided, and what was published for
it acknowledged*.

How a horizon is reached, in order:

1. **released**: :mod:`streams.ordering` releases a system's transactions in commit
   order, each once all its changes are read (or its wait is over); a transaction's
   ``END`` is released after its changes. The capture writes a heartbeat transaction
   (no change, an ``END`` counting none) whenever its source is quiet, so the ``END``
   s keep coming. :meth:`DecidedHorizons.released` notes the latest ``END`` released.
2. **settled**: once the batch that released it is published and committed, the latest
   ``END`` becomes the system's horizon unless something of that system decided before
   it still waits in this worker (a record parked for a reference, a snapshot customer
   settling, an order being assembled, a transaction committed before it still held):
   ``holds_back`` says so, and the horizon stays where it was until a later ``END``.
3. **ripe**: a horizon is published at least ``ripen_ms`` after it was settled, and
   only while the worker has read the system's topics to their end (the caller checks
   that): a reader's view of the canonical topics has had time to include what was
   acknowledged before it, and a snapshot row still unread (snapshot reads carry no
   transaction) is not passed over.

Pure: no clock of its own, no Kafka; in memory only. After a restart or a rollback the
horizon starts again from the next ``END`` released.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.horizon import SourceHorizon
from streams.ordering import commit_lsn

__all__ = ["DecidedHorizons"]


@dataclass(frozen=True, slots=True)
class _Settled:
    horizon: SourceHorizon
    at_ms: int


class DecidedHorizons:
    """The decided horizon of each source system (see the module doc).

    Args:
        ripen_ms: how long a settled horizon waits before it may be published.
    """

    def __init__(self, ripen_ms: int = 1_000) -> None:
        self._ripen_ms = ripen_ms
        self._released: dict[str, tuple[int, int]] = {}
        """Per system, the (commit LSN, commit time) of the latest END released since
        the last :meth:`settle`."""
        self._settled: dict[str, deque[_Settled]] = {}
        self._ripe: dict[str, SourceHorizon] = {}

    def released(self, system: str, end: Mapping[str, Any]) -> None:
        """A transaction's ``END`` record (decoded) was released, in commit order."""
        tx, ts = end.get("id"), end.get("ts_ms")
        lsn = commit_lsn(tx) if isinstance(tx, str) else None
        if lsn is None or not isinstance(ts, int) or isinstance(ts, bool):
            return
        known = self._released.get(system)
        if known is None or lsn > known[0]:
            self._released[system] = (lsn, ts)

    def forget(self) -> None:
        """Drop what was released since the last :meth:`settle` (it is decided again)."""
        self._released.clear()

    def settle(self, holds_back: Callable[[str, int], bool], now_ms: int) -> None:
        """The batch that released the noted ``END`` s is published and committed.

        ``holds_back(system, lsn)``: whether something of ``system`` decided at or before
        commit LSN ``lsn`` still waits in the worker.
        """
        released, self._released = self._released, {}
        for system, (lsn, ts) in released.items():
            queue = self._settled.setdefault(system, deque())
            last = queue[-1].horizon if queue else self._ripe.get(system)
            if last is not None and lsn <= last.lsn:
                continue
            if holds_back(system, lsn):
                continue
            queue.append(_Settled(SourceHorizon(system, lsn, ts), now_ms))

    def ripe(self, now_ms: int) -> dict[str, SourceHorizon]:
        """Per system, the latest horizon settled at least ``ripen_ms`` before ``now_ms``."""
        for system, queue in self._settled.items():
            while queue and now_ms - queue[0].at_ms >= self._ripen_ms:
                self._ripe[system] = queue.popleft().horizon
        return dict(self._ripe)
