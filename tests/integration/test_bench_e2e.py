"""``erpcrm bench e2e`` on the real stack: one tiny step, its JSON, changes that arrived.

Shape and arrival only: timings on a shared machine are for the benchmark's report, not
for assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from erpcrm.stack import LocalStack

pytestmark = pytest.mark.integration


def test_bench_e2e_reports_one_step_and_leaves_no_worker(local_stack: LocalStack) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "erpcrm.cli",
            "bench",
            "e2e",
            "--rates",
            "40",
            "--seconds",
            "6",
            "--drain-seconds",
            "90",
            "--processes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["benchmark"] == "e2e"
    assert report["options"]["rates"] == [40.0]
    (step,) = report["steps"]
    assert step["target_changes_per_second"] == 40.0
    assert step["source"]["changes"] > 0
    for direction in ("erp_to_crm", "crm_to_erp"):
        latency = step["latency"][direction]
        assert set(latency) == {"applied", "p50_ms", "p95_ms", "p99_ms", "share_under_1s"}
    # Both systems were written, so both sinks applied something.
    for direction in ("erp_to_crm", "crm_to_erp"):
        assert step["latency"][direction]["applied"] > 0, (direction, result.stderr[-3000:])
    assert set(step["lag_at_end_of_load"]) == {
        "slot_lag_bytes",
        "streams_lag_records",
        "sink_lag_events",
        "sink_deferred_events",
    }
    assert set(step["dead_letters"]) == {"streams", "sink_crm", "sink_erp"}
    assert set(step["workers"]) == {"cdc-erp", "cdc-crm", "streams", "sink-crm", "sink-erp"}
    for figures in step["workers"].values():
        assert figures["peak_rss_mib"] > 0
    assert isinstance(step["drained"], bool)
    assert set(report["workers"]) == set(step["workers"])
    assert "highest_sustained_changes_per_second" in report
    assert "highest sustained rate" in result.stderr  # after the readable table
    # The workers it started are gone again.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert not [line for line in ps.stdout.splitlines() if "erpcrm.cli run" in line]
