"""Dead letters as the operator sees them: names, filters, where a replay goes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from erpcrm.deadletters import (
    H_REPLAY_OF,
    DeadLetterRecord,
    LetterFilter,
    ReplayMark,
    entity_of,
    parse_letter_id,
    parse_since,
    plan_replay,
)
from schemas.errors import SyncError

NOW_MS = int(datetime(2026, 12, 6, 10, 0, tzinfo=UTC).timestamp() * 1000)


def streams_letter(**headers: str) -> DeadLetterRecord:
    base = {
        "erpcrm.error.class": "ValidationError",
        "erpcrm.error.message": "unknown_sku [lines[1].sku]: SKU 'X-1' is not in the ERP catalogue",
        "erpcrm.error.reason": "unknown_sku",
        "erpcrm.stage": "streams",
        "erpcrm.origin.topic": "crm.public.aos_quotes",
        "erpcrm.origin.partition": "1",
        "erpcrm.origin.offset": "77",
        "erpcrm.flow": "crm_aos_quotes__sales_order",
        "erpcrm.app_id": "erpcrm-streams",
    }
    merged = {**base, **headers}
    return DeadLetterRecord(
        "dlq.streams",
        0,
        42,
        NOW_MS - 90_000,
        b"k",
        b"v",
        merged,
        entity_of(merged, {"crm_aos_quotes__sales_order": "sales_order"}),
    )


def sink_letter(**headers: str) -> DeadLetterRecord:
    base = {
        "erpcrm.error.class": "ValidationError",
        "erpcrm.error.reason": "ValidationError",
        "erpcrm.stage": "sinks.erp",
        "erpcrm.origin.topic": "canonical.sales_order",
        "erpcrm.origin.partition": "2",
        "erpcrm.origin.offset": "5",
        "erpcrm.entity": "sales_order",
        "erpcrm.entity_key": "crm:abc",
    }
    merged = {**base, **headers}
    return DeadLetterRecord(
        "dlq.sinks.erp", 0, 3, NOW_MS, b"crm:abc", b"v", merged, entity_of(merged, {})
    )


def test_a_letter_is_named_by_its_position_and_the_name_parses_back() -> None:
    letter = streams_letter()
    assert letter.id == "dlq.streams:0:42"
    assert parse_letter_id(letter.id) == ("dlq.streams", 0, 42)
    assert parse_letter_id("dlq.sinks.crm:0:7") == ("dlq.sinks.crm", 0, 7)
    for bad in ("dlq.streams", "dlq.streams:0", "dlq.streams:a:1", ":0:1"):
        with pytest.raises(SyncError):
            parse_letter_id(bad)


def test_what_a_list_line_says() -> None:
    line = streams_letter().summary(NOW_MS, None)
    assert (line["reason"], line["entity"], line["origin"], line["age_seconds"]) == (
        "unknown_sku",
        "sales_order",
        "crm.public.aos_quotes[1]@77",
        90.0,
    )
    assert (line["replay_count"], line["replayed"]) == (0, None)
    assert sink_letter().summary(NOW_MS, None)["entity_key"] == "crm:abc"


def test_since_takes_durations_and_times() -> None:
    assert parse_since("15m", NOW_MS) == NOW_MS - 15 * 60_000
    assert parse_since("1h30m", NOW_MS) == NOW_MS - 90 * 60_000
    assert parse_since("2d", NOW_MS) == NOW_MS - 2 * 86_400_000
    assert parse_since("2026-12-06T09:00", NOW_MS) == NOW_MS - 3_600_000
    assert parse_since("2026-12-06T10:00+01:00", NOW_MS) == NOW_MS - 3_600_000
    for bad in ("yesterday", "15x", "m15"):
        with pytest.raises(SyncError):
            parse_since(bad, NOW_MS)


def test_filters_take_every_criterion_that_is_set() -> None:
    letter = streams_letter()
    assert LetterFilter().is_empty
    assert LetterFilter().matches(letter)
    assert LetterFilter(reason="unknown_sku", entity="sales_order", stage="streams").matches(letter)
    assert not LetterFilter(reason="invalid_email").matches(letter)
    assert not LetterFilter(entity="customer").matches(letter)
    assert not LetterFilter(stage="sinks.erp").matches(letter)
    assert LetterFilter(since_ms=NOW_MS - 90_000).matches(letter)
    assert not LetterFilter(since_ms=NOW_MS - 89_999).matches(letter)


def test_a_streams_letter_goes_back_into_its_apps_control_topic_with_its_origin() -> None:
    replay = plan_replay(streams_letter(), default_app_id="other")
    headers = dict(replay.headers)
    assert (replay.topic, replay.key, replay.value) == ("erpcrm-streams-control", b"k", b"v")
    assert (
        headers["erpcrm.origin.topic"],
        headers["erpcrm.origin.partition"],
        headers["erpcrm.origin.offset"],
    ) == ("crm.public.aos_quotes", "1", "77")
    assert (headers["erpcrm.replay.count"], headers[H_REPLAY_OF]) == ("1", "dlq.streams:0:42")
    # a letter that already came back twice goes again as the third replay
    third = plan_replay(streams_letter(**{"erpcrm.replay.count": "2"}), default_app_id="x")
    assert dict(third.headers)["erpcrm.replay.count"] == "3"
    # a letter naming no app goes to the configured one
    unnamed = streams_letter(**{"erpcrm.app_id": ""})
    assert plan_replay(unnamed, default_app_id="mine").topic == "mine-control"


def test_a_sink_letter_goes_to_its_sinks_replay_topic_with_entity_and_key() -> None:
    replay = plan_replay(sink_letter(), default_app_id="erpcrm-streams")
    headers = dict(replay.headers)
    assert replay.topic == "replay.sinks.erp"
    assert (headers["erpcrm.entity"], headers["erpcrm.entity_key"]) == ("sales_order", "crm:abc")
    assert headers["erpcrm.origin.topic"] == "canonical.sales_order"
    assert replay.mark(NOW_MS) == ReplayMark("dlq.sinks.erp:0:3", NOW_MS, "replay.sinks.erp", 1)


def test_letters_that_cannot_be_replayed_say_why() -> None:
    no_origin = streams_letter(**{"erpcrm.origin.topic": ""})
    with pytest.raises(SyncError, match="origin"):
        plan_replay(no_origin, default_app_id="a")
    no_entity = sink_letter(**{"erpcrm.entity": ""})
    with pytest.raises(SyncError, match="entity"):
        plan_replay(no_entity, default_app_id="a")
    unknown_stage = streams_letter(**{"erpcrm.stage": "elsewhere"})
    with pytest.raises(SyncError, match="stage"):
        plan_replay(unknown_stage, default_app_id="a")


def test_replay_marks_round_trip_and_foreign_values_are_ignored() -> None:
    mark = ReplayMark("dlq.streams:0:42", NOW_MS, "erpcrm-streams-control", 1)
    assert ReplayMark.decode(mark.encode()) == mark
    for foreign in (b"", b"not json", b"{}", b'{"letter": 1}'):
        assert ReplayMark.decode(foreign) is None
