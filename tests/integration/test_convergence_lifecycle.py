"""Customers and contacts converge under concurrent lifecycle edits from both sides while
workers die: archive and delete, reactivate and undelete, owned fields, contacts.

What this proves (DESIGN.md §5.2, 5.4, 5.5; README "The sinks", "What is written" and
"Both systems converge"): with writers on both systems at once editing a set of linked
pairs, and SIGKILLs of every kind of worker in between (as ``test_convergence``), once
the pipeline is quiet every pair is in exactly the state the documentation promises:

- **shared fields** (name, e-mail, phone, street, city, zip, country): on both sides the
  value of the last write to the field on either side, by real commit time in whole
  milliseconds, an exact tie to the ERP (as ``test_convergence``);
- **owned fields**: the owner's value on both sides. The ERP owns the customer number
  (``ref`` / ``account_number``) and the VAT id; the CRM's edits of them are refused and
  the ERP's value flows back; the ERP's own VAT edits flow to the CRM. The initial VAT,
  typed in the CRM when the account was made, counts as the ERP's first value (the
  ERP customer is made with it);
- **liveness** (ERP ``active``, CRM ``not deleted``): the same on both sides, and the
  one of the last *live/dead change* on either side by real commit time (an exact tie
  to the ERP): an archive (``active = false``) or reactivation (``active = true``) in the
  ERP, a delete (``deleted = true``) or undelete (``deleted = false``) in the CRM. The
  product treats liveness as one more field of the customer: an archived ERP customer
  deletes its account and a reactivated one brings it back, a deleted account archives
  its customer and an undeleted one reactivates it; two changes made concurrently on
  both sides end as the later one, as any field does. Edits of other fields do not
  change liveness;
- **contacts** (CRM -> ERP only, the CRM owns them): the ERP contact person under the
  pair's customer (``parent_id``) holds the last CRM value of the name (``first_name``
  and ``last_name`` joined), e-mail and mobile phone, and is archived exactly while the
  contact is deleted;
- **nothing synced twice**: every customer or contact record of the run in either system
  (found by the run's tag in its name, in any state) is one of the pairs or contacts,
  still linked to its counterpart;
- **no dead letters**: nothing of the run reached a dead-letter topic.

The writers only edit a record that is live on their own side (an application does not
edit what it archived or deleted; the guard is in the ``UPDATE``); each live/dead change
is made only when it changes the flag. The ERP's edits of contact persons are not made:
contacts flow from the CRM only and nothing of the ERP's contact persons is captured.

Budgets as ``test_convergence``: ``ERPCRM_SOAK_SECONDS=<n>`` runs ``n`` seconds over 24
pairs (kills once a minute); otherwise about 45 seconds over 10 pairs, one round of kills.
``ERPCRM_CONVERGENCE_SEED=<int>`` replays the writers' choices (not their timing). A
failure prints the seed and a table of every cell that differs; every write and the
final rows are left in ``lifecycle-writes.jsonl`` in the pipeline's log directory.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import psycopg
import pytest
from psycopg import sql

from streams.cleansing import clean_text
from streams.validation import Ok
from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.convergence_fixtures import (
    FIELDS,
    Edit,
    Field,
    ValueMaker,
    Write,
    Writer,
    commit_time_us,
    diverged,
    dump,
    run_name_pattern,
    run_writers,
    start_pairs,
)
from tests.integration.sink_fixtures import Pipeline, watermarks
from tests.integration.soak_fixtures import (
    DLQ_TOPICS,
    SYSTEMS,
    Budget,
    Pair,
    customer_letter,
    dead_letters,
    dead_workers,
    pipeline_fixture,
    settled,
    valid_vat,
    victims,
)

BUDGET: Final = Budget.from_env(os.environ, seconds=45.0, width=10, soak_width=24)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUDGET.timeout_seconds)]

CONTACTS_PER_PAIR: Final = 2
LIVE: Final = "live"
DEAD: Final = "dead"
FIRST_NAMES: Final = ("Anna", "Jürgen", "Zoë", "Łukasz", "Ève", "Søren", "Ярослава")
LAST_NAMES: Final = ("Müller", "Dubois", "Nowak", "Ó Súilleabháin", "García Márquez", "山田")

OWNED: Final = {"vat": "erp", "account_number": "erp"}
"""Customer cells one system owns: only the owner's writes count for them."""
CUSTOMER_CELLS: Final = (*(f.name for f in FIELDS), *OWNED, LIVE)
CONTACT_FIELDS: Final = ("name", "email", "phone", LIVE)


