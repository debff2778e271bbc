"""A broker that does not answer is an outage to wait out, never a reason to exit.

No service runs here: the clients point at a loopback port nothing listens on, which is
what a stage sees while its broker restarts.
"""

from __future__ import annotations

import socket

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from cdc.offsets import OffsetStore
from schemas.errors import RetriableError
from schemas.topic_admin import create_topics


def _nobody() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_creating_topics_on_a_broker_that_is_away_is_retriable() -> None:
    admin = AdminClient({"bootstrap.servers": _nobody(), "log_level": 0})
    with pytest.raises(RetriableError, match="cannot create topic t1"):
        create_topics(admin, [NewTopic("t1", num_partitions=1)], timeout=1.0)


def test_nothing_to_create_asks_nothing() -> None:
    admin = AdminClient({"bootstrap.servers": _nobody(), "log_level": 0})
    assert create_topics(admin, []) == set()


def test_reading_capture_offsets_from_a_broker_that_is_away_is_retriable() -> None:
    store = OffsetStore(_nobody())
    with pytest.raises(RetriableError, match=r"_erpcrm\.cdc\.offsets"):
        store.load("slot", timeout=1.0)
