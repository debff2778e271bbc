"""``erpcrm bench streams``: throughput and memory of the streams worker on the local stack.

The worker is run as a user runs it (a separate ``erpcrm streams`` process) with its own
Faust app id, data directory and web port, fed by two captures (``erpcrm cdc --system
erp|crm``) with their own replication slots and topic prefixes, so nothing another run
reads is touched except the shared ``canonical.*``/``dlq.streams`` topics (whose
messages carry the worker's app id in a header).

Method:

1. start both captures and wait until their snapshots are in Kafka;
2. run the workload generator (:func:`erpcrm.workload.run_workload`, clean data, as fast
   as the databases go) for ``operations`` operations and wait until the captures have
   confirmed everything it wrote: the raw topics now hold a backlog (the snapshots plus
   the workload's changes);
3. start the worker and let it drain that backlog; its ``/metrics`` is scraped every
   ``scrape_interval`` seconds. The busy window runs from the first scrape that shows a
   processed event to the last scrape at which the count of change events still grew
   (the captures' heartbeats go on after it); events/s is the events processed in that
   window divided by its length;
4. the run is over when the worker has taken in every raw message, nothing is pending
   (orders, parked records) and the counters have been still for ``settle_seconds``;
5. memory: the worker's peak RSS (``VmHWM``), read just before it is stopped;
6. CPU: the worker's user + system time (``/proc/<pid>/stat``) read at each scrape;
   the CPU seconds of the busy window per 1,000 events in it is less noisy than events/s
   on a shared machine;
7. dead letters by source (:func:`dead_letters_by_source`): the snapshots read whatever
   the databases hold, dirt earlier runs and tests left included, and reject that as
   they should; the clean workload's own changes should give none. Transactions
   released incomplete (``order_timeouts``) and records parked for a reference are
   reported too: a drain measured in a backlog must not give up on what is merely
   further back in it.

Everything the run made is removed at the end: processes, slots, the captures' stored
offsets and topics, the worker's own topics, consumer group and data directory.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from cdc.offsets import OFFSETS_TOPIC
from erpcrm.benchkit import Samples, by_label, cpu_seconds, free_port, peak_rss, scrape, total
from erpcrm.deadletters import DeadLetterRecord
from erpcrm.dlq import DeadLetterTopics
from erpcrm.stack import LocalStack
from erpcrm.stack.postgres import CAPTURE_ROLE, SUPERUSER
from erpcrm.workload import WorkloadReport, run_workload
from schemas.deadletter import (
    H_APP_ID,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_OUTPUT_ID,
)
from schemas.errors import StackError
from schemas.settings import KafkaSettings
from schemas.topics import dlq_topic

ERP_TABLES = (
    "res_partner",
    "product_product",
    "stock_quant",
    "sale_order",
    "sale_order_line",
    "account_move",
)
CRM_TABLES = ("accounts", "contacts", "aos_products", "aos_quotes", "aos_products_quotes")


class _Process:
    """A worker subprocess with a log file; SIGTERM, then SIGKILL, to stop."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, args: list[str], env: dict[str, str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "erpcrm.cli", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise StackError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def _base_env(stack: LocalStack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERPCRM_")}
    env.update(stack.env())
    env["ERPCRM_KAFKA__BOOTSTRAP"] = stack.kafka.bootstrap
    env["ERPCRM_REGISTRY__URL"] = stack.registry.url
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Capture(_Process):
    """``erpcrm cdc --system …`` with its own slot, topic prefix and metrics port."""

    def __init__(self, stack: LocalStack, system: str, tables: tuple[str, ...], run: str) -> None:
        log = stack.layout.state / "bench" / f"streams-{run}-cdc-{system}.log"
        super().__init__(f"{system} capture", log)
        self.stack = stack
        self.system = system
        self.tables = tables
        self.slot = f"bs{run}{system}"
        self.prefix = self.slot
        self.port = free_port()

    @property
    def cluster(self) -> Any:
        return self.stack.erp if self.system == "erp" else self.stack.crm

    def start(self) -> None:
        env = _base_env(self.stack)
        env.update(
            {
                "ERPCRM_CDC_DSN": self.cluster.dsn(CAPTURE_ROLE),
                "ERPCRM_CDC_SLOT": self.slot,
                "ERPCRM_CDC_TOPIC_PREFIX": self.prefix,
                "ERPCRM_CDC_TABLES": ",".join(self.tables),
                "ERPCRM_CDC_METRICS_PORT": str(self.port),
            }
        )
        self.spawn(["cdc", "--system", self.system], env)

    def wait_streaming(self, timeout: float) -> None:
        """Wait until the snapshot is in Kafka and the slot streams."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            samples = scrape(self.port)
            if samples and total(samples, "erpcrm_cdc_received_lsn") > 0:
                with psycopg.connect(self.cluster.dsn(SUPERUSER), autocommit=True) as conn:
                    row = conn.execute(
                        "select active from pg_replication_slots where slot_name = %s",
                        (self.slot,),
                    ).fetchone()
                if row is not None and row[0]:
                    return
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} did not start streaming; see {self.log}")
            time.sleep(0.25)

    def wait_confirmed(self, timeout: float) -> None:
        """Wait until everything written so far is in Kafka (confirmed LSN passed it)."""
        with psycopg.connect(self.cluster.dsn(SUPERUSER), autocommit=True) as conn:
            row = conn.execute("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").fetchone()
        target = int(row[0]) if row else 0
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            samples = scrape(self.port)
            if samples and total(samples, "erpcrm_cdc_confirmed_lsn") >= target:
                return
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} did not confirm LSN {target}; see {self.log}")
            time.sleep(0.25)

    def events(self) -> float:
        samples = scrape(self.port)
        return total(samples, "erpcrm_cdc_events_total") if samples else 0.0

    def cleanup(self, admin: AdminClient) -> None:
        self.stop()
        dsn = self.cluster.dsn(SUPERUSER)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(
                        "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                        "where slot_name = %s and not active",
                        (self.slot,),
                    )
                    row = conn.execute(
                        "select 1 from pg_replication_slots where slot_name = %s", (self.slot,)
                    ).fetchone()
                if row is None:
                    break
            except psycopg.errors.ObjectInUse:
                pass
            time.sleep(0.2)
        producer = Producer({"bootstrap.servers": self.stack.kafka.bootstrap})
        producer.produce(OFFSETS_TOPIC, key=self.slot.encode(), value=None)
        producer.flush(10)
        _delete_topics(admin, f"{self.prefix}.")


class _Streams(_Process):
    """``erpcrm streams`` with its own app id, data directory and web port."""

    def __init__(self, stack: LocalStack, erp: _Capture, crm: _Capture, run: str) -> None:
        super().__init__(
            "streams worker", stack.layout.state / "bench" / f"streams-{run}-worker.log"
        )
        self.stack = stack
        self.app_id = f"bench-streams-{run}"
        self.data_dir = stack.layout.state / "bench" / self.app_id
        self.port = free_port()
        self.prefixes = {"erp": erp.prefix, "crm": crm.prefix}
        self.peak_rss = 0

    def start(self) -> None:
        env = _base_env(self.stack)
        env.update(
            {
                "ERPCRM_STREAMS_APP_ID": self.app_id,
                "ERPCRM_STREAMS_DATA_DIR": str(self.data_dir),
                "ERPCRM_STREAMS_WEB_PORT": str(self.port),
                "ERPCRM_STREAMS_ERP_TOPIC_PREFIX": self.prefixes["erp"],
                "ERPCRM_STREAMS_CRM_TOPIC_PREFIX": self.prefixes["crm"],
            }
        )
        self.spawn(["streams"], env)

    def sample_rss(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.peak_rss = max(self.peak_rss, peak_rss(self.proc.pid))

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the worker has used so far; 0 once it has exited."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.sample_rss()
        super().stop()

    def cleanup(self, admin: AdminClient) -> None:
        self.stop()
        _delete_topics(admin, f"{self.app_id}-")
        if self.proc is not None:
            for future in admin.delete_consumer_groups([self.app_id], request_timeout=30).values():
                with contextlib.suppress(Exception):  # never joined: nothing to delete
                    future.result(timeout=30)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _delete_topics(admin: AdminClient, prefix: str) -> None:
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)


_Position = tuple[str, int]
"""A topic and partition."""


def _watermarks(bootstrap: str, prefixes: tuple[str, ...]) -> dict[_Position, tuple[int, int]]:
    """Per partition of the captures' topics, its low and high watermark offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        metadata = consumer.list_topics(timeout=10)
        found = {}
        for name, topic in metadata.topics.items():
            if not name.startswith(tuple(f"{p}." for p in prefixes)):
                continue
            for partition in topic.partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(name, partition), timeout=10
                )
                found[(name, int(partition))] = (int(low), int(high))
        return found
    finally:
        consumer.close()


