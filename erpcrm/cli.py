"""The ``erpcrm`` command line: one entry point for the stack, the workers and the tools.

Logging handlers are configured here and only here; modules log through
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import pydantic
import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import StackError, SyncError

# Each command imports what it runs: a worker process holds only its own stage's modules
# (the local stack's control code and the workload generator pull in psycopg and more).
if TYPE_CHECKING:
    from erpcrm.deadletters import LetterFilter
    from erpcrm.dlq import DeadLetterTopics
    from erpcrm.drift import EntityReport
    from erpcrm.stack import ComponentStatus
    from erpcrm.workload import WorkloadReport
    from schemas.settings import WorkerSettings

app = typer.Typer(
    name="erpcrm",
    help="Real-time, bidirectional ERP <-> CRM sync on PostgreSQL change data capture.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The local stack: Kafka, schema registry, PostgreSQL, Prometheus.")
app.add_typer(stack_app, name="stack")

suspects_app = typer.Typer(help="Suspected duplicates the sinks hold: list, release, link.")
app.add_typer(suspects_app, name="suspects")

dlq_app = typer.Typer(help="Dead letters of the streams worker and the sinks: list, show, replay.")
app.add_typer(dlq_app, name="dlq")

console = Console(stderr=True)


class SystemName(StrEnum):
    """The two systems erp-crm-sync connects."""

    erp = "erp"
    crm = "crm"

    @property
    def literal(self) -> Literal["erp", "crm"]:
        """The value as the settings' literal type."""
        return "erp" if self is SystemName.erp else "crm"


class BenchTableName(StrEnum):
    """The tables ``erpcrm bench cdc`` can write."""

    events = "events"
    partners = "partners"


class PaceBy(StrEnum):
    """What a workload rate counts."""

    operations = "operations"
    changes = "changes"

    @property
    def literal(self) -> Literal["operations", "changes"]:
        """The value as the workload's literal type."""
        return "operations" if self is PaceBy.operations else "changes"


out = Console()


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Per-request lines from the HTTP clients drown the workers' own log.
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _configure_logging(verbose)


