"""Conflict resolution on the first sync of a row the target already has."""

from __future__ import annotations

from typing import Any

from schemas.mapping import Owner
from sinks.state import Applied, Resolution, TargetView, resolve

OWNERS = {"vat": Owner.ERP, "industry": Owner.CRM, "email": Owner.SHARED}
FIELDS = ("vat", "industry", "email")


def incoming(ts: int = 100, **fields: Any) -> dict[str, Any]:
    return {"version": 1, "op": "upsert", "source_system": "erp", "source_ts_ms": ts, **fields}


def first_sync(current: TargetView, record: dict[str, Any]) -> Resolution:
    """An ERP event for a CRM row that exists but whose key was never synced."""
    return resolve(
        "customer",
        "erp:1",
        record,
        target="crm",
        ownership=OWNERS,
        fields=FIELDS,
        current=current,
        stored=None,
    )


def test_empty_target_fields_are_no_conflict() -> None:
    # The row is newer than the event: were these conflicts, the CRM would win them.
    current = TargetView({"vat": None, "industry": None, "email": None}, modified_ts_ms=200)
    r = first_sync(current, incoming(vat="V", industry="Retail", email="e@x"))
    assert r.conflicts == ()
    # Source-owned and shared fields are written; the target-owned one is kept.
    assert r.writes == {"vat": "V", "email": "e@x"}
    assert r.kept == ("industry",)
    assert r.merged(current) == {"vat": "V", "industry": None, "email": "e@x"}


def test_missing_target_value_counts_as_empty() -> None:
    current = TargetView({}, modified_ts_ms=200)
    r = first_sync(current, incoming(vat="V", industry="Retail", email="e@x"))
    assert r.conflicts == ()
    assert r.writes == {"vat": "V", "email": "e@x"}


def test_differing_target_values_still_conflict() -> None:
    current = TargetView({"vat": "OLD", "industry": "Tech", "email": "local"}, modified_ts_ms=200)
    r = first_sync(current, incoming(ts=100, vat="V", industry="Retail", email="remote"))
    by_field = {c.field: c for c in r.conflicts}
    assert [c.field for c in r.conflicts] == ["vat", "industry", "email"]
    assert (by_field["vat"].winner, by_field["vat"].reason) == ("erp", "owner")
    assert (by_field["industry"].winner, by_field["industry"].reason) == ("crm", "owner")
    assert (by_field["email"].winner, by_field["email"].reason) == ("crm", "last_writer")
    assert (by_field["email"].ours, by_field["email"].theirs) == ("local", "remote")
    assert r.writes == {"vat": "V"}
    assert r.kept == ("industry", "email")


def test_only_the_non_empty_differing_field_conflicts() -> None:
    current = TargetView({"vat": None, "industry": None, "email": "local"}, modified_ts_ms=200)
    r = first_sync(current, incoming(ts=100, vat="V", industry="Retail", email="remote"))
    assert [(c.field, c.winner) for c in r.conflicts] == [("email", "crm")]
    assert r.writes == {"vat": "V"}
    assert r.kept == ("industry", "email")


def test_shared_conflict_on_first_sync_newer_event_wins() -> None:
    current = TargetView({"email": "local"}, modified_ts_ms=50)
    r = first_sync(current, incoming(ts=100, email="remote"))
    [conflict] = r.conflicts
    assert (conflict.field, conflict.winner, conflict.reason) == ("email", "erp", "last_writer")
    assert r.writes["email"] == "remote"


def test_equal_values_are_no_conflict() -> None:
    current = TargetView({"vat": "V", "industry": "Retail", "email": "e@x"}, modified_ts_ms=200)
    r = first_sync(current, incoming(vat="V", industry="Retail", email="e@x"))
    assert r.conflicts == ()
    assert r.writes == {"vat": "V", "email": "e@x"}
    assert r.kept == ("industry",)


def test_empty_field_after_a_sync_is_still_a_conflict() -> None:
    # The rule is for the first sync only: a field cleared in the target after the
    # sink wrote the row is a change on both sides.
    current = TargetView({"email": None}, modified_ts_ms=200)
    r = resolve(
        "customer",
        "erp:1",
        incoming(ts=100, email="remote"),
        target="crm",
        ownership=OWNERS,
        fields=("email",),
        current=current,
        stored=Applied(1, "h", 150),
    )
    [conflict] = r.conflicts
    assert (conflict.ours, conflict.theirs, conflict.winner) == (None, "remote", "crm")
    assert r.kept == ("email",)
    assert r.writes == {}


def test_crm_to_erp_first_sync() -> None:
    current = TargetView({"vat": None, "industry": "Old", "email": None}, modified_ts_ms=500)
    r = resolve(
        "customer",
        "crm:a",
        {"source_system": "crm", "source_ts_ms": 100, "vat": "V", "industry": "New", "email": "e"},
        target="erp",
        ownership=OWNERS,
        fields=FIELDS,
        current=current,
        stored=None,
    )
    # The ERP owns vat (kept, empty: no conflict); the CRM owns industry (written,
    # recorded as an owner conflict); email is empty in the ERP (written, no conflict).
    assert [(c.field, c.winner, c.reason) for c in r.conflicts] == [("industry", "crm", "owner")]
    assert r.writes == {"industry": "New", "email": "e"}
    assert r.kept == ("vat",)
