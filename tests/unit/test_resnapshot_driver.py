"""The capture's re-snapshot glue (:class:`cdc.resnapshot.ResnapshotDriver`) without I/O.

Signals queued or ignored, other captures' watermarks ignored, a request for a table no
longer captured given up, and the confirmed LSN held below state not yet stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from cdc.catalog import CapturedTable
from cdc.decoding import LogicalMessage, Relation, ReplicaIdentity
from cdc.envelope import ColumnShape, TableShape
from cdc.incremental import WATERMARK_PREFIX, Watermark
from cdc.lsn import Lsn
from cdc.metrics import CaptureMetrics
from cdc.resnapshot import ResnapshotDriver
from cdc.settings import CaptureSettings

PARTNERS = CapturedTable(
    TableShape(
        "erp",
        "public",
        "res_partner",
        (ColumnShape("id", "int8", nullable=False, is_key=True), ColumnShape("name", "text")),
    ),
    (20, 25),
)


@dataclass
class FakeStream:
    """The one thing the driver reads from the replication stream."""

    received: Lsn


def driver(
    captured: dict[str, CapturedTable] | None = None,
) -> tuple[ResnapshotDriver, CollectorRegistry]:
    registry = CollectorRegistry()
    tables = {"res_partner": PARTNERS} if captured is None else captured
    settings = CaptureSettings(system="erp")
    made = ResnapshotDriver(settings, CaptureMetrics.create(registry), tables.get)
    made.start_fresh(Lsn(100))
    return made, registry


def signals(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "erpcrm_cdc_signals_total", {"system": "erp", "outcome": outcome}
    )
    return value or 0.0


def signal_row(*collections: str) -> dict[str, object]:
    data = {"type": "incremental", "data-collections": list(collections)}
    return {"id": "s1", "type": "execute-snapshot", "data": json.dumps(data)}


def test_only_the_configured_signal_table_is_the_signal_relation() -> None:
    made, _ = driver()
    other = Relation(7, "public", "res_partner", ReplicaIdentity.DEFAULT, ())
    signal = Relation(9, "public", "erpcrm_signal", ReplicaIdentity.DEFAULT, ())
    assert not made.is_signal_relation(other)
    assert not made.is_signal(9)
    assert made.is_signal_relation(signal)
    assert made.is_signal(9)
    assert not made.is_signal(7)


def test_a_signal_for_a_captured_table_is_queued() -> None:
    made, registry = driver()
    assert made.on_signal(signal_row("public.res_partner"))
    assert [r.collection for r in made.snapshots.pending] == ["public.res_partner"]
    assert signals(registry, "queued") == 1


def test_a_signal_for_another_table_or_malformed_changes_nothing() -> None:
    made, registry = driver()
    assert not made.on_signal(signal_row("public.accounts"))
    assert not made.on_signal({"id": "s2", "type": "execute-snapshot", "data": "not json"})
    assert made.snapshots.pending == ()
    assert (signals(registry, "ignored"), signals(registry, "invalid")) == (1, 1)


def test_another_captures_watermark_is_ignored() -> None:
    made, _ = driver()
    mark = Watermark("erpcrm_crm", "c1", "open").encode().encode()
    message = LogicalMessage(True, Lsn(150), WATERMARK_PREFIX, mark)
    assert made.watermark(message, 160) is None


def test_a_request_for_a_table_no_longer_captured_is_given_up() -> None:
    tables = {"res_partner": PARTNERS}
    made, registry = driver(tables)
    made.on_signal(signal_row("public.res_partner"))
    del tables["res_partner"]  # dropped from the capture after the signal was queued
    made.next_chunk(None, FakeStream(Lsn(300)))  # type: ignore[arg-type]
    assert made.snapshots.pending == ()
    assert signals(registry, "failed") == 1
    assert made.progress.unstored(300)  # the drop is a state change to store


def test_the_confirmed_lsn_waits_for_a_state_change_to_be_stored() -> None:
    made, _ = driver()
    made.on_signal(signal_row("public.res_partner"))
    made.record(200)
    assert made.confirmable(Lsn(250)) == Lsn(100)
    made.progress.stored(200)
    assert made.confirmable(Lsn(250)) == Lsn(250)
