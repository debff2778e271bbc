"""A compiled Avro binary reader for hot paths (the sinks decode every canonical event).

``compile_reader(schema)`` turns a writer schema (its JSON form, or :mod:`fastavro`'s
parsed form) into one closure per type node, resolved once, and one generated function
per record that reads its strings and longs (plain or optional) inline; reading a datum
then costs about one Python call per record and no per-call schema walking. It gives the datum
:func:`fastavro.schemaless_reader` gives for the same bytes and schema (no reader schema):
records as dicts in field order, ``decimal`` as :class:`~decimal.Decimal` (the schema's
precision), ``date`` as :class:`datetime.date`, ``timestamp-millis``/``-micros`` as UTC
:class:`datetime.datetime`.

``compile_split_reader(schema, leading)`` reads a record in two steps: its leading fields
(up to the last of ``leading``) first, the rest only when asked, from the same bytes, so
a caller that decides on the leading fields alone (a sink skipping an event it applied
already, by its version) never reads the rest. Both steps together give the datum
``compile_reader`` gives.

Supported: every primitive, records, arrays, maps, enums, fixed, unions, and the logical
types above. Any other logical type raises :class:`~schemas.errors.ConfigError` at
compile time, so callers keep :mod:`fastavro` for such schemas. Bytes that do not hold a
datum of the schema (truncated, a bad union index, trailing bytes, invalid UTF-8) raise
:class:`~schemas.errors.DecodeError`.

Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Collection, Mapping
from decimal import Context
from typing import Any

from schemas.avro_writer import SchemaCompiler, full_name
from schemas.errors import ConfigError, DecodeError

__all__ = ["Read", "SplitReader", "compile_reader", "compile_split_reader"]

Read = Callable[[bytes, int], tuple[Any, int]]
"""Reads one datum from ``data`` at ``pos``; returns it and the position after it."""

_FLOAT = struct.Struct("<f").unpack_from
_DOUBLE = struct.Struct("<d").unpack_from
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DAYS_SHIFT = dt.date(1970, 1, 1).toordinal()


class _TruncatedError(Exception):
    """A length or position past the end of the data."""


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at ``pos``; the value and the position after it."""
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _read_null(data: bytes, pos: int) -> tuple[Any, int]:
    return None, pos


def _read_boolean(data: bytes, pos: int) -> tuple[Any, int]:
    return data[pos] == 1, pos + 1


def _read_float(data: bytes, pos: int) -> tuple[Any, int]:
    return _FLOAT(data, pos)[0], pos + 4


def _read_double(data: bytes, pos: int) -> tuple[Any, int]:
    return _DOUBLE(data, pos)[0], pos + 8


