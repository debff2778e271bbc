"""Property: two concurrent histories of one record converge, whatever the delivery order.

A model of one linked pair: an ERP row and a CRM row, each edited locally (by people)
while the two sinks apply each other's changes. The sinks here run the same decisions
as :class:`sinks.postgres.PostgresUpsertSink` does per batch, in its order: the target's
own events first (:meth:`RowClock.seen_locally`), then the other system's events newer
than the applied version, collapsed with each field's own commit time
(:func:`changed_times`), a clock made complete or waited for (:func:`ready_clock`, the
row's ``xmin`` telling the sink's own write from a local one), :func:`merge`, and the
clock after the write (:meth:`RowClock.after_write`); a refused edit of an owned field
re-announces the row. Deliveries are at least once, in per-source order, interleaved
with local edits and sink batches in any way Hypothesis finds.

After everything is delivered and applied, both rows hold, in every field, the value of
the last write made to it on either side (the later commit, an exact tie to the ERP);
an owned field holds its owner's last value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.mapping import Owner
from sinks.state import RowClock, changed_times, merge, ready_clock

SHARED = ("name", "email", "phone")
OWNERS = {"name": Owner.SHARED, "email": Owner.SHARED, "phone": Owner.SHARED}
OWNERS |= {"vat": Owner.ERP, "industry": Owner.CRM}
FIELDS = (*SHARED, "vat", "industry")
VALUES = st.sampled_from([None, "a", "b", "c", "ü", "x" * 40])
NEVER = 10**12  # the model never gives up waiting for an own event
EXAMPLES = int(os.environ.get("ERPCRM_PROPERTY_EXAMPLES", "400"))
"""Hypothesis examples: 400 under ``make test``; more on demand."""


@dataclass
class Side:
    """One system's row, its sink's state and what is on its way to that sink."""

    system: str
    values: dict[str, Any]
    xmin: int = 0
    clock: RowClock | None = None
    applied: int | None = None
    version: int = 0
    inbox: list[dict[str, Any]] = field(default_factory=list)
    in_flight: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def owned(self) -> list[str]:
        return [f for f, o in OWNERS.items() if o.value == self.system]


@dataclass
class Model:
    erp: Side
    crm: Side
    now: int = 1
    xid: int = 1
    commits: dict[int, int] = field(default_factory=lambda: {0: 0})
    writes: dict[str, tuple[int, bool, Any]] = field(default_factory=dict)
    owner_writes: dict[str, tuple[int, Any]] = field(default_factory=dict)

    def side(self, system: str) -> Side:
        return self.erp if system == "erp" else self.crm

    def other(self, system: str) -> Side:
        return self.crm if system == "erp" else self.erp

    def commit(self) -> int:
        self.xid += 1
        self.commits[self.xid] = self.now
        return self.xid

    def local_edit(self, system: str, edits: dict[str, Any]) -> None:
        """A person's update, and the change event its capture publishes."""
        side = self.side(system)
        changed = [f for f in FIELDS if f in edits and edits[f] != side.values[f]]
        side.values.update(edits)
        side.xmin = self.commit()
        for name in changed:
            key = (self.now, system == "erp")
            if OWNERS[name] is Owner.SHARED and key > self.writes[name][:2]:
                self.writes[name] = (*key, edits[name])
            if OWNERS[name].value == system:
                self.owner_writes[name] = (self.now, edits[name])
        self.publish(side, changed or side.owned())

    def publish(self, side: Side, changed: list[str]) -> None:
        side.version += 1
        record = {
            "source_system": side.system,
            "source_ts_ms": self.now,
            "version": side.version,
            "op": "upsert",
            "changed_fields": changed,
            **side.values,
        }
        for dest in (side, self.other(side.system)):
            dest.in_flight.setdefault(side.system, []).append(record)

    def deliver(self, system: str, source: str, replay: int) -> None:
        """Hand the next event from ``source`` to ``system``'s sink, or replay one."""
        side = self.side(system)
        queue = side.in_flight.get(source, [])
        if replay and side.inbox:
            side.inbox.append(side.inbox[-min(replay, len(side.inbox))])
        elif queue:
            side.inbox.append(queue.pop(0))

    def sink_batch(self, system: str, size: int) -> None:
        """One batch of ``system``'s sink, in the order the sink applies it."""
        side = self.side(system)
        batch, side.inbox = side.inbox[:size], side.inbox[size:]
        for record in batch:
            if record["source_system"] == system:
                clock = side.clock or RowClock()
                side.clock = clock.seen_locally(record["changed_fields"], record["source_ts_ms"])
        floor = side.applied if side.applied is not None else 0  # stale: skipped
        history = sorted(
            {r["version"]: r for r in batch if r["source_system"] != system}.values(),
            key=lambda r: r["version"],
        )
        history = [r for r in history if r["version"] > floor]
        if not history:
            return
        latest = history[-1]
        clock, local_ms, _ = ready_clock(
            side.clock,
            xmin=side.xmin,
            commit_ms=self.commits.get(side.xmin),
            now_ms=self.now,
            values={f: side.values[f] for f in FIELDS},
            waited_ms=0,
            wait_ms=NEVER,
        )
        if clock is None:
            side.inbox[:0] = history  # deferred: retried with the next batch
            return
        decided = merge(
            "customer",
            f"{latest['source_system']}:1",
            latest,
            target=system,
            ownership=OWNERS,
            fields=FIELDS,
            changed=changed_times(history, FIELDS),
            current=side.values,
            clock=clock,
        )
        moved = any(side.values[f] != v for f, v in decided.writes.items())
        side.values.update(decided.writes)
        xid = None
        if moved:
            side.xmin = xid = self.commit()
        side.clock = clock.after_write(decided.written_at, xid=xid, last_local_ms=local_ms)
        side.applied = latest["version"]
        if decided.reassert:
            # The announcement: a touch without the origin, published as a change.
            self.now += 1
            side.xmin = self.commit()
            self.publish(side, side.owned())

    def drain(self) -> None:
        for _ in range(1000):
            busy = False
            for side in (self.erp, self.crm):
                for source in ("erp", "crm"):
                    while side.in_flight.get(source):
                        self.deliver(side.system, source, 0)
                        busy = True
                if side.inbox:
                    self.now += 1
                    self.sink_batch(side.system, len(side.inbox))
                    busy = True
            if not busy:
                return
        raise AssertionError("the model did not settle")


