"""The real local stack for integration tests, started once per test session.

If the whole stack is already up (a developer's ``erpcrm stack up``), it is reused and
left running. Otherwise the fixture starts what is missing and, at the end of the session,
stops exactly the components it started. Everything listens on loopback only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from erpcrm.stack import LocalStack

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """The running local stack (Kafka, registry, ERP and CRM PostgreSQL, Prometheus)."""
    stack = LocalStack()
    already_running = {s.name for s in stack.status() if s.healthy}
    started_here = [c for c in stack.components if c.name not in already_running]
    try:
        stack.up(lambda message: log.info("stack: %s", message))
        yield stack
    finally:
        # Also after a failed start: leave nothing running that this session started.
        for component in reversed(started_here):
            component.stop()


@pytest.fixture(scope="session")
def stack_env(local_stack: LocalStack) -> dict[str, str]:
    """Connection settings of the running stack (the keys ``erpcrm stack env`` prints)."""
    return local_stack.env()
