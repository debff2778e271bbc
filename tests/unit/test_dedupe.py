"""Dedupe decisions (streams/dedupe.py): stale versions and no-op payloads."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas.payload import HASH_EXCLUDED, plain
from streams.dedupe import DedupeState, Verdict, decide, observe, payload_hash, remember, seen

RECORD: dict[str, Any] = {
    "event_id": "e1",
    "source_system": "erp",
    "source_lsn": 100,
    "source_tx_id": 7,
    "source_ts_ms": 1_700_000_000_000,
    "op": "upsert",
    "version": 100,
    "erp_id": "42",
    "crm_id": None,
    "name": "Acme",
    "price": Decimal("1.20"),
    "when": datetime(2024, 1, 1, tzinfo=UTC),
    "day": date(2024, 1, 1),
    "lines": [{"sku": "SKU-1", "quantity": Decimal("2.000")}],
}


def test_payload_hash_ignores_the_event_metadata() -> None:
    other = RECORD | {"event_id": "e2", "source_lsn": 200, "version": 200, "source_ts_ms": 5}
    assert payload_hash(other) == payload_hash(RECORD)


def test_payload_hash_sees_business_fields_ids_and_op() -> None:
    base = payload_hash(RECORD)
    assert payload_hash(RECORD | {"name": "Acme GmbH"}) != base
    assert payload_hash(RECORD | {"crm_id": "abc"}) != base
    assert payload_hash(RECORD | {"op": "delete"}) != base
    assert payload_hash(RECORD | {"lines": [{"sku": "SKU-1", "quantity": Decimal(3)}]}) != base


def test_payload_hash_compares_decimals_by_value_and_ignores_key_order() -> None:
    same = dict(reversed(list(RECORD.items()))) | {
        "price": Decimal("1.2"),
        "lines": [{"quantity": Decimal(2), "sku": "SKU-1"}],
    }
    assert payload_hash(same) == payload_hash(RECORD)
    assert payload_hash({"x": Decimal("0.00")}) == payload_hash({"x": Decimal(0)})
    assert payload_hash({"x": Decimal("100")}) == payload_hash({"x": Decimal("1E+2")})


def test_decisions() -> None:
    state: DedupeState = {}
    assert not seen(state, "erp:1", 10)
    assert observe(state, "erp:1", 10, "h1") is Verdict.EMIT
    assert seen(state, "erp:1", 10)
    assert observe(state, "erp:1", 10, "h1") is Verdict.STALE  # redelivered
    assert observe(state, "erp:1", 5, "h0") is Verdict.STALE  # overtaken
    assert observe(state, "erp:1", 11, "h1") is Verdict.NO_OP
    assert state["erp:1"] == (11, "h1")  # the no-op's version is recorded
    assert observe(state, "erp:1", 12, "h2") is Verdict.EMIT
    assert observe(state, "crm:1", 3, "h2") is Verdict.EMIT  # keys are independent


def test_decide_does_not_change_the_state() -> None:
    state: DedupeState = {"k": (5, "h")}
    assert decide(state, "k", 6, "x") is Verdict.EMIT
    assert state == {"k": (5, "h")}
    remember(state, "k", 6, "x")
    assert state == {"k": (6, "x")}


# --------------------------------------------------------------------- properties

Event = tuple[str, int, str]
"""(entity key, version, payload hash)."""


@st.composite
def in_order_streams(draw: st.DrawFn) -> list[Event]:
    """Per key, strictly rising versions; payloads from a small set, so no-ops happen."""
    keys = draw(st.lists(st.sampled_from(["erp:1", "erp:2", "crm:a"]), min_size=1, max_size=30))
    next_version: dict[str, int] = {}
    events = []
    for key in keys:
        version = next_version.get(key, 0) + draw(st.integers(1, 5))
        next_version[key] = version
        events.append((key, version, draw(st.sampled_from(["h1", "h2", "h3"]))))
    return events


def _emitted(events: list[Event]) -> list[Event]:
    state: DedupeState = {}
    return [e for e in events if observe(state, *e) is Verdict.EMIT]


@given(in_order_streams(), st.data())
def test_redeliveries_change_nothing_that_is_emitted(
    events: list[Event], data: st.DataObject
) -> None:
    delivered = list(events)
    # Redeliver some events later (at-least-once delivery, a replay after a restart).
    for _ in range(data.draw(st.integers(0, 10))):
        if not delivered:
            break
        original = data.draw(st.integers(0, len(delivered) - 1))
        position = data.draw(st.integers(original + 1, len(delivered)))
        delivered.insert(position, delivered[original])
    assert _emitted(delivered) == _emitted(events)


@given(in_order_streams(), st.randoms(use_true_random=False))
def test_any_order_ends_with_the_newest_payload_and_never_goes_back(
    events: list[Event], rng: Any
) -> None:
    shuffled = list(events)
    rng.shuffle(shuffled)
    shuffled += rng.sample(shuffled, k=min(3, len(shuffled)))  # and some duplicates
    emitted = _emitted(shuffled)
    for key in {e[0] for e in events}:
        versions = [v for k, v, _ in emitted if k == key]
        assert versions == sorted(set(versions))  # strictly rising per key
        newest = max((e for e in events if e[0] == key), key=lambda e: e[1])
        last_emitted = [e for e in emitted if e[0] == key][-1]
        assert last_emitted[2] == newest[2]  # the final payload is the newest one


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.dates()
    | st.datetimes(timezones=st.just(UTC))
)


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            _LEAVES,
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=12,
        ),
        max_size=6,
    )
)
def test_payload_hash_is_the_sha256_of_the_sorted_json_of_the_plain_payload(
    record: dict[str, Any],
) -> None:
    """The definition both stages rely on, whatever shortcut computes it."""
    payload = {k: plain(v) for k, v in record.items() if k not in HASH_EXCLUDED}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert payload_hash(record) == hashlib.sha256(text.encode("utf-8")).hexdigest()
