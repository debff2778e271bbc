"""Customer numbers traded among linked customers in the ERP reach the CRM.

What this proves (DESIGN.md §5.1, 5.2, 5.6; README "Unique values traded in one batch"):
the ERP's customer number (``res_partner.ref``) is unique, and so is a live CRM
account's (``accounts_account_number_live_key``, a partial unique index that cannot be
deferred). When customers trade numbers in the ERP (two swap, three rotate, through a
temporary value as the ERP's own unique key demands), in one transaction or in several
that reach the CRM sink in one batch, the sink writes every account's new number: no
unique violation, no dead letter, every pair still linked, nothing created twice and no
echo afterwards. A number that two live accounts would really hold at the end (one the
pipeline never saw holds it) is still a dead letter (``key_taken``) naming the index,
and the account keeps its number.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Final

import psycopg
import pytest

from schemas.deadletter import H_CONTEXT_PREFIX, H_ERROR_CLASS
from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.convergence_fixtures import ValueMaker, create_pairs
from tests.integration.sink_fixtures import Pipeline, watermarks
from tests.integration.soak_fixtures import (
    DLQ_TOPICS,
    Letter,
    Pair,
    dead_letters,
    dead_workers,
    pair_stamps,
    settled,
    soak_pipeline,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SYNC_SECONDS: Final = 120.0
HOLDER_ORIGIN: Final = "erpcrm_test_holder"
"""A replication origin the CRM capture here drops as it drops the sinks': a row written
under it is one the pipeline never hears of (as one another replication tool wrote)."""


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """The demo pipeline, its captures dropping :data:`HOLDER_ORIGIN` too."""
    env = dict(stack_env, ERPCRM_CDC_ECHO_ORIGINS=json.dumps(["erpcrm_sink", HOLDER_ORIGIN]))
    with soak_pipeline(env, tmp_path_factory.mktemp("numswap")) as running:
        yield running


Step = list[tuple[int, str]]
"""One ERP transaction: ``(partner, ref)`` updates in order."""


def _trade(pairs: Sequence[Pair], tag: str) -> list[Step]:
    """The updates that give each pair the next one's number (the last the first's),
    through a temporary number, as one ERP transaction would write them."""
    temporary = f"T-{tag}"
    steps: Step = [(pairs[0].partner, temporary)]
    for pair, following in zip(pairs[1:], pairs, strict=False):
        steps.append((pair.partner, following.ref))
    steps.append((pairs[0].partner, pairs[-1].ref))
    return [steps]


def _wanted(pairs: Sequence[Pair]) -> dict[str, str]:
    """Per account, the number the trade of :func:`_trade` gives it."""
    return {pair.account: pairs[i - 1].ref for i, pair in enumerate(pairs)}


def _run(env: dict[str, str], steps: Sequence[Step]) -> None:
    with psycopg.connect(env["ERP_DSN"], autocommit=True) as conn:
        for step in steps:
            with conn.transaction():
                for partner, ref in step:
                    conn.execute(
                        "UPDATE public.res_partner SET ref = %s WHERE id = %s", (ref, partner)
                    )


def _crm_numbers(env: dict[str, str], accounts: Sequence[str]) -> dict[str, str | None]:
    rows = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT id::text, account_number FROM public.accounts WHERE id = ANY(%s::uuid[])",
        (list(accounts),),
    )
    return {str(a): None if n is None else str(n) for a, n in rows}


def _wait_numbers(pipeline: Pipeline, env: dict[str, str], wanted: dict[str, str]) -> None:
    def arrived() -> bool:
        assert not (dead := dead_workers(pipeline)), "\n".join(dead)
        return _crm_numbers(env, list(wanted)) == wanted

    try:
        wait_for(arrived, SYNC_SECONDS, "the traded numbers in the CRM")
    except AssertionError:
        raise AssertionError(
            f"the CRM holds {_crm_numbers(env, list(wanted))}, the ERP gave {wanted}"
        ) from None


def _keys(pairs: Sequence[Pair]) -> list[str]:
    """The pairs' entity keys on the bus, both systems'."""
    return [f"erp:{p.partner}" for p in pairs] + [f"crm:{p.account}" for p in pairs]


def _ours(letters: Sequence[Letter], pairs: Sequence[Pair]) -> list[Letter]:
    keys = {k.encode() for k in _keys(pairs)}
    return [x for x in letters if x.key in keys]


def _check_linked(env: dict[str, str], pairs: Sequence[Pair], tag: str) -> None:
    """Each pair still one linked record on each side, the numbers equal, nothing else of
    the run made (found by the run's tag, which ends every name it gives), all live."""
    pattern = f" {tag}in[0-9]+$"
    partners = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT id, crm_account_id::text, ref, active FROM public.res_partner"
        " WHERE name ~ %s OR crm_account_id = ANY(%s::uuid[])",
        (pattern, [p.account for p in pairs]),
    )
    accounts = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT id::text, account_number, deleted FROM public.accounts WHERE name ~ %s",
        (pattern,),
    )
    assert sorted((int(i), str(a)) for i, a, _, _ in partners) == sorted(
        (p.partner, p.account) for p in pairs
    )
    erp = {str(a): (str(r), bool(live)) for _, a, r, live in partners}
    crm = {str(a): (str(n), not bool(d)) for a, n, d in accounts}
    assert crm == erp


