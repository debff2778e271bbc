"""``erpcrm bench sinks``: how fast a sink applies, and how long a change takes end to end.

Two measurements on the local stack, printed as one JSON document.

**Apply throughput** (the sink alone, real Kafka and PostgreSQL). ``events`` canonical
customer events (ERP customers, as the streams stage publishes them: with their payload
hash in a header) are produced to a
private topic, and a :class:`~sinks.runner.SinkRunner` for the CRM, in this process,
with its own consumer group and sync-state schema, applies them three times over:

1. ``insert``: every event creates an account (multi-row ``INSERT``);
2. ``update``: a second version of every customer, with a new name and city;
3. ``replay``: the stored positions are set back to the start and both versions are
   read again: every event is skipped as already applied, nothing is written.

Per phase: events/s from the first to the last committed batch, the per-batch apply
time (one database transaction) p50/p99, and the benchmark process's CPU time per event
(every thread: reading, decoding, applying) and the CRM database's CPU time per event (its
postmaster and every backend, ended sessions included: the sink's session, and whatever
else the cluster ran meanwhile, such as autovacuum), which other work on the machine
disturbs less than the rates. Everything the run made is removed at the
end (accounts, schema, topic, group).

**End to end** (the whole pipeline as ``erpcrm run`` runs it; started here if its
workers are not answering, and stopped again). ``samples`` changes are committed one at
a time in each system, on customers the two systems share, and the other system is
polled every few milliseconds until the change is visible: source commit to visible in
the target, p50/p99/max per direction. The measurement starts once the sinks have
caught up, after one warm-up change per direction.

Also reported: the benchmark process's peak RSS (it holds the in-process sink).

A step that fails leaves what it measured: the phases done, and its ``error``
(:class:`~erpcrm.benchkit.BenchStepError`); the CLI prints them, then the error.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from pydantic import SecretStr

from erpcrm.benchkit import BenchStepError, pipeline, step, tree_cpu_seconds
from erpcrm.stack import LocalStack
from erpcrm.stack.postgres import SINK_ROLE, SUPERUSER
from schemas.canonical import canonical_schema
from schemas.errors import StackError
from schemas.mapping import load_mappings, ownership
from schemas.payload import payload_hash, payload_hash_header
from schemas.serde import AvroSerde, RegistryClient
from schemas.settings import KafkaSettings, RegistrySettings
from sinks.batch import SinkBatch
from sinks.metrics import SinkMetrics
from sinks.postgres import PostgresUpsertSink, Unparked
from sinks.runner import RunStats, SinkRunner
from sinks.settings import SinkSettings, default_metrics_port
from sinks.targets import Direction, build_tables, deterministic_id

__all__ = ["BenchStepError", "bench_sinks"]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_percentile(values, 0.5) * 1000, 1),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1) if values else float("nan"),
    }


def _peak_rss_mib() -> float:
    text = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return round(int(match.group(1)) / 1024, 1) if match else float("nan")


# ------------------------------------------------------------------ apply throughput


class _Timed:
    """Wraps a sink's ``write`` to time every batch."""

    def __init__(self, sink: PostgresUpsertSink) -> None:
        self.sink = sink
        self.batches: list[tuple[float, float, int]] = []  # (start, seconds, events)
        original = sink.write

        def write(
            batch: SinkBatch,
            *,
            store_offsets: bool = True,
            unparked: Unparked | None = None,
            carried_out: Sequence[int] = (),
        ) -> Any:
            started = time.monotonic()
            result = original(
                batch, store_offsets=store_offsets, unparked=unparked, carried_out=carried_out
            )
            self.batches.append((started, time.monotonic() - started, len(batch)))
            return result

        sink.write = write  # type: ignore[method-assign]


def _customer(run: str, index: int, version: int) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "event_id": f"bench-{run}-{index}-{version}",
        "source_system": "erp",
        "source_lsn": version,
        "source_tx_id": None,
        "source_ts_ms": now,
        "op": "upsert",
        "version": version,
        "erp_id": str(10_000_000 + index),
        "crm_id": None,
        "customer_number": f"B{run[:6].upper()}{index:07d}",
        "name": f"Bench customer {index} v{version}",
        "is_company": True,
        "vat": None,
        "email": f"bench{index}@example.com",
        "phone": None,
        "website": None,
        "street": f"Street {index}",
        "city": "Berlin" if version == 1 else "Hamburg",
        "zip": "10115",
        "country_code": "DE",
        "industry": None,
        "active": True,
    }


