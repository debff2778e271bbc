"""``erpcrm reconcile --repair``: ask the captures to re-read the rows that drifted.

The repair never writes around the pipeline: for each table it signals the running
capture of that system (a targeted re-snapshot, :mod:`cdc.signals`) to read exactly the
rows :func:`erpcrm.drift.rereads` names, so they flow through streams and sinks with
every guarantee (ownership, versions, conflicts recorded).

This module is the one place that talks to the re-snapshot signal: it calls
:func:`cdc.signals.request_resnapshot` (``conn, "<schema>.<table>", keys=[{column: value},
...]``), which writes a signal row the capture reads from the WAL and returns the
signal's id. The connection's role needs INSERT on the signal table (the capture role on
the local stack).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc.signals import request_resnapshot
from erpcrm.drift import Reread
from erpcrm.failures import database_failure
from schemas.errors import SyncError

__all__ = ["Requested", "request_rereads"]

RequestResnapshot = Callable[..., str]


@dataclass(frozen=True, slots=True)
class Requested:
    """A re-read asked for, and the id of its signal."""

    reread: Reread
    signal_id: str

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**self.reread.as_json(), "signal": self.signal_id}


def request_rereads(
    dsns: Mapping[str, str],
    rereads: Sequence[Reread],
    *,
    request: RequestResnapshot = request_resnapshot,
    connect: Callable[..., Any] = psycopg.connect,
) -> list[Requested]:
    """Signal each system's capture to re-read ``rereads``; one signal per table.

    Args:
        dsns: per system, a DSN allowed to write the capture's signal table.
        rereads: what to re-read (:func:`erpcrm.drift.rereads`).
        request: the signal function (:func:`cdc.signals.request_resnapshot`).
        connect: opens a connection (``psycopg.connect``).

    Raises:
        SyncError: a signal could not be written.
    """
    if not rereads:
        return []
    done = []
    try:
        for reread in rereads:
            keys = [{reread.key_column: key} for key in reread.keys]
            with connect(dsns[reread.system], autocommit=True) as conn:
                signal_id = request(conn, reread.table, keys=keys)
            done.append(Requested(reread, str(signal_id)))
    except psycopg.Error as exc:
        raise SyncError(
            f"cannot signal a re-read of {reread.table} ({database_failure(exc)}); check "
            f"the {reread.system.upper()} capture's DSN"
        ) from None
    return done
