"""``erpcrm bench sinks`` whose end-to-end step fails still prints what it measured."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from erpcrm import bench_sinks
from erpcrm.cli import app
from schemas.errors import StackError


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    running = SimpleNamespace(pid=lambda: 1)
    fake = SimpleNamespace(
        erp=running, crm=running, kafka=running, layout=SimpleNamespace(state=tmp_path)
    )
    monkeypatch.setattr(bench_sinks, "LocalStack", lambda: fake)
    monkeypatch.setattr(bench_sinks, "pipeline", lambda *a, **k: contextlib.nullcontext(None))


def _phases(
    stack: Any, events: int, batch_size: int, timeout: float, result: dict[str, Any]
) -> None:
    result["insert"] = {"events": events, "events_per_second": 12_000.0}
    result["update"] = {"events": events, "events_per_second": 9_000.0}


def _bench(monkeypatch: pytest.MonkeyPatch, phases: Any, measure: Any, *options: str) -> Result:
    """``erpcrm bench sinks`` with its apply phases and end-to-end changes replaced."""
    monkeypatch.setattr(bench_sinks, "_throughput", phases)
    monkeypatch.setattr(bench_sinks, "_measure_end_to_end", measure)
    return CliRunner().invoke(app, ["bench", "sinks", "--events", "100", *options])


def test_a_failed_end_to_end_step_prints_the_apply_figures_and_the_error(
    stack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def measure(
        stack: Any, samples: int, timeout: float, to_crm: list[float], to_erp: list[float]
    ) -> None:
        to_crm.extend([0.05, 0.07])
        to_erp.append(0.06)
        raise StackError("a change did not arrive within 300s")

    result = _bench(monkeypatch, _phases, measure)
    assert result.exit_code == 1
    printed = json.loads(result.stdout)
    assert printed["apply"]["insert"] == {"events": 100, "events_per_second": 12_000.0}
    assert printed["apply"]["update"]["events_per_second"] == 9_000.0
    end_to_end = printed["end_to_end"]
    assert end_to_end["measured"] == {"erp_to_crm": 2, "crm_to_erp": 1}
    assert end_to_end["erp_to_crm"]["max_ms"] == 70.0
    assert end_to_end["error"] == "StackError: a change did not arrive within 300s"
    assert "the end_to_end step failed: StackError: a change did not arrive" in result.stderr


def test_a_failed_apply_phase_keeps_the_phases_before_it_and_skips_end_to_end(
    stack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def phases(
        stack: Any, events: int, batch_size: int, timeout: float, result: dict[str, Any]
    ) -> None:
        result["insert"] = {"events": events}
        raise StackError("the sink update phase did not finish in 300s")

    def measure(*args: Any) -> None:
        raise AssertionError("the end-to-end step ran after a failed apply step")

    result = _bench(monkeypatch, phases, measure)
    assert result.exit_code == 1
    printed = json.loads(result.stdout)
    assert printed["apply"] == {
        "insert": {"events": 100},
        "error": "StackError: the sink update phase did not finish in 300s",
    }
    assert "end_to_end" not in printed
    assert "the apply step failed" in result.stderr


def test_a_run_without_failures_prints_only_the_json(
    stack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def measure(
        stack: Any, samples: int, timeout: float, to_crm: list[float], to_erp: list[float]
    ) -> None:
        to_crm.append(0.05)
        to_erp.append(0.06)

    result = _bench(monkeypatch, _phases, measure, "--samples", "1")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert "error" not in printed["end_to_end"]
    assert printed["end_to_end"]["erp_to_crm"]["p50_ms"] == 50.0
    assert not result.stderr
