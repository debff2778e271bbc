"""``erpcrm run``'s supervisor with real child processes (tiny Python scripts, no services)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from erpcrm.supervisor import (
    EXIT_REFUSED,
    Supervisor,
    WorkerSpec,
    instance_prefix,
    sole_supervisor,
)
from schemas.errors import StackError

PYTHON = (sys.executable, "-c")


def _starts(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def _script(marker: Path, then: str) -> str:
    """A child that notes each start in ``marker``, then runs ``then``."""
    return f"open({str(marker)!r}, 'a').write('start\\n'); {then}"


def test_a_child_that_refuses_its_settings_is_not_restarted_and_stops_the_others(
    tmp_path: Path,
) -> None:
    refused, steady = tmp_path / "refused", tmp_path / "steady"
    supervisor = Supervisor(
        (
            WorkerSpec("refused", (_script(refused, f"raise SystemExit({EXIT_REFUSED})"),)),
            WorkerSpec("steady", (_script(steady, "import time; time.sleep(60)"),)),
        ),
        tmp_path / "logs",
        command=PYTHON,
    )
    started = time.monotonic()

    code = supervisor.run()

    assert code == EXIT_REFUSED
    assert time.monotonic() - started < 30  # the sleeping sibling was stopped, not awaited
    assert _starts(refused) == 1
    assert _starts(steady) == 1


def test_a_child_that_crashes_is_restarted_and_stopped_cleanly(tmp_path: Path) -> None:
    crashing = tmp_path / "crashing"
    first_crashes_then_runs = (
        "import signal, sys, time\n"
        f"if len(open({str(crashing)!r}).read().splitlines()) == 1:\n"
        "    raise SystemExit(1)\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(
        (WorkerSpec("crashing", (_script(crashing, "pass") + "\n" + first_crashes_then_runs,)),),
        tmp_path / "logs",
        command=PYTHON,
    )
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(supervisor.run()))
    runner.start()
    deadline = time.monotonic() + 20
    while _starts(crashing) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the restarted child installs its SIGTERM handler
    supervisor.stop()
    runner.join(30)

    assert _starts(crashing) == 2
    assert result == [0]  # the restarted child stopped cleanly on SIGTERM


def test_a_restarted_child_keeps_its_static_membership(tmp_path: Path) -> None:
    """Each start of a consuming worker sees the same instance id; others see none."""
    noted = tmp_path / "noted"
    note = (
        "import os, sys\n"
        f"open({str(noted)!r}, 'a').write(os.environ.get('WORKER_INSTANCE', '-') + '\\n')\n"
        f"if len(open({str(noted)!r}).read().splitlines()) < 3:\n"
        "    raise SystemExit(1)\n"
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(
        (WorkerSpec("consumer", (note,), "WORKER_INSTANCE"),),
        tmp_path / "logs",
        command=PYTHON,
        instance_prefix="host-1234",
    )
    runner = threading.Thread(target=supervisor.run)
    runner.start()
    deadline = time.monotonic() + 30
    while _starts(noted) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    supervisor.stop()
    runner.join(30)

    assert noted.read_text().splitlines() == ["host-1234-consumer"] * 3


def test_the_instance_prefix_is_stable_per_stack_and_differs_between_stacks(
    tmp_path: Path,
) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    assert instance_prefix(one) == instance_prefix(tmp_path / "x" / ".." / "one")
    assert instance_prefix(one) != instance_prefix(other)


def test_a_second_supervisor_of_one_stack_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    with sole_supervisor(lock):
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(StackError, match=f"pid {os.getpid()}"), sole_supervisor(lock):
            pass
    with sole_supervisor(lock):  # released once the first one ends
        pass
