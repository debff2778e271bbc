"""Detached processes for the local stack: start, identify, measure, stop.

A component's process is started in its own session (so a stop reaches its whole process
group) with output appended to a log file, and its pid is recorded in a pid file. A pid is
only trusted while ``/proc/<pid>/cmdline`` still contains the component's marker (a path
under the stack's state directory), so ``down`` never signals a process it did not start.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from schemas.errors import StackError

UNPRIVILEGED_USER = "postgres"


def as_unprivileged(argv: Sequence[str]) -> list[str]:
    """Prefix ``argv`` so it runs as the unprivileged service user when we are root.

    PostgreSQL refuses to run as root; CI and these machines run as root.
    """
    if os.geteuid() != 0:
        return list(argv)
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError as exc:
        raise StackError(
            f"running as root and no '{UNPRIVILEGED_USER}' system user exists; "
            "install the PostgreSQL server packages (make setup) or run as a normal user"
        ) from exc
    return ["runuser", "-u", UNPRIVILEGED_USER, "--", *argv]


def unprivileged_dir(preferred: Path) -> Path:
    """Where the unprivileged service user can keep its data for ``preferred``.

    ``preferred`` itself when that user can reach it (or we are not root). A checkout under
    a directory the service user cannot traverse (``/root`` is 0700) gets a stable
    directory under ``/var/lib/erpcrm-sync`` instead, with ``preferred`` as a symlink to it.
    """
    if os.geteuid() != 0 or preferred.is_symlink():
        return preferred.resolve() if preferred.is_symlink() else preferred
    parent = preferred.parent
    parent.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        as_unprivileged(["test", "-x", str(parent)]), capture_output=True, check=False
    )
    if probe.returncode == 0:
        return preferred
    digest = hashlib.sha1(str(preferred).encode(), usedforsecurity=False).hexdigest()[:12]
    target = Path("/var/lib/erpcrm-sync") / f"{preferred.name}-{digest}"
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o755)  # noqa: S103 - traversable; initdb keeps data 0700
    if not preferred.exists():
        preferred.symlink_to(target)
    return target


def chown_to_unprivileged(path: Path) -> None:
    """Give ``path`` (recursively) to the unprivileged service user when we are root."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    for dirpath, _dirnames, filenames in os.walk(path):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)


def launch(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_file: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start ``argv`` detached in a new session, append its output to ``log_file``.

    Returns the pid, also written to ``pid_file``. The caller waits for readiness.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def cmdline(pid: int) -> str:
    """Return the command line of ``pid`` ('' when it no longer exists)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def running_pid(pid_file: Path, marker: str) -> int | None:
    """Return the recorded pid if that process is alive and still ours, else None."""
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    if marker in cmdline(pid) and not _is_zombie(pid):
        return pid
    return None


def stop(pid: int, *, marker: str, timeout: float = 30.0) -> None:
    """Stop ``pid``'s process group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if marker not in cmdline(pid):
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker not in cmdline(pid) or _is_zombie(pid):
            return
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


def tree_memory_bytes(pid: int) -> int:
    """Proportional set size (PSS) of ``pid`` and its descendants, in bytes.

    PSS splits shared pages between the processes that map them, so PostgreSQL's shared
    buffers are not counted once per backend. Falls back to RSS where PSS is unreadable.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        total += _process_memory(current)
        stack.extend(children.get(current, []))
    return total


def _process_memory(pid: int) -> int:
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        except OSError:
            continue
    return 0


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max(64 * 1024, lines * 512)))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
