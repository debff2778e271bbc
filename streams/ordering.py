"""Source order: each system's changes are decided in its commit order, not in arrival order.

The capture publishes one topic per table and a transaction topic with an ``END`` record
per transaction (Debezium's transaction metadata: how many events of each table it
holds). Kafka hands the worker the table topics interleaved as it pleases: a transaction's
contact may come before its account, a quote before the product announced just before
it. :class:`SourceOrder` restores the source's order:

1. a change that carries a ``transaction`` block is *held* (in the ``assembly`` table,
   ``ordev|<system>|<tx>|<total order>``, with its original bytes) until its transaction
   is complete: its ``END`` has arrived and as many held changes of the tables this
   worker reads as the ``END`` counts;
2. ``END`` records arrive in commit order (the transaction topic has one partition), so
   complete transactions are released from the head of the system's queue (positions
   ``ordq|<system>|<n>``, the head and the next free position under ``ordq|<system>``),
   each one's changes in their order within it (``total_order``), then its ``END``; a
   transaction waits for every one committed before it;
3. a transaction still incomplete after ``timeout`` (a change that will not come) is
   released with what it has, in order, and counted; so is a transaction whose ``END``
   never arrives (its header ``ord|<system>|<tx>`` has a due time for ticks).

Snapshot reads carry no transaction: they pass straight through, and so does a change of
a transaction at or below the last commit released (transaction ids are Debezium's
``<txid>:<commit LSN>``; ``ordw|<system>`` keeps that LSN): a capture that re-sends after a
restart, a dead letter replayed. Deciding the same change twice is harmless: every
decision downstream is idempotent by LSN and version.

Pure: state through the unit of work, time is the message's timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from streams.dlq import Origin
from streams.outcome import Count, Inbound
from streams.state import ASSEMBLY, b64, unb64
from streams.waiting import ORDER_PREFIX
from streams.work import UnitOfWork

__all__ = ["Release", "SourceOrder", "commit_lsn"]

HEADER_PREFIX: Final = ORDER_PREFIX
"""``assembly`` keys of transactions with held changes: ``ord|<system>|<tx>``."""
_END_POSITION: Final = 0
"""Where a transaction's ``END`` is among its records (its changes count from 1)."""
_EVENT_PREFIX: Final = "ordev|"
_QUEUE_PREFIX: Final = "ordq|"
_DONE_PREFIX: Final = "ordw|"
_DECODED_MAX: Final = 2048
"""How many held changes and ``END`` s keep their decoded envelope in memory (the rest
decode again).

Held changes are in the ``assembly`` table anyway; the decoded envelopes only save a
second decoding, and a backlog may hold tens of thousands of changes at once."""


@dataclass(slots=True)
class _Kept:
    """A held record as it arrived: its message and decoded envelope."""

    envelope: Mapping[str, Any]
    message: Inbound

    def message_at(self, now_ms: int) -> Inbound:
        """The message as released at ``now_ms``, as :func:`_inbound` reads it back.

        That is its bytes and position, and no replay count.
        """
        held = self.message
        return Inbound(held.origin, held.key, held.value, now_ms)


@dataclass(slots=True)
class Release:
    """What to decide now: a held change, a transaction's ``END``, or an expiry.

    ``expired``: the id of a transaction that will get no ``END`` (``message`` None).
    ``envelope``: the decoded envelope if this process still has it (else decode
    ``message.value``).
    """

    system: str
    message: Inbound | None
    envelope: Mapping[str, Any] | None = None
    end: bool = False
    expired: str | None = None


