from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas.mapping import Owner
from schemas.payload import value_digest
from sinks.batch import SinkBatch, SinkEvent
from sinks.state import (
    LETTERED,
    Applied,
    Decision,
    Merge,
    RowClock,
    changed_by,
    changed_times,
    clock_wait_since,
    decide,
    merge,
    payload_hash,
    prior_digests,
    ready_clock,
)

OWNERS = {"vat": Owner.ERP, "industry": Owner.CRM, "email": Owner.SHARED}
FIELDS = ("vat", "industry", "email")


def rec(
    version: int, ts: int = 100, source: str = "erp", op: str = "upsert", **fields: Any
) -> dict[str, Any]:
    return {"version": version, "op": op, "source_system": source, "source_ts_ms": ts, **fields}


def test_decide() -> None:
    assert decide(None, 1, "h") is Decision.APPLY
    stored = Applied(5, "h")
    assert decide(stored, 5, "x") is Decision.SKIP_STALE
    assert decide(stored, 4, "x") is Decision.SKIP_STALE
    assert decide(stored, 6, "h") is Decision.SKIP_NOOP
    assert decide(stored, 6, "x") is Decision.APPLY
    # Merged records are never no-ops: the same values at a later commit still compete.
    assert decide(stored, 6, "h", merged=True) is Decision.APPLY
    assert decide(stored, 5, "h", merged=True) is Decision.SKIP_STALE


def test_a_lettered_version_read_again_is_stale_and_only_its_replay_applies() -> None:
    """A version that lost its target row was recorded as LETTERED: the topics read again
    skip it like an applied one; an operator's replay of its letter applies it, and is
    stale once applied (stored with its own hash)."""
    lettered = Applied(5, LETTERED)
    assert decide(lettered, 5, "x") is Decision.SKIP_STALE
    assert decide(lettered, 5, "x", merged=True) is Decision.SKIP_STALE
    assert decide(lettered, 5, "x", replays=1) is Decision.APPLY
    assert decide(lettered, 5, "x", merged=True, replays=2) is Decision.APPLY
    assert decide(lettered, 4, "x", replays=1) is Decision.SKIP_STALE
    assert decide(lettered, 6, "x") is Decision.APPLY
    # Applied by its replay: a second replay of the same letter is stale.
    assert decide(Applied(5, "x"), 5, "x", replays=2) is Decision.SKIP_STALE


def test_decide_hashes_only_when_the_version_does_not_settle_it() -> None:
    calls: list[int] = []

    def digest() -> str:
        calls.append(1)
        return "h"

    stored = Applied(5, "h")
    assert decide(stored, 5, digest) is Decision.SKIP_STALE
    assert decide(None, 1, digest) is Decision.APPLY
    assert decide(stored, 6, digest, merged=True) is Decision.APPLY
    assert not calls
    assert decide(stored, 6, digest) is Decision.SKIP_NOOP
    assert calls == [1]


def test_payload_hash_ignores_metadata_not_op() -> None:
    a = rec(1, email="a@x")
    assert payload_hash(a) == payload_hash(rec(2, ts=5, email="a@x"))
    assert payload_hash(a) != payload_hash(rec(1, op="delete", email="a@x"))


def clock(**kwargs: Any) -> RowClock:
    return RowClock(**kwargs)


def crm_merge(
    record: dict[str, Any],
    current: dict[str, Any],
    row: RowClock,
    changed: dict[str, int],
    prior: dict[str, str] | None = None,
) -> Merge:
    """An ERP event merged into an existing CRM row (``prior``: its prior digests)."""
    return merge(
        "customer",
        "erp:1",
        record,
        target="crm",
        ownership=OWNERS,
        fields=FIELDS,
        changed=changed,
        current=current,
        clock=row,
        prior=None if prior is None else lambda: prior,
    )


def test_only_changed_fields_compete() -> None:
    current = {"vat": "V", "industry": "Tech", "email": "local@x"}
    m = crm_merge(rec(2, ts=100, vat="V2", email="remote@x"), current, clock(), {"vat": 100})
    assert m.writes == {"vat": "V2"}
    assert m.written_at == {"vat": 100}
    assert m.conflicts == ()


def test_owner_fields_go_to_the_owner_and_a_refusal_reasserts() -> None:
    current = {"vat": "V", "industry": "Tech", "email": None}
    changed = {"vat": 100, "industry": 100}
    m = crm_merge(rec(2, vat="V2", industry="Retail"), current, clock(), changed)
    assert m.writes == {"vat": "V2"}
    assert m.reassert
    [refused] = m.conflicts
    assert (refused.field, refused.winner, refused.reason) == ("industry", "crm", "owner")
    # An owned field sent with the value the target already has is no conflict.
    same = crm_merge(rec(2, industry="Tech"), current, clock(), {"industry": 100})
    assert (same.writes, same.conflicts, same.reassert) == ({}, (), False)