def contact_cell(number: int, name: str) -> str:
    """The cell of contact ``number`` (of its pair) and field ``name``: ``k0.email``."""
    return f"k{number}.{name}"


def _cells() -> list[str]:
    contacts = [contact_cell(n, name) for n in range(CONTACTS_PER_PAIR) for name in CONTACT_FIELDS]
    return [*CUSTOMER_CELLS, *contacts]


def _counts(write: Write) -> bool:
    """Whether ``write`` competes for its cell: an owned cell's only by its owner, a
    contact's only by the CRM's."""
    if write.field.startswith("k"):
        return write.system == "crm"
    owner = OWNED.get(write.field)
    return owner is None or write.system == owner


@dataclass(frozen=True, slots=True)
class Person:
    """A contact's name as its two CRM columns; the cell value is both, joined."""

    first: str
    last: str

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"

    @classmethod
    def make(cls, rng: random.Random, mark: str) -> Person:
        person = cls(rng.choice(FIRST_NAMES), f"{rng.choice(LAST_NAMES)} {mark}")
        cleaned = clean_text(person.full)
        assert isinstance(cleaned, Ok), person
        assert cleaned.value == person.full, person
        return person


# ------------------------------------------------------------------------ the writers


def _returning() -> sql.SQL:
    """What :class:`Edit` statements return: the writing transaction's ids."""
    return sql.SQL(" RETURNING xmin::text, pg_current_xact_id()::text")


def _set_fields(system: str, fields: Sequence[Field], live: sql.Composable) -> sql.Composed:
    """``UPDATE`` of a live customer's ``fields``, only when each of them changes."""
    table = "res_partner" if system == "erp" else "accounts"
    columns = [sql.Identifier(f.column(system)) for f in fields]
    return (
        sql.SQL("UPDATE {} SET {} WHERE id = %s AND {} AND {}").format(
            sql.Identifier("public", table),
            sql.SQL(", ").join(sql.SQL("{} = %s").format(c) for c in columns),
            live,
            sql.SQL(" AND ").join(sql.SQL("{} IS DISTINCT FROM %s").format(c) for c in columns),
        )
        + _returning()
    )


def _set_flag(table: str, column: str) -> sql.Composed:
    """``UPDATE`` of one row's boolean ``column`` (parameters: the value, the id, the value
    again), only when it changes."""
    return (
        sql.SQL("UPDATE {} SET {} = %s WHERE id = %s AND {} IS DISTINCT FROM %s").format(
            sql.Identifier("public", table), sql.Identifier(column), sql.Identifier(column)
        )
        + _returning()
    )


def _set_contact(column: str) -> sql.Composed:
    """``UPDATE`` of a live contact's ``column``, only when it changes."""
    return (
        sql.SQL(
            "UPDATE public.contacts SET {col} = %s WHERE id = %s AND NOT deleted"
            " AND {col} IS DISTINCT FROM %s"
        ).format(col=sql.Identifier(column))
        + _returning()
    )


_CONTACT_NAME: Final = (
    sql.SQL("UPDATE public.contacts SET first_name = %s, last_name = %s")
    + sql.SQL(" WHERE id = %s AND NOT deleted")
    + _returning()
)


ERP_LIVE: Final = sql.SQL("active")
CRM_LIVE: Final = sql.SQL("NOT deleted")