edits = st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=1, max_size=3)
action = st.one_of(
    st.tuples(st.just("edit"), st.sampled_from(["erp", "crm"]), edits),
    st.tuples(st.just("edit"), st.just("both"), st.tuples(edits, edits)),
    st.tuples(
        st.just("deliver"),
        st.sampled_from(["erp", "crm"]),
        st.tuples(st.sampled_from(["erp", "crm"]), st.integers(0, 2)),
    ),
    st.tuples(st.just("sink"), st.sampled_from(["erp", "crm"]), st.integers(1, 4)),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(action, max_size=40), st.dictionaries(st.sampled_from(FIELDS), VALUES))
def test_both_sides_converge_on_the_last_write_of_every_field(
    actions: list[tuple[str, str, Any]], initial: dict[str, Any]
) -> None:
    values = {f: initial.get(f) for f in FIELDS}
    model = Model(Side("erp", dict(values)), Side("crm", dict(values)))
    model.writes = {f: (0, True, values[f]) for f in SHARED}
    model.owner_writes = {f: (0, values[f]) for f in ("vat", "industry")}
    for side in (model.erp, model.crm):  # the captures' snapshot reads, committed at 0
        model.now = 0
        model.publish(side, [f for f in FIELDS if values[f] is not None])
    model.now = 1
    for kind, system, arg in actions:
        model.now += 1
        if kind == "edit" and system == "both":
            model.local_edit("erp", arg[0])  # in the same millisecond on each side
            model.local_edit("crm", arg[1])
        elif kind == "edit":
            model.local_edit(system, arg)
        elif kind == "deliver":
            source, replay = arg
            model.deliver(system, source, replay)
        else:
            model.sink_batch(system, arg)
    model.drain()
    expected = {f: model.writes[f][2] for f in SHARED}
    expected |= {f: model.owner_writes[f][1] for f in ("vat", "industry")}
    assert model.erp.values == expected
    assert model.crm.values == expected
