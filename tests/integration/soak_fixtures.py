"""What the randomized soak tests share: budget, the chaos, linked pairs, quiescence.

Each soak test (``test_convergence``, ``test_duplicates_soak``) runs writers on both
systems against one pipeline (both captures, streams, both sinks) while chaos threads
SIGKILL and restart every kind of worker, then waits until the pipeline is quiet and
checks the databases against what the writers did. This module holds the parts that do
not depend on what is written:

- :class:`Budget`: how long and how wide a run is, read once from the environment
  (``ERPCRM_SOAK_SECONDS``: an on-demand soak; otherwise the bounded CI budget);
- :class:`Victim` and :func:`victims`: every worker kind killed and restarted
  ``kill_cycles`` times, spread over the writing; a sink inside its batch's transaction;
- :func:`outages`: the stack itself (the Kafka broker, each PostgreSQL server in fast
  or immediate mode, the schema registry) stopped and started again ``outage_cycles``
  times, with the stack's own control, while the workers run on;
- :func:`soak_pipeline`: the pipeline with a short clock wait, settled or failing with
  the log of a worker that died; :func:`dead_workers`;
- :class:`Pair` and :func:`wait_linked`: CRM accounts made into linked ERP customers
  through the pipeline;
- :func:`quiesce`: wait until the pipeline took in every write and stopped moving;
- :func:`dead_letters`: what the stages dead-lettered since a position, to assert exactly.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from erpcrm.stack import LocalStack
from erpcrm.stack.manager import Component
from erpcrm.stack.postgres import PostgresCluster, ShutdownMode
from schemas.mapping import load_mappings
from schemas.topics import raw_topic, transaction_topic
from streams.cleansing import clean_vat
from streams.validation import Ok
from tests.integration.cdc_fixtures import execute, lsn_int, slot_row, wait_for
from tests.integration.sink_fixtures import (
    Pipeline,
    SinkProcess,
    demo_pipeline,
    read_to_end,
    watermarks,
)

__all__ = [
    "CLOCK_WAIT_SECONDS",
    "CUSTOMER_TOPICS",
    "DLQ_TOPICS",
    "SETTLE_SECONDS",
    "SYSTEMS",
    "Budget",
    "Letter",
    "Pair",
    "Victim",
    "customer_letter",
    "dead_letters",
    "dead_workers",
    "outages",
    "pair_stamps",
    "pipeline_fixture",
    "quiesce",
    "run_threads",
    "settled",
    "soak_pipeline",
    "streams_behind",
    "streams_diagnostics",
    "streams_ends",
    "valid_vat",
    "victims",
    "wait_linked",
]

SYSTEMS: Final = ("erp", "crm")
DLQ_TOPICS: Final = ("dlq.streams", "dlq.sinks.crm", "dlq.sinks.erp")
"""Every stage's dead-letter topic (read with :func:`dead_letters`)."""
SINK_OUTCOMES: Final = (
    "applied",
    "stale",
    "noop",
    "superseded",
    "skipped",
    "unknown",
    "deferred",
    "dead_lettered",
    "held",
)
SETTLE_SECONDS: Final = 180.0
CLOCK_WAIT_SECONDS: Final = 10
QUIET_SECONDS: Final = 25.0  # longer than the sinks' reference and clock waits (20 s, 10 s)
SINK_KILL_WAIT_SECONDS: Final = 15.0
"""How long a sink's kill waits for the sink to be inside a transaction that wrote."""