@dataclass(slots=True)
class LifecycleWriter(Writer):
    """Edits a random pair per statement: a shared field, a field the other system owns
    (the CRM) or its own (the ERP's VAT), archive/delete or reactivate/undelete, and (the
    CRM) a contact's name, e-mail, phone or deletion."""

    contacts: Mapping[int, Sequence[str]] = field(default_factory=dict)

    def edit(self, seq: int) -> Edit:
        pair = self.rng.choice(self.pairs)
        if self.system == "erp":
            kind = self.rng.choices(("shared", "owned", "live"), weights=(65, 10, 25))[0]
        else:
            kinds = ("shared", "owned", "live", "contact", "contact live")
            kind = self.rng.choices(kinds, weights=(40, 10, 15, 25, 10))[0]
        if kind == "shared":
            width = self.rng.choices((1, 2), weights=(80, 20))[0]
            fields = self.rng.sample(FIELDS, width)
            values = [self.values.make(f.name, self.rng, self.name, seq) for f in fields]
            return self._fields(pair, fields, values)
        if kind == "owned":
            # The ERP edits its own VAT id; the CRM either of the ERP's fields.
            cell = "vat" if self.system == "erp" else self.rng.choice(tuple(OWNED))
            mark = f"X-{self.values.run_tag}{self.name}n{seq}"
            value = valid_vat(self.rng) if cell == "vat" else mark
            return self._fields(pair, [Field(cell, "vat", cell)], [value])
        alive = self.rng.random() < 0.5
        value = LIVE if alive else DEAD
        if kind == "live":
            if self.system == "erp":
                statement = _set_flag("res_partner", "active")
                return Edit(statement, [alive, pair.partner, alive], pair.index, (LIVE,), (value,))
            statement = _set_flag("accounts", "deleted")
            params = [not alive, pair.account, not alive]
            return Edit(statement, params, pair.index, (LIVE,), (value,))
        number = self.rng.randrange(CONTACTS_PER_PAIR)
        contact = self.contacts[pair.index][number]
        if kind == "contact live":
            statement = _set_flag("contacts", "deleted")
            params = [not alive, contact, not alive]
            return Edit(statement, params, pair.index, (contact_cell(number, LIVE),), (value,))
        name = self.rng.choice(CONTACT_FIELDS[:-1])
        named = (contact_cell(number, name),)
        if name == "name":
            person = Person.make(self.rng, f"{self.values.run_tag}{self.name}n{seq}")
            params = [person.first, person.last, contact]
            return Edit(_CONTACT_NAME, params, pair.index, named, (person.full,))
        made = self.values.make(name, self.rng, self.name, seq)
        statement = _set_contact("email" if name == "email" else "phone_mobile")
        return Edit(statement, [made, contact, made], pair.index, named, (made,))

    def _fields(self, pair: Pair, fields: Sequence[Field], values: Sequence[str | None]) -> Edit:
        live = ERP_LIVE if self.system == "erp" else CRM_LIVE
        statement = _set_fields(self.system, fields, live)
        params = [*values, pair.key(self.system), *values]
        return Edit(statement, params, pair.index, tuple(f.name for f in fields), tuple(values))


# ------------------------------------------------------------------ setting up


def _contacts(
    pipeline: Pipeline,
    env: dict[str, str],
    values: ValueMaker,
    rng: random.Random,
    pairs: Sequence[Pair],
) -> tuple[dict[int, list[str]], list[Write]]:
    """:data:`CONTACTS_PER_PAIR` new CRM contacts under each pair's account, once the ERP
    holds each of them as a contact person of the pair's customer; their first writes."""
    made: dict[int, list[str]] = {}
    initial: list[Write] = []
    with psycopg.connect(env["CRM_DSN"], autocommit=True) as conn:
        for pair in pairs:
            for number in range(CONTACTS_PER_PAIR):
                person = Person.make(rng, f"{values.run_tag}in{pair.index}{number}")
                email = values.make("email", rng, "i", pair.index, empty=False)
                phone = values.make("phone", rng, "i", pair.index, empty=False)
                row = conn.execute(
                    "INSERT INTO public.contacts (account_id, first_name, last_name, email,"
                    " phone_mobile) VALUES (%s, %s, %s, %s, %s) RETURNING id::text, xmin::text",
                    (pair.account, person.first, person.last, email, phone),
                ).fetchone()
                assert row is not None
                made.setdefault(pair.index, []).append(str(row[0]))
                at = commit_time_us(conn, str(row[1]))
                cells = {"name": person.full, "email": email, "phone": phone, LIVE: LIVE}
                initial += [
                    Write(
                        "crm", pair.index, contact_cell(number, name), value, at, "init", pair.index
                    )
                    for name, value in cells.items()
                ]
    wanted = {c: p.partner for p in pairs for c in made[p.index]}

    def arrived() -> bool:
        assert not (dead := dead_workers(pipeline)), "\n".join(dead)
        found = execute(
            env["ERP_ADMIN_DSN"],
            "SELECT crm_contact_id::text, parent_id FROM public.res_partner"
            " WHERE crm_contact_id = ANY(%s::uuid[])",
            (list(wanted),),
        )
        return dict(found) == wanted

    wait_for(arrived, 180, f"{len(wanted)} contacts in the ERP", interval=0.5)
    return made, initial


