"""One message's unit of work, and how its results leave: canonical events and dead letters.

A :class:`UnitOfWork` is what every handler of the processor works on: reads see the
unit's own writes on top of the state; writes are collected (and mirrored into the
processor's in-memory caches as they are made); messages to publish and counts go into
its :class:`~streams.outcome.Outcome`. :class:`Emitter` turns a canonical event into an
outbound message (deduplicated, encoded) and a failure into a dead letter, under the
dead-letter policy; each with its entry in the data-quality log when it had defects
(:mod:`streams.quality`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from schemas.errors import ValidationError
from schemas.mapping import Flow
from schemas.payload import never_noop, payload_hash_header
from streams import dlq, quality
from streams.dedupe import Verdict, decide, payload_hash
from streams.dlq import DeadLetter, Origin
from streams.outcome import Count, DeadLetterError, Inbound, Outbound, Outcome
from streams.state import DEDUPE, StateView, Write, b64, fresh_copy
from streams.transform import CanonicalEvent
from streams.validation import Failed, Fix, Quarantine, Reason

__all__ = [
    "LETTERED_PREFIX",
    "Emitter",
    "Mirror",
    "Raw",
    "Route",
    "UnitOfWork",
    "dedupe_key",
    "entity_dedupe_key",
]

LETTERED_PREFIX: Final = "dl|"
"""``dedupe`` keys ``dl|<raw topic>|<key>``: the LSN of each row's last dead-lettered change."""

_UNWRITTEN: Final[Any] = object()

Mirror = Callable[[str, str, Any], None]
"""Called with ``(table, key, value)`` for every write a unit of work makes."""


@dataclass(frozen=True, slots=True)
class Route:
    """A flow a raw topic feeds, and in which role (its entity table, or its lines)."""

    flow: Flow
    role: Literal["entity", "lines"]


@dataclass(frozen=True, slots=True)
class Raw:
    """The original bytes and position a result is attributed to (for dead letters)."""

    key: bytes | None
    value: bytes | None
    origin: Origin
    replays: int = 0
    lsn: int | None = None
    """The source LSN of the row change the bytes carry (None: not known)."""

    @classmethod
    def of(cls, message: Inbound, envelope: Mapping[str, Any] | None = None) -> Raw:
        """The raw form of an inbound message: its replay count, and the change's LSN.

        ``envelope``: the message decoded, if it was (its ``source.lsn`` is the LSN).
        """
        source = envelope.get("source") if envelope is not None else None
        lsn = source.get("lsn") if isinstance(source, Mapping) else None
        return cls(
            message.key,
            message.value,
            message.origin,
            message.replays,
            lsn if isinstance(lsn, int) else None,
        )


