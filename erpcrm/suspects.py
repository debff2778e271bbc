"""``erpcrm suspects``: the suspected duplicates a sink holds, and an operator's decision.

A new record that matches a record already linked to another one is not created on the
other side: the sink keeps it in ``erpcrm_sync.suspects`` (see :mod:`sinks.postgres`).
An operator lists them and either *releases* one (the sink creates it after all) or
*links* it to its candidate (the sink writes it into the candidate's row, now and on
every later change). The sink carries a decision out within seconds. The orders and
contacts that refer to a held suspect wait for the decision (``waiting``, see
:mod:`sinks.parking`) and are applied, in order, once it is carried out.

**A link is one to one** (DESIGN.md §5.5), for operators too: a held record is linked
only to a candidate no other live record of its own system holds, or the two would be
written into one row. A customer pair's link is kept in the ERP, in the ERP customer's
link column (``res_partner.crm_account_id``; a CRM account names no ERP customer), so
the holder is read there: for a held ERP customer, the live ERP customer whose column
names the candidate account; for a held CRM account, the account the candidate ERP
customer's column names, while that customer is live (a deleted account archives it).
A candidate named ``<system>:<id>`` (the copy of a record of the held one's own system,
not made yet) is held by that record. :func:`decide` refuses such a link
(:class:`CandidateTakenError`) and changes nothing.

A link the sink has not written anywhere the ERP read sees (two held ERP customers of
one account: linking the first writes it into the account, and nothing names the
account in the first's row; or a link asked and not carried out yet) is seen in the
suspects themselves: a candidate another suspect is linked, or asked to be linked, to
is refused too (:class:`CandidateLinkedError`). Links to one candidate are decided one
at a time (an advisory lock of the decision's transaction), so two operators at once
cannot both pass.

**Only live holders hold.** A record archived or deleted in its system (or gone from
it) gives its counterpart up, whether it holds it by a link column or as a suspect
linked to it: the liveness of a linked suspect's record is read at its source
(:func:`live_records`: the ERP's ``res_partner.active``, the CRM's ``accounts.deleted``),
so a copy merged into another one and retired there no longer blocks the other's link.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Literal

import psycopg

from schemas.errors import ConfigError, SyncError
from schemas.mapping import load_mappings
from sinks import sql
from sinks.targets import Direction, TargetTable, build_tables

__all__ = [
    "CandidateLinkedError",
    "CandidateTakenError",
    "Suspect",
    "decide",
    "link_holder",
    "list_suspects",
    "live_records",
]


class CandidateTakenError(SyncError):
    """An operator's link to a candidate another live record holds: refused."""

    def __init__(self, suspect_id: int, entity_key: str, candidate: str, holder: str) -> None:
        self.suspect_id, self.entity_key = suspect_id, entity_key
        self.candidate, self.holder = candidate, holder
        super().__init__(
            f"suspect {suspect_id}: {entity_key} not linked to {candidate}: {holder} holds it "
            "(a link is one to one: both would be written into one row). Nothing changed. "
            f"If {entity_key} and {holder} are one customer, merge or archive {holder} in its "
            f"system (a holder that is gone gives its counterpart up), then link again; "
            f"if {entity_key} is another customer, release it"
        )


class CandidateLinkedError(CandidateTakenError):
    """An operator's link to a candidate another suspect is linked (or asked) to: refused."""

    def __init__(
        self, suspect_id: int, entity_key: str, candidate: str, other: str, status: str
    ) -> None:
        linked = "is linked" if status == "linked" else "was asked to be linked"
        self.suspect_id, self.entity_key = suspect_id, entity_key
        self.candidate, self.holder = candidate, other
        SyncError.__init__(
            self,
            f"suspect {suspect_id}: {entity_key} not linked to {candidate}: {other} {linked} "
            "to it (a link is one to one: both would be written into one row). Nothing "
            f"changed. If {entity_key} and {other} are one customer, merge or archive "
            f"{entity_key} in its system; if not, release it",
        )


@dataclass(frozen=True, slots=True)
class Suspect:
    """One held (or decided) suspected duplicate."""

    id: int
    entity: str
    entity_key: str
    candidate: str
    evidence: str | None
    status: str
    first_seen: datetime
    last_seen: datetime
    waiting: int = 0
    """Events parked until this suspect is decided (orders, contacts referring to it)."""

    def as_json(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "id": self.id,
            "entity": self.entity,
            "entity_key": self.entity_key,
            "candidate": self.candidate,
            "evidence": self.evidence,
            "status": self.status,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "waiting": self.waiting,
        }


def list_suspects(dsn: str, schema: str, status: str | None = None) -> list[Suspect]:
    """Every suspect of one target, newest first (``status``: only those)."""
    if status is not None and status not in sql.SUSPECT_STATUSES:
        raise ConfigError(f"status is one of {', '.join(sql.SUSPECT_STATUSES)}, not {status!r}")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(sql.suspects_list(schema), (status, status)).fetchall()
    return [Suspect(*row) for row in rows]


@cache
def _tables() -> Mapping[tuple[Direction, str], TargetTable]:
    """The target tables as the sinks write them (read once)."""
    return build_tables(load_mappings())


def _erp_customers() -> TargetTable:
    """The ERP customer table and its link column, as the CRM-to-ERP sink writes it."""
    return _tables()[(Direction.CRM_TO_ERP, "customer")]


def _row_id(value: str, pg_type: str) -> str | None:
    """``value`` as its primary key's text (``uuid``'s canonical form); None: it is none."""
    try:
        if pg_type == "uuid":
            return str(uuid.UUID(value))
        if pg_type in ("bigint", "integer"):
            return str(int(value))
    except ValueError:
        return None
    return value


