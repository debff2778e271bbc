"""The pgoutput logical replication protocol: bytes in, typed messages out.

Pure decoding with no I/O. :class:`PgOutputDecoder` turns the payload of one
``XLogData`` message into one frozen message object, dispatching on the
:class:`MessageType` in its first byte. It covers protocol version 1 and the streaming
messages of version 2 (``streaming = on``); the two-phase messages of version 3 are
rejected as unknown.

Column values stay as the server sent them (a :data:`TupleData`), so decoding never
depends on types; :func:`tuple_to_dict` converts a tuple into Python values with
:mod:`cdc.values` when a caller needs them.

The session is assumed to use ``client_encoding = UTF8``, which is how names and text
values are decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum, IntFlag, StrEnum
from types import MappingProxyType
from typing import ClassVar, Final

from cdc.lsn import Lsn
from cdc.values import CONVERSION_ERRORS, converter_for
from schemas.errors import DecodeError

__all__ = [
    "NULL",
    "PG_EPOCH",
    "UNCHANGED_TOAST",
    "Begin",
    "BinaryValue",
    "Column",
    "ColumnMarker",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "MessageType",
    "Origin",
    "PgOutputDecoder",
    "Relation",
    "ReplicaIdentity",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TruncateOptions",
    "TupleData",
    "TupleValue",
    "Type",
    "Update",
    "tuple_to_dict",
]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Origin of PostgreSQL timestamps on the wire (microseconds since this instant)."""


class MessageType(bytes, Enum):
    """The first byte of a pgoutput message, naming its kind."""

    BEGIN = b"B"
    COMMIT = b"C"
    ORIGIN = b"O"
    RELATION = b"R"
    TYPE = b"Y"
    INSERT = b"I"
    UPDATE = b"U"
    DELETE = b"D"
    TRUNCATE = b"T"
    MESSAGE = b"M"
    STREAM_START = b"S"
    STREAM_STOP = b"E"
    STREAM_COMMIT = b"c"
    STREAM_ABORT = b"A"


class ReplicaIdentity(StrEnum):
    """A relation's ``REPLICA IDENTITY``: which old values UPDATE and DELETE carry."""

    DEFAULT = "d"
    NOTHING = "n"
    FULL = "f"
    INDEX = "i"


class TruncateOptions(IntFlag):
    """Option bits of a TRUNCATE; unknown bits are kept."""

    NONE = 0
    CASCADE = 1
    RESTART_IDENTITY = 2


class ColumnMarker(Enum):
    """Column values that carry no data."""

    NULL = "n"
    """The column is SQL NULL."""
    UNCHANGED_TOAST = "u"
    """A TOASTed value the UPDATE did not change; the server did not send it again."""

    def __repr__(self) -> str:
        return self.name


NULL: Final = ColumnMarker.NULL
UNCHANGED_TOAST: Final = ColumnMarker.UNCHANGED_TOAST


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A column value in the type's binary send format (only with ``binary = true``)."""

    data: bytes


TupleValue = bytes | BinaryValue | ColumnMarker
"""One column as sent: text-format bytes, :class:`BinaryValue`, :data:`NULL` or
:data:`UNCHANGED_TOAST`."""

TupleData = tuple[TupleValue, ...]
"""A row's columns, in the order of its :class:`Relation`'s columns."""


