"""The Faust app (streams/app.py): batches as the intake hands them over, the runner's order.

No Kafka: the batch handler gets dict-backed state and a publisher that records what it
is given; raw messages are delivered to the input topics as Faust's conductor delivers them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP, Message
from prometheus_client import generate_latest

import streams.app as streams_app
from schemas.errors import PermanentError, RetriableError
from streams import dlq
from streams.app import (
    BatchClock,
    KafkaPublisher,
    StreamRunner,
    StreamsApp,
    build,
    control_inbound,
    raw_inbound,
    tune_collector,
)
from streams.intake import InputTopics
from streams.outcome import H_KIND, KIND_TICK, Kind, Outbound
from streams.producer import Record
from streams.settings import StreamsSettings
from streams.state import DictState
from tests.unit.test_processor import FLOWS, SERDE, Harness, quant
from tests.unit.test_transform import PARTNER, PRODUCT, PRODUCT_PRODUCT, RES_PARTNER, STOCK_QUANT


class Recorder:
    """A publisher that records batches; fails ``failures`` times first."""

    def __init__(self, failures: Sequence[Exception] = ()) -> None:
        self.batches: list[list[Outbound]] = []
        self.failures = list(failures)

    async def publish(self, messages: Sequence[Outbound]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append(list(messages))

    @property
    def sent(self) -> list[Outbound]:
        return [m for batch in self.batches for m in batch]


def make(tmp_path: Path, publisher: Recorder, **settings: Any) -> StreamsApp:
    return build(
        StreamsSettings(
            app_id="erpcrm-streams-test",
            data_dir=tmp_path,
            store="memory://",
            retry_initial_seconds=0.01,
            **settings,
        ),
        serde=SERDE,
        flows=FLOWS,
        state=DictState(),
        publisher=publisher,
        read_recent_outputs=False,
    )


def raw_partner(lsn: int, **changes: Any) -> tuple[bytes | None, bytes | None]:
    message = Harness().change(RES_PARTNER, "u", after=PARTNER | changes, lsn=lsn)
    return message.key, message.value


def origin(topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The headers ``erpcrm dlq replay`` gives a raw message put back into the control topic."""
    return [
        (dlq.H_ORIGIN_TOPIC, topic.encode()),
        (dlq.H_ORIGIN_PARTITION, str(partition).encode()),
        (dlq.H_ORIGIN_OFFSET, str(offset).encode()),
    ]


