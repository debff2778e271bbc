"""``erpcrm suspects``: the suspected duplicates a sink holds, and an operator's decision.

A new record that matches a record already linked to another one is not created on the
other side: the sink keeps it in ``erpcrm_sync.suspects`` (see :mod:`sinks.postgres`).
An operator lists them and either *releases* one (the sink creates it after all) or
*links* it to its candidate (the sink writes it into the candidate's row, now and on
every later change). The sink carries a decision out within seconds. The orders and
contacts that refer to a held suspect wait for the decision (``waiting``, see
:mod:`sinks.parking`) and are applied, in order, once it is carried out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg

from schemas.errors import ConfigError
from sinks import sql

__all__ = ["Suspect", "decide", "list_suspects"]


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


def decide(
    dsn: str,
    schema: str,
    suspect_id: int,
    action: Literal["release", "link"],
    *,
    decisions: str = sql.DECISIONS_SCHEMA,
) -> bool:
    """Ask the sink to release or link a held suspect; False when it is not held.

    The decision is kept in ``decisions`` too, where a later pipeline finds it.
    """
    with psycopg.connect(dsn) as conn:
        query = sql.suspects_decide(schema, decisions)
        row = conn.execute(query, (action, suspect_id)).fetchone()
    return row is not None
