"""What the randomized convergence tests share: canonical values, writers, the verdict.

``test_convergence`` (shared customer fields) and ``test_convergence_lifecycle`` (the
same plus owned fields, archiving and deleting, contacts) run writer threads on both
systems against one pipeline while workers die, then compare every cell of every pair
with the recorded writes. This module holds what does not depend on which cells:

- :data:`FIELDS` and :class:`ValueMaker`: the shared customer fields and canonical,
  unique values for them (a value names the write it came from);
- :class:`Write`, :class:`Edit` and :class:`Writer`: a thread that makes the edits a
  subclass chooses (:meth:`Writer.edit`) through one connection, reconnecting after an
  outage, and records each committed one with its real commit time;
- :func:`diverged`, :func:`report`, :func:`dump`, :func:`sink_summary`: the cells that
  differ from the last write, a table of them with the seed, the post-mortem file.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import phonenumbers
import psycopg
from psycopg import sql

from streams.cleansing import (
    clean_country,
    clean_email,
    clean_phone,
    clean_text,
    clean_upper,
)
from streams.validation import Failed, Ok
from tests.integration.cdc_fixtures import execute
from tests.integration.sink_fixtures import Pipeline
from tests.integration.soak_fixtures import (
    SYSTEMS,
    Budget,
    Pair,
    Victim,
    dead_workers,
    quiesce,
    run_threads,
    valid_vat,
    wait_linked,
)

COUNTRIES: Final = ("DE", "FR", "GB", "AT", "NL", "IT", "ES")
PHONE_PREFIXES: Final = ("+4420", "+331", "+4930")  # London, Paris, Berlin; 8 digits follow
EMPTY_SHARE: Final = 0.1
LONG_SHARE: Final = 0.15

NAMES: Final = (
    "Müller & Söhne ÅB 京都",
    "Société Générale d'Équipement",
    "Łódź Trading Sp. z o.o.",
    "Ελληνικά Τρόφιμα",
    "O'Brien & Ó Súilleabháin Ltd",
    "Øresund Shipping ApS",
    "株式会社 東京商事",
    "Ærø Fisk & Skaldyr",
)
STREETS: Final = (
    "Königstraße",
    "Rue de l'Église",
    "Calle de Alcalá",
    "Via dei Fori Imperiali",
    "Baker Street",
    "Ulica Świętokrzyska",
)
CITIES: Final = ("Köln", "Zürich", "São Paulo", "Kraków", "京都市", "Saint-Étienne", "Málaga")
EMAIL_LOCALS: Final = ("info", "sales", "o.brien", "anna-maria", "buyer_eu", "ap+invoices")
EMAIL_DOMAINS: Final = ("example.com", "example.org", "example.net", "mail.example.com")
ZIP_HEADS: Final = ("SW1A", "EC1V", "75008", "10115", "1010", "28013")


# ------------------------------------------------------------------ fields and values


@dataclass(frozen=True, slots=True)
class Field:
    """A shared customer field: its canonical name and its column in each system."""

    name: str
    erp: str
    crm: str
    nullable: bool = True

    def column(self, system: str) -> str:
        return self.erp if system == "erp" else self.crm


FIELDS: Final = (
    Field("name", "name", "name", nullable=False),
    Field("email", "email", "email"),
    Field("phone", "phone", "phone_office"),
    Field("street", "street", "billing_address_street"),
    Field("city", "city", "billing_address_city"),
    Field("zip", "zip", "billing_address_postalcode"),
    Field("country", "country_code", "billing_address_country", nullable=False),
)
NUMBER: Final = Field("number", "ref", "account_number", nullable=False)
"""The customer number as a cell: the ERP owns it (``ref``), the CRM shows it."""
CUSTOMER_TABLE: Final = {"erp": "res_partner", "crm": "accounts"}


def _kept(result: Ok[str | None] | Failed, value: str) -> bool:
    return isinstance(result, Ok) and result.value == value


def is_canonical(name: str, value: str | None) -> bool:
    """Whether the streams stage would publish ``value`` unchanged for field ``name``."""
    if value is None:
        return True
    if name in ("name", "street", "city"):
        return _kept(clean_text(value), value) and unicodedata.is_normalized("NFC", value)
    if name == "email":
        return _kept(clean_email(value), value)
    if name == "phone":
        number = phonenumbers.parse(value, None)
        return phonenumbers.is_valid_number(number) and all(
            _kept(clean_phone(value, region), value) for region in (*COUNTRIES, None)
        )
    if name == "zip":
        return _kept(clean_upper(value), value)
    if name == "country":
        return _kept(clean_country(value), value)
    raise AssertionError(f"unknown field {name}")


class ValueMaker:
    """Canonical, (nearly always) unique values; the writer and sequence are in the text.

    Unique values let a differing cell name the write it came from. Countries repeat
    (there are few), phones are random digits.
    """

    def __init__(self, run_tag: str) -> None:
        self.run_tag = run_tag

    def make(
        self, name: str, rng: random.Random, writer: str, seq: int, *, empty: bool = True
    ) -> str | None:
        fld = next(f for f in FIELDS if f.name == name)
        if empty and fld.nullable and rng.random() < EMPTY_SHARE:
            return None
        value = self._make(name, rng, f"{self.run_tag}{writer}n{seq}")
        assert is_canonical(name, value), f"generated a non-canonical {name}: {value!r}"
        return value

    @staticmethod
    def _make(name: str, rng: random.Random, mark: str) -> str:
        long = rng.random() < LONG_SHARE
        if name == "name":
            filler = " Holding International" * 8 if long else ""
            return f"{rng.choice(NAMES)}{filler} {mark}"
        if name == "email":
            local = f"{rng.choice(EMAIL_LOCALS)}.{mark}"
            if long:
                local = (local + "." + "x" * 64)[:64].rstrip(".")
            return f"{local}@{rng.choice(EMAIL_DOMAINS)}"
        if name == "phone":
            while True:
                number = rng.choice(PHONE_PREFIXES) + "".join(
                    rng.choice("0123456789") for _ in range(8)
                )
                if phonenumbers.is_valid_number(phonenumbers.parse(number, None)):
                    return number
        if name == "street":
            extra = ", Hinterhaus, 3. OG, Zimmer 12, c/o Buchhaltung" * 3 if long else ""
            return f"{rng.choice(STREETS)} {rng.randint(1, 299)}{extra} {mark}"
        if name == "city":
            extra = " an der Großen Mühlenbrücke" * 4 if long else ""
            return f"{rng.choice(CITIES)}{extra} {mark}"
        if name == "zip":
            return f"{rng.choice(ZIP_HEADS)} {mark.upper()}"
        if name == "country":
            return rng.choice(COUNTRIES)
        raise AssertionError(f"unknown field {name}")


# ------------------------------------------------------------------ the record of writes


@dataclass(frozen=True, slots=True)
class Write:
    """One field of one committed user transaction, with its real commit time."""

    system: str
    pair: int
    field: str
    value: str | None
    commit_us: int
    writer: str
    seq: int

    @property
    def commit_ms(self) -> int:
        # Milliseconds, truncated: the precision of the events' ``source_ts_ms``.
        return self.commit_us // 1000

    @property
    def rank(self) -> tuple[int, int, int]:
        """Later wins: the millisecond, then the ERP on a tie, then the exact time."""
        return (self.commit_ms, 1 if self.system == "erp" else 0, self.commit_us)

    def label(self, t0_us: int) -> str:
        return f"{self.system}:{self.writer}#{self.seq} @{(self.commit_us - t0_us) / 1e6:+.3f}s"


def commit_time_us(conn: psycopg.Connection[tuple[Any, ...]], xid: str) -> int:
    """The commit time of transaction ``xid`` in µs since the epoch."""
    row = conn.execute(
        "SELECT (extract(epoch FROM pg_xact_commit_timestamp(%s::text::xid)) * 1000000)::bigint",
        (xid,),
    ).fetchone()
    assert row is not None
    assert row[0] is not None, f"no commit timestamp for xid {xid}"
    return int(row[0])


@dataclass(frozen=True, slots=True)
class Pending:
    """A write whose ``COMMIT`` was sent: recorded once its transaction is known committed."""

    xid: str
    xid8: str
    pair: int
    fields: tuple[str, ...]
    values: tuple[str | None, ...]
    seq: int


@dataclass(frozen=True, slots=True)
class Edit:
    """One statement a writer makes: it returns ``xmin::text, pg_current_xact_id()::text``
    of the row it changed, or no row when it changes nothing (its guard does not hold);
    once committed it is recorded as one :class:`Write` per cell in ``fields``."""

    statement: sql.Composed
    params: Sequence[Any]
    pair: int
    fields: tuple[str, ...]
    values: tuple[str | None, ...]


@dataclass(slots=True)
class Writer:
    """One thread editing one system through its own connection until told to stop.

    The database may go away under it (an outage): the writer connects again and goes
    on. A write whose ``COMMIT`` got no answer is recorded only if its transaction
    committed after all (``pg_xact_status`` once the database is back), with its real
    commit time; otherwise it never happened. A subclass chooses the edits
    (:meth:`edit`).
    """

    system: str
    number: int
    dsn: str
    pairs: Sequence[Pair]
    values: ValueMaker
    rng: random.Random
    writes: list[Write] = field(default_factory=list)
    unchanged: int = 0
    disconnects: int = 0
    unanswered: Counter[str] = field(default_factory=Counter)
    """Commits without an answer, by how they turned out (committed, aborted)."""
    error: str | None = None
    _pending: Pending | None = None
    _lost_at_us: int = 2**63
    """When the connection of the pending write was found lost (µs since the epoch)."""

    @property
    def name(self) -> str:
        """``e1``, ``c2``, ...: the system's initial and the writer's number."""
        return f"{self.system[0]}{self.number}"

    def run(self, stop: threading.Event) -> None:
        seq = 0
        try:
            while not stop.is_set():
                try:
                    with psycopg.connect(self.dsn, autocommit=True, connect_timeout=3) as conn:
                        self._settle(conn)
                        while not stop.is_set():
                            seq += 1
                            self._one(conn, seq)
                            stop.wait(self.rng.uniform(0.02, 0.25))
                except psycopg.OperationalError:  # the database is away: connect again
                    self.disconnects += 1
                    if self._pending is not None:  # the first loss since its COMMIT
                        self._lost_at_us = min(self._lost_at_us, time.time_ns() // 1000)
                    stop.wait(0.3)
            if self._pending is not None:  # stopped while the database was away
                self._settle_when_back()
        except Exception as exc:  # reported by the test, with the seed
            self.error = f"{self.name}: {type(exc).__name__}: {exc}"

    def edit(self, seq: int) -> Edit | None:
        """The next edit, drawn from :attr:`rng`; None: none this time."""
        raise NotImplementedError

    def _one(self, conn: psycopg.Connection[tuple[Any, ...]], seq: int) -> None:
        edit = self.edit(seq)
        if edit is None:
            return
        with conn.transaction():
            row = conn.execute(edit.statement, edit.params).fetchone()
            if row is None:  # nothing to change (a guard did not hold): no write
                self.unchanged += 1
                return
            # From here on the write may commit without the answer reaching us.
            self._pending = pending = Pending(
                str(row[0]), str(row[1]), edit.pair, edit.fields, edit.values, seq
            )
        self._record(pending, commit_time_us(conn, pending.xid))

    def _record(self, pending: Pending, commit_us: int) -> None:
        for name, value in zip(pending.fields, pending.values, strict=True):
            self.writes.append(
                Write(self.system, pending.pair, name, value, commit_us, self.name, pending.seq)
            )
        self._pending = None

    def _settle_when_back(self, timeout: float = 180.0) -> None:
        """:meth:`_settle` once the database takes connections again (it may still be
        replaying its WAL after a crash: "the database system is starting up")."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    self._settle(conn)
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _settle(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """Record the write whose commit got no answer if it committed; forget it if not.

        After an immediate shutdown the server hands out again the transaction ids it
        had not written to its WAL: an id "in the future" never committed, and one that
        committed after the connection was lost is another transaction's.
        """
        pending, lost_at_us = self._pending, self._lost_at_us
        if pending is None:
            self._lost_at_us = 2**63
            return
        try:
            row = conn.execute("SELECT pg_xact_status(%s::xid8)", (pending.xid8,)).fetchone()
            status = None if row is None else str(row[0])
        except psycopg.errors.InvalidParameterValue:  # "transaction ID … is in the future"
            status = "lost in a crash"
        assert status != "in progress", f"transaction {pending.xid8} is still in progress"
        commit_us = commit_time_us(conn, pending.xid) if status == "committed" else 0
        if status == "committed" and commit_us > lost_at_us:
            status = "id reused after a crash"
        self.unanswered[str(status)] += 1
        self._pending, self._lost_at_us = None, 2**63  # decided (a lost connection above: not yet)
        if status == "committed":
            self._record(pending, commit_us)


def update_fields(system: str, fields: Sequence[Field]) -> sql.Composed:
    """``UPDATE`` of a customer's ``fields`` that only happens when each of them changes;
    parameters: the values, the record's id, the values again. Returns the writing
    transaction's id (``xid``, for its commit time) and full id (``xid8``, for its status
    after a lost connection)."""
    columns = [sql.Identifier(f.column(system)) for f in fields]
    return sql.SQL(
        "UPDATE {} SET {} WHERE id = %s AND {} RETURNING xmin::text, pg_current_xact_id()::text"
    ).format(
        sql.Identifier("public", CUSTOMER_TABLE[system]),
        sql.SQL(", ").join(sql.SQL("{} = %s").format(c) for c in columns),
        sql.SQL(" AND ").join(sql.SQL("{} IS DISTINCT FROM %s").format(c) for c in columns),
    )


class FieldWriter(Writer):
    """Edits one to three shared fields of a random pair per statement."""

    def edit(self, seq: int) -> Edit | None:
        pair = self.rng.choice(self.pairs)
        width = self.rng.choices((1, 2, 3), weights=(70, 20, 10))[0]
        fields = self.rng.sample(FIELDS, width)
        values = [self.values.make(f.name, self.rng, self.name, seq) for f in fields]
        return Edit(
            update_fields(self.system, fields),
            [*values, pair.key(self.system), *values],
            pair.index,
            tuple(f.name for f in fields),
            tuple(values),
        )


def create_pairs(
    pipeline: Pipeline, env: dict[str, str], values: ValueMaker, rng: random.Random, count: int
) -> tuple[list[Pair], list[Write]]:
    """``count`` new CRM accounts, each linked to the ERP customer the sinks made for it.

    Each account gets a value of every shared field and a valid VAT id; each of them is
    recorded as a first write of the CRM, at the insert's commit time. The VAT ids are
    drawn from the run's tag, not from ``rng``: a run replaying a seed on a stack that
    ran it before makes new customers, not copies the sync would hold as duplicates.
    """
    initial: list[Write] = []
    accounts: list[str] = []
    vats = random.Random(values.run_tag)
    with psycopg.connect(env["CRM_DSN"], autocommit=True) as conn:
        for index in range(count):
            row_values = {f.name: values.make(f.name, rng, "i", index, empty=False) for f in FIELDS}
            vat = valid_vat(vats)
            columns = [sql.Identifier(f.crm) for f in FIELDS] + [sql.Identifier("vat")]
            row = conn.execute(
                sql.SQL(
                    "INSERT INTO public.accounts ({}) VALUES ({}) RETURNING id::text, xmin::text"
                ).format(
                    sql.SQL(", ").join(columns),
                    sql.SQL(", ").join([sql.Placeholder()] * len(columns)),
                ),
                [*row_values.values(), vat],
            ).fetchone()
            assert row is not None
            accounts.append(str(row[0]))
            commit_us = commit_time_us(conn, str(row[1]))
            initial += [
                Write("crm", index, name, value, commit_us, "init", index)
                for name, value in [*row_values.items(), ("vat", vat)]
            ]

    return wait_linked(pipeline, env, accounts), initial


# ------------------------------------------------------------------ the pairs at rest


def read_pairs(
    env: dict[str, str], pairs: Sequence[Pair], fields: Sequence[Field] = FIELDS
) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (system, pair index): the cells of ``fields`` as the system holds them now."""
    state: dict[tuple[str, int], dict[str, Any]] = {}
    for system in SYSTEMS:
        by_key = {str(p.key(system)): p.index for p in pairs}
        query = sql.SQL("SELECT id::text, {} FROM {} WHERE id::text = ANY(%s)").format(
            sql.SQL(", ").join(sql.Identifier(f.column(system)) for f in fields),
            sql.Identifier("public", CUSTOMER_TABLE[system]),
        )
        for key, *row in execute(env[f"{system.upper()}_ADMIN_DSN"], query, (list(by_key),)):
            state[(system, by_key[key])] = {
                f.name: value for f, value in zip(fields, row, strict=True)
            }
    return state


def pair_rows(
    env: dict[str, str], pairs: Sequence[Pair], fields: Sequence[Field] = FIELDS
) -> object:
    """The pairs' rows (:func:`read_pairs`), comparable: what :func:`quiesce` watches."""
    return sorted((k, sorted(v.items())) for k, v in read_pairs(env, pairs, fields).items())


def run_name_pattern(run_tag: str) -> str:
    """The regular expression matching every name a run's writers made (its mark ends
    each one: ``" <tag><writer>n<seq>"``, writer ``e1``, ``c2``, ``i``, ...)."""
    return f" {run_tag}[a-z][0-9]*n[0-9]+$"


def pair_records(
    env: dict[str, str],
    run_tag: str,
    pairs: Sequence[Pair],
    numbers: Mapping[int, str | None] | None = None,
) -> list[str]:
    """What differs from "each pair is still exactly one linked, live record on each
    side, with its customer number": ``numbers`` by pair index, else the one it was
    linked with (:attr:`Pair.ref`).

    Every customer record of the run, in either system and in any state (archived or
    deleted ones too), carries the run's tag in its name, which is never empty: a record
    the sync made beside a pair (a customer synced twice, an echo taken for a new one)
    is found by it, and so is a pair whose link the sync broke.
    """
    pattern = run_name_pattern(run_tag)
    erp = {
        str(i): (None if link is None else str(link), ref, active)
        for i, link, ref, active in execute(
            env["ERP_ADMIN_DSN"],
            "SELECT id::text, crm_account_id::text, ref, active FROM public.res_partner"
            " WHERE name ~ %s",
            (pattern,),
        )
    }
    crm = {
        str(i): (number, deleted)
        for i, number, deleted in execute(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text, account_number, deleted FROM public.accounts WHERE name ~ %s",
            (pattern,),
        )
    }
    found = []
    for pair in pairs:
        number = pair.ref if numbers is None else numbers[pair.index]
        partner = erp.pop(str(pair.partner), None)
        if partner != (pair.account, number, True):
            found.append(
                f"pair {pair.index}: ERP customer {pair.partner} is (crm_account_id, ref, active)"
                f" = {partner}, expected {(pair.account, number, True)}"
            )
        account = crm.pop(pair.account, None)
        if account != (number, False):
            found.append(
                f"pair {pair.index}: CRM account {pair.account} is (account_number, deleted)"
                f" = {account}, expected {(number, False)}"
            )
    found += [f"ERP customer {i} {row} made beside the pairs" for i, row in sorted(erp.items())]
    found += [f"CRM account {i} {row} made beside the pairs" for i, row in sorted(crm.items())]
    return found


def seed_from_env() -> int:
    """``ERPCRM_CONVERGENCE_SEED``, else a fresh random seed."""
    return int(os.environ.get("ERPCRM_CONVERGENCE_SEED") or random.SystemRandom().randrange(2**32))


class Start(NamedTuple):
    """A convergence soak's start: its seed, the generator of its choices, the run's
    values and its linked pairs with their first writes (the accounts' inserts)."""

    seed: int
    rng: random.Random
    values: ValueMaker
    pairs: list[Pair]
    initial: list[Write]


def start_pairs(pipeline: Pipeline, env: dict[str, str], budget: Budget, what: str) -> Start:
    """The seed (:func:`seed_from_env`, printed with ``what`` and the budget), a fresh run
    tag, and ``budget.width`` linked pairs made through the pipeline (:func:`create_pairs`)."""
    seed = seed_from_env()
    print(f"{what}: seed={seed} budget={budget}")
    rng = random.Random(seed)
    values = ValueMaker(uuid.uuid4().hex[:4])
    pairs, initial = create_pairs(pipeline, env, values, rng, budget.width)
    return Start(seed, rng, values, pairs, initial)


@dataclass(slots=True)
class Run:
    """What the writers did while the chaos went on, and what went wrong beside the values."""

    writers: list[Writer]
    chaos: list[Victim]
    edited: float
    """Seconds the writers wrote."""
    t0_us: int
    """When the edits began (µs since the epoch; the stack shares this host's clock)."""
    problems: list[str]
    notes: list[str]
    """Shown, not failing: the verdict is on the values at rest."""

    @property
    def writes(self) -> list[Write]:
        """Every committed write of every writer."""
        return [w for writer in self.writers for w in writer.writes]

    def verdict(
        self,
        pipeline: Pipeline,
        seed: int,
        pairs: int,
        written: str,
        what: str,
        path: Path,
        divergences: Sequence[Divergence],
        writes: Sequence[Write],
    ) -> None:
        """Print the run's summary; fail with it and the table of ``divergences`` if there
        are problems or divergences. ``written``: what was written, ``what``: the chaos,
        ``path``: the post-mortem file (:func:`dump`)."""
        writers = self.writers
        unanswered = sum((w.unanswered for w in writers), Counter[str]())
        header = [
            f"seed={seed} (ERPCRM_CONVERGENCE_SEED={seed} replays the choices) pairs={pairs} "
            f"edits={self.edited:.0f}s {written} "
            f"unchanged-skips={sum(w.unchanged for w in writers)} "
            f"writer-reconnects={sum(w.disconnects for w in writers)} "
            f"commits-unanswered={dict(unanswered)}",
            f"{what}: " + "; ".join(line for v in self.chaos for line in v.log),
            sink_summary(pipeline),
            f"times are relative to the start of the edits; every write and the final rows: {path}",
            *self.notes,
            *self.problems,
        ]
        print("\n".join(header))
        assert not self.problems, report(divergences, writes, self.t0_us, header)
        assert not divergences, report(divergences, writes, self.t0_us, header)


def run_writers(
    pipeline: Pipeline,
    make: Callable[[str, int, random.Random], Writer],
    chaos: list[Victim],
    seed: int,
    budget: Budget,
    rows: Callable[[], object],
) -> Run:
    """``budget.writers_per_system`` writers on each system (``make(system, number, rng)``,
    each with its own generator from ``seed``) while ``chaos`` goes on; then wait until
    the pipeline is quiet (``rows``: what :func:`quiesce` watches). Errors of writers and
    victims, missed kills, a pipeline that did not come to rest and dead workers are
    the run's problems."""
    writers = [
        make(system, number, random.Random(f"{seed}/{system}/{number}"))
        for system in SYSTEMS
        for number in range(1, budget.writers_per_system + 1)
    ]
    t0_us = time.time_ns() // 1000  # the stack runs on this host: commit times share the clock
    edited = run_threads([w.run for w in writers], chaos, seed, budget.write_seconds)
    problems = [e for e in (*(w.error for w in writers), *(v.error for v in chaos)) if e]
    problems += [missed for v in chaos if (missed := v.missed)]
    notes: list[str] = []
    if not quiesce(pipeline, rows, notes):
        problems.append("the pipeline did not come to rest; the values below may still move")
    problems += dead_workers(pipeline)
    return Run(writers, chaos, edited, t0_us, problems, notes)


def short(value: Any, width: int = 30) -> str:
    """``value`` in at most ``width`` characters; the end stays, it names the writer."""
    text = "NULL" if value is None else repr(value)
    if len(text) <= width:
        return text
    head = width // 3
    return f"{text[:head]}…{text[len(text) - (width - head - 1) :]}"


@dataclass(frozen=True, slots=True)
class Divergence:
    """A (pair, field) whose systems disagree with each other or with the last write."""

    pair: int
    field: str
    erp: Any
    crm: Any
    expected: Write
    other: Write | None  # the last write of the other system, if any

    @property
    def kind(self) -> str:
        if self.erp == self.crm:
            return "agree, wrong value"
        if self.erp == self.expected.value or self.crm == self.expected.value:
            return "one side behind"
        return "both wrong"


def diverged(
    state: Mapping[tuple[str, int], Mapping[str, Any]],
    pairs: Sequence[Pair],
    writes: Sequence[Write],
    cells: Sequence[str],
    counts: Callable[[Write], bool] = lambda write: True,
) -> list[Divergence]:
    """Every (pair, cell) of ``cells`` where a system's value (``state``) is not the
    value of the last write that ``counts`` (by :attr:`Write.rank`)."""
    last: dict[tuple[int, str], Write] = {}
    last_by_system: dict[tuple[int, str, str], Write] = {}
    for write in writes:
        if not counts(write):
            continue
        cell = (write.pair, write.field)
        if cell not in last or write.rank > last[cell].rank:
            last[cell] = write
        mine = (write.pair, write.field, write.system)
        if mine not in last_by_system or write.rank > last_by_system[mine].rank:
            last_by_system[mine] = write
    found = []
    for pair in pairs:
        for name in cells:
            expected = last[(pair.index, name)]
            erp = state.get(("erp", pair.index), {}).get(name, "<missing row>")
            crm = state.get(("crm", pair.index), {}).get(name, "<missing row>")
            if erp == crm == expected.value:
                continue
            other_system = "crm" if expected.system == "erp" else "erp"
            other = last_by_system.get((pair.index, name, other_system))
            found.append(Divergence(pair.index, name, erp, crm, expected, other))
    return found


def report(
    divergences: Sequence[Divergence],
    writes: Sequence[Write],
    t0_us: int,
    header: Sequence[str],
    limit: int = 60,
) -> str:
    """The seed and run summary, then one line per differing cell."""
    origin: dict[tuple[int, str, str | None], list[Write]] = defaultdict(list)
    for write in writes:
        origin[(write.pair, write.field, write.value)].append(write)

    def source(d: Divergence, value: Any) -> str:
        made = origin.get((d.pair, d.field, value), [])
        if len(made) != 1:
            return "" if not made else f" ({len(made)} writes)"
        return f" ({made[0].label(t0_us)})"

    lines = list(header)
    pairs = {d.pair for d in divergences}
    lines.append(
        f"{len(divergences)} of {len({(w.pair, w.field) for w in writes})} cells diverged, "
        f"in {len(pairs)} pairs; by field: {dict(Counter(d.field for d in divergences))}; "
        f"by kind: {dict(Counter(d.kind for d in divergences))}"
    )
    lines.append(
        f"{'pair':>4} {'field':<14} {'erp value':<31} {'crm value':<31} {'expected':<31} "
        "last write | other side's last"
    )
    for d in sorted(divergences, key=lambda d: (d.pair, d.field))[:limit]:
        gap = "" if d.other is None else f" | {d.other.label(t0_us)}"
        lines.append(
            f"{d.pair:>4} {d.field:<14} {short(d.erp):<31} {short(d.crm):<31} "
            f"{short(d.expected.value):<31} {d.expected.label(t0_us)}{gap}"
        )
        lines.append(f"{'':19}erp from{source(d, d.erp)}; crm from{source(d, d.crm)}")
    if len(divergences) > limit:
        lines.append(f"... and {len(divergences) - limit} more")
    return "\n".join(lines)


def sink_summary(pipeline: Pipeline) -> str:
    """Each sink's recorded conflicts (by entity, winner and reason) and dead letters."""
    parts = []
    for sink in pipeline:
        conflicts = sink.query(
            "SELECT entity || ' ' || winner || '/' || reason, count(*)"
            " FROM {schema}.conflicts GROUP BY 1 ORDER BY 1"
        )
        dead = sink.query("SELECT count(*) FROM {schema}.dead_letters")[0][0]
        parts.append(f"{sink.target} sink: conflicts {dict(conflicts)}, dead letters {dead}")
    return "; ".join(parts)


def dump(
    path: Path,
    writes: Sequence[Write],
    state: Mapping[tuple[str, int], Mapping[str, Any]],
    pairs: Sequence[Pair],
) -> None:
    """Every write and the final rows as JSON lines, for a post-mortem of a failure."""
    with path.open("w") as out:
        for pair in pairs:
            line = {"pair": pair.index, "account": pair.account, "partner": pair.partner}
            out.write(json.dumps({"kind": "pair", **line}) + "\n")
        for write in sorted(writes, key=lambda w: w.commit_us):
            out.write(json.dumps({"kind": "write", **asdict(write)}) + "\n")
        for (system, index), row in sorted(state.items()):
            line = {"kind": "final", "system": system, "pair": index, **row}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
