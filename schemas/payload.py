"""The payload hash of a canonical event: one definition for every stage that dedupes.

The streams stage drops an event whose payload equals the last one kept; a sink skips
applying one whose payload equals the last one applied. Both must agree on what "equal"
means, so the hash is part of the bus contract.

The streams stage hashes every canonical event it publishes anyway (its dedupe), and
sends the digest along in the Kafka header :data:`PAYLOAD_HASH_HEADER`, bound to the
message value by a CRC-32 of its bytes. The header is additive: the value stays the Avro
record of DESIGN.md §4, and a consumer that does not know the header reads the event as
before. A sink takes the digest from the header (:func:`carried_digest`, given the
value as read) and computes it for an event that comes without one (a replay of a dead
letter, an event published by an older streams worker) or whose header was not made for
its value (a message produced again, edited, with the headers kept): :func:`payload_hash`
of the decoded record gives the same text as the header of the record it was encoded
from (tests/unit/test_processor.py checks every canonical event the processor publishes).
Both ends use the two functions here, the only place the header's form is written.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final

from schemas.canonical import METADATA_FIELDS, PRIOR_DIGESTS
from schemas.json_text import StdlibText

__all__ = [
    "HASH_EXCLUDED",
    "PAYLOAD_HASH_HEADER",
    "RESNAPSHOT",
    "Headers",
    "carried_digest",
    "is_resnapshot",
    "never_noop",
    "payload_hash",
    "payload_hash_header",
    "payload_json",
    "plain",
    "value_digest",
]

RESNAPSHOT: Final = "incremental"
"""``source_snapshot`` of an event re-read by an incremental snapshot (Debezium's value)."""

HASH_EXCLUDED: Final = (frozenset(METADATA_FIELDS) - {"op"}) | {"source_snapshot", PRIOR_DIGESTS}
"""Fields left out of the payload hash: the event's metadata, except ``op`` (a delete is
never a no-op of an upsert with the same fields), how the row was read (a snapshot
read of a row hashes like the change that wrote it), and what the change replaced
(:data:`~schemas.canonical.PRIOR_DIGESTS`: about the change, not the record)."""


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


VALUE_DIGEST_LENGTH: Final = 16
"""Hex digits of a :func:`value_digest` (64 bits: equal values are told from different
ones; nothing is secret in it)."""


def value_digest(value: Any) -> str:
    """A short digest of one canonical value; equal values (:func:`plain`) give equal ones.

    What :data:`~schemas.canonical.PRIOR_DIGESTS` carries per field: the streams stage
    digests the value a change replaced, a sink the value its target holds, and equal
    digests mean the change was made over that value.
    """
    text = payload_json({"": value})
    return hashlib.sha256(text).hexdigest()[:VALUE_DIGEST_LENGTH]


def payload_hash(record: Mapping[str, Any], exclude: Iterable[str] = HASH_EXCLUDED) -> str:
    """Return the SHA-256 hex digest of a canonical record's payload.

    The payload is every field except ``exclude`` (by default the event metadata but
    ``op``). Decimals hash by value (``1.2`` = ``1.20``); key order does not matter.
    """
    skipped = exclude if isinstance(exclude, frozenset) else frozenset(exclude)
    payload = {k: v for k, v in record.items() if k not in skipped}
    return hashlib.sha256(payload_json(payload)).hexdigest()


PAYLOAD_HASH_HEADER: Final = "erpcrm.payload.sha256"
"""The Kafka header of a canonical event carrying its :func:`payload_hash`, bound to the
message value it was made for: ``<digest>:<check>`` (ASCII), the digest as 64 lowercase
hex digits and the check as the CRC-32 of the message value's bytes, 8 lowercase hex
digits (:func:`payload_hash_header`, :func:`carried_digest`)."""

_DIGEST_LENGTH: Final = 64
_HEADER_LENGTH: Final = _DIGEST_LENGTH + 1 + 8
_SEPARATOR: Final = ord(":")
_HEX_DIGITS: Final = b"0123456789abcdef"


def payload_hash_header(digest: str, value: bytes) -> tuple[str, bytes]:
    """The :data:`PAYLOAD_HASH_HEADER` header carrying ``digest`` for the message ``value``.

    ``digest`` is :func:`payload_hash` of the record ``value`` encodes (the message value
    as published, wire-format bytes and all).
    """
    return (PAYLOAD_HASH_HEADER, b"%s:%08x" % (digest.encode("ascii"), zlib.crc32(value)))


Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None
"""A message's Kafka headers as a client hands them out: a sequence of pairs (a list, as
confluent-kafka gives them, or a tuple, as the streams stage builds them), or a mapping."""


def carried_digest(headers: Headers, value: bytes | None) -> str | None:
    """The payload hash ``headers`` carry for the message value ``value``; None: none.

    None when there is no :data:`PAYLOAD_HASH_HEADER`, when it is malformed (not
    ``<64 hex>:<8 hex>``), when its check is not the CRC-32 of ``value`` (the value was
    edited and produced again with the old headers kept: the digest was made for another
    payload), or when ``value`` is None. The reader then computes the hash itself, as
    for an event published without the header. The check guards against a tool, not an
    adversary: whoever may produce to the topic may write any payload with any header.

    Read for every message a sink consumes when the version does not settle it: a loop
    and a few C calls (no regular expression; a list or tuple is told apart from a
    mapping before the abstract class's ``isinstance``, which took longer than the rest).
    """
    if not headers or value is None:
        return None
    carried: str | bytes | None = None
    if not isinstance(headers, list | tuple) and isinstance(headers, Mapping):
        carried = headers.get(PAYLOAD_HASH_HEADER)
    else:
        for name, each in headers:
            if name == PAYLOAD_HASH_HEADER:
                carried = each
                break
    if isinstance(carried, str):
        carried = carried.encode("ascii", "replace")
    if carried is None or len(carried) != _HEADER_LENGTH or carried[_DIGEST_LENGTH] != _SEPARATOR:
        return None
    digest = carried[:_DIGEST_LENGTH]
    if digest.translate(None, _HEX_DIGITS) or carried[_DIGEST_LENGTH + 1 :] != b"%08x" % (
        zlib.crc32(value)
    ):
        return None
    return digest.decode("ascii")


def payload_json(payload: Mapping[str, Any]) -> bytes:
    """The payload's JSON as UTF-8, the text :func:`payload_hash` hashes.

    The standard library encoder's text: keys sorted, no spaces, text unescaped,
    decimals and times in :func:`plain`'s forms (written by orjson where it writes the
    same, :class:`~schemas.json_text.StdlibText`).
    """
    return _PAYLOAD_JSON(payload)


def _plain_leaf(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, Decimal | datetime | date):
        return plain(value)
    raise TypeError(f"{type(value).__name__} has no payload form")


# The encoders walk the containers; only decimals, times and other mappings reach
# ``_plain_leaf``, which gives them the forms ``plain`` gives. Built once: json.dumps
# with options builds an encoder per call, a cost every event paid.
_PAYLOAD_JSON: Final = StdlibText(
    sort_keys=True, default=_plain_leaf, default_types=frozenset({Decimal, datetime, date})
)
