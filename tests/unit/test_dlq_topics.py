"""Dead-letter topics keep every letter: which settings a topic still lacks."""

from __future__ import annotations

from schemas.dlq_topics import KEPT, missing_settings


def test_a_topic_with_the_brokers_default_retention_lacks_the_unlimited_one() -> None:
    current = {"retention.ms": "604800000", "retention.bytes": "-1", "cleanup.policy": "delete"}
    assert missing_settings(current) == {"retention.ms": "-1"}


def test_a_kept_topic_lacks_nothing_and_an_unknown_one_lacks_everything() -> None:
    assert missing_settings({**KEPT, "cleanup.policy": "delete"}) == {}
    assert missing_settings({}) == dict(KEPT)