@dataclass(frozen=True, slots=True)
class Budget:
    """How long and how wide a run is; read once from the environment."""

    write_seconds: float
    width: int
    """How many records the writers work on (pairs to edit, pairs to duplicate)."""
    writers_per_system: int = 3
    kill_cycles: int = 1
    outage_cycles: int = 1
    """Rounds of :func:`outages` (every stack component stopped once a round)."""
    soak: bool = False

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, seconds: float, width: int, soak_width: int
    ) -> Budget:
        """``ERPCRM_SOAK_SECONDS=<n>``: ``n`` seconds over ``soak_width`` records, one round
        of kills a minute, one round of outages every two; otherwise (CI, a developer's
        run) ``seconds`` over ``width``, one round of each."""
        soak = env.get("ERPCRM_SOAK_SECONDS", "").strip()
        if soak:
            total = float(soak)
            return cls(
                total,
                soak_width,
                kill_cycles=max(1, int(total // 60)),
                outage_cycles=max(1, int(total // 120)),
                soak=True,
            )
        return cls(seconds, width)

    @property
    def timeout_seconds(self) -> int:
        """pytest-timeout for a test: the writing plus start, settle and restarts."""
        return int(self.write_seconds) + 900


# ------------------------------------------------------------------------ the chaos


@dataclass(slots=True)
class Victim:
    """A worker (or a stack component) that is stopped and started again at the given
    offsets into the run: a worker SIGKILLed, a component shut down (:func:`outages`)."""

    name: str
    kill: Callable[[], object]
    """Stops it; a text it returns (how it stopped it) goes into the log line."""
    restart: Callable[[], object]
    moment: Callable[[], str] | None = None
    """Waits for the moment to kill (e.g. inside a batch); says what it found."""
    down: tuple[float, float] = (0.2, 2.0)
    """How long it stays down before the restart, drawn uniformly (seconds)."""
    verb: str = "killed"
    exclusive: threading.Lock | None = None
    """Held from the stop to the end of the restart: victims sharing it are never down
    together (the schema registry keeps its journal in Kafka)."""
    at: list[float] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    error: str | None = None

    def run(self, started: float, rng: random.Random) -> None:
        try:
            for offset in self.at:
                delay = started + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                with self.exclusive or contextlib.nullcontext():
                    found = f" ({self.moment()})" if self.moment is not None else ""
                    killed = time.monotonic() - started
                    how = self.kill()
                    if isinstance(how, str):
                        found += f" ({how})"
                    # Down for a while, with work piling up.
                    time.sleep(rng.uniform(*self.down))
                    restarting = time.monotonic() - started
                    self.restart()
                    back = time.monotonic() - started
                self.log.append(
                    f"{self.name} {self.verb} at +{killed:.1f}s{found}, started again at "
                    f"+{restarting:.1f}s, back at +{back:.1f}s"
                )
        except Exception as exc:
            self.error = f"{self.name}: {type(exc).__name__}: {exc}"

    @property
    def missed(self) -> str | None:
        """Why not every kill was done, or None."""
        if len(self.log) < len(self.at):
            return f"{self.name}: {len(self.log)} of {len(self.at)} kills done"
        return None


def in_transaction(sink: SinkProcess, timeout: float = SINK_KILL_WAIT_SECONDS) -> str:
    """Wait until ``sink`` is inside a transaction that wrote (a batch being applied).

    Between batches a sink only waits for Kafka, and a kill there proves little: its
    batch's rows, sync state and offsets commit together or not at all, and that is
    what a kill inside the transaction puts to the test. Its origin-tagged session is
    found by its name on the target; polled every few milliseconds for ``timeout``
    seconds (a sink with nothing to do is killed all the same). Says what it found.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(sink.admin_dsn, autocommit=True, connect_timeout=2) as conn:
                while time.monotonic() < deadline:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'erpcrm-sink' AND backend_xid IS NOT NULL"
                    ).fetchone()
                    if row is not None and row[0]:
                        return "inside a transaction that wrote"
                    time.sleep(0.005)
        except psycopg.OperationalError:  # the target is away (an outage): look again
            time.sleep(0.5)
    return f"no transaction that wrote within {timeout:.0f}s"


@dataclass(frozen=True, slots=True)
class _Worker:
    """A worker of the pipeline as an outage kills it: SIGKILL, start, wait until it works."""

    name: str
    kill: Callable[[], object]
    start: Callable[[], object]
    ready: Callable[[], object]


def _workers(pipeline: Pipeline) -> dict[str, _Worker]:
    """Every worker of ``pipeline`` by name, each waited for up to 150 s once started."""
    sinks = [
        _Worker(f"{sink.target} sink", sink.kill, sink.start, partial(sink.wait_assigned, 150))
        for sink in (pipeline.crm_sink, pipeline.erp_sink)
    ]
    streams = pipeline.streams
    captures = [
        _Worker(f"{c.system} capture", c.kill, c.start, partial(c.wait_streaming, 150))
        for c in (pipeline.erp, pipeline.crm)
    ]
    found = [
        *sinks,
        _Worker("streams", streams.kill, streams.start, partial(streams.wait_ready, 150)),
    ]
    return {worker.name: worker for worker in found + captures}


def _restart(worker: _Worker) -> None:
    """Start ``worker`` and wait until it works."""
    worker.start()
    worker.ready()


def victims(pipeline: Pipeline, budget: Budget, rng: random.Random) -> list[Victim]:
    """Every worker kind, each killed ``kill_cycles`` times, spread over the writing.

    A sink is killed inside a transaction that wrote, when it is in one within
    :data:`SINK_KILL_WAIT_SECONDS` (:func:`in_transaction`).
    """
    workers = _workers(pipeline)
    moments = {
        f"{sink.target} sink": partial(in_transaction, sink)
        for sink in (pipeline.crm_sink, pipeline.erp_sink)
    }
    found = [
        Victim(name, worker.kill, partial(_restart, worker), moments.get(name))
        for name, worker in workers.items()
    ]
    _schedule(found, budget.write_seconds, budget.kill_cycles, rng)
    return found


SHUTDOWN_MODES: Final[tuple[ShutdownMode, ...]] = ("fast", "immediate")


class _DatabaseOutage:
    """Shuts one PostgreSQL server of the stack down: first in ``first`` mode, then in
    one drawn from its own generator (it runs in its victim's thread)."""

    def __init__(self, cluster: PostgresCluster, first: ShutdownMode, seed: float) -> None:
        self.cluster = cluster
        self.first = first
        self.rng = random.Random(seed)
        self.done = 0

    def __call__(self) -> str:
        mode = self.first if not self.done else self.rng.choice(SHUTDOWN_MODES)
        self.done += 1
        self.cluster.stop(mode)
        return f"{mode} shutdown"


KAFKA_DOWN_SECONDS: Final = (3.0, 10.0)
DATABASE_DOWN_SECONDS: Final = (1.0, 8.0)
REGISTRY_DOWN_SECONDS: Final = (1.0, 5.0)


OUTAGE_WORKERS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "kafka": (("streams",), ("crm sink", "erp sink", "erp capture", "crm capture")),
    "erp postgres": ((), ("erp sink", "erp capture")),
    "crm postgres": ((), ("crm sink", "crm capture")),
    "schema registry": ((), ("streams", "erp capture", "crm capture")),
}
"""The workers an outage of each component kills: always the first, and one drawn from
the second (those that use it) that no other outage of the run kills. The streams worker
is always among the broker's: its client library gives up on a broker that is away at
start (it must wait for it)."""


def outages(
    stack: LocalStack,
    budget: Budget,
    rng: random.Random,
    *,
    registry: bool = True,
    pipeline: Pipeline | None = None,
) -> list[Victim]:
    """The stack's own components stopped and started again mid-run, with its own control.

    - the Kafka broker: a controlled shutdown, down for :data:`KAFKA_DOWN_SECONDS`, then
      started (``LocalStack.start``) and waited for until it answers metadata requests;
    - the ERP and the CRM PostgreSQL: ``pg_ctl stop`` in ``fast`` or ``immediate`` mode
      (a crash: the WAL is replayed from the last checkpoint, a slot's position goes back
      to it), down for :data:`DATABASE_DOWN_SECONDS`; over the run each mode comes once
      on one database at least, which one drawn from ``rng``;
    - with ``registry``, the schema registry: SIGTERM, down for
      :data:`REGISTRY_DOWN_SECONDS`, then started and waited for until its journal is
      replayed (it needs the broker: the two are never down together);
    - with ``pipeline``, each outage also SIGKILLs one worker that uses the component
      (two for the broker; :data:`OUTAGE_WORKERS`, drawn from ``rng``) right after
      stopping it and starts it again at once, so that it starts while the component is
      away; it must wait for it, and is waited for (150 s) once the component is back.

    ``outage_cycles`` rounds, each in a random order spread over the first 80% of its
    share of the writing, as :func:`victims` spreads the kills. Whoever runs them starts
    the whole stack again afterwards (``stack.up()``), whatever happened.
    """
    broker = threading.Lock()
    workers = _workers(pipeline) if pipeline is not None else {}
    taken: set[str] = set()  # a worker is killed by one outage only (threads of their own)

    def outage(
        name: str,
        component: Component,
        stop: Callable[[], object],
        down: tuple[float, float],
        exclusive: threading.Lock | None = None,
    ) -> Victim:
        always, drawn = OUTAGE_WORKERS[name]
        free = [n for n in drawn if n not in taken]
        names = [*always, rng.choice(free)] if workers and free else list(always)
        taken.update(names)
        killed = [workers[n] for n in names] if workers else []

        def stop_all() -> str:
            how = stop()
            said = [how] if isinstance(how, str) else []
            for worker in killed:
                worker.kill()
                worker.start()
                said.append(f"{worker.name} killed and started again meanwhile")
            return "; ".join(said)

        def restart() -> None:
            stack.start([component])
            for worker in killed:
                worker.ready()

        return Victim(name, stop_all, restart, down=down, verb="stopped", exclusive=exclusive)

    erp_first, crm_first = rng.sample(SHUTDOWN_MODES, 2)
    erp_stop = _DatabaseOutage(stack.erp, erp_first, rng.random())
    crm_stop = _DatabaseOutage(stack.crm, crm_first, rng.random())
    found = [
        outage("kafka", stack.kafka, stack.kafka.stop, KAFKA_DOWN_SECONDS, broker),
        outage("erp postgres", stack.erp, erp_stop, DATABASE_DOWN_SECONDS),
        outage("crm postgres", stack.crm, crm_stop, DATABASE_DOWN_SECONDS),
    ]
    if registry:
        registry_stop = stack.registry.stop
        found.append(
            outage("schema registry", stack.registry, registry_stop, REGISTRY_DOWN_SECONDS, broker)
        )
    _schedule(found, budget.write_seconds, budget.outage_cycles, rng)
    return found


def _schedule(found: Sequence[Victim], seconds: float, cycles: int, rng: random.Random) -> None:
    """Each victim once per cycle of ``seconds / cycles``, in a random order per cycle,
    within the first 80% of the cycle (so restarts meet the writers' load)."""
    cycle = seconds / cycles
    for number in range(cycles):
        order = rng.sample(list(found), len(found))
        for slot, victim in enumerate(order):
            offset = (0.1 + 0.7 * (slot + rng.random()) / len(order)) * cycle
            victim.at.append(number * cycle + offset)


def run_threads(
    writers: Sequence[Callable[[threading.Event], None]],
    chaos: Sequence[Victim],
    seed: int,
    seconds: float,
) -> float:
    """Run the writers for ``seconds`` while the chaos goes on; the seconds they wrote.

    Each victim draws its pauses from its own generator (``<seed>/<victim name>``); a
    restart still under way when the writers stop finishes before this returns.
    """
    stop = threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=w, args=(stop,), daemon=True) for w in writers]
    killers = [
        threading.Thread(
            target=v.run, args=(started, random.Random(f"{seed}/{v.name}")), daemon=True
        )
        for v in chaos
    ]
    for thread in threads + killers:
        thread.start()
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    stop.set()
    for thread in threads:
        thread.join(60)
    wrote = time.monotonic() - started
    for thread in killers:
        thread.join(300)
    return wrote


def dead_workers(pipeline: Pipeline) -> list[str]:
    """Each worker that is not running, with the end of its log."""
    logs: dict[str, tuple[bool, str]] = {
        f"{s.target} sink": (s.running, s.tail()) for s in pipeline
    }
    logs["streams"] = (pipeline.streams.running, pipeline.streams.tail())
    for capture in (pipeline.erp, pipeline.crm):
        logs[f"{capture.system} capture"] = (capture.running, capture.log())
    return [
        f"{name} is not running; its log ends:\n" + "\n".join(text.splitlines()[-12:])
        for name, (up, text) in logs.items()
        if not up
    ]


# ----------------------------------------------------------------- the pipeline


def settled(pipeline: Pipeline) -> None:
    """``pipeline.settled``, naming a worker that died instead of just timing out."""
    try:
        pipeline.settled(timeout=SETTLE_SECONDS)
    except AssertionError as exc:
        raise AssertionError("\n".join([str(exc), *dead_workers(pipeline)])) from None


def pipeline_fixture(name: str) -> Any:
    """A module-scoped ``pipeline`` fixture: :func:`soak_pipeline`, its logs in a
    temporary directory named ``name``. Assign it as ``pipeline = pipeline_fixture(...)``."""

    @pytest.fixture(scope="module")
    def pipeline(
        stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Pipeline]:
        with soak_pipeline(stack_env, tmp_path_factory.mktemp(name)) as running:
            yield running

    return pipeline


@contextlib.contextmanager
def soak_pipeline(stack_env: dict[str, str], log_dir: Path) -> Iterator[Pipeline]:
    """The demo pipeline for a soak test, settled; cleaned up after."""
    # A short wait for the own event of a local change: workers are down for longer,
    # so the wait must not count while the own events are still on their way.
    waits = dict(stack_env, ERPCRM_SINK_CLOCK_WAIT_SECONDS=str(CLOCK_WAIT_SECONDS))
    with demo_pipeline(waits, log_dir, settle=settled) as running:
        yield running


def valid_vat(rng: random.Random) -> str:
    """A German VAT id whose check digit holds (an invalid one would be quarantined)."""
    while True:
        vat = f"DE{rng.randrange(10**8, 10**9)}"
        if isinstance(clean_vat(vat), Ok):
            return vat


@dataclass(frozen=True, slots=True)
class Pair:
    """A CRM account and the ERP customer the sinks made and linked for it."""

    index: int
    account: str
    partner: int
    ref: str

    def key(self, system: str) -> int | str:
        return self.partner if system == "erp" else self.account


def pair_stamps(env: dict[str, str], pairs: Sequence[Pair]) -> list[tuple[object, ...]]:
    """Each pair's account and customer with the transaction that last wrote it (``xmin``):
    unchanged between two reads, neither side wrote the rows (no echo)."""
    return sorted(
        execute(
            env["CRM_ADMIN_DSN"],
            "SELECT id::text, xmin::text FROM public.accounts WHERE id = ANY(%s::uuid[])",
            ([p.account for p in pairs],),
        )
        + execute(
            env["ERP_ADMIN_DSN"],
            "SELECT id::text, xmin::text FROM public.res_partner WHERE id = ANY(%s)",
            ([p.partner for p in pairs],),
        )
    )


def wait_linked(
    pipeline: Pipeline, env: dict[str, str], accounts: Sequence[str], timeout: float = 180
) -> list[Pair]:
    """The pairs of new CRM ``accounts``, once the ERP customer of each is made and linked.

    Linked: the ERP customer carries the account (``crm_account_id``) and the account
    its customer number (``account_number``).
    """

    def linked() -> list[Pair] | None:
        dead = dead_workers(pipeline)
        assert not dead, "\n".join(dead)
        partners = {
            str(account): (int(partner), str(ref))
            for account, partner, ref in execute(
                env["ERP_ADMIN_DSN"],
                "SELECT crm_account_id::text, id, ref FROM public.res_partner "
                "WHERE crm_account_id = ANY(%s::uuid[]) AND ref IS NOT NULL",
                (list(accounts),),
            )
        }
        numbers = dict(
            execute(
                env["CRM_ADMIN_DSN"],
                "SELECT id::text, account_number FROM public.accounts WHERE id = ANY(%s::uuid[])",
                (list(accounts),),
            )
        )
        pairs = []
        for index, account in enumerate(accounts):
            if account not in partners or numbers.get(account) != partners[account][1]:
                return None
            pairs.append(Pair(index, account, *partners[account]))
        return pairs

    found: list[Pair] = wait_for(linked, timeout, f"{len(accounts)} linked pairs", interval=0.5)
    return found


# ----------------------------------------------------------------- quiescence


def _raw_topics(prefixes: Mapping[str, str]) -> tuple[str, ...]:
    """The raw topics the streams worker reads: each flow's tables and each transaction topic."""
    topics = set()
    for flow in load_mappings().values():
        prefix = prefixes[flow.system]
        topics.add(raw_topic(prefix, flow.schema, flow.table))
        topics.add(transaction_topic(prefix))
        if flow.lines is not None:
            topics.add(raw_topic(prefix, flow.schema, flow.lines.table))
    return tuple(sorted(topics))


def _streams_positions(
    pipeline: Pipeline, ends: Mapping[tuple[str, int], int] | None = None
) -> dict[tuple[str, int], tuple[int, int]]:
    """Per raw partition, the streams worker's committed offset (0: none) and the end
    (``ends`` where given, else the partition's end now)."""
    if ends is None:
        ends = streams_ends(pipeline)
    streams = pipeline.streams
    bootstrap = streams.stack_env["KAFKA_BOOTSTRAP"]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": streams.app_id})
    try:
        committed = consumer.committed([TopicPartition(t, p) for t, p in ends], timeout=30)
    finally:
        consumer.close()
    done = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed}
    return {tp: (done.get(tp, 0), end) for tp, end in ends.items()}


def streams_ends(pipeline: Pipeline) -> dict[tuple[str, int], int]:
    """The end of every raw partition the streams worker reads, now."""
    streams = pipeline.streams
    return watermarks(streams.stack_env["KAFKA_BOOTSTRAP"], _raw_topics(streams.prefixes))


def streams_behind(
    pipeline: Pipeline, ends: Mapping[tuple[str, int], int] | None = None
) -> dict[str, int]:
    """Per raw partition (``topic[partition]``), records the streams worker has not
    committed yet (its group's lag); empty when it has read everything.

    ``ends``: count only the records up to these ends (an earlier :func:`streams_ends`):
    the captures' heartbeats add a transaction every few seconds, and the newest one is
    uncommitted for up to a commit interval on a worker that keeps up.
    """
    positions = _streams_positions(pipeline, ends)
    behind = {f"{t}[{p}]": end - done for (t, p), (done, end) in positions.items()}
    return {name: lag for name, lag in behind.items() if lag > 0}


_RELEASE_WARNINGS: Final = ("released incomplete", "assembled incomplete", "late_line")
"""What the streams worker logs when a transaction is decided without all of its changes."""


def streams_diagnostics(pipeline: Pipeline, most: int = 20) -> list[str]:
    """What to look at when a soak fails: the streams worker's position and releases.

    Its group's committed offset against the end of every raw partition, its counts of
    transactions released incomplete (and how orders were assembled, dead letters by
    reason), its warnings about releases (the first ``most``), and where every worker's
    log is.
    """
    streams = pipeline.streams
    positions = sorted(_streams_positions(pipeline).items())
    lines = [
        "streams committed/end per raw partition: "
        + ", ".join(f"{t}[{p}] {done}/{end}" for (t, p), (done, end) in positions)
    ]
    wanted = (
        "erpcrm_streams_order_timeouts_total",
        "erpcrm_streams_orders_assembled_total",
        "erpcrm_streams_dead_letters_total",
        "erpcrm_streams_pending",
    )
    try:
        counts = sorted(
            f"{name}{dict(sorted(labels))}={value:.0f}"
            for (name, labels), value in streams.metrics().items()
            if name in wanted and value
        )
        lines.append("streams counts (this run of the worker): " + "; ".join(counts))
    except httpx.HTTPError as exc:
        lines.append(f"streams metrics unreadable: {exc}")
    warnings: list[str] = []
    for run in range(1, streams.runs + 1):
        path = streams.log_dir / f"{streams.app_id}-{run}.log"
        if path.exists():
            text = path.read_text(errors="replace")
            warnings += [
                f"run {run}: {line}"
                for line in text.splitlines()
                if "WARNING" in line and any(w in line for w in _RELEASE_WARNINGS)
            ]
    lines.append(f"streams release warnings: {len(warnings)}")
    lines += warnings[:most]
    lines.append(f"worker logs (every run of every worker): {streams.log_dir}")
    return lines


def _streams_pending(pipeline: Pipeline) -> float:
    """Transactions and records the streams worker holds back; -1 while it is down."""
    try:
        return pipeline.streams.metric("erpcrm_streams_pending")
    except httpx.HTTPError:
        return -1.0


def _fingerprint(pipeline: Pipeline, rows: Callable[[], object]) -> dict[str, object]:
    """What moves while the pipeline still works, by name: worker counters and the rows
    watched."""
    parts: dict[str, object] = {
        f"{sink.target} sink {outcome}": sink.total(outcome)
        for sink in pipeline
        for outcome in SINK_OUTCOMES
    }
    # Events still held (waiting for a row clock or a reference) are work in progress.
    parts |= {f"{sink.target} sink holding": sink.held() for sink in pipeline}
    # Transaction records leave out: the captures' heartbeats (a transaction with no
    # change every few seconds) keep coming on a pipeline at rest.
    quiet = {("flow", "transaction"), ("kind", "change")}
    try:
        streamed = sum(
            value
            for (name, labels), value in pipeline.streams.metrics().items()
            if name.startswith(("erpcrm_streams_events_", "erpcrm_streams_consumed"))
            and not labels & quiet
        )
    except httpx.HTTPError:
        streamed = -1.0
    parts["streams events"] = streamed
    parts["rows watched"] = rows()
    return parts


def _moved(before: Mapping[str, object], after: Mapping[str, object]) -> str:
    """What differs between two fingerprints (counters with both values)."""
    changed = []
    for name, value in after.items():
        old = before.get(name)
        if old != value:
            changed.append(name if name == "rows watched" else f"{name} {old} -> {value}")
    return ", ".join(changed)


def _busy(pipeline: Pipeline, ends: Mapping[tuple[str, int], int]) -> str | None:
    """What the pipeline still holds, or has not read of the raw records up to ``ends``;
    None: nothing."""
    held = [
        f"{sink.target} sink holds {sink.held():.0f} events" for sink in pipeline if sink.held()
    ]
    pending = _streams_pending(pipeline)
    if pending:
        held.append(f"streams pending {pending:.0f}")
    behind = streams_behind(pipeline, ends)
    if behind:
        held.append(f"streams behind on {behind}")
    return "; ".join(held) or None


STREAMS_COMMIT_GRACE_SECONDS: Final = 5.0
"""How old the raw partitions' ends are that the streams worker must have committed: more
than its commit interval (1 s) and a batch's linger, so the newest heartbeat transaction,
read but not committed yet, does not count as work left."""


def quiesce(pipeline: Pipeline, rows: Callable[[], object], notes: list[str]) -> bool:
    """Wait until the pipeline has taken in every write and stopped moving.

    ``rows`` reads what the test watches (it must compare equal while nothing moves).
    What did not come to rest is added to ``notes``; returns whether all did.
    """
    # 1. Both captures have confirmed the WAL up to where it was when the writers stopped.
    for capture in (pipeline.erp, pipeline.crm):
        end = lsn_int(str(execute(capture.admin_dsn, "SELECT pg_current_wal_lsn()::text")[0][0]))

        def confirmed(capture: Any = capture, end: int = end) -> bool:
            row = slot_row(capture.admin_dsn, capture.slot)
            return row is not None and row[1] >= end

        try:
            wait_for(confirmed, 60, f"the {capture.system} capture", interval=0.5)
        except AssertionError as exc:
            notes.append(f"{exc} (slot {capture.slot} confirmed_flush behind the writers' end)")
    # 2. The sinks applied nothing for a while ...
    try:
        pipeline.settled(timeout=SETTLE_SECONDS, quiet=8.0)
    except AssertionError as exc:
        notes.append(f"pipeline.settled: {exc} within {SETTLE_SECONDS:.0f}s")
    # 3. ... and neither the workers' counters nor the rows move for QUIET_SECONDS, with
    # nothing held back by a worker nor left unread by the streams worker (of what the raw
    # partitions held STREAMS_COMMIT_GRACE_SECONDS before).
    start = time.monotonic()
    deadline = start + SETTLE_SECONDS
    ends: deque[tuple[float, dict[tuple[str, int], int]]] = deque([(start, streams_ends(pipeline))])
    last, since = _fingerprint(pipeline, rows), start
    busy: str | None = None
    moved = "nothing yet"
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _fingerprint(pipeline, rows)
        at = time.monotonic()
        ends.append((at, streams_ends(pipeline)))
        while len(ends) > 1 and at - ends[1][0] >= STREAMS_COMMIT_GRACE_SECONDS:
            ends.popleft()
        busy = _busy(pipeline, ends[0][1])
        if now != last:
            moved = f"+{at - start:.0f}s {_moved(last, now)}"
        if now != last or busy:
            last, since = now, at
        elif at - since >= QUIET_SECONDS:
            return True
    notes.append(
        f"the pipeline was still moving {SETTLE_SECONDS:.0f}s after the writers stopped"
        + (f" ({busy})" if busy else "")
        + f"; last movement: {moved}"
    )
    notes += streams_diagnostics(pipeline, most=5)
    return False


# ------------------------------------------------------------------- dead letters


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter: its topic, headers (text) and original bytes."""

    topic: str
    headers: dict[str, str]
    key: bytes | None
    value: bytes | None

    @property
    def reason(self) -> str:
        return self.headers.get("erpcrm.error.reason", "")


def dead_letters(
    bootstrap: str, topics: tuple[str, ...], start: dict[tuple[str, int], int]
) -> list[Letter]:
    """Every record of ``topics`` after the positions in ``start`` (0 where none)."""
    letters: list[Letter] = []
    for message in read_to_end(bootstrap, topics, start):
        pairs: list[Any] = list(message.headers() or [])
        headers = {str(name): (raw or b"").decode(errors="replace") for name, raw in pairs}
        letters.append(Letter(str(message.topic()), headers, message.key(), message.value()))
    return letters


CUSTOMER_TOPICS: Final = (
    ".res_partner",
    ".accounts",
    ".contacts",
    "canonical.customer",
    "canonical.contact",
)
"""The origin topics of what the customer soaks write: customers and contacts, raw and
canonical."""


def customer_letter(letter: Letter) -> bool:
    """Whether a dead letter may be a customer soak's: it comes from a customer or contact
    topic (:data:`CUSTOMER_TOPICS`), or names no origin. Letters of other flows (the demo
    data's quotes with unknown SKUs, lettered once their wait for the SKU runs out,
    possibly during the run) are not."""
    origin = letter.headers.get("erpcrm.origin.topic")
    return origin is None or origin.endswith(CUSTOMER_TOPICS)
