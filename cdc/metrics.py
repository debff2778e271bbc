"""Prometheus metrics of the capture stage, declared once against an injected registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class CaptureMetrics:
    """All capture metrics; fixed labels: ``system``, ``table``, ``op``, ``reason``, ``outcome``."""

    events: Counter
    event_bytes: Counter
    transactions: Counter
    echo_transactions_dropped: Counter
    received_lsn: Gauge
    confirmed_lsn: Gauge
    slot_lag_bytes: Gauge
    commit_to_ack_seconds: Histogram
    producer_errors: Counter
    snapshot_rows: Counter
    snapshot_tables_remaining: Gauge
    heartbeats: Counter
    schema_versions: Counter
    reconnects: Counter
    incremental_rows: Counter
    signals: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CaptureMetrics:
        """Register every capture metric in ``registry``."""
        return cls(
            events=Counter(
                "erpcrm_cdc_events",
                "Change events produced to Kafka, by table and Debezium op.",
                ["system", "table", "op"],
                registry=registry,
            ),
            event_bytes=Counter(
                "erpcrm_cdc_event_bytes",
                "Serialized key and value bytes produced.",
                ["system"],
                registry=registry,
            ),
            transactions=Counter(
                "erpcrm_cdc_transactions",
                "Source transactions captured.",
                ["system"],
                registry=registry,
            ),
            echo_transactions_dropped=Counter(
                "erpcrm_cdc_echo_transactions_dropped",
                "Transactions dropped because they carry the sink's replication origin.",
                ["system", "origin"],
                registry=registry,
            ),
            received_lsn=Gauge(
                "erpcrm_cdc_received_lsn",
                "Highest WAL position received from the server (as an integer).",
                ["system"],
                registry=registry,
            ),
            confirmed_lsn=Gauge(
                "erpcrm_cdc_confirmed_lsn",
                "WAL position confirmed to the server: everything before it is in Kafka.",
                ["system"],
                registry=registry,
            ),
            slot_lag_bytes=Gauge(
                "erpcrm_cdc_slot_lag_bytes",
                "WAL the slot retains: server's current position minus confirmed position.",
                ["system"],
                registry=registry,
            ),
            commit_to_ack_seconds=Histogram(
                "erpcrm_cdc_commit_to_ack_seconds",
                "From the source commit to Kafka's acknowledgement of the transaction's last "
                "record (observed once per transaction).",
                ["system"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            producer_errors=Counter(
                "erpcrm_cdc_producer_errors",
                "Kafka producer errors, by librdkafka error name.",
                ["system", "reason"],
                registry=registry,
            ),
            snapshot_rows=Counter(
                "erpcrm_cdc_snapshot_rows",
                "Rows read by the initial snapshot.",
                ["system", "table"],
                registry=registry,
            ),
            snapshot_tables_remaining=Gauge(
                "erpcrm_cdc_snapshot_tables_remaining",
                "Tables the running snapshot has still to read.",
                ["system"],
                registry=registry,
            ),
            heartbeats=Counter(
                "erpcrm_cdc_heartbeats",
                "Heartbeat messages emitted to keep the slot advancing.",
                ["system"],
                registry=registry,
            ),
            schema_versions=Counter(
                "erpcrm_cdc_schema_versions",
                "Avro schemas (re)derived from relation messages, by table.",
                ["system", "table"],
                registry=registry,
            ),
            reconnects=Counter(
                "erpcrm_cdc_reconnects",
                "Reconnections after a lost database or replication connection.",
                ["system"],
                registry=registry,
            ),
            incremental_rows=Counter(
                "erpcrm_cdc_incremental_rows",
                "Rows re-read by incremental snapshots and published (op r).",
                ["system", "table"],
                registry=registry,
            ),
            signals=Counter(
                "erpcrm_cdc_signals",
                "Signal rows seen, by outcome: queued, done, ignored (a table not captured "
                "here), invalid, failed (the re-read could not run).",
                ["system", "outcome"],
                registry=registry,
            ),
        )