def _apply_phase(
    runner_factory: Callable[[], tuple[SinkRunner, _Timed]],
    outcome: str,
    expected: int,
    timeout: float,
    database_pid: int | None,
) -> dict[str, Any]:
    runner, timed = runner_factory()
    deadline = time.monotonic() + timeout
    cpu_started = time.process_time()
    database_started = tree_cpu_seconds(database_pid) if database_pid else 0.0

    def done(stats: RunStats) -> bool:
        if time.monotonic() > deadline:
            raise StackError(f"the sink {outcome} phase did not finish in {timeout:.0f}s")
        return stats.outcomes.get(outcome, 0) >= expected

    stats = runner.run(until=done)
    cpu_seconds = time.process_time() - cpu_started
    database_seconds = tree_cpu_seconds(database_pid) - database_started if database_pid else 0.0
    busy = [b for b in timed.batches if b[2] > 0]
    if not busy:
        raise StackError(f"no batch was applied in the {outcome} phase")
    window = (busy[-1][0] + busy[-1][1]) - busy[0][0]
    return {
        "events": stats.outcomes.get(outcome, 0),
        "events_per_second": round(stats.outcomes.get(outcome, 0) / window, 1),
        "batches": len(busy),
        "mean_batch_size": round(statistics.mean(b[2] for b in busy), 1),
        "batch_apply": _ms([b[1] for b in busy]),
        "process_cpu_us_per_event": round(cpu_seconds * 1e6 / max(1, stats.events), 1),
        "database_cpu_us_per_event": round(database_seconds * 1e6 / max(1, stats.events), 1),
    }


def _throughput(
    stack: LocalStack, events: int, batch_size: int, timeout: float, result: dict[str, Any]
) -> None:
    """The three apply phases; each one's figures go into ``result`` as it ends."""
    run = uuid.uuid4().hex[:10]
    topic = f"erpcrm-bench-{run}.customer"
    schema = f"bench_{run}"
    group = f"erpcrm-bench-{run}"
    admin_dsn = stack.crm.dsn(SUPERUSER, stack.crm.database)
    bootstrap = stack.kafka.bootstrap
    kafka = AdminClient({"bootstrap.servers": bootstrap})
    for future in kafka.create_topics([NewTopic(topic, num_partitions=3)]).values():
        future.result(timeout=30)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(SINK_ROLE)
            )
        )
    registry_url = stack.env()["SCHEMA_REGISTRY_URL"]
    client = RegistryClient(registry_url)
    serde = AvroSerde(client)
    flows = load_mappings()
    tables = {
        t.entity: t for t in build_tables(flows).values() if t.direction is Direction.ERP_TO_CRM
    }
    settings = SinkSettings(
        target="crm",
        dsn=SecretStr(stack.crm.dsn(SINK_ROLE)),
        sync_schema=schema,
        group_id=group,
        batch_size=batch_size,
        announce=False,
        kafka=KafkaSettings(bootstrap=bootstrap),
        registry=RegistrySettings(url=registry_url),
    )

    def runner() -> tuple[SinkRunner, _Timed]:
        sink = PostgresUpsertSink(
            target="crm",
            dsn=settings.dsn.get_secret_value(),
            tables={"customer": tables["customer"]},
            ownership={"customer": ownership(flows, "customer")},
            topics=(topic,),
            schema=schema,
            announce=False,
        )
        timed = _Timed(sink)
        metrics = SinkMetrics.create(CollectorRegistry())
        return SinkRunner(settings, sink, serde, metrics, (topic,)), timed

    def produce(version: int) -> None:
        writer = serde.prepare(f"{topic}-value", canonical_schema("customer"))
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        for index in range(events):
            record = _customer(run, index, version)
            value = serde.encode_with(writer, record)
            producer.produce(
                topic,
                key=f"erp:{10_000_000 + index}".encode(),
                value=value,
                # As the streams stage publishes it: with its payload hash.
                headers=[payload_hash_header(payload_hash(record), value)],
            )
            producer.poll(0)
        if producer.flush(60) > 0:
            raise StackError("Kafka did not take the benchmark events")

    database = stack.crm.pid()
    try:
        produce(1)
        result["insert"] = _apply_phase(runner, "applied", events, timeout, database)
        produce(2)
        result["update"] = _apply_phase(runner, "applied", events, timeout, database)
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET next_offset = 0").format(sql.Identifier(schema, "offsets"))
            )
        result["replay"] = _apply_phase(runner, "stale", 2 * events, timeout, database)
    finally:
        ids = [deterministic_id("customer", f"erp:{10_000_000 + i}") for i in range(events)]
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM public.accounts WHERE id = ANY(%s::uuid[])", (ids,))
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        for future in kafka.delete_topics([topic], operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)
        for future in kafka.delete_consumer_groups([group], request_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)
        client.close()


# ------------------------------------------------------------------------ end to end


def _applied_total() -> float:
    """Events the sinks have handled so far (every outcome), from their metrics."""
    total = 0.0
    for port in (default_metrics_port("crm"), default_metrics_port("erp")):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        for family in text_string_to_metric_families(text):
            total += sum(s.value for s in family.samples if s.name == "erpcrm_sink_events_total")
    return total


