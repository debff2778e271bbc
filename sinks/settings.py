"""Settings of a sink worker (``erpcrm sink --target erp|crm``).

Read once at start (environment ``ERPCRM_SINK_*``, the shared ``ERPCRM_KAFKA__*`` and
``ERPCRM_REGISTRY__*``, or the YAML file in ``ERPCRM_CONFIG``), then frozen and passed
inward. The DSN is secret: it prints masked and is never logged.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, SecretStr, model_validator

from schemas.horizon import STREAMS_HORIZON_TOPIC
from schemas.settings import WorkerSettings, port_offset
from schemas.topics import dlq_topic, replay_topic

Target = Literal["erp", "crm"]

_METRICS_PORT: Final = {"crm": 21114, "erp": 21115}


def default_metrics_port(target: Target) -> int:
    """Where a sink serves ``/metrics`` unless told (CRM 21114, ERP 21115, + offset).

    The offset is :func:`schemas.settings.port_offset`, the stack's.
    """
    return _METRICS_PORT[target] + port_offset()


DEFAULT_ORIGIN: Final = "erpcrm_sink"
"""The replication origin of every sink session; the captures drop its transactions."""


class SinkSettings(WorkerSettings, env_prefix="ERPCRM_SINK_"):
    """Everything a sink needs; read once at start, then frozen.

    Attributes:
        target: the system written to; the sink applies the other system's events.
        dsn: libpq URI of the sink role (write on the mapped tables, owner of
            ``sync_schema``, EXECUTE on the replication-origin functions).
        origin: the replication origin the sink's sessions are tagged with.
        sync_schema: the schema of the sync state (``applied``, ``offsets``, ...).
        decisions_schema: the schema where what the sink holds as suspected duplicates,
            and what operators decide about them, is kept beyond the sync state, so a
            new pipeline (another sync schema) over the same database keeps to it.
        group_id: Kafka consumer group (default ``erpcrm-sink-<target>``); positions
            live in the target database, the group only spreads partitions.
        instance_id: the consumer's static group membership (``group.instance.id``;
            empty: none). A worker restarted with the same id takes its partitions back
            at once instead of after the session timeout; ``erpcrm run`` gives each of
            its workers one. Two live processes must never share one.
        batch_size: most events applied in one database transaction.
        linger_ms: how long a batch waits to fill up once it has its first event.
        reference_wait_seconds: an event referring to a row the target does not have
            yet (an order whose customer is still on its way) is retried with every
            batch; once the sink has applied everything published before it (the
            streams and the sink caught up to it, see :mod:`sinks.progress`), for this
            long more, then it is dead-lettered.
        reference_behind_max_seconds: the longest a pipeline behind holds back the
            count of ``reference_wait_seconds`` after an event is first held.
        clock_wait_seconds: an event for a row with a local change the sink has not
            seen yet waits at most this long (while the sink runs) for the target's own
            event naming the fields that change changed; then the change counts for
            every field. The wait counts once the sink has read own events committed
            after that change, or the target system's decided horizon has passed it and
            the sink has applied its backlog since (:class:`sinks.progress.CaughtUp`);
            while a capture or the streams worker is down or catching up, it does not
            count, at most ``clock_behind_max_seconds`` after the event first waited.
            Such an event is never dead-lettered for waiting.
        clock_behind_max_seconds: see ``clock_wait_seconds``.
        duplicates: a new record the streams flag as a suspected duplicate of a linked
            one: ``hold`` it for an operator (``erpcrm suspects``), ``link`` it to that
            record, or ``create`` it anyway.
        retry_initial_seconds, retry_max_seconds: backoff of transient failures (a
            database that is down is waited for, never skipped).
        announce: announce rows the sink creates (see :mod:`sinks.postgres`).
        metrics_port: port of ``/metrics`` (0: :func:`default_metrics_port`).
        dlq_topic: where refused events go (``dlq.sinks.<target>``).
        replay_topic: where ``erpcrm dlq replay`` puts this sink's dead letters back
            (``replay.sinks.<target>``); the sink reads it with the canonical topics.
        horizon_topic: where the streams stage publishes how far it has decided each
            source system (``horizon.streams``, :mod:`schemas.horizon`); a horizon past a
            held event's commit ends the first stage of its wait (:mod:`sinks.progress`),
            and the target's own horizon lets row-clock waits count.
        start_at: where a partition without a stored position starts: ``earliest``
            (the default: the whole history, so a new target catches up) or ``latest``
            (only what is published from now on; a topic created after the sink started
            is read from its beginning).
    """

    target: Target = "crm"
    dsn: SecretStr = SecretStr("")
    origin: str = Field(default=DEFAULT_ORIGIN, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    sync_schema: str = Field(default="erpcrm_sync", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    decisions_schema: str = Field(default="erpcrm_decisions", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    group_id: str = ""
    instance_id: str = ""
    batch_size: int = Field(default=500, ge=1, le=50_000)
    linger_ms: int = Field(default=20, ge=0)
    reference_wait_seconds: float = Field(default=30.0, ge=0)
    reference_behind_max_seconds: float = Field(default=600.0, ge=0)
    clock_wait_seconds: float = Field(default=60.0, ge=0)
    clock_behind_max_seconds: float = Field(default=600.0, ge=0)
    duplicates: Literal["hold", "link", "create"] = "hold"
    retry_initial_seconds: float = Field(default=0.2, gt=0)
    retry_max_seconds: float = Field(default=10.0, gt=0)
    announce: bool = True
    metrics_port: int = Field(default=0, ge=0, le=65535)
    dlq_topic: str = ""
    replay_topic: str = ""
    horizon_topic: str = ""
    start_at: Literal["earliest", "latest"] = "earliest"

    @model_validator(mode="after")
    def _defaults(self) -> SinkSettings:
        defaults = {
            "group_id": self.group_id or f"erpcrm-sink-{self.target}",
            "metrics_port": self.metrics_port or default_metrics_port(self.target),
            "dlq_topic": self.dlq_topic or dlq_topic(f"sinks.{self.target}"),
            "replay_topic": self.replay_topic or replay_topic(f"sinks.{self.target}"),
            "horizon_topic": self.horizon_topic or STREAMS_HORIZON_TOPIC,
        }
        for key, value in defaults.items():
            object.__setattr__(self, key, value)
        return self

    @property
    def source(self) -> str:
        """The system whose events this sink applies."""
        return "crm" if self.target == "erp" else "erp"
