"""Signals to the capture: the data a re-snapshot request writes, and its parsing."""

from __future__ import annotations

import json
import uuid
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.signals import (
    EXECUTE_SNAPSHOT,
    ResnapshotRequest,
    SignalError,
    parse_key_option,
    parse_signal,
    snapshot_signal_data,
    split_table,
)


def _parse(data: dict[str, object]) -> list[ResnapshotRequest]:
    return parse_signal("s1", EXECUTE_SNAPSHOT, json.dumps(data))


def test_whole_table_request_is_debeziums_execute_snapshot() -> None:
    data = snapshot_signal_data("public", "stock_quant")
    assert data == {"data-collections": ["public.stock_quant"], "type": "incremental"}
    assert _parse(data) == [ResnapshotRequest("s1", "public", "stock_quant")]


def test_filter_and_keys_travel_as_an_additional_condition() -> None:
    token = uuid.UUID(int=5)
    data = snapshot_signal_data(
        "public",
        "accounts",
        where="deleted = false",
        keys=[{"id": token}, {"id": "x"}],
    )
    assert data["additional-conditions"] == [
        {
            "data-collection": "public.accounts",
            "filter": "deleted = false",
            "keys": [{"id": str(token)}, {"id": "x"}],
        }
    ]
    (request,) = _parse(data)
    assert request.where == "deleted = false"
    assert request.keys == ({"id": str(token)}, {"id": "x"})
    assert ResnapshotRequest.from_json(request.as_json()) == request


def test_key_values_are_written_as_postgres_reads_them() -> None:
    data = snapshot_signal_data(
        "public",
        "t",
        keys=[{"a": 1, "b": Decimal("2.50"), "c": date(2024, 1, 2), "d": True}],
    )
    assert data["additional-conditions"][0]["keys"] == [
        {"a": "1", "b": "2.50", "c": "2024-01-02", "d": "true"}
    ]


@pytest.mark.parametrize(
    ("keys", "where"),
    [
        ([], None),
        ([{"id": None}], None),
        ([{"id": 1}, {"other": 2}], None),
        ([{"id": b"raw"}], None),
        (None, "  "),
    ],
)
def test_unusable_requests_are_refused(
    keys: list[dict[str, object]] | None, where: str | None
) -> None:
    with pytest.raises(SignalError):
        snapshot_signal_data("public", "t", keys=keys, where=where)


@pytest.mark.parametrize(
    ("signal_type", "data"),
    [
        ("log", '{"data-collections": ["public.t"]}'),
        (EXECUTE_SNAPSHOT, "not json"),
        (EXECUTE_SNAPSHOT, "[1]"),
        (EXECUTE_SNAPSHOT, '{"data-collections": []}'),
        (EXECUTE_SNAPSHOT, '{"data-collections": ["public.t"], "type": "blocking"}'),
        (EXECUTE_SNAPSHOT, '{"data-collections": ["a.b.c"]}'),
        (
            EXECUTE_SNAPSHOT,
            '{"data-collections": ["t"], "additional-conditions": [{"filter": "x"}]}',
        ),
        (
            EXECUTE_SNAPSHOT,
            '{"data-collections": ["t"], "additional-conditions": '
            '[{"data-collection": "t", "keys": [{"id": [1]}]}]}',
        ),
        (EXECUTE_SNAPSHOT, None),
    ],
)
def test_malformed_signals_say_what_is_wrong(signal_type: str, data: str | None) -> None:
    with pytest.raises(SignalError, match=r"signal s1|is not"):
        parse_signal("s1", signal_type, data)


def test_one_request_per_collection_each_with_its_own_condition() -> None:
    requests = _parse(
        {
            "data-collections": ["a", "public.b"],
            "additional-conditions": [{"data-collection": "public.b", "filter": "x > 1"}],
        }
    )
    assert [(r.table, r.where) for r in requests] == [("a", None), ("b", "x > 1")]


def test_table_names_and_key_options() -> None:
    assert split_table("stock_quant") == ("public", "stock_quant")
    assert split_table("erp.t") == ("erp", "t")
    assert parse_key_option("id=12") == {"id": "12"}
    assert parse_key_option("order_id=3, line=2") == {"order_id": "3", "line": "2"}
    for bad in ("12", "=3", "a=1,2"):
        with pytest.raises(SignalError):
            parse_key_option(bad)


@given(
    st.lists(st.dictionaries(st.just("id"), st.integers() | st.uuids(), min_size=1), min_size=1),
    st.none() | st.text(min_size=1).filter(str.strip),
)
def test_request_data_round_trips(keys: list[dict[str, object]], where: str | None) -> None:
    (request,) = _parse(snapshot_signal_data("public", "t", keys=keys, where=where))
    assert request.keys == tuple({"id": str(k["id"])} for k in keys)
    assert request.where == where
