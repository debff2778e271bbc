"""Encodes decoded pgoutput messages back into the bytes PostgreSQL sends.

Test-only: the inverse of ``cdc.decoding.PgOutputDecoder``, written from the protocol
description ("Logical Replication Message Formats") so the decoder can be checked by
round trips. A message whose ``xid`` is set is encoded the way it appears inside a
streamed block (protocol 2).
"""

from __future__ import annotations

import struct
from datetime import datetime, timedelta

from cdc.decoding import (
    NULL,
    PG_EPOCH,
    UNCHANGED_TOAST,
    Begin,
    BinaryValue,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
)


def micros(ts: datetime) -> int:
    """Microseconds since the PostgreSQL epoch."""
    return (ts - PG_EPOCH) // timedelta(microseconds=1)


def string(text: str) -> bytes:
    return text.encode("utf-8") + b"\0"


def int8(value: int) -> bytes:
    return struct.pack(">B", value)


def int16(value: int) -> bytes:
    return struct.pack(">H", value)


def int32(value: int) -> bytes:
    return struct.pack(">I", value)


def sint32(value: int) -> bytes:
    return struct.pack(">i", value)


def int64(value: int) -> bytes:
    return struct.pack(">Q", value)


def sint64(value: int) -> bytes:
    return struct.pack(">q", value)


def xid_part(xid: int | None) -> bytes:
    return b"" if xid is None else int32(xid)


def encode_tuple(values: TupleData) -> bytes:
    parts = [int16(len(values))]
    for value in values:
        if value is NULL:
            parts.append(b"n")
        elif value is UNCHANGED_TOAST:
            parts.append(b"u")
        elif isinstance(value, BinaryValue):
            parts.append(b"b" + sint32(len(value.data)) + value.data)
        else:
            assert isinstance(value, bytes)
            parts.append(b"t" + sint32(len(value)) + value)
    return b"".join(parts)


def encode(message: Message) -> bytes:
    match message:
        case Begin(final_lsn, commit_ts, xid):
            return b"B" + int64(int(final_lsn)) + sint64(micros(commit_ts)) + int32(xid)
        case Commit(flags, commit_lsn, end_lsn, commit_ts):
            return (
                b"C"
                + int8(flags)
                + int64(int(commit_lsn))
                + int64(int(end_lsn))
                + sint64(micros(commit_ts))
            )
        case Origin(origin_lsn, name):
            return b"O" + int64(int(origin_lsn)) + string(name)
        case Relation(oid, namespace, name, replica_identity, columns, xid):
            parts = [
                b"R",
                xid_part(xid),
                int32(oid),
                string(namespace),
                string(name),
                replica_identity.value.encode("ascii"),
                int16(len(columns)),
            ]
            for column in columns:
                parts += [
                    int8(column.flags),
                    string(column.name),
                    int32(column.type_oid),
                    sint32(column.type_modifier),
                ]
            return b"".join(parts)
        case Type(oid, namespace, name, xid):
            return b"Y" + xid_part(xid) + int32(oid) + string(namespace) + string(name)
        case Insert(relation_oid, new, xid):
            return b"I" + xid_part(xid) + int32(relation_oid) + b"N" + encode_tuple(new)
        case Update(relation_oid, old_key, old, new, xid):
            before = b""
            if old_key is not None:
                before = b"K" + encode_tuple(old_key)
            elif old is not None:
                before = b"O" + encode_tuple(old)
            return b"U" + xid_part(xid) + int32(relation_oid) + before + b"N" + encode_tuple(new)
        case Delete(relation_oid, old_key, old, xid):
            if old_key is not None:
                before = b"K" + encode_tuple(old_key)
            else:
                assert old is not None
                before = b"O" + encode_tuple(old)
            return b"D" + xid_part(xid) + int32(relation_oid) + before
        case Truncate(options, relation_oids, xid):
            return (
                b"T"
                + xid_part(xid)
                + int32(len(relation_oids))
                + int8(int(options))
                + b"".join(int32(oid) for oid in relation_oids)
            )
        case LogicalMessage(transactional, lsn, prefix, content, xid):
            return (
                b"M"
                + xid_part(xid)
                + int8(1 if transactional else 0)
                + int64(int(lsn))
                + string(prefix)
                + sint32(len(content))
                + content
            )
        case StreamStart(xid, first_segment):
            return b"S" + int32(xid) + int8(1 if first_segment else 0)
        case StreamStop():
            return b"E"
        case StreamCommit(xid, flags, commit_lsn, end_lsn, commit_ts):
            return (
                b"c"
                + int32(xid)
                + int8(flags)
                + int64(int(commit_lsn))
                + int64(int(end_lsn))
                + sint64(micros(commit_ts))
            )
        case StreamAbort(xid, subxid, abort_lsn, abort_ts):
            tail = b""
            if abort_lsn is not None:
                assert abort_ts is not None
                tail = int64(int(abort_lsn)) + sint64(micros(abort_ts))
            return b"A" + int32(xid) + int32(subxid) + tail
    raise TypeError(f"not a pgoutput message: {message!r}")