def _raw_messages(bootstrap: str, prefixes: tuple[str, ...]) -> int:
    """Messages (changes, tombstones, transaction records) in the captures' topics."""
    return sum(high - low for low, high in _watermarks(bootstrap, prefixes).values())


def dead_letters_by_source(
    letters: Iterable[DeadLetterRecord],
    app_id: str,
    snapshot_ends: Mapping[_Position, int],
) -> dict[str, Any]:
    """The run's dead letters by where their record came from, and repeated ones.

    ``snapshot``: records of the captures' snapshots (offsets below ``snapshot_ends``,
    each partition's end when the snapshots were in), i.e. data that was in the
    databases before the workload ran: dirt an earlier run or test left there is
    rejected, as it should be. ``workload``: records of the workload's changes, none
    for a clean workload. ``repeated``: dead letters whose output id was published
    before (the same failure twice). Letters of other apps are left out. Pure.
    """
    by_source: dict[str, Counter[str]] = {"snapshot": Counter(), "workload": Counter()}
    seen: set[str] = set()
    repeated = 0
    for letter in letters:
        headers = letter.headers
        if headers.get(H_APP_ID) != app_id:
            continue
        output_id = headers.get(H_OUTPUT_ID, letter.id)
        if output_id in seen:
            repeated += 1
            continue
        seen.add(output_id)
        origin = (headers.get(H_ORIGIN_TOPIC, ""), int(headers.get(H_ORIGIN_PARTITION, "0")))
        offset = int(headers.get(H_ORIGIN_OFFSET, "0"))
        source = "snapshot" if offset < snapshot_ends.get(origin, 0) else "workload"
        by_source[source][letter.reason] += 1
    return {
        "snapshot": dict(sorted(by_source["snapshot"].items())),
        "workload": dict(sorted(by_source["workload"].items())),
        "repeated": repeated,
    }