def _settle(timeout: float, quiet: float = 5.0) -> None:
    """Wait until the sinks have handled nothing new for ``quiet`` seconds (caught up)."""
    deadline = time.monotonic() + timeout
    last, since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        now = _applied_total()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)
    raise StackError("the sinks did not catch up")


def _linked(stack: LocalStack, count: int, timeout: float) -> list[tuple[int, str]]:
    """Customers both systems share (waits for the initial sync to link them)."""
    dsn = stack.erp.dsn(SUPERUSER, stack.erp.database)
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT id, crm_account_id::text FROM public.res_partner "
                "WHERE crm_account_id IS NOT NULL AND parent_id IS NULL AND active "
                "ORDER BY id LIMIT %s",
                (count,),
            ).fetchall()
        if len(rows) >= min(count, 10):
            return [(int(r[0]), str(r[1])) for r in rows]
        if time.monotonic() > deadline:
            raise StackError("no customers are linked between the systems")
        time.sleep(1)


def _visible_after(
    dsn: str, query: str, params: tuple[Any, ...], expected: str, timeout: float
) -> float:
    """Poll until ``query`` returns ``expected``; seconds from the call, or raise."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        while True:
            row = conn.execute(query, params).fetchone()
            if row is not None and row[0] == expected:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise StackError(f"a change did not arrive within {timeout:.0f}s")
            time.sleep(0.002)


def _end_to_end(stack: LocalStack, samples: int, timeout: float, result: dict[str, Any]) -> None:
    """Latency per direction into ``result``: whatever was measured, even if it fails."""
    log = stack.layout.state / "bench" / "run.log"
    with pipeline(
        log, (default_metrics_port("crm"), default_metrics_port("erp")), timeout
    ) as process:
        result["workers_started_by_bench"] = process is not None
        to_crm: list[float] = []
        to_erp: list[float] = []
        try:
            _measure_end_to_end(stack, samples, timeout, to_crm, to_erp)
        finally:
            result.update(
                samples=samples,
                measured={"erp_to_crm": len(to_crm), "crm_to_erp": len(to_erp)},
                erp_to_crm=_ms(to_crm),
                crm_to_erp=_ms(to_erp),
            )


def _measure_end_to_end(
    stack: LocalStack, samples: int, timeout: float, to_crm: list[float], to_erp: list[float]
) -> None:
    """Commit changes one at a time in each system; append each one's latency."""
    erp = stack.erp.dsn()
    crm = stack.crm.dsn()
    erp_admin = stack.erp.dsn(SUPERUSER, stack.erp.database)
    crm_admin = stack.crm.dsn(SUPERUSER, stack.crm.database)
    pairs = _linked(stack, samples, timeout)
    _settle(timeout)  # measure changes, not the catch-up of a starting pipeline
    tag = uuid.uuid4().hex[:6]
    for n in range(-1, samples):  # the first change of each direction warms up
        partner, account = pairs[n % len(pairs)]
        city = f"Bench {tag} {n}"
        with psycopg.connect(erp, autocommit=True) as conn:
            conn.execute("UPDATE public.res_partner SET city = %s WHERE id = %s", (city, partner))
        erp_seconds = _visible_after(
            crm_admin,
            "SELECT billing_address_city FROM public.accounts WHERE id = %s",
            (account,),
            city,
            timeout,
        )
        if n >= 0:
            to_crm.append(erp_seconds)
        street = f"Benchstrasse {tag} {n}"
        with psycopg.connect(crm, autocommit=True) as conn:
            conn.execute(
                "UPDATE public.accounts SET billing_address_street = %s WHERE id = %s",
                (street, account),
            )
        crm_seconds = _visible_after(
            erp_admin,
            "SELECT street FROM public.res_partner WHERE id = %s",
            (partner,),
            street,
            timeout,
        )
        if n >= 0:
            to_erp.append(crm_seconds)


def bench_sinks(*, events: int, batch_size: int, samples: int, timeout: float) -> dict[str, Any]:
    """Run both measurements (module doc) on the running local stack; return the JSON.

    Raises:
        BenchStepError: a measurement failed; it carries the figures measured until
            then, the failed step's ``error`` among them (the end-to-end step is not
            run after a failed apply step).
    """
    stack = LocalStack()
    if not all(c.pid() is not None for c in (stack.erp, stack.crm, stack.kafka)):
        raise StackError("the local stack is not running: erpcrm stack up")
    result: dict[str, Any] = {"events": events, "batch_size": batch_size}
    with step(result, "apply") as figures:
        _throughput(stack, events, batch_size, timeout, figures)
    result["bench_process_peak_rss_mib"] = _peak_rss_mib()
    with step(result, "end_to_end") as figures:
        _end_to_end(stack, samples, timeout, figures)
    return result
