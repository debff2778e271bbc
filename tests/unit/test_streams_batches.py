"""The state a batch is decided against (streams.processor.StagedState)."""

from __future__ import annotations

from streams.processor import DictState, StagedState, Write

# ------------------------------------------------------------------- staged state


def test_staged_reads_see_staged_writes_and_leave_the_base_alone() -> None:
    base = DictState()
    base.apply([Write("dedupe", "a", [1, "h1"]), Write("dedupe", "b", [2, "h2"])])
    staged = StagedState(base)
    staged.stage([Write("dedupe", "a", [3, "h3"]), Write("dedupe", "b", None)])
    staged.stage([Write("dedupe", "c", {"x": [1]}), Write("reference", "a", "other table")])
    assert (staged.get("dedupe", "a"), staged.get("dedupe", "b")) == ([3, "h3"], None)
    assert list(staged.scan("dedupe", "")) == [("a", [3, "h3"]), ("c", {"x": [1]})]
    assert list(staged.scan("reference", "a")) == [("a", "other table")]
    assert base.values("dedupe") == {"a": [1, "h1"], "b": [2, "h2"]}
    assert base.values("reference") == {}


def test_staged_values_are_fresh_copies_shaped_as_stored() -> None:
    staged = StagedState(DictState())
    value = {"lines": [("tuple", 1)]}
    staged.stage([Write("assembly", "l|x", value)])
    read = staged.get("assembly", "l|x")
    assert read == {"lines": [["tuple", 1]]}  # as JSON keeps it, like DictState and RocksDB
    read["lines"].clear()
    value["lines"].clear()
    assert staged.get("assembly", "l|x") == {"lines": [["tuple", 1]]}