def _drain(
    streams: _Streams, raw_messages: int, *, interval: float, settle: float, timeout: float
) -> dict[str, Any]:
    """Scrape the worker until it has processed the backlog; return the window and counts."""
    deadline = time.monotonic() + timeout
    # (when, change events in, all records in, worker CPU seconds) at the first busy
    # scrape, at the last change
    first: tuple[float, float, float, float] | None = None
    last_change: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    samples: Samples = {}
    while True:
        streams.check_alive()
        now = time.monotonic()
        scraped = scrape(streams.port)
        cpu = streams.cpu_seconds()
        streams.sample_rss()
        if scraped is not None:
            samples = scraped
            events = total(samples, "erpcrm_streams_events_in_total", flow="transaction")
            records = total(samples, "erpcrm_streams_events_in_total")
            if events > 0 and first is None:
                first = last_change = (now, events, records, cpu)
            # Change events, not transaction records: the captures' heartbeats (an empty
            # transaction every few seconds) go on after the backlog is drained.
            if first is not None and events != last_change[1]:
                last_change = (now, events, records, cpu)
            consumed = by_label(samples, "erpcrm_streams_consumed_total", "kind").get("change", 0.0)
            pending = total(samples, "erpcrm_streams_pending")
            if (
                first is not None
                and consumed >= raw_messages
                and pending == 0
                and now - last_change[0] >= settle
            ):
                break
        if now > deadline:
            raise StackError(
                f"the streams worker did not drain the backlog in {timeout:.0f}s; see {streams.log}"
            )
        time.sleep(interval)
    assert first is not None
    seconds = max(last_change[0] - first[0], interval)
    busy_events = last_change[1] - first[1]
    busy_cpu = last_change[3] - first[3]
    events_in = total(samples, "erpcrm_streams_events_in_total", flow="transaction")
    consumed = by_label(samples, "erpcrm_streams_consumed_total", "kind").get("change", 0.0)
    return {
        "raw_messages": raw_messages,
        "events_in": int(events_in),
        "transaction_records_in": int(
            total(samples, "erpcrm_streams_events_in_total")
            - total(samples, "erpcrm_streams_events_in_total", flow="transaction")
        ),
        "busy_seconds": round(seconds, 3),
        "events_in_busy_window": int(busy_events),
        "events_in_per_second": round(busy_events / seconds, 1),
        "records_in_per_second": round((last_change[2] - first[2]) / seconds, 1),
        "worker_cpu_seconds_busy_window": round(busy_cpu, 3),
        "worker_cpu_seconds_per_1000_events": round(1000 * busy_cpu / max(busy_events, 1), 4),
        "messages_consumed": int(consumed),
        "canonical_events_out": int(total(samples, "erpcrm_streams_events_out_total")),
        "dead_letters": int(total(samples, "erpcrm_streams_dead_letters_total")),
        "deduped": int(total(samples, "erpcrm_streams_deduped_total")),
        "no_ops": int(total(samples, "erpcrm_streams_no_ops_total")),
        "skipped": int(total(samples, "erpcrm_streams_skipped_total")),
        "events_in_by_flow": by_label(samples, "erpcrm_streams_events_in_total", "flow"),
        "events_out_by_flow": by_label(samples, "erpcrm_streams_events_out_total", "flow"),
        "dead_letters_by_reason": by_label(samples, "erpcrm_streams_dead_letters_total", "reason"),
        "orders_assembled": by_label(samples, "erpcrm_streams_orders_assembled_total", "how"),
        "order_timeouts": by_label(samples, "erpcrm_streams_order_timeouts_total", "system"),
        "parked_by_reason": by_label(samples, "erpcrm_streams_parked_total", "reason"),
    }


