"""Finding a Java runtime for the JVM components of the stack.

Kafka 4.x runs on Java 17+; Apicurio Registry 3.x is compiled for Java 21. The stack
looks at ``ERPCRM_JAVA_HOME``, ``JAVA_HOME``, the JDKs under ``/usr/lib/jvm`` and the
``java`` on ``PATH``, and picks the newest one that satisfies each component.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from schemas.errors import StackError

_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@functools.cache
def _major(java: str) -> int:
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=20, check=False
        )
    except OSError:
        return 0
    match = _VERSION.search(result.stderr + result.stdout)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _candidates() -> list[str]:
    homes = [os.environ.get("ERPCRM_JAVA_HOME"), os.environ.get("JAVA_HOME")]
    jvm_dir = Path("/usr/lib/jvm")
    if jvm_dir.is_dir():
        homes.extend(str(p) for p in sorted(jvm_dir.iterdir()))
    found = [str(Path(h) / "bin" / "java") for h in homes if h]
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    return [j for j in dict.fromkeys(found) if os.access(j, os.X_OK)]


def find_java(min_major: int, component: str) -> str:
    """Return the newest ``java`` executable of at least ``min_major``."""
    best = max(_candidates(), key=_major, default=None)
    if best is None or _major(best) < min_major:
        seen = ", ".join(f"{j} ({_major(j)})" for j in _candidates()) or "none"
        raise StackError(
            f"{component} needs Java {min_major}+; found: {seen}. "
            f"Install a JDK {min_major}+ or point ERPCRM_JAVA_HOME at one."
        )
    return best
