"""``erpcrm bench e2e``: the whole pipeline under load, at a series of rates.

Every worker runs as ``erpcrm run`` runs it (started here, stopped at the end; the
benchmark refuses to start while workers are already answering, since it could not
measure or stop them). The workload generator (:func:`~erpcrm.workload.run_workload_parallel`,
mixed flows, a share of dirty data) drives both demo databases at each rate in turn, in
row changes per second, for ``seconds`` each. Per rate (a *step*):

1. the counters of every worker are read (``/metrics``);
2. the workload runs for ``seconds``; meanwhile every worker's RSS and CPU time are
   sampled from ``/proc`` twice a second (``cpu_percent``: of one core, over the step's
   load and drain);
3. the lag left when the load stops: each replication slot's WAL not yet confirmed, the
   records the streams worker's consumer group has not committed yet, each sink's lag
   and deferred events (its own metrics);
4. the pipeline drains, for at most ``drain_seconds`` (see :meth:`_Lag.drain`);
5. the counters again: the step's end-to-end latency is the difference of the sinks' own
   histogram (``erpcrm_sink_end_to_end_seconds``, source commit to target commit, per
   applied event) between 1 and 5, per direction, with p50/p95/p99 interpolated inside
   the buckets; dead letters are the streams' and sinks' dead-letter counters' growth.

A step that did not drain in time leaves a backlog to the next one, whose latencies then
include it (its ``backlog_at_start`` says so). The highest *sustained* rate is the highest
step that drained and whose p99 stayed under 1 s in both directions.

What stays behind: the rows the workload wrote, in the demo databases (as ``erpcrm
workload`` leaves them), and the pipeline's progress on them (slots, offsets, sync
state), as after any ``erpcrm run``. The benchmark creates no topic, slot or table.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from cdc.settings import default_metrics_port as capture_port
from erpcrm.benchkit import (
    Samples,
    bucket_delta,
    buckets,
    children,
    command_line,
    cpu_seconds,
    peak_rss,
    pipeline,
    quantile,
    rss,
    scrape,
    total,
)
from erpcrm.stack import LocalStack
from erpcrm.stack.postgres import SUPERUSER
from erpcrm.supervisor import DEFAULT_WORKERS
from erpcrm.workload import run_workload_parallel
from schemas.errors import StackError
from sinks.settings import default_metrics_port as sink_port
from streams.settings import default_web_port

__all__ = ["DEFAULT_RATES", "bench_e2e"]

DEFAULT_RATES = (250, 500, 1000, 2000, 5000)
SUSTAINED_P99_SECONDS = 1.0
E2E_HISTOGRAM = "erpcrm_sink_end_to_end_seconds"
DIRECTIONS = {"erp_to_crm": "crm", "crm_to_erp": "erp"}
"""Direction -> the sink target that measures it."""


def _ports() -> dict[str, int]:
    """Each worker's metrics port, as ``erpcrm run`` starts them (the stack's offset too)."""
    return {
        "cdc-erp": capture_port("erp"),
        "cdc-crm": capture_port("crm"),
        "streams": default_web_port(),
        "sink-crm": sink_port("crm"),
        "sink-erp": sink_port("erp"),
    }


_SLOTS = {"erp": "erpcrm_erp", "crm": "erpcrm_crm"}
_STREAMS_GROUP = "erpcrm-streams"


# --------------------------------------------------------------------------- workers


@dataclass
class _WorkerFigures:
    """RSS and CPU of one worker kind over one step (across restarts)."""

    peak_rss: int = 0
    cpu: float = 0.0
    pids: set[int] = field(default_factory=set)


class _Sampler:
    """Samples the RSS and CPU time of ``erpcrm run``'s children on a thread.

    Workers are recognised by their arguments (:data:`~erpcrm.supervisor.DEFAULT_WORKERS`);
    a restarted worker is a new pid under the same name, counted in ``restarts``.
    """

    def __init__(self, run_pid: int, interval: float = 0.5) -> None:
        self._run_pid = run_pid
        self._interval = interval
        self._lock = threading.Lock()
        self._cpu: dict[int, float] = {}  # last CPU seconds seen per pid
        self._step: dict[str, _WorkerFigures] = {}
        self._peak: dict[int, int] = {}  # VmHWM per pid, whole run
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def __enter__(self) -> _Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def _workers(self) -> dict[int, str]:
        found: dict[int, str] = {}
        for pid in children(self._run_pid):
            args = command_line(pid)
            for spec in DEFAULT_WORKERS:
                if args[-len(spec.args) :] == spec.args:
                    found[pid] = spec.name
        return found

    def sample(self) -> None:
        """Read every worker's RSS and CPU time now."""
        workers = self._workers()
        with self._lock:
            for pid, name in workers.items():
                self._names[pid] = name
                figures = self._step.setdefault(name, _WorkerFigures())
                figures.pids.add(pid)
                figures.peak_rss = max(figures.peak_rss, rss(pid))
                self._peak[pid] = max(self._peak.get(pid, 0), peak_rss(pid))
                now = cpu_seconds(pid)
                figures.cpu += max(0.0, now - self._cpu.get(pid, now))
                self._cpu[pid] = now

    def step(self, seconds: float) -> dict[str, dict[str, Any]]:
        """Figures since the previous call (or the start); starts the next step."""
        self.sample()
        with self._lock:
            step, self._step = self._step, {}
        return {
            name: {
                "peak_rss_mib": round(figures.peak_rss / 2**20, 1),
                "cpu_percent": round(100 * figures.cpu / seconds, 1) if seconds > 0 else 0.0,
            }
            for name, figures in sorted(step.items())
        }

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per worker, the peak RSS of the whole run (``VmHWM``) and its restarts."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for pid, name in self._names.items():
                entry = out.setdefault(name, {"peak_rss_mib": 0.0, "processes": 0})
                entry["peak_rss_mib"] = max(
                    entry["peak_rss_mib"], round(self._peak.get(pid, 0) / 2**20, 1)
                )
                entry["processes"] += 1
        for entry in out.values():
            entry["restarts"] = entry.pop("processes") - 1
        return dict(sorted(out.items()))


