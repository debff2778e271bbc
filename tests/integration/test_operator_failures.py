"""The operator commands fail on a database error in one line: no traceback, no DSN.

Against the real stack's databases, with a wrong password or a sync schema that is not
there: ``erpcrm suspects list|release|link``, ``erpcrm reconcile`` and ``erpcrm
resnapshot`` exit with their failure code and print one line on stderr naming the error
class (and the SQLSTATE when the server sent one), never the password, the user or the
host (a libpq message names them), and no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.integration.cdc_fixtures import REPO

pytestmark = pytest.mark.integration

SECRET = "wrong-Pa55word"


def _wrong_password(dsn: str) -> str:
    """``dsn`` with its password replaced by :data:`SECRET` (and no passfile)."""
    parts = urlsplit(dsn)
    netloc = f"{parts.username}:{SECRET}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "connect_timeout=5", ""))


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "erpcrm.cli", *args],
        cwd=REPO,
        env={**os.environ, **env, "COLUMNS": "60"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_one_clean_line(
    done: subprocess.CompletedProcess[str], code: int, error: str, *hidden: str
) -> None:
    printed = done.stdout + done.stderr
    assert done.returncode == code, printed
    assert "Traceback" not in printed, printed
    for text in (SECRET, *hidden):
        assert text not in printed, printed
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: "), line
    assert error in line, line


@pytest.mark.parametrize("target", ["erp", "crm"])
@pytest.mark.parametrize(
    "args",
    [("list",), ("release", "1"), ("link", "1")],
    ids=["list", "release", "link"],
)
def test_suspects_commands_fail_in_one_line_on_a_wrong_password(
    stack_env: dict[str, str], target: str, args: tuple[str, ...]
) -> None:
    dsn = stack_env[f"{target.upper()}_SINK_DSN"]
    env = {"ERPCRM_SINK_DSN": _wrong_password(dsn)}
    done = _run(env, "suspects", *args, "--target", target)
    user = urlsplit(dsn).username or ""
    _assert_one_clean_line(done, 1, "OperationalError", f'user "{user}"')


def test_suspects_list_names_the_sqlstate_of_a_missing_sync_schema(
    stack_env: dict[str, str],
) -> None:
    env = {
        "ERPCRM_SINK_DSN": stack_env["CRM_SINK_DSN"],
        "ERPCRM_SINK_SYNC_SCHEMA": "erpcrm_sync_never_made",
    }
    done = _run(env, "suspects", "list", "--target", "crm")
    _assert_one_clean_line(done, 1, "UndefinedTable, SQLSTATE 42P01")


def test_reconcile_and_resnapshot_fail_in_one_line_on_a_wrong_password(
    stack_env: dict[str, str],
) -> None:
    dsn = _wrong_password(stack_env["ERP_DSN"])
    user = urlsplit(stack_env["ERP_DSN"]).username or ""
    done = _run({}, "reconcile", "--entity", "customer", "--erp-dsn", dsn)
    _assert_one_clean_line(done, 2, "OperationalError", f'user "{user}"')
    done = _run({}, "resnapshot", "--system", "erp", "--table", "res_partner", "--dsn", dsn)
    _assert_one_clean_line(done, 1, "OperationalError", f'user "{user}"')
