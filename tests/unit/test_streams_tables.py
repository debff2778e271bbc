"""The tables' key encoding (fast, as Faust's store encodes keys) and the text cache."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import faust
import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.producer import Record
from streams.state import TextWrite
from streams.tables import TEXT_CACHE_BYTES, FaustState, _key_encoder

_APP = faust.App("keys-test", broker="kafka://127.0.0.1:1", store="memory://")
_TABLE = _APP.Table("keys", key_type=str, partitions=1)
_STORE_ENCODING = _TABLE.data._encode_key  # type: ignore[attr-defined]


def test_a_faust_json_key_store_gets_a_fast_encoder() -> None:
    assert _key_encoder(_STORE_ENCODING) is not _STORE_ENCODING


@given(st.text())
def test_the_fast_key_encoder_gives_the_stores_bytes(key: str) -> None:
    try:
        expected = _STORE_ENCODING(key)
    except Exception:  # a key the store refuses (a lone surrogate) is never written
        return
    assert _key_encoder(_STORE_ENCODING)(key) == expected


def test_a_store_encoding_keys_otherwise_keeps_its_own() -> None:
    def reversed_utf8(key: str) -> bytes:
        return key[::-1].encode("utf-8")

    assert _key_encoder(reversed_utf8) is reversed_utf8


# ---------------------------------------------------------------- the text cache


class _Db:
    """One RocksDB partition as FaustState reads it: key bytes -> value bytes; reads counted."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.reads = 0

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return self.data.get(key)


class _Store:
    def __init__(self) -> None:
        self.db = _Db()

    def _encode_key(self, key: str) -> bytes:
        return orjson.dumps(key)

    def _db_for_partition(self, partition: int) -> _Db:
        return self.db


class _Changelog:
    def get_topic_name(self) -> str:
        return "app-state-changelog"


class _Table:
    """What FaustState uses of a Faust table over a RocksDB store."""

    def __init__(self) -> None:
        self.data = _Store()
        self.changelog_topic = _Changelog()

    def apply_changelog_batch(self, records: list[Any]) -> None:
        for record in records:
            message = record.message
            if message.value is None:
                self.data.db.data.pop(message.key, None)
            else:
                self.data.db.data[message.key] = message.value


class _Sender:
    def __init__(self) -> None:
        self.sent: list[Record] = []

    async def send_all(self, records: Sequence[Record]) -> list[int]:
        self.sent.extend(records)
        return list(range(len(self.sent) - len(records), len(self.sent)))


def _state(cache_bytes: int = TEXT_CACHE_BYTES) -> tuple[FaustState, _Table, _Sender]:
    table, sender = _Table(), _Sender()
    state = FaustState({"t": table}, sender, shared_values=False, cache_bytes=cache_bytes)
    return state, table, sender


def test_committed_and_read_text_is_served_from_memory() -> None:
    state, table, sender = _state()
    table.data.db.data[orjson.dumps("old")] = b'{"a":1}'
    assert state.text("t", "old") == '{"a":1}'
    assert state.text("t", "new") is None
    reads = table.data.db.reads
    asyncio.run(state.commit([TextWrite("t", "new", "[1,2]"), TextWrite("t", "old", None)]))
    assert [(r.key, r.value) for r in sender.sent] == [(b'"new"', b"[1,2]"), (b'"old"', None)]
    assert table.data.db.data == {b'"new"': b"[1,2]"}
    assert state.text("t", "new") == "[1,2]"
    assert state.text("t", "old") is None
    assert state.text("t", "new") == "[1,2]"
    assert table.data.db.reads == reads  # every read after the first from memory


def test_forget_reads_the_stores_again() -> None:
    state, table, _ = _state()
    assert state.text("t", "k") is None
    table.data.db.data[orjson.dumps("k")] = b"7"  # restored from the changelog meanwhile
    assert state.text("t", "k") is None  # the worker's own view until it forgets
    state.forget()
    assert state.text("t", "k") == "7"


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.none() | st.text(max_size=300))))
def test_a_small_cache_gives_what_the_store_holds(writes: list[tuple[str, str | None]]) -> None:
    state, table, _ = _state(cache_bytes=600)
    for key, text in writes:
        asyncio.run(state.commit([TextWrite("t", key, text)]))
        for probe in "abcdefgh":
            stored = table.data.db.data.get(orjson.dumps(probe))
            assert state.text("t", probe) == (None if stored is None else stored.decode())
    assert state._cache_bytes <= 600
