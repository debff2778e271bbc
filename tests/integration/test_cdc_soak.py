"""The capture, SIGKILLed again and again under multi-table load, loses nothing and keeps
every transaction whole.

Three writers commit random transactions on probe tables of the ERP database, a header
and its lines (an order with its lines, header and line edits, deleted lines, deleted
orders, single-row changes, a few larger orders, some rolled back) and a few "hot" rows
every writer edits (so transactions wait for each other's locks and commit in another
order than they began), while a chaos thread SIGKILLs the real ``erpcrm cdc`` process at
random moments and restarts it after a random pause: at once, after a moment, or after
some seconds so that WAL piles up; each start draws how long the producer lingers before
sending (up to 1 s), so kills often land while Kafka has not yet acknowledged what the
capture handed over. Once the writers stopped and the slot is confirmed up to the end of
their WAL, the topics are read from the beginning and checked against what the writers
committed:

1. per row, the last record of its key is the database's final row (a deleted row ends
   with its delete and a tombstone); the database holds what the writers committed (the
   hot rows: as many version bumps as edits committed);
2. every committed transaction is on Kafka exactly as committed: its distinct events
   (by ``transaction.total_order``) are the writer's changes in statement order, with the
   after-images written; nothing of a rolled-back transaction appears; a replayed
   duplicate repeats the first copy of the event exactly;
3. every transaction seen in the table topics has a BEGIN and an END in the transaction
   topic whose event counts (in all and per table) equal its distinct events there, and
   its ``total_order`` and per-table ``data_collection_order`` values are exactly
   ``1..count``;
4. the transaction topic has one partition's worth of records, all in partition 0, and
   the first END of each transaction comes in commit (LSN) order, after its BEGIN.

Budget: ``ERPCRM_CDC_SOAK_SECONDS`` (else ``ERPCRM_SOAK_SECONDS``, else 60) seconds of
writing; ``ERPCRM_CDC_SOAK_SEED=<int>`` replays the writers' and the chaos' choices (not
their timing). A failure prints the seed and the kills.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

from tests.integration.cdc_fixtures import (
    Capture,
    Event,
    TopicReader,
    capture_factory,  # noqa: F401 - fixture
    create_probe_table,
    drop_probe_table,
    execute,
    lsn_int,
    slot_row,
    unique_name,
    wait_for,
)
from tests.integration.sink_fixtures import watermarks

WRITERS: Final = 3
ID_BLOCK: Final = 10_000_000
"""Writer ``n`` makes ids ``n * ID_BLOCK + 1 …``: the writers never touch each other's rows."""
CATCH_UP_SECONDS: Final = 300.0
LINGER_MS: Final = ("5", "200", "1000")
"""The capture's producer ``linger.ms`` for each (re)start (5: the default)."""
STATUS_INTERVAL: Final = "0.2"
"""Seconds between the capture's reports to PostgreSQL (default 1): confirm often."""


def _budget_seconds() -> float:
    raw = os.environ.get("ERPCRM_CDC_SOAK_SECONDS") or os.environ.get("ERPCRM_SOAK_SECONDS")
    return float(raw) if raw and raw.strip() else 60.0


SECONDS: Final = _budget_seconds()

pytestmark = [pytest.mark.integration, pytest.mark.timeout(int(SECONDS) + 900)]


# ------------------------------------------------------------------------ the writers


@dataclass(frozen=True, slots=True)
class Change:
    """One row change a writer made: which table, which key, and the row after it."""

    table: str
    key: int
    op: str
    after: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Committed:
    """A transaction the database committed (``xid`` modulo 2**32, as pgoutput sends it)."""

    xid: int
    kind: str
    changes: tuple[Change, ...]


@dataclass(slots=True)
class Order:
    """A writer's committed view of one order: its header row and its line rows by id."""

    header: dict[str, Any]
    lines: dict[int, dict[str, Any]] = field(default_factory=dict)


KINDS: Final = {
    "order": 28,  # a header with 1-5 lines
    "big order": 3,  # a header with 20-60 lines
    "header": 14,  # one header edited, alone
    "line": 10,  # one line edited, alone
    "add line": 8,  # one line added, alone
    "edit lines": 14,  # 1-3 lines and their header edited
    "drop lines": 10,  # 1-2 lines deleted, the header's line count updated
    "drop order": 6,  # every line and the header deleted
    "rollback": 4,  # an order written, then rolled back
    "hot": 6,  # a row every writer edits, alone or with an own header after it
}
HOT_ROWS: Final = 4
"""Rows of the ``hot`` table, ids 1..HOT_ROWS, edited by every writer: their edits
wait for each other's locks, so transactions commit in another order than they began."""


