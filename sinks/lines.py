"""Order lines the source changed after the target created the order (pure).

The sink writes an order's lines once, with the order it creates; from then on the
target owns them (deliveries and invoices refer to its lines), and a later event of the
order updates the order's own fields only. A later event whose lines differ from what
the source said before is therefore a change the target will never see through the
sink. It must not be dropped unseen: the sink dead-letters it (``order_lines_locked``)
while the order's other fields apply.

**What the lines are compared with.** Not with the target's rows: the target may have
changed its own lines (a quantity delivered short, a line added there), which is its
right, and comparing with them would dead-letter every later change of such an order.
Not in the streams stage either: it knows the lines it published before, but not
whether the target created the order from them (a creation dead-lettered, held or still
waiting for its customer is made later, from the lines current then, and needs no
letter). The sink knows both: it keeps, per order it wrote, the lines as the source last
stated them (:func:`snapshot`, in ``erpcrm_sync.source_lines``, written in the batch's
transaction), and compares each applied update's lines with that (:func:`compare`).
Only a real edit in the source makes a letter, once: the snapshot then moves to the new
lines, and a later header change with the same lines makes none.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from sinks.targets import is_id_field

__all__ = ["POSITION", "LinesChange", "LinesSnapshot", "compare", "snapshot"]

LinesSnapshot = dict[str, dict[str, Any]]
"""Per line id: its business fields as text (None: no value) and its position."""

POSITION: Final = "#"
"""The key of a line's position (1-based) in a snapshot."""

_LISTED: Final = 10
"""How many line ids a letter's context names per kind (the message says how many)."""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if type(value) is Decimal:
        normal = value.normalize()
        return format(normal, "f") if normal else "0"  # -0 is 0
    return str(value)


_COMPARED: dict[str, bool] = {}
"""Per line field name: whether it is compared (not an id, see :func:`snapshot`)."""


def _compared(name: str) -> bool:
    found = _COMPARED.get(name)
    if found is None:
        found = _COMPARED[name] = not is_id_field(name) and name != "_index"
    return found


def snapshot(lines: Iterable[Mapping[str, Any]], id_field: str) -> LinesSnapshot:
    """The lines of an event as compared: per line id, business fields and position.

    ``id_field``: the field holding a line's id in the source (``crm_id`` for the
    CRM's lines). Ids and links (:func:`is_id_field`) are left out: a product's id in
    the target is filled in by the sink or the crosswalk as it becomes known, which is
    no change of the line. A line without an id is named by its position (``#3``).
    Decimals compare by value (``1.5`` = ``1.50``).
    """
    result: LinesSnapshot = {}
    for position, line in enumerate(lines, start=1):
        line_id = line.get(id_field)
        name = str(line_id) if line_id is not None else f"#{position}"
        fields: dict[str, Any] = {k: _text(v) for k, v in line.items() if _compared(k)}
        fields[POSITION] = position
        result[name] = fields
    return result


@dataclass(frozen=True, slots=True)
class LinesChange:
    """How an order's lines in the source differ from its snapshot.

    Attributes:
        added: ids of lines that are new, in the new order.
        removed: ids of lines that are gone, in the old order.
        changed: per line whose fields differ, ``(field, before, after)`` of each.
        reordered: the lines both have are in another order.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[tuple[str, tuple[tuple[str, str | None, str | None], ...]], ...] = ()
    reordered: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.reordered)

    def describe(self) -> str:
        """The difference for people: ``added 1 line (…); line X: quantity 10 -> 12``."""
        parts: list[str] = []
        if self.added:
            parts.append(f"added {_count(self.added)} ({', '.join(self.added)})")
        if self.removed:
            parts.append(f"removed {_count(self.removed)} ({', '.join(self.removed)})")
        for line, fields in self.changed:
            changes = ", ".join(
                f"{name} {_shown(old)} -> {_shown(new)}" for name, old, new in fields
            )
            parts.append(f"line {line}: {changes}")
        if self.reordered:
            parts.append("lines reordered")
        return "; ".join(parts)

    def context(self) -> tuple[tuple[str, str], ...]:
        """``erpcrm.context.*`` header pairs naming the lines that differ (the non-empty ones)."""
        pairs = [
            ("lines_added", _listed(self.added)),
            ("lines_removed", _listed(self.removed)),
            ("lines_changed", _listed([line for line, _ in self.changed])),
        ]
        if self.reordered:
            pairs.append(("lines_reordered", "true"))
        return tuple((name, value) for name, value in pairs if value)


def compare(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
) -> LinesChange:
    """What differs between two snapshots (:func:`snapshot`) of one order's lines.

    A line's position counts only as the order of the lines both snapshots have: a
    line removed or added moves the ones after it, which is no change of theirs.
    """
    added = tuple(line for line in after if line not in before)
    removed = tuple(line for line in before if line not in after)
    changed: list[tuple[str, tuple[tuple[str, str | None, str | None], ...]]] = []
    for line, fields in after.items():
        old = before.get(line)
        if old is None:
            continue
        names = sorted((set(old) | set(fields)) - {POSITION})
        diffs = tuple(
            (name, old.get(name), fields.get(name))
            for name in names
            if old.get(name) != fields.get(name)
        )
        if diffs:
            changed.append((line, diffs))
    both_before = [line for line in _by_position(before) if line in after]
    both_after = [line for line in _by_position(after) if line in before]
    return LinesChange(added, removed, tuple(changed), both_before != both_after)


def _by_position(lines: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(lines, key=lambda line: int(lines[line].get(POSITION) or 0))


def _count(lines: Sequence[str]) -> str:
    return f"{len(lines)} line" + ("" if len(lines) == 1 else "s")


def _shown(value: str | None) -> str:
    return "(none)" if value is None else repr(value)


def _listed(lines: Sequence[str]) -> str:
    shown = ",".join(lines[:_LISTED])
    return shown + (f",... ({len(lines)} in all)" if len(lines) > _LISTED else "")
