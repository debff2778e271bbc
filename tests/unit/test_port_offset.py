"""One offset moves every local port: the stack's, the workers' metrics, Prometheus' targets."""

from __future__ import annotations

import pytest

from cdc.settings import CaptureSettings, default_metrics_port
from erpcrm.stack.layout import Ports, StackLayout
from erpcrm.stack.services import shift_loopback_ports
from schemas.settings import port_offset
from sinks.settings import SinkSettings
from streams.settings import StreamsSettings


def test_without_an_offset_every_port_is_the_documented_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ERPCRM_STACK_PORT_OFFSET", raising=False)
    assert port_offset() == 0
    assert CaptureSettings(system="crm").metrics_port == 21112
    assert SinkSettings(target="erp").metrics_port == 21115
    assert StreamsSettings().web_port == 21113
    assert StackLayout.default().ports == Ports()


def test_an_offset_moves_the_stack_and_the_workers_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPCRM_STACK_PORT_OFFSET", "100")
    assert CaptureSettings(system="erp").metrics_port == 21211
    assert default_metrics_port("crm") == 21212
    assert SinkSettings(target="crm").metrics_port == 21214
    assert StreamsSettings().web_port == 21213
    ports = StackLayout.default().ports
    assert (ports.kafka, ports.prometheus, ports.offset) == (21192, 21190, 100)


def test_an_explicit_port_wins_over_the_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPCRM_STACK_PORT_OFFSET", "100")
    assert SinkSettings(target="crm", metrics_port=40000).metrics_port == 40000


@pytest.mark.parametrize("raw", ["-5", "ten", "1.5", "10001", "30000"])
def test_an_offset_that_is_not_a_port_count_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("ERPCRM_STACK_PORT_OFFSET", raw)
    with pytest.raises(ValueError, match="ERPCRM_STACK_PORT_OFFSET"):
        port_offset()


def test_prometheus_scrapes_the_shifted_workers() -> None:
    config = """scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:21090"]
  - job_name: erpcrm-sink
    static_configs:
      - targets: ["127.0.0.1:21114"]
        labels: {target: crm}
# see http://127.0.0.1:9/x and example.org:21114
"""
    shifted = shift_loopback_ports(config, 200)
    assert '"127.0.0.1:21290"' in shifted
    assert '"127.0.0.1:21314"' in shifted
    assert "127.0.0.1:209/x" in shifted
    assert "example.org:21114" in shifted  # only loopback addresses move


def test_every_port_stays_below_the_ephemeral_range_at_the_largest_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Linux hands out 32768-60999 to outgoing connections; a listener there can collide."""
    monkeypatch.setenv("ERPCRM_STACK_PORT_OFFSET", "10000")
    ports = Ports().shifted(port_offset())
    listening = [ports.erp_postgres, ports.crm_postgres, ports.kafka, ports.kafka_controller]
    listening += [ports.registry, ports.prometheus, StreamsSettings().web_port]
    listening += [CaptureSettings(system=s).metrics_port for s in ("erp", "crm")]
    listening += [SinkSettings(target=t).metrics_port for t in ("crm", "erp")]
    assert max(listening) < 32768
