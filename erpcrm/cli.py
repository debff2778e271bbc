"""The ``erpcrm`` command line: one entry point for the stack, the workers and the tools.

Logging handlers are configured here and only here; modules log through
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
import time
from enum import StrEnum
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from erpcrm.stack import ComponentStatus, LocalStack
from erpcrm.workload import WorkloadReport
from schemas.errors import SyncError

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


def _fail(exc: SyncError) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {exc}")
    return typer.Exit(code=1)


@stack_app.command("up")
def stack_up() -> None:
    """Start every component (idempotent) and wait until each one answers."""
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
    LocalStack().down(_progress)


@stack_app.command("status")
def stack_status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show each component's state, pid, endpoint and memory; exit 1 unless all are healthy."""
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
    try:
        settings = CaptureSettings(system=system.literal)
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
    try:
        settings = StreamsSettings()
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
    try:
        settings = SinkSettings(target=target.literal)
        run_worker(settings.metrics_port, functools.partial(build_sink, settings))
    except SyncError as exc:
        raise _fail(exc) from exc


@app.command("run")
def run_all() -> None:
    """Run every worker (captures, streams, sinks) under one supervisor, restarting crashes."""
    from erpcrm.supervisor import DEFAULT_WORKERS, Supervisor
    from erpcrm.workers import stop_on_signals

    _stack_defaults_into_environment()
    supervisor = Supervisor(DEFAULT_WORKERS, LocalStack().layout.state / "logs")
    stop_on_signals(supervisor.stop)
    raise typer.Exit(supervisor.run())


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
    from erpcrm.bench_sinks import bench_sinks as run

    try:
        result = run(events=events, batch_size=batch_size, samples=samples, timeout=timeout)
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


def _suspects_target(target: SystemName) -> tuple[str, str]:
    """The sink DSN and sync schema of ``target`` (settings, else the local stack)."""
    from sinks.settings import SinkSettings

    _stack_defaults_into_environment(sink_dsn_of=target.value)
    settings = SinkSettings(target=target.literal)
    return settings.dsn.get_secret_value(), settings.sync_schema


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

    try:
        found = list_suspects(*_suspects_target(target), status)
    except SyncError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps([s.as_json() for s in found], indent=2))
        return
    table = Table("id", "entity", "new record", "duplicate of", "evidence", "status", "last seen")
    for s in found:
        table.add_row(
            str(s.id),
            s.entity,
            s.entity_key,
            s.candidate,
            s.evidence or "",
            s.status,
            s.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


def _decide_suspect(
    target: SystemName, suspect_id: int, action: Literal["release", "link"]
) -> None:
    from erpcrm.suspects import decide

    try:
        done = decide(*_suspects_target(target), suspect_id, action)
    except SyncError as exc:
        raise _fail(exc) from exc
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
) -> None:
    """The same record: the sink writes it into its candidate, now and on later changes."""
    _decide_suspect(target, suspect_id, "link")


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
    from cdc.signals import SignalError, parse_key_option, request_resnapshot

    if dsn:
        os.environ["ERPCRM_CDC_DSN"] = dsn
    _stack_defaults_into_environment(capture_dsn_of=system.value)
    settings = CaptureSettings(system=system.literal)
    try:
        keys = [parse_key_option(k) for k in key] if key else None
        with psycopg.connect(settings.dsn.get_secret_value(), autocommit=True) as conn:
            signal_id = request_resnapshot(
                conn, table, keys=keys, where=where, signal_table=settings.signal_table
            )
    except SignalError as exc:
        raise _fail(exc) from exc
    except psycopg.Error as exc:
        console.print(f"[bold red]error:[/bold red] cannot write the signal: {exc}")
        raise typer.Exit(code=1) from exc
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
    env = _stack_env()
    defaults = {
        "ERPCRM_KAFKA__BOOTSTRAP": env["KAFKA_BOOTSTRAP"],
        "ERPCRM_REGISTRY__URL": env["SCHEMA_REGISTRY_URL"],
    }
    if capture_dsn_of:
        defaults["ERPCRM_CDC_DSN"] = env[f"{capture_dsn_of.upper()}_CAPTURE_DSN"]
    if sink_dsn_of:
        defaults["ERPCRM_SINK_DSN"] = env[f"{sink_dsn_of.upper()}_SINK_DSN"]
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


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
    defaults = LocalStack().env()
    return {key: os.environ.get(key, value) for key, value in defaults.items()}


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
