"""Stored payload hashes stay what they were: the hash of known records, fixed.

Targets compare new events' hashes with hashes stored long ago (``applied.payload_hash``,
the streams' dedupe state), written by the standard library's encoder alone; however the
text is written today, these records must hash as they did.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from schemas.payload import payload_hash


def test_known_records_keep_their_hashes() -> None:
    record: dict[str, Any] = {
        "event_id": "e",
        "source_ts_ms": 1,
        "version": 3,
        "op": "upsert",
        "name": 'M\u00fcller "GmbH"\n\x01',
        "changed_fields": ["name"],
        "active": True,
        "vat": None,
        "price": Decimal("12.50"),
        "day": date(2026, 1, 2),
        "at": datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        "big": 2**64,
    }
    assert payload_hash(record) == (
        "8a0e086733624254796685bb557e57843423ba734f6c530f175b212b03faf2f0"
    )
    del record["big"]
    assert payload_hash(record) == (
        "982db806d15c3d96dd5fcae7d31deecfcf05e6d1880227b8591555fb0bc82933"
    )
