"""A compiled Avro binary writer for hot paths.

``compile_writer(schema)`` turns a schema (the JSON form, as registered) into one closure
per type node, resolved once; writing a datum then costs a few Python calls per field and
no per-call schema walking or union validation. The output is standard Avro binary: any
Avro reader (fastavro, Java, Confluent deserializers) decodes it to the same datum.

Supported: every primitive, records, arrays, maps, enums, fixed, unions (``None`` picks
``null``; a ``(name, value)`` tuple picks a named branch; otherwise the first branch whose
Python type fits), and the logical types ``decimal`` (bytes and fixed), ``date``,
``time-micros``, ``timestamp-millis``/``-micros`` and ``uuid``. A datum that does not fit
raises :class:`~schemas.errors.ValidationError`.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal
from typing import Any, Generic, TypeVar

from schemas.errors import ConfigError, ValidationError

Write = Callable[[bytearray, Any], None]

_FLOAT = struct.Struct("<f").pack
_DOUBLE = struct.Struct("<d").pack
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DATE = dt.date(1970, 1, 1)
_MISSING: Any = object()
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


T = TypeVar("T")


def full_name(name: str, namespace: str | None) -> str:
    """An Avro name qualified by its enclosing namespace (unless it has its own)."""
    return name if "." in name or not namespace else f"{namespace}.{name}"


def named_reference(
    named: Mapping[str, T],
    in_progress: Collection[str],
    schema: str,
    namespace: str | None,
    deferred: Callable[[str], T],
) -> T:
    """What a compiler made for the named type ``schema`` refers to.

    A type still being compiled (a recursive reference) gets ``deferred(name)``, which
    looks it up when it is used.

    Raises:
        ConfigError: no such type was defined before.
    """
    name = full_name(schema, namespace)
    if name not in named and schema in named:
        name = schema
    if name not in named:
        raise ConfigError(f"unknown Avro type {schema!r}")
    if name in in_progress:
        return deferred(name)
    return named[name]


class SchemaCompiler(ABC, Generic[T]):
    """The walk over an Avro schema that the compiled writer and reader share.

    It resolves names (a named type is registered in ``named`` under its full name; a
    reference to one still being compiled, in ``in_progress``, gets :meth:`_deferred`),
    and dispatches on the kind of each node; subclasses make what each kind becomes.
    """

    primitives: Mapping[str, T]
    """What each primitive type name becomes."""

    def __init__(self) -> None:
        self.named: dict[str, T] = {}
        self.in_progress: set[str] = set()

    def compile(self, schema: Any, namespace: str | None) -> T:
        """What ``schema`` (a node of the JSON form) becomes, in ``namespace``.

        Raises:
            ConfigError: not an Avro schema, an unknown name, or a type the subclass
                leaves alone.
        """
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return self.primitives[schema]
            return named_reference(self.named, self.in_progress, schema, namespace, self._deferred)
        if isinstance(schema, list):
            return self._union(schema, namespace)
        if not isinstance(schema, Mapping):
            raise ConfigError(f"not an Avro schema: {schema!r}")
        kind = schema.get("type")
        if kind in ("record", "error"):
            return self._record(schema, namespace)
        if kind == "enum":
            return self._enum(schema, namespace)
        if kind == "fixed":
            return self._fixed(schema, namespace)
        if kind == "array":
            return self._array_of(self.compile(schema["items"], namespace))
        if kind == "map":
            return self._map_of(self.compile(schema["values"], namespace))
        return self._annotated(schema, kind, namespace)

    @abstractmethod
    def _deferred(self, name: str) -> T:
        """A stand-in for the named type ``name``, looked up in ``named`` when used."""

    @abstractmethod
    def _union(self, branches: list[Any], namespace: str | None) -> T: ...

    @abstractmethod
    def _record(self, schema: Mapping[str, Any], namespace: str | None) -> T: ...

    @abstractmethod
    def _enum(self, schema: Mapping[str, Any], namespace: str | None) -> T: ...

    @abstractmethod
    def _fixed(self, schema: Mapping[str, Any], namespace: str | None) -> T: ...

    @abstractmethod
    def _array_of(self, item: T) -> T: ...

    @abstractmethod
    def _map_of(self, value: T) -> T: ...

    @abstractmethod
    def _annotated(self, schema: Mapping[str, Any], kind: Any, namespace: str | None) -> T:
        """``kind`` given as an object with attributes (a logical type, say)."""


def write_long(buf: bytearray, value: int) -> None:
    """Append ``value`` as a zig-zag varint."""
    n = (value << 1) ^ (value >> 63)
    while n > 0x7F:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def _write_null(buf: bytearray, value: Any) -> None:
    if value is not None:
        raise ValidationError(f"expected null, got {type(value).__name__}")


def _write_boolean(buf: bytearray, value: Any) -> None:
    buf.append(1 if value else 0)


def _write_int(buf: bytearray, value: Any) -> None:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValidationError(f"expected an integer, got {type(value).__name__}")
    write_long(buf, value)


def _ranged(low: int, high: int, kind: str) -> Write:
    """A zig-zag varint writer that rejects values outside ``low..high`` (hot path)."""

    def write(buf: bytearray, value: Any) -> None:
        if type(value) is not int or not low <= value <= high:
            _write_int(buf, value)  # accepts int subclasses, rejects the rest
            if not low <= value <= high:
                raise ValidationError(f"{value} does not fit an Avro {kind}")
            return
        n = (value << 1) ^ (value >> 63)
        while n > 0x7F:
            buf.append((n & 0x7F) | 0x80)
            n >>= 7
        buf.append(n)

    return write


_write_int32 = _ranged(-(2**31), 2**31 - 1, "int")
_write_long = _ranged(-(2**63), 2**63 - 1, "long")


def _write_float(buf: bytearray, value: Any) -> None:
    buf += _FLOAT(value)


def _write_double(buf: bytearray, value: Any) -> None:
    buf += _DOUBLE(value)


def _write_bytes(buf: bytearray, value: Any) -> None:
    write_long(buf, len(value))
    buf += value


def write_utf8(buf: bytearray, data: bytes) -> None:
    """Append ``data``, already UTF-8 text, as an Avro string."""
    n = len(data)
    if n < 64:
        buf.append(n << 1)
    else:
        write_long(buf, n)
    buf += data


def _write_string(buf: bytearray, value: Any) -> None:
    if type(value) is not str:
        raise ValidationError(f"expected a string, got {type(value).__name__}")
    write_utf8(buf, value.encode())


_PRIMITIVE_WRITERS: dict[str, Write] = {
    "null": _write_null,
    "boolean": _write_boolean,
    "int": _write_int32,
    "long": _write_long,
    "float": _write_float,
    "double": _write_double,
    "bytes": _write_bytes,
    "string": _write_string,
}


def _unscaled(value: Any, scale: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        scaled: int = int(value) * 10**scale
        return scaled
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValidationError(f"expected a finite Decimal, got {value!r}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > scale:
        raise ValidationError(f"{value} has more than {scale} decimal places")
    return int(value.scaleb(scale))  # exact: the exponent is now >= 0


def _decimal_bytes(scale: int) -> Write:
    def write(buf: bytearray, value: Any) -> None:
        n = _unscaled(value, scale)
        data = n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)
        write_long(buf, len(data))
        buf += data

    return write


def _decimal_fixed(scale: int, size: int) -> Write:
    def write(buf: bytearray, value: Any) -> None:
        buf += _unscaled(value, scale).to_bytes(size, "big", signed=True)

    return write


def _date(buf: bytearray, value: Any) -> None:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = (value - _EPOCH_DATE).days
    _write_int(buf, value)


def _timestamp(unit: int) -> Write:
    def write(buf: bytearray, value: Any) -> None:
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            delta = value - _EPOCH
            value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            value //= unit
        _write_int(buf, value)

    return write


def _time_micros(buf: bytearray, value: Any) -> None:
    if isinstance(value, dt.time):
        value = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + (
            value.microsecond
        )
    _write_int(buf, value)


def _uuid(buf: bytearray, value: Any) -> None:
    _write_string(buf, str(value) if isinstance(value, uuid.UUID) else value)


class _Compiler(SchemaCompiler[Write]):
    primitives = _PRIMITIVE_WRITERS

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[str, str] = {}
        self.optional_of: dict[Write, tuple[Write, int, int]] = {}
        """Writers of ``null``-or-one-type unions: that type's writer and the two tags."""

    def _fixed(self, schema: Mapping[str, Any], namespace: str | None) -> Write:
        name = full_name(schema["name"], schema.get("namespace", namespace))
        size = int(schema["size"])
        if schema.get("logicalType") == "decimal":
            writer = _decimal_fixed(int(schema.get("scale", 0)), size)
        else:
            writer = _write_bytes_fixed(size)
        self.named[name] = writer
        self.kinds[name] = "fixed"
        return writer

    def _array_of(self, item: Write) -> Write:
        return _array(item)

    def _map_of(self, value: Write) -> Write:
        return _map(value)

    def _annotated(self, schema: Mapping[str, Any], kind: Any, namespace: str | None) -> Write:
        logical = schema.get("logicalType")
        if logical == "decimal" and kind == "bytes":
            return _decimal_bytes(int(schema.get("scale", 0)))
        if logical == "date" and kind == "int":
            return _date
        if logical == "timestamp-micros" and kind == "long":
            return _timestamp(1)
        if logical == "timestamp-millis" and kind == "long":
            return _timestamp(1000)
        if logical == "time-micros" and kind == "long":
            return _time_micros
        if logical == "uuid" and kind == "string":
            return _uuid
        return self.compile(kind, namespace)

    def _deferred(self, name: str) -> Write:
        named = self.named

        def write(buf: bytearray, value: Any) -> None:
            named[name](buf, value)

        return write

    def _record(self, schema: Mapping[str, Any], namespace: str | None) -> Write:
        ns = schema.get("namespace", namespace)
        name = full_name(schema["name"], ns)
        ns = name.rpartition(".")[0] or None
        self.kinds[name] = "record"
        compiled: list[Write] = []

        def write(buf: bytearray, value: Any) -> None:
            compiled[0](buf, value)

        self.named[name] = write  # a recursive reference finds it while the fields compile
        self.in_progress.add(name)
        fields = [
            (f["name"], self.compile(f["type"], ns), "default" in f, f.get("default"))
            for f in schema["fields"]
        ]
        self.in_progress.discard(name)
        compiled.append(self._record_function(name, fields))
        self.named[name] = compiled[0]
        return compiled[0]

    def _record_function(self, name: str, fields: list[tuple[str, Write, bool, Any]]) -> Write:
        """One function writing the record's fields in order, the common ones inline.

        Strings, longs and their optional forms (``null`` or the value) are written in the
        function's own body when the value has the plain type; any other value, and any
        other field, goes to its writer, which writes or refuses it as it would alone. It
        writes exactly what the writers of the fields would.
        """
        scope: dict[str, Any] = {
            "MISSING": _MISSING,
            "ValidationError": ValidationError,
            "write_long": write_long,
        }
        lines = [
            "def write_record(buf, value):",
            "    append = buf.append",
            "    try:",
            "        get = value.get",
        ]
        for i, (field, writer, has_default, default) in enumerate(fields):
            scope[f"w{i}"] = writer
            scope[f"d{i}"] = default
            lines.append(f"        v = get({field!r}, MISSING)")
            lines.append("        if v is MISSING:")
            if has_default:
                lines.append(f"            v = d{i}")
            else:
                missing = f"{name}: missing field {field!r}"
                lines.append(f"            raise ValidationError({missing!r})")
            optional = self.optional_of.get(writer)
            if optional is not None and optional[0] in (_write_string, _write_long):
                inner, null_tag, other_tag = optional
                lines += [
                    "        if v is None:",
                    f"            append({null_tag})",
                    *_inline_plain(inner, f"            append({other_tag})", "        el"),
                    "        else:",
                    f"            w{i}(buf, v)",
                ]
            elif writer in (_write_string, _write_long):
                lines += [
                    *_inline_plain(writer, None, "        "),
                    "        else:",
                    f"            w{i}(buf, v)",
                ]
            else:
                lines.append(f"        w{i}(buf, v)")
        lines += [
            "    except TypeError as exc:",
            f"        raise ValidationError({name + ': '!r} + str(exc)) from exc",
        ]
        code = compile("\n".join(lines), f"<avro writer of {name}>", "exec")
        exec(code, scope)  # noqa: S102 - source made above from the schema's field names
        function: Write = scope["write_record"]
        return function

    def _enum(self, schema: Mapping[str, Any], namespace: str | None) -> Write:
        name = full_name(schema["name"], schema.get("namespace", namespace))
        index = {symbol: i for i, symbol in enumerate(schema["symbols"])}

        def write(buf: bytearray, value: Any) -> None:
            try:
                write_long(buf, index[value])
            except KeyError:
                raise ValidationError(f"{name}: {value!r} is not a symbol") from None

        self.named[name] = write
        self.kinds[name] = "enum"
        return write

    def _union(self, branches: list[Any], namespace: str | None) -> Write:
        writers = [self.compile(b, namespace) for b in branches]
        labels = [self._label(b, namespace) for b in branches]
        if len(branches) == 2 and "null" in labels:
            null_index = labels.index("null")
            other = 1 - null_index
            other_writer = writers[other]
            null_tag, other_tag = (0, 2) if null_index == 0 else (2, 0)

            other_label = labels[other]

            def write_optional(buf: bytearray, value: Any) -> None:
                if value is None:
                    buf.append(null_tag)
                    return
                if type(value) is tuple and len(value) == 2 and value[0] == other_label:
                    value = value[1]
                buf.append(other_tag)
                other_writer(buf, value)

            self.optional_of[write_optional] = (other_writer, null_tag, other_tag)
            return write_optional
        by_label = {label: i for i, label in enumerate(labels)}

        def write_union(buf: bytearray, value: Any) -> None:
            if type(value) is tuple and len(value) == 2 and value[0] in by_label:
                i = by_label[value[0]]
                write_long(buf, i)
                writers[i](buf, value[1])
                return
            for i, label in enumerate(labels):
                if _fits(label, value):
                    write_long(buf, i)
                    writers[i](buf, value)
                    return
            raise ValidationError(f"{type(value).__name__} fits no branch of {labels}")

        return write_union

    def _label(self, schema: Any, namespace: str | None) -> str:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return schema
            name = full_name(schema, namespace)
            return name if name in self.kinds else schema
        if isinstance(schema, Mapping):
            kind = schema.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                return full_name(schema["name"], schema.get("namespace", namespace))
            if isinstance(kind, str) and kind in _PRIMITIVES:
                return kind if "logicalType" not in schema else f"{kind}:{schema['logicalType']}"
            return str(kind)
        return "union"


