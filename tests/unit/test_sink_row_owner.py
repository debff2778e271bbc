"""Row owners: which source record a target row was written for, and who may write it.

The pure rule (:func:`sinks.state.taken_by`) and the sink's use of it before anything is
written (:func:`sinks.postgres._claimed`): an event of a record that resolves to a row
another live record owns is a ``target_row_taken`` dead letter, its version recorded as
``LETTERED``; the owner's own events, a row without an owner, a gone owner's row (stored
so, or ending in the batch) pass; a suspected duplicate goes on as if it had found no
row; source identity decides, never the row's values. The owner is stored with the row
clock (:func:`sinks.sql.row_clock_upsert`), read with it (:func:`sinks.sql.select_current`).
"""

from __future__ import annotations

from typing import Any

from schemas.errors import TargetRowTakenError
from schemas.mapping import load_mappings
from sinks import sql
from sinks.batch import SinkEvent
from sinks.postgres import (
    _claimed,
    _Clocks,
    _Item,
    _Outcome,
    _Statements,
    _written_for,
    dead_letter_headers,
)
from sinks.state import LETTERED, RowOwner, taken_by
from sinks.targets import Direction, TargetTable, build_tables

TABLES = build_tables(load_mappings())
ORDERS = TABLES[(Direction.CRM_TO_ERP, "sales_order")]
CONTACTS = TABLES[(Direction.CRM_TO_ERP, "contact")]
QUOTES = TABLES[(Direction.ERP_TO_CRM, "sales_order")]


def test_a_row_without_owner_or_with_its_own_is_free() -> None:
    assert taken_by(None, "crm:q1") is None
    assert taken_by(RowOwner("crm:q1"), "crm:q1") is None


def test_a_live_other_owner_takes_the_row() -> None:
    assert taken_by(RowOwner("crm:q2"), "crm:q1") == "crm:q2"


def test_a_gone_owner_gives_the_row_up_stored_or_in_the_batch() -> None:
    assert taken_by(RowOwner("crm:q2", gone=True), "crm:q1") is None
    assert taken_by(RowOwner("crm:q2"), "crm:q1", ended=["crm:q2"]) is None
    assert taken_by(RowOwner("crm:q2"), "crm:q1", ended=["crm:q1"]) == "crm:q2"


def _item(table: TargetTable, key: str, pk: Any, **record: Any) -> _Item:
    values = {"version": 3, "op": "upsert", "source_system": "crm", "source_ts_ms": 10}
    values.update(record)
    event = SinkEvent(f"canonical.{table.entity}", 0, 7, table.entity, key, values)
    item = _Item(event, dict(values), None, "digest", (event,), {})
    item.current, item.pk = ({table.pk: pk} if pk is not None else None), pk
    return item


def _clocks(table: TargetTable, owners: dict[str, RowOwner]) -> _Clocks:
    clocks = _Clocks(sql.SYNC_SCHEMA, _Statements())
    for row_id, owner in owners.items():
        clocks.own(table.entity, row_id, owner)
    return clocks


def test_an_event_resolving_to_another_live_records_row_is_lettered_not_written() -> None:
    out = _Outcome()
    moved = _item(ORDERS, "crm:q1", 52, name="renamed")
    clocks = _clocks(ORDERS, {"52": RowOwner("crm:q2")})
    assert _claimed(ORDERS, [moved], clocks, out) == []
    assert out.recorded == [(moved.event, LETTERED)]
    [(event, error)] = out.dead
    assert isinstance(error, TargetRowTakenError)
    headers = dead_letter_headers(event, error, "erp")
    assert headers["erpcrm.error.reason"] == "target_row_taken"
    assert headers["erpcrm.context.target_row"] == "public.sale_order id=52"
    assert headers["erpcrm.context.owner_key"] == "crm:q2"
    assert "crm:q1" in headers["erpcrm.error.message"]
    assert "crm:q2" in headers["erpcrm.error.message"]


