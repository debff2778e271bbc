"""Sink worker settings: defaults per target, environment overrides, validation."""

from __future__ import annotations

import os

import pydantic
import pytest

from sinks.settings import SinkSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ERPCRM_"):
            monkeypatch.delenv(name)


def test_crm_defaults() -> None:
    settings = SinkSettings(target="crm")
    assert settings.metrics_port == 21114
    assert settings.group_id == "erpcrm-sink-crm"
    assert settings.dlq_topic == "dlq.sinks.crm"
    assert settings.source == "erp"
    assert settings.origin == "erpcrm_sink"
    assert settings.sync_schema == "erpcrm_sync"
    assert settings.batch_size == 500


def test_erp_defaults() -> None:
    settings = SinkSettings(target="erp")
    assert settings.metrics_port == 21115
    assert settings.group_id == "erpcrm-sink-erp"
    assert settings.dlq_topic == "dlq.sinks.erp"
    assert settings.source == "crm"


def test_default_target_is_crm() -> None:
    settings = SinkSettings()
    assert settings.target == "crm"
    assert settings.group_id == "erpcrm-sink-crm"


def test_explicit_values_are_kept() -> None:
    settings = SinkSettings(
        target="erp", group_id="g", metrics_port=9000, dlq_topic="dlq.sinks.custom"
    )
    assert (settings.group_id, settings.metrics_port, settings.dlq_topic) == (
        "g",
        9000,
        "dlq.sinks.custom",
    )


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPCRM_SINK_BATCH_SIZE", "42")
    monkeypatch.setenv("ERPCRM_SINK_TARGET", "erp")
    monkeypatch.setenv("ERPCRM_SINK_DSN", "postgresql://sink:s3cret@db/erp")
    monkeypatch.setenv("ERPCRM_KAFKA__BOOTSTRAP", "broker-1:9092")
    settings = SinkSettings()
    assert settings.batch_size == 42
    assert settings.target == "erp"
    assert settings.metrics_port == 21115
    assert settings.kafka.bootstrap == "broker-1:9092"
    assert settings.dsn.get_secret_value() == "postgresql://sink:s3cret@db/erp"
    assert "s3cret" not in repr(settings)


def test_keyword_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPCRM_SINK_BATCH_SIZE", "42")
    assert SinkSettings(batch_size=7).batch_size == 7


@pytest.mark.parametrize("origin", ["Bad-Name", "1abc", "", "a" * 64])
def test_origin_pattern(origin: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        SinkSettings(origin=origin)


def test_valid_origin() -> None:
    assert SinkSettings(origin="_my_origin_2").origin == "_my_origin_2"


def test_bad_environment_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPCRM_SINK_BATCH_SIZE", "0")
    with pytest.raises(pydantic.ValidationError):
        SinkSettings()


def test_unknown_target_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        SinkSettings(target="sap")  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    settings = SinkSettings()
    with pytest.raises(pydantic.ValidationError):
        settings.batch_size = 1
