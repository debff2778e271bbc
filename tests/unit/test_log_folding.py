"""Repeated client log lines fold into summaries; a broker outage is told in a few lines."""

from __future__ import annotations

import json
import logging

import pytest

from schemas.kafka_log import KafkaClientLog, secret_values
from schemas.log_folding import (
    FailureKind,
    Line,
    OutageTracker,
    RepeatFolder,
    broker_failure,
    redact,
)

REFUSED = (
    "[thrd:127.0.0.1:21342/bootstrap]: 127.0.0.1:21342/bootstrap: Connect to "
    "ipv4#127.0.0.1:21342 failed: Connection refused (after 0ms in state CONNECT)"
)
REFUSED_1 = (
    "[thrd:127.0.0.1:21342/1]: 127.0.0.1:21342/1: Connect to ipv4#127.0.0.1:21342 failed: "
    "Connection refused (after 1ms in state CONNECT, 3 identical error(s) suppressed)"
)
SASL_REFUSED = (
    "[thrd:sasl_ssl://b1.example.com:9093/bootstrap]: sasl_ssl://b1.example.com:9093/bootstrap: "
    "Connect to ipv4#10.0.0.7:9093 failed: Connection refused (after 0ms in state CONNECT)"
)
SASL_DENIED = (
    "[thrd:sasl_ssl://b1.example.com:9093/1]: sasl_ssl://b1.example.com:9093/1: SASL "
    "authentication error: Authentication failed during authentication due to invalid "
    "credentials with SASL mechanism SCRAM-SHA-256 (after 5ms in state AUTH_REQ)"
)
CLOSED = (
    "[thrd:127.0.0.1:21342/1]: 127.0.0.1:21342/1: Disconnected: connection closed by peer: "
    "receive 0 after POLLIN (after 2881ms in state UP)"
)


def test_a_message_passes_once_and_its_repeats_are_summarised_per_window() -> None:
    folder = RepeatFolder(window_s=30)
    assert folder.offer(30, "leader-1 not found", 0.0) == [Line(30, "leader-1 not found")]
    assert folder.offer(30, "leader-2 not found", 1.0) == []  # digits aside, a repeat
    assert folder.offer(40, "leader-1 not found", 29.0) == []
    assert folder.due(29.9) == []
    assert folder.due(30.0) == [Line(40, "leader-1 not found (repeated 2 times in the last 30 s)")]
    # repeats go on: one summary per window
    for t in range(31, 60):
        assert folder.offer(30, "leader-1 not found", float(t)) == []
    assert folder.due(60.0) == [Line(30, "leader-1 not found (repeated 29 times in the last 30 s)")]
    # a window without repeats ends silently; the message passes again after it
    assert folder.due(90.0) == []
    assert folder.offer(30, "leader-1 not found", 91.0) == [Line(30, "leader-1 not found")]


def test_the_fold_key_can_leave_out_who_said_it() -> None:
    folder = RepeatFolder()
    assert len(folder.offer(30, "producer-1: boom", 0.0, key="boom")) == 1
    assert folder.offer(30, "consumer-2: boom", 1.0, key="boom") == []


def test_summaries_come_out_with_the_next_message_too() -> None:
    folder = RepeatFolder(window_s=30)
    folder.offer(30, "a", 0.0)
    folder.offer(30, "a", 1.0)
    assert folder.offer(30, "b", 31.0) == [
        Line(30, "a (repeated 1 times in the last 30 s)"),
        Line(30, "b"),
    ]


