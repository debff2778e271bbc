"""``erpcrm run``'s supervisor with real child processes (tiny Python scripts, no services)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from erpcrm.supervisor import EXIT_REFUSED, Supervisor, WorkerSpec

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