@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a transaction; ``final_lsn`` is the LSN of its commit record."""

    TYPE: ClassVar[MessageType] = MessageType.BEGIN

    final_lsn: Lsn
    commit_ts: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """End of a transaction; ``end_lsn`` is the position to confirm once it is durable."""

    TYPE: ClassVar[MessageType] = MessageType.COMMIT

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction was replayed by a replication origin (used to break echo loops)."""

    TYPE: ClassVar[MessageType] = MessageType.ORIGIN

    origin_lsn: Lsn
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One published column of a relation."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """Whether the column is part of the replica identity key."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """Describes a table; sent before its first change in a session and after DDL.

    ``namespace`` is empty for ``pg_catalog``. ``xid`` is set only inside a streamed
    transaction.
    """

    TYPE: ClassVar[MessageType] = MessageType.RELATION

    oid: int
    namespace: str
    name: str
    replica_identity: ReplicaIdentity
    columns: tuple[Column, ...]
    xid: int | None = None

    @property
    def key_columns(self) -> tuple[Column, ...]:
        """The columns flagged as part of the replica identity key, in table order."""
        return tuple(column for column in self.columns if column.flags & 1)


@dataclass(frozen=True, slots=True)
class Type:
    """Names a non-built-in data type used by a following relation."""

    TYPE: ClassVar[MessageType] = MessageType.TYPE

    oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    """A row was inserted."""

    TYPE: ClassVar[MessageType] = MessageType.INSERT

    relation_oid: int
    new: TupleData
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """A row was updated.

    ``old_key`` (``'K'``) is sent when a key column changed under ``DEFAULT`` or
    ``INDEX`` replica identity and holds the old key (other columns NULL); ``old``
    (``'O'``) is sent under ``FULL`` and holds the whole old row. At most one is set.
    """

    TYPE: ClassVar[MessageType] = MessageType.UPDATE

    relation_oid: int
    old_key: TupleData | None
    old: TupleData | None
    new: TupleData
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """A row was deleted; exactly one of ``old_key`` (``'K'``) and ``old`` (``'O'``) is set."""

    TYPE: ClassVar[MessageType] = MessageType.DELETE

    relation_oid: int
    old_key: TupleData | None
    old: TupleData | None
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    """One TRUNCATE statement over one or more relations."""

    TYPE: ClassVar[MessageType] = MessageType.TRUNCATE

    options: TruncateOptions
    relation_oids: tuple[int, ...]
    xid: int | None = None

    @property
    def cascade(self) -> bool:
        """Whether ``CASCADE`` was given."""
        return bool(self.options & TruncateOptions.CASCADE)

    @property
    def restart_identity(self) -> bool:
        """Whether ``RESTART IDENTITY`` was given."""
        return bool(self.options & TruncateOptions.RESTART_IDENTITY)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A ``pg_logical_emit_message`` record (only with ``messages = true``)."""

    TYPE: ClassVar[MessageType] = MessageType.MESSAGE

    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Opens a block of changes of an in-progress transaction (protocol 2)."""

    TYPE: ClassVar[MessageType] = MessageType.STREAM_START

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """Closes the current block of streamed changes (protocol 2)."""

    TYPE: ClassVar[MessageType] = MessageType.STREAM_STOP


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """A streamed transaction committed; its changes may now be applied (protocol 2)."""

    TYPE: ClassVar[MessageType] = MessageType.STREAM_COMMIT

    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts: datetime


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """A streamed (sub)transaction aborted; discard its changes (protocol 2).

    ``abort_lsn`` and ``abort_ts`` are present only with ``streaming = parallel``
    (protocol 4); the decoder tells the two forms apart by their length.
    """

    TYPE: ClassVar[MessageType] = MessageType.STREAM_ABORT

    xid: int
    subxid: int
    abort_lsn: Lsn | None = None
    abort_ts: datetime | None = None


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)
"""Any decoded pgoutput message."""


# Precompiled unpackers; every integer on the wire is big-endian.
_U16 = struct.Struct(">H").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U32_U8 = struct.Struct(">IB").unpack_from
_U32_U32_U8 = struct.Struct(">IIB").unpack_from
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_ORIGIN_LSN = struct.Struct(">Q")
_COLUMN_TAIL = struct.Struct(">Ii")
_STREAM_START = struct.Struct(">IB")
_STREAM_COMMIT = struct.Struct(">IBQQq")
_STREAM_ABORT = struct.Struct(">II")
_STREAM_ABORT_V4 = struct.Struct(">IIQq")
_MESSAGE_HEAD = struct.Struct(">BQ")
_TRUNCATE_HEAD = struct.Struct(">IB")

_NEW = ord("N")
_KEY = ord("K")
_OLD = ord("O")

_REPLICA_IDENTITIES: Final = {ord(ri.value): ri for ri in ReplicaIdentity}


def _byte(value: int) -> str:
    return repr(bytes((value,)))


def _truncated(kind: MessageType, offset: int, need: int, data: bytes) -> DecodeError:
    return DecodeError(
        f"{kind.name} message truncated at offset {offset}: "
        f"need {need} bytes, {max(len(data) - offset, 0)} left"
    )


def _malformed(kind: MessageType, offset: int, what: str) -> DecodeError:
    return DecodeError(f"{kind.name} message malformed at offset {offset}: {what}")


def _timestamp(kind: MessageType, offset: int, micros: int) -> datetime:
    try:
        return PG_EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise _malformed(kind, offset, f"timestamp {micros} out of range") from None


def _string(data: bytes, offset: int, kind: MessageType) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string; return it and the offset after the NUL."""
    nul = data.find(0, offset)
    if nul < 0:
        raise _malformed(kind, offset, "string without terminating NUL")
    try:
        return data[offset:nul].decode("utf-8"), nul + 1
    except UnicodeDecodeError as exc:
        raise _malformed(kind, offset, f"string is not UTF-8 ({exc.reason})") from None


