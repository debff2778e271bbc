"""A worker command holds only its own stage: what it does not run, it does not import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from erpcrm import cli


def _imported_by(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_the_streams_command_leaves_capture_stack_and_workload_out() -> None:
    modules = _imported_by("import erpcrm.cli, erpcrm.workers, streams.app")
    assert "streams.app" in modules
    unwanted = {"psycopg", "cdc.streaming", "erpcrm.stack", "erpcrm.workload", "sinks.runner"}
    assert not unwanted & modules


def test_the_command_line_alone_imports_no_stage() -> None:
    modules = _imported_by("import erpcrm.cli")
    assert not {m for m in modules if m.split(".")[0] in {"cdc", "streams", "sinks", "faust"}}


def test_given_settings_keep_the_stack_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    def unread() -> dict[str, str]:
        raise AssertionError("the local stack was read")

    monkeypatch.setattr(cli, "_stack_env", unread)
    monkeypatch.setenv("ERPCRM_KAFKA__BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("ERPCRM_REGISTRY__URL", "http://registry:8081")
    monkeypatch.setenv("ERPCRM_SINK_DSN", "postgresql://sink@db/crm")
    cli._stack_defaults_into_environment(sink_dsn_of="crm")


def test_only_missing_settings_come_from_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = {"KAFKA_BOOTSTRAP": "local:1", "SCHEMA_REGISTRY_URL": "http://local:2"}
    stack["ERP_CAPTURE_DSN"] = "postgresql://capture@local/erp"
    monkeypatch.setattr(cli, "_stack_env", lambda: stack)
    monkeypatch.setenv("ERPCRM_KAFKA__BOOTSTRAP", "broker:9092")
    monkeypatch.delenv("ERPCRM_REGISTRY__URL", raising=False)
    monkeypatch.delenv("ERPCRM_CDC_DSN", raising=False)
    cli._stack_defaults_into_environment(capture_dsn_of="erp")
    assert os.environ["ERPCRM_KAFKA__BOOTSTRAP"] == "broker:9092"
    assert os.environ["ERPCRM_REGISTRY__URL"] == "http://local:2"
    assert os.environ["ERPCRM_CDC_DSN"] == "postgresql://capture@local/erp"
