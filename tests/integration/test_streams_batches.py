"""The streams worker's batches against the real stack: a SIGKILL in the middle of a backlog.

A backlog makes the worker take full batches (many messages decided, published and
acknowledged together), so the kill lands between a batch's publish and its commit as
often as anywhere else. After the restart: nothing lost, no event id twice, and each
entity's versions increasing in its partition.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import psycopg
import pytest

from tests.integration.test_streams import (  # noqa: F401 (the module's fixture)
    Pipeline,
    _tag,
    new_customer,
    pipeline,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

UPDATES = 2000
CUSTOMERS = 10


def test_a_worker_killed_while_draining_a_backlog_loses_and_repeats_nothing(
    pipeline: Pipeline,  # noqa: F811
) -> None:
    tag = _tag()
    partners = [
        new_customer(pipeline, email=f"backlog-{tag.lower()}-{i}@example.com")
        for i in range(CUSTOMERS)
    ]
    for partner in partners:
        pipeline.reader.event("customer", f"erp:{partner}")
    keys = {f"erp:{p}" for p in partners}
    cities = [f"Backlog {tag} {i}" for i in range(UPDATES)]

    pipeline.streams.kill()  # the backlog builds up while no worker runs
    with psycopg.connect(pipeline.env["ERP_DSN"], autocommit=True) as conn:
        for i, city in enumerate(cities):
            conn.execute(
                "update res_partner set city = %s where id = %s", (city, partners[i % CUSTOMERS])
            )

    def seen_cities() -> set[str]:
        return {
            o.value["city"]
            for o in pipeline.reader.of("canonical.customer")
            if o.value is not None and o.entity_key in keys and o.value["city"] in cities
        }

    pipeline.streams.start().wait_ready()
    pipeline.reader.wait(lambda: len(seen_cities()) >= UPDATES // 10, 180, "the backlog to flow")
    pipeline.streams.kill()  # SIGKILL, mid-backlog
    pipeline.reader.poll()
    assert len(seen_cities()) < UPDATES, "the backlog drained before the kill; make it longer"
    pipeline.streams.start().wait_ready()
    pipeline.reader.wait(lambda: len(seen_cities()) == UPDATES, 300, "every update after restart")
    time.sleep(5)  # let late duplicates, if any, arrive
    pipeline.reader.poll()

    ours = [o for o in pipeline.reader.of("canonical.customer") if o.entity_key in keys]
    per_city = Counter(o.value["city"] for o in ours if o.value is not None)
    assert [c for c in cities if per_city[c] != 1] == []
    every_id = Counter(
        o.value["event_id"]
        for o in pipeline.reader.outputs
        if o.value is not None and o.topic != "dlq.streams"
    )
    assert [event for event, n in every_id.items() if n > 1] == []
    versions: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for o in ours:
        if o.value is not None:
            versions[o.entity_key].append((o.offset, int(o.value["version"])))
    for key, seen in versions.items():
        in_partition_order = [version for _, version in sorted(seen)]
        assert in_partition_order == sorted(set(in_partition_order)), key
