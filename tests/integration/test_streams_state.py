"""The streams worker's local table state after Kafka lost its changelogs.

Reported: ``make demo``, ``make clean`` (Kafka's data gone, ``.local/streams`` kept),
``make demo``: the worker stopped at start with Faust's ``ConsistencyError``, the
persisted offset of a local table store being beyond its new, empty changelog ("3699 >
-1"). Here a worker (own app id, data directory and web port, as in ``test_streams``)
processes both snapshots and a change, so the tables it wrote hold persisted offsets;
it is stopped, its changelog topics are deleted (what a reset cluster looks like at
start) or deleted and recreated empty (what Faust sees once it has declared them), and
it is started again on the same data directory. It must come up, say why it drops its
local state, keep processing, and leave stores consistent with the changelogs. (Without
the start-up check of :mod:`streams.stores`, both cases stop the worker with that
``ConsistencyError``.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql

from schemas.settings import KafkaSettings
from streams.state import TABLES
from streams.stores import LocalStore, changelog_highwaters, find_local_stores, stores_ahead
from tests.integration.cdc_fixtures import Capture, execute, wait_for
from tests.integration.test_streams import (
    CRM_TABLES,
    ERP_TABLES,
    OutputReader,
    Pipeline,
    StreamsProcess,
    wait_snapshots_processed,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WARNING = "local store is ahead of its changelog"
# Products only: they go through the tables, and the snapshots are short.
TABLES_OF = {"erp": ("product_product",), "crm": ("aos_products",)}


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """Two captures and a streams worker that has processed both snapshots."""
    log_dir = tmp_path_factory.mktemp("streams-state")
    erp = Capture(stack_env, "erp", TABLES_OF["erp"], log_dir)
    crm = Capture(stack_env, "crm", TABLES_OF["crm"], log_dir)
    streams = StreamsProcess(stack_env, {"erp": erp.prefix, "crm": crm.prefix}, log_dir)
    reader = OutputReader(stack_env, streams.app_id)
    try:
        rows = sum(
            int(execute(stack_env[f"{system.upper()}_DSN"], _count(table))[0][0])
            for system, tables in TABLES_OF.items()
            for table in tables
        )
        erp.start()
        crm.start()
        erp.wait_streaming(180)
        crm.wait_streaming(180)
        _create_raw_topics(stack_env, {"erp": erp.prefix, "crm": crm.prefix})
        streams.start().wait_ready()

        wait_snapshots_processed(streams, rows, 180)
        yield Pipeline(stack_env, erp, crm, streams, reader)
    finally:
        streams.cleanup()
        reader.close()
        erp.cleanup()
        crm.cleanup()


def _create_raw_topics(env: dict[str, str], prefixes: dict[str, str]) -> None:
    """Create the raw topics the captures do not write, as a capture of every table would.

    The worker subscribes to all of them; were they missing, the broker would create them
    later, on a metadata request, and the worker rebalance in the middle of the test.
    """
    admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP"]})
    tables = {"erp": ERP_TABLES, "crm": CRM_TABLES}
    new = [
        NewTopic(f"{prefixes[system]}.public.{table}", num_partitions=3)
        for system, names in tables.items()
        for table in names
        if table not in TABLES_OF[system]
    ]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(timeout=30)


def _count(table: str) -> sql.Composable:
    return sql.SQL("select count(*) from {}").format(sql.Identifier("public", table))


def _changelogs(streams: StreamsProcess) -> dict[str, str]:
    return {table: f"{streams.app_id}-{table}-changelog" for table in TABLES}


def _stores(streams: StreamsProcess) -> list[LocalStore]:
    """The worker's local table stores as they are on disk (the worker must be stopped)."""
    tabledir = streams.data_dir / streams.app_id / "v1" / "tables"
    return find_local_stores(tabledir, _changelogs(streams))


def _kafka(streams: StreamsProcess) -> KafkaSettings:
    return KafkaSettings(bootstrap=streams.stack_env["KAFKA_BOOTSTRAP"])


def _lose_changelogs(streams: StreamsProcess, *, recreate: bool) -> None:
    """Delete the worker's changelog topics; with ``recreate``, create them again, empty."""
    admin = AdminClient({"bootstrap.servers": streams.stack_env["KAFKA_BOOTSTRAP"]})
    topics = sorted(_changelogs(streams).values())
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        future.result(timeout=30)

    def gone() -> bool:
        return not set(topics) & set(admin.list_topics(timeout=10).topics)

    wait_for(gone, 60, "the changelog topics to be deleted", interval=0.5)
    if not recreate:
        return
    # As Faust declares a changelog: one partition (the tables have one), compacted.
    new = [NewTopic(t, num_partitions=1, config={"cleanup.policy": "compact"}) for t in topics]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(timeout=30)
    wait_for(
        lambda: (
            changelog_highwaters(_kafka(streams), topics, timeout_s=10)
            == {(t, 0): 0 for t in topics}
        ),
        60,
        "the recreated changelogs to have leaders",
        interval=0.5,
    )


def _process_a_product(pipeline: Pipeline) -> None:
    """A new ERP product comes out as a canonical product event of this worker."""
    sku = f"STATE-{uuid.uuid4().hex[:8].upper()}"
    (product,) = pipeline.erp_rows(
        "insert into product_product (default_code, name) values (%s, %s) returning id",
        (sku, f"State product {sku}"),
    )[0]
    key = f"erp:{product}"

    def published() -> bool:
        if not pipeline.streams.running:
            raise AssertionError(f"streams exited:\n{pipeline.streams.tail()}")
        return any(
            o.value and o.value["sku"] == sku for o in pipeline.reader.of("canonical.product", key)
        )

    pipeline.reader.wait(published, 90, f"canonical.product {key}")


@pytest.mark.parametrize(
    "recreate", [False, True], ids=["changelogs-deleted", "changelogs-recreated-empty"]
)
def test_a_worker_whose_changelogs_were_lost_rebuilds_its_tables(
    pipeline: Pipeline, recreate: bool
) -> None:
    streams = pipeline.streams
    if not streams.running:
        streams.start().wait_ready()
    _process_a_product(pipeline)
    streams.stop()  # a clean stop commits: each written table records its changelog offset
    before = _stores(streams)
    assert {s.table for s in before} == set(TABLES)
    recorded = {s.changelog for s in before if s.persisted_offset is not None}
    assert recorded, before  # the tables the products went through
    kafka = _kafka(streams)
    topics = sorted(_changelogs(streams).values())
    assert stores_ahead(before, changelog_highwaters(kafka, topics)) == []

    _lose_changelogs(streams, recreate=recreate)
    # Deleted: every store is ahead; recreated empty: those that recorded an offset.
    expected = recorded if recreate else set(topics)
    ahead = stores_ahead(before, changelog_highwaters(kafka, topics))
    assert {a.store.changelog for a in ahead} == expected

    streams.start().wait_ready()
    _process_a_product(pipeline)  # it keeps processing, on rebuilt tables
    assert streams.running, streams.tail()
    log = Path(streams.log_path).read_text(errors="replace")
    warnings = [line for line in log.splitlines() if WARNING in line]
    assert warnings, log[-4000:]
    assert all(" WARNING streams.stores: " in w for w in warnings), warnings
    assert {c for c in topics if any(f"{c}[0]" in w for w in warnings)} == expected, warnings
    assert "ConsistencyError" not in log

    streams.stop()
    after = _stores(streams)
    assert {s.table for s in after} == set(TABLES)
    assert stores_ahead(after, changelog_highwaters(kafka, topics)) == []
    streams.start().wait_ready()
