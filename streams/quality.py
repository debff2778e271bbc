"""The data-quality log: what was wrong with the data, field by field, and what became of it.

Every record the streams stage handles that had a defect leaves one entry on the topic
``quality.defects`` (:data:`~schemas.topics.QUALITY_TOPIC`), published with the record's
canonical event or dead letter. A defect has one of four outcomes:

=================  ====================================================================
``fixed``          cleansing repaired the value (rule: the cleansing rule, ``trim``,
                   ``phone``, ``vat``, ...); the fixed value was synced
``quarantined``    an optional field's value was invalid (rule: the
                   :class:`~streams.validation.Reason`, ``invalid_phone``, ...); the
                   field was left out, the rest of the record synced, and the target
                   kept what it had in that field
``kept``           invalid, but the mapping says ``on_invalid: keep``: synced as typed
``dead_lettered``  the record as a whole went to ``dlq.streams`` (rule: the reason)
=================  ====================================================================

An entry is JSON (UTF-8), keyed by the entity key (``erp:17``; none for a dead letter,
whose entity key is not known), with header ``erpcrm.output_id`` = ``quality:<event id
or dead letter id>``, so a restarted worker never logs a record twice::

    {"entity": "customer", "key": "erp:17", "flow": "erp_res_partner__customer",
     "event_id": "…", "source_ts_ms": 1764950400000, "origin": null,
     "defects": [{"field": "phone", "rule": "invalid_phone", "outcome": "quarantined",
                  "value": "12", "after": null, "detail": "'12': implausible length"}]}

An event dropped as stale or as a no-op (its payload equals the last one) logs nothing:
its defects were logged with the event that first carried them. :func:`summarise` turns
entries into the figures ``erpcrm quality`` shows; the metric
``erpcrm_streams_quality_defects_total{entity,field,rule,outcome}`` counts the same
defects (nested fields without their index: ``lines.sku``).

Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from schemas.json_text import StdlibText
from schemas.topics import QUALITY_TOPIC
from streams.dlq import DeadLetter
from streams.transform import CanonicalEvent
from streams.validation import Fix, Quarantine

__all__ = [
    "OUTPUT_PREFIX",
    "QUALITY_TOPIC",
    "Defect",
    "DefectOutcome",
    "Figure",
    "QualityEntry",
    "QualityReport",
    "WorstRecord",
    "field_label",
    "of_dead_letter",
    "of_event",
    "summarise",
]

OUTPUT_PREFIX: Final = "quality:"
"""Prefix of an entry's output id, before the id of the event or dead letter it is about."""

_INDEX: Final = re.compile(r"\[\d+\]")


class DefectOutcome(StrEnum):
    """What became of a defect (module docstring)."""

    FIXED = "fixed"
    QUARANTINED = "quarantined"
    KEPT = "kept"
    DEAD_LETTERED = "dead_lettered"


