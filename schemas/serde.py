"""Avro serialization in Confluent's wire format, and a thin schema-registry client.

Wire format of every key and value on the bus (DESIGN.md §4)::

    byte 0      magic byte, always 0
    bytes 1-4   schema id, unsigned 32-bit big-endian, as the registry assigned it
    bytes 5-    Avro binary encoding of the datum, written with that schema

The pure parts — :func:`pack`, :func:`unpack`, :func:`parse_schema`,
:func:`write_body`, :func:`read_body` — do no I/O. :class:`AvroSerde` joins them to a
registry given as a :class:`SchemaRegistry`: :class:`RegistryClient` (the real one, over
Confluent's REST API via :mod:`schemas.registry_http`; Apicurio Registry's
Confluent-compatible API at ``.../apis/ccompat/v7`` works as well as Confluent's) or
:class:`LocalSchemaRegistry` (in-process, for unit tests and offline tools).

Errors: malformed bytes, an unknown schema id or a body that does not match its schema
raise :class:`~schemas.errors.DecodeError`; a record that does not fit its schema
raises :class:`~schemas.errors.ValidationError`; an unreachable or overloaded registry
raises :class:`~schemas.errors.RetriableError`; a schema the subject's compatibility
rule rejects raises :class:`IncompatibleSchemaError`.
"""

from __future__ import annotations

import io
import json
import random
import struct
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Protocol, Self, TypeAlias

import fastavro
import httpx

from schemas.avro_reader import SplitReader, compile_reader, compile_split_reader
from schemas.avro_writer import compile_writer
from schemas.errors import (
    ConfigError,
    DecodeError,
    PermanentError,
    RetriableError,
    SyncError,
    ValidationError,
)
from schemas.registry_http import RegistryApi, RegistryHttpClient, RegistryHttpError

__all__ = [
    "COMPATIBILITY_LEVELS",
    "HEADER_SIZE",
    "MAGIC_BYTE",
    "MAX_SCHEMA_ID",
    "AvroSerde",
    "IncompatibleSchemaError",
    "LocalSchemaRegistry",
    "ParsedSchema",
    "RegisteredSchema",
    "RegistryClient",
    "SchemaRegistry",
    "WriterSchema",
    "canonical_json",
    "pack",
    "parse_schema",
    "read_body",
    "schema_json",
    "unpack",
    "write_body",
]

MAGIC_BYTE: Final = 0
HEADER_SIZE: Final = 5
MAX_SCHEMA_ID: Final = 2**31 - 1
"""Largest schema id: Java clients read the id as a signed 32-bit int."""

_HEADER: Final = struct.Struct(">BI")

COMPATIBILITY_LEVELS: Final = frozenset(
    {
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
    }
)

ParsedSchema: TypeAlias = Any
"""A schema as :func:`fastavro.parse_schema` returns it (a dict for record schemas)."""

Bytes: TypeAlias = bytes | bytearray | memoryview


class IncompatibleSchemaError(PermanentError):
    """The registry rejected a schema under the subject's compatibility rule."""


# ------------------------------------------------------------------------ wire format


def pack(schema_id: int, body: Bytes) -> bytes:
    """Return the wire-format message for an Avro ``body`` written with ``schema_id``.

    Raises:
        ValueError: ``schema_id`` is outside ``0 ..`` :data:`MAX_SCHEMA_ID`.
    """
    if not 0 <= schema_id <= MAX_SCHEMA_ID:
        raise ValueError(f"schema id {schema_id} is outside 0..{MAX_SCHEMA_ID}")
    return _HEADER.pack(MAGIC_BYTE, schema_id) + bytes(body)