class Writer:
    """Commits random transactions on its own orders; logs every committed one."""

    def __init__(self, dsn: str, number: int, tables: dict[str, str], seed: int) -> None:
        self.dsn = dsn
        self.number = number
        self.names = tables
        self.rng = random.Random(f"{seed}/writer/{number}")
        self.next_id = number * ID_BLOCK
        self.orders: dict[int, Order] = {}
        self.committed: list[Committed] = []
        self.rolled_back: list[int] = []
        self.error: str | None = None

    # -- the model -------------------------------------------------------------------

    def rows(self, table: str) -> dict[int, dict[str, Any]]:
        """What the writer's committed transactions left in ``table``."""
        if table == "hot":
            return {}
        if table == "header":
            return {o.header["id"]: dict(o.header) for o in self.orders.values()}
        return {k: dict(v) for o in self.orders.values() for k, v in o.lines.items()}

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    # -- SQL -------------------------------------------------------------------------

    def _write(self, cur: psycopg.Cursor[Any], table: str, op: str, row: dict[str, Any]) -> Change:
        name = sql.Identifier("public", self.names[table])
        if op == "c":
            columns = list(row)
            query = sql.SQL("insert into {} ({}) values ({})").format(
                name,
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            )
            cur.execute(query, [row[c] for c in columns])
        elif op == "u":
            columns = [c for c in row if c != "id"]
            query = sql.SQL("update {} set {} where id = %s").format(
                name,
                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns),
            )
            cur.execute(query, [*(row[c] for c in columns), row["id"]])
        else:
            cur.execute(sql.SQL("delete from {} where id = %s").format(name), (row["id"],))
        if cur.rowcount != 1:
            raise AssertionError(f"{op} on {table} {row['id']} touched {cur.rowcount} rows")
        return Change(table, row["id"], op, None if op == "d" else dict(row))

    def _hot(self, cur: psycopg.Cursor[Any]) -> Change:
        """Edit a shared row; its after-image is what the database returns."""
        cur.execute(
            sql.SQL(
                "update {} set version = version + 1, note = %s where id = %s "
                "returning id, version, note"
            ).format(sql.Identifier("public", self.names["hot"])),
            (f"writer {self.number}", self.rng.randint(1, HOT_ROWS)),
        )
        found = cur.fetchone()
        assert found is not None
        return Change("hot", found[0], "u", {"id": found[0], "version": found[1], "note": found[2]})

    def _new_order(self, cur: psycopg.Cursor[Any], count: int) -> tuple[Order, list[Change]]:
        hid = self._id()
        order = Order({"id": hid, "version": 1, "note": f"order {hid}", "lines": count})
        changes = [self._write(cur, "header", "c", order.header)]
        for _ in range(count):
            lid = self._id()
            line = {"id": lid, "header_id": hid, "qty": self.rng.randint(1, 99), "note": "new"}
            order.lines[lid] = line
            changes.append(self._write(cur, "line", "c", line))
        return order, changes

    def _transaction(
        self, cur: psycopg.Cursor[Any], kind: str
    ) -> tuple[list[Change], Callable[[], None]] | None:
        """Run ``kind``'s statements; the changes and how to apply them to the model.

        None when the writer has nothing to apply ``kind`` to yet.
        """
        rng = self.rng
        if kind in ("order", "big order", "rollback"):
            count = rng.randint(20, 60) if kind == "big order" else rng.randint(1, 5)
            made, writes = self._new_order(cur, count)
            return writes, lambda: self.orders.__setitem__(made.header["id"], made)
        if kind == "hot":
            hot = [self._hot(cur)]
            if not self.orders or self.rng.random() < 0.5:
                return hot, lambda: None
        else:
            hot = []
        needs_lines = kind in ("line", "edit lines", "drop lines")
        candidates = [o for o in self.orders.values() if o.lines or not needs_lines]
        if not candidates:
            return None
        order = rng.choice(candidates)
        header = dict(order.header)
        lines = {k: dict(v) for k, v in order.lines.items()}
        changes: list[Change] = hot
        if kind in ("header", "hot"):
            header.update(version=header["version"] + 1, note=f"edited {rng.random():.6f}")
            changes.append(self._write(cur, "header", "u", header))
        elif kind == "line":
            line = lines[rng.choice(list(lines))]
            line.update(qty=rng.randint(1, 99), note="edited")
            changes.append(self._write(cur, "line", "u", line))
        elif kind == "add line":
            lid = self._id()
            lines[lid] = {"id": lid, "header_id": header["id"], "qty": 1, "note": "added"}
            changes.append(self._write(cur, "line", "c", lines[lid]))
        elif kind == "edit lines":
            for lid in rng.sample(list(lines), min(len(lines), rng.randint(1, 3))):
                lines[lid].update(qty=rng.randint(1, 99), note=f"v{header['version'] + 1}")
                changes.append(self._write(cur, "line", "u", lines[lid]))
            header.update(version=header["version"] + 1)
            changes.append(self._write(cur, "header", "u", header))
        elif kind == "drop lines":
            for lid in rng.sample(list(lines), min(len(lines), rng.randint(1, 2))):
                changes.append(self._write(cur, "line", "d", lines.pop(lid)))
            header.update(version=header["version"] + 1, lines=len(lines))
            changes.append(self._write(cur, "header", "u", header))
        elif kind == "drop order":
            for lid in list(lines):
                changes.append(self._write(cur, "line", "d", lines.pop(lid)))
            changes.append(self._write(cur, "header", "d", header))

            def drop() -> None:
                del self.orders[header["id"]]

            return changes, drop

        def apply() -> None:
            order.header = header
            order.lines = lines

        return changes, apply

    def run(self, stop: threading.Event) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        try:
            with psycopg.connect(self.dsn) as conn:
                while not stop.is_set():
                    kind = self.rng.choices(kinds, weights)[0]
                    with conn.cursor() as cur:
                        cur.execute("select (pg_current_xact_id()::text::bigint % 4294967296)")
                        xid = int(cur.fetchone()[0])  # type: ignore[index]
                        done = self._transaction(cur, kind)
                    if done is None or kind == "rollback":
                        conn.rollback()
                        if done is not None:
                            self.rolled_back.append(xid)
                        continue
                    conn.commit()
                    changes, apply = done
                    apply()
                    self.committed.append(Committed(xid, kind, tuple(changes)))
                    time.sleep(self.rng.uniform(0, 0.02))
        except Exception as exc:  # reported by the test, with the seed
            self.error = f"writer {self.number}: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------ the chaos