def _inline_plain(writer: Write, tag: str | None, head: str) -> list[str]:
    """Source writing ``v`` inline when it has ``writer``'s plain type (str, or int in range).

    ``head`` starts the ``if`` line (indentation, or ``el``); ``tag``: a line appending a
    union tag first. The caller adds the ``else`` that calls the field's writer.
    """
    tagged = [tag] if tag is not None else []
    if writer is _write_string:
        return [
            f"{head}if type(v) is str:",
            *tagged,
            "            data = v.encode()",
            "            n = len(data)",
            "            if n < 64:",
            "                append(n << 1)",
            "            else:",
            "                write_long(buf, n)",
            "            buf += data",
        ]
    return [
        f"{head}if type(v) is int and {-(2**63)} <= v <= {2**63 - 1}:",
        *tagged,
        "            n = (v << 1) ^ (v >> 63)",
        "            while n > 0x7F:",
        "                append((n & 0x7F) | 0x80)",
        "                n >>= 7",
        "            append(n)",
    ]


def _fits(label: str, value: Any) -> bool:
    base = label.split(":", 1)[0]
    if base == "null":
        return value is None
    if base == "boolean":
        return isinstance(value, bool)
    if base in ("int", "long"):
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            label.endswith(("date", "micros", "millis")) and isinstance(value, dt.date | dt.time)
        )
    if base in ("float", "double"):
        return isinstance(value, float | int) and not isinstance(value, bool)
    if base == "string":
        return isinstance(value, str | uuid.UUID)
    if base == "bytes":
        return isinstance(value, bytes | bytearray | memoryview | Decimal)
    if base == "array":
        return isinstance(value, list | tuple)
    if base == "map" or "." in label or label.isidentifier():
        return isinstance(value, Mapping | str | bytes)
    return False


