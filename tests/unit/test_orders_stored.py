"""Held orders as the ``assembly`` table stores them: as bytes, and as frozen envelopes before.

A worker upgraded over an existing changelog finds headers, lines and triggers stored
frozen (the envelope or row beside, or instead of, the bytes); it must assemble those
orders exactly as it assembles the ones it stored itself, and as a worker that kept
them in memory does.
"""

from __future__ import annotations

from typing import Any

from streams.outcome import Outcome
from streams.processor import StreamProcessor
from streams.state import ASSEMBLY, DictState, dump, freeze, load, unb64
from tests.unit.test_processor import (
    FLOWS,
    ORDER,
    SALE_ORDER,
    SALE_ORDER_LINE,
    SERDE,
    Harness,
    decoded,
    encode_canonical,
    order_line,
    with_catalogue,
)


def _frozen(value: str) -> Any:
    return freeze(SERDE.decode(unb64(value)))


def as_stored_before(state: DictState) -> int:
    """Rewrite the held orders in the format stored before; how many records changed."""
    table = state.tables[ASSEMBLY]
    changed = 0
    for key, text in list(table.items()):
        value = load(text)
        if key.startswith("h|") and "env" not in value:
            value["env"] = _frozen(value["value"])
            del value["op"]
        elif key.startswith("l|") and any("value" in line for line in value.values()):
            for line in value.values():
                if "value" in line:
                    env = _frozen(line.pop("value"))
                    line["row"] = env["before" if line["op"] == "d" else "after"]
        elif key.startswith("tx|") and any(
            "value" in (info["trigger"] or {}) for info in value["orders"].values()
        ):
            for info in value["orders"].values():
                if "value" in (info["trigger"] or {}):
                    info["trigger"] = _frozen(info["trigger"]["value"])
        else:
            continue
        table[key] = dump(value)
        changed += 1
    return changed


def restarted(h: Harness) -> None:
    """A new processor over the harness's state: nothing kept in memory."""
    h.processor = StreamProcessor(FLOWS, decode=SERDE.decode, encode=encode_canonical)
    h.processor.load(h.state)


def snapshot_order_then_edit(h: Harness, between: Any) -> list[Outcome]:
    """A snapshot order with two lines, settled, then a line edited: the order's outcomes.

    ``between(h)`` runs once the order is held and again once it went out.
    """
    with_catalogue(h, (7, "SKU-00007"), (8, "SKU-00008"))
    h.run(h.change(SALE_ORDER, "r", after=ORDER, lsn=500))
    h.run(h.change(SALE_ORDER_LINE, "r", after=order_line(501, 10, 7, "2.5"), lsn=501))
    h.run(h.change(SALE_ORDER_LINE, "r", after=order_line(502, 20, 8, "1"), lsn=502))
    between(h)
    outcomes = [h.run(h.tick(advance)) for advance in (1_000, 1_000, 60_000)]
    between(h)
    tx = (901, 2010)
    h.run(h.change(SALE_ORDER_LINE, "u", after=order_line(501, 10, 7, "3"), lsn=2001, tx=tx))
    outcomes.append(h.run(h.end("erp", tx, {"public.sale_order_line": 1})))
    return outcomes


def test_orders_stored_frozen_before_assemble_as_those_stored_as_bytes() -> None:
    kept = snapshot_order_then_edit(Harness(), lambda h: None)
    fresh = snapshot_order_then_edit(Harness(), restarted)
    rewritten: list[int] = []

    def upgraded(h: Harness) -> None:
        rewritten.append(as_stored_before(h.state))
        restarted(h)

    old = snapshot_order_then_edit(Harness(), upgraded)
    assert rewritten[0] == 3  # the header, the lines and the snapshot order's trigger
    assert rewritten[1] == 0  # the order went out: the same records, not stored again
    events = [decoded(outcome) for outcome in kept]
    assert [len(e) for e in events] == [0, 0, 1, 1]
    assert [decoded(outcome) for outcome in fresh] == events
    assert [decoded(outcome) for outcome in old] == events
    for outcomes in (fresh, old):
        assert [[o.value for o in x.outbound] for x in outcomes] == [
            [o.value for o in x.outbound] for x in kept
        ]


def test_a_held_order_is_stored_once_as_its_bytes() -> None:
    h = Harness()
    snapshot_order_then_edit(h, lambda h: None)
    stored = h.state.values(ASSEMBLY)
    header = stored["h|erp_sale_order__sales_order|51"]
    assert set(header) == {"lsn", "op", "key", "value", "origin"}
    assert SERDE.decode(unb64(header["value"]))["after"]["name"] == ORDER["name"]
    lines = stored["l|erp_sale_order__sales_order|51"]
    assert {line_id: set(line) for line_id, line in lines.items()} == {
        "501": {"lsn", "op", "value"},
        "502": {"lsn", "op", "value"},
    }