def _tuple(data: bytes, offset: int, kind: MessageType, columns: int) -> tuple[TupleData, int]:
    """Read a TupleData of exactly ``columns`` columns; return it and the offset after it."""
    end = len(data)
    if offset + 2 > end:
        raise _truncated(kind, offset, 2, data)
    (count,) = _U16(data, offset)
    if count != columns:
        raise _malformed(kind, offset, f"tuple has {count} columns, relation has {columns}")
    offset += 2
    values: list[TupleValue] = []
    append = values.append
    unpack_length = _U32
    # The hot loop relies on IndexError / struct.error for running out of bytes and checks
    # only what slicing would silently accept: a value running past the end.
    try:
        for _ in range(count):
            marker = data[offset]
            if marker == 0x74:  # 't'
                start = offset + 5
                offset = start + unpack_length(data, offset + 1)[0]
                if offset > end:
                    raise _bad_length(kind, start, offset - start, data)
                append(data[start:offset])
            elif marker == 0x6E:  # 'n'
                append(NULL)
                offset += 1
            elif marker == 0x75:  # 'u'
                append(UNCHANGED_TOAST)
                offset += 1
            elif marker == 0x62:  # 'b'
                start = offset + 5
                offset = start + unpack_length(data, offset + 1)[0]
                if offset > end:
                    raise _bad_length(kind, start, offset - start, data)
                append(BinaryValue(data[start:offset]))
            else:
                raise _malformed(kind, offset, f"unknown column kind {_byte(marker)}")
    except (IndexError, struct.error):
        if offset >= end:
            raise _truncated(kind, offset, 1, data) from None
        raise _truncated(kind, offset + 1, 4, data) from None
    return tuple(values), offset


def _bad_length(kind: MessageType, start: int, length: int, data: bytes) -> DecodeError:
    if length >= 0x80000000:
        return _malformed(kind, start - 4, f"negative value length {length - 0x100000000}")
    return _truncated(kind, start, length, data)


def _finish(data: bytes, offset: int, kind: MessageType) -> None:
    if offset != len(data):
        raise _malformed(kind, offset, f"{len(data) - offset} trailing bytes")