def test_shared_field_goes_to_the_later_commit_of_either_side() -> None:
    current = {"email": "local@x"}
    local_newer = clock(local={"email": 150}, horizon_ms=150)
    kept = crm_merge(rec(2, ts=100, email="remote@x"), current, local_newer, {"email": 100})
    assert kept.writes == {}
    assert [(c.winner, c.reason) for c in kept.conflicts] == [("crm", "last_writer")]
    won = crm_merge(rec(2, ts=200, email="remote@x"), current, local_newer, {"email": 200})
    assert won.writes == {"email": "remote@x"}
    assert [(c.winner, c.reason) for c in won.conflicts] == [("erp", "last_writer")]


def test_a_change_made_over_the_local_value_is_no_conflict_and_wins_by_time_alone() -> None:
    # The CRM typed local@x at 150, the ERP saw it and changed it at 200: an ordinary
    # edit after a sync, no conflict.
    current = {"email": "local@x"}
    local_newer = clock(local={"email": 150}, horizon_ms=150)
    seen = {"email": value_digest("local@x")}
    m = crm_merge(rec(2, ts=200, email="remote@x"), current, local_newer, {"email": 200}, seen)
    assert (m.writes, m.conflicts) == ({"email": "remote@x"}, ())
    # Made over it at an older commit (the ERP's clock behind, or local@x typed again
    # after the one the ERP saw): commit times still decide, and the audit says so.
    late = crm_merge(rec(2, ts=100, email="remote@x"), current, local_newer, {"email": 100}, seen)
    assert late.writes == {}
    assert [(c.winner, c.reason) for c in late.conflicts] == [("crm", "last_writer")]
    # Made over another value (the CRM's edit came after the one the ERP saw): a conflict.
    older = {"email": value_digest("older@x")}
    remote = rec(2, ts=200, email="remote@x")
    beside = crm_merge(remote, current, local_newer, {"email": 200}, older)
    assert [(c.winner, c.reason, c.ours) for c in beside.conflicts] == [
        ("erp", "last_writer", "local@x")
    ]


def test_the_prior_digest_of_a_field_is_its_first_change_in_the_batch() -> None:
    history = [
        rec(1, changed_fields=["email"], prior_digests={"email": "a"}),
        rec(2, changed_fields=["email", "vat"], prior_digests={"email": "b", "vat": "c"}),
        rec(3, changed_fields=["industry"], prior_digests=None),
    ]
    assert prior_digests(history, FIELDS) == {"email": "a", "vat": "c"}
    # A field whose first change carries no digest has none, whatever comes after it.
    assert prior_digests([*history[2:], rec(4, prior_digests={"industry": "d"})], FIELDS) == {}


def test_a_value_digest_is_equal_for_equal_values_only() -> None:
    assert value_digest(Decimal("1.20")) == value_digest(Decimal("1.2"))
    assert value_digest("1.2") != value_digest(Decimal("1.2"))
    assert value_digest(None) != value_digest("")
    assert len(value_digest("x")) == 16


def test_a_tie_goes_to_the_erp() -> None:
    row = clock(local={"email": 100}, horizon_ms=100)
    tie = crm_merge(rec(2, ts=100, email="remote@x"), {"email": "l@x"}, row, {"email": 100})
    assert tie.writes == {"email": "remote@x"}
    assert [(c.winner, c.reason) for c in tie.conflicts] == [("erp", "tie")]
    # The same tie seen from the ERP side: the ERP keeps its value.
    erp_side = merge(
        "customer",
        "crm:a",
        rec(2, ts=100, source="crm", email="l@x"),
        target="erp",
        ownership=OWNERS,
        fields=FIELDS,
        changed={"email": 100},
        current={"email": "remote@x"},
        clock=row,
    )
    assert erp_side.writes == {}


def test_a_field_last_written_by_the_sink_is_an_update_not_a_conflict() -> None:
    row = clock(written={"email": 100}, local={"email": 50}, horizon_ms=50)
    m = crm_merge(rec(3, ts=120, email="new@x"), {"email": "old@x"}, row, {"email": 120})
    assert m.writes == {"email": "new@x"}
    assert m.conflicts == ()
    # An older write than the one the sink applied last loses, quietly.
    older = crm_merge(rec(3, ts=90, email="new@x"), {"email": "old@x"}, row, {"email": 90})
    assert (older.writes, older.conflicts) == ({}, ())


