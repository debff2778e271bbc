"""The data-quality log: entries of events and dead letters, their JSON, the figures."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erpcrm.quality import parse_since
from schemas.errors import ConfigError
from streams.dlq import DeadLetter, Origin
from streams.quality import (
    Defect,
    DefectOutcome,
    QualityEntry,
    field_label,
    of_dead_letter,
    of_event,
    summarise,
)
from streams.transform import CanonicalEvent
from streams.validation import Fix, Quarantine, Reason


def event(key: str = "erp:17", **fields: object) -> CanonicalEvent:
    record = {"event_id": f"id-{key}", "source_ts_ms": 1_700_000_000_000, **fields}
    return CanonicalEvent("customer", key, record)


def test_an_event_without_defects_logs_nothing() -> None:
    assert of_event(event(), "erp_res_partner__customer", ()) is None


def test_an_event_logs_its_fixes_and_quarantined_fields() -> None:
    fix = Fix("trim", " Acme ", "Acme", "name", "trimmed whitespace")
    bad = Quarantine(Reason.INVALID_PHONE, "phone", "12", "'12': implausible length")
    kept = Quarantine(Reason.INVALID_EMAIL, "email", " x@ ", "no domain", kept=True)
    entry = of_event(event(email="x@"), "erp_res_partner__customer", [fix], [bad, kept])
    assert entry is not None
    assert (entry.key, entry.output_id, entry.event_id) == (
        "erp:17",
        "quality:id-erp:17",
        "id-erp:17",
    )
    assert [(d.field, d.rule, d.outcome, d.value, d.after) for d in entry.defects] == [
        ("name", "trim", DefectOutcome.FIXED, " Acme ", "Acme"),
        ("phone", "invalid_phone", DefectOutcome.QUARANTINED, "12", None),
        ("email", "invalid_email", DefectOutcome.KEPT, " x@ ", "x@"),
    ]


def test_a_dead_letter_is_logged_with_its_reason_and_origin() -> None:
    letter = DeadLetter(
        b"k",
        b"v",
        "ValidationError",
        "missing_required [name]: a value is required",
        "missing_required",
        Origin("erp.public.res_partner", 1, 5),
        "name",
        "erp_res_partner__customer",
    )
    entry = of_dead_letter(letter, "customer")
    assert (entry.entity, entry.key, entry.origin) == (
        "customer",
        None,
        "erp.public.res_partner[1] offset=5",
    )
    assert entry.output_id == f"quality:{letter.output_id}"
    (defect,) = entry.defects
    assert (defect.field, defect.rule, defect.outcome) == (
        "name",
        "missing_required",
        DefectOutcome.DEAD_LETTERED,
    )


values = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.integers(-(10**9), 10**9),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.dates(),
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["phone", "lines[3].sku", ""]),
            st.sampled_from(["trim", "invalid_phone"]),
            st.sampled_from(DefectOutcome),
            values,
            values,
        ),
        min_size=1,
        max_size=4,
    ),
    st.one_of(st.none(), st.text(min_size=1, max_size=10)),
)
def test_entries_round_trip_through_json(
    defects: list[tuple[str, str, DefectOutcome, object, object]], key: str | None
) -> None:
    entry = QualityEntry(
        "customer",
        key,
        "flow",
        "quality:x",
        tuple(Defect(f, r, o, _plain(v), _plain(a), "detail") for f, r, o, v, a in defects),
        "x",
        1,
        None if key else "t[0] offset=1",
    )
    assert QualityEntry.from_json(entry.to_json(), "quality:x") == entry


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    return value


def test_unreadable_entries_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not a data-quality entry"):
        QualityEntry.from_json(b'{"entity": "customer"}')
    with pytest.raises(ValueError):
        QualityEntry.from_json(b"not json")


def test_field_labels_drop_list_indices() -> None:
    assert field_label("lines[12].sku") == "lines.sku"
    assert field_label("phone") == "phone"
    assert field_label("") == "-"


def entry(key: str, *defects: tuple[str, str, DefectOutcome], output_id: str = "") -> QualityEntry:
    return QualityEntry(
        "customer",
        key,
        "flow",
        output_id or f"quality:{key}:{len(defects)}",
        tuple(Defect(f, r, o) for f, r, o in defects),
    )


FIXED, QUARANTINED, DEAD = (
    DefectOutcome.FIXED,
    DefectOutcome.QUARANTINED,
    DefectOutcome.DEAD_LETTERED,
)


def test_the_report_counts_defects_and_records_and_ranks_the_worst() -> None:
    entries = [
        entry("erp:1", ("phone", "invalid_phone", QUARANTINED), ("name", "trim", FIXED)),
        entry("erp:1", ("phone", "invalid_phone", QUARANTINED), output_id="quality:again"),
        entry(
            "erp:2", ("phone", "invalid_phone", QUARANTINED), ("vat", "invalid_vat", QUARANTINED)
        ),
        entry("erp:3", ("name", "trim", FIXED), ("email", "email", FIXED)),
        entry(
            "erp:2",
            ("vat", "invalid_vat", QUARANTINED),
            ("vat", "invalid_vat", QUARANTINED),
            output_id="quality:later",
        ),
    ]
    # The same entry read twice counts once.
    report = summarise([*entries, entries[0]], worst=2)
    assert report.entries == 5
    assert report.outcomes == {"fixed": 3, "quarantined": 6, "kept": 0, "dead_lettered": 0}
    figures = {(f.field, f.rule, f.outcome): (f.defects, f.records) for f in report.figures}
    assert figures == {
        ("phone", "invalid_phone", "quarantined"): (3, 2),
        ("vat", "invalid_vat", "quarantined"): (3, 1),
        ("name", "trim", "fixed"): (2, 2),
        ("email", "email", "fixed"): (1, 1),
    }
    assert [f.defects for f in report.figures] == sorted(
        (f.defects for f in report.figures), reverse=True
    )
    # Records with only fixes are not among the worst.
    assert [(w.record, w.open, w.fixed, w.fields) for w in report.worst] == [
        ("erp:2", 4, 0, ("phone", "vat")),
        ("erp:1", 2, 1, ("phone",)),
    ]
    assert report.as_dict()["worst"][0]["fields"] == ["phone", "vat"]


def test_dead_letters_are_ranked_by_their_raw_position() -> None:
    letter = QualityEntry(
        "customer",
        None,
        "flow",
        "quality:dl",
        (Defect("name", "missing_required", DEAD),),
        origin="erp.public.res_partner[0] offset=3",
    )
    report = summarise([letter])
    assert report.worst[0].record == "erp.public.res_partner[0] offset=3"
    assert report.outcomes["dead_lettered"] == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", 1_000_000_000_000 - 90 * 60_000),
        ("24h", 1_000_000_000_000 - 86_400_000),
        ("1.5d", 1_000_000_000_000 - 129_600_000),
        ("2026-12-01", 1_796_083_200_000),
        ("2026-12-01T01:00:00+01:00", 1_796_083_200_000),
    ],
)
def test_since_is_a_duration_or_a_time(text: str, expected: int) -> None:
    assert parse_since(text, 1_000_000_000_000) == expected


def test_since_rejects_anything_else() -> None:
    with pytest.raises(ConfigError, match="neither a duration"):
        parse_since("yesterday", 0)
