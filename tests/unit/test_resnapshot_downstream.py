"""A re-snapshot read downstream: never a no-op, never older than what was kept.

The capture publishes rows an operator asked to re-read as ``op = "r"`` with
``source.snapshot = "incremental"``. The streams stage and the sinks drop an event
whose payload equals the last one kept; a re-read is how a target that drifted (a row
it lacks or holds differently) is repaired, so it must pass that check, while a stale
version is still dropped.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from schemas.payload import is_resnapshot, never_noop, payload_hash
from sinks.state import Applied, Decision, decide
from streams import dedupe, inventory
from streams.inventory import InventoryState, Quant, QuantChange
from streams.transform import snapshot_kind, to_canonical
from tests.unit.test_transform import ACCOUNT_MOVE, FLOWS, MOVE, decoded, fits_schema, ok

# Invoices: an entity without ``changed_fields``, whose same values are a no-op.
FLOW = FLOWS["erp_account_move__invoice"]


def _product(op: str, snapshot: str = "false", lsn: int = 100) -> dict[str, Any]:
    raw = decoded(ACCOUNT_MOVE, op, after=MOVE, lsn=lsn, tx_id=None if op == "r" else 9)
    raw["source"]["snapshot"] = snapshot
    return raw


def _record(raw: dict[str, Any]) -> dict[str, Any]:
    return fits_schema(ok(to_canonical(FLOW, raw)).value)


def test_a_resnapshot_read_is_marked_and_hashes_like_the_streamed_row() -> None:
    streamed = _record(_product("u"))
    initial = _record(_product("r", "last"))
    reread = _record(_product("r", "incremental", lsn=200))
    assert (streamed["source_snapshot"], initial["source_snapshot"]) == (None, "last")
    assert reread["source_snapshot"] == "incremental"
    assert payload_hash(streamed) == payload_hash(reread) == payload_hash(initial)
    assert is_resnapshot(reread)
    assert never_noop(reread)
    assert not never_noop(streamed)
    assert not never_noop(initial)


def test_snapshot_kind_only_for_snapshot_reads() -> None:
    assert snapshot_kind(_product("r", "incremental")) == "incremental"
    assert snapshot_kind(_product("r", "true")) == "true"
    assert snapshot_kind(_product("u", "false")) is None
    assert snapshot_kind({"op": "r"}) is None


def test_streams_and_sinks_pass_a_reread_of_the_same_values_but_not_a_stale_one() -> None:
    streamed = _record(_product("u", lsn=100))
    digest = payload_hash(streamed)
    reread = _record(_product("r", "incremental", lsn=200))
    state: dedupe.DedupeState = {"p": (100, digest)}
    # streams: the processor turns a NO_OP of a never-no-op record into an emit
    assert dedupe.decide(state, "p", 200, payload_hash(reread)) is dedupe.Verdict.NO_OP
    assert never_noop(reread)
    assert dedupe.decide(state, "p", 50, payload_hash(reread)) is dedupe.Verdict.STALE
    # sinks
    stored = Applied(100, digest)
    merged = never_noop(reread)
    assert decide(stored, 200, payload_hash(reread), merged=merged) is Decision.APPLY
    assert decide(stored, 100, payload_hash(reread), merged=merged) is Decision.SKIP_STALE
    assert decide(stored, 200, digest, merged=never_noop(streamed)) is Decision.SKIP_NOOP


def test_a_reread_quant_republishes_unchanged_stock_with_a_higher_version() -> None:
    state = InventoryState()
    change = QuantChange("q1", Quant("p1", "loc", Decimal(5), Decimal(1), "SKU-1"))
    (first,) = inventory.apply(state, change, version=10)
    assert inventory.apply(state, change, version=20) == []
    (again,) = inventory.apply(state, change, version=30, reassert=True)
    assert again.same_stock(first)
    assert again.version == 30