@dataclass(slots=True)
class Chaos:
    """SIGKILLs the capture at random moments and restarts it after a random pause."""

    capture: Capture
    rng: random.Random
    log: list[str] = field(default_factory=list)
    unconfirmed: list[int] = field(default_factory=list)
    """Per kill, the WAL bytes the slot still held for the capture just before it."""
    error: str | None = None

    def _unconfirmed(self) -> int:
        """WAL bytes the slot still holds for the capture."""
        dsn = self.capture.admin_dsn
        end = lsn_int(str(execute(dsn, "select pg_current_wal_lsn()::text")[0][0]))
        slot = slot_row(dsn, self.capture.slot)
        return max(0, end - (slot[1] if slot else end))

    def restart(self) -> str:
        """Start the capture with a Kafka acknowledgement delay drawn anew.

        A long ``linger_ms`` keeps records unacknowledged for a while after the capture
        handed them over, so kills often land between "sent" and "acknowledged": the
        window in which confirming too early to PostgreSQL would lose changes.
        """
        linger = self.rng.choice(LINGER_MS)
        self.capture.settings["linger_ms"] = linger
        self.capture.start()
        return linger

    def run(self, stop: threading.Event, started: float) -> None:
        rng = self.rng
        try:
            while True:
                # Mostly a while after the last start; now and then soon after it, while
                # the capture is still starting or replaying.
                wait = rng.uniform(1.0, 4.0) if rng.random() < 0.2 else rng.uniform(5.0, 15.0)
                if stop.wait(wait):
                    return
                if not self.capture.running:
                    self.error = f"the capture died on its own:\n{self.capture.log()[-3000:]}"
                    return
                unconfirmed = self._unconfirmed()
                killed = time.monotonic() - started
                self.capture.kill()
                # At once, after a moment, or after some seconds while WAL piles up.
                pause = rng.choice((0.0, rng.uniform(0.2, 2.0), rng.uniform(3.0, 10.0)))
                time.sleep(pause)
                linger = self.restart()
                self.unconfirmed.append(unconfirmed)
                self.log.append(
                    f"killed at +{killed:.1f}s with {unconfirmed} WAL bytes unconfirmed, "
                    f"restarted after {pause:.1f}s with linger_ms={linger}"
                )
        except Exception as exc:
            self.error = f"chaos: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------ the checks


