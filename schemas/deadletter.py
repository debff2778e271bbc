"""The headers of a dead letter, as every stage writes them (DESIGN.md §4).

A dead letter carries the original key and value bytes; these UTF-8 text headers say
what went wrong and where the message came from. The streams stage (``dlq.streams``)
and the sinks (``dlq.sinks.<target>``) use the same names, so one consumer reads both.

A dead letter replayed (``erpcrm dlq replay``) goes back into the stage that failed with
``erpcrm.replay.count`` (how many times it has been replayed) and its original position
in the ``erpcrm.origin.*`` headers; if it fails again, the new dead letter carries the
same count, so an operator sees how often a record came back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

__all__ = [
    "H_APP_ID",
    "H_CONTEXT_PREFIX",
    "H_ENTITY",
    "H_ENTITY_KEY",
    "H_ERROR_CLASS",
    "H_ERROR_FIELD",
    "H_ERROR_MESSAGE",
    "H_ERROR_REASON",
    "H_FLOW",
    "H_ORIGIN_OFFSET",
    "H_ORIGIN_PARTITION",
    "H_ORIGIN_TOPIC",
    "H_OUTPUT_ID",
    "H_REPLAY_COUNT",
    "H_STAGE",
    "replay_count",
    "text_headers",
]

H_ERROR_CLASS: Final = "erpcrm.error.class"
H_ERROR_MESSAGE: Final = "erpcrm.error.message"
H_ERROR_REASON: Final = "erpcrm.error.reason"
H_ERROR_FIELD: Final = "erpcrm.error.field"
H_STAGE: Final = "erpcrm.stage"
H_ORIGIN_TOPIC: Final = "erpcrm.origin.topic"
H_ORIGIN_PARTITION: Final = "erpcrm.origin.partition"
H_ORIGIN_OFFSET: Final = "erpcrm.origin.offset"
H_FLOW: Final = "erpcrm.flow"
H_OUTPUT_ID: Final = "erpcrm.output_id"
H_APP_ID: Final = "erpcrm.app_id"
H_CONTEXT_PREFIX: Final = "erpcrm.context."
H_ENTITY: Final = "erpcrm.entity"
H_ENTITY_KEY: Final = "erpcrm.entity_key"
H_REPLAY_COUNT: Final = "erpcrm.replay.count"


def replay_count(headers: Mapping[str, str]) -> int:
    """How many times a message was replayed, from its text headers (0: never).

    A header that is not a non-negative integer counts as 0: it was not written by a
    replay, and a replay count never decides whether data is kept.
    """
    text = headers.get(H_REPLAY_COUNT, "")
    return int(text) if text.isdigit() else 0


def text_headers(
    headers: Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
) -> Mapping[str, str]:
    """Return Kafka headers (pairs, or a mapping) as name -> text (the last value wins)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    found: dict[str, str] = {}
    for name, value in pairs:
        if isinstance(value, bytes):
            found[name] = value.decode("utf-8", errors="replace")
        else:
            found[name] = value or ""
    return found
