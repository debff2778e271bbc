"""What the benchmarks share: the pipeline's workers, ``/metrics`` scrapes, process figures.

No benchmark logic: a scrape is a flat map of samples, processes are read from ``/proc``
(Linux), histogram quantiles are estimated from bucket counts the way Prometheus'
``histogram_quantile`` does, :func:`pipeline` runs ``erpcrm run`` for a benchmark, and
:func:`step` keeps what a benchmark measured before one of its steps failed.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from schemas.errors import StackError


class BenchStepError(StackError):
    """A benchmark step failed; ``figures`` holds the whole result measured until then.

    The failed step's entry in it has an ``error``: what went wrong.
    """

    def __init__(self, step: str, cause: BaseException, figures: dict[str, Any]) -> None:
        super().__init__(f"the {step} step failed: {type(cause).__name__}: {cause}")
        self.step = step
        self.figures = figures


@contextlib.contextmanager
def step(result: dict[str, Any], name: str) -> Iterator[dict[str, Any]]:
    """A benchmark step whose figures go into ``result[name]`` (yielded, filled by it).

    Any failure inside is recorded there as ``error`` and raised as
    :class:`BenchStepError` carrying ``result``, so the figures measured before it (the
    step's own included) can still be printed.
    """
    figures: dict[str, Any] = result.setdefault(name, {})
    try:
        yield figures
    except Exception as exc:
        figures["error"] = f"{type(exc).__name__}: {exc}"
        raise BenchStepError(name, exc, result) from exc


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Every sample of one scrape: (sample name, label pairs) -> value."""

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, timeout: float = 5.0) -> Samples | None:
    """Every sample of the /metrics on loopback ``port`` (None if unreachable)."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **without: str) -> float:
    """Sum of ``name``'s samples, leaving out those with any label pair in ``without``."""
    excluded = set(without.items())
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and not (labels & excluded)
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name``'s samples summed per value of ``label``, sorted by that value."""
    out: dict[str, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample == name:
            out[dict(labels).get(label, "")] += value
    return {k: int(v) if v == int(v) else v for k, v in sorted(out.items())}


def buckets(samples: Samples, histogram: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound, summed over its labels."""
    out: dict[float, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample == f"{histogram}_bucket":
            out[float(dict(labels)["le"])] += value
    return dict(sorted(out.items()))


def bucket_delta(after: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    """Observations made between two scrapes of the same histogram, per bucket.

    A histogram that went down was reset (its process restarted): everything it holds
    now was observed since.
    """
    if after.get(math.inf, 0.0) < before.get(math.inf, 0.0):
        return dict(after)
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def quantile(cumulative: Mapping[float, float], q: float) -> float:
    """The ``q`` quantile of a histogram from cumulative bucket counts (NaN when empty).

    Linear interpolation inside the bucket holding the rank, as Prometheus'
    ``histogram_quantile``; a rank in the ``+Inf`` bucket gives the highest finite bound
    (the true value is above it).
    """
    bounds = sorted(cumulative)
    count = cumulative[bounds[-1]] if bounds else 0.0
    if count <= 0:
        return math.nan
    rank = q * count
    lower, below = 0.0, 0.0
    for bound in bounds:
        upto = cumulative[bound]
        if upto >= rank:
            if math.isinf(bound):
                return lower
            inside = upto - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, upto
    return lower


def _status_kib(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (``VmHWM``), 0 if unreadable."""
    return _status_kib(pid, "VmHWM") * 1024


def rss(pid: int) -> int:
    """The process's resident set size now, in bytes (``VmRSS``), 0 if unreadable."""
    return _status_kib(pid, "VmRSS") * 1024


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used (user + system), in seconds; 0 if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: count fields after its closing paren.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children, live and exited, in seconds (0 if gone).

    The process's own user + system time, the time of its children it has waited for
    (``cutime``, ``cstime``), and that of its live children: for a PostgreSQL
    postmaster, what every backend has used, including those whose session ended.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    own = sum(int(f) for f in fields[11:15]) / _CLOCK_TICKS
    return own + sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (empty if it is gone)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def command_line(pid: int) -> tuple[str, ...]:
    """The process's arguments (empty if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def answering(ports: Iterable[int]) -> bool:
    """Whether every one of ``ports`` serves ``/metrics`` on loopback."""
    for port in ports:
        try:
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).raise_for_status()
        except httpx.HTTPError:
            return False
    return True


@contextlib.contextmanager
def pipeline(
    log: Path, ports: Iterable[int], timeout: float, *, reuse: bool = True
) -> Iterator[subprocess.Popen[bytes] | None]:
    """The workers of ``erpcrm run``, ready once every one of ``ports`` answers.

    If they already answer: with ``reuse`` they are used as they are (yields None),
    otherwise :class:`StackError`. Else ``erpcrm run`` is started here (output to
    ``log``; yields its process) and stopped again (SIGTERM: each worker stops
    cleanly) when the block ends.
    """
    ports = tuple(ports)
    if answering(ports):
        if not reuse:
            raise StackError("the workers are already running: stop them first")
        yield None
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "erpcrm.cli", "run"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout
        while not answering(ports):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"the workers did not start; see {log}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            # The supervisor did not stop its workers in time: stop them all, hard.
            for pid in children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait(30)
