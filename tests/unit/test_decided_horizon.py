"""The decided horizon of each source system (streams.decided, through the processor)."""

from __future__ import annotations

from typing import Any

from schemas.horizon import SourceHorizon
from streams.decided import DecidedHorizons
from tests.unit.test_processor import Harness, account, quant
from tests.unit.test_transform import ACCOUNTS, STOCK_QUANT, TS_MS

NOW = 1_800_000_000_000


def end(tx: str, ts: int) -> dict[str, Any]:
    return {"status": "END", "id": tx, "event_count": 0, "data_collections": [], "ts_ms": ts}


def never(_system: str, _lsn: int) -> bool:
    return False


def test_a_released_end_is_published_only_once_settled_and_ripe() -> None:
    horizons = DecidedHorizons(ripen_ms=1_000)
    horizons.released("erp", end("7:500", 2_000))
    assert horizons.ripe(NOW + 5_000) == {}  # not settled: its batch is not published yet
    horizons.settle(never, NOW)
    assert horizons.ripe(NOW + 999) == {}
    assert horizons.ripe(NOW + 1_000) == {"erp": SourceHorizon("erp", 500, 2_000)}


def test_the_latest_end_of_a_batch_counts_and_the_horizon_never_goes_back() -> None:
    horizons = DecidedHorizons(ripen_ms=0)
    horizons.released("crm", end("8:900", 3_000))
    horizons.released("crm", end("6:300", 1_000))  # sent again after a capture restart
    horizons.released("crm", end("not-a-tx-id", 9_000))
    horizons.settle(never, NOW)
    assert horizons.ripe(NOW) == {"crm": SourceHorizon("crm", 900, 3_000)}
    horizons.released("crm", end("5:200", 500))
    horizons.settle(never, NOW)
    assert horizons.ripe(NOW) == {"crm": SourceHorizon("crm", 900, 3_000)}


def test_what_still_waits_holds_the_horizon_back_and_a_rollback_forgets() -> None:
    horizons = DecidedHorizons(ripen_ms=0)
    waiting = {"erp"}
    horizons.released("erp", end("7:500", 2_000))
    horizons.released("crm", end("3:100", 2_000))
    horizons.settle(lambda system, _lsn: system in waiting, NOW)
    assert horizons.ripe(NOW) == {"crm": SourceHorizon("crm", 100, 2_000)}
    horizons.released("erp", end("9:700", 4_000))
    horizons.forget()  # the batch is decided again
    waiting.clear()
    horizons.settle(never, NOW)
    assert "erp" not in horizons.ripe(NOW)
    horizons.released("erp", end("9:700", 4_000))
    horizons.settle(never, NOW)
    assert horizons.ripe(NOW)["erp"] == SourceHorizon("erp", 700, 4_000)


def heartbeat(h: Harness, system: str, tx: tuple[int, int]) -> None:
    """The capture's heartbeat: a transaction with no change, its END counting none."""
    h.run(h.end(system, tx, {}))
    h.processor.settle_horizons(NOW)


def test_a_quiet_source_moves_its_horizon_with_the_captures_heartbeats() -> None:
    h = Harness()
    # An account's transaction, its END read before its change (another partition).
    h.run(h.end("crm", (5, 110), {"public.accounts": 1}))
    heartbeat(h, "crm", (6, 120))
    # The heartbeat, committed after it, waits behind it: no horizon.
    assert h.processor.ripe_horizons(NOW + 2_000) == {}
    h.run(h.change(ACCOUNTS, "c", after=account(), lsn=100, tx=(5, 110)))
    h.processor.settle_horizons(NOW + 2_000)
    assert h.processor.ripe_horizons(NOW + 2_999) == {}
    assert h.processor.ripe_horizons(NOW + 3_000) == {"crm": SourceHorizon("crm", 120, TS_MS)}
    # Later heartbeats move it on.
    heartbeat(h, "crm", (7, 130))
    assert h.processor.ripe_horizons(NOW + 1_000)["crm"].lsn == 130


def test_a_transaction_committed_before_still_held_holds_the_horizon_back() -> None:
    h = Harness()
    # A change whose END never came (the assembly timeout has not passed yet).
    h.run(h.change(ACCOUNTS, "c", after=account(), lsn=100, tx=(5, 110)))
    heartbeat(h, "crm", (6, 120))
    assert h.processor.ripe_horizons(NOW + 1_000) == {}


def test_a_record_parked_for_a_reference_holds_its_systems_horizon_back() -> None:
    h = Harness(reference_wait_ms=5_000)
    h.run(h.change(STOCK_QUANT, "u", after=quant(1, 9, 1, "4"), lsn=100, tx=(3, 105)))
    h.run(h.end("erp", (3, 105), {"public.stock_quant": 1}))  # parked: product 9 unknown
    assert h.processor.has_pending
    heartbeat(h, "erp", (4, 200))
    heartbeat(h, "crm", (4, 300))  # the other system is not held back
    assert h.processor.ripe_horizons(NOW + 1_000) == {"crm": SourceHorizon("crm", 300, TS_MS)}
    # Once the parked record is decided (dead-lettered after its wait), the next
    # heartbeat moves the horizon.
    for advance in (1_000, 1_000, 10_000):  # the read horizon's first stretch, then the wait
        h.run(h.tick(advance))
    assert not h.processor.has_pending
    heartbeat(h, "erp", (8, 400))
    assert h.processor.ripe_horizons(NOW + 1_000)["erp"] == SourceHorizon("erp", 400, TS_MS)


def test_the_horizon_starts_again_after_a_reload() -> None:
    h = Harness()
    h.run(h.end("crm", (6, 120), {}))
    h.processor.rollback(h.state)  # decided again from the committed state
    h.processor.settle_horizons(NOW)
    assert h.processor.ripe_horizons(NOW + 1_000) == {}
