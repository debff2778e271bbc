"""New customers typed into both systems at once, while workers die, are never synced twice.

What this proves (DESIGN.md §5.5, with §5.1 underneath it): whatever the timing of new
customers typed into the ERP and the CRM at once, and SIGKILLs of every kind of worker
in between (each sink, the streams worker, both captures), every real-world customer
ends up as exactly one synced pair, and every other record typed for it is held as a
suspected duplicate, never created in the other system.

How:

1. One pipeline (both captures, streams, both sinks) as in ``test_convergence``; ``P``
   new CRM accounts become linked ERP customers (the customers to duplicate).
2. Typists on both systems at once (each with a connection to both) type, at random:
   - ``new``: a customer nobody typed before, into its own system;
   - ``duplicate``: a copy of a linked customer, by one match rule: the VAT id in
     other spacing and case, the e-mail in other case, or the name in other case with
     the same country (the copy's other fields its own);
   - ``twin``: a new customer typed into its own system and, 0-0.5 s later, a copy
     of it into the other one (the hardest case: neither is synced yet);
   - ``twice``: a new customer typed into its own system and, 0-1.5 s later, a copy
     of it into the same system.
   Every record of one real-world customer carries the same city, which no match rule
   reads: the final rows are grouped by it.
3. Meanwhile chaos threads SIGKILL and restart the workers, spread over the run.
4. After the typists stop and the pipeline is quiet, per real-world customer:
   - exactly one *synced pair*: an ERP customer carrying the account
     (``crm_account_id``) whose account carries its customer number
     (``account_number``) — none means a customer was lost, two that it was synced
     twice;
   - every row of the customer is live (nothing in the run archives or deletes a
     customer: an archived or deleted row is one the sync made or changed, counted too);
   - every other row of the customer, in either system, was typed by a typist (the
     sync made nothing but the pair), and the other system's sink holds it
     (``erpcrm_sync.suspects``, status ``held``) with the pair's record there as the
     candidate; no record of the pair is held;
   - ``new``: the typed record is in the pair; ``duplicate``: the pair is the one
     linked before the run. For ``twin`` and ``twice`` customers whichever record the
     streams worker decided first is in the pair (it depends on the timing).
   A failure prints the seed and, per customer that differs, what was typed (system,
   id, rule, when) and what the databases hold; every typed record and the final rows
   are left in ``duplicates-soak.jsonl`` in the pipeline's log directory.

Budgets: ``ERPCRM_SOAK_SECONDS=<n>`` types for ``n`` seconds over 20 linked customers,
one round of kills a minute; otherwise (``CI=true`` or a developer's run) 30 seconds
over 6, about two minutes in all. ``ERPCRM_DUPLICATES_SEED=<int>`` replays the
typists' choices (not their timing, nor the VAT ids, which are new in every run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
import pytest

from streams.cleansing import clean_email, clean_text, clean_vat
from streams.crosswalk import match_keys
from tests.integration.cdc_fixtures import execute
from tests.integration.sink_fixtures import Pipeline, SinkProcess
from tests.integration.soak_fixtures import (
    SYSTEMS,
    Budget,
    Pair,
    dead_workers,
    quiesce,
    run_threads,
    settled,
    soak_pipeline,
    valid_vat,
    victims,
    wait_linked,
)

BUDGET: Final = dataclasses.replace(
    Budget.from_env(os.environ, seconds=30.0, width=6, soak_width=20), writers_per_system=2
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUDGET.timeout_seconds)]

RULES: Final = ("vat", "email", "name_country")
KINDS: Final = {"new": 35, "duplicate": 25, "twin": 25, "twice": 15}
COUNTRY: Final = "DE"


def other(system: str) -> str:
    return "crm" if system == "erp" else "erp"


# ------------------------------------------------------------------ what is typed


@dataclass(frozen=True, slots=True)
class Row:
    """The columns a typist fills, in canonical terms."""

    name: str
    vat: str | None
    email: str
    city: str


@dataclass(frozen=True, slots=True)
class Typed:
    """One record a typist committed: where, its id, what it copies and when."""

    system: str
    id: str
    rule: str
    """``original``, or the match rule the copy shares with the original."""
    at: float
    """Seconds since the typing began."""
    row: Row

    @property
    def key(self) -> str:
        return f"{self.system}:{self.id}"

    def label(self) -> str:
        return f"{self.key} ({self.rule} @{self.at:+.2f}s)"


@dataclass(slots=True)
class Customer:
    """One real-world customer and every record typed for it."""

    label: str
    kind: str
    original: Row
    typed: list[Typed] = field(default_factory=list)
    pair: Pair | None = None
    """For the linked customers made before the run: their pair."""

    def copy(self, rule: str, mark: str) -> Row:
        """A record of the same customer that shares only ``rule`` with the original."""
        vat, email, name = None, f"{mark}@example.org", f"Filiale {mark}"
        if rule == "vat":
            assert self.original.vat is not None
            vat = self.original.vat.lower()
            vat = f" {vat[:5]} {vat[5:8]}.{vat[8:]} "
        elif rule == "email":
            email = self.original.email.upper()
        else:
            name = f"  {self.original.name.upper()} "
        return Row(name, vat, email, self.original.city)


def new_customer(label: str, kind: str, tag: str, rng: random.Random) -> Customer:
    mark = f"{tag}{label}"
    row = Row(f"Nordlicht {mark} GmbH", valid_vat(rng), f"info.{mark}@example.com", f"Ort {mark}")
    return Customer(label, kind, row)


def _insert(conn: psycopg.Connection[tuple[Any, ...]], system: str, row: Row) -> str:
    if system == "erp":
        query = (
            "INSERT INTO public.res_partner (name, vat, email, city, country_code, is_company) "
            "VALUES (%s, %s, %s, %s, %s, true) RETURNING id::text"
        )
    else:
        query = (
            "INSERT INTO public.accounts "
            "(name, vat, email, billing_address_city, billing_address_country) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id::text"
        )
    found = conn.execute(query, (row.name, row.vat, row.email, row.city, COUNTRY)).fetchone()
    assert found is not None
    return str(found[0])


@dataclass(slots=True)
class Typist:
    """One thread typing new customers, with a connection to each system."""

    system: str
    number: int
    dsns: Mapping[str, str]
    linked: Sequence[Customer]
    tag: str
    rng: random.Random
    vats: random.Random
    """The VAT ids' generator: new in every run, so a replayed seed matches no old row."""
    customers: list[Customer] = field(default_factory=list)
    started: float = 0.0
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.system[0]}{self.number}"

    def run(self, stop: threading.Event) -> None:
        self.started = time.monotonic()
        try:
            with (
                psycopg.connect(self.dsns["erp"], autocommit=True) as erp,
                psycopg.connect(self.dsns["crm"], autocommit=True) as crm,
            ):
                conns = {"erp": erp, "crm": crm}
                seq = 0
                while not stop.is_set():
                    seq += 1
                    self._one(conns, seq, stop)
                    stop.wait(self.rng.uniform(0.2, 1.0))
        except Exception as exc:  # reported by the test, with the seed
            self.error = f"{self.name}: {type(exc).__name__}: {exc}"

    def _type(
        self,
        conns: Mapping[str, psycopg.Connection[tuple[Any, ...]]],
        customer: Customer,
        system: str,
        rule: str,
        row: Row,
    ) -> None:
        record = _insert(conns[system], system, row)
        at = time.monotonic() - self.started
        customer.typed.append(Typed(system, record, rule, at, row))

    def _one(
        self,
        conns: Mapping[str, psycopg.Connection[tuple[Any, ...]]],
        seq: int,
        stop: threading.Event,
    ) -> None:
        kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        rule = self.rng.choice(RULES)
        mark = f"{self.tag}{self.name}n{seq}c"
        if kind == "duplicate":
            target = self.rng.choice(self.linked)
            self._type(conns, target, self.system, rule, target.copy(rule, mark))
            return
        customer = new_customer(f"{self.name}n{seq}", kind, self.tag, self.vats)
        self.customers.append(customer)
        self._type(conns, customer, self.system, "original", customer.original)
        if kind == "new":
            return
        stop.wait(self.rng.uniform(0.0, 0.5 if kind == "twin" else 1.5))
        where = other(self.system) if kind == "twin" else self.system
        self._type(conns, customer, where, rule, customer.copy(rule, mark))


