"""``erpcrm bench streams`` on a stack whose databases already hold dirty rows.

A clean workload must not turn into dead letters, whatever an earlier run left in the
demo databases: the dirt that is there (quotes with unknown SKUs or negative quantities,
CRM products the ERP does not know) is rejected where it is read (the snapshots), the
clean workload's own changes give none, and no failure is dead-lettered twice.
"""

from __future__ import annotations

import pytest

from erpcrm.bench_streams import bench_streams
from erpcrm.stack import LocalStack
from erpcrm.workload import OpKind, run_workload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Quotes, some of them dirty, and their acceptance: orders with dirty lines.
DIRTY_WEIGHTS = {OpKind.CRM_NEW_QUOTE: 3.0, OpKind.CRM_ACCEPT_QUOTE: 2.0}


def test_a_clean_workload_over_dirty_data_gives_no_dead_letters_of_its_own(
    local_stack: LocalStack,
) -> None:
    dirty = run_workload(
        local_stack.erp.dsn(),
        local_stack.crm.dsn(),
        rate=float("inf"),
        duration=None,
        count=300,
        dirty_ratio=0.5,
        seed=4242,
        weights=DIRTY_WEIGHTS,
    )
    assert dirty.dirty_by_kind.get("unknown_sku", 0) > 0, dirty.as_dict()

    report = bench_streams(operations=1500, seed=7, timeout=600)

    throughput = report["throughput"]
    by_source = throughput["dead_letters_by_source"]
    # The dirt already in the databases is rejected where the snapshots read it ...
    assert by_source["snapshot"].get("unknown_sku", 0) > 0, throughput
    # ... the clean workload's changes add none, and no failure is dead-lettered twice.
    assert by_source["workload"] == {}, throughput
    assert by_source["repeated"] == 0, throughput
    assert sum(by_source["snapshot"].values()) == throughput["dead_letters"], throughput