def _tid_xid(tid: str) -> int:
    return int(tid.split(":")[0])


def _tid_lsn(tid: str) -> int:
    return int(tid.split(":")[1])


def _changes_of(events: list[Event]) -> tuple[dict[str, dict[int, Event]], list[str]]:
    """Per transaction id, its distinct events by ``total_order``; and what is malformed
    (events without a transaction, replays that differ from the first copy)."""
    problems: list[str] = []
    by_tid: dict[str, dict[int, Event]] = defaultdict(dict)
    for event in events:
        if event.value is None:
            continue
        block = event.transaction
        if block is None and event.op == "r" and event.source["snapshot"] != "false":
            continue  # the initial snapshot of the hot rows
        if block is None:
            problems.append(f"{event.topic}@{event.offset}: no transaction block ({event.op})")
            continue
        if event.source["txId"] != _tid_xid(block["id"]):
            problems.append(f"{event.topic}@{event.offset}: txId differs from {block['id']}")
        first = by_tid[block["id"]].setdefault(block["total_order"], event)
        if first is not event and (
            first.topic,
            first.key,
            first.value["op"],  # type: ignore[index]
            first.after,
            first.source["lsn"],
            first.transaction,
        ) != (event.topic, event.key, event.op, event.after, event.source["lsn"], block):
            problems.append(
                f"{block['id']} #{block['total_order']}: replay {event.topic}@{event.offset} "
                f"differs from {first.topic}@{first.offset}"
            )
    return by_tid, problems


def check_rows(
    events: list[Event], topics: dict[str, str], final: dict[str, dict[int, dict[str, Any]]]
) -> list[str]:
    """Check 1: per key, the last record is the final row (or a delete and a tombstone)."""
    problems: list[str] = []
    for table, topic in topics.items():
        per_key: dict[int, list[Event]] = defaultdict(list)
        for event in events:
            if event.topic == topic and event.key is not None:
                per_key[event.key["id"]].append(event)
        rows = final[table]
        for key in sorted(set(rows) - set(per_key))[:10]:
            problems.append(f"{table} {key}: in the database, never on Kafka")
        for key, history in sorted(per_key.items()):
            last = history[-1]
            if key in rows:
                if last.value is None or last.op == "d" or last.after != rows[key]:
                    got = None if last.value is None else (last.op, last.after)
                    problems.append(f"{table} {key}: last record {got}, database {rows[key]}")
            elif not (last.tombstone and len(history) > 1 and history[-2].op == "d"):
                problems.append(f"{table} {key}: deleted, but the last record is {last.op}")
    return problems


def check_committed(
    by_tid: dict[str, dict[int, Event]],
    committed: list[Committed],
    rolled_back: list[int],
    names: dict[str, str],
) -> list[str]:
    """Check 2: each committed transaction's distinct events are its changes, in order."""
    problems: list[str] = []
    tables = {f"public.{name}": table for table, name in names.items()}
    tids: dict[int, list[str]] = defaultdict(list)
    for tid in by_tid:
        tids[_tid_xid(tid)].append(tid)
    expected = {c.xid: c for c in committed}
    for xid, found in tids.items():
        if len(found) > 1:
            problems.append(f"xid {xid} under several transaction ids: {found}")
        if xid not in expected:
            what = "rolled back" if xid in rolled_back else "never committed by a writer"
            problems.append(f"xid {xid} ({what}) has events: {found}")
    for tx in committed:
        if tx.xid not in tids:
            problems.append(f"xid {tx.xid} ({tx.kind}, {len(tx.changes)} changes) is missing")
            continue
        events = by_tid[tids[tx.xid][0]]
        got = [
            Change(
                tables[f"{e.source['schema']}.{e.source['table']}"],
                e.row["id"],
                e.op or "",
                None if e.op == "d" else e.after,
            )
            for _, e in sorted(events.items())
        ]
        if got != list(tx.changes):
            problems.append(f"xid {tx.xid} ({tx.kind}): events {got} != committed {tx.changes}")
    return problems


