"""Prometheus metrics of a sink, declared once against an injected registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


@dataclass(frozen=True, slots=True)
class SinkMetrics:
    """All sink metrics; labels: ``target``, ``entity``, ``outcome``, ``reason``."""

    events: Counter
    dead_letters: Counter
    conflicts: Counter
    batches: Counter
    batch_size: Histogram
    apply_seconds: Histogram
    end_to_end_seconds: Histogram
    retries: Counter
    deferred: Gauge
    parked: Gauge
    announced: Counter
    lag_events: Gauge
    horizon_age_seconds: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SinkMetrics:
        """Register every sink metric in ``registry``."""
        return cls(
            events=Counter(
                "erpcrm_sink_events",
                "Canonical events by outcome: applied, stale, noop, superseded, skipped, "
                "unknown (a delete or status of a row the target lacks), deferred (each event "
                "once, when it starts waiting for a reference), held (a suspected duplicate), "
                "parked (waiting for a held suspected duplicate it refers to), dead_lettered.",
                ["target", "entity", "outcome"],
                registry=registry,
            ),
            dead_letters=Counter(
                "erpcrm_sink_dead_letters",
                "Dead letters sent to dlq.sinks.<target>, by entity and reason (their "
                "erpcrm.error.reason header): unresolved_reference, order_lines_locked (a "
                "line change of an order the target owns; the order itself was applied), "
                "key_taken (a unique key another row holds), target_row_contended (another "
                "source record wrote the same row in the batch), target_row_taken (the row "
                "another live source record owns: a link column moved onto it), "
                "target_row_gone (the row made for the record was deleted in the target), the "
                "error class of a refused event, ...",
                ["target", "entity", "reason"],
                registry=registry,
            ),
            conflicts=Counter(
                "erpcrm_sink_conflicts",
                "Fields changed on both sides, by winner and reason.",
                ["target", "entity", "winner", "reason"],
                registry=registry,
            ),
            batches=Counter(
                "erpcrm_sink_batches",
                "Batches committed to the target database.",
                ["target"],
                registry=registry,
            ),
            batch_size=Histogram(
                "erpcrm_sink_batch_size",
                "Events per committed batch.",
                ["target"],
                buckets=BATCH_BUCKETS,
                registry=registry,
            ),
            apply_seconds=Histogram(
                "erpcrm_sink_apply_seconds",
                "Time to apply one batch (one database transaction).",
                ["target"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            end_to_end_seconds=Histogram(
                "erpcrm_sink_end_to_end_seconds",
                "Source commit to target commit, per applied event.",
                ["target", "entity"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            retries=Counter(
                "erpcrm_sink_retries",
                "Batches retried after a transient failure, by error class.",
                ["target", "reason"],
                registry=registry,
            ),
            deferred=Gauge(
                "erpcrm_sink_deferred_events",
                "Events waiting for a row they refer to.",
                ["target"],
                registry=registry,
            ),
            parked=Gauge(
                "erpcrm_sink_parked_records",
                "Records with events parked until an operator decides a suspected duplicate "
                "they refer to (erpcrm_sync.parked; erpcrm suspects list shows them).",
                ["target"],
                registry=registry,
            ),
            announced=Counter(
                "erpcrm_sink_announced_rows",
                "Rows the sink created and announced to the capture.",
                ["target", "entity"],
                registry=registry,
            ),
            lag_events=Gauge(
                "erpcrm_sink_lag_events",
                "Events in the consumed partitions not yet applied (high watermark minus "
                "position).",
                ["target"],
                registry=registry,
            ),
            horizon_age_seconds=Gauge(
                "erpcrm_sink_horizon_age_seconds",
                "Seconds since the commit the source system's decided horizon (read from "
                "horizon.streams) had reached; since the sink started while none was read.",
                ["target", "system"],
                registry=registry,
            ),
        )
