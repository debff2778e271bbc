"""What a record held or decided as a suspected duplicate goes by once more (pure).

A sink keeps what it holds and what operators decide about suspected duplicates twice:
in its sync state (``erpcrm_sync.suspects``, with the events held) and in the decisions
schema (``erpcrm_decisions.suspects``: per key its status, candidate and evidence), which
a new pipeline over the same database (a new sync schema, new consumer groups, fresh
streams state) finds. The new pipeline's streams worker has no memory of the suspects:
its first sync may pair a held copy with another record. :func:`carried_over` says what
an event of such a key goes by instead (``PostgresUpsertSink._earlier_decisions``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["NOT_CARRIED_OUT", "carried_over"]

NOT_CARRIED_OUT: Final = frozenset({"release", "link"})
"""An operator's decision the sink had not carried out yet."""


def carried_over(status: str, *, own: bool) -> str | None:
    """The status an event of a suspect's key goes by, when its sync state never applied it.

    Args:
        status: the suspect's status (``held``, ``release``, ``released``, ``link``,
            ``linked``).
        own: whether the status is this sync state's; else it was kept by an earlier one.

    Returns:
        None for ``released``: the record was created, and flows as the streams decide
        it now (linked to the record made for it). An earlier sync state's decision it
        had not carried out (``release``, ``link``): ``held``, for an operator to decide
        again (the events it was to carry out went with that sync state). Anything else
        as it is: ``held`` stays held, ``linked`` is written into its candidate, this
        sync state's ``release`` or ``link`` is carried out.
    """
    if status == "released":
        return None
    if not own and status in NOT_CARRIED_OUT:
        return "held"
    return status