def unpack(data: Bytes) -> tuple[int, memoryview]:
    """Split a wire-format message into ``(schema_id, body)``; the body is not copied.

    Raises:
        DecodeError: ``data`` is not bytes, is shorter than the 5-byte header, or does
            not start with the magic byte 0.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < HEADER_SIZE:
        raise DecodeError(f"message of {len(view)} bytes is shorter than the 5-byte header")
    magic, schema_id = _HEADER.unpack_from(view)
    if magic != MAGIC_BYTE:
        raise DecodeError(f"unknown magic byte {magic:#04x}; expected 0x00 (Confluent format)")
    return schema_id, view[HEADER_SIZE:]


# ------------------------------------------------------------------------ Avro bodies


def schema_json(schema: Mapping[str, Any] | str) -> str:
    """Return the compact JSON text of a schema, keys in the order given (what is registered)."""
    if isinstance(schema, str):
        return schema
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def canonical_json(schema: Mapping[str, Any] | str) -> str:
    """Return a canonical JSON text of a schema: compact, object keys sorted.

    Equal schemas give equal texts whatever their key order, so it serves as a cache key.

    Raises:
        ConfigError: ``schema`` is a string that is not JSON.
    """
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ConfigError(f"schema is not JSON: {exc}") from exc
    return json.dumps(schema, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


@lru_cache(maxsize=2048)
def _parse_canonical(text: str) -> ParsedSchema:
    return fastavro.parse_schema(json.loads(text))


def parse_schema(schema: Mapping[str, Any] | str) -> ParsedSchema:
    """Return the :mod:`fastavro`-parsed form of a schema (dict or JSON text), cached.

    The result is shared between callers: treat it as read-only.

    Raises:
        ConfigError: the schema is not valid Avro.
    """
    text = canonical_json(schema)
    try:
        return _parse_canonical(text)
    except Exception as exc:  # fastavro raises several types for invalid schemas
        raise ConfigError(f"invalid Avro schema: {exc}") from exc


def write_body(parsed: ParsedSchema, record: Any) -> bytes:
    """Return the Avro binary encoding of ``record`` under a parsed schema.

    Raises:
        ValidationError: the record does not fit the schema.
    """
    out = io.BytesIO()
    try:
        fastavro.schemaless_writer(out, parsed, record)
    except Exception as exc:  # fastavro signals misfits with many exception types
        raise ValidationError(f"record does not fit its Avro schema: {exc!r}") from exc
    return out.getvalue()


def read_body(body: Bytes, writer: ParsedSchema, reader: ParsedSchema | None = None) -> Any:
    """Decode an Avro binary body written with ``writer``, resolved to ``reader`` if given.

    The whole body must be consumed: trailing bytes mean the body was not written with
    that schema.

    Raises:
        DecodeError: the body is truncated, malformed, longer than the datum, or cannot
            be resolved to the reader schema.
    """
    stream = io.BytesIO(body)
    try:
        datum = fastavro.schemaless_reader(stream, writer, reader)
    except Exception as exc:  # truncated or garbled input fails in many ways
        raise DecodeError(f"Avro body does not decode with its schema: {exc!r}") from exc
    trailing = memoryview(body).nbytes - stream.tell()
    if trailing:
        raise DecodeError(f"Avro body has {trailing} bytes after the datum")
    return datum


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of a subject in the registry."""

    subject: str
    schema_id: int
    version: int | None
    schema: dict[str, Any]


