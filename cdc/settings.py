"""Settings of one capture worker (one source database, one replication slot)."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from schemas.settings import WorkerSettings, port_offset

System = Literal["erp", "crm"]

DEFAULT_TABLES: dict[str, tuple[str, ...]] = {
    "erp": (
        "res_partner",
        "product_product",
        "stock_location",
        "stock_quant",
        "sale_order",
        "sale_order_line",
        "account_move",
    ),
    "crm": (
        "accounts",
        "contacts",
        "aos_products",
        "opportunities",
        "aos_quotes",
        "aos_products_quotes",
    ),
}
_METRICS_PORT: Final = {"erp": 21111, "crm": 21112}


def default_metrics_port(system: System) -> int:
    """Where a capture serves ``/metrics`` unless told (ERP 21111, CRM 21112, + offset).

    The offset is :func:`schemas.settings.port_offset`, the stack's.
    """
    return _METRICS_PORT[system] + port_offset()


class CaptureSettings(WorkerSettings, env_prefix="ERPCRM_CDC_"):
    """Everything ``erpcrm cdc --system …`` needs; read once at start, then frozen.

    ``dsn`` is a libpq URI for a role with REPLICATION and SELECT on the captured tables;
    it is secret because it may carry a password.

    ``signal_table`` (``<schema>.<table>``, empty: no signals) is the table whose rows
    ask for incremental re-snapshots (:mod:`cdc.signals`); ``incremental_chunk_rows``
    rows are re-read per chunk, each chunk query limited to
    ``incremental_statement_timeout_ms`` (0: no limit).
    """

    system: System = "erp"
    dsn: SecretStr = SecretStr("")
    source_schema: str = "public"
    tables: Annotated[tuple[str, ...], NoDecode] = ()
    slot: str = ""
    publication: str = ""
    snapshot_mode: Literal["initial", "never"] = "initial"
    snapshot_batch_rows: int = Field(default=5000, ge=100)
    echo_origins: tuple[str, ...] = ("erpcrm_sink",)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    status_interval_seconds: float = Field(default=1.0, gt=0)
    topic_partitions: int = Field(default=3, ge=1)
    metrics_port: int = 0
    toast_placeholder: str = "__debezium_unavailable_value"
    linger_ms: int = Field(default=5, ge=0)
    topic_prefix: str = ""
    signal_table: str = "public.erpcrm_signal"
    incremental_chunk_rows: int = Field(default=1024, ge=1)
    incremental_statement_timeout_ms: int = Field(default=60_000, ge=0)

    @field_validator("tables", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @model_validator(mode="after")
    def _defaults(self) -> CaptureSettings:
        defaults = {
            "tables": self.tables or DEFAULT_TABLES[self.system],
            "slot": self.slot or f"erpcrm_{self.system}",
            "publication": self.publication or f"erpcrm_{self.system}",
            "metrics_port": self.metrics_port or default_metrics_port(self.system),
        }
        for key, value in defaults.items():
            object.__setattr__(self, key, value)
        return self

    @property
    def server_name(self) -> str:
        """Debezium's ``topic.prefix``: the first part of every raw topic name.

        The system name unless ``topic_prefix`` is set (isolated test or staging runs).
        """
        return self.topic_prefix or self.system