class SourceOrder:
    """Holds each system's changes until they can be released in commit order.

    Args:
        collections: per system, the ``<schema>.<table>`` names of the tables read
            (an ``END`` also counts tables this worker does not read).
        timeout_ms: how long a transaction may wait for its missing changes.
    """

    def __init__(self, collections: Mapping[str, frozenset[str]], timeout_ms: int) -> None:
        self._collections = collections
        self._timeout_ms = timeout_ms
        self._decoded: dict[tuple[str, str, int], _Kept] = {}
        """Held changes as they arrived, decoded (saves reading them back from the table
        and decoding them again), at most :data:`_DECODED_MAX` of them, by ``(system, tx,
        position)``; an ``END`` at position :data:`_END_POSITION`."""

    @property
    def held(self) -> int:
        """How many held changes and ENDs this process still has decoded in memory."""
        return len(self._decoded)

    def forget(self) -> None:
        """Drop the decoded envelopes (after a rollback or a reload they may be stale)."""
        self._decoded.clear()

    def hold(
        self, work: UnitOfWork, system: str, envelope: Mapping[str, Any], message: Inbound
    ) -> list[Release] | None:
        """Hold a change of an open transaction; returns what is releasable now.

        None: the change has no transaction (a snapshot read); decide it at once.
        """
        block = envelope.get("transaction")
        if not isinstance(block, Mapping):
            return None
        tx, position = block.get("id"), block.get("total_order")
        if not isinstance(tx, str) or not isinstance(position, int) or position < 1:
            return None
        if self._finished(work, system, tx):
            return None
        event_key = _event_key(system, tx, position)
        header = self._header(work, system, tx)
        if not work.holds(ASSEMBLY, event_key):  # not a re-delivery of a held change
            header["held"] += 1
        header["last"] = max(header["last"], position)
        work.put(
            ASSEMBLY,
            event_key,
            {
                "key": b64(message.key),
                "value": b64(message.value),
                "origin": [message.origin.topic, message.origin.partition, message.origin.offset],
            },
        )
        work.put(ASSEMBLY, f"{HEADER_PREFIX}{system}|{tx}", header)
        self._keep_decoded(system, tx, position, envelope, message)
        work.tally.add(Count.HELD, system)
        if header["queued"] is None:
            return []
        return self._release_ready(work, system)

    def end(
        self, work: UnitOfWork, system: str, envelope: dict[str, Any], message: Inbound
    ) -> list[Release]:
        """An ``END`` record: note how many changes to wait for; returns what is releasable."""
        tx = envelope.get("id")
        if not isinstance(tx, str) or self._finished(work, system, tx):
            return [Release(system, message, envelope, end=True)]
        wanted = self._collections.get(system, frozenset())
        expected = 0
        for item in envelope.get("data_collections") or ():
            if isinstance(item, Mapping) and item.get("data_collection") in wanted:
                count = item.get("event_count")
                expected += count if isinstance(count, int) else 0
        key = f"{HEADER_PREFIX}{system}|{tx}"
        header = work.get(ASSEMBLY, key)
        head, tail = self._queue(work, system)
        if expected == 0 and header is None and head == tail:
            return [Release(system, message, envelope, end=True)]
        header = header or self._new_header(work)
        if header["queued"] is None:
            header["queued"] = tail
            work.put(ASSEMBLY, _queue_key(system, tail), tx)
            work.put(ASSEMBLY, f"{_QUEUE_PREFIX}{system}", [head, tail + 1])
        header["expected"] = expected
        header["end"] = {
            "key": b64(message.key),
            "value": b64(message.value),
            "origin": [message.origin.topic, message.origin.partition, message.origin.offset],
        }
        work.put(ASSEMBLY, key, header)
        self._keep_decoded(system, tx, _END_POSITION, envelope, message)
        return self._release_ready(work, system)

    def released(self, work: UnitOfWork, system: str, envelope: Mapping[str, Any]) -> bool:
        """Whether a change belongs to a transaction released already.

        That is one committed at or before the last commit released: the change is sent
        again, or read after its transaction was released incomplete (see :meth:`tick`).
        """
        block = envelope.get("transaction")
        tx = block.get("id") if isinstance(block, Mapping) else None
        return isinstance(tx, str) and self._finished(work, system, tx)

    def tick(self, work: UnitOfWork, key: str) -> list[Release]:
        """A tick found the transaction header ``key`` due: release what waited too long.

        Counted (``order_timeouts``) and logged: a change of it read later is decided
        on its own, after its transaction (see :meth:`released`).
        """
        _, system, tx = key.split("|", 2)
        header = work.get(ASSEMBLY, key)
        if header is None:
            return []
        work.tally.add(Count.ORDER_TIMEOUTS, system)
        if header["expected"] is None:
            missing = "its END not read"
        else:
            missing = f"{header['held']} of {header['expected']} changes read"
        work.warn(
            f"{system} transaction {tx} released incomplete after the assembly timeout: "
            f"{missing}; a change of it read later is decided after it"
        )
        if header["queued"] is None:
            # Its END never came: release its changes on their own.
            alone = self._release(work, system, tx, end=False)
            self._mark_done(work, system, tx)  # so that a late END does not block the queue
            return [*alone, Release(system, None, expired=tx)]
        return self._release_ready(work, system, through=int(header["queued"]))

    # -- internals ------------------------------------------------------------------

    def _keep_decoded(
        self, system: str, tx: str, position: int, envelope: Mapping[str, Any], message: Inbound
    ) -> None:
        """Keep a held record as it arrived, decoded, for its release, while there is room.

        A record delivered again replaces the one kept, as it replaces it in the table.
        """
        key = (system, tx, position)
        if key in self._decoded or len(self._decoded) < _DECODED_MAX:
            self._decoded[key] = _Kept(envelope, message)

    def _new_header(self, work: UnitOfWork) -> dict[str, Any]:
        return {
            "held": 0,
            "last": 0,
            "expected": None,
            "queued": None,
            "end": None,
            "due": work.now_ms + self._timeout_ms,
        }

    def _header(self, work: UnitOfWork, system: str, tx: str) -> dict[str, Any]:
        found = work.get(ASSEMBLY, f"{HEADER_PREFIX}{system}|{tx}")
        return found if found is not None else self._new_header(work)

    def _queue(self, work: UnitOfWork, system: str) -> tuple[int, int]:
        """The system's queue of ENDs: the next position to release, the next free one."""
        found = work.peek(ASSEMBLY, f"{_QUEUE_PREFIX}{system}")
        return (0, 0) if found is None else (int(found[0]), int(found[1]))

    def _release_ready(
        self, work: UnitOfWork, system: str, *, through: int | None = None
    ) -> list[Release]:
        """Release transactions from the head of the system's queue while complete.

        ``through``: release every one up to that queue position, complete or not.
        """
        head, tail = self._queue(work, system)
        start = head
        released: list[Release] = []
        while head < tail:
            tx = work.peek(ASSEMBLY, _queue_key(system, head))
            header = None if tx is None else work.peek(ASSEMBLY, f"{HEADER_PREFIX}{system}|{tx}")
            forced = through is not None and head <= through
            if header is not None and header["held"] < header["expected"] and not forced:
                break
            if tx is not None:
                released += self._release(work, system, tx, end=True)
            work.put(ASSEMBLY, _queue_key(system, head), None)
            head += 1
        if head != start:
            work.put(ASSEMBLY, f"{_QUEUE_PREFIX}{system}", None if head == tail else [head, tail])
        return released

    def _release(self, work: UnitOfWork, system: str, tx: str, *, end: bool) -> list[Release]:
        """A transaction's held changes in their order, then its END (if it came)."""
        key = f"{HEADER_PREFIX}{system}|{tx}"
        end_kept = self._decoded.pop((system, tx, _END_POSITION), None)
        header = work.peek(ASSEMBLY, key)
        if header is None:
            return []
        released: list[Release] = []
        for position in range(1, int(header["last"]) + 1) if header["held"] else ():
            event_key = _event_key(system, tx, position)
            if not work.holds(ASSEMBLY, event_key):
                continue
            kept = self._decoded.pop((system, tx, position), None)
            if kept is not None:  # its stored form (bytes as base64) need not be read
                released.append(Release(system, kept.message_at(work.now_ms), kept.envelope))
            else:
                held = work.peek(ASSEMBLY, event_key)
                released.append(_released(system, held, None, work.now_ms))
            work.put(ASSEMBLY, event_key, None)
        work.put(ASSEMBLY, key, None)
        if end and header.get("end") is not None:
            released.append(_released(system, header["end"], end_kept, work.now_ms, end=True))
            self._mark_done(work, system, tx)
        return released

    def _mark_done(self, work: UnitOfWork, system: str, tx: str) -> None:
        commit = commit_lsn(tx)
        done_key = f"{_DONE_PREFIX}{system}"
        if commit is not None and commit > int(work.peek(ASSEMBLY, done_key) or 0):
            work.put(ASSEMBLY, done_key, commit)

    def _finished(self, work: UnitOfWork, system: str, tx: str) -> bool:
        """Whether ``tx`` committed at or before the last transaction released."""
        commit = commit_lsn(tx)
        done = work.peek(ASSEMBLY, f"{_DONE_PREFIX}{system}")
        return commit is not None and done is not None and commit <= int(done)


def _event_key(system: str, tx: str, position: int) -> str:
    return f"{_EVENT_PREFIX}{system}|{tx}|{position:010d}"


def _queue_key(system: str, position: int) -> str:
    return f"{_QUEUE_PREFIX}{system}|{position:012d}"


def commit_lsn(tx: str) -> int | None:
    """The commit LSN of a transaction id ``<txid>:<commit LSN>`` (None: another form)."""
    _, _, lsn = tx.rpartition(":")
    return int(lsn) if lsn.isdigit() else None


def _released(
    system: str, held: Mapping[str, Any], kept: _Kept | None, now_ms: int, *, end: bool = False
) -> Release:
    """A held record to decide now: as kept in memory, else as the table holds it."""
    if kept is None:
        return Release(system, _inbound(held, now_ms), end=end)
    return Release(system, kept.message_at(now_ms), kept.envelope, end=end)


def _inbound(held: Mapping[str, Any], now_ms: int) -> Inbound:
    topic, partition, offset = held["origin"]
    return Inbound(
        Origin(topic, partition, offset), unb64(held["key"]), unb64(held["value"]), now_ms
    )