@pytest.mark.parametrize(
    ("text", "kind", "address"),
    [
        (REFUSED, FailureKind.CONNECT, "127.0.0.1:21342"),
        (REFUSED_1, FailureKind.CONNECT, "127.0.0.1:21342"),
        (CLOSED, FailureKind.DISCONNECT, "127.0.0.1:21342"),
        ("1/1 brokers are down", FailureKind.ALL_DOWN, None),
        (
            "GroupCoordinator: kafka-1.example.com:9092: Connect to ipv4#10.0.0.7:9092 "
            "failed: Connection refused (after 0ms in state CONNECT)",
            FailureKind.CONNECT,
            "kafka-1.example.com:9092",
        ),
        (
            "127.0.0.1:21342/bootstrap: Timed out ApiVersionRequest in flight (after 10076ms, "
            "timeout #0)",
            FailureKind.OTHER,
            "127.0.0.1:21342",
        ),
        (SASL_REFUSED, FailureKind.CONNECT, "b1.example.com:9093"),
        (SASL_DENIED, FailureKind.OTHER, "b1.example.com:9093"),
        (
            "ssl://[::1]:9093/bootstrap: Connect to ipv6#[::1]:9093 failed: Connection refused",
            FailureKind.CONNECT,
            "[::1]:9093",
        ),
        (
            "GroupCoordinator: ssl://kafka-1:9093: Disconnected (after 10ms in state UP)",
            FailureKind.DISCONNECT,
            "kafka-1:9093",
        ),
        (
            "kafka-2:9093/2: Failed to resolve 'kafka-2:9093': Name or service not known",
            FailureKind.CONNECT,
            "kafka-2:9093",
        ),
    ],
)
def test_transport_failures_are_read_from_librdkafka_text(
    text: str, kind: FailureKind, address: str | None
) -> None:
    failure = broker_failure(text)
    assert failure is not None
    assert (failure.kind, failure.address) == (kind, address)
    assert "thrd:" not in failure.reason
    assert "in state" not in failure.reason


def test_other_messages_are_no_transport_failure() -> None:
    assert broker_failure("Partition t(abc)[0]: new leader-1 not found in cache") is None
    assert broker_failure("Configuration property sasl.password is ignored") is None


def test_an_outage_is_a_line_when_it_starts_one_per_window_and_one_when_it_ends() -> None:
    tracker = OutageTracker(window_s=30)
    start = 1_796_662_293.0
    refused = broker_failure(REFUSED)
    assert refused is not None
    [down] = tracker.failed(refused, start) or []
    assert down.level == logging.WARNING
    assert "127.0.0.1:21342 unreachable since 2026-12-07T" in down.text
    assert "Connection refused" in down.text
    lines: list[Line] = []
    for step in range(1, 900):  # 90 s of attempts every 0.1 s, several kinds
        now = start + step / 10
        for text in (REFUSED, REFUSED_1, "1/1 brokers are down"):
            failure = broker_failure(text)
            assert failure is not None
            assert tracker.failed(failure, now) == []
        lines += tracker.due(now)
    assert [line.text.split(",")[0] for line in lines] == [
        "Kafka broker 127.0.0.1:21342 still down"
    ] * 2
    assert "for 30 s" in lines[0].text
    assert "for 60 s" in lines[1].text
    assert lines[1].text.endswith("latest: " + (broker_failure(REFUSED_1) or down).reason + ")")
    [back] = tracker.up("127.0.0.1:21342", since=start + 91.4, now=start + 93.0)
    assert back.level == logging.INFO
    assert "127.0.0.1:21342 reachable again after 91 s" in back.text
    assert tracker.down == frozenset()
    assert tracker.up("127.0.0.1:21342", since=start + 91.4, now=start + 94.0) == []


def test_a_lost_connection_alone_is_no_outage() -> None:
    tracker = OutageTracker()
    closed = broker_failure(CLOSED)
    all_down = broker_failure("1/1 brokers are down")
    assert closed is not None
    assert all_down is not None
    assert tracker.failed(closed, 0.0) is None
    assert tracker.failed(all_down, 0.0) is None
    timed_out = broker_failure("127.0.0.1:1/bootstrap: Timed out 1 in-flight requests")
    assert timed_out is not None
    assert tracker.failed(timed_out, 0.0) is None
    assert tracker.down == frozenset()