# ----------------------------------------------------------------------- the outcome


def _liveness(alive: bool) -> str:
    return LIVE if alive else DEAD


def _read(
    env: dict[str, str], pairs: Sequence[Pair], contacts: Mapping[int, Sequence[str]]
) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (system, pair index): every cell as the system holds it now."""
    state: dict[tuple[str, int], dict[str, Any]] = {}
    shared = {s: [sql.Identifier(f.column(s)) for f in FIELDS] for s in SYSTEMS}
    erp = sql.SQL(
        "SELECT id::text, {}, vat, ref, active FROM public.res_partner WHERE id = ANY(%s)"
    )
    crm = sql.SQL(
        "SELECT id::text, {}, vat, account_number, NOT deleted FROM public.accounts"
        " WHERE id = ANY(%s::uuid[])"
    )
    for system, query, keys in (
        ("erp", erp, [p.partner for p in pairs]),
        ("crm", crm, [p.account for p in pairs]),
    ):
        by_key = {str(p.key(system)): p.index for p in pairs}
        columns = sql.SQL(", ").join(shared[system])
        for key, *row in execute(
            env[f"{system.upper()}_ADMIN_DSN"], query.format(columns), (keys,)
        ):
            *values, vat, number, alive = row
            cells = {f.name: v for f, v in zip(FIELDS, values, strict=True)}
            cells |= {"vat": vat, "account_number": number, LIVE: _liveness(alive)}
            state[(system, by_key[key])] = cells
    where = {c: (index, number) for index, ids in contacts.items() for number, c in enumerate(ids)}
    people = {
        "erp": "SELECT crm_contact_id::text, name, email, mobile, active FROM public.res_partner"
        " WHERE crm_contact_id = ANY(%s::uuid[])",
        "crm": "SELECT id::text, concat_ws(' ', first_name, last_name), email, phone_mobile,"
        " NOT deleted FROM public.contacts WHERE id = ANY(%s::uuid[])",
    }
    for system, text in people.items():
        for contact, name, email, phone, alive in execute(
            env[f"{system.upper()}_ADMIN_DSN"], text, (list(where),)
        ):
            index, number = where[str(contact)]
            found = {"name": name, "email": email, "phone": phone, LIVE: _liveness(alive)}
            state.setdefault((system, index), {}).update(
                {contact_cell(number, k): v for k, v in found.items()}
            )
    return state


def _records(
    env: dict[str, str], run_tag: str, pairs: Sequence[Pair], contacts: Mapping[int, Sequence[str]]
) -> list[str]:
    """What differs from "each pair is one linked record on each side, each contact one
    contact person of its pair's ERP customer", over every record of the run.

    Every customer and contact name of the run ends in the run's tag and a writer's mark,
    in any state: a record synced twice is found by it.
    """
    pattern = run_name_pattern(run_tag)
    erp = {
        str(i): (None if a is None else str(a), None if c is None else str(c), parent)
        for i, a, c, parent in execute(
            env["ERP_ADMIN_DSN"],
            "SELECT id::text, crm_account_id::text, crm_contact_id::text, parent_id"
            " FROM public.res_partner WHERE name ~ %s",
            (pattern,),
        )
    }
    crm = {
        str(i)
        for (i,) in execute(
            env["CRM_ADMIN_DSN"], "SELECT id::text FROM public.accounts WHERE name ~ %s", (pattern,)
        )
    }
    expected_erp: dict[str, tuple[str | None, str | None, int | None]] = {
        str(p.partner): (p.account, None, None) for p in pairs
    }
    contact_rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT id::text, crm_contact_id::text FROM public.res_partner"
        " WHERE crm_contact_id = ANY(%s::uuid[])",
        ([c for ids in contacts.values() for c in ids],),
    )
    parents = {c: p.partner for p in pairs for c in contacts[p.index]}
    found = []
    for row_id, contact in contact_rows:
        expected_erp[str(row_id)] = (None, str(contact), parents[str(contact)])
    for row_id, expected in expected_erp.items():
        row = erp.pop(row_id, "<not found by the run's tag>")
        if row != expected:
            found.append(
                f"ERP record {row_id} is (crm_account_id, crm_contact_id, parent_id) = {row},"
                f" expected {expected}"
            )
    for pair in pairs:
        if pair.account not in crm:
            found.append(
                f"pair {pair.index}: CRM account {pair.account} not found by the run's tag"
            )
        crm.discard(pair.account)
    found += [f"ERP record {i} {row} made beside the pairs" for i, row in sorted(erp.items())]
    found += [f"CRM account {i} made beside the pairs" for i in sorted(crm)]
    return found


# ------------------------------------------------------------------------------ tests


pipeline = pipeline_fixture("lifecycle")


def test_generated_contact_names_are_canonical() -> None:
    """The oracle's premise for contacts: a generated name is what the ERP stores."""
    rng = random.Random(0)
    for seq in range(300):
        Person.make(rng, f"t0e1n{seq}")  # asserts canonical form itself


