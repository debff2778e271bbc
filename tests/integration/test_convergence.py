"""ERP and CRM converge under randomized concurrent edits from both sides while workers die.

What this proves (DESIGN.md §5.4, with §5.1-5.2 underneath it): after any set of
concurrent edits of the shared customer fields in both systems, and SIGKILLs of every
kind of worker in between (each sink, the streams worker, both captures), both systems
hold the same value for every field, and that value is the one of the last write to
the field on either side: the write with the latest *real* source commit time, read
back with ``pg_xact_commit_timestamp`` of the writing transaction and compared in whole
milliseconds, truncated (the precision of the events' ``source.ts_ms``), an exact tie
(same millisecond) going to the ERP.

How:

1. One pipeline (both captures, streams, both sinks) as in ``test_sinks``; ``P`` new
   CRM accounts become linked ERP customers (``crm_account_id``, ``account_number``).
2. Writer threads on both systems at once (one connection each) update random pairs
   and fields (one to three per statement) with values that are already canonical,
   so a raw value is exactly what the other side stores. Every committed write is
   recorded with its transaction's commit time; the accounts' inserts count as the
   first writes.
3. Meanwhile chaos threads SIGKILL and restart the workers, spread over the run; in
   the outage test they stop and start the stack itself instead (the Kafka broker, the
   ERP and CRM PostgreSQL in fast and immediate mode, on demand the schema registry),
   and the workers must ride it out; during each outage one worker that uses the
   component is killed and started again while it is away. A writer reconnects after
   an outage; a write whose ``COMMIT`` got no answer is recorded only if it committed
   (``pg_xact_status``).
4. After the writers stop and the pipeline is quiet, every (pair, field) is compared
   with the recorded writes, and every customer record of the run in either system
   (found by the run's tag in its name, in any state) is one of a pair, still linked
   and live: nothing was synced twice; a failure prints the seed and a table of what differs,
   and every write and the final rows are left in ``convergence-writes.jsonl`` in the
   pipeline's log directory (its path is printed).

Budgets: ``ERPCRM_SOAK_SECONDS=<n>`` runs ``n`` seconds of edits over 30 pairs (kills once
a minute, outages every two minutes, the registry among them); otherwise (``CI=true`` or a
developer's run) about 35 seconds over 12 pairs, one round of each, no registry
(``ERPCRM_OUTAGE_REGISTRY=1|0`` puts it in or leaves it out either way).
``ERPCRM_CONVERGENCE_SEED=<int>`` replays the writers' choices (not their timing).

Values are canonical by construction (each one is checked against the cleansers): names
NFC with single spaces, lower-case e-mails, valid E.164 phones (region-independent, so a
country change cannot change them), ISO alpha-2 countries, upper-case zips. The country
is never emptied: a missing country is inferred from the VAT id, so ``NULL`` is no
canonical country of these customers. An update that would not change every column it
sets (``IS DISTINCT FROM`` guard) is not made: a no-change write is no write.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Final

import pytest

from erpcrm.stack import LocalStack
from tests.integration.convergence_fixtures import (
    FIELDS,
    FieldWriter,
    ValueMaker,
    Writer,
    diverged,
    dump,
    pair_records,
    pair_rows,
    read_pairs,
    run_writers,
    start_pairs,
)
from tests.integration.sink_fixtures import Pipeline
from tests.integration.soak_fixtures import (
    Budget,
    Victim,
    outages,
    pipeline_fixture,
    settled,
    victims,
)

BUDGET: Final = Budget.from_env(os.environ, seconds=35.0, width=12, soak_width=30)
OUTAGE_REGISTRY: Final = os.environ.get("ERPCRM_OUTAGE_REGISTRY", str(int(BUDGET.soak))) == "1"
"""Whether the outage test stops the schema registry too: on demand (a soak, or
``ERPCRM_OUTAGE_REGISTRY=1``), not in CI, where its restart (a minute or two: the JVM,
then the journal read back from Kafka) would be most of the test's time."""

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUDGET.timeout_seconds)]

# ------------------------------------------------------------------------------ tests


pipeline = pipeline_fixture("convergence")


def test_generated_values_are_canonical() -> None:
    """The oracle's premise: every value a writer makes passes the cleansers unchanged."""
    rng = random.Random(0)
    values = ValueMaker("t0")
    for seq in range(300):
        for fld in FIELDS:
            values.make(fld.name, rng, "e1", seq)  # asserts canonical form itself


def test_concurrent_edits_and_kills_converge_to_the_last_writer(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    _converge(pipeline, stack_env, "kills", lambda rng: victims(pipeline, BUDGET, rng))


def test_concurrent_edits_and_stack_outages_converge_to_the_last_writer(
    pipeline: Pipeline, stack_env: dict[str, str], local_stack: LocalStack
) -> None:
    """The same, while the stack itself goes away: the Kafka broker, both PostgreSQL
    servers (a fast and an immediate shutdown) and, on demand, the schema registry are
    stopped and started again mid-run (:func:`outages`); the workers ride it out, and
    during each outage one worker that uses the component is SIGKILLed and started again
    while it is away (it must wait for it); a writer whose commit got no answer counts
    its write only if it committed."""
    try:
        _converge(
            pipeline,
            stack_env,
            "outages",
            lambda rng: outages(
                local_stack, BUDGET, rng, registry=OUTAGE_REGISTRY, pipeline=pipeline
            ),
        )
    finally:
        local_stack.up()  # whatever happened, the next tests get the whole stack back


def _converge(
    pipeline: Pipeline,
    stack_env: dict[str, str],
    what: str,
    chaos_for: Callable[[random.Random], list[Victim]],
) -> None:
    """Pairs, writers on both systems while ``chaos_for(rng)`` goes on, then every cell
    against the last write and every record of the run one of a pair."""
    budget = BUDGET
    # 1. Linked pairs, made through the pipeline; the inserts are the first writes.
    seed, rng, values, pairs, initial = start_pairs(
        pipeline, stack_env, budget, f"convergence ({what})"
    )
    settled(pipeline)

    # 2.-3. Writers on both systems and, meanwhile, the chaos.
    def writer(system: str, number: int, own: random.Random) -> Writer:
        return FieldWriter(system, number, stack_env[f"{system.upper()}_DSN"], pairs, values, own)

    chaos = chaos_for(rng)
    run = run_writers(pipeline, writer, chaos, seed, budget, lambda: pair_rows(stack_env, pairs))

    # 4. Every cell against the last write.
    problems = run.problems
    writes = initial + run.writes
    by_system = Counter(w.system for w in writes if w.writer != "init")
    if not (by_system["erp"] and by_system["crm"]):
        problems.append(f"the writers did not write on both sides: {dict(by_system)}")
    state = read_pairs(stack_env, pairs)
    divergences = diverged(state, pairs, writes, [f.name for f in FIELDS])
    problems += pair_records(stack_env, values.run_tag, pairs)
    path = pipeline.erp.log_dir / f"convergence-{what}-writes.jsonl"
    dump(path, writes, state, pairs)
    written = f"field writes erp={by_system['erp']} crm={by_system['crm']}"
    run.verdict(pipeline, seed, len(pairs), written, what, path, divergences, writes)
