"""How far the sink runner decodes a message as it reads it (no Kafka, no database).

Whole while batches apply most of their events (so the decoding overlaps the previous
batch's write); after a batch of replays, the leading fields only (the sink then reads
the rest only of events newer than the applied version). The target's own events are
always read whole; a rest that does not decode is left to the sink, which dead-letters
it with its batch.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from typing import Any, overload

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
    name: str = "Alpha",
    hashed: str | None = None,
) -> Any:
    """A message as the runner reads it (duck-typed as a Kafka message).

    ``hashed``: a payload hash header carrying that digest for this message's value.
    """
    schema = canonical_schema("customer")
    record: dict[str, Any] = {f["name"]: f.get("default") for f in schema["fields"]}
    record.update(
        event_id=f"e{version}",
        source_system=source,
        source_lsn=version,
        source_ts_ms=1_700_000_000_000,
        op="upsert",
        version=version,
        name=name,
    )
    value = serde.encode(f"{TOPIC}-value", schema, record) + tail
    if hashed is not None:
        headers = [*(headers or []), payload_hash_header(hashed, value)]
    return _Message(value, version, headers)


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
    runner._add(batch, _message(serde, "erp", 1, hashed=digest))
    runner._add(batch, _message(serde, "erp", 2))  # published without one
    # Not a digest: the sink hashes the payload itself, as for one without the header.
    runner._add(batch, _message(serde, "erp", 3, headers=[(PAYLOAD_HASH_HEADER, b"x" * 73)]))
    [(_, bound)] = _message(serde, "erp", 4, hashed=digest).headers()
    runner._add(batch, _message(serde, "erp", 4, headers=[(PAYLOAD_HASH_HEADER, bound.upper())]))
    # Produced again with another name but the headers kept: the hash is not for it.
    kept = _message(serde, "erp", 5, hashed=digest).headers()
    edited = _message(serde, "erp", 5, name="Beta", headers=kept)
    assert edited.value() != _message(serde, "erp", 5).value()
    runner._add(batch, edited)
    assert [e.digest() for e in batch] == [digest, None, None, None, None]


def test_carried_digest_reads_pairs_and_mappings_bound_to_the_value() -> None:
    digest = hashlib.sha256(b"payload").hexdigest()
    value = b"\x00\x00\x00\x00\x01avro"
    name, header = payload_hash_header(digest, value)
    assert header == f"{digest}:{zlib.crc32(value):08x}".encode()
    assert carried_digest([("erpcrm.output_id", b"e1"), (name, header)], value) == digest
    assert carried_digest(((name, header),), value) == digest
    assert carried_digest({name: header, "erpcrm.output_id": b"e1"}, value) == digest
    assert carried_digest({name: header.decode()}, value) == digest
    assert carried_digest(_Pairs([(name, header)]), value) == digest  # any sequence
    assert carried_digest([("erpcrm.output_id", b"e1")], value) is None
    assert carried_digest([(name, None)], value) is None
    assert carried_digest([(name, header[:-1])], value) is None
    assert carried_digest([(name, digest.encode())], value) is None  # not bound: untrusted
    assert carried_digest([(name, header.replace(b":", b";"))], value) is None
    assert carried_digest([(name, header)], value + b"!") is None  # another value
    assert carried_digest([(name, header)], None) is None
    assert carried_digest(None, value) is None


class _Pairs(Sequence[tuple[str, bytes]]):
    """Headers as a sequence that is neither a list nor a tuple."""

    def __init__(self, pairs: list[tuple[str, bytes]]) -> None:
        self._pairs = pairs

    @overload
    def __getitem__(self, index: int) -> tuple[str, bytes]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, bytes]]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self._pairs[index]

    def __len__(self) -> int:
        return len(self._pairs)