def test_copies_share_exactly_their_rule() -> None:
    """The oracle's premise: a copy matches its original by its rule and by nothing stronger."""
    rng = random.Random(0)
    customer = new_customer("t1", "twin", "x0", rng)
    original = match_keys(_canonical(customer.original))
    for rule in RULES:
        copy = match_keys(_canonical(customer.copy(rule, "x0t1n1c")))
        shared = [r for r in ("customer_number", *RULES) if r in copy and copy[r] == original[r]]
        assert shared == [rule], (rule, copy, original)


def _canonical(row: Row) -> dict[str, Any]:
    def value(result: Any) -> Any:
        return getattr(result, "value", None)

    return {
        "name": value(clean_text(row.name)),
        "vat": None if row.vat is None else value(clean_vat(row.vat, COUNTRY)),
        "email": value(clean_email(row.email)),
        "country_code": COUNTRY,
    }


# ----------------------------------------------------------------------- the outcome


@dataclass(frozen=True, slots=True)
class Found:
    """A row of a customer in one system: its id and link columns."""

    system: str
    id: str
    number: str | None
    """ERP: the customer number (``ref``); CRM: ``account_number``."""
    link: str | None
    """ERP: ``crm_account_id``; CRM: None."""
    city: str
    live: bool = True
    """ERP: ``active``; CRM: not ``deleted`` (nothing in the run archives or deletes)."""

    @property
    def key(self) -> str:
        return f"{self.system}:{self.id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The rows of every watched customer and what each sink holds."""

    rows: tuple[Found, ...]
    held: Mapping[tuple[str, str], tuple[str, str]]
    """(target, held record's key) -> (candidate, status)."""