def live_records(dsns: Mapping[str, str], entity: str, keys: Iterable[str]) -> set[str]:
    """Of some records (``erp:<id>``, ``crm:<id>``), those still live in their own system.

    A record is live while its row is there and neither archived nor deleted, as the
    sink writing that system maps it (the ERP's ``active``, the CRM's ``deleted``).
    ``dsns``: per system, a DSN that reads its records. A record of a system without
    one, or whose id its table cannot hold, counts as live: it is not known to be gone.

    Raises:
        psycopg.Error: a database could not be read.
    """
    wanted: dict[str, dict[str, str]] = {}
    live: set[str] = set()
    for key in keys:
        system, _, record_id = key.partition(":")
        direction = Direction.CRM_TO_ERP if system == "erp" else Direction.ERP_TO_CRM
        table = _tables().get((direction, entity))
        row_id = None if table is None else _row_id(record_id, table.pk_type)
        if system not in dsns or row_id is None:
            live.add(key)
        else:
            wanted.setdefault(system, {})[row_id] = key
    for system, rows in wanted.items():
        direction = Direction.CRM_TO_ERP if system == "erp" else Direction.ERP_TO_CRM
        table = _tables()[(direction, entity)]
        flag, dead = table.delete_flag
        query = sql.live_rows(table.ref, table.pk_column, flag, dead)
        with psycopg.connect(dsns[system]) as conn:
            found = conn.execute(query, (list(rows),)).fetchall()
        live.update(rows[str(r[0])] for r in found)
    return live


def link_holder(
    erp_dsn: str, entity_key: str, candidate: str, *, crm_dsn: str | None = None
) -> str | None:
    """The live record, other than ``entity_key``, that holds a suspect's candidate.

    ``entity_key``: the held customer (``erp:<id>`` or ``crm:<id>``); ``candidate``: the
    row of the other system it duplicates (its id there), or ``<system>:<id>`` of a
    record of its own system whose copy is not made yet. ``erp_dsn``: read access to the
    ERP customers, where the pair's link is kept (see the module's docstring);
    ``crm_dsn``: read access to the CRM accounts, where the liveness of an account the
    link names is read (without it, that account counts as live).

    Returns:
        The holder's key (``erp:805``, ``crm:5a50…``); None when the candidate is free.
    """
    system, _, own_id = entity_key.partition(":")
    of, colon, _ = candidate.partition(":")
    if colon and of == system:
        return candidate if candidate != entity_key else None
    table = _erp_customers()
    pk, link = table.pk_column, table.key_column
    live = sql.Column(table.delete_flag[0], "boolean")
    if system == "erp":
        query = sql.holders_of_counterpart(table.ref, pk, link, live)
        other = "erp"
    else:
        query = sql.counterpart_of_row(table.ref, pk, link, live)
        other = "crm"
    with psycopg.connect(erp_dsn) as conn:
        found = conn.execute(query, (candidate, own_id)).fetchone()
    if found is None:
        return None
    holder = f"{other}:{found[0]}"
    if other == "crm" and crm_dsn is not None:
        # The ERP customer names an account: a holder only while that account is live.
        return holder if holder in live_records({"crm": crm_dsn}, "customer", [holder]) else None
    return holder


def decide(
    dsn: str,
    schema: str,
    suspect_id: int,
    action: Literal["release", "link"],
    *,
    decisions: str = sql.DECISIONS_SCHEMA,
    erp_dsn: str | None = None,
    crm_dsn: str | None = None,
) -> bool:
    """Ask the sink to release or link a held suspect; False when it is not held.

    The decision is kept in ``decisions`` too, where a later pipeline finds it. A link is
    asked only while no other suspect of the target is linked, or asked to be linked, to
    the candidate (in this sync state or any kept in ``decisions``) whose record is still
    live (read with ``erp_dsn`` or ``crm_dsn``, the DSN of the suspects' system: see
    :func:`live_records`), and, with ``erp_dsn`` (see :func:`link_holder`), while no other
    live record holds it. From those checks to the decision the suspect stays locked, and
    so do other links to its candidate.

    Raises:
        CandidateTakenError: another record or suspect holds the candidate (a
            :class:`CandidateLinkedError` for a suspect); nothing changed.
        psycopg.Error: a database could not be read or written; nothing changed.
    """
    with psycopg.connect(dsn) as conn:
        if action == "link":
            # 1. The suspect, locked: its candidate stays as read until the decision.
            held = conn.execute(sql.suspect_held(schema), (suspect_id,)).fetchone()
            if held is None:
                return False
            entity, entity_key, candidate = held
            # 2. Links to one candidate one at a time: a second waits here, then sees this.
            conn.execute(sql.suspect_candidate_lock(), (entity, candidate))
            query = sql.suspects_linking(schema, decisions)
            others = conn.execute(query, (entity, candidate, entity_key) * 2).fetchall()
            if others:
                # A suspect whose record is gone, archived or deleted holds nothing.
                dsns = {k: v for k, v in (("erp", erp_dsn), ("crm", crm_dsn)) if v is not None}
                live = live_records(dsns, entity, (str(key) for _, key, _ in others))
                for other_id, other_key, status in others:
                    if other_key not in live:
                        continue
                    named = other_key if other_id is None else f"{other_key} (suspect {other_id})"
                    raise CandidateLinkedError(suspect_id, entity_key, candidate, named, status)
            # 3. The links the ERP keeps.
            if erp_dsn is not None:
                holder = link_holder(erp_dsn, entity_key, candidate, crm_dsn=crm_dsn)
                if holder is not None:
                    raise CandidateTakenError(suspect_id, entity_key, candidate, holder)
        # 4. The decision, committed with the locks' release.
        query = sql.suspects_decide(schema, decisions)
        row = conn.execute(query, (action, suspect_id)).fetchone()
    return row is not None
