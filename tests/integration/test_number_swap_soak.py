"""Customer numbers traded among linked customers converge under concurrent edits from
both sides while workers die.

What this proves (DESIGN.md §5.1, 5.2, 5.4, 5.6; README "Unique values traded in one
batch"), as ``test_number_swap`` does for one trade at a time, now with several writers
on both systems at once and every kind of worker SIGKILLed and started again (a sink
inside a transaction that wrote):

- ERP writers trade customer numbers (``res_partner.ref``, unique in the ERP; unique
  among live CRM accounts) among a pool of linked customers: two swap or three rotate,
  through a temporary number as the ERP's own unique key demands, either in one
  transaction or in one transaction per update (the temporary number then committed and
  synced too); a trade sometimes edits a shared field of one of its customers in the
  same transaction. A trade takes its customers for its whole length (no two trades
  touch one customer at once), as an application serialises its own renumbering;
- meanwhile other ERP writers and CRM writers edit the shared fields of the same
  customers (as ``test_convergence``).

Once the pipeline is quiet:

- **numbers**: each pair's account shows its ERP customer's number, the ERP's last
  write (it owns the number); a trade's temporary number stays nowhere it was replaced;
- **shared fields**: on both sides the value of the last write on either side, by real
  commit time in whole milliseconds, an exact tie to the ERP;
- **nothing twice, still linked**: every customer record of the run in either system
  (found by the run's tag in its name, in any state) is one of the pairs, linked to its
  counterpart, live, with its number;
- **no dead letter** of a customer (no ``key_taken``: a number traded is never really
  held twice);
- **no echo**: once quiet, neither side writes the pairs' rows again.

The trade writers are made for kills, not for outages of the ERP database: a trade whose
commit got no answer would not be recorded.

Budgets: ``ERPCRM_SOAK_SECONDS=<n>`` runs ``n`` seconds of writes over 24 pairs, one
round of kills per minute; otherwise 60 seconds over 8 pairs, one round of kills (about
4 to 6 minutes in all). ``ERPCRM_CONVERGENCE_SEED=<int>`` replays the writers' choices
(not their timing). A failure prints the seed and a table of every cell that differs;
every write and the final rows are left in ``number-swap-writes.jsonl`` in the
pipeline's log directory.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
import pytest

from tests.integration.cdc_fixtures import execute
from tests.integration.convergence_fixtures import (
    FIELDS,
    NUMBER,
    Field,
    FieldWriter,
    Write,
    Writer,
    commit_time_us,
    diverged,
    dump,
    pair_records,
    pair_rows,
    read_pairs,
    run_writers,
    start_pairs,
    update_fields,
)
from tests.integration.sink_fixtures import Pipeline, watermarks
from tests.integration.soak_fixtures import (
    DLQ_TOPICS,
    Budget,
    Pair,
    customer_letter,
    dead_letters,
    pair_stamps,
    pipeline_fixture,
    settled,
    victims,
)

BUDGET: Final = Budget.from_env(os.environ, seconds=60.0, width=8, soak_width=24)
TRADE_WRITERS: Final = 2
"""ERP writers trading numbers; the system's other writers edit shared fields."""
RETRIES: Final = 5
"""Runs of a trade's transaction that a deadlock may abort before the writer gives up."""
MIXED_SHARE: Final = 0.3
"""Trades that also edit a shared field of one of their customers (in their first
transaction)."""

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUDGET.timeout_seconds)]

pipeline = pipeline_fixture("numswap-soak")

CELLS: Final = (*FIELDS, NUMBER)

Update = tuple[Pair, str]
"""One ``UPDATE`` of a trade: the pair whose ERP customer gets the number."""


def trade(pairs: Sequence[Pair], numbers: dict[int, str], temporary: str) -> list[Update]:
    """The updates that give each pair the number of the one before it (the first the
    last's), through ``temporary``, in an order the ERP's unique key allows."""
    first, last = pairs[0], pairs[-1]
    steps = [(first, temporary)]
    steps += [(pair, numbers[before.index]) for pair, before in zip(pairs[1:], pairs, strict=False)]
    steps.append((first, numbers[last.index]))
    return steps


