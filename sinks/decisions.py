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

__all__ = ["NOT_CARRIED_OUT", "OWN_ROW_BARRED", "carried_over", "finds_own_row"]

NOT_CARRIED_OUT: Final = frozenset({"release", "link"})
"""An operator's decision the sink had not carried out yet."""


OWN_ROW_BARRED: Final = frozenset({"held", "link", "linked"})
"""Statuses under which a record never finds a row of its own (:func:`finds_own_row`)."""


def finds_own_row(decided: str | None) -> bool:
    """Whether a record going by ``decided`` (:func:`carried_over`) is located as any is.

    A held record is written into no row: were it looked up by its own locators (the
    id the sink would give it, a business key such as the customer number it carries
    now), it could find a row the streams never paired it with and be written into it,
    or contend for it with that row's own record. A linked one (or one an operator asked
    to link) is written into its candidate only. Released (or asked to be), or with no
    decision, it is located as any record is.
    """
    return decided not in OWN_ROW_BARRED


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
