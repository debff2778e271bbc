"""Two events of one batch writing the same target row: which is written, and the other.

The pure decision of :func:`sinks.postgres._latest`: the later commit is written; a
loser of another source record is a ``target_row_contended`` dead letter naming the row
and the winner, never recorded as applied; a loser of the same key stays recorded.
"""

from __future__ import annotations

from schemas.errors import TargetRowContendedError
from sinks.batch import SinkEvent
from sinks.postgres import _Item, _latest, _Outcome, dead_letter_headers

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
    assert out.recorded == []
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