async def put_raw(
    streams: StreamsApp,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    *,
    partition: int = 0,
    offset: int = 0,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Deliver a message read from ``topic`` as Faust's conductor does, then process it."""
    message = Message(topic, partition, offset, time.time(), 0, headers, key, value, b"")
    inputs = streams.inputs
    await inputs.put(await inputs.decode(message))
    batch = inputs.buffer.take_nowait(streams.settings.batch_size)
    assert batch == [message]  # the message itself, not an event made of it
    await streams.process_batch(batch)


def test_the_intake_publishes_canonical_events_then_commits(tmp_path: Path) -> None:
    publisher = Recorder()
    streams = make(tmp_path, publisher)
    key, value = raw_partner(100)

    async def scenario() -> None:
        await put_raw(streams, "erp.public.res_partner", key, value, partition=1, offset=42)
        # read again (a restart before the offset was committed)
        await put_raw(streams, "erp.public.res_partner", key, value, partition=1, offset=42)

    asyncio.run(scenario())
    message, logged = publisher.sent  # the replay was deduped
    assert (message.topic, message.key) == ("canonical.customer", b"erp:42")
    assert (logged.topic, logged.key) == ("quality.defects", b"erp:42")  # its fixes
    assert message.value is not None
    record = SERDE.decode(message.value)
    assert (record["phone"], record["country_code"]) == ("+49306610918", "DE")
    state = streams.state
    assert isinstance(state, DictState)
    assert state.get("dedupe", "customer|erp:42")[0] == 100
    metrics = generate_latest(streams.registry).decode()
    assert 'erpcrm_streams_events_out_total{flow="erp_res_partner__customer"} 1.0' in metrics
    assert 'erpcrm_streams_deduped_total{flow="erp_res_partner__customer"} 1.0' in metrics
    assert 'erpcrm_streams_consumed_total{kind="change"} 2.0' in metrics


def test_the_intake_dead_letters_with_the_raw_origin(tmp_path: Path) -> None:
    publisher = Recorder()
    streams = make(tmp_path, publisher)
    key, value = raw_partner(100, name=" ")

    async def scenario() -> None:
        await put_raw(streams, "erp.public.res_partner", key, value, partition=2, offset=7)

    asyncio.run(scenario())
    letter, logged = publisher.sent
    headers = dlq.text_headers(letter.headers)
    assert letter.topic == "dlq.streams"
    assert (letter.key, letter.value) == (key, value)
    assert (headers[dlq.H_ORIGIN_PARTITION], headers[dlq.H_ORIGIN_OFFSET]) == ("2", "7")
    assert headers[dlq.H_ERROR_REASON] == "missing_required"
    assert logged.topic == "quality.defects"
    metrics = generate_latest(streams.registry).decode()
    assert (
        'erpcrm_streams_quality_defects_total{entity="customer",field="name",'
        'outcome="dead_lettered",rule="missing_required"} 1.0'
    ) in metrics


def test_a_replayed_dead_letter_is_processed_as_the_raw_message_at_its_origin(
    tmp_path: Path,
) -> None:
    publisher = Recorder()
    streams = make(tmp_path, publisher)
    key, value = raw_partner(100, name=" ")
    replay = [*origin("erp.public.res_partner", 2, 7), (dlq.H_REPLAY_COUNT, b"1")]

    async def scenario() -> None:
        await put_raw(streams, streams.settings.control_topic, key, value, headers=replay)

    asyncio.run(scenario())
    letter = publisher.sent[0]
    headers = dlq.text_headers(letter.headers)
    assert (letter.topic, headers[dlq.H_REPLAY_COUNT]) == ("dlq.streams", "1")
    assert (headers[dlq.H_ORIGIN_TOPIC], headers[dlq.H_ORIGIN_OFFSET]) == (
        "erp.public.res_partner",
        "7",
    )
    metrics = generate_latest(streams.registry).decode()
    assert 'erpcrm_streams_consumed_total{kind="replay"} 1.0' in metrics


def test_raw_messages_keep_their_own_position_and_take_the_read_time() -> None:
    message = types.SimpleNamespace(
        topic="crm.public.accounts",
        partition=1,
        offset=3,
        timestamp=1_000.0,  # the capture's time: not the processor's clock
        key=b"k",
        value=None,
        headers=[],
    )
    inbound = raw_inbound(message, 1_717_236_000_500)
    assert (inbound.origin, inbound.timestamp_ms) == (
        dlq.Origin("crm.public.accounts", 1, 3),
        1_717_236_000_500,
    )
    assert (inbound.key, inbound.value, inbound.kind, inbound.replays) == (
        b"k",
        None,
        Kind.CHANGE,
        0,
    )


def test_control_messages_are_ticks_or_raw_messages_from_their_origin() -> None:
    message = types.SimpleNamespace(
        topic="erpcrm-streams-control",
        partition=0,
        offset=9,
        timestamp=1_717_236_000.5,
        key=b"k",
        value=b"v",
        headers=origin("crm.public.accounts", 1, 3),
    )
    inbound = control_inbound(message, 1_717_236_001_000)
    assert (inbound.origin, inbound.timestamp_ms) == (
        dlq.Origin("crm.public.accounts", 1, 3),
        1_717_236_001_000,
    )
    tick = control_inbound(
        message.__class__(**(vars(message) | {"headers": [(H_KIND, KIND_TICK)]})), 0
    )
    assert (tick.kind, tick.origin.offset) == (Kind.TICK, 9)
    assert inbound.replays == 0
    replayed = control_inbound(
        message.__class__(
            **(vars(message) | {"headers": [*message.headers, (dlq.H_REPLAY_COUNT, b"2")]})
        ),
        0,
    )
    assert (replayed.origin, replayed.replays) == (inbound.origin, 2)
    unnamed = control_inbound(message.__class__(**(vars(message) | {"headers": []})), 0)
    assert unnamed.origin == dlq.Origin("erpcrm-streams-control", 0, 9)


def test_the_batch_clock_never_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = BatchClock()
    times = iter([100.0, 99.0, 101.5])
    monkeypatch.setattr("streams.app.time.time", lambda: next(times))
    assert [clock.now_ms(), clock.now_ms(), clock.now_ms()] == [100_000, 100_000, 101_500]


def runner(publisher: Recorder, recent: set[str] | None = None) -> tuple[StreamRunner, Harness]:
    harness = Harness()
    streams = build(
        StreamsSettings(app_id="erpcrm-streams-test", store="memory://"),
        serde=SERDE,
        flows=FLOWS,
        state=harness.state,
        publisher=publisher,
        read_recent_outputs=False,
    )
    run = streams.runner
    run.processor = harness.processor
    run.retry_initial_s = 0.001
    if recent is not None:

        async def known() -> set[str]:
            return recent

        run.recent_loader = known
    return run, harness


def test_transient_publish_failures_are_retried_and_state_waits_for_the_acks() -> None:
    publisher = Recorder([RetriableError("broker away"), TimeoutError()])
    run, harness = runner(publisher)
    message = harness.change(RES_PARTNER, "u", after=PARTNER, lsn=100)
    asyncio.run(run.handle(message))
    assert [m.topic for m in publisher.sent] == ["canonical.customer", "quality.defects"]
    assert harness.state.get("dedupe", "customer|erp:42")[0] == 100
    assert run.metrics.retries.labels("publish")._value.get() == 2


def test_a_permanent_publish_failure_leaves_state_untouched() -> None:
    publisher = Recorder([PermanentError("topic authorization failed")])
    run, harness = runner(publisher)
    message = harness.change(RES_PARTNER, "u", after=PARTNER, lsn=100)
    with pytest.raises(PermanentError):
        asyncio.run(run.handle(message))
    assert harness.state.values("dedupe") == {}


def test_outputs_seen_on_the_topics_after_a_crash_are_not_published_again() -> None:
    harness = Harness()
    message = harness.change(RES_PARTNER, "u", after=PARTNER, lsn=100)
    already, logged = harness.processor.process(message, harness.state).outbound
    publisher = Recorder()
    run, fresh = runner(publisher, recent={already.output_id, logged.output_id})
    asyncio.run(run.handle(message))
    assert publisher.sent == []
    # the state still learns the event, so the next replay is dropped by dedupe alone
    assert fresh.state.get("dedupe", "customer|erp:42")[0] == 100
    assert run.metrics.deduped.labels("erp_res_partner__customer")._value.get() == 1
    # the log entry's defects were counted when it was published, not again
    defects = run.metrics.quality_defects.labels("customer", "phone", "phone", "fixed")
    assert defects._value.get() == 0


def test_the_module_builds_its_app_lazily_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ERPCRM_STREAMS_APP_ID", "lazy-app")
    monkeypatch.setenv("ERPCRM_STREAMS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ERPCRM_STREAMS_WEB_PORT", "39999")
    monkeypatch.setattr(streams_app, "_app", None)
    app = streams_app.app
    assert app is streams_app.app
    assert (app.conf.id, app.conf.web_port, app.conf.web_bind) == ("lazy-app", 39999, "127.0.0.1")
    assert str(app.conf.processing_guarantee.value) == "at_least_once"
    # no agent: the raw and control topics go to the batch intake through the conductor
    assert list(app.agents.values()) == []
    (inputs,) = [topic for topic in app.topics if isinstance(topic, InputTopics)]
    assert "erp.public.res_partner" in inputs.topics


def test_the_web_views_serve_metrics_and_inventory(tmp_path: Path) -> None:
    streams = make(tmp_path, Recorder())
    h = Harness()
    product = PRODUCT | {"id": 7, "default_code": "SKU-00007"}
    for message in (
        h.change(PRODUCT_PRODUCT, "r", after=product, lsn=10),
        h.change(STOCK_QUANT, "u", after=quant(1, 7, 1, "10", "2"), lsn=100),
    ):
        state = streams.state
        assert isinstance(state, DictState)
        outcome = streams.processor.process(message, state)
        streams.processor.commit(outcome, state)
        streams.metrics.record(outcome.tally)
    views = streams.app.web.views

    async def get(path: str, **match: str) -> Any:
        return await views[path].get(None, **match)

    one = asyncio.run(get("/inventory/{sku}", sku="sku-00007"))
    assert one.status == 200
    item = json.loads(one.body)
    assert (item["sku"], item["on_hand"], item["available"], item["oversold"]) == (
        "SKU-00007",
        "10.000",
        "8.000",
        False,
    )
    assert asyncio.run(get("/inventory/{sku}", sku="SKU-404")).status == 404
    listing = json.loads(asyncio.run(get("/inventory")).body)
    assert [i["sku"] for i in listing["items"]] == ["SKU-00007"]
    metrics = asyncio.run(get("/metrics"))
    assert metrics.content_type == "text/plain"
    assert b'erpcrm_streams_events_out_total{flow="erp_stock_quant__inventory"} 1.0' in metrics.body


class Changelogs:
    """Records what is sent to the tables' changelogs; acknowledges with offsets 0, 1, ..."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    async def send_all(self, records: Sequence[Record]) -> list[int]:
        offsets = []
        for record in records:
            self.sent.append((record.topic, record.key, record.value, record.partition))
            offsets.append(sum(1 for sent in self.sent if sent[0] == record.topic) - 1)
        return offsets


def test_the_intake_keeps_its_state_in_rocksdb_tables(tmp_path: Path) -> None:
    publisher = Recorder()
    changelogs = Changelogs()
    streams = build(
        StreamsSettings(app_id="erpcrm-streams-rocks", data_dir=tmp_path, store="rocksdb://"),
        serde=SERDE,
        flows=FLOWS,
        publisher=publisher,
        changelog=changelogs,
        read_recent_outputs=False,
    )
    key, value = raw_partner(100)

    async def scenario() -> None:
        for _ in range(2):
            await put_raw(streams, "erp.public.res_partner", key, value, offset=5)

    asyncio.run(scenario())
    assert [m.topic for m in publisher.sent] == ["canonical.customer", "quality.defects"]
    assert streams.state.get("dedupe", "customer|erp:42")[0] == 100
    assert streams.state.get("reference", "cidx|erp|42")["vat"] == "DE136695976"
    assert list((tmp_path / "erpcrm-streams-rocks").rglob("*.db"))
    # every write went to its changelog first (partition 0), once: the replay wrote nothing
    dedupe = "erpcrm-streams-rocks-dedupe-changelog"
    written = [(key, partition) for topic, key, _, partition in changelogs.sent if topic == dedupe]
    assert written == [(b'"customer|erp:42"', 0)]
    store = streams.tables["dedupe"].data
    assert store.persisted_offset(TP(dedupe, 0)) == 0


def test_the_kafka_publisher_sends_nothing_before_the_output_topics_exist() -> None:
    sent: list[tuple[str, Any]] = []

    class Sender:
        async def send_all(self, records: Sequence[Record]) -> list[int]:
            sent.extend((record.topic, list(record.headers)) for record in records)
            return list(range(len(records)))

    publisher = KafkaPublisher(Sender(), "erpcrm-streams-test")
    message = Outbound("canonical.customer", b"erp:42", b"v", (), "event-1")

    async def scenario() -> None:
        publishing = asyncio.create_task(publisher.publish([message]))
        await asyncio.sleep(0.05)
        assert sent == []
        assert not publishing.done()
        publisher.open()  # the output topics were declared
        await asyncio.wait_for(publishing, 5)

    asyncio.run(scenario())
    assert sent == [("canonical.customer", [(dlq.H_APP_ID, b"erpcrm-streams-test")])]


@pytest.fixture
def collector() -> Any:
    """Python's garbage collector as it was, restored after the test."""
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


@pytest.mark.usefixtures("collector")
def test_the_worker_collects_young_objects_less_often_and_freezes_what_start_up_made() -> None:
    made_at_start = [{"held": "for the process"}]
    _, older, oldest = gc.get_threshold()
    tune_collector(50_000)
    assert gc.get_threshold() == (50_000, older, oldest)
    assert gc.get_freeze_count() > 0
    assert not any(obj is made_at_start for obj in gc.get_objects())


@pytest.mark.usefixtures("collector")
def test_a_zero_threshold_keeps_pythons_own() -> None:
    before = gc.get_threshold()
    tune_collector(0)
    assert gc.get_threshold() == before
