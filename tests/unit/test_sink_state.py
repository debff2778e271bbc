from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas.mapping import Owner
from sinks.batch import SinkBatch, SinkEvent
from sinks.state import (
    Applied,
    Decision,
    TargetView,
    decide,
    next_state,
    payload_hash,
    resolve,
)

OWNERS = {"vat": Owner.ERP, "industry": Owner.CRM, "email": Owner.SHARED}
FIELDS = ("vat", "industry", "email")


def rec(
    version: int, ts: int = 100, source: str = "erp", op: str = "upsert", **fields: Any
) -> dict[str, Any]:
    return {"version": version, "op": op, "source_system": source, "source_ts_ms": ts, **fields}


def test_decide() -> None:
    assert decide(None, 1, "h") is Decision.APPLY
    stored = Applied(5, "h", 0)
    assert decide(stored, 5, "x") is Decision.SKIP_STALE
    assert decide(stored, 4, "x") is Decision.SKIP_STALE
    assert decide(stored, 6, "h") is Decision.SKIP_NOOP
    assert decide(stored, 6, "x") is Decision.APPLY


def test_next_state() -> None:
    stored = Applied(5, "h", 10)
    assert next_state(stored, Decision.SKIP_STALE, 3, "x", 99) is stored
    assert next_state(stored, Decision.SKIP_NOOP, 6, "h", 99) == Applied(6, "h", 10)
    assert next_state(stored, Decision.APPLY, 7, "y", 99) == Applied(7, "y", 99)


def test_payload_hash_ignores_metadata_not_op() -> None:
    a = rec(1, email="a@x")
    assert payload_hash(a) == payload_hash(rec(2, ts=5, email="a@x"))
    assert payload_hash(a) != payload_hash(rec(1, op="delete", email="a@x"))


def test_new_row_gets_every_field() -> None:
    r = resolve(
        "customer",
        "erp:1",
        rec(1, vat="V", industry=None, email="e"),
        target="crm",
        ownership=OWNERS,
        fields=FIELDS,
        current=None,
        stored=None,
    )
    assert r.writes == {"vat": "V", "industry": None, "email": "e"}
    assert r.conflicts == ()


def test_no_local_change_no_conflict_target_fields_kept() -> None:
    current = TargetView({"vat": "OLD", "industry": "Retail", "email": "old"}, modified_ts_ms=50)
    r = resolve(
        "customer",
        "erp:1",
        rec(2, vat="V", industry=None, email="new"),
        target="crm",
        ownership=OWNERS,
        fields=FIELDS,
        current=current,
        stored=Applied(1, "h", 50),
    )
    assert r.writes == {"vat": "V", "email": "new"}
    assert r.kept == ("industry",)
    assert r.conflicts == ()
    assert r.merged(current) == {"vat": "V", "industry": "Retail", "email": "new"}


def test_conflict_owner_and_last_writer() -> None:
    current = TargetView({"vat": "OLD", "industry": "Retail", "email": "local"}, modified_ts_ms=200)
    incoming = rec(2, ts=100, vat="V", industry="Other", email="remote")
    r = resolve(
        "customer",
        "erp:1",
        incoming,
        target="crm",
        ownership=OWNERS,
        fields=FIELDS,
        current=current,
        stored=Applied(1, "h", 150),
    )
    by_field = {c.field: c for c in r.conflicts}
    assert by_field["vat"].winner == "erp"
    assert by_field["vat"].reason == "owner"
    assert by_field["industry"].winner == "crm"
    assert by_field["email"].winner == "crm"
    assert by_field["email"].reason == "last_writer"
    assert r.writes == {"vat": "V"}
    assert by_field["email"].values_by_system() == ("remote", "local")


def test_shared_newer_incoming_wins_and_tie_goes_to_erp() -> None:
    current = TargetView({"email": "local"}, modified_ts_ms=100)
    newer = resolve(
        "customer",
        "crm:1",
        rec(2, ts=101, source="crm", email="remote"),
        target="erp",
        ownership=OWNERS,
        fields=("email",),
        current=current,
        stored=None,
    )
    assert newer.writes == {"email": "remote"}
    tie = resolve(
        "customer",
        "crm:1",
        rec(2, ts=100, source="crm", email="remote"),
        target="erp",
        ownership=OWNERS,
        fields=("email",),
        current=current,
        stored=None,
    )
    assert tie.writes == {}
    assert tie.conflicts[0].reason == "tie"
    assert tie.conflicts[0].winner == "erp"


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
        new = next_state(stored, decision, event.version, digest, 0)
        if new is not None:
            state[event.key] = new


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
