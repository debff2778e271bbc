"""The payload hash of a canonical event: one definition for every stage that dedupes.

The streams stage drops an event whose payload equals the last one kept; a sink skips
applying one whose payload equals the last one applied. Both must agree on what "equal"
means, so the hash is part of the bus contract.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

import orjson

from schemas.canonical import METADATA_FIELDS

__all__ = [
    "HASH_EXCLUDED",
    "RESNAPSHOT",
    "is_resnapshot",
    "never_noop",
    "payload_hash",
    "payload_json",
    "plain",
]

RESNAPSHOT: Final = "incremental"
"""``source_snapshot`` of an event re-read by an incremental snapshot (Debezium's value)."""

HASH_EXCLUDED: Final = (frozenset(METADATA_FIELDS) - {"op"}) | {"source_snapshot"}
"""Fields left out of the payload hash: the event's metadata, except ``op`` (a delete is
never a no-op of an upsert with the same fields), and how the row was read (a snapshot
read of a row hashes like the change that wrote it)."""


def never_noop(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` must not be dropped as a no-op although its payload is unchanged.

    A record that names its ``changed_fields`` takes part in the sinks' field-level merge:
    the same values written again at a later commit time still compete (they beat an
    edit made on the other side in between), and every change of such a row must reach
    the sinks, which track each row's local changes from them. A re-snapshot
    (:func:`is_resnapshot`) re-asserts the row in a target that may have drifted.
    """
    return record.get("changed_fields") is not None or is_resnapshot(record)


def is_resnapshot(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` was re-read by an incremental snapshot an operator asked for.

    Such a record is never a no-op: the target may lack the row or hold it differently
    (drift the pipeline did not see), and the re-read is how it is repaired.
    """
    return record.get("source_snapshot") == RESNAPSHOT


def plain(value: Any) -> Any:
    """A JSON-able form of a canonical value; equal values give equal forms."""
    if isinstance(value, Decimal):
        normal = value.normalize()
        return {"$decimal": format(normal if normal != 0 else Decimal(0), "f")}
    if isinstance(value, datetime | date):
        return {"$time": value.isoformat()}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def payload_hash(record: Mapping[str, Any], exclude: Iterable[str] = HASH_EXCLUDED) -> str:
    """Return the SHA-256 hex digest of a canonical record's payload.

    The payload is every field except ``exclude`` (by default the event metadata but
    ``op``). Decimals hash by value (``1.2`` = ``1.20``); key order does not matter.
    """
    skipped = exclude if isinstance(exclude, frozenset) else frozenset(exclude)
    payload = {k: v for k, v in record.items() if k not in skipped}
    return hashlib.sha256(payload_json(payload)).hexdigest()


def payload_json(payload: Mapping[str, Any]) -> bytes:
    """The payload's JSON as UTF-8, the text :func:`payload_hash` hashes.

    Keys sorted, no spaces, text unescaped, decimals and times in :func:`plain`'s forms.
    The standard library's encoder (:data:`_PAYLOAD_JSON`) defines the text; orjson
    writes the same bytes several times faster for the values canonical records hold
    (:func:`_written_alike`), and writes them when it can.
    """
    if _written_alike(payload):
        try:
            return orjson.dumps(payload, default=_plain_leaf, option=_ORJSON_OPTIONS)
        except TypeError:  # an integer beyond 64 bits, text with a lone surrogate, deep nesting
            pass
    return _PAYLOAD_JSON(payload).encode("utf-8")


_ALIKE_LEAVES: Final = frozenset({str, int, bool, type(None), Decimal, datetime, date})
"""Leaf types orjson writes as :data:`_PAYLOAD_JSON` does (decimals and times through
:func:`_plain_leaf`). Not floats (another notation for exponents and non-finite
values; no canonical field is one), nor subclasses, UUIDs, enums or dataclasses, which
orjson writes natively where the standard library calls ``default``."""

_ORJSON_OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def _written_alike(value: Any) -> bool:
    """Whether orjson writes ``value`` as the standard library's encoder does.

    True when every container is a plain dict (text keys), list or tuple and every leaf
    is of a type in :data:`_ALIKE_LEAVES`.
    """
    kind = type(value)
    if kind is dict:
        return all(
            type(k) is str and (type(v) in _ALIKE_LEAVES or _written_alike(v))
            for k, v in value.items()
        )
    if kind is list or kind is tuple:
        return all(type(v) in _ALIKE_LEAVES or _written_alike(v) for v in value)
    return kind in _ALIKE_LEAVES


def _plain_leaf(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, Decimal | datetime | date):
        return plain(value)
    raise TypeError(f"{type(value).__name__} has no payload form")


# The C encoder walks the containers; only decimals, times and other mappings reach
# ``_plain_leaf``, which gives them the forms ``plain`` gives. Built once: json.dumps
# with options builds an encoder per call, a cost every event paid.
_PAYLOAD_JSON: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain_leaf
).encode