class SchemaRegistry(Protocol):
    """What :class:`AvroSerde` needs from a schema registry."""

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its id."""
        ...

    def get_schema(self, schema_id: int) -> ParsedSchema:
        """Return the parsed schema with id ``schema_id``."""
        ...


_RETRIABLE_STATUS: Final = frozenset({408, 429})
_CONFLICT_ATTEMPTS: Final = 5
"""Writes of a compatibility level that meet a conflicting concurrent write."""
_CONFLICT_BACKOFF_S: Final = 0.1
"""The first backoff ceiling after a conflict; it doubles per attempt."""


def _registry_error(exc: Exception, action: str) -> SyncError:
    """Classify a registry failure: retry, fix the configuration, or give up."""
    if isinstance(exc, RegistryHttpError):
        status = exc.status
        detail = f"{action}: {exc.message} (HTTP {status}, code {exc.error_code})"
        if status == 409:
            return IncompatibleSchemaError(detail)
        if status in _RETRIABLE_STATUS or status >= 500:
            return RetriableError(detail)
        if status in {401, 403}:
            return ConfigError(detail)
        return PermanentError(detail)
    return RetriableError(f"{action}: schema registry unreachable: {exc!r}")


class RegistryClient:
    """A thin, caching client of a Confluent-compatible schema registry.

    Contract:

    - :meth:`register` is idempotent; ids are cached per (subject, canonical schema),
      so a steady stream of events costs no registry round trip.
    - With ``compatibility`` set (default ``BACKWARD``), the subject's compatibility
      level is set once per subject and process, before its first registration here
      when the registry accepts that (Confluent does) and right after it otherwise
      (Apicurio keeps rules per existing artifact). Several processes setting it at
      once all succeed (see :meth:`ensure_compatibility`).
    - :meth:`get_schema` caches parsed schemas per id; ids never change meaning.
    - Safe to share between threads: the caches tolerate races (at worst a duplicate
      request).

    Args:
        url: the registry's base URL, e.g. ``http://127.0.0.1:21081/apis/ccompat/v7``.
            May carry credentials; it is never put into messages.
        compatibility: the level to enforce per subject, or None to leave it alone.
        timeout_s: HTTP timeout per request.
        client: a :class:`~schemas.registry_http.RegistryApi` to use instead of
            building a :class:`~schemas.registry_http.RegistryHttpClient` from ``url``.

    Raises:
        ConfigError: ``url`` or ``compatibility`` is invalid.
    """

    def __init__(
        self,
        url: str,
        *,
        compatibility: str | None = "BACKWARD",
        timeout_s: float = 10.0,
        client: RegistryApi | None = None,
    ) -> None:
        if compatibility is not None and compatibility.upper() not in COMPATIBILITY_LEVELS:
            raise ConfigError(f"unknown compatibility level {compatibility!r}")
        self._compatibility = None if compatibility is None else compatibility.upper()
        if client is None:
            client = RegistryHttpClient(url, timeout_s=timeout_s)
        self._client = client
        self._ids: dict[tuple[str, str], int] = {}
        self._parsed: dict[int, ParsedSchema] = {}
        self._configured: set[str] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the HTTP session; the client is unusable afterwards."""
        self._client.close()

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` and return its id (the existing one if known).

        Raises:
            IncompatibleSchemaError: the subject's compatibility rule rejects it.
            RetriableError: the registry is unreachable or overloaded.
            ConfigError: the registry refused the credentials, or the schema is invalid.
            PermanentError: any other refusal.
        """
        key = (subject, canonical_json(schema))
        cached = self._ids.get(key)
        if cached is not None:
            return cached
        parse_schema(schema)  # fail on an invalid schema before asking the registry
        if self._compatibility is not None and subject not in self._configured:
            self._configure_if_subject_exists(subject, self._compatibility)
        try:
            schema_id = self._client.register_schema(subject, schema_json(schema), "AVRO")
        except (RegistryHttpError, httpx.TransportError) as exc:
            raise _registry_error(exc, f"registering a schema under {subject!r}") from exc
        if self._compatibility is not None and subject not in self._configured:
            self.ensure_compatibility(subject, self._compatibility)
        self._ids[key] = schema_id
        return schema_id

    def ensure_compatibility(self, subject: str, level: str = "BACKWARD") -> None:
        """Set ``subject``'s compatibility level (idempotent, safe to race).

        Another process setting the same level at the same moment is success: Apicurio
        answers the second of two concurrent first settings with 409 ("a rule named
        'COMPATIBILITY' already exists"), and the level the registry then holds decides.

        Raises:
            ConfigError: ``level`` is not a compatibility level.
            RetriableError: the registry is unreachable or overloaded, or kept
                conflicting.
            PermanentError: the registry refused (e.g. Apicurio: no such subject yet).
        """
        level = level.upper()
        if level not in COMPATIBILITY_LEVELS:
            raise ConfigError(f"unknown compatibility level {level!r}")
        self._set_level(subject, level, missing_ok=False)

    def _configure_if_subject_exists(self, subject: str, level: str) -> None:
        self._set_level(subject, level, missing_ok=True)

    def _set_level(self, subject: str, level: str, *, missing_ok: bool) -> None:
        """Put ``level`` on ``subject``; remember it once the registry holds it.

        A conflict (409) means another writer made the rule between this one's look and
        its write: the registry's level is read back, and the write tried again (with
        jittered backoff) only if it is not ``level``. A subject without versions
        (Apicurio's 404) is left alone when ``missing_ok``.
        """
        action = f"setting {level} on {subject!r}"
        conflict: RegistryHttpError | None = None
        for attempt in range(_CONFLICT_ATTEMPTS):
            try:
                self._client.set_compatibility(subject, level)
            except RegistryHttpError as exc:
                if exc.status == 404 and missing_ok:
                    return
                if exc.status != 409:
                    raise _registry_error(exc, action) from exc
                conflict = exc
            except httpx.TransportError as exc:
                raise _registry_error(exc, action) from exc
            else:
                self._configured.add(subject)
                return
            if self._level_of(subject, action) == level:
                self._configured.add(subject)
                return
            ceiling = _CONFLICT_BACKOFF_S * 2**attempt
            time.sleep(random.uniform(0.0, ceiling))  # noqa: S311 - jitter, not secrecy
        assert conflict is not None
        raise RetriableError(
            f"{action}: still conflicting after {_CONFLICT_ATTEMPTS} attempts: "
            f"{conflict.message} (HTTP 409)"
        )

    def _level_of(self, subject: str, action: str) -> str | None:
        try:
            return self._client.get_compatibility(subject)
        except (RegistryHttpError, httpx.TransportError) as exc:
            raise _registry_error(exc, action) from exc

    def get_schema(self, schema_id: int) -> ParsedSchema:
        """Return the parsed schema with id ``schema_id`` (cached).

        Raises:
            DecodeError: the registry has no such id, or it is not a valid Avro schema.
            RetriableError: the registry is unreachable or overloaded.
        """
        parsed = self._parsed.get(schema_id)
        if parsed is not None:
            return parsed
        try:
            found = self._client.get_schema(schema_id)
        except RegistryHttpError as exc:
            if exc.status == 404:
                raise DecodeError(f"schema id {schema_id} is not in the registry") from exc
            raise _registry_error(exc, f"fetching schema id {schema_id}") from exc
        except httpx.TransportError as exc:
            raise _registry_error(exc, f"fetching schema id {schema_id}") from exc
        if found.schema_type != "AVRO":
            raise DecodeError(f"schema id {schema_id} is {found.schema_type}, not AVRO")
        try:
            parsed = parse_schema(found.schema_text)
        except ConfigError as exc:
            raise DecodeError(f"schema id {schema_id}: {exc}") from exc
        self._parsed[schema_id] = parsed
        return parsed

    def latest(self, subject: str) -> RegisteredSchema | None:
        """Return the latest version registered under ``subject``, or None if there is none.

        Meant for start-up (to evolve a schema from the registered one); not cached.

        Raises:
            RetriableError: the registry is unreachable or overloaded.
            PermanentError: any other refusal.
        """
        try:
            found = self._client.get_latest_version(subject)
        except RegistryHttpError as exc:
            if exc.status == 404:
                return None
            raise _registry_error(exc, f"fetching the latest schema of {subject!r}") from exc
        except httpx.TransportError as exc:
            raise _registry_error(exc, f"fetching the latest schema of {subject!r}") from exc
        return RegisteredSchema(
            subject=subject,
            schema_id=found.schema_id,
            version=found.version,
            schema=json.loads(found.schema_text),
        )


class LocalSchemaRegistry:
    """An in-process registry for unit tests and offline tools.

    Ids are sequential from 1 and shared across subjects for identical schemas, as in
    Confluent's registry. It does not check compatibility.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self._versions: dict[str, list[int]] = {}

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` and return its id.

        Raises:
            ConfigError: the schema is not valid Avro.
        """
        parse_schema(schema)
        text = canonical_json(schema)
        schema_id = self._ids.setdefault(text, len(self._ids) + 1)
        self._schemas[schema_id] = text
        versions = self._versions.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def get_schema(self, schema_id: int) -> ParsedSchema:
        """Return the parsed schema with id ``schema_id``.

        Raises:
            DecodeError: no schema has that id.
        """
        text = self._schemas.get(schema_id)
        if text is None:
            raise DecodeError(f"schema id {schema_id} is not in the registry")
        return parse_schema(text)

    def latest(self, subject: str) -> RegisteredSchema | None:
        """Return the latest version of ``subject``, or None."""
        versions = self._versions.get(subject)
        if not versions:
            return None
        schema_id = versions[-1]
        return RegisteredSchema(
            subject=subject,
            schema_id=schema_id,
            version=len(versions),
            schema=json.loads(self._schemas[schema_id]),
        )


# ------------------------------------------------------------------------------ serde


def _nothing() -> None:
    """The rest of a record decoded whole: nothing left to read."""


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A schema registered under a subject, ready to encode with (see :meth:`AvroSerde.prepare`)."""

    subject: str
    schema_id: int
    parsed: ParsedSchema
    write: Callable[[Any], bytes]


