from sinks.batch import SinkBatch, SinkEvent


def ev(key: str, version: int, offset: int, partition: int = 0, op: str = "upsert") -> SinkEvent:
    record = {"version": version, "op": op, "source_system": "erp", "source_ts_ms": version}
    return SinkEvent("canonical.customer", partition, offset, "customer", key, record)


def test_groups_per_key_keeping_order() -> None:
    batch = SinkBatch([ev("erp:1", 1, 0), ev("erp:2", 5, 1), ev("erp:1", 2, 2)])
    assert batch.keys() == (("customer", "erp:1"), ("customer", "erp:2"))
    assert [e.version for e in batch.events(("customer", "erp:1"))] == [1, 2]
    assert len(batch) == 3
    assert batch.entities() == ("customer",)


def test_collapse_keeps_latest_and_remembers_superseded() -> None:
    batch = SinkBatch([ev("erp:1", 1, 0), ev("erp:1", 3, 1), ev("erp:1", 2, 2), ev("erp:2", 1, 3)])
    collapsed = batch.collapse()
    assert [(e.key, e.version) for e in collapsed.latest] == [("erp:1", 3), ("erp:2", 1)]
    assert [e.offset for e in collapsed.superseded] == [0, 2]


def test_tie_prefers_later_arrival() -> None:
    first, again = ev("erp:1", 4, 0), ev("erp:1", 4, 7)
    assert SinkBatch([first, again]).collapse().latest == (again,)


def test_next_offsets_never_go_back() -> None:
    batch = SinkBatch([ev("erp:1", 1, 10), ev("erp:1", 1, 4), ev("erp:2", 1, 3, partition=1)])
    assert batch.next_offsets() == {("canonical.customer", 0): 11, ("canonical.customer", 1): 4}


def test_empty_batch() -> None:
    batch = SinkBatch()
    assert not batch
    assert batch.collapse().latest == ()