# ------------------------------------------------------------------------------- lag


class _Lag:
    """The pipeline's backlog: unconfirmed WAL per slot and records per consumer group."""

    def __init__(self, stack: LocalStack) -> None:
        self._dsn = {"erp": stack.erp.dsn(SUPERUSER), "crm": stack.crm.dsn(SUPERUSER)}
        bootstrap = stack.kafka.bootstrap
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "erpcrm-bench-e2e-lag"}
        )

    def close(self) -> None:
        """Release the Kafka clients."""
        self._consumer.close()

    def wal_positions(self) -> dict[str, int]:
        """Each database's current WAL position (bytes)."""
        out = {}
        for system, dsn in self._dsn.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    "select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
                ).fetchone()
            out[system] = int(str(row[0])) if row else 0
        return out

    def confirmed(self) -> dict[str, int]:
        """Each capture slot's confirmed position (bytes; 0 if the slot is missing)."""
        out = {}
        for system, dsn in self._dsn.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    "select (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint "
                    "from pg_replication_slots where slot_name = %s",
                    (_SLOTS[system],),
                ).fetchone()
            out[system] = int(str(row[0])) if row and row[0] is not None else 0
        return out

    def streams(self) -> int:
        """Records the streams worker's group has not committed yet (its inputs)."""
        lag = 0
        # A group that never committed has no backlog to report.
        with contextlib.suppress(Exception):
            request = [ConsumerGroupTopicPartitions(_STREAMS_GROUP)]
            future = self._admin.list_consumer_group_offsets(request)[_STREAMS_GROUP]
            for tp in future.result(timeout=10).topic_partitions:
                if tp.offset < 0 or tp.topic.endswith("-changelog"):
                    continue
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=10
                )
                lag += max(0, int(high) - tp.offset)
        return lag

    def snapshot(self) -> dict[str, Any]:
        """The whole backlog now (the sinks' part from their own metrics)."""
        wal = self.wal_positions()
        confirmed = self.confirmed()
        sinks = {t: scrape(sink_port(t)) or {} for t in ("crm", "erp")}
        return {
            "slot_lag_bytes": {s: max(0, wal[s] - confirmed[s]) for s in wal},
            "streams_lag_records": self.streams(),
            "sink_lag_events": {
                t: int(total(m, "erpcrm_sink_lag_events")) for t, m in sinks.items()
            },
            "sink_deferred_events": {
                t: int(total(m, "erpcrm_sink_deferred_events")) for t, m in sinks.items()
            },
        }

    def drain(self, wal: dict[str, int], timeout: float, quiet: float = 3.0) -> tuple[bool, float]:
        """Wait until the pipeline has caught up with ``wal``; (drained, seconds).

        Caught up: both slots confirmed ``wal``, the streams worker's group lags by
        nothing, neither sink reports a lag (``erpcrm_sink_lag_events``, high watermark
        minus position; the sinks store their own offsets only with what they write), and
        neither sink has applied anything for ``quiet`` seconds (applied: the count of
        its end-to-end histogram; re-read events it skips do not count).
        """
        started = time.monotonic()
        applied, still_since = -1.0, started
        while True:
            now = time.monotonic()
            sinks = [scrape(sink_port(t)) for t in ("crm", "erp")]
            count = sum(total(m, f"{E2E_HISTOGRAM}_count") for m in sinks if m is not None)
            if count != applied:
                applied, still_since = count, now
            confirmed = self.confirmed()
            if (
                all(confirmed[s] >= wal[s] for s in wal)
                and all(m is not None and not total(m, "erpcrm_sink_lag_events") for m in sinks)
                and now - still_since >= quiet
                and not self.streams()
            ):
                return True, now - started
            if now - started >= timeout:
                return False, now - started
            time.sleep(0.5)