def test_concurrent_lifecycle_edits_and_kills_converge(
    pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    """Pairs with contacts, lifecycle writers on both systems while every worker kind is
    SIGKILLed and restarted, then every cell against the documented outcome."""
    budget = BUDGET
    # 1. Linked pairs with contacts, made through the pipeline; the inserts are the first
    # writes (the VAT id as the ERP's: it owns the value its customer was made with).
    seed, rng, values, pairs, made = start_pairs(
        pipeline, stack_env, budget, "lifecycle convergence"
    )
    initial = [replace(w, system="erp") if w.field == "vat" else w for w in made]
    initial += [Write("erp", p.index, "account_number", p.ref, 0, "init", p.index) for p in pairs]
    initial += [replace(w, field=LIVE, value=LIVE) for w in made if w.field == "name"]
    contacts, people = _contacts(pipeline, stack_env, values, rng, pairs)
    initial += people
    settled(pipeline)
    letters_from = watermarks(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS)

    # 2. Writers on both systems and, meanwhile, the kills; then quiet.
    def writer(system: str, number: int, own: random.Random) -> Writer:
        dsn = stack_env[f"{system.upper()}_DSN"]
        return LifecycleWriter(system, number, dsn, pairs, values, own, contacts=contacts)

    def rows() -> object:
        return sorted((k, sorted(v.items())) for k, v in _read(stack_env, pairs, contacts).items())

    run = run_writers(pipeline, writer, victims(pipeline, budget, rng), seed, budget, rows)

    # 3. Every cell against the documented outcome.
    problems = run.problems
    writes = initial + run.writes
    kinds = Counter(f"{w.system} {w.field.split('.')[-1]}" for w in writes if w.writer != "init")
    missing = [
        k for k in ("erp live", "crm live", "crm vat", "erp vat", "crm name") if not kinds[k]
    ]
    if missing:
        problems.append(f"the writers made no {missing} writes: {dict(kinds)}")
    state = _read(stack_env, pairs, contacts)
    divergences = diverged(state, pairs, writes, _cells(), _counts)
    problems += _records(stack_env, values.run_tag, pairs, contacts)
    letters = dead_letters(stack_env["KAFKA_BOOTSTRAP"], DLQ_TOPICS, letters_from)
    problems += [
        f"dead letter on {x.topic}: {x.reason} {x.headers}" for x in letters if customer_letter(x)
    ]
    path = pipeline.erp.log_dir / "lifecycle-writes.jsonl"
    dump(path, writes, state, pairs)
    written = f"writes by kind {dict(sorted(kinds.items()))}"
    run.verdict(pipeline, seed, len(pairs), written, "kills", path, divergences, writes)