def _read(env: dict[str, str], pipeline: Pipeline, cities: Sequence[str]) -> Outcome:
    rows = [
        Found("erp", str(i), ref, link, city, bool(active))
        for i, ref, link, city, active in execute(
            env["ERP_ADMIN_DSN"],
            "SELECT id::text, ref, crm_account_id::text, city, active FROM public.res_partner "
            "WHERE city = ANY(%s) AND parent_id IS NULL",
            (list(cities),),
        )
    ]
    rows += [
        Found("crm", str(i), number, None, city, not deleted)
        for i, number, city, deleted in execute(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text, account_number, billing_address_city, deleted FROM public.accounts "
            "WHERE billing_address_city = ANY(%s)",
            (list(cities),),
        )
    ]
    held: dict[tuple[str, str], tuple[str, str]] = {}
    for sink in pipeline:
        for key, candidate, status in _suspects(sink):
            held[(sink.target, key)] = (candidate, status)
    return Outcome(tuple(sorted(rows, key=lambda r: (r.city, r.system, r.id))), held)


def _suspects(sink: SinkProcess) -> list[tuple[str, str, str]]:
    return [
        (str(k), str(c), str(s))
        for k, c, s in sink.query(
            "SELECT entity_key, candidate, status FROM {schema}.suspects "
            "WHERE entity = 'customer' ORDER BY entity_key"
        )
    ]


