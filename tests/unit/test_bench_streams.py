"""How the streams benchmark attributes its dead letters (erpcrm.bench_streams)."""

from __future__ import annotations

from erpcrm.bench_streams import dead_letters_by_source
from erpcrm.deadletters import DeadLetterRecord


def letter(
    offset: int, origin: tuple[str, int, int], reason: str, output_id: str, app: str
) -> DeadLetterRecord:
    topic, partition, at = origin
    return DeadLetterRecord(
        topic="dlq.streams",
        partition=0,
        offset=offset,
        timestamp_ms=0,
        key=None,
        value=b"",
        headers={
            "erpcrm.error.reason": reason,
            "erpcrm.origin.topic": topic,
            "erpcrm.origin.partition": str(partition),
            "erpcrm.origin.offset": str(at),
            "erpcrm.output_id": output_id,
            "erpcrm.app_id": app,
        },
    )


def test_dead_letters_are_told_apart_by_snapshot_and_workload_and_repeats_counted() -> None:
    quotes = "bs1crm.public.aos_quotes"
    letters = [
        letter(0, (quotes, 0, 10), "unknown_sku", "a", "bench-1"),  # snapshot row
        letter(1, (quotes, 0, 99), "negative_value", "b", "bench-1"),  # workload change
        letter(2, (quotes, 0, 99), "negative_value", "b", "bench-1"),  # the same again
        letter(3, (quotes, 1, 5), "unknown_sku", "c", "bench-1"),  # partition empty before
        letter(4, (quotes, 0, 1), "unknown_sku", "d", "other-app"),
    ]
    found = dead_letters_by_source(letters, "bench-1", {(quotes, 0): 50})
    assert found == {
        "snapshot": {"unknown_sku": 1},
        "workload": {"negative_value": 1, "unknown_sku": 1},
        "repeated": 1,
    }
