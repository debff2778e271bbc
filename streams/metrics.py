"""Prometheus metrics of the streams stage, declared once against an injected registry.

Every :class:`~streams.outcome.Count` the processor tallies maps to one counter with a
fixed label set; :meth:`StreamsMetrics.record` adds an outcome's tally. Label values are
bounded: flow names come from the mapping files, reasons from
:class:`~streams.validation.Reason`, the rest from small fixed sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.outcome import Count, Inbound, Kind, Tally

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True)
class StreamsMetrics:
    """All streams metrics; see each one's help text for its labels."""

    events_in: Counter
    events_out: Counter
    dead_letters: Counter
    deduped: Counter
    no_ops: Counter
    echoes_dropped: Counter
    skipped: Counter
    fixes: Counter
    crosswalk_links: Counter
    link_conflicts: Counter
    ambiguous_matches: Counter
    duplicates: Counter
    orders_assembled: Counter
    parked: Counter
    held: Counter
    order_timeouts: Counter
    ignored: Counter
    quality_defects: Counter
    retries: Counter
    consumed: Counter
    processing_seconds: Histogram
    batch_messages: Histogram
    source_to_publish_seconds: Histogram
    pending: Gauge
    horizon_age_seconds: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StreamsMetrics:
        """Register every streams metric in ``registry``."""

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        return cls(
            events_in=counter(
                "erpcrm_streams_events_in",
                "Raw change events processed, per flow ('transaction': transaction metadata).",
                ["flow"],
            ),
            events_out=counter(
                "erpcrm_streams_events_out",
                "Canonical events published, per flow.",
                ["flow"],
            ),
            dead_letters=counter(
                "erpcrm_streams_dead_letters",
                "Records rejected (dead-lettered, or skipped by policy), per reason.",
                ["reason"],
            ),
            deduped=counter(
                "erpcrm_streams_deduped",
                "Stale events dropped: duplicates, overtaken changes, already published.",
                ["flow"],
            ),
            no_ops=counter(
                "erpcrm_streams_no_ops",
                "Events dropped because their payload equals the last one published.",
                ["flow"],
            ),
            echoes_dropped=counter(
                "erpcrm_streams_echoes_dropped",
                "Changes dropped because they carry a sink's replication origin.",
                ["system"],
            ),
            skipped=counter(
                "erpcrm_streams_skipped",
                "Changes that are no business event (outside the flow's filter, truncates).",
                ["flow"],
            ),
            fixes=counter(
                "erpcrm_streams_fixes",
                "Values cleansing changed, per flow and rule.",
                ["flow", "rule"],
            ),
            crosswalk_links=counter(
                "erpcrm_streams_crosswalk_links",
                "Crosswalk links made, per entity and rule (erp_column, customer_number, vat, "
                "email, name_country, sku).",
                ["entity", "rule"],
            ),
            link_conflicts=counter(
                "erpcrm_streams_link_conflicts",
                "Links refused because the counterpart is linked to another live record of "
                "the same system (a link is one to one), per entity, system of the record "
                "refused and rule (erp_column, sku, ...); such a customer is held as a "
                "suspected duplicate.",
                ["entity", "system", "rule"],
            ),
            ambiguous_matches=counter(
                "erpcrm_streams_ambiguous_matches",
                "Matches with several candidates (the lowest id was linked), per entity.",
                ["entity"],
            ),
            duplicates=counter(
                "erpcrm_streams_duplicates",
                "New records held as suspected duplicates of a record already linked, per "
                "entity, system the record was entered in, and match rule (customer_number, "
                "vat, email, name_country).",
                ["entity", "system", "rule"],
            ),
            orders_assembled=counter(
                "erpcrm_streams_orders_assembled",
                "Orders assembled, per how (complete, timeout, settled, replay, no_header).",
                ["how"],
            ),
            parked=counter(
                "erpcrm_streams_parked",
                "Records parked to wait for a reference (or, snapshot_match, for the other "
                "system's snapshot), per reason.",
                ["reason"],
            ),
            held=counter(
                "erpcrm_streams_held",
                "Changes held until their source transaction is complete, to be decided in "
                "the source's commit order, per system.",
                ["system"],
            ),
            order_timeouts=counter(
                "erpcrm_streams_order_timeouts",
                "Transactions released incomplete after the wait (a change never came), "
                "per system.",
                ["system"],
            ),
            ignored=counter(
                "erpcrm_streams_ignored",
                "Messages with nothing to process, per what (tombstone, unrouted, "
                "transaction_begin, transaction_end, orphan_line, rejected_skipped).",
                ["what"],
            ),
            quality_defects=counter(
                "erpcrm_streams_quality_defects",
                "Data defects, per entity, field (nested fields without index: lines.sku), "
                "rule (cleansing rule or reason) and outcome (fixed, quarantined, kept, "
                "dead_lettered); the figures of the quality.defects log.",
                ["entity", "field", "rule", "outcome"],
            ),
            retries=counter(
                "erpcrm_streams_retries",
                "Transient failures retried with backoff, per stage (process, publish, recover).",
                ["stage"],
            ),
            consumed=counter(
                "erpcrm_streams_consumed",
                "Messages the worker took in, per kind: change (read from a raw topic), "
                "replay (a dead letter put back through the control topic), tick.",
                ["kind"],
            ),
            processing_seconds=Histogram(
                "erpcrm_streams_processing_seconds",
                "Wall time per inbound message: processing, publishing until acknowledged, "
                "committing state.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            batch_messages=Histogram(
                "erpcrm_streams_batch_messages",
                "Inbound messages per batch the process agent decides together.",
                buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
                registry=registry,
            ),
            source_to_publish_seconds=Histogram(
                "erpcrm_streams_source_to_publish_seconds",
                "From the source commit to Kafka's acknowledgement of the canonical event.",
                buckets=LAG_BUCKETS,
                registry=registry,
            ),
            pending=Gauge(
                "erpcrm_streams_pending",
                "Orders being assembled and records waiting for a reference.",
                registry=registry,
            ),
            horizon_age_seconds=Gauge(
                "erpcrm_streams_horizon_age_seconds",
                "Seconds since the commit the decided horizon last published for a source "
                "system had reached (horizon.streams; grows while its capture is away).",
                ["system"],
                registry=registry,
            ),
        )

    def _by_count(self) -> Mapping[str, Counter]:
        return {
            Count.EVENTS_IN: self.events_in,
            Count.EVENTS_OUT: self.events_out,
            Count.DEAD_LETTERS: self.dead_letters,
            Count.DEDUPED: self.deduped,
            Count.NO_OPS: self.no_ops,
            Count.ECHOES: self.echoes_dropped,
            Count.SKIPPED: self.skipped,
            Count.FIXES: self.fixes,
            Count.LINKS: self.crosswalk_links,
            Count.LINK_CONFLICTS: self.link_conflicts,
            Count.AMBIGUOUS: self.ambiguous_matches,
            Count.DUPLICATES: self.duplicates,
            Count.ORDERS: self.orders_assembled,
            Count.PARKED: self.parked,
            Count.HELD: self.held,
            Count.ORDER_TIMEOUTS: self.order_timeouts,
            Count.IGNORED: self.ignored,
            Count.DEFECTS: self.quality_defects,
        }

    def record(self, tally: Tally) -> None:
        """Add an outcome's counts to the counters."""
        counters = self._by_count()
        for (what, *labels), amount in tally.items():
            if amount:
                counters[what].labels(*labels).inc(amount)

    def count_consumed(self, messages: Iterable[Inbound]) -> None:
        """Count messages taken in: ``tick``, ``replay`` (replayed dead letters), ``change``."""
        kinds: dict[str, int] = {}
        for message in messages:
            if message.kind is Kind.TICK:
                kind = "tick"
            else:
                kind = "replay" if message.replays else "change"
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in kinds.items():
            self.consumed.labels(kind).inc(n)
