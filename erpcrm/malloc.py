"""glibc's allocator, tuned for a worker process: few malloc arenas.

glibc gives each thread that meets a locked arena a new one, up to eight per core; a
worker's threads (Faust's event loop, librdkafka's, the metrics server, executors) each
end up with their own, and memory freed in one arena serves no other. Two arenas keep the
worker's peak resident memory down at no measurable cost in throughput. The cap is set
once, before the worker starts its threads, through ``mallopt(M_ARENA_MAX, n)``.

Anywhere but glibc this does nothing; a ``MALLOC_ARENA_MAX`` in the environment (which
glibc has read at start) wins over the setting.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Mapping
from typing import Final

log = logging.getLogger(__name__)

M_ARENA_MAX: Final = -8
"""``mallopt`` parameter number of the arena cap (glibc's ``malloc.h``)."""

GLIBC_ENV: Final = "MALLOC_ARENA_MAX"
"""glibc's own environment variable for the same cap, read when the process starts."""

Mallopt = Callable[[int, int], int]


def glibc_mallopt() -> Mallopt | None:
    """The C library's ``mallopt`` when it is glibc's; None anywhere else."""
    try:
        os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # not glibc (musl, macOS, ...): no such name
        return None
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt  # type: ignore[no-any-return]


def limit_arenas(
    arenas: int,
    *,
    environ: Mapping[str, str] = os.environ,
    mallopt: Callable[[], Mallopt | None] = glibc_mallopt,
) -> bool:
    """Cap glibc's malloc arenas at ``arenas``; call before the worker starts threads.

    Args:
        arenas: the cap; 0 leaves glibc's default (eight per core).
        environ: the process environment (``MALLOC_ARENA_MAX`` there wins).
        mallopt: finds glibc's ``mallopt`` (None elsewhere).

    Returns:
        True when the cap was set; False when left alone (0, ``MALLOC_ARENA_MAX`` set, not
        glibc, or glibc refused).
    """
    if arenas <= 0 or GLIBC_ENV in environ:
        return False
    call = mallopt()
    if call is None:
        return False
    if call(M_ARENA_MAX, arenas) != 1:  # mallopt returns 1 on success
        log.warning("glibc refused mallopt(M_ARENA_MAX, %d); keeping its default", arenas)
        return False
    log.debug("malloc arenas capped at %d", arenas)
    return True