class PgOutputDecoder:
    """Decodes pgoutput messages of one replication session, in the order received.

    The decoder is stateful in the way the protocol is: it remembers every
    :class:`Relation` (and :class:`Type`) it has decoded, because INSERT, UPDATE and
    DELETE refer to relations by OID only, and whether it is inside a streamed block
    (between :class:`StreamStart` and :class:`StreamStop`), where messages carry an
    xid. A new replication session needs a new decoder: the server sends the
    relations again.

    :meth:`decode` either returns exactly one message or raises
    :class:`~schemas.errors.DecodeError` naming the message type and byte offset;
    it never returns a partial message, and a failed call changes no state. Not
    thread-safe.
    """

    __slots__ = ("_handlers", "_in_stream", "_relations", "_types")

    def __init__(self) -> None:
        self._relations: dict[int, Relation] = {}
        self._types: dict[int, Type] = {}
        self._in_stream = False
        handlers: dict[MessageType, Callable[[bytes], Message]] = {
            MessageType.BEGIN: self._begin,
            MessageType.COMMIT: self._commit,
            MessageType.ORIGIN: self._origin,
            MessageType.RELATION: self._relation,
            MessageType.TYPE: self._type,
            MessageType.INSERT: self._insert,
            MessageType.UPDATE: self._update,
            MessageType.DELETE: self._delete,
            MessageType.TRUNCATE: self._truncate,
            MessageType.MESSAGE: self._message,
            MessageType.STREAM_START: self._stream_start,
            MessageType.STREAM_STOP: self._stream_stop,
            MessageType.STREAM_COMMIT: self._stream_commit,
            MessageType.STREAM_ABORT: self._stream_abort,
        }
        self._handlers: dict[int, Callable[[bytes], Message]] = {
            kind[0]: handler for kind, handler in handlers.items()
        }

    @property
    def relations(self) -> Mapping[int, Relation]:
        """Read-only view of the relations seen so far, by OID (latest wins)."""
        return MappingProxyType(self._relations)

    @property
    def types(self) -> Mapping[int, Type]:
        """Read-only view of the data types announced so far, by OID."""
        return MappingProxyType(self._types)

    @property
    def in_stream(self) -> bool:
        """Whether the last stream-control message opened a streamed block."""
        return self._in_stream

    def relation(self, oid: int) -> Relation:
        """Return the relation last announced under ``oid``; DecodeError if none was."""
        try:
            return self._relations[oid]
        except KeyError:
            raise DecodeError(f"unknown relation oid {oid}") from None

    def decode(self, data: bytes | bytearray | memoryview) -> Message:
        """Decode one complete message.

        Raises :class:`~schemas.errors.DecodeError` on an empty, unknown, truncated or
        over-long message, on a DML message for a relation not announced before, and on
        a tuple whose column count differs from its relation's.
        """
        # Slicing bytes yields each value in a single copy; other buffers are copied once.
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            raise DecodeError("empty pgoutput message at offset 0")
        handler = self._handlers.get(data[0])
        if handler is None:
            raise DecodeError(f"unknown pgoutput message type {data[:1]!r} at offset 0")
        return handler(data)

    # ------------------------------------------------------------------ helpers

    def _xid(self, data: bytes, kind: MessageType) -> tuple[int | None, int]:
        """Read the xid that streamed messages carry after the type byte."""
        if not self._in_stream:
            return None, 1
        if len(data) < 5:
            raise _truncated(kind, 1, 4, data)
        return _U32(data, 1)[0], 5

    def _dml_head(self, data: bytes, kind: MessageType) -> tuple[int | None, Relation, int, int]:
        """Read ``[xid] oid marker``; return xid, relation, marker and the offset after it."""
        xid: int | None
        try:
            if self._in_stream:
                xid, oid, marker = _U32_U32_U8(data, 1)
                offset = 10
            else:
                xid = None
                oid, marker = _U32_U8(data, 1)
                offset = 6
        except struct.error:
            raise _truncated(kind, 1, 9 if self._in_stream else 5, data) from None
        relation = self._relations.get(oid)
        if relation is None:
            raise _malformed(kind, offset - 5, f"unknown relation oid {oid}")
        return xid, relation, marker, offset

    # ------------------------------------------------------------------ handlers

    def _begin(self, data: bytes) -> Begin:
        kind = MessageType.BEGIN
        if len(data) < 1 + _BEGIN.size:
            raise _truncated(kind, 1, _BEGIN.size, data)
        _finish(data, 1 + _BEGIN.size, kind)
        final_lsn, micros, xid = _BEGIN.unpack_from(data, 1)
        return Begin(Lsn(final_lsn), _timestamp(kind, 9, micros), xid)

    def _commit(self, data: bytes) -> Commit:
        kind = MessageType.COMMIT
        if len(data) < 1 + _COMMIT.size:
            raise _truncated(kind, 1, _COMMIT.size, data)
        _finish(data, 1 + _COMMIT.size, kind)
        flags, commit_lsn, end_lsn, micros = _COMMIT.unpack_from(data, 1)
        return Commit(flags, Lsn(commit_lsn), Lsn(end_lsn), _timestamp(kind, 18, micros))

    def _origin(self, data: bytes) -> Origin:
        kind = MessageType.ORIGIN
        if len(data) < 9:
            raise _truncated(kind, 1, 8, data)
        (origin_lsn,) = _ORIGIN_LSN.unpack_from(data, 1)
        name, offset = _string(data, 9, kind)
        _finish(data, offset, kind)
        return Origin(Lsn(origin_lsn), name)

    def _relation(self, data: bytes) -> Relation:
        kind = MessageType.RELATION
        xid, offset = self._xid(data, kind)
        end = len(data)
        if offset + 4 > end:
            raise _truncated(kind, offset, 4, data)
        (oid,) = _U32(data, offset)
        namespace, offset = _string(data, offset + 4, kind)
        name, offset = _string(data, offset, kind)
        if offset + 3 > end:
            raise _truncated(kind, offset, 3, data)
        identity = _REPLICA_IDENTITIES.get(data[offset])
        if identity is None:
            raise _malformed(kind, offset, f"unknown replica identity {_byte(data[offset])}")
        (count,) = _U16(data, offset + 1)
        offset += 3
        columns: list[Column] = []
        for _ in range(count):
            if offset >= end:
                raise _truncated(kind, offset, 1, data)
            flags = data[offset]
            column_name, offset = _string(data, offset + 1, kind)
            if offset + 8 > end:
                raise _truncated(kind, offset, 8, data)
            type_oid, type_modifier = _COLUMN_TAIL.unpack_from(data, offset)
            offset += 8
            columns.append(Column(flags, column_name, type_oid, type_modifier))
        _finish(data, offset, kind)
        relation = Relation(oid, namespace, name, identity, tuple(columns), xid)
        self._relations[oid] = relation
        return relation

    def _type(self, data: bytes) -> Type:
        kind = MessageType.TYPE
        xid, offset = self._xid(data, kind)
        if offset + 4 > len(data):
            raise _truncated(kind, offset, 4, data)
        (oid,) = _U32(data, offset)
        namespace, offset = _string(data, offset + 4, kind)
        name, offset = _string(data, offset, kind)
        _finish(data, offset, kind)
        message = Type(oid, namespace, name, xid)
        self._types[oid] = message
        return message

    def _insert(self, data: bytes) -> Insert:
        kind = MessageType.INSERT
        xid, relation, marker, offset = self._dml_head(data, kind)
        if marker != _NEW:
            raise _malformed(kind, offset - 1, f"expected 'N', got {_byte(marker)}")
        new, offset = _tuple(data, offset, kind, len(relation.columns))
        if offset != len(data):
            _finish(data, offset, kind)
        return Insert(relation.oid, new, xid)

    def _update(self, data: bytes) -> Update:
        kind = MessageType.UPDATE
        xid, relation, marker, offset = self._dml_head(data, kind)
        columns = len(relation.columns)
        old_key: TupleData | None = None
        old: TupleData | None = None
        if marker in (_KEY, _OLD):
            before, offset = _tuple(data, offset, kind, columns)
            if marker == _KEY:
                old_key = before
            else:
                old = before
            if offset >= len(data):
                raise _truncated(kind, offset, 1, data)
            marker = data[offset]
            offset += 1
        if marker != _NEW:
            raise _malformed(kind, offset - 1, f"expected 'K', 'O' or 'N', got {_byte(marker)}")
        new, offset = _tuple(data, offset, kind, columns)
        _finish(data, offset, kind)
        return Update(relation.oid, old_key, old, new, xid)

    def _delete(self, data: bytes) -> Delete:
        kind = MessageType.DELETE
        xid, relation, marker, offset = self._dml_head(data, kind)
        if marker != _KEY and marker != _OLD:
            raise _malformed(kind, offset - 1, f"expected 'K' or 'O', got {_byte(marker)}")
        before, offset = _tuple(data, offset, kind, len(relation.columns))
        _finish(data, offset, kind)
        if marker == _KEY:
            return Delete(relation.oid, before, None, xid)
        return Delete(relation.oid, None, before, xid)

    def _truncate(self, data: bytes) -> Truncate:
        kind = MessageType.TRUNCATE
        xid, offset = self._xid(data, kind)
        if offset + _TRUNCATE_HEAD.size > len(data):
            raise _truncated(kind, offset, _TRUNCATE_HEAD.size, data)
        count, options = _TRUNCATE_HEAD.unpack_from(data, offset)
        offset += _TRUNCATE_HEAD.size
        if offset + 4 * count > len(data):
            raise _truncated(kind, offset, 4 * count, data)
        oids = struct.unpack_from(f">{count}I", data, offset)
        _finish(data, offset + 4 * count, kind)
        return Truncate(TruncateOptions(options), oids, xid)

    def _message(self, data: bytes) -> LogicalMessage:
        kind = MessageType.MESSAGE
        xid, offset = self._xid(data, kind)
        if offset + _MESSAGE_HEAD.size > len(data):
            raise _truncated(kind, offset, _MESSAGE_HEAD.size, data)
        flags, lsn = _MESSAGE_HEAD.unpack_from(data, offset)
        prefix, offset = _string(data, offset + _MESSAGE_HEAD.size, kind)
        if offset + 4 > len(data):
            raise _truncated(kind, offset, 4, data)
        (length,) = _I32(data, offset)
        if length < 0:
            raise _malformed(kind, offset, f"negative content length {length}")
        offset += 4
        if offset + length > len(data):
            raise _truncated(kind, offset, length, data)
        content = data[offset : offset + length]
        _finish(data, offset + length, kind)
        return LogicalMessage(bool(flags & 1), Lsn(lsn), prefix, content, xid)

    def _stream_start(self, data: bytes) -> StreamStart:
        kind = MessageType.STREAM_START
        if len(data) < 1 + _STREAM_START.size:
            raise _truncated(kind, 1, _STREAM_START.size, data)
        _finish(data, 1 + _STREAM_START.size, kind)
        if self._in_stream:
            raise _malformed(kind, 0, "stream start inside an open stream")
        xid, first = _STREAM_START.unpack_from(data, 1)
        self._in_stream = True
        return StreamStart(xid, bool(first & 1))

    def _stream_stop(self, data: bytes) -> StreamStop:
        kind = MessageType.STREAM_STOP
        _finish(data, 1, kind)
        if not self._in_stream:
            raise _malformed(kind, 0, "stream stop without an open stream")
        self._in_stream = False
        return StreamStop()

    def _stream_commit(self, data: bytes) -> StreamCommit:
        kind = MessageType.STREAM_COMMIT
        if len(data) < 1 + _STREAM_COMMIT.size:
            raise _truncated(kind, 1, _STREAM_COMMIT.size, data)
        _finish(data, 1 + _STREAM_COMMIT.size, kind)
        xid, flags, commit_lsn, end_lsn, micros = _STREAM_COMMIT.unpack_from(data, 1)
        return StreamCommit(xid, flags, Lsn(commit_lsn), Lsn(end_lsn), _timestamp(kind, 22, micros))

    def _stream_abort(self, data: bytes) -> StreamAbort:
        kind = MessageType.STREAM_ABORT
        if len(data) == 1 + _STREAM_ABORT_V4.size:
            xid, subxid, abort_lsn, micros = _STREAM_ABORT_V4.unpack_from(data, 1)
            return StreamAbort(xid, subxid, Lsn(abort_lsn), _timestamp(kind, 17, micros))
        if len(data) < 1 + _STREAM_ABORT.size:
            raise _truncated(kind, 1, _STREAM_ABORT.size, data)
        _finish(data, 1 + _STREAM_ABORT.size, kind)
        xid, subxid = _STREAM_ABORT.unpack_from(data, 1)
        return StreamAbort(xid, subxid)


