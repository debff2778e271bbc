"""What the operator tools' tests share: the CLI as a subprocess, writes no capture sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg

from tests.integration.cdc_fixtures import REPO

__all__ = ["erpcrm", "erpcrm_json", "parked_briefly", "under_sink_origin"]


def erpcrm(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str]:
    """Run ``erpcrm <args>`` against the stack in ``env``; exit code and stdout.

    Fails the test on a crash (an exit code other than 0 and 1, the codes the operator
    commands use for "done" and "found something").
    """
    done = subprocess.run(
        [sys.executable, "-m", "erpcrm.cli", *args],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ERPCRM_")}, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, done.stdout


def erpcrm_json(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> Any:
    """``erpcrm <args>``, its JSON output; the exit code must be one of ``ok``."""
    code, out = erpcrm(env, *args)
    assert code in ok, out
    return json.loads(out)


def parked_briefly(stack_env: dict[str, str]) -> dict[str, str]:
    """The stack's settings, with records waiting for a reference giving up after 5 s."""
    return dict(stack_env, ERPCRM_STREAMS_REFERENCE_WAIT_SECONDS="5")


def under_sink_origin(dsn: str, query: str, params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` in a session tagged like the sinks': its capture drops it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_replication_origin_session_setup('erpcrm_sink')")
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []
