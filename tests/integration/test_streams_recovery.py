"""A worker restarted over a backlog reads every record of it, whatever the broker's pace.

Seen in a full test run: a streams worker restarted (after a SIGKILL) over 5,590
sequenced records decided 1,579 of them and then waited forever, its committed offset
stuck. After a rebalance Faust resumes the stream partitions, seeks them to their
committed offsets and only then clears the stream buffers. When the lookup of the
committed offsets is slow (a busy broker: 550 ms in that run), the fetcher goes on
delivering records fetched before the seek; they move its read offset ahead, the same
records read again after the seek then count as duplicates and are dropped, and the
clear drops what was buffered: a buffer's worth (4,096 records) never reaches the agent
and is never acknowledged. The worker's :class:`streams.recovery.StreamsRecovery`
clears, then seeks, then resumes.

The worker here is a bare Faust app with one table (``faust_backlog_app``): killed with
SIGKILL in the middle of a backlog, then started again with the lookup of the committed
offsets as slow as in that run: once after the first run committed offsets, once killed
before its first commit (a partition with no committed offset is read from its
beginning). With Faust's own table manager (``BACKLOG_TABLE_MANAGER=stock``) the first
case fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.integration.cdc_fixtures import unique_name, wait_while_progressing

# A backstop only: the waits below go on while the worker reads, fail when it stalls.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

APP = "tests.integration.faust_backlog_app"
RECORDS = 40_000
SEEK_DELAY_SECONDS = 0.5
STALL_SECONDS = 60.0
"""A worker that reads nothing for this long is stuck (the bug stopped it for good)."""


def _backlog(bootstrap: str, topic: str) -> None:
    """``RECORDS`` records in a new one-partition topic."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(RECORDS):
        producer.produce(topic, key=b"k%d" % i, value=b"v%d" % i)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0


def _offsets(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text(encoding="utf-8").split()]


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _run(
    env: dict[str, str], log: Path, out_path: Path, until: Callable[[], bool], sig: int
) -> None:
    """Run the worker until ``until()`` holds, then send it ``sig``.

    It may take as long as it needs while it reads (``out_path`` grows); a worker that
    reads nothing more for :data:`STALL_SECONDS` (the bug: stuck for good) is given up
    on. Until its first record, its log growing counts as progress (Faust starting).
    """
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", APP, "worker", "--without-web", "-l", "info"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            with contextlib.suppress(AssertionError):
                wait_while_progressing(
                    lambda: worker.poll() is not None or until(),
                    lambda: _size(out_path) or _size(log),
                    STALL_SECONDS,
                    f"the worker to read its backlog (see {log})",
                )
            assert worker.poll() is None, f"the worker exited; see {log}"
            if not until():
                worker.send_signal(signal.SIGUSR1)  # mode's worker logs every task's stack
                time.sleep(2)
        finally:
            worker.send_signal(sig)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


@pytest.mark.parametrize(
    "killed_after",
    [500, RECORDS // 4],
    ids=["before-its-first-commit", "after-commits"],
)
def test_a_worker_restarted_over_a_backlog_reads_every_record(
    stack_env: dict[str, str], tmp_path: Path, killed_after: int
) -> None:
    topic = unique_name("backlog")
    _backlog(stack_env["KAFKA_BOOTSTRAP"], topic)
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    env = {
        **os.environ,
        **stack_env,
        "BACKLOG_TOPIC": topic,
        "BACKLOG_APP_ID": unique_name("backlogapp"),
        "BACKLOG_DATA": str(tmp_path / "data"),
    }
    _run(
        {**env, "BACKLOG_OUT": str(first)},
        tmp_path / "first.log",
        first,
        lambda: len(_offsets(first)) >= killed_after,
        signal.SIGKILL,
    )
    read_first = _offsets(first)
    assert len(read_first) < RECORDS, "the first run read the whole backlog"
    time.sleep(1)
    _run(
        {**env, "BACKLOG_OUT": str(second), "BACKLOG_SEEK_DELAY": str(SEEK_DELAY_SECONDS)},
        tmp_path / "second.log",
        second,
        lambda: RECORDS - 1 in _offsets(second)[-500:],
        signal.SIGTERM,
    )
    read_second = _offsets(second)
    assert read_second, f"the restarted worker read nothing; see {tmp_path / 'second.log'}"
    start = read_second[0]
    assert start <= max(read_first) + 1, f"the restart began at {start}, past the first run"
    missing = sorted(set(range(start, RECORDS)) - set(read_second))
    assert missing == [], f"{len(missing)} records never reached the agent, from {missing[0]}"
