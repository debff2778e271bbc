"""Settings shared by every worker: Kafka, the schema registry, and how settings load.

Each worker has its own frozen settings class (``cdc.settings``, ``streams.settings``,
``sinks.settings``) built on :class:`WorkerSettings`. Values come, highest priority
first, from keyword arguments, environment variables (prefix ``ERPCRM_``, nested fields
with ``__``), and a YAML file named by ``ERPCRM_CONFIG``. They are read once at start and
passed inward; secrets are ``SecretStr`` and print masked.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, field_serializer
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from schemas.kafka_log import KafkaClientLog, masked, secret_values

PORT_OFFSET_ENV = "ERPCRM_STACK_PORT_OFFSET"
"""Moves every local port, the stack's and the workers' alike: a second stack beside the first."""


def port_offset() -> int:
    """How far every local port is moved (``ERPCRM_STACK_PORT_OFFSET``; empty or unset: 0).

    Raises:
        ValueError: the variable is not a whole number of ports in 0..10000.
    """
    raw = os.environ.get(PORT_OFFSET_ENV, "").strip() or "0"
    if not raw.isdigit() or int(raw) > 10_000:
        raise ValueError(f"{PORT_OFFSET_ENV}={raw!r}: expected a whole number from 0 to 10000")
    return int(raw)


class KafkaSettings(BaseModel):
    """Where the brokers are and any extra librdkafka properties (e.g. security).

    A worker attaches its :class:`~schemas.kafka_log.KafkaClientLog` with
    :meth:`logged_as`; every client configured from the copy then logs through it.
    """

    model_config = ConfigDict(frozen=True)

    bootstrap: str = "127.0.0.1:21092"
    extra: dict[str, str] = Field(default_factory=dict, repr=False)
    """librdkafka properties as they are (``sasl.password`` among them: never printed,
    and masked in a dump: :meth:`model_dump` shows a secret as ``**********``).
    :meth:`client_config` hands them to the clients in clear."""

    _client_log: KafkaClientLog | None = PrivateAttr(default=None)

    def logged_as(self, worker: str) -> KafkaSettings:
        """A copy whose clients all log through one ``erpcrm.kafka.<worker>`` log.

        See :class:`~schemas.kafka_log.KafkaClientLog`; this configuration's secrets are
        redacted from it.
        """
        copy = self.model_copy()
        copy._client_log = KafkaClientLog(worker, secrets=secret_values(self.extra))
        return copy

    @field_serializer("extra")
    def _masked_extra(self, extra: dict[str, str]) -> dict[str, str]:
        # A dump goes to logs, diagnostics and files; the clients read ``extra`` itself.
        return masked(extra)

    @property
    def client_log(self) -> KafkaClientLog | None:
        """The log attached by :meth:`logged_as`, if any."""
        return self._client_log

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """A librdkafka configuration dict.

        Bootstrap, extras, the worker's log hooks (when attached), then ``overrides``.
        """
        hooks = {} if self._client_log is None else self._client_log.hooks()
        return {"bootstrap.servers": self.bootstrap, **self.extra, **hooks, **overrides}


class RegistrySettings(BaseModel):
    """The Confluent-compatible schema registry endpoint."""

    model_config = ConfigDict(frozen=True)

    url: str = "http://127.0.0.1:21081/apis/ccompat/v7"


class WorkerSettings(BaseSettings):
    """Base of every worker's settings: env prefix, YAML file, frozen."""

    model_config = SettingsConfigDict(
        env_prefix="ERPCRM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        populate_by_name=True,
    )

    # Shared by every worker: always ERPCRM_KAFKA__*, ERPCRM_REGISTRY__*, whatever the
    # worker's own prefix.
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, validation_alias=AliasChoices("kafka", "erpcrm_kafka")
    )
    registry: RegistrySettings = Field(
        default_factory=RegistrySettings,
        validation_alias=AliasChoices("registry", "erpcrm_registry"),
    )
    malloc_arenas: int = Field(
        default=2, ge=0, validation_alias=AliasChoices("malloc_arenas", "erpcrm_malloc_arenas")
    )
    """glibc malloc arenas the worker process may use (``ERPCRM_MALLOC_ARENAS``; 0: glibc's
    default of eight per core). Fewer arenas, less memory held; see ``erpcrm.malloc``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then environment, then the YAML file in ``ERPCRM_CONFIG``."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("ERPCRM_CONFIG")
        if path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)
