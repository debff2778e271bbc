"""Liveness merges like a shared field: archive, reactivate, delete, undelete by commit time.

The ERP's ``active`` and the CRM's ``deleted`` (inverted) are one canonical field of a
customer, ``active``, shared between the systems: the last live/dead change of either
side by real commit time wins, an exact tie to the ERP (DESIGN.md §5.4). A soft delete
carries the row's values, so edits before it in the same batch are not lost; a delete
that removes its record (a source row deleted) still archives or deletes the target row.
Pure: the real mappings and target tables, no database.
"""

from typing import Any

from schemas.mapping import Owner, load_mappings, ownership
from sinks.state import Merge, RowClock, changed_times, merge
from sinks.targets import (
    LIVENESS,
    Direction,
    TargetTable,
    build_tables,
    from_row,
    is_id_field,
    to_row,
)

FLOWS = load_mappings()
TABLES = build_tables(FLOWS)
ACCOUNTS = TABLES[(Direction.ERP_TO_CRM, "customer")]
PARTNERS = TABLES[(Direction.CRM_TO_ERP, "customer")]
CONTACT_PERSONS = TABLES[(Direction.CRM_TO_ERP, "contact")]
PRODUCTS = TABLES[(Direction.ERP_TO_CRM, "product")]
ACCOUNT = "11111111-1111-1111-1111-111111111111"


def event(source: str, ts: int, op: str = "upsert", **fields: Any) -> dict[str, Any]:
    return {"source_system": source, "source_ts_ms": ts, "version": ts, "op": op, **fields}


def merged(
    table: TargetTable, record: dict[str, Any], current: dict[str, Any], row: RowClock
) -> Merge:
    """``record`` (every field it carries changed at its commit) merged into a row."""
    fields = [f for f in table.fields if not is_id_field(f) and (f in current or f in record)]
    return merge(
        table.entity,
        f"{record['source_system']}:1",
        record,
        target=table.direction.target,
        ownership=ownership(FLOWS, table.entity),
        fields=fields,
        changed=changed_times([record], fields),
        current=current,
        clock=row,
    )


def test_liveness_is_shared_for_customers_and_the_crms_for_contacts() -> None:
    assert ownership(FLOWS, "customer")[LIVENESS] is Owner.SHARED
    assert ownership(FLOWS, "contact")[LIVENESS] is Owner.CRM


def test_the_crm_writes_liveness_as_deleted_inverted() -> None:
    archived = to_row(ACCOUNTS, event("erp", 1, crm_id=ACCOUNT, name="Acme", active=False))
    assert archived["deleted"] is True
    live = to_row(ACCOUNTS, event("erp", 1, crm_id=ACCOUNT, name="Acme", active=True))
    assert live["deleted"] is False
    # Not stated (an event from before the field): a new account is live.
    assert to_row(ACCOUNTS, event("erp", 1, crm_id=ACCOUNT, name="Acme"))["deleted"] is False
    assert from_row(ACCOUNTS, {"deleted": True})[LIVENESS] is False
    assert from_row(ACCOUNTS, {"deleted": False})[LIVENESS] is True


def test_the_erp_writes_the_liveness_of_customers_and_contact_persons() -> None:
    row = to_row(PARTNERS, event("crm", 1, crm_id=ACCOUNT, name="Acme", active=False))
    assert row["active"] is False
    person = to_row(CONTACT_PERSONS, event("crm", 1, crm_id=ACCOUNT, last_name="N", active=False))
    assert person["active"] is False
    assert to_row(CONTACT_PERSONS, event("crm", 1, crm_id=ACCOUNT, last_name="N"))["active"]


def test_a_soft_delete_carrying_liveness_is_merged_a_removal_is_applied() -> None:
    soft = event("crm", 1, op="delete", crm_id=ACCOUNT, name="Acme", active=False)
    assert not PARTNERS.removes(soft)
    assert not CONTACT_PERSONS.removes(soft)
    removed = event("crm", 1, op="delete", crm_id=ACCOUNT)  # the row is gone: ids only
    assert PARTNERS.removes(removed)
    # Only ``active: false`` says the record is still there.
    assert PARTNERS.removes(event("crm", 1, op="delete", crm_id=ACCOUNT, active=True))
    assert ACCOUNTS.removes(event("erp", 1, op="delete", erp_id="7"))
    # A table that does not write liveness applies every delete as its mode says.
    assert PRODUCTS.removes(event("erp", 1, op="delete", erp_id="7", active=False))
    assert not PARTNERS.removes(event("crm", 1, crm_id=ACCOUNT, active=False))


