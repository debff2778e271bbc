"""Worker settings: defaults per system, environment overrides, masked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.catalog import column_shape
from cdc.settings import DEFAULT_TABLES, CaptureSettings
from erpcrm.stack import LocalStack


def test_defaults_follow_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("ERPCRM_CDC_TABLES", "ERPCRM_CDC_SLOT", "ERPCRM_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    crm = CaptureSettings(system="crm")
    assert crm.tables == DEFAULT_TABLES["crm"]
    assert crm.slot == "erpcrm_crm"
    assert crm.publication == "erpcrm_crm"
    assert crm.metrics_port == 21112
    assert crm.server_name == "crm"


def test_environment_overrides_and_shared_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPCRM_CDC_TABLES", "res_partner, stock_quant")
    monkeypatch.setenv("ERPCRM_CDC_TOPIC_PREFIX", "staging")
    monkeypatch.setenv("ERPCRM_KAFKA__BOOTSTRAP", "broker-1:9092")
    monkeypatch.setenv("ERPCRM_CDC_DSN", "postgresql://u:s3cret@h/db")
    settings = CaptureSettings(system="erp")
    assert settings.tables == ("res_partner", "stock_quant")
    assert settings.server_name == "staging"
    assert settings.kafka.bootstrap == "broker-1:9092"
    assert "s3cret" not in repr(settings)
    assert settings.dsn.get_secret_value().endswith("@h/db")


def test_yaml_file_is_read_below_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "erpcrm.yaml"
    config.write_text("heartbeat_seconds: 2.5\nslot: from_yaml\n")
    monkeypatch.setenv("ERPCRM_CONFIG", str(config))
    monkeypatch.setenv("ERPCRM_CDC_SLOT", "from_env")
    settings = CaptureSettings(system="erp")
    assert settings.heartbeat_seconds == 2.5
    assert settings.slot == "from_env"


def test_settings_are_frozen() -> None:
    settings = CaptureSettings(system="erp")
    with pytest.raises(ValueError):
        settings.slot = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("typname", "typmod", "precision", "scale"),
    [
        ("numeric", (12 << 16 | 2) + 4, 12, 2),
        ("numeric", -1, None, None),
        ("timestamptz", 3, None, 3),
    ],
)
def test_column_shape_decodes_type_modifiers(
    typname: str, typmod: int, precision: int | None, scale: int | None
) -> None:
    shape = column_shape("c", typname, typmod, notnull=True, is_key=False)
    assert (shape.numeric_precision, shape.numeric_scale) == (precision, scale)
    assert shape.nullable is False


def test_stack_env_carries_no_password() -> None:
    env = LocalStack().env()
    assert {
        "KAFKA_BOOTSTRAP",
        "SCHEMA_REGISTRY_URL",
        "ERP_DSN",
        "CRM_DSN",
        "PROMETHEUS_URL",
    } <= set(env)
    for key, value in env.items():
        if key.endswith("_DSN"):
            assert value.startswith("postgresql://")
            assert ":" not in value.split("://", 1)[1].split("@", 1)[0], key
            assert "passfile=" in value


def test_the_streams_worker_refuses_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from streams.settings import EXACTLY_ONCE_REFUSED, StreamsSettings

    monkeypatch.setenv("ERPCRM_STREAMS_PROCESSING_GUARANTEE", "exactly_once")
    with pytest.raises(ValidationError, match="exactly_once is not supported") as refused:
        StreamsSettings()
    assert EXACTLY_ONCE_REFUSED in str(refused.value)
    monkeypatch.setenv("ERPCRM_STREAMS_PROCESSING_GUARANTEE", "at_least_once")
    assert StreamsSettings().processing_guarantee == "at_least_once"


def test_kafka_secrets_are_masked_in_a_dump_and_in_clear_for_the_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "ERPCRM_KAFKA__EXTRA",
        '{"sasl.password": "hunter2", "sasl.username": "sync", "ssl.key.password": "k3y"}',
    )
    kafka = CaptureSettings(system="erp").kafka
    dumped = kafka.model_dump()["extra"]
    assert dumped["sasl.password"] == "**********"
    assert dumped["ssl.key.password"] == "**********"
    assert dumped["sasl.username"] == "sync"
    assert "hunter2" not in kafka.model_dump_json()
    assert "hunter2" not in repr(kafka)
    config = kafka.logged_as("cdc-erp").client_config()
    assert (config["sasl.password"], config["ssl.key.password"]) == ("hunter2", "k3y")
