"""The first sync of the demo records no conflict but a refused edit of an owned field.

Both captures snapshot the demo customers (``res_partner``, ``accounts``), the streams
worker links them, and each sink meets the other system's snapshot reads. An owner's
own value written into the other system is an update (the CRM sink writing the ERP's
VAT id), and a shared field both snapshots hold is where the sync starts: neither may
be recorded in ``erpcrm_sync.conflicts``. A differing value of a field the target owns
is refused (and re-announced): a decision between two writers, which the audit keeps.

The databases are shared with every other test, so their snapshot grows with each run;
the settle budget is generous (``ERPCRM_FIRST_SYNC_SECONDS``, default 900).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from schemas.mapping import Owner, load_mappings, ownership
from tests.integration.sink_fixtures import Pipeline

pytestmark = pytest.mark.integration

BUDGET = float(os.environ.get("ERPCRM_FIRST_SYNC_SECONDS", "900"))


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    running = Pipeline(stack_env, tmp_path_factory.mktemp("first-sync"))
    running.erp.tables = ("res_partner",)
    running.crm.tables = ("accounts",)
    try:
        running.start()
        running.settled(timeout=BUDGET, quiet=10.0)
        yield running
    finally:
        running.cleanup()


def test_the_first_sync_records_no_conflict_but_refused_edits_of_owned_fields(
    pipeline: Pipeline,
) -> None:
    owners = ownership(load_mappings(), "customer")
    for sink in pipeline:
        source = "crm" if sink.target == "erp" else "erp"
        applied = sink.total("applied") + sink.total("noop")
        rows = sink.query(
            "SELECT entity, field, reason, count(*) FROM {schema}.conflicts GROUP BY 1, 2, 3"
        )
        noisy = [r for r in rows if owners.get(r[1]) is Owner(source) or r[2] != "owner"]
        assert applied > 0, f"{sink.target} sink applied nothing"
        assert noisy == [], f"{sink.target} sink: {noisy} (all conflicts: {rows})"