def tuple_to_dict(relation: Relation, values: TupleData) -> dict[str, object]:
    """Map each column name of ``relation`` to the Python value of its entry in ``values``.

    Text values are converted by column type with :mod:`cdc.values`; :data:`NULL`
    becomes ``None``; :data:`UNCHANGED_TOAST` is kept as is, so callers can tell "not
    sent" from NULL; binary values are returned as their raw ``bytes``. Raises
    :class:`~schemas.errors.DecodeError` if the counts differ or a value cannot be
    converted, naming the relation and column.
    """
    columns = relation.columns
    if len(values) != len(columns):
        raise DecodeError(
            f"relation {relation.namespace}.{relation.name}: tuple has {len(values)} "
            f"columns, relation has {len(columns)}"
        )
    row: dict[str, object] = {}
    for column, value in zip(columns, values, strict=True):
        if type(value) is bytes:
            try:
                row[column.name] = converter_for(column.type_oid)(value.decode())
            except CONVERSION_ERRORS as exc:
                raise DecodeError(
                    f"relation {relation.namespace}.{relation.name} column {column.name}: "
                    f"cannot convert {value!r} as type oid {column.type_oid}: {exc}"
                ) from exc
        elif value is NULL:
            row[column.name] = None
        elif isinstance(value, BinaryValue):
            row[column.name] = value.data
        else:
            row[column.name] = value
    return row