def check_transactions(
    by_tid: dict[str, dict[int, Event]], tx_events: list[Event]
) -> tuple[list[str], int]:
    """Checks 3 and 4: whole transactions, END records in commit order.

    Returns the problems and how many transaction records were replayed duplicates.
    """
    problems: list[str] = []
    spread = {e.partition for e in tx_events} - {0}
    if spread:
        problems.append(f"transaction records outside partition 0: {sorted(spread)}")
    begins: dict[str, Event] = {}
    ends: dict[str, Event] = {}
    duplicates = 0
    order: list[str] = []
    for event in sorted(tx_events, key=lambda e: (e.partition, e.offset)):
        assert event.value is not None
        tid, status = event.value["id"], event.value["status"]
        seen = begins if status == "BEGIN" else ends
        if tid in seen:
            duplicates += 1
            continue
        seen[tid] = event
        if status == "END":
            order.append(tid)
            if tid not in begins:
                problems.append(f"{tid}: END at {event.offset} before any BEGIN")
    for earlier, later in pairwise(order):
        if _tid_lsn(later) <= _tid_lsn(earlier):
            problems.append(f"END of {later} after END of {earlier}: not in commit order")
    for tid, events in by_tid.items():
        end = ends.get(tid)
        if end is None or end.value is None:
            problems.append(f"{tid}: {len(events)} events, no END")
            continue
        total = len(events)
        if set(events) != set(range(1, total + 1)):
            problems.append(f"{tid}: total_order values {sorted(events)}, not 1..{total}")
        if end.value["event_count"] != total:
            problems.append(f"{tid}: END counts {end.value['event_count']} events, saw {total}")
        per_collection: dict[str, list[int]] = defaultdict(list)
        for event in events.values():
            collection = f"{event.source['schema']}.{event.source['table']}"
            per_collection[collection].append(event.transaction["data_collection_order"])  # type: ignore[index]
        counted = {c["data_collection"]: c["event_count"] for c in end.value["data_collections"]}
        seen_counts = {c: len(orders) for c, orders in per_collection.items()}
        if counted != seen_counts:
            problems.append(f"{tid}: END per table {counted}, saw {seen_counts}")
        for collection, orders in per_collection.items():
            if sorted(orders) != list(range(1, len(orders) + 1)):
                problems.append(f"{tid}: {collection} data_collection_order {sorted(orders)}")
        lsns = [e.source["lsn"] for _, e in sorted(events.items())]
        if lsns != sorted(lsns) or lsns[-1] >= _tid_lsn(tid):
            problems.append(f"{tid}: event LSNs {lsns} not rising below the commit LSN")
    return problems, duplicates


# ------------------------------------------------------------------------ the test


@pytest.fixture
def probe_tables(stack_env: dict[str, str]) -> Iterator[dict[str, str]]:
    names = {
        "header": unique_name("cdc_soak_h_"),
        "line": unique_name("cdc_soak_l_"),
        "hot": unique_name("cdc_soak_x_"),
    }
    create_probe_table(
        stack_env,
        names["header"],
        "id int primary key, version int not null, note text, lines int not null",
    )
    create_probe_table(
        stack_env,
        names["line"],
        "id int primary key, header_id int not null, qty int not null, note text",
    )
    create_probe_table(
        stack_env,
        names["hot"],
        "id int primary key, version int not null, note text",
        rows=f"select g, 0, 'seed' from generate_series(1, {HOT_ROWS}) g",
    )
    yield names
    for name in names.values():
        drop_probe_table(stack_env, name)


def _wait_caught_up(capture: Capture) -> None:
    """Until the slot is confirmed up to the current end of WAL (all of it in Kafka)."""
    dsn = capture.admin_dsn
    end = lsn_int(str(execute(dsn, "select pg_current_wal_lsn()::text")[0][0]))

    def confirmed() -> bool:
        assert capture.running, f"the capture died:\n{capture.log()[-3000:]}"
        row = slot_row(dsn, capture.slot)
        return row is not None and row[1] >= end

    wait_for(confirmed, CATCH_UP_SECONDS, "the slot confirmed up to the writers' end", 0.5)


