"""A unit of work's reads: its own writes over the state, copied or only read."""

from __future__ import annotations

from typing import Any

from streams.state import ASSEMBLY, DictState, Write
from streams.work import UnitOfWork


def _unit() -> tuple[UnitOfWork, list[tuple[str, str, Any]]]:
    state = DictState()
    state.apply([Write(ASSEMBLY, "committed", {"lines": {"1": {"qty": 2}}})])
    mirrored: list[tuple[str, str, Any]] = []
    return UnitOfWork(state, 1_000, lambda *write: mirrored.append(write)), mirrored


def test_get_and_peek_see_the_units_own_write_over_the_state() -> None:
    work, mirrored = _unit()
    assert work.get(ASSEMBLY, "committed") == work.peek(ASSEMBLY, "committed")
    value = {"lines": {"1": {"qty": 3}}}
    work.put(ASSEMBLY, "committed", value)
    assert mirrored == [(ASSEMBLY, "committed", value)]
    assert work.peek(ASSEMBLY, "committed") is value  # only read: not copied
    assert work.get(ASSEMBLY, "committed") == value
    assert work.get(ASSEMBLY, "committed") is not value
    work.put(ASSEMBLY, "committed", None)
    assert work.peek(ASSEMBLY, "committed") is None
    assert work.peek(ASSEMBLY, "absent") is None


def test_a_value_got_may_be_changed_without_changing_the_units_write() -> None:
    work, _ = _unit()
    work.put(ASSEMBLY, "k", {"lines": {"1": {"qty": 3}}})
    got = work.get(ASSEMBLY, "k")
    got["lines"]["1"]["qty"] = 9
    assert work.peek(ASSEMBLY, "k") == {"lines": {"1": {"qty": 3}}}
    assert [w.value for w in work.finish().writes] == [{"lines": {"1": {"qty": 3}}}]
