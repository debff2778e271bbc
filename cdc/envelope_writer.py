"""Change events written straight from pgoutput tuples: one compiled writer per table.

The streaming hot path. :class:`EnvelopeWriter` turns the text values of a decoded tuple
into the Confluent-framed Avro bytes of the message key and of the Debezium envelope,
without the row dictionaries and envelope datum that :func:`~cdc.decoding.tuple_to_dict`,
:func:`~cdc.envelope.envelope_record` and :meth:`~schemas.serde.AvroSerde.encode_with`
build on the way. Each column gets, once per table version, a writer for its type: text
types copy the bytes PostgreSQL sent, integers and booleans are encoded from them
directly, other types go through their converter (:mod:`cdc.values`) and their datum
function (:class:`~cdc.envelope.ColumnEncoding`).

The bytes are exactly those of the generic path (a property test holds the two equal).
Whatever the compiled writer does not handle, it refuses with :class:`Uncompiled` before
anything is sent, and the caller takes the generic path, which writes the event or
raises its error: a value that fails to convert, an unchanged TOASTed or binary value, a
tuple whose column count differs from the table's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from cdc.decoding import NULL, TupleData, TupleValue
from cdc.envelope import TableShape, column_encodings, key_schema
from cdc.values import CONVERTERS, TypeOid, converter_for
from schemas.avro_writer import Write, compile_appender, write_long, write_utf8
from schemas.serde import WriterSchema, pack

__all__ = ["EnvelopeWriter", "SourceTemplate", "TransactionWriter", "Uncompiled"]

_ColumnWrite = Callable[[bytearray, TupleValue], None]

_TEXT_OIDS: Final = frozenset(
    oid
    for oid in (TypeOid.TEXT, TypeOid.VARCHAR, TypeOid.BPCHAR, TypeOid.NAME)
    if CONVERTERS[int(oid)] is CONVERTERS[int(TypeOid.TEXT)]
)
_INT_OIDS: Final = frozenset({int(TypeOid.INT2), int(TypeOid.INT4), int(TypeOid.INT8)})
_ENVELOPE_FIELDS: Final = (
    "before",
    "after",
    "source",
    "transaction",
    "op",
    "ts_ms",
    "ts_us",
    "ts_ns",
)


class Uncompiled(Exception):  # noqa: N818 - a signal to take the generic path, not an error
    """The compiled writer does not handle this tuple: use the generic path."""


def _text(tag: bytes, null: bytes | None) -> _ColumnWrite:
    def write(buf: bytearray, value: TupleValue) -> None:
        if type(value) is bytes:
            buf += tag
            write_utf8(buf, value)
        elif value is NULL and null is not None:
            buf += null
        else:
            raise Uncompiled

    return write


_INT_BOUNDS: Final = {"int2": 2**15, "int4": 2**31, "int8": 2**63}


def _integer(tag: bytes, null: bytes | None, bound: int) -> _ColumnWrite:
    def write(buf: bytearray, value: TupleValue) -> None:
        if type(value) is bytes:
            try:
                number = int(value)
            except ValueError:
                raise Uncompiled from None
            if not -bound <= number < bound:
                raise Uncompiled
            buf += tag
            write_long(buf, number)
        elif value is NULL and null is not None:
            buf += null
        else:
            raise Uncompiled

    return write


def _boolean(tag: bytes, null: bytes | None) -> _ColumnWrite:
    def write(buf: bytearray, value: TupleValue) -> None:
        if value == b"t":
            buf += tag
            buf.append(1)
        elif value == b"f":
            buf += tag
            buf.append(0)
        elif value is NULL and null is not None:
            buf += null
        else:
            raise Uncompiled

    return write


def _decimal(tag: bytes, precision: int, scale: int, other: _ColumnWrite) -> _ColumnWrite:
    """``numeric(p, s)`` as Avro decimal bytes, from PostgreSQL's text (``-12.30``).

    Anything else (NULL, ``NaN``) is left to ``other``.
    """
    limit = 10**precision

    def write(buf: bytearray, value: TupleValue) -> None:
        if type(value) is bytes:
            whole, _dot, fraction = value.partition(b".")
            digits = whole[1:] if whole[:1] == b"-" else whole
            if len(fraction) <= scale and digits.isdigit() and (fraction.isdigit() or not fraction):
                n = int(whole + fraction) * 10 ** (scale - len(fraction))
                if -limit < n < limit:
                    data = n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)
                    buf += tag
                    write_long(buf, len(data))
                    buf += data
                    return
        other(buf, value)

    return write


def _zoned_timestamp(tag: bytes, width: int | None, other: _ColumnWrite) -> _ColumnWrite:
    """``timestamptz`` in UTC (``2026-12-06 09:00:00.5+00``) as Debezium's ZonedTimestamp.

    Anything else (NULL, other offsets, years beyond four digits, BC, infinities) is left
    to ``other``.
    """
    digits = None if width is None else min(width, 9)

    def write(buf: bytearray, value: TupleValue) -> None:
        if (
            type(value) is not bytes
            or len(value) < 22
            or value[-3:] != b"+00"
            or value[10] != 0x20  # " "
            or not value[:4].isdigit()
        ):
            other(buf, value)
            return
        fraction = value[19:-3]
        if fraction:
            if fraction[0] != 0x2E or not fraction[1:].isdigit() or len(fraction) > 7:  # "."
                other(buf, value)
                return
            fraction = fraction[1:]
        if digits is None:
            fraction = fraction.rstrip(b"0")
            text = value[:10] + b"T" + value[11:19] + (b"." + fraction if fraction else b"") + b"Z"
        elif digits:
            text = value[:10] + b"T" + value[11:19] + b"." + fraction.ljust(digits, b"0") + b"Z"
        else:
            text = value[:10] + b"T" + value[11:19] + b"Z"
        buf += tag
        write_utf8(buf, text)

    return write


def _converted(
    field: Write, parse: Callable[[str], object], convert: Callable[[Any], Any], null: bytes | None
) -> _ColumnWrite:
    def write(buf: bytearray, value: TupleValue) -> None:
        if type(value) is bytes:
            try:
                field(buf, convert(parse(value.decode())))
            except Exception as exc:  # the generic path knows what each failure means
                raise Uncompiled from exc
        elif value is NULL and null is not None:
            buf += null
        else:
            raise Uncompiled

    return write


def _column_writer(
    field_type: Any,
    type_oid: int,
    base: str,
    is_array: bool,
    convert: Any,
    width: int | None,
    null: Any,
) -> _ColumnWrite:
    """One column's writer for ``field_type`` (its Avro type in the registered schema).

    ``null`` is the datum of a NULL value, or ``Uncompiled`` when NULL is refused (key).
    """
    field = compile_appender(field_type)
    nullable = isinstance(field_type, list)
    tag = b"\x02" if nullable else b""  # the union's second branch: ["null", type]
    null_bytes: bytes | None = None
    if null is not Uncompiled:
        buf = bytearray()
        field(buf, null)
        null_bytes = bytes(buf)
    if not is_array and type_oid in _TEXT_OIDS and base in {"text", "varchar", "bpchar", "name"}:
        return _text(tag, null_bytes)
    if not is_array and type_oid in _INT_OIDS and base in {"int2", "int4", "int8"}:
        return _integer(tag, null_bytes, _INT_BOUNDS[base])
    if not is_array and type_oid == TypeOid.BOOL and base == "bool":
        return _boolean(tag, null_bytes)
    converted = _converted(field, converter_for(type_oid), convert, null_bytes)
    avro = field_type[1] if nullable else field_type
    if is_array or not isinstance(avro, Mapping):
        return converted
    if (
        type_oid == TypeOid.NUMERIC
        and avro.get("logicalType") == "decimal"
        and avro.get("type") == "bytes"
    ):
        return _decimal(tag, int(avro["precision"]), int(avro.get("scale", 0)), converted)
    if (
        type_oid == TypeOid.TIMESTAMPTZ
        and avro.get("connect.name") == "io.debezium.time.ZonedTimestamp"
    ):
        return _zoned_timestamp(tag, width, converted)
    return converted


def _record_fields(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {f["name"]: f["type"] for f in schema["fields"]}


class SourceTemplate:
    """The ``source`` block of one table's events in one transaction, minus what varies.

    Made by :meth:`EnvelopeWriter.source_template`; :meth:`write` adds ``sequence`` and
    ``lsn``.
    """

    __slots__ = ("_head", "_middle", "_tail")

    def __init__(self, fields: Sequence[tuple[str, Write]], datum: Mapping[str, Any]) -> None:
        parts: list[bytearray] = [bytearray()]
        for name, write in fields:
            if name in ("sequence", "lsn"):
                parts.append(bytearray())
            else:
                write(parts[-1], datum[name])
        self._head, self._middle, self._tail = (bytes(p) for p in parts)

    def write(self, buf: bytearray, sequence: str, lsn: int) -> None:
        """Append the block with this event's ``sequence`` and ``lsn``."""
        buf += self._head
        buf.append(2)
        write_utf8(buf, sequence.encode())
        buf += self._middle
        buf.append(2)
        write_long(buf, lsn)
        buf += self._tail


