"""Every metric the alert rules and dashboards query is one a worker exports.

An alert on a metric nobody exports never fires, silently; so is a dashboard panel that
stays empty. The names are read from the shipped files and checked against the metrics
the three workers declare (each declared on a registry of its own).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cdc.metrics import CaptureMetrics
from sinks.metrics import SinkMetrics
from streams.metrics import StreamsMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SHIPPED = [
    DEPLOY / "prometheus" / "rules.yml",
    *sorted((DEPLOY / "grafana").glob("*.json")),
]
_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")


def _exported() -> set[str]:
    """Every sample name the workers' metrics can produce."""
    names: set[str] = set()
    for create in (CaptureMetrics.create, StreamsMetrics.create, SinkMetrics.create):
        registry = CollectorRegistry()
        create(registry)
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in _SUFFIXES)
    return names


def _queried(path: Path) -> set[str]:
    return set(re.findall(r"\berpcrm_[a-z0-9_]+", path.read_text()))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_queried_metric_is_exported(path: Path) -> None:
    queried = _queried(path)
    assert queried, f"{path.name} queries no erpcrm_ metric"
    assert sorted(queried - _exported()) == []