def test_a_row_first_seen_counts_its_values_from_its_last_commit() -> None:
    values = {"vat": "V", "industry": None, "email": "local@x"}
    ready, local_ms, changed = ready_clock(
        None, xmin=7, commit_ms=150, now_ms=10_000, values=values, waited_ms=0, wait_ms=1000
    )
    assert ready is not None
    assert changed
    assert local_ms == 150
    assert ready.local == {"vat": 150, "email": 150}
    # An empty target field was written by nobody: any incoming value fills it.
    m = crm_merge(
        rec(2, ts=100, industry="Retail", email="remote@x"),
        values,
        ready,
        {"industry": 100, "email": 100},
    )
    assert m.writes == {}  # industry is the CRM's own; the e-mail is newer here
    # A later change from the other side is an update of where the sync started from,
    # not a conflict with a local edit.
    later = crm_merge(rec(3, ts=200, email="remote@x"), values, ready, {"email": 200})
    assert (later.writes, later.conflicts) == ({"email": "remote@x"}, ())
    shared = {**OWNERS, "industry": Owner.SHARED}
    filled = merge(
        "customer",
        "erp:1",
        rec(2, ts=100, industry="Retail"),
        target="crm",
        ownership=shared,
        fields=FIELDS,
        changed={"industry": 100},
        current=values,
        clock=ready,
    )
    assert filled.writes == {"industry": "Retail"}


def test_a_local_change_the_clock_has_not_seen_waits_for_its_own_event() -> None:
    stored = clock(written={"email": 100}, horizon_ms=90, sink_xid=5, local_at_write_ms=90)
    values = {"email": "x", "phone": None}

    def ready(row: RowClock, xmin: int, waited: int) -> tuple[RowClock | None, int, bool]:
        return ready_clock(
            row,
            xmin=xmin,
            commit_ms=150,
            now_ms=100_000,
            values=values,
            waited_ms=waited,
            wait_ms=1000,
        )

    # xmin is the sink's own write: the last local change is the one seen then.
    assert ready(stored, 5, 0) == (stored, 90, False)
    # A local write since (xmin 6, committed at 150) the clock has not seen: wait, however
    # long ago it committed (a sink catching up finds its own event in the backlog) ...
    assert ready(stored, 6, 999) == (None, 150, False)
    # ... until its own event arrives,
    seen = stored.seen_locally(["email"], 150)
    assert ready(seen, 6, 0) == (seen, 150, False)
    # ... or the wait is over: the change then counts for every field, the empty too.
    late, _, assumed = ready(stored, 6, 1000)
    assert late is not None
    assert assumed
    assert late.local == {"email": 150, "phone": 150}


def test_the_wait_for_an_own_event_counts_once_own_events_are_past_the_change() -> None:
    def since(prior: int | None, now: int, own_seen: int) -> int | None:
        return clock_wait_since(
            1_000, prior, now_ms=now, local_ms=5_000, own_seen_ms=own_seen, behind_max_ms=60_000
        )

    # Own events read so far are older than the local change (committed at 5,000): the
    # capture or the streams worker is behind, so the wait does not count yet ...
    assert since(None, 30_000, 4_999) is None
    # ... and when it was counting, a new change the stream has not reached stops it.
    assert since(20_000, 30_000, 4_999) is None
    # Once an own event at or after the change was read, it counts from then on.
    assert since(None, 30_000, 5_000) == 30_000
    assert since(30_000, 45_000, 9_000) == 30_000
    # Own events that stay behind hold it back at most behind_max_ms after the first wait.
    assert since(None, 61_000, -1) == 61_000


def test_a_row_first_seen_waits_only_for_a_recent_change() -> None:
    values = {"email": "x", "phone": None}
    old = ready_clock(
        None, xmin=6, commit_ms=150, now_ms=5000, values=values, waited_ms=0, wait_ms=1000
    )
    assert old[0] is not None
    assert old[0].local == {"email": 150}
    recent = ready_clock(
        None, xmin=6, commit_ms=4500, now_ms=5000, values=values, waited_ms=0, wait_ms=1000
    )
    assert recent == (None, 4500, False)


def test_changed_times_keep_each_fields_own_commit_time() -> None:
    history = [
        rec(1, ts=100, changed_fields=["email"]),
        rec(2, ts=200, changed_fields=["vat"]),
        rec(3, ts=300, changed_fields=None),
    ]
    assert changed_times(history[:2], FIELDS) == {"email": 100, "vat": 200}
    assert changed_times(history, FIELDS) == {"email": 300, "vat": 300, "industry": 300}


