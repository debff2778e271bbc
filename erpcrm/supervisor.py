"""``erpcrm run``: every worker as a child process, restarted when it dies.

One process tree, the embedded default. Each child is an ``erpcrm`` sub-command run with
the same interpreter and environment, so it reads the same settings. A child that exits
is restarted with exponential backoff (reset after a minute of healthy running), except
one that exits with :data:`EXIT_REFUSED` (its settings or arguments were refused: a
restart would be refused again), which stops every child and makes the supervisor exit
with that code. SIGTERM or SIGINT to the supervisor is forwarded to every child, which
stops cleanly (flush, confirm, commit) before the supervisor exits.

Each consuming worker (streams, sinks) gets a static group membership of its own,
``<instance prefix>-<worker name>``, the same across its restarts: a worker restarted
after a crash takes its partitions back as soon as it rejoins, instead of waiting for
Kafka's session timeout to expire the process that died (10-15 s with no output).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import StackError

log = logging.getLogger(__name__)

HEALTHY_AFTER_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 60.0
EXIT_REFUSED = 2
"""A child's exit code for refused settings or arguments (the CLI's and click's usage code)."""
WORKER_COMMAND = (sys.executable, "-m", "erpcrm.cli")
"""What each child runs, followed by its :attr:`WorkerSpec.args`."""


@dataclass
class WorkerSpec:
    """One worker: a name and its ``erpcrm`` arguments."""

    name: str
    args: tuple[str, ...]
    instance_setting: str = ""
    """The variable that gives the worker its static group membership ("": none)."""


@dataclass
class _Child:
    spec: WorkerSpec
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)


DEFAULT_WORKERS = (
    WorkerSpec("cdc-erp", ("cdc", "--system", "erp")),
    WorkerSpec("cdc-crm", ("cdc", "--system", "crm")),
    WorkerSpec("streams", ("streams",), "ERPCRM_STREAMS_INSTANCE_ID"),
    WorkerSpec("sink-crm", ("sink", "--target", "crm"), "ERPCRM_SINK_INSTANCE_ID"),
    WorkerSpec("sink-erp", ("sink", "--target", "erp"), "ERPCRM_SINK_INSTANCE_ID"),
)


class Supervisor:
    """Starts, watches and stops the workers; see the module docstring."""

    def __init__(
        self,
        workers: tuple[WorkerSpec, ...],
        log_dir: Path,
        command: tuple[str, ...] = WORKER_COMMAND,
        instance_prefix: str = "",
    ) -> None:
        """``instance_prefix``: names the workers' static memberships ("": none).

        It must not be used by another live supervisor of the same workers: Kafka
        fences the older of two processes with one membership.
        """
        self._children = [_Child(spec) for spec in workers]
        self._log_dir = log_dir
        self._command = command
        self._instance_prefix = instance_prefix
        self._stop = threading.Event()
        self._refused = False

    def stop(self) -> None:
        """Ask :meth:`run` to stop every child and return."""
        self._stop.set()

    def _start(self, child: _Child) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self._instance_prefix and child.spec.instance_setting:
            env[child.spec.instance_setting] = f"{self._instance_prefix}-{child.spec.name}"
        with (self._log_dir / f"{child.spec.name}.log").open("ab") as out:
            child.proc = subprocess.Popen(
                [*self._command, *child.spec.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        child.started = time.monotonic()
        log.info("%s: started (pid %d)", child.spec.name, child.proc.pid)

    def run(self) -> int:
        """Supervise until :meth:`stop` or a refused child.

        Returns 0 after a clean stop of every child, :data:`EXIT_REFUSED` when a child
        refused its settings, else the first non-zero exit code of the stop.
        """
        for child in self._children:
            self._start(child)
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for child in self._children:
                proc = child.proc
                if proc is not None and proc.poll() is not None:
                    code = proc.returncode
                    child.exits.append(code)
                    child.proc = None
                    if code == EXIT_REFUSED:
                        log.error(
                            "%s: refused its settings (exit %d), not restarted; stopping "
                            "every worker (see %s)",
                            child.spec.name,
                            code,
                            self._log_dir / f"{child.spec.name}.log",
                        )
                        self._refused = True
                        self._stop.set()
                        break
                    if now - child.started > HEALTHY_AFTER_SECONDS:
                        child.backoff = 1.0
                    child.next_start = now + child.backoff
                    log.error(
                        "%s: exited with %d; restarting in %.0fs (see %s)",
                        child.spec.name,
                        code,
                        child.backoff,
                        self._log_dir / f"{child.spec.name}.log",
                    )
                    child.backoff = min(child.backoff * 2, MAX_BACKOFF_SECONDS)
                elif proc is None and now >= child.next_start:
                    child.restarts += 1
                    self._start(child)
        return self._shutdown()

    def _shutdown(self) -> int:
        running = [c for c in self._children if c.proc is not None]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        worst = 0
        for child in running:
            assert child.proc is not None
            try:
                code = child.proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                log.error("%s: did not stop in time; killing it", child.spec.name)
                child.proc.kill()
                code = child.proc.wait()
            log.info("%s: stopped (%d)", child.spec.name, code)
            worst = worst or code
        return EXIT_REFUSED if self._refused else worst


def instance_prefix(state_dir: Path) -> str:
    """Static memberships' prefix for one stack on this host: ``<host>-<state dir hash>``.

    The same across supervisor restarts (a restarted ``erpcrm run`` takes its workers'
    partitions back at once); another stack's supervisor on this host gets another.
    """
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


@contextmanager
def sole_supervisor(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path`` while supervising one stack's workers.

    Raises:
        StackError: another supervisor holds it (its workers would share this one's
            static memberships, and each of the two would fence the other's out).
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise StackError(
                f"another `erpcrm run` (pid {holder}) supervises this stack's workers; "
                "stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
