"""How far the sink runner decodes a message as it reads it (no Kafka, no database).

Whole while batches apply most of their events (so the decoding overlaps the previous
batch's write); after a batch of replays, the leading fields only (the sink then reads
the rest only of events newer than the applied version). The target's own events are
always read whole; a rest that does not decode is left to the sink, which dead-letters
it with its batch.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from schemas.canonical import METADATA_FIELDS, canonical_schema
from schemas.errors import DecodeError
from schemas.payload import PAYLOAD_HASH_HEADER, carried_digest, payload_hash_header
from schemas.serde import AvroSerde, LocalSchemaRegistry
from sinks.base import WriteResult
from sinks.batch import SinkBatch
from sinks.metrics import SinkMetrics
from sinks.postgres import PostgresUpsertSink
from sinks.runner import SinkRunner
from sinks.settings import SinkSettings

TOPIC = "canonical.customer"


class _Message:
    """What the runner reads of a Kafka message."""

    def __init__(
        self, value: bytes, offset: int, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        self._value, self._offset, self._headers = value, offset, headers

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"erp:1"

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


def _runner() -> tuple[SinkRunner, AvroSerde]:
    serde = AvroSerde(LocalSchemaRegistry())
    settings = SinkSettings(target="crm", dsn=SecretStr("postgresql://nowhere/x"))
    sink = PostgresUpsertSink(target="crm", dsn="", tables={}, ownership={}, topics=(TOPIC,))
    metrics = SinkMetrics.create(CollectorRegistry())
    return SinkRunner(settings, sink, serde, metrics, (TOPIC,)), serde


def _message(
    serde: AvroSerde,
    source: str,
    version: int,
    *,
    tail: bytes = b"",
    headers: list[tuple[str, bytes]] | None = None,
) -> Any:
    """A message as the runner reads it (duck-typed as a Kafka message)."""
    schema = canonical_schema("customer")
    record: dict[str, Any] = {f["name"]: f.get("default") for f in schema["fields"]}
    record.update(
        event_id=f"e{version}",
        source_system=source,
        source_lsn=version,
        source_ts_ms=1_700_000_000_000,
        op="upsert",
        version=version,
        name="Alpha",
    )
    return _Message(serde.encode(f"{TOPIC}-value", schema, record) + tail, version, headers)


def test_whole_while_batches_apply_leading_fields_after_replays() -> None:
    runner, serde = _runner()
    fresh = SinkBatch()
    runner._add(fresh, _message(serde, "erp", 1))
    [event] = list(fresh)
    assert event.record["name"] == "Alpha"  # read whole at once
    runner._account(fresh, WriteResult(applied=(event,)), 0.01)

    runner._account(fresh, WriteResult(stale=(event,)), 0.01)  # a batch of replays
    replayed = SinkBatch()
    runner._add(replayed, _message(serde, "erp", 2))
    runner._add(replayed, _message(serde, "crm", 3))  # the target's own: always whole
    theirs, own = list(replayed)
    assert set(theirs.record) <= set(METADATA_FIELDS)
    assert theirs.complete()["name"] == "Alpha"
    assert own.record["name"] == "Alpha"


def test_a_rest_that_does_not_decode_is_left_to_the_sink() -> None:
    runner, serde = _runner()
    replays = SinkBatch()
    runner._add(replays, _message(serde, "erp", 1))
    runner._account(replays, WriteResult(stale=tuple(replays)), 0.01)
    batch = SinkBatch()
    runner._add(batch, _message(serde, "erp", 1, tail=b"\x00"))
    [event] = list(batch)  # in the batch (the sink dead-letters it), not dead-lettered here
    assert event.version == 1
    assert runner.stats.dead_lettered == 0
    with pytest.raises(DecodeError):
        event.complete()


def test_the_payload_hash_an_event_carries_is_kept_with_it() -> None:
    runner, serde = _runner()
    digest = hashlib.sha256(b"payload").hexdigest()
    batch = SinkBatch()
    runner._add(batch, _message(serde, "erp", 1, headers=[payload_hash_header(digest)]))
    runner._add(batch, _message(serde, "erp", 2))  # published without one
    # Not a digest: the sink hashes the payload itself, as for one without the header.
    runner._add(batch, _message(serde, "erp", 3, headers=[(PAYLOAD_HASH_HEADER, b"x" * 64)]))
    runner._add(
        batch, _message(serde, "erp", 4, headers=[(PAYLOAD_HASH_HEADER, digest.upper().encode())])
    )
    assert [e.digest() for e in batch] == [digest, None, None, None]


def test_carried_digest_reads_pairs_and_mappings_and_ignores_other_headers() -> None:
    digest = hashlib.sha256(b"payload").hexdigest()
    name, value = payload_hash_header(digest)
    assert carried_digest([("erpcrm.output_id", b"e1"), (name, value)]) == digest
    assert carried_digest({name: value, "erpcrm.output_id": b"e1"}) == digest
    assert carried_digest({name: digest}) == digest
    assert carried_digest([("erpcrm.output_id", b"e1")]) is None
    assert carried_digest([(name, None)]) is None
    assert carried_digest([(name, value[:-1])]) is None
    assert carried_digest(None) is None