# --------------------------------------------------------------------------- metrics


def _scrape_all(timeout: float = 60.0) -> dict[str, Samples]:
    """Every worker's metrics; waits for a worker that is restarting, up to ``timeout``."""
    out = {}
    deadline = time.monotonic() + timeout
    for name, port in _ports().items():
        while (samples := scrape(port)) is None:
            if time.monotonic() > deadline:
                raise StackError(f"worker {name} does not answer on port {port}")
            time.sleep(0.5)
        out[name] = samples
    return out


def _dead_letters(samples: dict[str, Samples]) -> dict[str, float]:
    return {
        "streams": total(samples["streams"], "erpcrm_streams_dead_letters_total"),
        **{
            f"sink_{target}": sum(
                value
                for (name, labels), value in samples[f"sink-{target}"].items()
                if name == "erpcrm_sink_events_total" and ("outcome", "dead_lettered") in labels
            )
            for target in ("crm", "erp")
        },
    }


def _latency(before: dict[str, Samples], after: dict[str, Samples]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for direction, target in DIRECTIONS.items():
        worker = f"sink-{target}"
        delta = bucket_delta(
            buckets(after[worker], E2E_HISTOGRAM), buckets(before[worker], E2E_HISTOGRAM)
        )
        applied = int(delta.get(math.inf, 0.0))
        entry: dict[str, Any] = {"applied": applied}
        for q in (0.5, 0.95, 0.99):
            value = quantile(delta, q)
            entry[f"p{round(q * 100)}_ms"] = None if math.isnan(value) else round(value * 1000, 1)
        under = delta.get(SUSTAINED_P99_SECONDS)
        share = None if under is None or not applied else round(under / applied, 4)
        entry["share_under_1s"] = share
        out[direction] = entry
    return out


def _sustained(step: dict[str, Any]) -> bool:
    if not step["drained"]:
        return False
    p99s = [d["p99_ms"] for d in step["latency"].values() if d["applied"]]
    return bool(p99s) and all(p < SUSTAINED_P99_SECONDS * 1000 for p in p99s)


# ------------------------------------------------------------------------------ run


@dataclass(frozen=True)
class E2eOptions:
    """How ``erpcrm bench e2e`` runs (see the CLI for each option's meaning)."""

    rates: Sequence[float] = DEFAULT_RATES
    seconds: float = 30.0
    drain_seconds: float = 60.0
    dirty_ratio: float = 0.1
    processes: int = 4
    ops_per_commit: int = 1
    seed: int = 11
    start_timeout: float = 300.0


@contextlib.contextmanager
def _workers(stack: LocalStack, options: E2eOptions) -> Iterator[int]:
    log = stack.layout.state / "bench" / "e2e-run.log"
    with pipeline(log, _ports().values(), options.start_timeout, reuse=False) as process:
        assert process is not None
        yield process.pid


def _step(
    stack: LocalStack, lag: _Lag, sampler: _Sampler, options: E2eOptions, index: int, rate: float
) -> dict[str, Any]:
    backlog = lag.snapshot()
    before = _scrape_all()
    sampler.step(1.0)  # start the step's figures now
    started = time.monotonic()
    report = run_workload_parallel(
        stack.erp.dsn(),
        stack.crm.dsn(),
        processes=options.processes,
        rate=rate,
        duration=options.seconds,
        count=None,
        dirty_ratio=options.dirty_ratio,
        seed=options.seed + 1000 * index,
        ops_per_commit=options.ops_per_commit,
        pace_by="changes",
    )
    loaded = time.monotonic()
    wal = lag.wal_positions()
    left = lag.snapshot()
    drained, drain_seconds = lag.drain(wal, options.drain_seconds)
    after = _scrape_all()
    workers = sampler.step(time.monotonic() - started)
    dead_before, dead_after = _dead_letters(before), _dead_letters(after)
    step: dict[str, Any] = {
        "target_changes_per_second": rate,
        "source": {
            "changes": report.changes,
            "changes_per_second": round(report.changes_rate, 1),
            "operations": report.operations,
            "operations_per_second": round(report.achieved_rate, 1),
            "failed_operations": report.failed_total,
            "seconds": round(loaded - started, 2),
        },
        "backlog_at_start": backlog,
        "latency": _latency(before, after),
        "lag_at_end_of_load": left,
        "drained": drained,
        "drain_seconds": round(drain_seconds, 2),
        "dead_letters": {k: int(dead_after[k] - dead_before[k]) for k in dead_after},
        "workers": workers,
    }
    step["sustained"] = _sustained(step)
    return step


def bench_e2e(options: E2eOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark (module doc) on the running local stack; return the JSON.

    ``progress``, if given, is called with a line of text as each step ends.
    """
    stack = LocalStack()
    if not all(s.healthy for s in stack.status()):
        raise StackError("the local stack is not up: run `erpcrm stack up` first")
    started = time.monotonic()
    steps: list[dict[str, Any]] = []
    lag = _Lag(stack)
    try:
        with _workers(stack, options) as run_pid, _Sampler(run_pid) as sampler:
            # What the pipeline finds on start (a snapshot, changes made while it was
            # down) is caught up before the first step, for at most start_timeout.
            warmed, warm_seconds = lag.drain(lag.wal_positions(), options.start_timeout)
            warm_up = {"drained": warmed, "seconds": round(warm_seconds, 1)}
            sampler.step(1.0)
            for index, rate in enumerate(options.rates):
                step = _step(stack, lag, sampler, options, index, rate)
                steps.append(step)
                if progress is not None:
                    progress(_step_line(step))
            workers = sampler.summary()
    finally:
        lag.close()
    sustained = [s["target_changes_per_second"] for s in steps if s["sustained"]]
    return {
        "benchmark": "e2e",
        "machine": {"cpus": os.cpu_count()},
        "options": {
            "rates": list(options.rates),
            "seconds": options.seconds,
            "drain_seconds": options.drain_seconds,
            "dirty_ratio": options.dirty_ratio,
            "workload_processes": options.processes,
            "ops_per_commit": options.ops_per_commit,
            "seed": options.seed,
        },
        "warm_up": warm_up,
        "steps": steps,
        "highest_sustained_changes_per_second": max(sustained) if sustained else None,
        "sustained_means": "drained within drain_seconds, p99 < 1 s in both directions",
        "workers": workers,
        "total_seconds": round(time.monotonic() - started, 1),
    }


def _step_line(step: dict[str, Any]) -> str:
    latency = step["latency"]
    return (
        f"{step['target_changes_per_second']:g}/s: source "
        f"{step['source']['changes_per_second']:g}/s, "
        + ", ".join(
            f"{d} p99 {v['p99_ms']} ms ({v['applied']} applied)" for d, v in latency.items()
        )
        + f", drained={step['drained']} in {step['drain_seconds']}s"
    )


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """The readable table of a result: one row per step (see :data:`TABLE_COLUMNS`)."""
    rows = []
    for step in result["steps"]:
        latency = step["latency"]

        def ms(direction: str, key: str, latency: dict[str, Any] = latency) -> str:
            value = latency[direction][key]
            return "-" if value is None else f"{value:,.0f}"

        left = step["lag_at_end_of_load"]
        peak = max((w["peak_rss_mib"] for w in step["workers"].values()), default=0.0)
        rows.append(
            [
                f"{step['target_changes_per_second']:,.0f}",
                f"{step['source']['changes_per_second']:,.0f}",
                *(ms("erp_to_crm", k) for k in ("p50_ms", "p95_ms", "p99_ms")),
                *(ms("crm_to_erp", k) for k in ("p50_ms", "p95_ms", "p99_ms")),
                f"{left['streams_lag_records'] + sum(left['sink_lag_events'].values()):,}",
                "yes" if step["drained"] else f"no ({step['drain_seconds']:.0f}s)",
                f"{sum(step['dead_letters'].values()):,}",
                f"{peak:.0f}",
                "yes" if step["sustained"] else "no",
            ]
        )
    return rows


TABLE_COLUMNS = (
    "target/s",
    "source/s",
    "erp→crm p50 ms",
    "p95",
    "p99",
    "crm→erp p50 ms",
    "p95",
    "p99",
    "lag left",
    "drained",
    "dead letters",
    "max RSS MiB",
    "sustained",
)
