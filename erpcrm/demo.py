"""``erpcrm demo``: the local stack, every worker, and live business activity syncing.

What it shows, live, once a second: the operations the workload commits in each system,
the change events on the raw, canonical and dead-letter topics, and what each sink did
with the other system's events (applied, skipped as already applied or unchanged,
conflicts resolved, dead letters), read from the sinks' own metrics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cdc.settings import DEFAULT_TABLES
from erpcrm.stack import LocalStack
from erpcrm.workload import WorkloadReport, run_workload
from schemas.errors import StackError
from schemas.topics import CANONICAL_TOPICS, dlq_topic, raw_topic
from sinks.settings import default_metrics_port

_SHOWN_OUTCOMES = ("applied", "stale", "noop", "unknown", "deferred", "dead_lettered")


@dataclass
class _Progress:
    report: WorkloadReport | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _topic_counts(consumer: Consumer, topics: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    metadata = consumer.list_topics(timeout=5)
    for topic in topics:
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            counts[topic] = 0
            continue
        total = 0
        for partition in info.partitions:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=5
                )
            except KafkaException:
                continue  # a topic created a moment ago may not have a leader yet
            total += high - low
        counts[topic] = total
    return counts


def _start_worker(name: str, args: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "erpcrm.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )


def run_demo(
    console: Console, *, duration: float, rate: float, dirty_ratio: float, seed: int
) -> int:
    """Run the demo; returns a process exit code."""
    stack = LocalStack()
    console.print("[bold]1. local stack[/bold]")
    stack.up(lambda message: console.print(f"   {message}"))
    env = stack.env()
    log_dir = stack.layout.state / "demo"
    console.print(
        "[bold]2. workers[/bold]: capture of both databases, the streams worker and both "
        "sinks (logs in .local/demo/)"
    )
    captures = {
        "cdc-erp": _start_worker("cdc-erp", ["cdc", "--system", "erp"], log_dir),
        "cdc-crm": _start_worker("cdc-crm", ["cdc", "--system", "crm"], log_dir),
        "streams": _start_worker("streams", ["streams"], log_dir),
        "sink-crm": _start_worker("sink-crm", ["sink", "--target", "crm"], log_dir),
        "sink-erp": _start_worker("sink-erp", ["sink", "--target", "erp"], log_dir),
    }
    topics = [raw_topic(s, "public", t) for s in ("erp", "crm") for t in DEFAULT_TABLES[s]]
    topics += [*CANONICAL_TOPICS, dlq_topic("streams"), dlq_topic("sinks.crm")]
    topics.append(dlq_topic("sinks.erp"))
    consumer = Consumer({"bootstrap.servers": env["KAFKA_BOOTSTRAP"], "group.id": "erpcrm-demo"})
    progress = _Progress()
    stop = threading.Event()

    def drive() -> None:
        try:
            progress.report = run_workload(
                env["ERP_DSN"],
                env["CRM_DSN"],
                rate=rate,
                duration=duration,
                count=None,
                dirty_ratio=dirty_ratio,
                seed=seed,
                on_progress=lambda r: setattr(progress, "report", r),
                stop=stop,
            )
        except BaseException as exc:
            progress.error = exc
        finally:
            progress.done.set()

    console.print(
        f"[bold]3. business activity[/bold]: {rate:g} ops/s for {duration:g}s, "
        f"dirty ratio {dirty_ratio:g}"
    )
    worker = threading.Thread(target=drive, name="workload", daemon=True)
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        worker.start()
        with Live(console=console, refresh_per_second=2) as live:
            while True:
                for system, proc in captures.items():
                    if proc.poll() is not None:
                        raise StackError(
                            f"{system} exited ({proc.returncode}); see {log_dir / f'{system}.log'}"
                        )
                live.update(_render(progress.report, _topic_counts(consumer, topics), _sinks()))
                if progress.done.is_set():
                    time.sleep(5)  # let the workers drain the last transactions
                    live.update(_render(progress.report, _topic_counts(consumer, topics), _sinks()))
                    break
                time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, previous)
        stop.set()
        for proc in captures.values():
            proc.send_signal(signal.SIGTERM)
        for proc in captures.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        consumer.close()
    if progress.error is not None:
        raise progress.error
    console.print(
        "Sync state, conflicts and outboxes: schema erpcrm_sync in each database; "
        "dashboards in deploy/grafana/. The stack keeps running: `erpcrm stack down` stops it."
    )
    return 0


def _sinks() -> dict[tuple[str, str], dict[str, float]]:
    """Per ``(target, entity)``: event outcomes and conflicts, from the sinks' metrics."""
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for target, port in (
        ("crm", default_metrics_port("crm")),
        ("erp", default_metrics_port("erp")),
    ):
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "erpcrm_sink_events_total":
                    name = sample.labels["outcome"]
                elif sample.name == "erpcrm_sink_conflicts_total":
                    name = "conflicts"
                else:
                    continue
                row = counts[(target, sample.labels["entity"])]
                row[name] = row.get(name, 0.0) + sample.value
    return dict(counts)


def _render(
    report: WorkloadReport | None,
    counts: dict[str, int],
    sinks: dict[tuple[str, str], dict[str, float]],
) -> Group:
    activity = Table("system", "table", "inserted", "updated", title="committed in the source")
    if report is not None:
        for system, tables in sorted(report.tables.items()):
            for table, c in sorted(tables.items()):
                activity.add_row(system, table, str(c.inserts), str(c.updates))
    topics = Table(
        "topic", "events", title="in Kafka: raw (incl. snapshot), canonical, dead letters"
    )
    for topic, count in counts.items():
        topics.add_row(topic, str(count))
    status = ""
    if report is not None:
        status = (
            f"{report.committed} operations committed ({report.achieved_rate:.0f}/s), "
            f"{report.dirty} dirty, {report.failed_total} failed"
        )
    applied = Table(
        "target",
        "entity",
        *_SHOWN_OUTCOMES,
        "conflicts",
        title="applied to the other system (sinks)",
    )
    for (target, entity), row in sorted(sinks.items()):
        if any(row.get(o) for o in (*_SHOWN_OUTCOMES, "conflicts")):
            applied.add_row(
                target,
                entity,
                *(f"{row.get(o, 0):.0f}" for o in (*_SHOWN_OUTCOMES, "conflicts")),
            )
    return Group(status, activity, topics, applied)