def _no_trouble(
    pipeline: Pipeline,
    env: dict[str, str],
    pairs: Sequence[Pair],
    letters_from: dict[tuple[str, int], int],
) -> None:
    """No dead letter of the pairs' records, no conflict recorded for them, and no echo:
    once settled, neither side writes their rows again."""
    letters = dead_letters(env["KAFKA_BOOTSTRAP"], DLQ_TOPICS, letters_from)
    ours = _ours(letters, pairs)
    assert ours == [], [x.headers for x in ours]
    for sink in pipeline:
        conflicts = "SELECT count(*) FROM {schema}.conflicts WHERE entity_key = ANY(%s)"
        assert sink.query(conflicts, (_keys(pairs),)) == [(0,)]
    before = pair_stamps(env, pairs)
    time.sleep(8)
    settled(pipeline)
    assert pair_stamps(env, pairs) == before


@pytest.mark.parametrize("transactions", ["one", "several"])
def test_numbers_swapped_and_rotated_in_the_erp_reach_the_crm(
    pipeline: Pipeline, stack_env: dict[str, str], transactions: str
) -> None:
    """Two customers swap numbers and three rotate theirs, in one ERP transaction or in
    one transaction per update that the CRM sink reads in one batch (it is stopped while
    they commit): every account gets its new number, no letter, no echo."""
    rng = random.Random(uuid.uuid4().int)
    values = ValueMaker(uuid.uuid4().hex[:4])
    pairs, _ = create_pairs(pipeline, stack_env, values, rng, 5)
    settled(pipeline)
    swapped, rotated = pairs[:2], pairs[2:]
    steps = _trade(swapped, f"{values.run_tag}s") + _trade(rotated, f"{values.run_tag}r")
    if transactions == "one":
        steps = [[update for step in steps for update in step]]
    else:
        steps = [[update] for step in steps for update in step]
    wanted = {**_wanted(swapped), **_wanted(rotated)}
    letters_from = watermarks(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS)

    if transactions == "several":
        # The sink reads the whole trade after a restart: one batch holds it.
        pipeline.crm_sink.stop()
        _run(stack_env, steps)
        time.sleep(5)  # the streams publish the changes meanwhile
        pipeline.crm_sink.start().wait_assigned()
    else:
        _run(stack_env, steps)
    _wait_numbers(pipeline, stack_env, wanted)
    settled(pipeline)

    _check_linked(stack_env, pairs, values.run_tag)
    _no_trouble(pipeline, stack_env, pairs, letters_from)


def test_a_number_another_live_account_holds_is_a_dead_letter(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """An ERP customer given a number that a live CRM account the pipeline never saw
    holds: its change is a ``key_taken`` dead letter naming the index, its account keeps
    its number; a swap of two others in the same transaction still applies."""
    rng = random.Random(uuid.uuid4().int)
    values = ValueMaker(uuid.uuid4().hex[:4])
    pairs, _ = create_pairs(pipeline, stack_env, values, rng, 3)
    settled(pipeline)
    taken, swapped = pairs[0], pairs[1:]
    number = f"D-{values.run_tag}"
    with psycopg.connect(stack_env["CRM_ADMIN_DSN"], autocommit=True) as conn:
        conn.execute(
            "SELECT pg_replication_origin_create(%s) WHERE NOT EXISTS"
            " (SELECT 1 FROM pg_replication_origin WHERE roname = %s)",
            (HOLDER_ORIGIN, HOLDER_ORIGIN),
        )
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", (HOLDER_ORIGIN,))
        holder = conn.execute(
            "INSERT INTO public.accounts (name, account_number) VALUES (%s, %s) RETURNING id::text",
            (f"Holder {values.run_tag}", number),
        ).fetchone()
        assert holder is not None
    letters_from = watermarks(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS)
    try:
        steps = _trade(swapped, f"{values.run_tag}s")
        _run(stack_env, [[(taken.partner, number), *steps[0]]])
        _wait_numbers(pipeline, stack_env, _wanted(swapped))

        def lettered() -> list[Letter]:
            found = dead_letters(stack_env["KAFKA_BOOTSTRAP"], ("dlq.sinks.crm",), letters_from)
            return _ours(found, [taken])

        wait_for(lettered, SYNC_SECONDS, "the taken number's dead letter")
        settled(pipeline)
        # Only the taken number's change, once: the swap beside it applied.
        [letter] = _ours(
            dead_letters(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS, letters_from), pairs
        )
        assert letter.reason == "key_taken", letter.headers
        assert letter.headers[H_ERROR_CLASS] == "KeyTakenError", letter.headers
        constraint = letter.headers[f"{H_CONTEXT_PREFIX}constraint"]
        assert constraint == "accounts_account_number_live_key", letter.headers
        assert _crm_numbers(stack_env, [taken.account]) == {taken.account: taken.ref}
    finally:
        with psycopg.connect(stack_env["CRM_ADMIN_DSN"], autocommit=True) as conn:
            conn.execute("SELECT pg_replication_origin_session_setup(%s)", (HOLDER_ORIGIN,))
            conn.execute("DELETE FROM public.accounts WHERE id = %s", holder)