def test_a_crm_delete_after_an_erp_reactivation_archives_the_customer() -> None:
    reactivated = RowClock(local={LIVENESS: 100}, horizon_ms=100)
    delete = event("crm", 200, op="delete", crm_id=ACCOUNT, active=False)
    m = merged(PARTNERS, delete, {LIVENESS: True}, reactivated)
    assert m.writes == {LIVENESS: False}
    assert m.written_at == {LIVENESS: 200}


def test_a_crm_delete_before_an_erp_reactivation_leaves_the_customer_live() -> None:
    reactivated = RowClock(local={LIVENESS: 300}, horizon_ms=300)
    delete = event("crm", 200, op="delete", crm_id=ACCOUNT, active=False)
    m = merged(PARTNERS, delete, {LIVENESS: True}, reactivated)
    assert m.writes == {}
    [conflict] = m.conflicts
    assert (conflict.field, conflict.winner, conflict.reason) == (LIVENESS, "erp", "last_writer")


def test_an_erp_archive_before_a_crm_undelete_leaves_the_account_live() -> None:
    undeleted = RowClock(local={LIVENESS: 300}, horizon_ms=300)
    archive = event("erp", 200, erp_id="7", crm_id=ACCOUNT, active=False)
    assert merged(ACCOUNTS, archive, {LIVENESS: True}, undeleted).writes == {}
    later = event("erp", 400, erp_id="7", crm_id=ACCOUNT, active=False)
    assert merged(ACCOUNTS, later, {LIVENESS: True}, undeleted).writes == {LIVENESS: False}


def test_a_crm_undelete_after_an_erp_archive_reactivates_the_customer() -> None:
    archived = RowClock(local={LIVENESS: 100}, horizon_ms=100)
    undelete = event("crm", 200, crm_id=ACCOUNT, active=True)
    assert merged(PARTNERS, undelete, {LIVENESS: False}, archived).writes == {LIVENESS: True}


def test_a_liveness_tie_goes_to_the_erp_on_both_sides() -> None:
    erp_changed = RowClock(local={LIVENESS: 100}, horizon_ms=100)
    crm_delete = event("crm", 100, op="delete", crm_id=ACCOUNT, active=False)
    assert merged(PARTNERS, crm_delete, {LIVENESS: True}, erp_changed).writes == {}
    crm_changed = RowClock(local={LIVENESS: 100}, horizon_ms=100)
    erp_archive = event("erp", 100, erp_id="7", crm_id=ACCOUNT, active=False)
    m = merged(ACCOUNTS, erp_archive, {LIVENESS: True}, crm_changed)
    assert m.writes == {LIVENESS: False}


def test_edits_before_a_soft_delete_in_one_batch_are_written_with_it() -> None:
    # The CRM renames the account at 100, then deletes it at 200; the sink's batch keeps
    # only the delete, which carries the row's values: the name keeps its own time.
    rename = event("crm", 100, crm_id=ACCOUNT, name="New", active=True, changed_fields=["name"])
    delete = event(
        "crm", 200, op="delete", crm_id=ACCOUNT, name="New", active=False, changed_fields=["active"]
    )
    fields = [f for f in PARTNERS.fields if f in ("name", LIVENESS)]
    times = changed_times([rename, delete], fields)
    assert times == {"name": 100, LIVENESS: 200}
    m = merge(
        "customer",
        f"crm:{ACCOUNT}",
        delete,
        target="erp",
        ownership=ownership(FLOWS, "customer"),
        fields=fields,
        changed=times,
        current={"name": "Old", LIVENESS: True},
        clock=RowClock(local={"name": 50, LIVENESS: 50}, horizon_ms=50),
    )
    assert m.writes == {"name": "New", LIVENESS: False}
    assert m.written_at == {"name": 100, LIVENESS: 200}


def test_other_fields_do_not_move_liveness() -> None:
    edit = event("erp", 300, erp_id="7", crm_id=ACCOUNT, name="N", active=True)
    edit["changed_fields"] = ["name"]
    deleted = RowClock(local={LIVENESS: 200}, horizon_ms=200)
    m = merge(
        "customer",
        "erp:7",
        edit,
        target="crm",
        ownership=ownership(FLOWS, "customer"),
        fields=["name", LIVENESS],
        changed=changed_times([edit], ["name", LIVENESS]),
        current={"name": "O", LIVENESS: False},
        clock=deleted,
    )
    assert m.writes == {"name": "N"}