def test_the_owners_own_events_pass_whatever_their_values() -> None:
    # Identity, not values: a renamed order, an owned field edited, still its owner's.
    out = _Outcome()
    own = _item(QUOTES, "erp:7", "q1", order_number="S00999", source_system="erp")
    clocks = _clocks(QUOTES, {"q1": RowOwner("erp:7")})
    assert _claimed(QUOTES, [own], clocks, out) == [own]
    assert out.dead == []


def test_a_free_row_a_gone_owners_row_and_an_ending_owner_in_the_batch_pass() -> None:
    out = _Outcome()
    free = _item(CONTACTS, "crm:c1", 1)
    gone = _item(CONTACTS, "crm:c2", 2)
    taker = _item(CONTACTS, "crm:c3", 3)
    ending = _item(CONTACTS, "crm:c4", 4, op="delete", active=False)
    owners = {"2": RowOwner("crm:old", gone=True), "3": RowOwner("crm:c4")}
    items = [free, gone, taker, ending]
    assert _claimed(CONTACTS, items, _clocks(CONTACTS, owners), out) == items
    assert out.dead == []


def test_a_delete_of_another_records_row_is_lettered_too() -> None:
    out = _Outcome()
    delete = _item(CONTACTS, "crm:c1", 2, op="delete", active=False)
    clocks = _clocks(CONTACTS, {"2": RowOwner("crm:c2")})
    assert _claimed(CONTACTS, [delete], clocks, out) == []
    assert [e.key for e, _ in out.dead] == ["crm:c1"]


def test_a_delete_that_leaves_the_row_alone_is_kept() -> None:
    out = _Outcome()
    delete = _item(ORDERS, "crm:q1", 52, op="delete")
    clocks = _clocks(ORDERS, {"52": RowOwner("crm:q2")})
    assert _claimed(ORDERS, [delete], clocks, out) == [delete]
    assert out.dead == []


def test_a_suspected_duplicate_goes_on_as_if_it_found_no_row() -> None:
    out = _Outcome()
    suspect = _item(CONTACTS, "crm:c9", 2, duplicate_of="17")
    clocks = _clocks(CONTACTS, {"2": RowOwner("crm:c2")})
    assert _claimed(CONTACTS, [suspect], clocks, out) == [suspect]
    assert suspect.current is None
    assert suspect.pk is None
    assert out.dead == []


def test_an_item_without_a_row_is_kept() -> None:
    out = _Outcome()
    new = _item(CONTACTS, "crm:c1", None)
    assert _claimed(CONTACTS, [new], _clocks(CONTACTS, {}), out) == [new]


def test_a_written_record_owns_its_row_gone_once_deleted_or_archived() -> None:
    assert _written_for(_item(CONTACTS, "crm:c1", 1)) == RowOwner("crm:c1")
    assert _written_for(_item(CONTACTS, "crm:c1", 1, active=False)) == RowOwner("crm:c1", True)
    assert _written_for(_item(CONTACTS, "crm:c1", 1, op="delete")) == RowOwner("crm:c1", True)


def test_the_owner_is_read_and_stored_with_the_row_clock() -> None:
    upsert = sql.row_clock_upsert().as_string(None)
    assert "owner_key = EXCLUDED.owner_key" in upsert
    assert "owner_gone = EXCLUDED.owner_gone" in upsert
    assert "owner_key, owner_gone" in sql.row_clock_select().as_string(None)
    keys = (sql.Key(sql.Column("id", "bigint")),)
    current = sql.select_current(
        sql.Table("public", "sale_order"), ("id",), keys, clock=(sql.SYNC_SCHEMA, "id")
    ).as_string(None)
    assert sql.clock_column("owner_key") in current
    ddl = " ".join(s.as_string(None) for s in sql.create_sync_schema())
    assert "ADD COLUMN IF NOT EXISTS owner_key text" in ddl
