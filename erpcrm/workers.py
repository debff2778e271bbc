"""Building and running workers: settings in, metrics server up, signals wired, run.

Shared by the single-worker commands (``erpcrm cdc``) and the supervisor.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, start_http_server

from schemas.serde import AvroSerde, RegistryClient

# Each builder imports its own stage: a worker process holds only the stage it runs.
if TYPE_CHECKING:
    from cdc.settings import CaptureSettings
    from cdc.streaming import CaptureWorker
    from sinks.runner import SinkRunner
    from sinks.settings import SinkSettings
    from streams.app import StreamsApp
    from streams.settings import StreamsSettings

log = logging.getLogger(__name__)


def serve_metrics(port: int) -> CollectorRegistry:
    """Start a ``/metrics`` endpoint on loopback ``port`` for a fresh registry."""
    registry = CollectorRegistry()
    start_http_server(port, addr="127.0.0.1", registry=registry)
    log.info("metrics on http://127.0.0.1:%d/metrics", port)
    return registry


def build_capture(settings: CaptureSettings, registry: CollectorRegistry) -> CaptureWorker:
    """A capture worker for ``settings`` with metrics in ``registry``."""
    from cdc.metrics import CaptureMetrics
    from cdc.streaming import CaptureWorker

    settings = settings.model_copy(
        update={"kafka": settings.kafka.logged_as(f"cdc-{settings.system}")}
    )
    client = RegistryClient(settings.registry.url)
    return CaptureWorker(settings, CaptureMetrics.create(registry), AvroSerde(client), client)


class Worker(Protocol):
    """What the single-worker commands run: ``run`` until ``stop``."""

    def run(self) -> object:
        """Work until stopped; returns when stopped cleanly."""
        ...

    def stop(self) -> None:
        """Ask ``run`` to finish (from a signal handler)."""
        ...


def run_worker(metrics_port: int, build: Callable[[CollectorRegistry], Worker]) -> None:
    """Serve ``/metrics`` on ``metrics_port``, build the worker, wire signals, run it."""
    worker = build(serve_metrics(metrics_port))
    stop_on_signals(worker.stop)
    worker.run()


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM and SIGINT (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping cleanly", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def build_streams(settings: StreamsSettings, registry: CollectorRegistry) -> StreamsApp:
    """A streams worker (Faust app) for ``settings`` with metrics in ``registry``.

    Faust's own web server serves the metrics (``/metrics``, with ``/inventory``) on
    ``settings.web_port``, so no separate endpoint is started; ``run()`` blocks until
    SIGTERM/SIGINT, which Faust handles (clean stop: flush, commit).
    """
    from streams.app import build

    settings = settings.model_copy(update={"kafka": settings.kafka.logged_as("streams")})
    client = RegistryClient(settings.registry.url)
    return build(settings, serde=AvroSerde(client), registry=registry)


def build_sink(settings: SinkSettings, registry: CollectorRegistry) -> SinkRunner:
    """A sink worker for ``settings.target`` with metrics in ``registry``."""
    from schemas.mapping import load_mappings, ownership
    from schemas.topics import CANONICAL_TOPICS
    from sinks.metrics import SinkMetrics
    from sinks.postgres import PostgresUpsertSink
    from sinks.runner import SinkRunner
    from sinks.targets import build_tables

    settings = settings.model_copy(
        update={"kafka": settings.kafka.logged_as(f"sink-{settings.target}")}
    )
    flows = load_mappings()
    topics = (*CANONICAL_TOPICS, settings.replay_topic)
    tables = {
        t.entity: t for t in build_tables(flows).values() if t.direction.target == settings.target
    }
    sink = PostgresUpsertSink(
        target=settings.target,
        dsn=settings.dsn.get_secret_value(),
        tables=tables,
        ownership={entity: ownership(flows, entity) for entity in tables},
        topics=topics,
        provided={
            entity: frozenset(
                fm.target
                for flow in flows.values()
                if flow.system == settings.source and flow.target == entity
                for fm in flow.fields
            )
            for entity in tables
            # Only where both systems map the entity; one-way flows (stock, invoices)
            # write everything they compute.
            if any(f.system == settings.target and f.target == entity for f in flows.values())
        },
        origin=settings.origin,
        schema=settings.sync_schema,
        decisions=settings.decisions_schema,
        announce=settings.announce,
        clock_wait_ms=int(settings.clock_wait_seconds * 1000),
        clock_behind_max_ms=int(settings.clock_behind_max_seconds * 1000),
        duplicates=settings.duplicates,
        local_events=frozenset(f.target for f in flows.values() if f.system == settings.target),
    )
    client = RegistryClient(settings.registry.url)
    return SinkRunner(settings, sink, AvroSerde(client), SinkMetrics.create(registry), topics)
