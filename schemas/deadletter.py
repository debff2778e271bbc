"""The headers of a dead letter, as every stage writes them (DESIGN.md §4).

A dead letter carries the original key and value bytes; these UTF-8 text headers say
what went wrong and where the message came from. The streams stage (``dlq.streams``)
and the sinks (``dlq.sinks.<target>``) use the same names, so one consumer reads both.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "H_APP_ID",
    "H_CONTEXT_PREFIX",
    "H_ERROR_CLASS",
    "H_ERROR_FIELD",
    "H_ERROR_MESSAGE",
    "H_ERROR_REASON",
    "H_FLOW",
    "H_ORIGIN_OFFSET",
    "H_ORIGIN_PARTITION",
    "H_ORIGIN_TOPIC",
    "H_OUTPUT_ID",
    "H_STAGE",
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
