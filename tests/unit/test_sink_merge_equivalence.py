"""sinks.state.merge decides as the straightforward per-field version it replaced.

The reference below is that version, kept as the specification: per changed field, the
owner's value or the later of the two clocks (``RowClock.times``), conflicts against
local edits. ``merge`` does the same with one owner lookup per event and the clocks read
per changed field only; both must agree on any input.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.mapping import Owner
from sinks.state import TIE_WINNER, Conflict, Merge, Reason, RowClock, _same, merge


def _reference_merge(
    entity: str,
    entity_key: str,
    incoming: Mapping[str, Any],
    *,
    target: str,
    ownership: Mapping[str, Owner],
    fields: Collection[str],
    changed: Mapping[str, int],
    current: Mapping[str, Any],
    clock: RowClock,
) -> Merge:
    source = str(incoming["source_system"])
    times = clock.times(fields)
    writes: dict[str, Any] = {}
    written_at: dict[str, int] = {}
    conflicts: list[Conflict] = []
    reassert = False
    for name in fields:
        if name not in changed:
            continue
        theirs, ours, ts = incoming.get(name), current.get(name), changed[name]
        owner = ownership.get(name, Owner(source))
        if owner is not Owner.SHARED:
            if owner.value == source:
                writes[name], written_at[name] = theirs, ts
            elif not _same(ours, theirs):
                reassert = True
                conflicts.append(
                    Conflict(
                        entity, entity_key, name, ours, theirs, target, Reason.OWNER.value, target
                    )
                )
            continue
        mine = times[name]
        if ts != mine:
            winner, reason = (source if ts > mine else target), Reason.LAST_WRITER
        else:
            winner, reason = TIE_WINNER, Reason.TIE
        if winner == source:
            writes[name], written_at[name] = theirs, ts
        contested = clock.local.get(name, -1) > clock.written.get(name, -1)
        if contested and not _same(ours, theirs):
            conflicts.append(
                Conflict(entity, entity_key, name, ours, theirs, winner, reason.value, target)
            )
    return Merge(writes, written_at, tuple(conflicts), reassert)


NAMES = ["a", "b", "c", "d", "e", "f"]
TIMES = st.integers(-2, 6)
VALUES = st.none() | st.sampled_from(["x", "y", " x"]) | st.decimals("0", "2", places=1)
CLOCKS = st.dictionaries(st.sampled_from(NAMES), TIMES, max_size=6)


@settings(max_examples=500)
@given(
    source=st.sampled_from(["erp", "crm"]),
    ownership=st.dictionaries(st.sampled_from(NAMES), st.sampled_from(list(Owner))),
    fields=st.lists(st.sampled_from(NAMES), unique=True),
    changed=st.dictionaries(st.sampled_from([*NAMES, "z"]), TIMES),
    incoming=st.dictionaries(st.sampled_from(NAMES), VALUES),
    current=st.dictionaries(st.sampled_from(NAMES), VALUES),
    written=CLOCKS,
    local=CLOCKS,
)
def test_merge_decides_as_the_per_field_reference(
    source: str,
    ownership: dict[str, Owner],
    fields: list[str],
    changed: dict[str, int],
    incoming: dict[str, Any],
    current: dict[str, Any],
    written: dict[str, int],
    local: dict[str, int],
) -> None:
    target = "crm" if source == "erp" else "erp"
    record = {**incoming, "source_system": source}
    clock = RowClock(written=written, local=local)
    args: dict[str, Any] = {
        "target": target,
        "ownership": ownership,
        "fields": fields,
        "changed": changed,
        "current": current,
        "clock": clock,
    }
    assert merge("customer", "erp:1", record, **args) == _reference_merge(
        "customer", "erp:1", record, **args
    )


def test_decimals_equal_by_value_are_no_conflict() -> None:
    clock = RowClock(written={"a": 1}, local={"a": 5})
    decided = merge(
        "product",
        "erp:1",
        {"source_system": "erp", "a": Decimal("1.50")},
        target="crm",
        ownership={"a": Owner.SHARED},
        fields=["a"],
        changed={"a": 3},
        current={"a": Decimal("1.5")},
        clock=clock,
    )
    assert decided.writes == {}
    assert decided.conflicts == ()