def _progress(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


def _fail(exc: SyncError, code: int = 1) -> typer.Exit:
    """Print ``exc`` as one line on stderr (never wrapped); the exit to raise."""
    console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
    return typer.Exit(code=code)


@contextlib.contextmanager
def _failing_cleanly(what: str, *, code: int = 1, hint: str = "") -> Iterator[None]:
    """Run an operator command's work; a failure is one line on stderr and exit ``code``.

    A :class:`SyncError` by its message; a database error by its class and SQLSTATE only
    (:func:`erpcrm.failures.database_failure`: the server's message may name the DSN's
    host, user or database), as ``<what>: a database call failed
    (…)<hint>``. No traceback either way.
    """
    import psycopg

    from erpcrm.failures import database_failure

    try:
        yield
    except SyncError as exc:
        raise _fail(exc, code) from exc
    except psycopg.Error as exc:
        failed = SyncError(f"{what}: a database call failed ({database_failure(exc)}){hint}")
        raise _fail(failed, code) from None


def _refuse_settings(exc: pydantic.ValidationError, code: int = 2) -> typer.Exit:
    """Name each refused setting and why (no traceback), and exit with ``code``."""
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or exc.title
        console.print(f"[bold red]error:[/bold red] setting {where}: {error['msg']}")
    return typer.Exit(code=code)


_Settings = TypeVar("_Settings", bound="WorkerSettings")


def _worker_settings(read: Callable[[], _Settings]) -> _Settings:
    """A worker's settings, read once at start, then its malloc arenas capped.

    A refused setting ends the command with exit 2 (:func:`_refuse_settings`), which
    ``erpcrm run`` does not restart.
    """
    from erpcrm.malloc import limit_arenas

    try:
        settings = read()
    except pydantic.ValidationError as exc:
        raise _refuse_settings(exc) from exc
    limit_arenas(settings.malloc_arenas)  # before the worker starts its threads
    return settings


@stack_app.command("up")
def stack_up() -> None:
    """Start every component (idempotent) and wait until each one answers."""
    from erpcrm.stack import LocalStack

    started = time.monotonic()
    try:
        statuses = LocalStack().up(_progress)
    except SyncError as exc:
        raise _fail(exc) from exc
    _progress(f"stack up in {time.monotonic() - started:.1f}s")
    if not all(s.healthy for s in statuses):
        _print_status(statuses)
        raise typer.Exit(code=1)


@stack_app.command("down")
def stack_down() -> None:
    """Stop every component the stack started, and nothing else."""
    from erpcrm.stack import LocalStack

    LocalStack().down(_progress)


@stack_app.command("status")
def stack_status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show each component's state, pid, endpoint and memory; exit 1 unless all are healthy."""
    from erpcrm.stack import LocalStack
    from erpcrm.stack.manager import status_as_dicts

    statuses = LocalStack().status()
    if as_json:
        out.print_json(json.dumps({"components": status_as_dicts(statuses)}))
    else:
        _print_status(statuses)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(code=1)


def _print_status(statuses: list[ComponentStatus]) -> None:
    table = Table("component", "state", "pid", "endpoint", "memory")
    colors = {"running": "green", "unhealthy": "yellow", "stopped": "red"}
    for s in statuses:
        table.add_row(
            s.name,
            f"[{colors[s.state]}]{s.state}[/]",
            str(s.pid or "-"),
            s.endpoint,
            f"{s.memory_bytes / 2**20:.0f} MiB" if s.memory_bytes else "-",
        )
    out.print(table)


@stack_app.command("env")
def stack_env() -> None:
    """Print ``export`` lines for the stack's endpoints: ``eval "$(erpcrm stack env)"``."""
    from erpcrm.stack import LocalStack

    for key, value in LocalStack().env().items():
        print(f"export {key}={shlex.quote(value)}")


@app.command("workload")
def workload(
    rate: Annotated[float, typer.Option(help="Operations per second across both systems.")] = 50,
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run (default: until --count).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Operations to run.")] = None,
    dirty_ratio: Annotated[
        float, typer.Option(help="Share of operations that carry dirty data (0..1).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same activity.")] = 1,
    processes: Annotated[
        int, typer.Option(min=1, help="Processes driving the databases side by side.")
    ] = 1,
    ops_per_commit: Annotated[
        int, typer.Option(min=1, help="Operations per transaction, per database.")
    ] = 1,
    pace_by: Annotated[
        PaceBy, typer.Option(help="What --rate counts: operations or row changes.")
    ] = PaceBy.operations,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Drive the ERP and CRM databases with realistic business activity."""
    from erpcrm.workload import run_workload_parallel

    if duration is None and count is None:
        duration = 10.0
    env = _stack_env()
    try:
        report = run_workload_parallel(
            env["ERP_DSN"],
            env["CRM_DSN"],
            processes=processes,
            rate=rate,
            duration=duration,
            count=count,
            dirty_ratio=dirty_ratio,
            seed=seed,
            ops_per_commit=ops_per_commit,
            pace_by=pace_by.literal,
        )
    except SyncError as exc:
        raise _fail(exc) from exc
    if as_json:
        out.print_json(json.dumps(report.as_dict(), default=str))
    else:
        _print_workload(report)


@app.command("cdc")
def cdc(
    system: Annotated[SystemName, typer.Option(help="Source database.")],
    dsn: Annotated[
        str | None,
        typer.Option(help="Replication DSN (default: the local stack's capture role)."),
    ] = None,
) -> None:
    """Stream every committed change of one database into Kafka (Debezium envelopes)."""
    from cdc.settings import CaptureSettings
    from erpcrm.workers import build_capture, run_worker

    if dsn:
        os.environ["ERPCRM_CDC_DSN"] = dsn
    _stack_defaults_into_environment(capture_dsn_of=system.value)
    settings = _worker_settings(functools.partial(CaptureSettings, system=system.literal))
    try:
        run_worker(settings.metrics_port, functools.partial(build_capture, settings))
    except SyncError as exc:
        raise _fail(exc) from exc


@app.command("streams")
def streams() -> None:
    """Turn raw change events into clean canonical events (Faust; /metrics, /inventory)."""
    from prometheus_client import CollectorRegistry

    from erpcrm.workers import build_streams
    from streams.settings import StreamsSettings

    _stack_defaults_into_environment()
    settings = _worker_settings(StreamsSettings)
    try:
        worker = build_streams(settings, CollectorRegistry())
    except SyncError as exc:
        raise _fail(exc) from exc
    worker.run()


@app.command("sink")
def sink(
    target: Annotated[SystemName, typer.Option(help="Database written to.")],
    dsn: Annotated[
        str | None,
        typer.Option(help="Sink role DSN (default: the local stack's sink role)."),
    ] = None,
) -> None:
    """Apply the other system's canonical events to one database, exactly once."""
    from erpcrm.workers import build_sink, run_worker
    from sinks.settings import SinkSettings

    if dsn:
        os.environ["ERPCRM_SINK_DSN"] = dsn
    _stack_defaults_into_environment(sink_dsn_of=target.value)
    settings = _worker_settings(functools.partial(SinkSettings, target=target.literal))
    try:
        run_worker(settings.metrics_port, functools.partial(build_sink, settings))
    except SyncError as exc:
        raise _fail(exc) from exc


@app.command("run")
def run_all() -> None:
    """Run every worker (captures, streams, sinks) under one supervisor, restarting crashes."""
    from erpcrm.stack import LocalStack
    from erpcrm.supervisor import (
        DEFAULT_WORKERS,
        EXIT_REFUSED,
        Supervisor,
        instance_prefix,
        sole_supervisor,
    )
    from erpcrm.workers import stop_on_signals

    _stack_defaults_into_environment()
    state = LocalStack().layout.state
    supervisor = Supervisor(DEFAULT_WORKERS, state / "logs", instance_prefix=instance_prefix(state))
    stop_on_signals(supervisor.stop)
    try:
        with sole_supervisor(state / "run.lock"):
            code = supervisor.run()
    except StackError as exc:
        raise _fail(exc, EXIT_REFUSED) from exc
    raise typer.Exit(code)


bench_app = typer.Typer(help="Benchmarks on the local stack; each prints JSON.")
app.add_typer(bench_app, name="bench")


@bench_app.command("cdc")
def bench_cdc(
    rows: Annotated[
        int, typer.Option(help="Rows inserted, then updated, for throughput.")
    ] = 100_000,
    batch: Annotated[int, typer.Option(help="Rows per source transaction in the load.")] = 1000,
    rate: Annotated[float, typer.Option(help="Single-row commits per second for latency.")] = 200,
    seconds: Annotated[float, typer.Option(help="Duration of the latency run.")] = 20,
    table: Annotated[
        BenchTableName, typer.Option(help="events: 6 columns; partners: 26, like res_partner.")
    ] = BenchTableName.events,
    backlog_rows: Annotated[
        int, typer.Option(help="Rows for the backlog drain (capture stopped, then started).")
    ] = 0,
) -> None:
    """Capture throughput (events/s), commit-to-Kafka latency (p50/p99) and peak RSS."""
    from erpcrm.bench import bench_cdc as run

    try:
        result = run(
            rows=rows,
            batch=batch,
            rate=rate,
            seconds=seconds,
            table=table.value,
            backlog_rows=backlog_rows,
        )
    except SyncError as exc:
        raise _fail(exc) from exc
    print(json.dumps(result, indent=2))


@bench_app.command("streams")
def bench_streams(
    operations: Annotated[
        int, typer.Option(help="Workload operations written (clean) on top of the snapshots.")
    ] = 3000,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 7,
    timeout: Annotated[float, typer.Option(help="Seconds each phase may take at most.")] = 300,
) -> None:
    """Streams worker throughput (raw events in/s, canonical out) and peak RSS."""
    from erpcrm.bench_streams import bench_streams as run

    try:
        result = run(operations=operations, seed=seed, timeout=timeout)
    except SyncError as exc:
        raise _fail(exc) from exc
    print(json.dumps(result, indent=2))


@bench_app.command("sinks")
def bench_sinks(
    events: Annotated[int, typer.Option(help="Customers inserted, then updated.")] = 20_000,
    batch_size: Annotated[int, typer.Option(help="Sink batch size.")] = 500,
    samples: Annotated[int, typer.Option(help="End-to-end changes per direction.")] = 50,
    timeout: Annotated[float, typer.Option(help="Seconds each phase may take at most.")] = 300,
) -> None:
    """Sink apply throughput (events/s, batch apply p50/p99) and end-to-end latency."""
    from erpcrm.bench_sinks import BenchStepError
    from erpcrm.bench_sinks import bench_sinks as run

    try:
        result = run(events=events, batch_size=batch_size, samples=samples, timeout=timeout)
    except BenchStepError as exc:
        # What was measured before the failure still counts: printed, then the error.
        print(json.dumps(exc.figures, indent=2))
        raise _fail(exc) from exc
    except SyncError as exc:
        raise _fail(exc) from exc
    print(json.dumps(result, indent=2))


@bench_app.command("e2e")
def bench_e2e(
    rates: Annotated[
        str, typer.Option(help="Row changes per second, one step each, comma-separated.")
    ] = "250,500,1000,2000,5000",
    seconds: Annotated[float, typer.Option(help="Seconds of load per step.")] = 30,
    drain_seconds: Annotated[
        float, typer.Option(help="Seconds each step may take to drain after its load.")
    ] = 60,
    dirty_ratio: Annotated[float, typer.Option(help="Share of dirty operations.")] = 0.1,
    processes: Annotated[int, typer.Option(min=1, help="Workload processes.")] = 4,
    ops_per_commit: Annotated[
        int, typer.Option(min=1, help="Workload operations per transaction.")
    ] = 1,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 11,
) -> None:
    """The whole pipeline under load: end-to-end latency per direction at each rate."""
    from erpcrm.bench_e2e import TABLE_COLUMNS, E2eOptions, table_rows
    from erpcrm.bench_e2e import bench_e2e as run

    try:
        steps = tuple(float(r) for r in rates.split(",") if r.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"--rates: {exc}") from exc
    if not steps or any(r <= 0 for r in steps):
        raise typer.BadParameter("--rates needs positive numbers, e.g. 250,500,1000")
    _stack_defaults_into_environment()
    options = E2eOptions(
        rates=steps,
        seconds=seconds,
        drain_seconds=drain_seconds,
        dirty_ratio=dirty_ratio,
        processes=processes,
        ops_per_commit=ops_per_commit,
        seed=seed,
    )
    try:
        result = run(options, progress=_progress)
    except SyncError as exc:
        raise _fail(exc) from exc
    table = Table(*TABLE_COLUMNS, title="latency: source commit -> target commit")
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    console.print(
        f"highest sustained rate: {result['highest_sustained_changes_per_second']} changes/s "
        f"({result['sustained_means']})"
    )
    print(json.dumps(result, indent=2))


def _suspects_target(target: SystemName) -> tuple[str, str, str]:
    """The sink DSN, sync and decisions schemas of ``target`` (settings, else the stack)."""
    from sinks.settings import SinkSettings

    _stack_defaults_into_environment(sink_dsn_of=target.value)
    settings = SinkSettings(target=target.literal)
    return settings.dsn.get_secret_value(), settings.sync_schema, settings.decisions_schema


@suspects_app.command("list")
def suspects_list(
    target: Annotated[SystemName, typer.Option(help="Database whose sink holds them.")],
    status: Annotated[
        str | None, typer.Option(help="Only this status (held, released, linked, ...).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """List the suspected duplicates a sink holds (and what was decided about them)."""
    from erpcrm.suspects import list_suspects

    with _failing_cleanly("suspects not listed", hint="; check the sink's DSN"):
        dsn, schema, _ = _suspects_target(target)
        found = list_suspects(dsn, schema, status)
    if as_json:
        print(json.dumps([s.as_json() for s in found], indent=2))
        return
    table = Table(
        "id", "entity", "new record", "duplicate of", "evidence", "status", "waiting", "last seen"
    )
    for s in found:
        table.add_row(
            str(s.id),
            s.entity,
            s.entity_key,
            s.candidate,
            s.evidence or "",
            s.status,
            str(s.waiting),
            s.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


@app.command("quality")
def quality(
    since: Annotated[
        str | None,
        typer.Option(help="Only what was logged since: a duration (90m, 24h, 7d) or ISO time."),
    ] = None,
    worst: Annotated[int, typer.Option(help="How many of the worst records to list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
) -> None:
    """Data quality: defects by entity, field and rule; fixed, quarantined, dead-lettered."""
    from erpcrm.quality import parse_since, quality_report
    from streams.settings import StreamsSettings

    _stack_defaults_into_environment()
    with _failing_cleanly("quality not read"):
        since_ms = None if since is None else parse_since(since, int(time.time() * 1000))
        report, unreadable = quality_report(StreamsSettings().kafka, since_ms, worst=worst)
    if as_json:
        print(json.dumps({**report.as_dict(), "unreadable": unreadable}, indent=2))
        return
    outcomes = ", ".join(f"{n} {outcome}" for outcome, n in report.outcomes.items())
    out.print(f"{report.entries} records with defects: {outcomes}")
    table = Table("entity", "field", "rule", "outcome", "defects", "records")
    for f in report.figures:
        table.add_row(f.entity, f.field, f.rule, f.outcome, str(f.defects), str(f.records))
    out.print(table)
    if report.worst:
        worst_table = Table("entity", "record", "open", "fixed", "fields")
        for w in report.worst:
            worst_table.add_row(w.entity, w.record, str(w.open), str(w.fixed), ", ".join(w.fields))
        out.print("Worst records (open defects: quarantined, kept, dead-lettered)")
        out.print(worst_table)
    if unreadable:
        out.print(f"{unreadable} entries could not be read")


SUSPECTS_ERP_DSN = "ERPCRM_SUSPECTS_ERP_DSN"
"""Where ``erpcrm suspects link`` reads the ERP customers' links, unless ``--erp-dsn``."""
SUSPECTS_CRM_DSN = "ERPCRM_SUSPECTS_CRM_DSN"
"""Where ``erpcrm suspects link`` reads whether CRM accounts are live, unless ``--crm-dsn``."""


def _suspects_source_dsn(system: SystemName, target: SystemName, sink_dsn: str) -> str:
    """The DSN that reads ``system``'s customers for ``erpcrm suspects link``.

    In order: ``ERPCRM_SUSPECTS_<SYSTEM>_DSN``; for a ``--target`` of that system its
    sink's own DSN (its setting); only when none is configured, the local stack's sink
    role of that system.
    """
    configured = os.environ.get(f"ERPCRM_SUSPECTS_{system.value.upper()}_DSN", "")
    if configured:
        return configured
    if target is system:
        return sink_dsn
    return _stack_env()[f"{system.value.upper()}_SINK_DSN"]


def _suspects_erp_dsn(target: SystemName, sink_dsn: str) -> str:
    """The DSN that reads the ERP customers, where a customer pair's link is kept."""
    return _suspects_source_dsn(SystemName.erp, target, sink_dsn)


def _decide_suspect(
    target: SystemName,
    suspect_id: int,
    action: Literal["release", "link"],
    erp_dsn: str | None = None,
    crm_dsn: str | None = None,
) -> None:
    from erpcrm.suspects import CandidateTakenError, decide

    hint = "; check the sink's DSN"
    if action == "link":
        hint += f" and {SUSPECTS_ERP_DSN} / --erp-dsn, {SUSPECTS_CRM_DSN} / --crm-dsn"
    with _failing_cleanly(f"suspect {suspect_id}: {action} not asked, nothing changed", hint=hint):
        dsn, schema, decisions = _suspects_target(target)
        if action == "link":
            erp_dsn = erp_dsn or _suspects_source_dsn(SystemName.erp, target, dsn)
            crm_dsn = crm_dsn or _suspects_source_dsn(SystemName.crm, target, dsn)
        try:
            done = decide(
                dsn,
                schema,
                suspect_id,
                action,
                decisions=decisions,
                erp_dsn=erp_dsn,
                crm_dsn=crm_dsn,
            )
        except CandidateTakenError as exc:
            raise _fail(exc, code=3) from exc
    if not done:
        console.print(f"suspect {suspect_id} is not held (unknown, or already decided)")
        raise typer.Exit(1)
    out.print(f"suspect {suspect_id}: {action} asked; the {target.value} sink carries it out")


@suspects_app.command("release")
def suspects_release(
    suspect_id: Annotated[int, typer.Argument(help="The suspect's id (erpcrm suspects list).")],
    target: Annotated[SystemName, typer.Option(help="Database whose sink holds it.")],
) -> None:
    """Not a duplicate after all: the sink creates the record."""
    _decide_suspect(target, suspect_id, "release")


@suspects_app.command("link")
def suspects_link(
    suspect_id: Annotated[int, typer.Argument(help="The suspect's id (erpcrm suspects list).")],
    target: Annotated[SystemName, typer.Option(help="Database whose sink holds it.")],
    erp_dsn: Annotated[
        str | None,
        typer.Option(
            help="ERP DSN that reads res_partner, where a customer pair's link is kept "
            f"(default: {SUSPECTS_ERP_DSN}, else for --target erp the ERP sink's DSN, else "
            "the local stack's). Leave the password out: libpq reads PGPASSWORD or "
            "~/.pgpass."
        ),
    ] = None,
    crm_dsn: Annotated[
        str | None,
        typer.Option(
            help="CRM DSN that reads accounts, where the liveness of a CRM record holding the "
            f"candidate is read (default: {SUSPECTS_CRM_DSN}, else for --target crm the CRM "
            "sink's DSN, else the local stack's). Leave the password out."
        ),
    ] = None,
) -> None:
    """The same record: the sink writes it into its candidate, now and on later changes.

    Refused (exit 3, nothing changed) while another live record holds the candidate: one
    archived or deleted in its system (or gone) holds nothing.
    """
    _decide_suspect(target, suspect_id, "link", erp_dsn, crm_dsn)


def _dead_letter_topics() -> DeadLetterTopics:
    from erpcrm.dlq import DeadLetterTopics
    from streams.settings import StreamsSettings

    _stack_defaults_into_environment()

    settings = StreamsSettings()
    return DeadLetterTopics(settings.kafka, settings.registry.url)


def _letter_filter(
    reason: str | None, entity: str | None, since: str | None, stage: str | None
) -> LetterFilter:
    from erpcrm.deadletters import LetterFilter, parse_since

    since_ms = None if since is None else parse_since(since, int(time.time() * 1000))
    return LetterFilter(reason=reason, entity=entity, since_ms=since_ms, stage=stage)


ReasonOption = Annotated[
    str | None, typer.Option(help="Only this reason (unknown_sku, decode_error, ...).")
]
EntityOption = Annotated[
    str | None, typer.Option(help="Only this entity (customer, sales_order, ...).")
]
SinceOption = Annotated[
    str | None, typer.Option(help="Only letters written since: 15m, 2h, 1d, or an ISO time.")
]
StageOption = Annotated[
    str | None, typer.Option(help="Only this stage: streams, sinks.erp, sinks.crm.")
]


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@dlq_app.command("list")
def dlq_list(
    reason: ReasonOption = None,
    entity: EntityOption = None,
    since: SinceOption = None,
    stage: StageOption = None,
    pending: Annotated[bool, typer.Option(help="Only letters never replayed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """List dead letters: reason, origin, entity, age, and whether they were replayed."""
    with _failing_cleanly("dead letters not listed"):
        topics = _dead_letter_topics()
        letters = topics.letters(_letter_filter(reason, entity, since, stage))
        marks = topics.marks()
    if pending:
        letters = [letter for letter in letters if letter.id not in marks]
    now_ms = int(time.time() * 1000)
    if as_json:
        print(json.dumps([x.summary(now_ms, marks.get(x.id)) for x in letters], indent=2))
        return
    table = Table("id", "age", "stage", "reason", "entity", "origin", "replays", "replayed")
    for x in letters:
        mark = marks.get(x.id)
        table.add_row(
            x.id,
            _age(x.age_seconds(now_ms)),
            x.stage,
            x.reason,
            x.entity_key or x.entity or "-",
            x.origin,
            str(x.replays),
            "-" if mark is None else _age((now_ms - mark.replayed_at_ms) / 1000) + " ago",
        )
    out.print(table)
    out.print(
        f"{len(letters)} dead letters, {sum(x.id not in marks for x in letters)} never replayed"
    )


@dlq_app.command("show")
def dlq_show(
    letter_id: Annotated[str, typer.Argument(help="topic:partition:offset (erpcrm dlq list).")],
) -> None:
    """Show one dead letter: its headers and its payload, decoded (Avro via the registry)."""
    with _failing_cleanly(f"dead letter {letter_id} not shown"):
        topics = _dead_letter_topics()
        letter = topics.letter(letter_id)
        decoded = topics.decode(letter)
        mark = topics.marks().get(letter.id)
    now_ms = int(time.time() * 1000)
    shown = {**letter.summary(now_ms, mark), "headers": dict(letter.headers), **decoded}
    print(json.dumps(shown, indent=2, default=str))


@dlq_app.command("replay")
def dlq_replay(
    letter_ids: Annotated[
        list[str] | None, typer.Argument(help="Dead letters to replay (topic:partition:offset).")
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Every dead letter the filters take.")
    ] = False,
    reason: ReasonOption = None,
    entity: EntityOption = None,
    since: SinceOption = None,
    stage: StageOption = None,
    again: Annotated[bool, typer.Option(help="Also letters replayed before.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be replayed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Put dead letters back into the stage that failed (one, a filter, or --all)."""
    from erpcrm.dlq import replay_summary
    from streams.settings import StreamsSettings

    with _failing_cleanly("dead letters not replayed"):
        where = _letter_filter(reason, entity, since, stage)
        if not letter_ids and not replay_all and where.is_empty:
            raise SyncError("name dead letters, give a filter, or --all")
        topics = _dead_letter_topics()
        if letter_ids:
            letters = [topics.letter(i) for i in letter_ids]
            letters = [x for x in letters if where.matches(x)]
        else:
            letters = topics.letters(where)
        if dry_run:
            marks = topics.marks()
            chosen = [x for x in letters if again or x.id not in marks]
            print(json.dumps({"would_replay": [x.id for x in chosen]}, indent=2))
            return
        report = topics.replay(
            letters,
            again=again,
            default_app_id=StreamsSettings().app_id,
            now_ms=int(time.time() * 1000),
        )
    summary = replay_summary(report)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        for item in summary["replayed"]:
            out.print(f"replayed {item['id']} -> {item['to']} (replay {item['replay_count']})")
        if report.already:
            out.print(f"{len(report.already)} already replayed (--again to replay them once more)")
        for item in summary["failed"]:
            out.print(f"[red]not replayed[/red] {item['id']}: {item['error']}")
    if report.failed:
        raise typer.Exit(1)


class EntityName(StrEnum):
    """The canonical entities ``erpcrm reconcile`` compares."""

    customer = "customer"
    contact = "contact"
    product = "product"
    inventory = "inventory"
    sales_order = "sales_order"
    invoice = "invoice"


_SHOWN_PER_ENTITY = 20


@app.command("reconcile")
def reconcile(
    entity: Annotated[
        list[EntityName] | None, typer.Option(help="Only this entity (repeatable; default all).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only drift of records written since: 15m, 2h, 1d, or an ISO time."),
    ] = None,
    repair: Annotated[
        bool, typer.Option(help="Ask the captures to re-read the rows that drifted.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
    erp_dsn: Annotated[
        str | None, typer.Option(help="ERP DSN (default: the local stack's application role).")
    ] = None,
    crm_dsn: Annotated[
        str | None, typer.Option(help="CRM DSN (default: the local stack's application role).")
    ] = None,
) -> None:
    """Compare ERP and CRM through the mappings.

    Exit 0 in sync, 1 drift found, 2 not compared (a database unread, a signal unwritten).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from erpcrm.deadletters import parse_since
    from erpcrm.drift import rereads
    from erpcrm.reconcile import ENTITIES, Reconciler
    from erpcrm.repair import request_rereads

    env = _stack_env()
    dsns = {"erp": erp_dsn or env["ERP_DSN"], "crm": crm_dsn or env["CRM_DSN"]}
    chosen = [e for e in ENTITIES if not entity or e in {x.value for x in entity}]
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with _failing_cleanly("reconcile", code=2, hint="; check the ERP and CRM DSNs"):
        since_ms = None if since is None else parse_since(since, int(time.time() * 1000))
        with Progress(*columns, console=console, transient=True, disable=as_json) as bar:
            task = bar.add_task("reconcile", total=None)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=what, completed=done, total=total)

            reports = Reconciler(dsns["erp"], dsns["crm"]).run(
                chosen, since_ms=since_ms, progress=progress
            )
        planned = rereads(reports)
        signal_dsns = {s: env[f"{s.upper()}_CAPTURE_DSN"] for s in ("erp", "crm")}
        requested = request_rereads(signal_dsns, planned) if repair else []
    drift = sum(r.drift for r in reports)
    if as_json:
        document = {
            "in_sync": drift == 0,
            "drift": drift,
            "entities": [r.as_json() for r in reports],
            "repair": [r.as_json() for r in planned],
            "requested": [r.as_json() for r in requested],
        }
        print(json.dumps(document, indent=2))
    else:
        _print_reconcile(reports)
        if repair:
            for item in requested:
                out.print(
                    f"re-read asked: {item.reread.system} {item.reread.table} "
                    f"({len(item.reread.keys)} rows, signal {item.signal_id})"
                )
        elif planned:
            rows = sum(len(r.keys) for r in planned)
            out.print(f"--repair would re-read {rows} rows in {len(planned)} tables")
    if drift:
        raise typer.Exit(1)


def _print_reconcile(reports: list[EntityReport]) -> None:
    summary = Table("entity", "in sync", "differing", "missing", "duplicates")
    for r in reports:
        summary.add_row(
            r.entity,
            str(r.in_sync),
            str(len(r.differing)),
            str(len(r.missing)),
            str(len(r.duplicates)),
        )
    out.print(summary)
    for r in reports:
        if not r.drift:
            continue
        details = Table(
            "record", "field", "erp", "crm", "owner", "re-read", title=f"{r.entity}: drift"
        )
        shown = 0
        for pair in r.differing:
            for d in pair.differences:
                if shown < _SHOWN_PER_ENTITY:
                    values = d.as_json()
                    details.add_row(
                        f"erp:{pair.erp.id} / crm:{pair.crm.id}",
                        d.field,
                        "-" if values["erp"] is None else values["erp"],
                        "-" if values["crm"] is None else values["crm"],
                        d.owner,
                        d.reread,
                    )
                shown += 1
        for m in r.missing:
            if shown < _SHOWN_PER_ENTITY:
                reread = m.record.system if m.repairable else "-"
                where = f"{m.record.key} ({m.record.table})"
                details.add_row(where, f"missing in {m.missing_in}", "", "", "", reread)
            shown += 1
        for dup in r.duplicates:
            if shown < _SHOWN_PER_ENTITY:
                ids = ", ".join(f"{dup.system}:{i}" for i in dup.ids)
                details.add_row(ids, f"duplicates of {dup.other.key}", "", "", "", "-")
            shown += 1
        out.print(details)
        if shown > _SHOWN_PER_ENTITY:
            out.print(f"... and {shown - _SHOWN_PER_ENTITY} more (--json lists all)")
    drift = sum(r.drift for r in reports)
    out.print("[green]in sync[/green]" if not drift else f"[red]{drift} drift items[/red]")


@app.command("resnapshot")
def resnapshot(
    system: Annotated[SystemName, typer.Option(help="Source database.")],
    table: Annotated[str, typer.Option(help="Table to re-read: <table> or <schema>.<table>.")],
    where: Annotated[
        str | None,
        typer.Option(
            help="SQL condition selecting the rows (run read-only under the capture role)."
        ),
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            help="Primary key of one row to re-read, column=value (repeat per row; "
            "a composite key as a=1,b=2)."
        ),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(help="Source DSN (default: the capture's, ERPCRM_CDC_DSN or the stack's)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the signal as JSON.")] = False,
) -> None:
    """Ask the running capture to re-read rows of a table (incremental snapshot, op "r")."""
    import psycopg

    from cdc.settings import CaptureSettings
    from cdc.signals import parse_key_option, request_resnapshot

    if dsn:
        os.environ["ERPCRM_CDC_DSN"] = dsn
    _stack_defaults_into_environment(capture_dsn_of=system.value)
    settings = CaptureSettings(system=system.literal)
    with _failing_cleanly("the signal not written", hint="; check the capture's DSN"):
        keys = [parse_key_option(k) for k in key] if key else None
        with psycopg.connect(settings.dsn.get_secret_value(), autocommit=True) as conn:
            signal_id = request_resnapshot(
                conn, table, keys=keys, where=where, signal_table=settings.signal_table
            )
    summary = {
        "signal_id": signal_id,
        "system": system.value,
        "table": table,
        "where": where,
        "keys": len(keys) if keys else None,
    }
    if as_json:
        print(json.dumps(summary))
        return
    rows = f"{len(keys)} rows by key" if keys else "every row"
    if where:
        rows += f" where {where}"
    out.print(
        f"signal {signal_id}: the {system.value} capture re-reads {rows} of {table}, "
        "in chunks, as op=r events with source.snapshot=incremental"
    )


def _stack_defaults_into_environment(
    *, capture_dsn_of: str | None = None, sink_dsn_of: str | None = None
) -> None:
    """Make the local stack the default for any ``ERPCRM_*`` setting not already set.

    Settings read the environment; anything exported there (or in ``ERPCRM_CONFIG``'s
    file for keys not in the environment) wins over the local stack.
    """
    sources = {
        "ERPCRM_KAFKA__BOOTSTRAP": "KAFKA_BOOTSTRAP",
        "ERPCRM_REGISTRY__URL": "SCHEMA_REGISTRY_URL",
    }
    if capture_dsn_of:
        sources["ERPCRM_CDC_DSN"] = f"{capture_dsn_of.upper()}_CAPTURE_DSN"
    if sink_dsn_of:
        sources["ERPCRM_SINK_DSN"] = f"{sink_dsn_of.upper()}_SINK_DSN"
    missing = {setting: key for setting, key in sources.items() if setting not in os.environ}
    if not missing:
        return  # every setting given (``erpcrm run`` passes its own on): the stack is not read
    env = _stack_env()
    for setting, key in missing.items():
        os.environ[setting] = env[key]


def _print_workload(report: WorkloadReport) -> None:
    table = Table("system", "table", "inserted", "updated")
    for system, tables in sorted(report.tables.items()):
        for name, counts in sorted(tables.items()):
            table.add_row(system, name, str(counts.inserts), str(counts.updates))
    out.print(table)
    out.print(
        f"{report.operations} operations in {report.elapsed_seconds:.1f}s "
        f"({report.achieved_rate:.1f}/s; {report.changes} row changes, "
        f"{report.changes_rate:.1f}/s): {report.committed} committed, "
        f"{sum(report.skipped.values())} skipped, {report.failed_total} failed, "
        f"{report.dirty} carried dirty data"
    )
    for kind, errors in sorted(report.failed.items()):
        out.print(f"  failed {kind}: " + ", ".join(f"{e} x{n}" for e, n in errors.items()))


@app.command("demo")
def demo(
    duration: Annotated[float, typer.Option(help="Seconds of business activity.")] = 30,
    rate: Annotated[float, typer.Option(help="Operations per second.")] = 50,
    dirty_ratio: Annotated[float, typer.Option(help="Share of dirty operations.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 1,
) -> None:
    """Start the local stack, capture both databases and show changes flowing, live."""
    from erpcrm.demo import run_demo

    try:
        code = run_demo(console, duration=duration, rate=rate, dirty_ratio=dirty_ratio, seed=seed)
    except SyncError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(code)


def _stack_env() -> dict[str, str]:
    """Endpoints from the environment (``erpcrm stack env``), else the local stack's."""
    from erpcrm.stack import LocalStack

    defaults = LocalStack().env()
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