class UnitOfWork:
    """One message's work: reads see its own writes; writes are collected, not applied.

    Args:
        state: the state as the message sees it.
        now_ms: the message's timestamp, the processor's only clock; deadlines are set
            from it (``now_ms`` + a wait).
        mirror: told of every write as it is made (the processor's caches).
        horizon_ms: how far the sources have been read (:mod:`streams.horizon`); a
            deadline has passed once the horizon reaches it (default: ``now_ms``).
    """

    def __init__(
        self, state: StateView, now_ms: int, mirror: Mirror, horizon_ms: int | None = None
    ) -> None:
        self.state = state
        self.now_ms = now_ms
        self.horizon_ms = now_ms if horizon_ms is None else horizon_ms
        self.outcome = Outcome()
        self._mirror = mirror
        self._overlay: dict[tuple[str, str], Any] = {}
        # a batch's StagedState shares the values it decoded with every reader that
        # only looks at them; any other view decodes a fresh one
        self._peek: Callable[[str, str], Any] = getattr(state, "peek", state.get)

    @property
    def tally(self) -> Any:
        """The outcome's counts (:class:`~streams.outcome.Tally`)."""
        return self.outcome.tally

    def get(self, table: str, key: str) -> Any:
        """The value of ``key`` as this unit left it, else as the state has it."""
        if (table, key) in self._overlay:
            return fresh_copy(self._overlay[(table, key)])
        return self.state.get(table, key)

    def peek(self, table: str, key: str) -> Any:
        """:meth:`get` for a caller that only reads the value: not a copy, never to be changed.

        A value this unit wrote is the one it holds (:meth:`get` copies it, since its
        callers change what they read and put it back).
        """
        overlay = self._overlay
        if overlay:
            value = overlay.get((table, key), _UNWRITTEN)
            if value is not _UNWRITTEN:
                return value
        return self._peek(table, key)

    def holds(self, table: str, key: str) -> bool:
        """Whether ``key`` has a value (as this unit left it, else in the state).

        Decodes nothing the unit did not write.
        """
        value = self._overlay.get((table, key), _UNWRITTEN)
        if value is not _UNWRITTEN:
            return value is not None
        return self.state.text(table, key) is not None

    def put(self, table: str, key: str, value: Any) -> None:
        """Write ``value`` (None: delete) at ``key``; the last write of a key counts."""
        self._overlay[(table, key)] = value
        self._mirror(table, key, value)

    def warn(self, message: str) -> None:
        """Note what the worker logs as a warning once this unit's outcome is committed."""
        self.outcome.warnings.append(message)

    def finish(self) -> Outcome:
        """The outcome, with the unit's writes in the order their keys were first written."""
        self.outcome.writes = [Write(t, k, v) for (t, k), v in self._overlay.items()]
        return self.outcome


def dedupe_key(event: CanonicalEvent) -> str:
    """The ``dedupe`` table's key of an event's entity."""
    return entity_dedupe_key(event.entity, event.key)


def entity_dedupe_key(entity: str, key: str) -> str:
    """The ``dedupe`` table's key of entity ``entity`` with the entity key ``key``."""
    return f"{entity}|{key}"


