"""Process bookkeeping of the stack: a pid is trusted only while it is still ours."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from erpcrm.stack.process import cmdline, launch, running_pid, stop, tail, tree_memory_bytes


def test_pid_is_ours_only_while_marker_matches(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker-arg")
    pid_file = tmp_path / "p.pid"
    pid = launch(
        [sys.executable, "-c", "import time; time.sleep(60)", marker],
        cwd=tmp_path,
        log_file=tmp_path / "out.log",
        pid_file=pid_file,
    )
    try:
        deadline = time.monotonic() + 10
        while marker not in cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # until the child has exec'd
        assert running_pid(pid_file, marker) == pid
        assert running_pid(pid_file, "some-other-marker") is None
        assert tree_memory_bytes(pid) > 0
    finally:
        stop(pid, marker=marker, timeout=5)
    assert running_pid(pid_file, marker) is None


def test_stop_ignores_a_process_that_is_not_ours(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stop(proc.pid, marker=str(tmp_path / "not-in-its-cmdline"), timeout=1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_missing_or_garbage_pid_file(tmp_path: Path) -> None:
    assert running_pid(tmp_path / "absent.pid", "x") is None
    (tmp_path / "bad.pid").write_text("not a pid\n")
    assert running_pid(tmp_path / "bad.pid", "x") is None


def test_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3).splitlines() == ["line 97", "line 98", "line 99"]
    assert tail(tmp_path / "absent.log") == ""
