"""``processing_guarantee = exactly_once`` is refused at start, never run half-working.

Run against the stack (a worker in ``exactly_once`` mode under the workload, SIGKILLed
and started again), Faust's transactional mode did not keep the worker's state: its
recovery asks for the changelogs' last stable offset before reading anything and gets
none, so a worker with its local store stopped with a ``ConsistencyError`` on restart,
and one without it (a takeover on another host) skipped the restore and went on with
empty tables; a clean stop then failed committing offsets outside a transaction. The
worker's outputs and changelogs go through its own producer, outside Faust's
transactions, so the mode offered nothing over ``at_least_once`` either. The worker now
stops at start with a clear error, before it joins its group or writes anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.cdc_fixtures import unique_name
from tests.integration.test_streams import StreamsProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_exactly_once_stops_the_worker_at_start_with_a_clear_error(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    prefixes = {"erp": unique_name("erp"), "crm": unique_name("crm")}  # topics nobody writes
    streams = StreamsProcess(stack_env, prefixes, tmp_path)
    try:
        streams.start({"ERPCRM_STREAMS_PROCESSING_GUARANTEE": "exactly_once"})
        code = streams.exit_code(60, "the worker runs in exactly_once mode")
        output = streams.log_path.read_text(errors="replace")
        assert code == 2, output
        assert "processing_guarantee" in output
        assert "exactly_once is not supported" in " ".join(output.split())
        assert "Traceback" not in output
        admin = AdminClient({"bootstrap.servers": stack_env["KAFKA_BOOTSTRAP"]})
        topics = admin.list_topics(timeout=10).topics
        assert not [t for t in topics if t.startswith(f"{streams.app_id}-")]
    finally:
        streams.cleanup()
