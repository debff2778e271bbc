"""Two events of one batch writing the same target row: which is written, and the other.

The pure decision of :func:`sinks.postgres._latest`: the later commit is written; a
loser of another source record is a ``target_row_contended`` dead letter naming the row
and the winner, not applied but its version recorded as ``LETTERED`` (the topics read
again leave it out, an operator's replay of the letter applies it); a loser of the same
key stays recorded. The
writer of a row is chosen before anything of an update is queued
(:func:`sinks.postgres._settle_updates`): a loser's conflicts, re-announcement and
lines (their stored state and an ``order_lines_locked`` letter) are not queued, the
winner's are.
"""

from __future__ import annotations

from schemas.errors import TargetRowContendedError
from schemas.mapping import load_mappings
from sinks.batch import SinkEvent
from sinks.lines import LinesSnapshot
from sinks.lines import snapshot as lines_snapshot
from sinks.postgres import (
    _Item,
    _latest,
    _Outcome,
    _row_name,
    _settle_updates,
    dead_letter_headers,
)
from sinks.state import LETTERED, Conflict, Merge
from sinks.targets import Direction, build_tables

ROW = "crm.accounts id=42"


def item(key: str, ts_ms: int, version: int = 1, offset: int = 0) -> _Item:
    record = {"version": version, "op": "upsert", "source_system": "erp", "source_ts_ms": ts_ms}
    event = SinkEvent("canonical.customer", 0, offset, "customer", key, record)
    return _Item(event, dict(record), None, f"digest-{key}-{version}", (event,), {})


def test_a_first_event_of_a_row_is_kept() -> None:
    out = _Outcome()
    first = item("erp:805", 10)
    assert _latest(None, first, out, ROW) is first
    assert not out.dead
    assert not out.applied


def test_another_source_record_on_the_same_row_is_dead_lettered_not_applied() -> None:
    out = _Outcome()
    older, newer = item("erp:805", 10, offset=1), item("erp:808", 20, offset=2)
    assert _latest(_latest(None, older, out, ROW), newer, out, ROW) is newer
    assert out.applied == []
    assert out.recorded == [(older.event, LETTERED)]
    [(event, error)] = out.dead
    assert event is older.event
    assert isinstance(error, TargetRowContendedError)
    headers = dead_letter_headers(event, error, "crm")
    assert headers["erpcrm.error.reason"] == "target_row_contended"
    assert headers["erpcrm.entity_key"] == "erp:805"
    assert headers["erpcrm.context.target_row"] == ROW
    assert headers["erpcrm.context.winner_key"] == "erp:808"


def test_the_later_commit_wins_whichever_is_met_first() -> None:
    out = _Outcome()
    newer, older = item("erp:808", 20), item("erp:805", 10)
    assert _latest(_latest(None, newer, out, ROW), older, out, ROW) is newer
    assert [e.key for e, _ in out.dead] == ["erp:805"]


def test_versions_of_one_source_record_collapse_to_the_latest_as_before() -> None:
    out = _Outcome()
    v1, v2 = item("erp:805", 10, version=1), item("erp:805", 20, version=2)
    assert _latest(_latest(None, v1, out, ROW), v2, out, ROW) is v2
    assert out.dead == []
    assert out.applied == [v1.event]
    assert out.recorded == [(v1.event, v1.digest)]


# -- decide first, then apply: what a loser of an update leaves -------------------------

ORDERS = build_tables(load_mappings())[(Direction.CRM_TO_ERP, "sales_order")]
ORDER_ROW = "public.sale_order id=42"


def update(key: str, ts_ms: int, quantity: int, pk: int = 42) -> _Item:
    """An order update merged against row ``pk``: a refused total and its lines."""
    lines = [{"crm_id": "line-1", "sku": "SKU-1", "quantity": quantity}]
    record = {
        "version": 2,
        "op": "upsert",
        "source_system": "crm",
        "source_ts_ms": ts_ms,
        "changed_fields": ["amount_total"],
        "lines": lines,
    }
    event = SinkEvent("canonical.sales_order", 0, ts_ms, "sales_order", key, record)
    conflict = Conflict("sales_order", key, "amount_total", 10, 50, "erp", "owner", "erp")
    merged = Merge({}, {}, (conflict,), reassert=True)
    return _Item(
        event,
        dict(record),
        None,
        f"digest-{key}",
        (event,),
        {},
        current={"id": pk, "name": f"S{pk:05d}"},
        pk=pk,
        merged=merged,
    )


def stated(*keys: str) -> dict[str, LinesSnapshot]:
    """The lines each key's source stated last: one line, quantity 1."""
    return {
        k: lines_snapshot([{"crm_id": "line-1", "sku": "SKU-1", "quantity": 1}], "crm_id")
        for k in keys
    }


def test_a_loser_of_an_update_queues_nothing_but_its_letter() -> None:
    out = _Outcome()
    loser, winner = update("crm:q1", 10, quantity=5), update("crm:q2", 20, quantity=7)
    written = _settle_updates(ORDERS, [loser, winner], stated("crm:q1", "crm:q2"), out)
    assert list(written.values()) == [winner]
    assert [c.entity_key for c in out.conflicts] == ["crm:q2"]
    assert [(e.key, pk) for e, pk in out.announce] == [("crm:q2", "42")]
    assert [e.key for e, _ in out.source_lines] == ["crm:q2"]
    assert [(e.key, type(err).__name__) for e, err in out.refused_parts] == [
        ("crm:q2", "LinesLockedError")
    ]
    [(event, error)] = out.dead
    assert event is loser.event
    assert isinstance(error, TargetRowContendedError)
    assert dict(error.context)["target_row"] == ORDER_ROW


def test_the_winner_met_first_keeps_its_effects_and_the_loser_met_later_has_none() -> None:
    out = _Outcome()
    winner, loser = update("crm:q2", 20, quantity=7), update("crm:q1", 10, quantity=5)
    written = _settle_updates(ORDERS, [winner, loser], stated("crm:q1", "crm:q2"), out)
    assert list(written.values()) == [winner]
    assert {c.entity_key for c in out.conflicts} == {"crm:q2"}
    assert {e.key for e, _ in (*out.announce, *out.source_lines, *out.refused_parts)} == {"crm:q2"}
    assert [e.key for e, _ in out.dead] == ["crm:q1"]


def test_updates_of_different_rows_each_queue_their_effects() -> None:
    out = _Outcome()
    first, second = update("crm:q1", 10, quantity=5, pk=42), update("crm:q2", 20, 7, pk=43)
    written = _settle_updates(ORDERS, [first, second], stated("crm:q1", "crm:q2"), out)
    assert list(written.values()) == [first, second]
    assert [c.entity_key for c in out.conflicts] == ["crm:q1", "crm:q2"]
    assert [e.key for e, _ in out.announce] == ["crm:q1", "crm:q2"]
    assert [e.key for e, _ in out.refused_parts] == ["crm:q1", "crm:q2"]
    [(_, locked)] = [(e, err) for e, err in out.refused_parts if e.key == "crm:q1"]
    assert dict(locked.context)["target_row"] == "public.sale_order id=42 name=S00042"
    assert out.dead == []


def test_a_row_is_named_schema_table_column_value() -> None:
    assert _row_name(ORDERS, "id", 42) == ORDER_ROW