def test_a_broker_answering_with_another_failure_is_shown_and_named_in_the_window_line() -> None:
    tracker = OutageTracker(window_s=30)
    refused, denied, closed = (broker_failure(t) for t in (SASL_REFUSED, SASL_DENIED, CLOSED))
    assert refused is not None
    assert denied is not None
    assert closed is not None
    [down] = tracker.failed(refused, 0.0) or []
    assert "b1.example.com:9093 unreachable since" in down.text
    # back with rotated credentials: every attempt is refused by authentication
    for step in range(1, 100):
        assert tracker.failed(denied, step / 10) is None  # the caller shows it (folded)
    assert tracker.failed(refused, 10.0) == []  # connection failures still counted
    assert tracker.failed(denied, 11.0) is None
    [still] = tracker.due(30.0)
    assert "b1.example.com:9093 still down" in still.text
    assert "1 client messages about it folded" in still.text
    assert still.text.endswith(f"latest: {denied.reason})")
    assert "SASL authentication error" in still.text
    # a lost connection to a broker of an outage is shown as well
    assert tracker.failed(closed, 31.0) is None


def test_a_worker_log_shows_authentication_errors_during_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = KafkaClientLog("sink-erp", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="erpcrm.kafka.sink-erp")
    log.log(40, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", SASL_REFUSED)
    for _ in range(600):  # 60 s of attempts, every one refused by authentication
        now[0] += 0.1
        log.error(_Error("_AUTHENTICATION", SASL_DENIED))
        log.stats(json.dumps({"brokers": {"b": {"nodename": "b1.example.com:9093"}}}))
    texts = [r.getMessage() for r in caplog.records]
    assert sum("unreachable since" in t for t in texts) == 1, texts
    shown = [t for t in texts if t.startswith("_AUTHENTICATION: ")]
    assert len(shown) == 2, texts  # the first one, then its repeats in one line
    assert "SASL authentication error" in shown[0]
    assert shown[1].endswith("(repeated 299 times in the last 30 s)")
    windows = [t for t in texts if "still down" in t]
    assert len(windows) == 2, texts
    assert all("latest: SASL authentication error" in t for t in windows), windows


def test_secrets_are_redacted() -> None:
    assert redact("login with hunter2 failed", ["hunter2", ""]) == "login with *** failed"
    assert redact("pw=abcdef, then abc", ["abc", "abcdef"]) == "pw=***, then ***"
    assert redact("pw=abcdef", ["abcdef", "abc", "abc"]) == "pw=***"
    config = {"sasl.password": "p", "ssl.key.password": "k", "sasl.username": "u", "acks": 1}
    assert sorted(secret_values(config)) == ["k", "p"]


class _Error:
    def __init__(self, code: str, text: str) -> None:
        self._code = code
        self._text = text

    def name(self) -> str:
        return self._code

    def str(self) -> str:
        return self._text

    def fatal(self) -> bool:
        return False


def test_a_worker_log_tells_an_outage_of_several_clients_in_a_few_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1_796_662_293.0]
    log = KafkaClientLog("sink-crm", secrets=["hunter2"], clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="erpcrm.kafka.sink-crm")
    log.log(20, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", CLOSED)
    for step in range(900):  # 90 s, three clients failing every 0.1 s
        now[0] += 0.1
        for client in ("rdkafka#consumer-1", "rdkafka#producer-2", "rdkafka#consumer-3"):
            log.log(40, "%s [%s] %s", "FAIL", client, REFUSED)
            log.error(_Error("_TRANSPORT", REFUSED))
        log.error(_Error("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
        log.log(30, "%s [%s] %s", "METADATA", "rdkafka#producer-2", f"leader-{step} hunter2")
        if step % 50 == 0:
            log.stats(json.dumps({"brokers": {"b": {"nodename": "127.0.0.1:21342"}}}))
    up = {"nodename": "127.0.0.1:21342", "state": "UP", "stateage": 2_000_000}
    log.stats(json.dumps({"brokers": {"127.0.0.1:21342/1": up}}))
    texts = [r.getMessage() for r in caplog.records]
    assert all(r.name == "erpcrm.kafka.sink-crm" for r in caplog.records)
    assert len(texts) <= 12, texts
    assert sum("unreachable since" in t for t in texts) == 1
    assert sum("still down" in t for t in texts) == 2
    assert sum("reachable again after 88 s" in t for t in texts) == 1, texts
    assert any("repeated" in t and "METADATA" in t for t in texts)
    assert not any("hunter2" in t for t in texts)
