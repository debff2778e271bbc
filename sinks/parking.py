"""Events parked until an operator decides a suspected duplicate they refer to (pure).

A new customer the streams flag as a suspected duplicate is held for an operator
(``erpcrm_sync.suspects``, see :mod:`sinks.postgres`). The orders and contacts that
refer to it cannot be applied before that decision; instead of waiting in memory and
ending as dead letters, they are *parked* in ``erpcrm_sync.parked``, in the transaction
of their batch, and applied, in the order parked, once the decision is carried out:

- released: the suspect is created, and the reference finds the new row as usual;
- linked: the suspect is written into its candidate, which keeps its own ids, so the
  reference (the suspect's key, e.g. its CRM account id) is filled with the candidate;
- a reference that still does not resolve then is dead-lettered at once, saying why.

Every later event of a parked key is parked too (behind the parked ones), so a key's
events are applied in order whatever their references. A parked event is stored as it
was read (:data:`sinks.sql.STORED_EVENT`): a replayed dead letter keeps its original
canonical position and replay count, so the event applied or dead-lettered later is the
same one (its letter names where it was first read, and how often it was replayed), and
versions decide its place among the key's other events, as they would have unparked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["UNDECIDED", "Lookup", "Resolution", "SuspectState", "resolve", "waited_for"]

UNDECIDED: Final = frozenset({"held", "release", "link"})
"""Suspect statuses whose decision is not carried out yet: a reference to one waits."""

LINKED: Final = "linked"


@dataclass(frozen=True, slots=True)
class SuspectState:
    """A suspected duplicate a reference may point at: its key, status and candidate."""

    entity: str
    key: str
    status: str
    candidate: str


@dataclass(frozen=True, slots=True)
class Lookup:
    """A missing reference: its field, whether it is in the lines, the keys it may be.

    ``keys``: the entity keys of the referenced record the lookup values name
    (``<source system>:<value>``), strongest locator first.
    """

    field: str
    lines: bool
    keys: Sequence[str]


@dataclass(frozen=True, slots=True)
class Resolution:
    """What suspects tell about a record's missing references.

    ``fill``: per reference field, the target id to use (the candidate a linked suspect
    was written into); ``park_on``: the undecided suspect ``(entity, key)`` the record
    waits for (None: it does not wait for one).
    """

    fill: Mapping[str, str] = field(default_factory=dict)
    park_on: tuple[str, str] | None = None


def resolve(lookups: Sequence[Lookup], suspects: Mapping[str, SuspectState]) -> Resolution:
    """Decide a record's missing references against the suspects among their keys.

    A reference whose key is a linked suspect is filled with its candidate (not one in
    the lines: only customers are held, and lines refer to products); the first one
    whose key is an undecided suspect names what the record waits for.
    """
    fill: dict[str, str] = {}
    park_on: tuple[str, str] | None = None
    for lookup in lookups:
        for key in lookup.keys:
            suspect = suspects.get(key)
            if suspect is None:
                continue
            if suspect.status == LINKED and not lookup.lines:
                fill.setdefault(lookup.field, suspect.candidate)
                break
            if suspect.status in UNDECIDED and park_on is None:
                park_on = (suspect.entity, suspect.key)
                break
    return Resolution(fill, park_on)


def waited_for(
    entity: str, key: str, suspect: tuple[str, str], status: str | None, lacking: str
) -> str:
    """The message of a parked event's dead letter: its suspect was decided, in vain."""
    outcome = f"was {status}" if status else "is no longer held"
    return (
        f"unresolved_reference: {entity} {key} was parked until the suspected duplicate "
        f"{suspect[0]} {suspect[1]} was decided; that suspect {outcome}, and the record "
        f"still refers to {lacking}"
    )