def _write_bytes_fixed(size: int) -> Write:
    def write(buf: bytearray, value: Any) -> None:
        if len(value) != size:
            raise ValidationError(f"fixed of size {size} got {len(value)} bytes")
        buf += value

    return write


def _array(item: Write) -> Write:
    def write(buf: bytearray, value: Any) -> None:
        if value:
            write_long(buf, len(value))
            for element in value:
                item(buf, element)
        buf.append(0)

    return write


def _map(item: Write) -> Write:
    def write(buf: bytearray, value: Any) -> None:
        if value:
            write_long(buf, len(value))
            for key, element in value.items():
                _write_string(buf, key)
                item(buf, element)
        buf.append(0)

    return write


def compile_appender(schema: Mapping[str, Any] | list[Any] | str) -> Write:
    """Compile ``schema`` into a function appending a datum's encoding to a buffer.

    For writers that assemble one message from parts; errors are raised as by the
    parts (:class:`ValidationError`, or ``TypeError`` and the like for a datum of the
    wrong shape).
    """
    return _Compiler().compile(schema, None)


def compile_writer(schema: Mapping[str, Any] | list[Any] | str) -> Callable[[Any], bytes]:
    """Compile ``schema`` into a function returning the Avro binary encoding of a datum."""
    root = _Compiler().compile(schema, None)

    def write(datum: Any) -> bytes:
        buf = bytearray()
        try:
            root(buf, datum)
        except (TypeError, AttributeError, OverflowError, struct.error) as exc:
            raise ValidationError(f"datum does not fit its Avro schema: {exc}") from exc
        return bytes(buf)

    return write