def _read_bytes(data: bytes, pos: int) -> tuple[Any, int]:
    n, pos = read_long(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise _TruncatedError
    return data[pos:end], end


def _read_string(data: bytes, pos: int) -> tuple[Any, int]:
    b = data[pos]
    if b < 0x80:  # a string shorter than 64 bytes: its length in one byte
        n = b >> 1 if not b & 1 else -1
        pos += 1
    else:
        n, pos = read_long(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise _TruncatedError
    return data[pos:end].decode(), end


def _read_optional_string(data: bytes, pos: int) -> tuple[Any, int]:
    """``["null", "string"]``, the most common field of canonical events, in one call."""
    index = data[pos]
    if index == 0:
        return None, pos + 1
    if index != 2:  # zig-zag 1
        raise DecodeError(f"union index byte {index} out of range")
    b = data[pos + 1]
    if b < 0x80:  # shorter than 64 bytes: the length in one byte (as _read_string)
        n = b >> 1 if not b & 1 else -1
        pos += 2
    else:
        n, pos = read_long(data, pos + 1)
    end = pos + n
    if n < 0 or end > len(data):
        raise _TruncatedError
    return data[pos:end].decode(), end


_PRIMITIVE_READERS: dict[str, Read] = {
    "null": _read_null,
    "boolean": _read_boolean,
    "int": read_long,
    "long": read_long,
    "float": _read_float,
    "double": _read_double,
    "bytes": _read_bytes,
    "string": _read_string,
}


def _decimal(read: Read, precision: int, scale: int) -> Read:
    context = Context(prec=precision)

    def decode(data: bytes, pos: int) -> tuple[Any, int]:
        raw, pos = read(data, pos)
        unscaled = int.from_bytes(raw, "big", signed=True)
        return context.create_decimal(unscaled).scaleb(-scale, context), pos

    return decode


def _date(data: bytes, pos: int) -> tuple[Any, int]:
    days, pos = read_long(data, pos)
    return dt.date.fromordinal(days + _DAYS_SHIFT), pos


def _timestamp(unit_us: int) -> Read:
    def read(data: bytes, pos: int) -> tuple[Any, int]:
        value, pos = read_long(data, pos)
        return _EPOCH + dt.timedelta(microseconds=value * unit_us), pos

    return read


def _fixed(size: int) -> Read:
    def read(data: bytes, pos: int) -> tuple[Any, int]:
        end = pos + size
        if end > len(data):
            raise _TruncatedError
        return data[pos:end], end

    return read


def _blocks(item: Callable[[bytes, int, list[Any]], int]) -> Callable[[bytes, int, list[Any]], int]:
    """Reads Avro blocks (count, [byte size,] items ...) until the empty block."""

    def read(data: bytes, pos: int, out: list[Any]) -> int:
        while True:
            count, pos = read_long(data, pos)
            if count == 0:
                return pos
            if count < 0:
                count = -count
                _, pos = read_long(data, pos)  # the block's byte size
            for _ in range(count):
                pos = item(data, pos, out)

    return read


def _array(item: Read) -> Read:
    def one(data: bytes, pos: int, out: list[Any]) -> int:
        value, pos = item(data, pos)
        out.append(value)
        return pos

    blocks = _blocks(one)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        out: list[Any] = []
        return out, blocks(data, pos, out)

    return read


def _map(value_reader: Read) -> Read:
    def one(data: bytes, pos: int, out: list[Any]) -> int:
        key, pos = _read_string(data, pos)
        value, pos = value_reader(data, pos)
        out.append((key, value))
        return pos

    blocks = _blocks(one)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        pairs: list[Any] = []
        pos = blocks(data, pos, pairs)
        return dict(pairs), pos

    return read


def _enum(symbols: tuple[str, ...]) -> Read:
    def read(data: bytes, pos: int) -> tuple[Any, int]:
        index, pos = read_long(data, pos)
        if not 0 <= index < len(symbols):
            raise DecodeError(f"enum index {index} out of range")
        return symbols[index], pos

    return read


def _inline(i: int, reader: Read, scope: dict[str, Any], indent: str) -> list[str]:
    """Source lines reading field ``i`` at ``pos`` into ``v<i>``, advancing ``pos``."""
    if reader is _read_string:
        body = [
            "n = data[pos]",
            "if n < 0x80:  # shorter than 64 bytes: the length in one byte",
            "    n = n >> 1 if not n & 1 else -1",
            "    pos += 1",
            "else:",
            "    n, pos = read_long(data, pos)",
            "end = pos + n",
            "if n < 0 or end > size:",
            "    raise Truncated",
            f"v{i} = data[pos:end].decode()",
            "pos = end",
        ]
    elif reader is read_long:
        body = [
            "n = data[pos]",
            "if n < 0x80:  # within -64..63: one byte",
            f"    v{i} = (n >> 1) ^ -(n & 1)",
            "    pos += 1",
            "else:",
            f"    v{i}, pos = read_long(data, pos)",
        ]
    else:
        scope[f"r{i}"] = reader
        body = [f"v{i}, pos = r{i}(data, pos)"]
    return [indent + line for line in body]


class _Compiler(SchemaCompiler[Read]):
    primitives = _PRIMITIVE_READERS

    def __init__(self) -> None:
        super().__init__()
        self.optional_of: dict[Read, Read] = {}
        """``["null", X]`` readers made here -> the reader of X (inlined in records)."""
        self.fields_of: dict[str, list[tuple[str, Read]]] = {}
        """Per record (full name): its fields' names and readers, in order."""

    def _enum(self, schema: Mapping[str, Any], namespace: str | None) -> Read:
        name = full_name(schema["name"], schema.get("namespace", namespace))
        self.named[name] = reader = _enum(tuple(schema["symbols"]))
        return reader

    def _fixed(self, schema: Mapping[str, Any], namespace: str | None) -> Read:
        name = full_name(schema["name"], schema.get("namespace", namespace))
        reader = _fixed(int(schema["size"]))
        logical = schema.get("logicalType")
        if logical == "decimal":
            reader = _decimal(reader, int(schema["precision"]), int(schema.get("scale", 0)))
        elif logical is not None:
            raise ConfigError(f"logical type {logical!r} is read by fastavro")
        self.named[name] = reader
        return reader

    def _array_of(self, item: Read) -> Read:
        return _array(item)

    def _map_of(self, value: Read) -> Read:
        return _map(value)

    def _annotated(self, schema: Mapping[str, Any], kind: Any, namespace: str | None) -> Read:
        logical = schema.get("logicalType")
        if logical is None:
            return self.compile(kind, namespace)
        if logical == "decimal" and kind == "bytes":
            return _decimal(_read_bytes, int(schema["precision"]), int(schema.get("scale", 0)))
        if logical == "date" and kind == "int":
            return _date
        if logical == "timestamp-micros" and kind == "long":
            return _timestamp(1)
        if logical == "timestamp-millis" and kind == "long":
            return _timestamp(1000)
        raise ConfigError(f"logical type {logical!r} on {kind!r} is read by fastavro")

    def _deferred(self, name: str) -> Read:
        named = self.named

        def read(data: bytes, pos: int) -> tuple[Any, int]:
            return named[name](data, pos)

        return read

    def _record(self, schema: Mapping[str, Any], namespace: str | None) -> Read:
        name = full_name(schema["name"], schema.get("namespace", namespace))
        ns = name.rpartition(".")[0] or None
        compiled: list[Read] = []

        def read(data: bytes, pos: int) -> tuple[Any, int]:
            return compiled[0](data, pos)

        self.named[name] = read  # a recursive reference finds it while the fields compile
        self.in_progress.add(name)
        fields = [(f["name"], self.compile(f["type"], ns)) for f in schema["fields"]]
        self.fields_of[name] = fields
        self.in_progress.discard(name)
        compiled.append(self._record_function(name, fields))
        self.named[name] = compiled[0]
        return compiled[0]

    def _record_function(self, name: str, fields: list[tuple[str, Read]]) -> Read:
        """One function reading the record's fields in order, the common ones inline.

        Strings, longs and their optional forms are read in the function's own body (the
        one-byte length or value, the common case, without a call); any other field
        calls its reader. It reads exactly what the readers of the fields would.
        """
        scope: dict[str, Any] = {
            "read_long": read_long,
            "DecodeError": DecodeError,
            "Truncated": _TruncatedError,
        }
        lines = ["def read_record(data, pos):", "    size = len(data)"]
        for i, (_, reader) in enumerate(fields):
            other = self.optional_of.get(reader)
            if reader is _read_optional_string:
                other = _read_string
            if other is not None:
                lines += [
                    "    b = data[pos]",
                    "    if b == 0:",
                    f"        v{i} = None",
                    "        pos += 1",
                    "    elif b == 2:",
                    "        pos += 1",
                    *_inline(i, other, scope, "        "),
                    "    else:",
                    '        raise DecodeError(f"union index byte {b} out of range")',
                ]
            else:
                lines += _inline(i, reader, scope, "    ")
        items = ", ".join(f"{field_name!r}: v{i}" for i, (field_name, _) in enumerate(fields))
        lines.append(f"    return {{{items}}}, pos")
        code = compile("\n".join(lines), f"<avro reader of {name}>", "exec")
        exec(code, scope)  # noqa: S102 - source made above from the schema's field names
        function: Read = scope["read_record"]
        return function

    def _union(self, branches: list[Any], namespace: str | None) -> Read:
        readers = tuple(self.compile(b, namespace) for b in branches)
        if len(readers) == 2 and branches[0] == "null":
            other = readers[1]
            if other is _read_string:
                return _read_optional_string

            def read_optional(data: bytes, pos: int) -> tuple[Any, int]:
                index = data[pos]
                if index == 0:
                    return None, pos + 1
                if index == 2:  # zig-zag 1
                    return other(data, pos + 1)
                raise DecodeError(f"union index byte {index} out of range")

            self.optional_of[read_optional] = other
            return read_optional

        def read_union(data: bytes, pos: int) -> tuple[Any, int]:
            index, pos = read_long(data, pos)
            if not 0 <= index < len(readers):
                raise DecodeError(f"union index {index} out of range")
            return readers[index](data, pos)

        return read_union


def _reading(read: Read, data: bytes, pos: int) -> tuple[Any, int]:
    """``read(data, pos)``, any failure of the bytes raised as :class:`DecodeError`."""
    try:
        return read(data, pos)
    except DecodeError:
        raise
    except (_TruncatedError, IndexError, struct.error) as exc:
        raise DecodeError("Avro body is truncated") from exc
    except (UnicodeDecodeError, ValueError, OverflowError, ArithmeticError) as exc:
        raise DecodeError(f"Avro body does not decode with its schema: {exc!r}") from exc


def _to_the_end(data: bytes, end: int) -> None:
    if end != len(data):
        raise DecodeError(f"Avro body has {len(data) - end} bytes after the datum")


def compile_reader(schema: Mapping[str, Any] | list[Any] | str) -> Callable[..., Any]:
    """Compile a writer schema into a function returning the datum in an Avro body.

    The function takes the bytes and, optionally, where in them the body starts (a
    wire-format message is read in place, past its header, without copying its body).
    The whole rest must be consumed: trailing bytes mean it was not written with that
    schema.

    Raises:
        ConfigError: at compile time, for a schema with a type this reader leaves to
            :mod:`fastavro` (a logical type other than those in the module doc).
    """
    root = _Compiler().compile(schema, None)

    def read(body: bytes, start: int = 0) -> Any:
        datum, end = _reading(root, body, start)
        _to_the_end(body, end)
        return datum

    return read


class SplitReader:
    """A record schema's reader in two steps (see :func:`compile_split_reader`).

    ``head(data, pos)``: the leading fields of the record whose body starts at ``pos``,
    as a dict in field order, and the position after them. ``rest(data, pos)``: the
    other fields, from the position ``head`` returned, as a dict in field order; the
    body must end with them. Both raise :class:`~schemas.errors.DecodeError` for bytes
    that do not hold a datum of the schema.
    """

    def __init__(self, head: Read, rest: Read) -> None:
        self._head = head
        self._rest = rest

    def head(self, data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        """The leading fields and the position after them."""
        head: tuple[dict[str, Any], int] = _reading(self._head, data, pos)
        return head

    def rest(self, data: bytes, pos: int) -> dict[str, Any]:
        """The remaining fields, read to the end of ``data``."""
        datum, end = _reading(self._rest, data, pos)
        _to_the_end(data, end)
        rest: dict[str, Any] = datum
        return rest


def compile_split_reader(schema: Mapping[str, Any], leading: Collection[str]) -> SplitReader:
    """Compile a record schema into a reader of its leading fields first, the rest later.

    The head reads the record's fields in order up to the last of ``leading`` (every
    one of them a field of the record); the rest reads the others. A record whose
    fields are all leading has an empty rest.

    Raises:
        ConfigError: the schema is not a record, a name in ``leading`` is not one of its
            fields, or a type this reader leaves to :mod:`fastavro` (see
            :func:`compile_reader`).
    """
    if not isinstance(schema, Mapping) or schema.get("type") not in ("record", "error"):
        raise ConfigError("a split reader reads records only")
    compiler = _Compiler()
    compiler.compile(schema, None)
    fields = compiler.fields_of[full_name(schema["name"], schema.get("namespace"))]
    names = [name for name, _ in fields]
    missing = sorted(set(leading) - set(names))
    if missing:
        raise ConfigError(f"the record has no fields {', '.join(missing)}")
    cut = max((names.index(name) + 1 for name in leading), default=0)
    name = str(schema["name"])
    return SplitReader(
        compiler._record_function(f"{name} (head)", fields[:cut]),
        compiler._record_function(f"{name} (rest)", fields[cut:]),
    )