def _plain(value: Any) -> Any:
    """A value as JSON holds it: text for decimals, dates and anything else unusual."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


@dataclass(frozen=True, slots=True)
class Defect:
    """One defect of one field.

    Attributes:
        field: the field (``phone``, ``lines[2].sku``); empty when the record as a whole
            was unusable (a malformed event).
        rule: the cleansing rule that fixed it, or the reason it failed.
        outcome: what became of it.
        value: the value as it came (JSON-able).
        after: the value as it was synced (fixed or kept; None otherwise).
        detail: what was wrong or done, for people.
    """

    field: str
    rule: str
    outcome: DefectOutcome
    value: Any = None
    after: Any = None
    detail: str = ""

    @classmethod
    def of_fix(cls, fix: Fix) -> Defect:
        """A value cleansing repaired."""
        return cls(
            fix.field,
            fix.rule,
            DefectOutcome.FIXED,
            _plain(fix.before),
            _plain(fix.after),
            fix.note,
        )

    @classmethod
    def of_quarantine(cls, quarantine: Quarantine, after: Any = None) -> Defect:
        """An invalid optional field, left out (or kept as typed: ``after``)."""
        outcome = DefectOutcome.KEPT if quarantine.kept else DefectOutcome.QUARANTINED
        return cls(
            quarantine.field,
            quarantine.reason.value,
            outcome,
            _plain(quarantine.value),
            _plain(after) if quarantine.kept else None,
            quarantine.detail,
        )


@dataclass(frozen=True, slots=True)
class QualityEntry:
    """One record's defects, as logged (module docstring).

    ``entity`` is ``-`` for a dead letter of no known flow; ``key`` None for a dead
    letter (``origin`` then says which raw message it was).
    """

    entity: str
    key: str | None
    flow: str | None
    output_id: str
    defects: tuple[Defect, ...]
    event_id: str | None = None
    source_ts_ms: int | None = None
    origin: str | None = None

    def metric_labels(self) -> list[tuple[str, str, str, str]]:
        """Per defect: its ``(entity, field, rule, outcome)`` labels (:func:`field_label`)."""
        return [(self.entity, field_label(d.field), d.rule, d.outcome.value) for d in self.defects]

    @property
    def record(self) -> str:
        """Who the entry is about: the entity key, else the raw message's position."""
        return self.key or self.origin or self.output_id

    def to_json(self) -> bytes:
        """The entry's Kafka value."""
        # What ``asdict`` gives, less the id, without its deep copy: only read here.
        data = {name: getattr(self, name) for name in _ENTRY_FIELDS}
        data["defects"] = [_defect_data(d) for d in self.defects]
        return _ENTRY_JSON(data)

    @classmethod
    def from_json(cls, value: bytes, output_id: str = "") -> QualityEntry:
        """Read an entry back from its Kafka value.

        Raises:
            ValueError: the value is not an entry (not JSON, or fields missing).
        """
        try:
            data = json.loads(value)
            defects = tuple(
                Defect(
                    str(d["field"]),
                    str(d["rule"]),
                    DefectOutcome(d["outcome"]),
                    d.get("value"),
                    d.get("after"),
                    str(d.get("detail") or ""),
                )
                for d in data["defects"]
            )
            return cls(
                entity=str(data["entity"]),
                key=data.get("key"),
                flow=data.get("flow"),
                output_id=output_id,
                defects=defects,
                event_id=data.get("event_id"),
                source_ts_ms=data.get("source_ts_ms"),
                origin=data.get("origin"),
            )
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a data-quality entry: {exc}") from exc


_ENTRY_FIELDS: Final = tuple(f.name for f in fields(QualityEntry) if f.name != "output_id")
_DEFECT_FIELDS: Final = tuple(f.name for f in fields(Defect))
_ENTRY_JSON: Final = StdlibText()
"""The entries' text: the standard library encoder's (compact, unescaped)."""


def _defect_data(defect: Defect) -> dict[str, Any]:
    """A defect as its entry's JSON holds it."""
    data = {name: getattr(defect, name) for name in _DEFECT_FIELDS}
    data["outcome"] = defect.outcome.value  # plain text, the enum's value
    return data


def field_label(field: str) -> str:
    """A field as a metric label: without list indices (``lines[2].sku`` -> ``lines.sku``)."""
    return _INDEX.sub("", field) or "-"


def of_event(
    event: CanonicalEvent,
    flow: str,
    fixes: Sequence[Fix],
    quarantined: Sequence[Quarantine] = (),
) -> QualityEntry | None:
    """The entry of a published event: its fixes and quarantined fields; None if it had none."""
    record = event.record
    defects = [Defect.of_fix(f) for f in fixes]
    for q in quarantined:
        defects.append(Defect.of_quarantine(q, _value_at(record, q.field) if q.kept else None))
    if not defects:
        return None
    event_id = str(record["event_id"])
    return QualityEntry(
        entity=event.entity,
        key=event.key,
        flow=flow,
        output_id=f"{OUTPUT_PREFIX}{event_id}",
        defects=tuple(defects),
        event_id=event_id,
        source_ts_ms=int(record["source_ts_ms"]),
    )