def bench_streams(
    *,
    operations: int,
    seed: int = 7,
    rate: float = math.inf,
    scrape_interval: float = 0.2,
    settle_seconds: float = 3.0,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Run the streams benchmark on the local stack (which must be up)."""
    stack = LocalStack()
    if not all(s.healthy for s in stack.status()):
        raise StackError("the local stack is not up: run `erpcrm stack up` first")
    run = uuid.uuid4().hex[:8]
    erp = _Capture(stack, "erp", ERP_TABLES, run)
    crm = _Capture(stack, "crm", CRM_TABLES, run)
    streams = _Streams(stack, erp, crm, run)
    admin = AdminClient({"bootstrap.servers": stack.kafka.bootstrap})
    started = time.monotonic()
    try:
        erp.start()
        crm.start()
        erp.wait_streaming(timeout)
        crm.wait_streaming(timeout)
        snapshot_events = erp.events() + crm.events()
        snapshot_ends = {
            position: high
            for position, (_, high) in _watermarks(
                stack.kafka.bootstrap, (erp.prefix, crm.prefix)
            ).items()
        }
        report: WorkloadReport | None = None
        if operations > 0:
            report = run_workload(
                stack.erp.dsn(),
                stack.crm.dsn(),
                rate=rate,
                duration=None,
                count=operations,
                dirty_ratio=0.0,
                seed=seed,
            )
        erp.wait_confirmed(timeout)
        crm.wait_confirmed(timeout)
        change_events = erp.events() + crm.events()
        raw = _raw_messages(stack.kafka.bootstrap, (erp.prefix, crm.prefix))
        streams.start()
        worker_started = time.monotonic()
        result = _drain(
            streams,
            raw,
            interval=scrape_interval,
            settle=settle_seconds,
            timeout=timeout,
        )
        result["worker_start_to_drained_seconds"] = round(time.monotonic() - worker_started, 3)
        streams.stop()
        topics = DeadLetterTopics(
            KafkaSettings(bootstrap=stack.kafka.bootstrap),
            stack.registry.url,
            topics=(dlq_topic("streams"),),
        )
        result["dead_letters_by_source"] = dead_letters_by_source(
            topics.letters(), streams.app_id, snapshot_ends
        )
    finally:
        streams.cleanup(admin)
        erp.cleanup(admin)
        crm.cleanup(admin)
    return {
        "benchmark": "streams",
        "machine": {"cpus": os.cpu_count()},
        "method": "backlog drain: snapshots + workload in the raw topics, then the worker starts",
        "source": {
            "snapshot_change_events": int(snapshot_events),
            "workload_change_events": int(change_events - snapshot_events),
            "change_events": int(change_events),
            "workload": None
            if report is None
            else {
                "operations": report.operations,
                "committed": report.committed,
                "seconds": round(report.elapsed_seconds, 3),
                "seed": seed,
                "dirty_ratio": 0.0,
            },
        },
        "throughput": result,
        "worker_peak_rss_bytes": streams.peak_rss,
        "worker_peak_rss_mib": round(streams.peak_rss / 2**20, 1),
        "total_seconds": round(time.monotonic() - started, 3),
    }
