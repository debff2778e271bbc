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

import json
import os
import random
import threading
import time
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import phonenumbers
import psycopg
import pytest
from psycopg import sql

from erpcrm.stack import LocalStack
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
    outages,
    quiesce,
    run_threads,
    settled,
    soak_pipeline,
    valid_vat,
    victims,
    wait_linked,
)

BUDGET: Final = Budget.from_env(os.environ, seconds=35.0, width=12, soak_width=30)
OUTAGE_REGISTRY: Final = os.environ.get("ERPCRM_OUTAGE_REGISTRY", str(int(BUDGET.soak))) == "1"
"""Whether the outage test stops the schema registry too: on demand (a soak, or
``ERPCRM_OUTAGE_REGISTRY=1``), not in CI, where its restart (a minute or two: the JVM,
then the journal read back from Kafka) would be most of the test's time."""

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUDGET.timeout_seconds)]

TABLE: Final = {"erp": "res_partner", "crm": "accounts"}
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


def _kept(result: Ok[str | None] | Failed, value: str) -> bool:
    return isinstance(result, Ok) and result.value == value


def _is_canonical(name: str, value: str | None) -> bool:
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
        assert _is_canonical(name, value), f"generated a non-canonical {name}: {value!r}"
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


def _commit_us(conn: psycopg.Connection[tuple[Any, ...]], xid: str) -> int:
    """The commit time of transaction ``xid`` in µs since the epoch."""
    row = conn.execute(
        "SELECT (extract(epoch FROM pg_xact_commit_timestamp(%s::text::xid)) * 1000000)::bigint",
        (xid,),
    ).fetchone()
    assert row is not None
    assert row[0] is not None, f"no commit timestamp for xid {xid}"
    return int(row[0])


def _update(system: str, fields: Sequence[Field]) -> sql.Composed:
    """``UPDATE`` of ``fields`` that only happens when each of them changes; returns the
    writing transaction's id (``xid``, for its commit time) and full id (``xid8``, for
    its status after a lost connection)."""
    columns = [sql.Identifier(f.column(system)) for f in fields]
    return sql.SQL(
        "UPDATE {} SET {} WHERE id = %s AND {} RETURNING xmin::text, pg_current_xact_id()::text"
    ).format(
        sql.Identifier("public", TABLE[system]),
        sql.SQL(", ").join(sql.SQL("{} = %s").format(c) for c in columns),
        sql.SQL(" AND ").join(sql.SQL("{} IS DISTINCT FROM %s").format(c) for c in columns),
    )


@dataclass(frozen=True, slots=True)
class _Pending:
    """A write whose ``COMMIT`` was sent: recorded once its transaction is known committed."""

    xid: str
    xid8: str
    pair: int
    fields: tuple[str, ...]
    values: tuple[str | None, ...]
    seq: int


