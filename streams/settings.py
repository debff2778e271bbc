"""Settings of the streams worker (``erpcrm streams``, or ``faust -A streams.app worker``).

Read once at start (environment ``ERPCRM_STREAMS_*``, the shared ``ERPCRM_KAFKA__*`` and
``ERPCRM_REGISTRY__*``, or the YAML file in ``ERPCRM_CONFIG``), then frozen and passed
inward. See :mod:`streams.app` for what each setting changes at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from schemas.settings import WorkerSettings, port_offset

ProcessingGuarantee = Literal["at_least_once"]

EXACTLY_ONCE_REFUSED: Final = (
    "processing_guarantee=exactly_once is not supported: the worker publishes its canonical "
    "events, dead letters and table changelogs through its own producer, outside Faust's "
    "transactions, and Faust's transactional mode does not restore the tables (a worker "
    "without its local store starts with empty state; one with it stops with a "
    "ConsistencyError). Use at_least_once (the default): publish, then commit state, then "
    "offsets, with the recent outputs read at takeover, gives no loss and no event id twice"
)
"""Why ``exactly_once`` is refused at start rather than run."""
DeadLetterPolicy = Literal["fail", "dlq", "skip"]

CONTROL_SUFFIX: Final = "-control"

DEFAULT_WEB_PORT: Final = 21113
"""The worker's web server (``/metrics``) unless told, before :func:`default_web_port`'s shift."""
DEFAULT_DATA_DIR: Final = Path(__file__).resolve().parents[1] / ".local" / "streams"
"""``<checkout>/.local/streams`` (git-ignored), next to the local stack's state."""


def default_web_port() -> int:
    """The worker's web port unless told: 21113 shifted by :func:`schemas.settings.port_offset`."""
    return DEFAULT_WEB_PORT + port_offset()


def control_topic(app_id: str) -> str:
    """The control topic of app ``app_id``: ``<app_id>-control`` (one partition).

    The worker reads it with the raw topics: ticks (see ``tick_seconds``), and raw
    messages written there with their original position in the ``erpcrm.origin.*``
    headers, processed as if they had just been read from their raw topic (``erpcrm dlq
    replay`` puts dead letters back this way).
    """
    return f"{app_id}{CONTROL_SUFFIX}"


