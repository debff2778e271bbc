"""A broker that does not answer is an outage to wait out, never a reason to exit.

No service runs here: the clients point at a loopback port nothing listens on, which is
what a stage sees while its broker restarts.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from cdc.offsets import OffsetStore
from schemas.errors import RetriableError
from schemas.settings import KafkaSettings
from schemas.topic_admin import create_topics, wait_for_broker


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
    store = OffsetStore(KafkaSettings(bootstrap=_nobody(), extra={"log_level": "0"}))
    with pytest.raises(RetriableError, match=r"_erpcrm\.cdc\.offsets"):
        store.load("slot", timeout=1.0)


class _Broker:
    """A metadata client whose broker answers from the ``answers_at``-th request on."""

    def __init__(self, answers_at: int, clock: list[float]) -> None:
        self.answers_at = answers_at
        self.clock = clock
        self.requests = 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        self.requests += 1
        self.clock[0] += timeout  # each unanswered request waits its whole timeout
        if self.requests < self.answers_at:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "connection refused"))
        return object()


def test_waiting_for_a_broker_that_is_away_warns_then_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [0.0]
    broker = _Broker(answers_at=20, clock=clock)
    log = logging.getLogger("test.broker")
    with caplog.at_level(logging.INFO, logger="test.broker"):
        waited = wait_for_broker(
            broker, "streams", log, attempt_s=5.0, warn_every_s=30.0, clock=lambda: clock[0]
        )
    assert broker.requests == 20
    assert waited == pytest.approx(100.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # at 5 s, then every 30 s while away: 5, 35, 65, 95
    assert len(warnings) == 4
    assert all(
        "streams: Kafka does not answer" in w and "connection refused" in w for w in warnings
    )
    assert "95s so far" in warnings[-1]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["streams: Kafka answers after 100s; starting"]


def test_a_broker_that_answers_at_once_is_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    with caplog.at_level(logging.INFO, logger="test.broker"):
        waited = wait_for_broker(
            _Broker(answers_at=1, clock=clock),
            "streams",
            logging.getLogger("test.broker"),
            clock=lambda: 0.0,
        )
    assert waited == 0.0
    assert not caplog.records


def test_waiting_for_a_real_client_whose_broker_is_away_keeps_asking() -> None:
    admin = AdminClient({"bootstrap.servers": _nobody(), "log_level": 0})
    asked: list[float] = []

    def clock() -> float:
        asked.append(time.monotonic())
        if len(asked) > 4:
            raise _EnoughError
        return asked[-1]

    with pytest.raises(_EnoughError):
        wait_for_broker(
            admin, "streams", logging.getLogger("test.broker"), attempt_s=0.2, clock=clock
        )
    # started, then one clock reading per unanswered request: it asked again each time
    assert len(asked) == 5


class _EnoughError(Exception):
    """Stops an endless wait in a test."""