@dataclass(slots=True)
class Writer:
    """One thread editing one system through its own connection until told to stop.

    The database may go away under it (an outage): the writer connects again and goes
    on. A write whose ``COMMIT`` got no answer is recorded only if its transaction
    committed after all (``pg_xact_status`` once the database is back), with its real
    commit time; otherwise it never happened.
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
    _pending: _Pending | None = None
    _lost_at_us: int = 2**63
    """When the connection of the pending write was found lost (µs since the epoch)."""

    @property
    def name(self) -> str:
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

    def _one(self, conn: psycopg.Connection[tuple[Any, ...]], seq: int) -> None:
        pair = self.rng.choice(self.pairs)
        width = self.rng.choices((1, 2, 3), weights=(70, 20, 10))[0]
        fields = self.rng.sample(FIELDS, width)
        values = [self.values.make(f.name, self.rng, self.name, seq) for f in fields]
        params = [*values, pair.key(self.system), *values]
        with conn.transaction():
            row = conn.execute(_update(self.system, fields), params).fetchone()
            if row is None:  # some column already held its new value: no write
                self.unchanged += 1
                return
            # From here on the write may commit without the answer reaching us.
            self._pending = pending = _Pending(
                str(row[0]),
                str(row[1]),
                pair.index,
                tuple(f.name for f in fields),
                tuple(values),
                seq,
            )
        self._record(pending, _commit_us(conn, pending.xid))

    def _record(self, pending: _Pending, commit_us: int) -> None:
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
        commit_us = _commit_us(conn, pending.xid) if status == "committed" else 0
        if status == "committed" and commit_us > lost_at_us:
            status = "id reused after a crash"
        self.unanswered[str(status)] += 1
        self._pending, self._lost_at_us = None, 2**63  # decided (a lost connection above: not yet)
        if status == "committed":
            self._record(pending, commit_us)


# ------------------------------------------------------------------ setting up the pairs


def _create_pairs(
    pipeline: Pipeline, env: dict[str, str], values: ValueMaker, rng: random.Random, count: int
) -> tuple[list[Pair], list[Write]]:
    """``count`` new CRM accounts, each linked to the ERP customer the sinks made for it."""
    initial: list[Write] = []
    accounts: list[str] = []
    with psycopg.connect(env["CRM_DSN"], autocommit=True) as conn:
        for index in range(count):
            row_values = {f.name: values.make(f.name, rng, "i", index, empty=False) for f in FIELDS}
            vat = valid_vat(rng)
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
            commit_us = _commit_us(conn, str(row[1]))
            initial += [
                Write("crm", index, name, value, commit_us, "init", index)
                for name, value in row_values.items()
            ]

    return wait_linked(pipeline, env, accounts), initial


# ----------------------------------------------------------------------- the outcome


def _read(env: dict[str, str], pairs: Sequence[Pair]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (system, pair index): the shared fields as the system holds them now."""
    state: dict[tuple[str, int], dict[str, Any]] = {}
    for system in SYSTEMS:
        by_key = {str(p.key(system)): p.index for p in pairs}
        query = sql.SQL("SELECT id::text, {} FROM {} WHERE id::text = ANY(%s)").format(
            sql.SQL(", ").join(sql.Identifier(f.column(system)) for f in FIELDS),
            sql.Identifier("public", TABLE[system]),
        )
        for key, *row in execute(env[f"{system.upper()}_ADMIN_DSN"], query, (list(by_key),)):
            state[(system, by_key[key])] = {
                f.name: value for f, value in zip(FIELDS, row, strict=True)
            }
    return state


def _records(env: dict[str, str], run_tag: str, pairs: Sequence[Pair]) -> list[str]:
    """What differs from "each pair is still exactly one linked record on each side".

    Every customer record of the run, in either system and in any state (archived or
    deleted ones too), carries the run's tag in its name, which is never empty: a record
    the sync made beside a pair (a customer synced twice, an echo taken for a new one)
    is found by it, and so is a pair whose link the sync broke.
    """
    # The mark ends every generated name: " <tag><writer>n<seq>" (writer: e1, c2, i, ...).
    pattern = f" {run_tag}[a-z][0-9]*n[0-9]+$"
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
        partner = erp.pop(str(pair.partner), None)
        if partner != (pair.account, pair.ref, True):
            found.append(
                f"pair {pair.index}: ERP customer {pair.partner} is (crm_account_id, ref, active)"
                f" = {partner}, expected {(pair.account, pair.ref, True)}"
            )
        account = crm.pop(pair.account, None)
        if account != (pair.ref, False):
            found.append(
                f"pair {pair.index}: CRM account {pair.account} is (account_number, deleted)"
                f" = {account}, expected {(pair.ref, False)}"
            )
    found += [f"ERP customer {i} {row} made beside the pairs" for i, row in sorted(erp.items())]
    found += [f"CRM account {i} {row} made beside the pairs" for i, row in sorted(crm.items())]
    return found


def _rows(env: dict[str, str], pairs: Sequence[Pair]) -> object:
    """The pairs' rows, comparable: what :func:`quiesce` watches."""
    return sorted((k, sorted(v.items())) for k, v in _read(env, pairs).items())


def _short(value: Any, width: int = 30) -> str:
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


def _diverged(
    state: Mapping[tuple[str, int], Mapping[str, Any]],
    pairs: Sequence[Pair],
    writes: Sequence[Write],
) -> list[Divergence]:
    last: dict[tuple[int, str], Write] = {}
    last_by_system: dict[tuple[int, str, str], Write] = {}
    for write in writes:
        cell = (write.pair, write.field)
        if cell not in last or write.rank > last[cell].rank:
            last[cell] = write
        mine = (write.pair, write.field, write.system)
        if mine not in last_by_system or write.rank > last_by_system[mine].rank:
            last_by_system[mine] = write
    found = []
    for pair in pairs:
        for fld in FIELDS:
            expected = last[(pair.index, fld.name)]
            erp = state.get(("erp", pair.index), {}).get(fld.name, "<missing row>")
            crm = state.get(("crm", pair.index), {}).get(fld.name, "<missing row>")
            if erp == crm == expected.value:
                continue
            other_system = "crm" if expected.system == "erp" else "erp"
            other = last_by_system.get((pair.index, fld.name, other_system))
            found.append(Divergence(pair.index, fld.name, erp, crm, expected, other))
    return found