class StreamsSettings(WorkerSettings, env_prefix="ERPCRM_STREAMS_"):
    """Everything the streams worker needs; read once at start, then frozen.

    Attributes:
        app_id: Faust application id: the consumer group, and the prefix of the worker's
            own topics (``<app_id>-control``, ``<app_id>-<table>-changelog``).
        instance_id: the consumer's static group membership (``group.instance.id``;
            empty: none). A worker restarted with the same id takes its partitions back
            at once instead of after the session timeout; ``erpcrm run`` gives each of
            its workers one. Two live processes must never share one.
        data_dir: where RocksDB keeps the tables (``<data_dir>/<app_id>``).
        store: Faust table store; ``rocksdb://`` (rocksdict driver) in production,
            ``memory://`` for throw-away runs.
        web_host: address the web server (``/metrics``, ``/inventory``) binds to.
        web_port: port of the web server.
        processing_guarantee: Faust's ``processing_guarantee``: ``at_least_once`` only.
            With the worker's order (publish, then commit state, then offsets) and the
            recent outputs it reads at takeover, it gives no loss and no event id twice.
            ``exactly_once`` is refused at start (:data:`EXACTLY_ONCE_REFUSED` says why).
        dlq_policy: what a record that fails validation does: ``dlq`` (to
            ``dlq.streams``, the default), ``skip`` (counted, dropped) or ``fail`` (stop
            the worker before its offset is committed).
        erp_topic_prefix, crm_topic_prefix: first part of each system's raw topic names
            (the capture's ``topic_prefix``; the system name by default).
        partitions: partitions of the canonical and dead-letter topics the worker
            creates (existing topics keep theirs).
        replication_factor: replication of the topics the worker creates.
        batch_size: how many messages the worker takes at a time; a batch's outputs are
            published together and acknowledged once.
        linger_ms: how long the worker waits for a batch to fill, once its first message
            is in, before it takes what has arrived.
        buffer_size: how many messages the worker reads ahead of the batch it decides
            (the intake's buffer, :mod:`streams.intake`; two batches keep it busy, and each
            message read ahead is held in memory).
        fetch_bytes: the most each raw partition returns to one fetch (Faust's
            ``consumer_max_fetch_size``). Every partition's fetched records are decoded at
            once and held until the worker has taken them, so this bounds the read-ahead
            below ``buffer_size``: Faust's default, 1 MiB, held about 160,000 records
            (some 40 MiB) over the raw partitions of a backlog.
        producer_linger_ms: how long the worker's Kafka producer waits to fill a request
            (all of a batch's outputs and state writes go out in few, large requests).
        producer_batch_bytes: the largest record batch per partition in one request.
        gc_threshold: how many container allocations (beyond deallocations) start Python's
            youngest garbage collection in the worker (``gc.set_threshold``'s first value;
            0 keeps Python's 700). A worker holding a large backlog's state collected every
            700 allocations, and each older collection walked everything it holds: about a
            seventh of its CPU. Objects made while starting are frozen out of the
            collections (``gc.freeze``) either way.
        table_memory_mib: memory each table's RocksDB store may use for its write buffers
            and block cache (the store is a cache of the changelog; RocksDB's defaults,
            sized for servers, would let each table grow to gigabytes). Small: what misses
            the block cache is read from files the OS keeps cached, at no measurable cost.
        commit_interval_seconds: how often consumer offsets are committed.
        metadata_refresh_seconds: how often the consumer refreshes the cluster's
            metadata; a raw topic created after the worker started (a capture that
            started later) is read from at most this long after it appears.
        session_timeout_seconds: how long the group waits for a silent worker before its
            partitions move (after a crash, the restarted worker waits this long).
        tick_seconds: how often a worker with pending work (orders being assembled,
            records waiting for a reference) puts a tick into its control topic.
        horizon_seconds: how often the worker publishes each source system's decided
            horizon (``horizon.streams``, see :mod:`streams.decided`), while it owns the
            partitions and has read that system's topics to their end.
        tick_limit: how many pending keys (orders to assemble, parked records) one tick
            looks at; when more are due, the worker ticks again at once, so one tick never
            holds the worker (its web server, its timers) for long.
        assembly_timeout_seconds: an order whose transaction's END has not arrived
            after this long is assembled from what has.
        snapshot_settle_seconds: orders read by a snapshot (no transaction) are
            assembled once no row of theirs arrived for this long; a customer read by
            the initial snapshot that matches nothing in the other system waits this
            long for the other system's snapshot (to be linked to its copy there)
            before it is published as new.
        reference_wait_seconds: a record that refers to something not seen yet (a
            product id without SKU, an unknown SKU) is retried for this long before it
            is dead-lettered.
        recent_outputs: how many of the last messages of each output partition are
            read at start, to never publish an event id twice after a crash.
        retry_initial_seconds, retry_max_seconds: backoff of transient failures.
        echo_origins: replication origins of the sinks' sessions; changes carrying
            one are echoes and are dropped.
    """

    app_id: str = "erpcrm-streams"
    instance_id: str = ""
    data_dir: Path = DEFAULT_DATA_DIR
    store: str = "rocksdb://"
    web_host: str = "127.0.0.1"
    web_port: int = Field(default_factory=default_web_port, ge=1, le=65535)
    processing_guarantee: ProcessingGuarantee = "at_least_once"
    dlq_policy: DeadLetterPolicy = "dlq"
    erp_topic_prefix: str = "erp"
    crm_topic_prefix: str = "crm"
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    batch_size: int = Field(default=500, ge=1)
    linger_ms: float = Field(default=10.0, gt=0)
    buffer_size: int = Field(default=1000, ge=1)
    fetch_bytes: int = Field(default=256 * 1024, ge=16 * 1024)
    producer_linger_ms: float = Field(default=2.0, ge=0)
    producer_batch_bytes: int = Field(default=512 * 1024, ge=16 * 1024)
    table_memory_mib: int = Field(default=4, ge=4)
    gc_threshold: int = Field(default=50_000, ge=0)
    commit_interval_seconds: float = Field(default=1.0, gt=0)
    metadata_refresh_seconds: float = Field(default=2.0, gt=0)
    session_timeout_seconds: float = Field(default=15.0, ge=6, le=90)
    tick_seconds: float = Field(default=1.0, gt=0)
    tick_limit: int = Field(default=200, ge=1)
    horizon_seconds: float = Field(default=1.0, gt=0)
    assembly_timeout_seconds: float = Field(default=30.0, gt=0)
    snapshot_settle_seconds: float = Field(default=3.0, gt=0)
    reference_wait_seconds: float = Field(default=15.0, ge=0)
    recent_outputs: int = Field(default=2000, ge=0)
    retry_initial_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    echo_origins: Annotated[tuple[str, ...], NoDecode] = ("erpcrm_sink",)

    @field_validator("processing_guarantee", mode="before")
    @classmethod
    def _refuse_exactly_once(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "exactly_once":
            raise ValueError(EXACTLY_ONCE_REFUSED)
        return value

    @field_validator("echo_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @property
    def topic_prefixes(self) -> dict[str, str]:
        """The first part of each system's raw topic names: ``{"erp": ..., "crm": ...}``."""
        return {"erp": self.erp_topic_prefix, "crm": self.crm_topic_prefix}

    @property
    def rocksdb_options(self) -> dict[str, int]:
        """RocksDB options of each table's store, within ``table_memory_mib``.

        A quarter for two write buffers (one filling, one flushing), the rest for the
        block cache.
        """
        total = self.table_memory_mib * 1024 * 1024
        return {
            "write_buffer_size": total // 8,
            "max_write_buffer_number": 2,
            "block_cache_size": total - total // 4,
        }

    @property
    def control_topic(self) -> str:
        """The worker's control topic (see :func:`control_topic`)."""
        return control_topic(self.app_id)

    @property
    def table_dir(self) -> Path:
        """Faust's data directory of this app id (RocksDB files live below it)."""
        return self.data_dir / self.app_id
