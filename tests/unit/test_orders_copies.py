"""What the order assembly reads to change: copied as deep as it changes it, no deeper."""

from __future__ import annotations

from typing import Any

from streams.orders import _lines_to_change, _pending_to_change
from streams.state import ASSEMBLY, DictState, dump
from streams.work import UnitOfWork

TRIGGER = {"after": {"id": 5, "order_id": 1}, "op": "c"}


def _unit() -> UnitOfWork:
    return UnitOfWork(DictState(), 1_000, lambda *write: None)


def test_a_pending_record_changed_as_its_transaction_goes_leaves_the_write_before_it() -> None:
    work = _unit()
    written = {
        "due": 31_000,
        "expected": None,
        "seen": {"public.sale_order_line": 1},
        "orders": {"o|1": {"flow": "o", "lsn": 10, "trigger": TRIGGER}},
        "give_up": None,
    }
    work.put(ASSEMBLY, "tx|erp|1", written)
    before = dump(written)
    record = _pending_to_change(work, "tx|erp|1")
    assert record == written
    # every change the assembly makes to a pending record
    record["due"] = 40_000
    record["expected"] = {"public.sale_order_line": 2}
    record["give_up"] = 50_000
    record["seen"]["public.sale_order_line"] += 1
    record["orders"]["o|1"]["lsn"] = 11
    record["orders"]["o|1"]["trigger"] = {"after": {"id": 6}}
    record["orders"].setdefault("o|2", {"flow": "o", "lsn": 11, "trigger": None})
    assert dump(work.peek(ASSEMBLY, "tx|erp|1")) == before
    assert record["orders"]["o|1"] is not written["orders"]["o|1"]
    assert _pending_to_change(work, "tx|erp|2") is None


def test_an_orders_lines_changed_leave_the_write_before_them() -> None:
    work = _unit()
    line: dict[str, Any] = {"lsn": 10, "op": "c", "row": {"id": 5}}
    work.put(ASSEMBLY, "l|o|1", {"5": line})
    lines = _lines_to_change(work, "o|1")
    lines["6"] = {"lsn": 11, "op": "c", "row": {"id": 6}}
    lines.pop("5")
    assert work.peek(ASSEMBLY, "l|o|1") == {"5": line}
    assert _lines_to_change(work, "o|2") == {}
