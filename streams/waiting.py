"""Waiting: records whose reference is not known yet, and the pending work ticks look at.

A record failing only because a reference is not known yet (:data:`PARKABLE`: the
product may be in a topic not read that far, the customer not linked yet) is parked in
the ``assembly`` table under ``park|<topic>|<partition>|<offset>|<flow>`` with its
original bytes, and retried on every tick for ``reference_wait``; then it is
dead-lettered with its reason. Ticks come through the worker's control topic and are
decided in the same batches as the data, one message at a time; the clock of every
decision is the time its batch was read (see :mod:`streams.app`). A wait is over when
the read horizon (:mod:`streams.horizon`) passes its deadline, not the wall clock: a
worker draining a backlog does not give up on what is still in the backlog.

A customer read by the initial snapshot that matches nothing in the other system is
held the same way, under ``settle|<topic>|<partition>|<offset>|<flow>``, for
``snapshot_settle`` (:meth:`Waiting.settle`): the other system's snapshot may hold the
same customer, and linking the two is what the first sync should do, not publishing it
as new (which would hold its counterpart as a duplicate). It is run again once, when
the read horizon passes its deadline, whatever came meanwhile.

:class:`Waiting` also keeps the in-memory index of everything pending (parked records,
open transactions and snapshot orders of :mod:`streams.orders`, transactions whose
changes :mod:`streams.ordering` holds): key -> when a tick should look at it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from streams.dlq import Origin
from streams.outcome import Count, Inbound
from streams.state import ASSEMBLY, StateView, b64, unb64
from streams.validation import Failed, Reason
from streams.work import Emitter, Raw, Route, UnitOfWork

__all__ = [
    "ORDER_PREFIX",
    "PARKABLE",
    "PARK_PREFIX",
    "SETTLE_PREFIX",
    "SNAPSHOT_MATCH",
    "TX_PREFIX",
    "Retry",
    "Waiting",
]

PARKABLE: Final = frozenset({Reason.UNRESOLVED_REFERENCE, Reason.UNKNOWN_SKU})
"""Failures that a later record may cure: retried for a while before dead-lettering."""

TX_PREFIX: Final = "tx|"
"""``assembly`` keys of open transactions and snapshot orders (:mod:`streams.orders`)."""
PARK_PREFIX: Final = "park|"
"""``assembly`` keys of parked records."""
SETTLE_PREFIX: Final = "settle|"
"""``assembly`` keys of snapshot customers waiting for the other system's snapshot."""
SNAPSHOT_MATCH: Final = "snapshot_match"
"""The :attr:`~streams.outcome.Count.PARKED` reason of a record held by :meth:`Waiting.settle`."""
ORDER_PREFIX: Final = "ord|"
"""``assembly`` keys of transactions whose changes are held (:mod:`streams.ordering`)."""
_PENDING: Final = (TX_PREFIX, PARK_PREFIX, SETTLE_PREFIX, ORDER_PREFIX)


@dataclass
class Retry:
    """A parked record's retry: ``final`` means dead-letter instead of parking again.

    A settled record (:meth:`Waiting.settle`) is run again once, as ``final``.
    """

    final: bool
    parked_again: bool = False


Reroute = Callable[[UnitOfWork, Route, Inbound, Retry], None]
"""Runs a parked record through its route again (the processor's dispatch)."""


class Waiting:
    """Parks records that wait for a reference and indexes everything pending.

    Args:
        emitter: where records go that waited long enough.
        wait_ms: how long a record waits (0: dead-letter at once).
        settle_ms: how long a snapshot customer waits for the other system's snapshot.
    """

    def __init__(self, emitter: Emitter, wait_ms: int, settle_ms: int = 0) -> None:
        self._emitter = emitter
        self.wait_ms = wait_ms
        self.settle_ms = settle_ms
        self._due: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """How many keys are pending."""
        return len(self._due)

    def load(self, state: StateView) -> None:
        """Rebuild the index of pending keys from ``state``."""
        self._due = {}
        for prefix in _PENDING:
            for key, value in state.scan(ASSEMBLY, prefix):
                self.mirror(key, value)

    def mirror(self, key: str, value: Any) -> None:
        """Index one write of a pending ``assembly`` key (None: no longer pending)."""
        if not key.startswith(_PENDING):
            return
        if value is None:
            self._due.pop(key, None)
        elif key.startswith(SETTLE_PREFIX):
            self._due[key] = int(value["until"])
        elif key.startswith(PARK_PREFIX) or value.get("give_up") is not None:
            self._due[key] = 0
        else:
            self._due[key] = int(value["due"])

    def pending_keys(self) -> list[str]:
        """Every pending key (not sorted)."""
        return list(self._due)

    def due(self, horizon_ms: int) -> list[str]:
        """The pending keys a tick at read horizon ``horizon_ms`` should look at, sorted."""
        return sorted(key for key, when in self._due.items() if when <= horizon_ms)

    def is_due(self, key: str, horizon_ms: int) -> bool:
        """Whether ``key`` is still pending and due at read horizon ``horizon_ms``."""
        when = self._due.get(key)
        return when is not None and when <= horizon_ms

    def forget(self, key: str) -> None:
        """Drop a key whose record is gone."""
        self._due.pop(key, None)

    def reject(
        self,
        work: UnitOfWork,
        route: Route,
        failed: Failed,
        raw: Raw,
        retry: Retry | None,
    ) -> None:
        """Park a record that may succeed later, or dead-letter it."""
        if failed.reason in PARKABLE and self.wait_ms > 0:
            if retry is None:
                self._park(work, PARK_PREFIX, route, raw, self.wait_ms)
                work.tally.add(Count.PARKED, failed.reason.value)
                return
            if not retry.final:
                retry.parked_again = True
                return
        self._emitter.dead_letter(work, route.flow.name, failed, raw, ())

    def settle(self, work: UnitOfWork, route: Route, raw: Raw) -> None:
        """Hold a snapshot customer until ``settle_ms`` has passed (then it is run again)."""
        self._park(work, SETTLE_PREFIX, route, raw, self.settle_ms)
        work.tally.add(Count.PARKED, SNAPSHOT_MATCH)

    def _park(self, work: UnitOfWork, prefix: str, route: Route, raw: Raw, wait_ms: int) -> None:
        """Keep ``raw`` under ``prefix`` with its original bytes until ``wait_ms`` from now."""
        origin = raw.origin
        key = f"{prefix}{origin.topic}|{origin.partition}|{origin.offset}|{route.flow.name}"
        work.put(
            ASSEMBLY,
            key,
            {
                "flow": route.flow.name,
                "role": route.role,
                "key": b64(raw.key),
                "value": b64(raw.value),
                "origin": [origin.topic, origin.partition, origin.offset],
                "until": work.now_ms + wait_ms,
                "replays": raw.replays,
            },
        )

    def retry(
        self,
        work: UnitOfWork,
        key: str,
        record: dict[str, Any],
        route: Route | None,
        reroute: Reroute,
    ) -> None:
        """Run a parked (or settled) record again; it leaves unless it has to wait on."""
        topic, partition, offset = record["origin"]
        message = Inbound(
            origin=Origin(topic, partition, offset),
            key=unb64(record["key"]),
            value=unb64(record["value"]),
            timestamp_ms=work.now_ms,
            replays=int(record.get("replays", 0)),
        )
        retry = Retry(final=work.horizon_ms >= int(record["until"]))
        if route is not None and message.value is not None:
            reroute(work, route, message, retry)
        if not retry.parked_again:
            work.put(ASSEMBLY, key, None)