class AvroSerde:
    """Encodes records to, and decodes them from, Confluent-framed Avro.

    Encoding registers the writer schema under the subject (once; cached) and frames
    the body with the returned id. Decoding looks the writer schema up by the id in
    the message (cached) and, unless a reader schema is given, returns the datum as
    written. Messages from any Confluent-compatible producer decode, and consumers
    using Confluent's deserializers decode what this writes.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self._registry = registry
        self._writers: dict[tuple[str, str], WriterSchema] = {}
        self._readers: dict[int, Callable[..., Any] | None] = {}
        self._split: dict[tuple[int, frozenset[str]], SplitReader | None] = {}

    def prepare(self, subject: str, schema: Mapping[str, Any]) -> WriterSchema:
        """Register ``schema`` under ``subject`` (once per process) and return it parsed.

        Hot paths keep the result and call :meth:`encode_with`, which skips hashing
        the schema on every record.

        Raises:
            ConfigError: the schema is not valid Avro.
            and whatever the registry raises (see :meth:`RegistryClient.register`).
        """
        key = (subject, canonical_json(schema))
        writer = self._writers.get(key)
        if writer is None:
            parsed = parse_schema(schema)
            schema_id = self._registry.register(subject, schema)
            writer = WriterSchema(subject, schema_id, parsed, compile_writer(schema))
            self._writers[key] = writer
        return writer

    @staticmethod
    def encode_with(writer: WriterSchema, record: Any) -> bytes:
        """Return ``record`` encoded with a prepared writer schema, in wire format.

        Raises:
            ValidationError: the record does not fit the schema.
        """
        return pack(writer.schema_id, writer.write(record))

    def encode(self, subject: str, schema: Mapping[str, Any], record: Any) -> bytes:
        """Return ``record`` encoded with ``schema`` (registered under ``subject``), in wire format.

        Raises:
            ValidationError: the record does not fit the schema.
            ConfigError: the schema is not valid Avro.
            and whatever the registry raises (see :meth:`RegistryClient.register`).
        """
        return self.encode_with(self.prepare(subject, schema), record)

    def decode(
        self, data: Bytes, *, reader_schema: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Return the record in a wire-format message.

        Args:
            data: the message bytes (not a tombstone: callers handle ``None`` values).
            reader_schema: resolve the datum to this schema (Avro schema resolution);
                by default the writer schema is the reader schema.

        Raises:
            DecodeError: the bytes are not a wire-format message, the schema id is
                unknown, the body does not decode, or the datum is not a record.
            RetriableError: the registry is unreachable (the message may be fine).
        """
        if (
            reader_schema is None
            and type(data) is bytes
            and len(data) >= HEADER_SIZE
            and data[0] == MAGIC_BYTE
        ):
            # the common case, read in place: no view, no copy of the body
            schema_id = _HEADER.unpack_from(data)[1]
            compiled = self._reader(schema_id)
            if compiled is not None:
                datum = compiled(data, HEADER_SIZE)
                if not isinstance(datum, dict):
                    raise DecodeError(f"schema id {schema_id} does not describe a record")
                return datum
        schema_id, body = unpack(data)
        if reader_schema is None:
            compiled = self._reader(schema_id)
            if compiled is not None:
                datum = compiled(body.tobytes())
                if not isinstance(datum, dict):
                    raise DecodeError(f"schema id {schema_id} does not describe a record")
                return datum
        writer = self._registry.get_schema(schema_id)
        reader = None
        if reader_schema is not None:
            try:
                reader = parse_schema(reader_schema)
            except ConfigError as exc:
                raise DecodeError(f"reader schema: {exc}") from exc
        datum = read_body(body, writer, reader)
        if not isinstance(datum, dict):
            raise DecodeError(f"schema id {schema_id} does not describe a record")
        return datum

    def decode_lazily(
        self, data: Bytes, leading: Collection[str]
    ) -> tuple[dict[str, Any], Callable[[], None]]:
        """The record in a wire-format message: its ``leading`` fields now, the rest on demand.

        Returns ``(record, rest)``: ``record`` holds the record's fields up to the last
        of ``leading``; ``rest()`` reads the others into it, the first time it is called
        (later calls do nothing), after which ``record`` equals what :meth:`decode`
        returns, field order included. A caller deciding on the leading fields alone
        never pays for the rest. A schema the compiled reader does not read, or whose
        record lacks one of ``leading``, is decoded whole at once (``rest`` does nothing).

        Raises:
            DecodeError: as :meth:`decode`, for the leading fields; ``rest()`` raises it
                when the other fields do not decode or bytes follow them.
            RetriableError: the registry is unreachable (the message may be fine).
        """
        if type(data) is bytes and len(data) >= HEADER_SIZE and data[0] == MAGIC_BYTE:
            message = data  # the readers take the message and the body's start: no copy
            schema_id = _HEADER.unpack_from(message)[1]
        else:
            schema_id = unpack(data)[0]
            message = bytes(data)
        split = self._split_reader(schema_id, frozenset(leading))
        if split is None:
            return self.decode(message), _nothing
        record, end = split.head(message, HEADER_SIZE)
        done = False

        def rest() -> None:
            nonlocal done
            if not done:
                record.update(split.rest(message, end))
                done = True

        return record, rest

    def _split_reader(self, schema_id: int, leading: frozenset[str]) -> SplitReader | None:
        """The split reader of a writer schema (None: decoded whole), cached."""
        key = (schema_id, leading)
        if key not in self._split:
            writer = self._registry.get_schema(schema_id)
            try:
                self._split[key] = compile_split_reader(writer, leading)
            except ConfigError:
                self._split[key] = None
        return self._split[key]

    def _reader(self, schema_id: int) -> Callable[..., Any] | None:
        """The compiled reader of a writer schema (None: fastavro reads it), cached."""
        if schema_id not in self._readers:
            writer = self._registry.get_schema(schema_id)
            try:
                self._readers[schema_id] = compile_reader(writer)
            except ConfigError:
                self._readers[schema_id] = None
        return self._readers[schema_id]

    @staticmethod
    def schema_id_of(data: Bytes) -> int:
        """Return the schema id of a wire-format message without decoding it.

        Raises:
            DecodeError: the bytes are not a wire-format message.
        """
        return unpack(data)[0]