def test_a_quarantined_field_is_no_change_and_keeps_the_target_value() -> None:
    # A record without changed_fields (a product) changed every field but the ones it
    # left out as invalid; one with changed_fields never names them anyway.
    assert changed_by(rec(1, quarantined_fields=["vat"]), FIELDS) == ["industry", "email"]
    assert changed_by(rec(1, changed_fields=["email"], quarantined_fields=[]), FIELDS) == ["email"]
    history = [rec(1, ts=100, vat=None, quarantined_fields=["vat"])]
    changed = changed_times(history, FIELDS)
    assert "vat" not in changed
    current = {"vat": "DE136695976", "industry": "Retail", "email": "old@x"}
    m = crm_merge(
        rec(1, vat=None, email="new@x", quarantined_fields=["vat"]), current, clock(), changed
    )
    assert "vat" not in m.writes
    assert m.writes["email"] == "new@x"


def test_after_write_moves_the_sink_xid_only_when_the_row_changed() -> None:
    row = clock(sink_xid=5, local_at_write_ms=40)
    assert row.after_write({"email": 100}, xid=None, last_local_ms=60).sink_xid == 5
    moved = row.after_write({"email": 100}, xid=9, last_local_ms=60)
    assert (moved.sink_xid, moved.local_at_write_ms, moved.written) == (9, 60, {"email": 100})


# --------------------------------------------------------------- idempotency property


def apply_batch(events: list[SinkEvent], table: dict[str, Any], state: dict[str, Applied]) -> None:
    """The sink's decision path over a dict target: collapse, decide, write, record."""
    for event in SinkBatch(events).collapse().latest:
        digest = payload_hash(event.record)
        stored = state.get(event.key)
        decision = decide(stored, event.version, digest)
        if decision is Decision.APPLY:
            if event.op == "delete":
                table.pop(event.key, None)
            else:
                table[event.key] = event.record["value"]
        if decision is not Decision.SKIP_STALE:
            state[event.key] = Applied(event.version, digest)


histories = st.dictionaries(
    st.sampled_from(["erp:1", "erp:2", "erp:3", "crm:a"]),
    st.lists(
        st.tuples(st.sampled_from(["upsert", "delete"]), st.integers(0, 3)), min_size=1, max_size=6
    ),
    min_size=1,
)


def to_events(history: dict[str, list[tuple[str, int]]]) -> dict[str, list[SinkEvent]]:
    out = {}
    for p, (key, changes) in enumerate(sorted(history.items())):
        out[key] = [
            SinkEvent(
                "canonical.customer",
                p,
                i,
                "customer",
                key,
                {**rec(i + 1, op=op), "value": value if op == "upsert" else None},
            )
            for i, (op, value) in enumerate(changes)
        ]
    return out


@given(histories, st.data())
def test_duplicates_and_interleavings_give_the_same_table(
    history: Any, data: st.DataObject
) -> None:
    per_key = to_events(history)
    expected: dict[str, Any] = {}
    expected_state: dict[str, Applied] = {}
    for events in per_key.values():
        for event in events:  # once, in order, one at a time
            apply_batch([event], expected, expected_state)
    # Deliveries: each key's events in order, each possibly redelivered from an
    # earlier position (at-least-once replay); keys interleaved arbitrarily.
    streams = {}
    for key, events in per_key.items():
        delivered: list[SinkEvent] = []
        for i, event in enumerate(events):
            delivered.append(event)
            if data.draw(st.booleans()):
                delivered.extend(events[data.draw(st.integers(0, i)) : i + 1])
        streams[key] = delivered
    merged: list[SinkEvent] = []
    while any(streams.values()):
        key = data.draw(st.sampled_from(sorted(k for k, v in streams.items() if v)))
        merged.append(streams[key].pop(0))
    table: dict[str, Any] = {}
    state: dict[str, Applied] = {}
    cuts = sorted(data.draw(st.lists(st.integers(0, len(merged)), max_size=4)))
    for start, end in zip([0, *cuts], [*cuts, len(merged)], strict=True):
        apply_batch(merged[start:end], table, state)
    assert table == expected
    # Applying everything again changes nothing.
    apply_batch(merged, table, state)
    assert table == expected


def test_a_snapshot_read_is_where_the_sync_starts_not_a_competing_edit() -> None:
    snapshot = RowClock().seen_locally(["email"], 100).synced(["email"], 100)
    m = crm_merge(rec(2, ts=150, email="remote@x"), {"email": "seed@x"}, snapshot, {"email": 150})
    assert (m.writes, m.conflicts) == ({"email": "remote@x"}, ())
    # An edit made after the snapshot still competes, and a newer one wins.
    edited = snapshot.seen_locally(["email"], 200)
    kept = crm_merge(rec(2, ts=150, email="remote@x"), {"email": "local@x"}, edited, {"email": 150})
    assert kept.writes == {}
    assert [(c.winner, c.reason) for c in kept.conflicts] == [("crm", "last_writer")]
