"""What goes into the streams processor and what comes out of one message.

An inbound message (:class:`Inbound`: a raw change or a tick) in; an :class:`Outcome` out:
the messages to publish (:class:`Outbound`: canonical events and dead letters), the state
writes, and a :class:`Tally` of what happened (:class:`Count`, exported by
:mod:`streams.metrics`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from schemas.errors import PermanentError
from streams.dlq import DeadLetter, Origin
from streams.state import Write
from streams.transform import CanonicalEvent

__all__ = [
    "H_KIND",
    "KIND_TICK",
    "Count",
    "DeadLetterError",
    "Inbound",
    "Kind",
    "Outbound",
    "Outcome",
    "Tally",
]

H_KIND: Final = "erpcrm.kind"
"""Header of a control-topic message saying what it is; absent: a raw change."""
KIND_TICK: Final = b"tick"


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
    LINK_CONFLICTS = "link_conflicts"
    """Links refused because another live record of the same system holds the
    counterpart, per entity, system of the record refused and rule."""
    AMBIGUOUS = "ambiguous"
    """Matches that had several candidates (the lowest id was linked), per entity."""
    DUPLICATES = "duplicates"
    """Records newly held as suspected duplicates, per entity, system and match rule."""
    ORDERS = "orders"
    """Orders assembled, per how: complete, timeout, settled, replay, no_header."""
    HELD = "held"
    """Changes held until their transaction is complete (source order), per system."""
    ORDER_TIMEOUTS = "order_timeouts"
    """Transactions released incomplete after the wait (a change missing), per system."""
    PARKED = "parked"
    """Records parked to wait for a reference, per reason (``snapshot_match``: a snapshot
    customer waiting for the other system's snapshot, :meth:`streams.waiting.Waiting.settle`)."""
    IGNORED = "ignored"
    """Messages that carry nothing to process, per what (tombstone, unrouted, ...)."""
    DEFECTS = "defects"
    """Data defects logged, per entity, field, rule and outcome (see :mod:`streams.quality`)."""


class Tally(Counter[tuple[str, ...]]):
    """Counts keyed by ``(Count, *labels)``."""

    def __init__(self, counts: Mapping[tuple[str, ...], int] | None = None, /) -> None:
        # Counter's own constructor goes through ``update`` even when empty; one Tally
        # is made per message
        dict.__init__(self)
        if counts:
            self.update(counts)

    def add(self, what: Count, *labels: str, n: int = 1) -> None:
        """Count ``n`` of ``what`` under ``labels``."""
        self[(what.value, *labels)] += n

    def of(self, what: Count, *labels: str) -> int:
        """The count of ``what`` under exactly ``labels``."""
        return self[(what.value, *labels)]


# --------------------------------------------------------------------- messages


class Kind(StrEnum):
    """What an inbound message is."""

    CHANGE = "change"
    TICK = "tick"


@dataclass(slots=True)
class Inbound:
    """A message as the processor sees it (never changed once made).

    Not frozen: a frozen dataclass's constructor sets each field through
    ``object.__setattr__``, about three times the cost of a plain one, and one is made
    for every message read and every held message released.

    Attributes:
        origin: where the raw message was read (for ticks: their control-topic position).
        key: the raw key bytes.
        value: the raw value bytes (None: a tombstone).
        timestamp_ms: when the worker read the message (its batch); the processor's
            only clock.
        kind: a raw change, or a tick.
        replays: how many times an operator replayed it from the dead-letter topic.
    """

    origin: Origin
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    kind: Kind = Kind.CHANGE
    replays: int = 0


@dataclass(slots=True)
class Outbound:
    """A message to publish: a canonical event, a dead letter or a data-quality entry.

    Never changed once made (not frozen for the constructor's cost, see :class:`Inbound`).

    ``output_id`` (also the ``erpcrm.output_id`` header) is the event id, the dead
    letter's deterministic id, or the data-quality entry's (:mod:`streams.quality`).
    ``counts``: the tally keys counted for this message alone (a data-quality entry's
    defects), taken back when it turns out to be published already.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    output_id: str
    flow: str | None = None
    event: CanonicalEvent | None = None
    dead_letter: DeadLetter | None = None
    counts: tuple[tuple[str, ...], ...] = ()


@dataclass
class Outcome:
    """What one message produced: messages to publish, state writes, counts, warnings.

    ``warnings``: what an operator should hear of although nothing failed (an order
    released incomplete), logged by the worker once the outcome is committed.
    """

    outbound: list[Outbound] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    warnings: list[str] = field(default_factory=list)

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
