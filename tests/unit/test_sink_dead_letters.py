"""Headers of the dead letters the Postgres sink queues."""

from __future__ import annotations

from schemas.errors import PermanentError, ValidationError
from sinks.batch import SinkEvent
from sinks.postgres import dead_letter_headers
from sinks.replays import Replayed, replayed


def event() -> SinkEvent:
    record = {"version": 3, "op": "upsert", "source_system": "erp", "source_ts_ms": 1}
    return SinkEvent("canonical.customer", 2, 1234, "customer", "erp:17", record)


def test_headers() -> None:
    headers = dead_letter_headers(event(), ValidationError("name: value is required"), "crm")
    assert headers == {
        "erpcrm.error.class": "ValidationError",
        "erpcrm.error.message": "name: value is required",
        "erpcrm.error.reason": "ValidationError",
        "erpcrm.stage": "sinks.crm",
        "erpcrm.origin.topic": "canonical.customer",
        "erpcrm.origin.partition": "2",
        "erpcrm.origin.offset": "1234",
        "erpcrm.entity": "customer",
        "erpcrm.entity_key": "erp:17",
    }
    assert all(isinstance(v, str) for v in headers.values())


def test_stage_names_the_target() -> None:
    headers = dead_letter_headers(event(), PermanentError("check violated"), "erp")
    assert headers["erpcrm.stage"] == "sinks.erp"
    assert headers["erpcrm.error.class"] == "PermanentError"


def test_reason_attribute_is_used() -> None:
    class RefusedError(ValidationError):
        reason = "missing_reference"

    headers = dead_letter_headers(event(), RefusedError("no customer"), "crm")
    assert headers["erpcrm.error.class"] == "RefusedError"
    assert headers["erpcrm.error.reason"] == "missing_reference"


def test_message_is_truncated() -> None:
    headers = dead_letter_headers(event(), ValidationError("x" * 5000), "crm")
    assert headers["erpcrm.error.message"] == "x" * 1000


def test_a_replayed_event_names_its_first_position_and_its_replay_count() -> None:
    record = {"version": 3, "op": "upsert", "source_system": "erp", "source_ts_ms": 1}
    replayed = SinkEvent(
        "replay.sinks.crm",
        0,
        8,
        "customer",
        "erp:17",
        record,
        replays=2,
        replayed_from=("canonical.customer", 2, 1234),
    )
    headers = dead_letter_headers(replayed, ValidationError("still bad"), "crm")
    assert (
        headers["erpcrm.origin.topic"],
        headers["erpcrm.origin.partition"],
        headers["erpcrm.origin.offset"],
        headers["erpcrm.replay.count"],
    ) == ("canonical.customer", "2", "1234", "2")


def test_a_replayed_events_headers_give_its_entity_origin_and_count() -> None:
    context = replayed(
        {
            "erpcrm.entity": "sales_order",
            "erpcrm.origin.topic": "canonical.sales_order",
            "erpcrm.origin.partition": "1",
            "erpcrm.origin.offset": "77",
            "erpcrm.replay.count": "3",
        }
    )
    assert context == Replayed("sales_order", 3, ("canonical.sales_order", 1, 77))
    assert replayed({"erpcrm.replay.count": "x"}) == Replayed("", 0, None)
