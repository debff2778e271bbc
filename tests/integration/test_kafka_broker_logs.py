"""The local stack's Kafka broker keeps its own log, and a broker that cannot start says why.

The broker logs through SLF4J 1.7; without a binding for it (deploy/pom.xml) it logs
nothing at all: ``server.log`` stays empty, and a broker that exits at start leaves only
SLF4J's own complaint behind. With the binding, ``server.log`` under the stack's
``kafka/logs`` has the broker's story, and ``erpcrm stack up`` shows the end of it when
the broker exits during start-up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from erpcrm.stack import LocalStack

pytestmark = pytest.mark.integration

ERPCRM = str(Path(sys.executable).with_name("erpcrm"))


def test_the_broker_writes_server_log_under_the_stack_dir(local_stack: LocalStack) -> None:
    server_log = local_stack.kafka.logs / "server.log"
    assert server_log.parent.is_relative_to(local_stack.layout.state)
    text = server_log.read_text(errors="replace")
    assert "started (kafka.server" in text, text[-2000:]


def test_stack_up_shows_why_the_broker_exited_at_start(local_stack: LocalStack) -> None:
    """The broker's port is taken while it is down: ``erpcrm stack up`` fails, and what
    it prints includes the broker's own reason (from its log), not only that it exited."""
    kafka = local_stack.kafka
    kafka.stop()
    try:
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", kafka.port))
            holder.listen()
            result = subprocess.run(
                [ERPCRM, "stack", "up"],
                capture_output=True,
                text=True,
                check=False,
                env=os.environ.copy(),
                timeout=600,
            )
        shown = result.stdout + result.stderr
        assert result.returncode != 0, shown
        assert "kafka exited during start-up" in shown, shown
        assert "Address already in use" in shown, shown
    finally:
        local_stack.up()
    assert kafka.ready()