def _value_at(record: Mapping[str, Any], field: str) -> Any:
    """The value of a (possibly nested: ``lines[1].sku``) field of a canonical record."""
    value: Any = record
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        if part.startswith("["):
            index = int(part[1:-1])
            value = value[index] if isinstance(value, list) and index < len(value) else None
        else:
            value = value.get(part) if isinstance(value, Mapping) else None
    return value


def of_dead_letter(letter: DeadLetter, entity: str | None) -> QualityEntry:
    """The entry of a dead-lettered record (``entity``: its flow's, if known)."""
    defect = Defect(
        letter.field or "",
        letter.reason,
        DefectOutcome.DEAD_LETTERED,
        None,
        None,
        letter.message,
    )
    return QualityEntry(
        entity=entity or "-",
        key=None,
        flow=letter.flow,
        output_id=f"{OUTPUT_PREFIX}{letter.output_id}",
        defects=(defect,),
        origin=str(letter.origin),
    )


# ------------------------------------------------------------------------ figures


@dataclass(frozen=True, slots=True)
class Figure:
    """Defects of one kind: how many, in how many distinct records."""

    entity: str
    field: str
    rule: str
    outcome: str
    defects: int
    records: int


@dataclass(frozen=True, slots=True)
class WorstRecord:
    """A record with many defects: its open ones (not fixed) first."""

    entity: str
    record: str
    open: int
    fixed: int
    fields: tuple[str, ...]
    """The fields with open defects (dead-lettered: the failing field)."""


@dataclass(frozen=True, slots=True)
class QualityReport:
    """The figures of a set of entries (what ``erpcrm quality`` shows)."""

    entries: int
    outcomes: Mapping[str, int]
    """Defects per outcome (every outcome listed, zero included)."""
    figures: tuple[Figure, ...]
    """Per entity, field, rule and outcome; most defects first."""
    worst: tuple[WorstRecord, ...]

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return {
            "entries": self.entries,
            "outcomes": dict(self.outcomes),
            "figures": [asdict(f) for f in self.figures],
            "worst": [{**asdict(w), "fields": list(w.fields)} for w in self.worst],
        }


def summarise(entries: Iterable[QualityEntry], worst: int = 10) -> QualityReport:
    """Aggregate entries: defects by entity, field, rule and outcome, and the worst records.

    An entry whose output id was seen already (read twice) counts once. The worst records
    are those with the most open (quarantined, kept or dead-lettered) defects over all
    their entries, then the most fixed ones; records with only fixes are not among them.
    """
    seen: set[str] = set()
    count = 0
    defects: Counter[tuple[str, str, str, str]] = Counter()
    records: dict[tuple[str, str, str, str], set[str]] = {}
    outcomes: Counter[str] = Counter({o.value: 0 for o in DefectOutcome})
    open_count: Counter[tuple[str, str]] = Counter()
    fixed_count: Counter[tuple[str, str]] = Counter()
    open_fields: dict[tuple[str, str], dict[str, None]] = {}
    for entry in entries:
        if entry.output_id and entry.output_id in seen:
            continue
        seen.add(entry.output_id)
        count += 1
        who = (entry.entity, entry.record)
        for defect, kind in zip(entry.defects, entry.metric_labels(), strict=True):
            defects[kind] += 1
            records.setdefault(kind, set()).add(entry.record)
            outcomes[defect.outcome.value] += 1
            if defect.outcome is DefectOutcome.FIXED:
                fixed_count[who] += 1
            else:
                open_count[who] += 1
                open_fields.setdefault(who, {})[defect.field or "-"] = None
    figures = tuple(
        Figure(*kind, n, len(records[kind]))
        for kind, n in sorted(defects.items(), key=lambda item: (-item[1], item[0]))
    )
    ranked = sorted(open_count, key=lambda who: (-open_count[who], -fixed_count[who], who))
    worst_records = tuple(
        WorstRecord(
            who[0], who[1], open_count[who], fixed_count[who], tuple(open_fields.get(who, ()))
        )
        for who in ranked[:worst]
    )
    return QualityReport(count, dict(outcomes), figures, worst_records)