class EnvelopeWriter:
    """Key and value bytes of one table's change events (module docstring).

    ``value_schema`` is the envelope schema registered as ``value`` (its column
    nullability may be wider than the table's, after a column was added); the key
    schema is :func:`~cdc.envelope.key_schema` of ``shape``, registered as ``key``.
    """

    def __init__(
        self,
        shape: TableShape,
        type_oids: Sequence[int],
        key: WriterSchema,
        value: WriterSchema,
        value_schema: Mapping[str, Any],
    ) -> None:
        envelope = _record_fields(value_schema)
        if tuple(envelope) != _ENVELOPE_FIELDS:
            raise ValueError(f"not an envelope schema: fields {tuple(envelope)}")
        row_types = _record_fields(envelope["before"][1])
        key_types = _record_fields(key_schema(shape))
        self._source_fields = tuple(
            (f["name"], compile_appender(f["type"])) for f in envelope["source"]["fields"]
        )
        self._width = len(shape.columns)
        columns: list[_ColumnWrite] = []
        keys: list[tuple[int, _ColumnWrite]] = []
        encodings = column_encodings(shape)
        names = list(row_types)  # in column order, as value_schema writes them
        for index, (column, oid, enc) in enumerate(
            zip(shape.columns, type_oids, encodings, strict=True)
        ):
            name = names[index]
            kind = (oid, enc.base_type, enc.is_array, enc.convert, column.numeric_scale)
            columns.append(_column_writer(row_types[name], *kind, enc.null_datum))
            if column.is_key:
                keys.append((index, _column_writer(key_types[name], *kind, Uncompiled)))
        self._columns = tuple(columns)
        self._keys = tuple(keys)
        self._key_indexes = tuple(index for index, _ in keys)
        self._key_prefix = pack(key.schema_id, b"")
        self._value_prefix = pack(value.schema_id, b"")

    def source_template(self, datum: Mapping[str, Any]) -> SourceTemplate:
        """The fixed part of a ``source`` block (datum: ``SourceInfo.as_record()``)."""
        return SourceTemplate(self._source_fields, datum)

    def _row(self, buf: bytearray, values: TupleData) -> None:
        if len(values) != self._width:
            raise Uncompiled
        for write, value in zip(self._columns, values):  # noqa: B905 - width checked above
            write(buf, value)

    def key(self, values: TupleData) -> bytes:
        """The message key of the row ``values``; :class:`Uncompiled` if not handled."""
        if len(values) != self._width or not self._keys:
            raise Uncompiled
        buf = bytearray(self._key_prefix)
        for index, write in self._keys:
            write(buf, values[index])
        return bytes(buf)

    def key_changed(self, old: TupleData, new: TupleData) -> bool:
        """Whether the key columns differ between two tuples (as PostgreSQL sent them)."""
        if len(old) != self._width or len(new) != self._width:
            raise Uncompiled
        return any(old[i] != new[i] for i in self._key_indexes)

    def value(
        self,
        op: str,
        before: TupleData | None,
        after: TupleData | None,
        source: SourceTemplate,
        sequence: str,
        lsn: int,
        transaction: str,
        total_order: int,
        collection_order: int,
        ts_ms: int,
    ) -> bytes:
        """The envelope of one change; :class:`Uncompiled` if not handled."""
        buf = bytearray(self._value_prefix)
        for row in (before, after):
            if row is None:
                buf.append(0)
            else:
                buf.append(2)
                self._row(buf, row)
        source.write(buf, sequence, lsn)
        buf.append(2)
        write_utf8(buf, transaction.encode())
        write_long(buf, total_order)
        write_long(buf, collection_order)
        write_utf8(buf, op.encode())
        buf.append(2)
        write_long(buf, ts_ms)
        buf += b"\x00\x00"  # ts_us, ts_ns: null
        return bytes(buf)