def _verdict(customer: Customer, final: Outcome) -> list[str]:
    """What differs from the promise for one customer (empty: nothing)."""
    rows = [r for r in final.rows if r.city == customer.original.city]
    erp = [r for r in rows if r.system == "erp"]
    crm = {r.id: r for r in rows if r.system == "crm"}
    typed = {t.key for t in customer.typed}
    found = {r.key for r in rows}
    problems = [f"typed record {key} is gone" for key in sorted(typed - found)]
    # Archived or deleted rows count too: a record the sync made and then archived, or
    # a typed one it archived, is no less a broken promise.
    problems += [f"{r.key} is archived or deleted" for r in rows if not r.live]
    pairs = [(p, crm[p.link]) for p in erp if p.link in crm]
    if len(pairs) != 1:
        linked = ", ".join(f"{p.key}<->{a.key}" for p, a in pairs) or "none"
        return [*problems, f"{len(pairs)} synced pairs ({linked}), expected exactly one"]
    partner, account = pairs[0]
    if account.number != partner.number:
        problems.append(
            f"{account.key} has account_number {account.number!r}, "
            f"its partner {partner.key} the customer number {partner.number!r}"
        )
    in_pair = {partner.key, account.key}
    candidate = {"erp": account.id, "crm": partner.id}  # per held record's system
    for row in rows:
        if row.key in in_pair:
            target = other(row.system)
            if (target, row.key) in final.held:
                problems.append(f"{row.key} is synced and also held by the {target} sink")
            continue
        if row.key not in typed:
            problems.append(f"{row.key} was created by the sync beside the pair")
            continue
        target = other(row.system)
        held = final.held.get((target, row.key))
        expected = (candidate[row.system], "held")
        if held != expected:
            problems.append(
                f"typed copy {row.key} is neither synced nor held as expected: the {target} "
                f"sink has {held}, expected {expected}"
            )
    if customer.kind == "new" and not typed <= in_pair:
        problems.append(f"the new customer's record is not in the pair {sorted(in_pair)}")
    if customer.pair is not None:
        linked_before = {f"erp:{customer.pair.partner}", f"crm:{customer.pair.account}"}
        if in_pair != linked_before:
            problems.append(
                f"the pair is {sorted(in_pair)}, linked before: {sorted(linked_before)}"
            )
    return problems


def _report(
    customers: Sequence[Customer],
    verdicts: Mapping[str, list[str]],
    final: Outcome,
    header: Sequence[str],
    limit: int = 40,
) -> str:
    lines = list(header)
    wrong = [c for c in customers if verdicts[c.label]]
    lines.append(
        f"{len(wrong)} of {len(customers)} customers differ; by kind: "
        f"{dict(Counter(c.kind for c in wrong))}"
    )
    for customer in wrong[:limit]:
        lines.append(f"customer {customer.label} ({customer.kind}, city {customer.original.city}):")
        lines.append("  typed: " + "; ".join(t.label() for t in customer.typed))
        rows = [r for r in final.rows if r.city == customer.original.city]
        lines.append(
            "  rows: "
            + "; ".join(
                f"{r.key} number={r.number}" + (f" crm_account_id={r.link}" if r.link else "")
                for r in rows
            )
        )
        holds = [
            f"{target} sink holds {key} (candidate {c}, {s})"
            for (target, key), (c, s) in final.held.items()
            if key in {r.key for r in rows}
        ]
        lines.append("  held: " + ("; ".join(holds) or "nothing"))
        lines += [f"  ! {problem}" for problem in verdicts[customer.label]]
    if len(wrong) > limit:
        lines.append(f"... and {len(wrong) - limit} more")
    return "\n".join(lines)


def _dump(path: Path, customers: Sequence[Customer], final: Outcome) -> None:
    """Every typed record and the final rows and holds as JSON lines, for a post-mortem."""
    with path.open("w") as out:
        for customer in customers:
            line: dict[str, Any] = {"customer": customer.label, "kind": customer.kind}
            for typed in customer.typed:
                out.write(json.dumps({"kind": "typed", **line, **dataclasses.asdict(typed)}) + "\n")
        for row in final.rows:
            out.write(json.dumps({"kind": "row", **dataclasses.asdict(row)}) + "\n")
        for (target, key), (candidate, status) in final.held.items():
            held = {"target": target, "key": key, "candidate": candidate, "status": status}
            out.write(json.dumps({"kind": "held", **held}) + "\n")


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    with soak_pipeline(stack_env, tmp_path_factory.mktemp("duplicates-soak")) as running:
        yield running


