"""Local table stores against their changelogs (streams/stores.py), without Kafka.

The decision is a pure function; the stores are real RocksDB stores written by Faust's own
store class, so the reader is tested against the format Faust writes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

import streams.app as streams_app
import streams.stores as stores_module
from schemas.settings import KafkaSettings
from streams.app import StreamsApp, build
from streams.settings import StreamsSettings
from streams.stores import (
    AheadStore,
    LocalStore,
    discard_stores_ahead,
    find_local_stores,
    read_persisted_offset,
    stores_ahead,
)
from tests.unit.test_processor import FLOWS, SERDE

APP_ID = "erpcrm-streams-stores"


def store(table: str, offset: int | None, partition: int = 0) -> LocalStore:
    return LocalStore(
        table, partition, f"{APP_ID}-{table}-changelog", Path(f"/x/{table}-{partition}.db"), offset
    )


# ---------------------------------------------------------------- the decision


def test_a_store_beyond_a_fresh_changelog_is_ahead() -> None:
    # The reported crash: 3699 persisted, the new topic empty (Faust: 3699 > -1).
    assembly = store("assembly", 3699)
    assert stores_ahead([assembly], {assembly.changelog_partition: 0}) == [AheadStore(assembly, 0)]


def test_a_store_whose_changelog_is_missing_is_ahead_even_without_an_offset() -> None:
    with_offset, without = store("dedupe", 12), store("reference", None)
    assert stores_ahead([with_offset, without], {}) == [
        AheadStore(with_offset, None),
        AheadStore(without, None),
    ]
    assert AheadStore(without, None).reason == "the changelog partition does not exist"


def test_the_high_watermark_is_the_next_offset_so_equal_is_ahead() -> None:
    caught_up, ahead = store("dedupe", 41), store("reference", 42)
    highwaters = {caught_up.changelog_partition: 42, ahead.changelog_partition: 42}
    assert stores_ahead([caught_up, ahead], highwaters) == [AheadStore(ahead, 42)]
    assert AheadStore(ahead, 42).reason == "stored offset=42 >= highwater=42"


def test_stores_behind_or_without_an_offset_are_left_to_faust() -> None:
    behind, unrecorded = store("inventory", 5), store("assembly", None)
    highwaters = {behind.changelog_partition: 100, unrecorded.changelog_partition: 0}
    assert stores_ahead([behind, unrecorded], highwaters) == []


def test_each_partition_is_judged_by_its_own_changelog_partition() -> None:
    zero, one = store("dedupe", 10, partition=0), store("dedupe", 10, partition=1)
    highwaters = {zero.changelog_partition: 50, one.changelog_partition: 3}
    assert stores_ahead([zero, one], highwaters) == [AheadStore(one, 3)]
    assert stores_ahead([zero, one], {zero.changelog_partition: 50}) == [AheadStore(one, None)]


# ---------------------------------------------------------------- the stores on disk


def rocks_app(tmp_path: Path) -> StreamsApp:
    streams = build(
        StreamsSettings(app_id=APP_ID, data_dir=tmp_path, store="rocksdb://"),
        serde=SERDE,
        flows=FLOWS,
        read_recent_outputs=False,
    )
    streams.app.finalize()
    return streams


def write_offsets(streams: StreamsApp, offsets: dict[str, int | None]) -> Path:
    """Open the named tables' stores with Faust, record ``offsets``, close; the table dir."""
    for name, offset in offsets.items():
        table = streams.tables[name]
        data: Any = table.data
        tp = TP(table.changelog_topic.get_topic_name(), 0)
        if offset is None:
            data.persisted_offset(tp)  # opens (creates) the store, records nothing
        else:
            data.set_persisted_offset(tp, offset)
        asyncio.run(data.stop())
    return Path(streams.app.conf.tabledir)


def changelogs(streams: StreamsApp) -> dict[str, str]:
    return {n: t.changelog_topic.get_topic_name() for n, t in streams.tables.items()}


def test_stores_written_by_faust_are_found_with_their_offsets(tmp_path: Path) -> None:
    streams = rocks_app(tmp_path)
    tabledir = write_offsets(streams, {"assembly": 3699, "dedupe": None})
    (tabledir / "retired-0.db").mkdir()  # a table the app no longer has: not ours to judge
    (tabledir / "notes.txt").write_text("not a store")
    found = find_local_stores(tabledir, changelogs(streams))
    assert [(s.table, s.partition, s.changelog, s.persisted_offset) for s in found] == [
        ("assembly", 0, f"{APP_ID}-assembly-changelog", 3699),
        ("dedupe", 0, f"{APP_ID}-dedupe-changelog", None),
    ]
    assert read_persisted_offset(found[0].path) == 3699
    assert find_local_stores(tmp_path / "nowhere", changelogs(streams)) == []


def test_stores_ahead_are_removed_with_a_warning_the_others_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    streams = rocks_app(tmp_path)
    tabledir = write_offsets(streams, {"assembly": 3699, "dedupe": 7})
    asked: list[list[str]] = []

    def highwaters(
        kafka: KafkaSettings, topics: list[str], *, timeout_s: float
    ) -> dict[tuple[str, int], int]:
        asked.append(list(topics))
        return {(f"{APP_ID}-assembly-changelog", 0): 0, (f"{APP_ID}-dedupe-changelog", 0): 8}

    monkeypatch.setattr(stores_module, "changelog_highwaters", highwaters)
    with caplog.at_level(logging.WARNING, logger="streams.stores"):
        ahead = discard_stores_ahead(tabledir, changelogs(streams), KafkaSettings())
    assert asked == [[f"{APP_ID}-assembly-changelog", f"{APP_ID}-dedupe-changelog"]]
    assert [a.store.table for a in ahead] == ["assembly"]
    assert not (tabledir / "assembly-0.db").exists()
    assert read_persisted_offset(tabledir / "dedupe-0.db") == 7
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert f"{APP_ID}-assembly-changelog[0]" in message
    assert "stored offset=3699 >= highwater=0" in message
    assert "rebuilt from the changelog" in message


def test_no_local_store_means_no_question_to_kafka(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_args: Any, **_kwargs: Any) -> dict[tuple[str, int], int]:
        raise AssertionError("Kafka asked without a local store")

    monkeypatch.setattr(stores_module, "changelog_highwaters", unreachable)
    assert discard_stores_ahead(tmp_path / "tables", {"dedupe": "x"}, KafkaSettings()) == []


def test_the_worker_checks_its_stores_before_faust_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Path, dict[str, str], KafkaSettings]] = []
    monkeypatch.setattr(
        streams_app,
        "discard_stores_ahead",
        lambda tabledir, changelogs, kafka: calls.append((tabledir, dict(changelogs), kafka)),
    )
    streams = rocks_app(tmp_path)
    streams.app.on_worker_init.send()  # what worker_init_post_autodiscover sends
    assert calls == [
        (tmp_path / APP_ID / "v1" / "tables", changelogs(streams), streams.settings.kafka)
    ]


def test_a_memory_store_has_nothing_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        streams_app, "discard_stores_ahead", lambda *_: pytest.fail("checked a memory store")
    )
    streams = build(
        StreamsSettings(app_id=APP_ID, data_dir=tmp_path, store="memory://"),
        serde=SERDE,
        flows=FLOWS,
        read_recent_outputs=False,
    )
    streams.app.on_worker_init.send()