class TransactionWriter:
    """Key and value bytes of the ``<system>.transaction`` topic's BEGIN and END records.

    Byte for byte what :func:`~cdc.envelope.transaction_begin_record` and
    :func:`~cdc.envelope.transaction_end_record` encoded with the registered schemas
    (``key`` and ``value``, :func:`~cdc.envelope.transaction_key_schema` and
    :func:`~cdc.envelope.transaction_value_schema`) give.
    """

    def __init__(self, key: WriterSchema, value: WriterSchema) -> None:
        self._key_prefix = pack(key.schema_id, b"")
        self._value_prefix = pack(value.schema_id, b"")

    def key(self, transaction: str) -> bytes:
        """The record key: the transaction id."""
        buf = bytearray(self._key_prefix)
        write_utf8(buf, transaction.encode())
        return bytes(buf)

    def begin(self, transaction: str, ts_ms: int) -> bytes:
        """The BEGIN record (``ts_ms``: the commit time)."""
        buf = bytearray(self._value_prefix)
        write_utf8(buf, b"BEGIN")
        write_utf8(buf, transaction.encode())
        buf += b"\x00\x00"  # event_count, data_collections: null
        write_long(buf, ts_ms)
        return bytes(buf)

    def end(self, transaction: str, ts_ms: int, event_counts: Mapping[str, int]) -> bytes:
        """The END record with the events per data collection, in the mapping's order."""
        buf = bytearray(self._value_prefix)
        write_utf8(buf, b"END")
        write_utf8(buf, transaction.encode())
        buf.append(2)
        write_long(buf, sum(event_counts.values()))
        buf.append(2)
        if event_counts:
            write_long(buf, len(event_counts))
            for name, count in event_counts.items():
                buf.append(2)
                write_utf8(buf, name.encode())
                write_long(buf, count)
        buf.append(0)
        write_long(buf, ts_ms)
        return bytes(buf)