def _linked_customers(
    pipeline: Pipeline, env: dict[str, str], tag: str, rng: random.Random, count: int
) -> list[Customer]:
    """``count`` customers typed into the CRM and synced, to be duplicated."""
    customers = [new_customer(f"p{index}", "linked", tag, rng) for index in range(count)]
    with psycopg.connect(env["CRM_DSN"], autocommit=True) as conn:
        accounts = [_insert(conn, "crm", c.original) for c in customers]
    for customer, pair in zip(customers, wait_linked(pipeline, env, accounts), strict=True):
        customer.pair = pair
        customer.typed.append(Typed("crm", pair.account, "original", 0.0, customer.original))
    return customers


def test_new_customers_typed_at_once_into_both_systems_are_synced_once(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    budget = BUDGET
    seed = int(os.environ.get("ERPCRM_DUPLICATES_SEED") or random.SystemRandom().randrange(2**32))
    print(f"duplicates soak: seed={seed} budget={budget}")
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    vats = random.Random(f"{seed}/{tag}")  # new VAT ids every run: a replay matches no old row

    # 1. Linked customers to duplicate, synced through the pipeline.
    linked = _linked_customers(pipeline, stack_env, tag, vats, budget.width)
    settled(pipeline)

    # 2.-3. Typists on both systems and, meanwhile, the kills.
    dsns = {s: stack_env[f"{s.upper()}_DSN"] for s in SYSTEMS}
    typists = [
        Typist(
            system,
            number,
            dsns,
            linked,
            tag,
            random.Random(f"{seed}/{system}/{number}"),
            random.Random(f"{seed}/{system}/{number}/{tag}"),
        )
        for system in SYSTEMS
        for number in range(1, budget.writers_per_system + 1)
    ]
    chaos = victims(pipeline, budget, rng)
    typed_for = run_threads([t.run for t in typists], chaos, seed, budget.write_seconds)

    # 4. Quiet, then every customer against the promise.
    customers = linked + [c for t in typists for c in t.customers]
    cities = [c.original.city for c in customers]
    problems = [e for e in (*(t.error for t in typists), *(v.error for v in chaos)) if e]
    problems += [missed for v in chaos if (missed := v.missed)]
    notes: list[str] = []
    if not quiesce(pipeline, lambda: _read(stack_env, pipeline, cities), notes):
        problems.append("the pipeline did not come to rest; the rows below may still move")
    problems += dead_workers(pipeline)
    final = _read(stack_env, pipeline, cities)
    verdicts = {c.label: _verdict(c, final) for c in customers}
    dump = pipeline.erp.log_dir / "duplicates-soak.jsonl"
    _dump(dump, customers, final)
    kinds = Counter(c.kind for c in customers)
    kinds["duplicate"] = sum(len(c.typed) - 1 for c in linked)
    records = Counter(t.rule for c in customers for t in c.typed)
    if not all(kinds[k] for k in KINDS):
        problems.append(f"not every kind of customer was typed: {dict(kinds)}")
    header = [
        f"seed={seed} (ERPCRM_DUPLICATES_SEED={seed} replays the choices) typed for "
        f"{typed_for:.0f}s: customers {dict(kinds)} (duplicate: copies of the linked ones), "
        f"records {dict(records)}",
        "kills: " + "; ".join(line for v in chaos for line in v.log),
        f"every typed record, the final rows and holds: {dump}",
        *notes,
        *problems,
    ]
    print("\n".join(header))
    assert not problems, _report(customers, verdicts, final, header)
    assert not any(verdicts.values()), _report(customers, verdicts, final, header)