class Emitter:
    """Queues canonical events (deduplicated, encoded) and dead letters for publishing.

    Args:
        encode: (entity, canonical record) -> value bytes; raises ``ValidationError``
            when the record does not fit the entity's schema.
        policy: ``dlq`` (publish dead letters), ``skip`` (count only) or ``fail``
            (raise :class:`~streams.outcome.DeadLetterError`).
        entities: flow name -> its canonical entity (for the data-quality log).
    """

    def __init__(
        self,
        encode: Callable[[str, dict[str, Any]], bytes],
        policy: Literal["fail", "dlq", "skip"],
        entities: Mapping[str, str] | None = None,
    ) -> None:
        self._encode = encode
        self._policy = policy
        self._entities = dict(entities or {})

    def publish(
        self,
        work: UnitOfWork,
        flow: str,
        event: CanonicalEvent,
        raw: Raw,
        fixes: Sequence[Fix],
        quarantined: Sequence[Quarantine] = (),
    ) -> bool:
        """Dedupe an event and, unless dropped, queue it for publishing.

        A published event's fixes and quarantined fields go to the data-quality log.
        Returns False when the event was stale (nothing new about the entity).
        """
        record = event.record
        key = dedupe_key(event)
        stored = work.peek(DEDUPE, key)
        known = {} if stored is None else {key: (int(stored[0]), str(stored[1]))}
        digest = payload_hash(record)
        verdict = decide(known, key, int(record["version"]), digest)
        if verdict is Verdict.NO_OP and never_noop(record):
            verdict = Verdict.EMIT
        if verdict is Verdict.STALE:
            work.tally.add(Count.DEDUPED, flow)
            return False
        for fix in fixes:
            work.tally.add(Count.FIXES, flow, fix.rule)
        if verdict is Verdict.NO_OP:
            work.put(DEDUPE, key, [record["version"], digest])
            work.tally.add(Count.NO_OPS, flow)
            return True
        try:
            value = self._encode(event.entity, record)
        except ValidationError as exc:
            failed = Failed(Reason.SCHEMA_MISMATCH, None, str(exc))
            self.dead_letter(work, flow, failed, raw, ())
            return True
        work.put(DEDUPE, key, [record["version"], digest])
        event_id = str(record["event_id"])
        work.outcome.outbound.append(
            Outbound(
                topic=event.topic,
                key=event.key.encode("utf-8"),
                value=value,
                # The digest travels along: a sink need not hash the payload again.
                headers=(
                    (dlq.H_OUTPUT_ID, event_id.encode("ascii")),
                    payload_hash_header(digest, value),
                ),
                output_id=event_id,
                flow=flow,
                event=event,
            )
        )
        work.tally.add(Count.EVENTS_OUT, flow)
        self._log(work, quality.of_event(event, flow, fixes, quarantined))
        return True

    def _log(self, work: UnitOfWork, entry: quality.QualityEntry | None) -> None:
        """Queue a data-quality entry, its defects counted."""
        if entry is None:
            return
        counts = tuple((Count.DEFECTS.value, *labels) for labels in entry.metric_labels())
        for counted in counts:
            work.tally[counted] += 1
        work.outcome.outbound.append(
            Outbound(
                topic=quality.QUALITY_TOPIC,
                key=entry.key.encode("utf-8") if entry.key is not None else None,
                value=entry.to_json(),
                headers=((dlq.H_OUTPUT_ID, entry.output_id.encode("utf-8")),),
                output_id=entry.output_id,
                flow=entry.flow,
                counts=counts,
            )
        )

    def dead_letter(
        self,
        work: UnitOfWork,
        flow: str | None,
        failed: Failed,
        raw: Raw,
        context: Iterable[tuple[str, str]],
    ) -> None:
        """Dead-letter ``raw`` for ``failed``, under the policy; once per change of a row.

        A capture that restarts sends again what it had not confirmed: the same change
        (same row, same LSN) at a new offset, which fails again. Its letter, and its
        defects in the data-quality log, were published the first time, so each row's
        last dead-lettered LSN is kept (``dedupe`` table, :data:`LETTERED_PREFIX`) and a
        change of the row at or below it is counted as deduplicated instead. A replayed
        letter (``raw.replays``) is an operator's new attempt, always decided. A letter
        with ``context`` (an order, a product's totals) is one of several a change may
        cause; its flow decides it once (an order per latest change, totals only when
        they change).
        """
        context = tuple(context)
        if not context and self._lettered_before(work, raw):
            work.tally.add(Count.DEDUPED, flow or "-")
            return
        letter = dlq.from_failure(
            failed,
            origin=raw.origin,
            key=raw.key,
            value=raw.value,
            flow=flow,
            context=context,
            replays=raw.replays,
        )
        self.send(work, letter)

    @staticmethod
    def _lettered_before(work: UnitOfWork, raw: Raw) -> bool:
        """Whether the change ``raw`` carries was dead-lettered already; else note it."""
        if raw.lsn is None or raw.key is None or raw.replays:
            return False
        key = f"{LETTERED_PREFIX}{raw.origin.topic}|{b64(raw.key)}"
        last = work.peek(DEDUPE, key)
        if last is not None and raw.lsn <= int(last):
            return True
        work.put(DEDUPE, key, raw.lsn)
        return False

    def send(self, work: UnitOfWork, letter: DeadLetter) -> None:
        """Queue a dead letter (``dlq``), count it only (``skip``) or raise (``fail``).

        Under ``dlq`` and ``skip`` the record is in the data-quality log as dead-lettered.
        """
        work.tally.add(Count.DEAD_LETTERS, letter.reason)
        if self._policy == "fail":
            raise DeadLetterError(letter)
        if self._policy == "skip":
            work.tally.add(Count.IGNORED, "rejected_skipped")
        else:
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
        entity = self._entities.get(letter.flow) if letter.flow is not None else None
        self._log(work, quality.of_dead_letter(letter, entity))