def _read_all(stack_env: dict[str, str], topics: list[str]) -> list[Event]:
    """Every record of ``topics``, up to their current high watermarks."""
    ends = watermarks(stack_env["KAFKA_BOOTSTRAP"], tuple(topics))
    with TopicReader(stack_env, topics) as reader:

        def complete(events: list[Event]) -> bool:
            last: dict[tuple[str, int], int] = {}
            for e in events:
                last[(e.topic, e.partition)] = e.offset
            return all(last.get(tp, -1) >= high - 1 for tp, high in ends.items() if high)

        reader.wait(complete, timeout=600, what="every record up to the high watermarks")
        return list(reader.events)


def test_sigkilled_capture_loses_nothing_and_keeps_transactions_whole(
    stack_env: dict[str, str],
    capture_factory: Callable[..., Capture],  # noqa: F811
    probe_tables: dict[str, str],
) -> None:
    seed = int(os.environ.get("ERPCRM_CDC_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"cdc soak: seed={seed} seconds={SECONDS:.0f}")
    names = probe_tables
    capture = capture_factory("erp", names.values(), status_interval_seconds=STATUS_INTERVAL)
    writers = [Writer(stack_env["ERP_ADMIN_DSN"], n, names, seed) for n in range(1, WRITERS + 1)]
    chaos = Chaos(capture, random.Random(f"{seed}/chaos"))
    chaos.restart()
    capture.wait_streaming()
    stop = threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in writers]
    threads.append(threading.Thread(target=chaos.run, args=(stop, started), daemon=True))
    for thread in threads:
        thread.start()
    time.sleep(SECONDS)
    stop.set()
    for thread in threads:
        thread.join(120)
    summary = f"seed={seed} (ERPCRM_CDC_SOAK_SEED={seed} replays the choices)\n" + "\n".join(
        chaos.log
    )
    errors = [e for e in (*(w.error for w in writers), chaos.error) if e]
    assert not errors, "\n".join([summary, *errors])
    assert not any(t.is_alive() for t in threads), summary
    if not capture.running:
        chaos.restart()
    capture.wait_streaming(150)
    _wait_caught_up(capture)

    topics = {table: capture.topic(name) for table, name in names.items()}
    events = _read_all(stack_env, [*topics.values(), capture.tx_topic])
    table_events = [e for e in events if e.topic in topics.values()]
    tx_events = [e for e in events if e.topic == capture.tx_topic]
    final = {
        table: {
            int(r[0]): r[1]
            for r in execute(
                stack_env["ERP_ADMIN_DSN"],
                sql.SQL("select id, to_jsonb(t) from {} t").format(sql.Identifier("public", name)),
            )
        }
        for table, name in names.items()
    }
    committed = [tx for w in writers for tx in w.committed]
    rolled_back = [xid for w in writers for xid in w.rolled_back]
    model = {table: {k: v for w in writers for k, v in w.rows(table).items()} for table in names}

    by_tid, problems = _changes_of(table_events)
    problems += check_rows(table_events, topics, final)
    problems += check_committed(by_tid, committed, rolled_back, names)
    tx_problems, tx_duplicates = check_transactions(by_tid, tx_events)
    problems += tx_problems
    distinct = sum(len(e) for e in by_tid.values())
    kinds = Counter(tx.kind for tx in committed)
    summary += (
        f"\n{len(committed)} transactions committed {dict(kinds)}, {len(rolled_back)} rolled "
        f"back; {len(table_events)} table records ({distinct} distinct events), "
        f"{len(tx_events)} transaction records ({tx_duplicates} replayed)"
    )
    print(summary)
    own = {table: final[table] for table in ("header", "line")}
    assert own == {t: model[t] for t in own}, f"{summary}\nthe database differs from the model"
    hot_edits = sum(c.table == "hot" for tx in committed for c in tx.changes)
    assert sum(r["version"] for r in final["hot"].values()) == hot_edits, summary
    assert not problems, "\n".join([summary, *problems[:40], f"({len(problems)} problems)"])
    # The run did what it is for: kills under load, with transactions replayed after them.
    assert len(chaos.log) >= max(2, int(SECONDS // 20)), summary
    assert any(chaos.unconfirmed), f"{summary}\nno kill left WAL unconfirmed"
    replayed = sum(e.value is not None for e in table_events) - distinct
    assert replayed > 0, f"{summary}\nno change was replayed: the kills never caught work in flight"