@dataclass(frozen=True, slots=True)
class TradeStep:
    """One ERP transaction of a trade: its updates and, in a mixed trade's first, the
    shared field ``edit`` sets on one of its customers (when that changes the field)."""

    updates: Sequence[Update]
    edit: tuple[Pair, Field, str | None] | None = None


@dataclass(slots=True)
class Claims:
    """The pairs in a trade now: a trade takes its pairs for its whole length."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: set[int] = field(default_factory=set)

    def take(self, rng: random.Random, pairs: Sequence[Pair], count: int) -> list[Pair] | None:
        """``count`` pairs no trade has, drawn from ``rng``; None when there are fewer."""
        with self.lock:
            free = [p for p in pairs if p.index not in self.taken]
            if len(free) < count:
                return None
            chosen = rng.sample(free, count)
            self.taken.update(p.index for p in chosen)
            return chosen

    def give_back(self, pairs: Sequence[Pair]) -> None:
        with self.lock:
            self.taken.difference_update(p.index for p in pairs)


@dataclass(slots=True)
class TradeWriter(Writer):
    """Trades the numbers of two (a swap) or three (a rotation) pairs per edit, in one ERP
    transaction or one per update; each committed transaction records each pair's last
    number in it (and a shared field it edited) as writes at its commit time."""

    claims: Claims = field(default_factory=Claims)
    trades: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    """Transactions run again after a deadlock or serialization failure."""

    def _one(self, conn: psycopg.Connection[tuple[Any, ...]], seq: int) -> None:
        size = self.rng.choice((2, 3))
        split = self.rng.random() < 0.5
        mixed = self.rng.random() < MIXED_SHARE
        chosen = self.claims.take(self.rng, self.pairs, size)
        if chosen is None:
            self.unchanged += 1
            return
        try:
            numbers = {
                index: str(ref)
                for index, ref in conn.execute(
                    "SELECT id, ref FROM public.res_partner WHERE id = ANY(%s)",
                    ([p.partner for p in chosen],),
                ).fetchall()
            }
            numbers = {p.index: numbers[p.partner] for p in chosen}
            temporary = f"T-{self.values.run_tag}{self.name}n{seq}"
            updates = trade(chosen, numbers, temporary)
            transactions = [[u] for u in updates] if split else [updates]
            edited = self.rng.choice(chosen)
            fld = self.rng.choice(FIELDS)
            edit = (edited, fld, self.values.make(fld.name, self.rng, self.name, seq))
            for number, updates_of in enumerate(transactions):
                shared = edit if mixed and number == 0 else None
                self._commit(conn, seq, TradeStep(updates_of, shared))
            kind = "swap" if size == 2 else "rotation"
            self.trades[f"{kind} {'split' if split else 'one'}{' mixed' if mixed else ''}"] += 1
        finally:
            self.claims.give_back(chosen)

    def _commit(self, conn: psycopg.Connection[tuple[Any, ...]], seq: int, step: TradeStep) -> None:
        """Run ``step`` as one ERP transaction; recorded once committed.

        Run again when the database chose it as a deadlock's victim (a sink's batch may
        lock the same customers in another order), as an application would: a trade
        left half-way would leave a temporary number behind."""
        for attempt in range(1, RETRIES + 1):
            try:
                self._transaction(conn, seq, step)
                return
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                self.retried += 1
                if attempt == RETRIES:
                    raise

    def _transaction(
        self, conn: psycopg.Connection[tuple[Any, ...]], seq: int, step: TradeStep
    ) -> None:
        written: dict[tuple[int, str], str | None] = {}
        with conn.transaction():
            xid = ""
            for pair, number in step.updates:
                row = conn.execute(
                    "UPDATE public.res_partner SET ref = %s WHERE id = %s RETURNING xmin::text",
                    (number, pair.partner),
                ).fetchone()
                assert row is not None, f"ERP customer {pair.partner} is gone"
                xid = str(row[0])
                written[(pair.index, NUMBER.name)] = number
            if step.edit is not None:
                pair, fld, value = step.edit
                changed = conn.execute(
                    update_fields("erp", [fld]), (value, pair.partner, value)
                ).fetchone()
                if changed is not None:
                    written[(pair.index, fld.name)] = value
        commit_us = commit_time_us(conn, xid)
        for (index, cell), value in written.items():
            self.writes.append(Write("erp", index, cell, value, commit_us, self.name, seq))


def _last_numbers(writes: Sequence[Write]) -> dict[int, str | None]:
    """Per pair index, the number of its last number write."""
    last: dict[int, Write] = {}
    for write in writes:
        if write.field == NUMBER.name and (
            write.pair not in last or write.rank > last[write.pair].rank
        ):
            last[write.pair] = write
    return {index: write.value for index, write in last.items()}


def _trades_left(env: dict[str, str], run_tag: str) -> list[tuple[Any, ...]]:
    """ERP customers or CRM accounts of any state still holding a temporary number."""
    pattern = f"T-{run_tag}%"
    return [
        ("erp", *row)
        for row in execute(
            env["ERP_ADMIN_DSN"],
            "SELECT id, ref FROM public.res_partner WHERE ref LIKE %s",
            (pattern,),
        )
    ] + [
        ("crm", *row)
        for row in execute(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text, account_number FROM public.accounts WHERE account_number LIKE %s",
            (pattern,),
        )
    ]


def test_numbers_traded_under_concurrent_edits_and_kills_converge(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """Trades of customer numbers and shared-field edits on both sides while every worker
    kind is SIGKILLed; then numbers, fields, links, letters and echo as documented."""
    budget = BUDGET
    # 1. Linked pairs, made through the pipeline; the inserts are the first writes, each
    # linked customer's number the ERP's first number write.
    seed, rng, values, pairs, initial = start_pairs(pipeline, stack_env, budget, "number swap soak")
    initial += [Write("erp", p.index, NUMBER.name, p.ref, 0, "init", p.index) for p in pairs]
    settled(pipeline)
    letters_from = watermarks(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS)

    # 2. Trade writers and field writers on both systems while the workers are killed.
    claims = Claims()

    def writer(system: str, number: int, own: random.Random) -> Writer:
        dsn = stack_env[f"{system.upper()}_DSN"]
        if system == "erp" and number <= TRADE_WRITERS:
            return TradeWriter(system, number, dsn, pairs, values, own, claims=claims)
        return FieldWriter(system, number, dsn, pairs, values, own)

    chaos = victims(pipeline, budget, rng)
    run = run_writers(
        pipeline, writer, chaos, seed, budget, lambda: pair_rows(stack_env, pairs, CELLS)
    )

    # 3. Every cell against the last write, the records, the letters, the echo.
    problems = run.problems
    writes = initial + run.writes
    trades = sum((w.trades for w in run.writers if isinstance(w, TradeWriter)), Counter[str]())
    kinds = Counter(f"{w.system} {w.field}" for w in writes if w.writer != "init")
    if not all(any(k.startswith(kind) for k in trades) for kind in ("swap", "rotation")):
        problems.append(f"the writers made no swap or no rotation: {dict(trades)}")
    if not all(any(split in k for k in trades) for split in ("one", "split")):
        problems.append(f"no trade in one transaction or none split: {dict(trades)}")
    if not (kinds["crm name"] and kinds["erp name"]):
        problems.append(f"the writers did not edit shared fields on both sides: {dict(kinds)}")
    state = read_pairs(stack_env, pairs, CELLS)
    divergences = diverged(state, pairs, writes, [c.name for c in CELLS])
    problems += pair_records(stack_env, values.run_tag, pairs, _last_numbers(writes))
    problems += [f"temporary number left: {row}" for row in _trades_left(stack_env, values.run_tag)]
    letters = dead_letters(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS, letters_from)
    problems += [
        f"dead letter on {x.topic}: {x.reason} {x.headers}" for x in letters if customer_letter(x)
    ]
    if not problems and not divergences:
        before = pair_stamps(stack_env, pairs)
        time.sleep(8)
        settled(pipeline)
        after = pair_stamps(stack_env, pairs)
        problems += [
            f"written again after quiet: {a} -> {b}"
            for a, b in zip(before, after, strict=True)
            if a != b
        ]
    path = pipeline.erp.log_dir / "number-swap-writes.jsonl"
    dump(path, writes, state, pairs)
    retried = sum(w.retried for w in run.writers if isinstance(w, TradeWriter))
    written = (
        f"trades {dict(sorted(trades.items()))} (transactions run again: {retried})"
        f" writes by kind {dict(sorted(kinds.items()))}"
    )
    run.verdict(pipeline, seed, len(pairs), written, "kills", path, divergences, writes)