def _report(
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
        f"{'pair':>4} {'field':<8} {'erp value':<31} {'crm value':<31} {'expected':<31} "
        "last write | other side's last"
    )
    for d in sorted(divergences, key=lambda d: (d.pair, d.field))[:limit]:
        gap = "" if d.other is None else f" | {d.other.label(t0_us)}"
        lines.append(
            f"{d.pair:>4} {d.field:<8} {_short(d.erp):<31} {_short(d.crm):<31} "
            f"{_short(d.expected.value):<31} {d.expected.label(t0_us)}{gap}"
        )
        lines.append(f"{'':13}erp from{source(d, d.erp)}; crm from{source(d, d.crm)}")
    if len(divergences) > limit:
        lines.append(f"... and {len(divergences) - limit} more")
    return "\n".join(lines)


def _sink_summary(pipeline: Pipeline) -> str:
    parts = []
    for sink in pipeline:
        conflicts = sink.query(
            "SELECT winner || '/' || reason, count(*) FROM {schema}.conflicts "
            "WHERE entity = 'customer' GROUP BY 1 ORDER BY 1"
        )
        dead = sink.query("SELECT count(*) FROM {schema}.dead_letters")[0][0]
        parts.append(f"{sink.target} sink: conflicts {dict(conflicts)}, dead letters {dead}")
    return "; ".join(parts)


def _dump(
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


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    with soak_pipeline(stack_env, tmp_path_factory.mktemp("convergence")) as running:
        yield running


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
    seed = int(os.environ.get("ERPCRM_CONVERGENCE_SEED") or random.SystemRandom().randrange(2**32))
    print(f"convergence ({what}): seed={seed} budget={budget}")
    rng = random.Random(seed)
    values = ValueMaker(uuid.uuid4().hex[:4])

    # 1. Linked pairs, made through the pipeline; the inserts are the first writes.
    pairs, initial = _create_pairs(pipeline, stack_env, values, rng, budget.width)
    settled(pipeline)

    # 2.-3. Writers on both systems and, meanwhile, the chaos.
    writers = [
        Writer(
            system,
            number,
            stack_env[f"{system.upper()}_DSN"],
            pairs,
            values,
            random.Random(f"{seed}/{system}/{number}"),
        )
        for system in SYSTEMS
        for number in range(1, budget.writers_per_system + 1)
    ]
    chaos = chaos_for(rng)
    t0_us = time.time_ns() // 1000  # the stack runs on this host: commit times share the clock
    edited = run_threads([w.run for w in writers], chaos, seed, budget.write_seconds)

    # 4. Quiet, then every cell against the last write.
    problems = [e for e in (*(w.error for w in writers), *(v.error for v in chaos)) if e]
    problems += [missed for v in chaos if (missed := v.missed)]
    notes: list[str] = []  # shown, not failing: the verdict is on the values at rest
    if not quiesce(pipeline, lambda: _rows(stack_env, pairs), notes):
        problems.append("the pipeline did not come to rest; the values below may still move")
    problems += dead_workers(pipeline)
    writes = initial + [w for writer in writers for w in writer.writes]
    by_system = Counter(w.system for w in writes if w.writer != "init")
    if not (by_system["erp"] and by_system["crm"]):
        problems.append(f"the writers did not write on both sides: {dict(by_system)}")
    state = _read(stack_env, pairs)
    divergences = _diverged(state, pairs, writes)
    problems += _records(stack_env, values.run_tag, pairs)
    dump = pipeline.erp.log_dir / f"convergence-{what}-writes.jsonl"
    _dump(dump, writes, state, pairs)
    unanswered = sum((w.unanswered for w in writers), Counter[str]())
    header = [
        f"seed={seed} (ERPCRM_CONVERGENCE_SEED={seed} replays the choices) pairs={len(pairs)} "
        f"edits={edited:.0f}s field writes erp={by_system['erp']} crm={by_system['crm']} "
        f"unchanged-skips={sum(w.unchanged for w in writers)} "
        f"writer-reconnects={sum(w.disconnects for w in writers)} "
        f"commits-unanswered={dict(unanswered)}",
        f"{what}: " + "; ".join(line for v in chaos for line in v.log),
        _sink_summary(pipeline),
        f"times are relative to the start of the edits; every write and the final rows: {dump}",
        *notes,
        *problems,
    ]
    print("\n".join(header))
    assert not problems, _report(divergences, writes, t0_us, header)
    assert not divergences, _report(divergences, writes, t0_us, header)
