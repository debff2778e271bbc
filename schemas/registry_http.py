"""A small client for the few schema-registry REST calls the project makes.

Confluent's REST API (Apicurio Registry serves it at ``.../apis/ccompat/v7``):

- ``POST /subjects/{subject}/versions`` ``{"schema", "schemaType"}`` → ``{"id"}``
- ``PUT /config/{subject}`` ``{"compatibility"}``, ``GET /config/{subject}``
- ``GET /schemas/ids/{id}`` → ``{"schema", "schemaType"?}``
- ``GET /subjects/{subject}/versions/latest`` → ``{"id", "version", "schema", "schemaType"?}``

Subjects are percent-quoted whole (``/`` included). Credentials in the URL's userinfo
are sent as HTTP basic auth and kept out of every message. Statuses 408, 429, 500,
502, 503 and 504 and transport failures are retried a few times with jittered
exponential backoff, as Confluent's own client does; what still fails is raised:
:class:`RegistryHttpError` for an error answer, :class:`httpx.TransportError` for no
answer. Classifying those is the caller's business (see ``schemas.serde``).

It replaces ``confluent_kafka.schema_registry.SchemaRegistryClient`` in the workers,
whose import loads authlib, cryptography and joserfc (about 14 MiB per process).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any, Final, Protocol, Self
from urllib.parse import quote

import httpx

from schemas.errors import ConfigError

__all__ = [
    "CONTENT_TYPE",
    "RegistryApi",
    "RegistryHttpClient",
    "RegistryHttpError",
    "SchemaVersion",
]

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
_ACCEPT: Final = (
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json"
)
_RETRIED_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
_UNKNOWN_CODE: Final = -1


class RegistryHttpError(Exception):
    """The registry answered with an error status (or with a body that makes no sense).

    Attributes:
        status: the HTTP status.
        error_code: the registry's ``error_code`` (-1 when the body has none).
        message: the registry's ``message``.
    """

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, code {error_code})")
        self.status = status
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """A schema as the registry returned it; ``version`` is None when looked up by id."""

    schema_id: int
    version: int | None
    schema_text: str
    schema_type: str


class RegistryApi(Protocol):
    """The registry calls :class:`~schemas.serde.RegistryClient` makes (unit tests fake it)."""

    def register_schema(self, subject: str, schema_text: str, schema_type: str = "AVRO") -> int:
        """Register a schema under ``subject`` (idempotent) and return its id."""
        ...

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set ``subject``'s compatibility level."""
        ...

    def get_compatibility(self, subject: str) -> str | None:
        """``subject``'s own compatibility level (None: it has none)."""
        ...

    def get_schema(self, schema_id: int) -> SchemaVersion:
        """Return the schema with id ``schema_id``."""
        ...

    def get_latest_version(self, subject: str) -> SchemaVersion:
        """Return the latest version registered under ``subject``."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


class RegistryHttpClient:
    """:class:`RegistryApi` over one shared :class:`httpx.Client` (thread-safe).

    Args:
        url: the registry's base URL, ``http(s)://[user:password@]host[:port][/path]``.
        timeout_s: timeout of each HTTP request.
        retries: further attempts after a retried status or a transport failure.
        backoff_s: the first backoff ceiling; it doubles per attempt up to ``max_backoff_s``.
        transport: an httpx transport to use instead of the network (unit tests).

    Raises:
        ConfigError: ``url`` is not an http(s) URL with a host.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 20.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"invalid schema registry URL: {exc}") from None
        if parsed.scheme not in {"http", "https"} or not parsed.host:
            raise ConfigError("schema registry URL must be http(s)://host[:port][/path]")
        auth = (parsed.username, parsed.password) if parsed.username else None
        self._http = httpx.Client(
            base_url=parsed.copy_with(username=None, password=None),
            auth=auth,
            timeout=timeout_s,
            headers={"Accept": _ACCEPT},
            transport=transport,
        )
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; the client is unusable afterwards."""
        self._http.close()

    def register_schema(self, subject: str, schema_text: str, schema_type: str = "AVRO") -> int:
        """``POST /subjects/{subject}/versions``: register (idempotent) and return the id.

        Raises:
            RegistryHttpError: an error answer (409: incompatible; 422: invalid schema).
            httpx.TransportError: no answer.
        """
        body = {"schema": schema_text, "schemaType": schema_type}
        found = self._call("POST", f"subjects/{_quote(subject)}/versions", body)
        return _int_field(found, "id")

    def set_compatibility(self, subject: str, level: str) -> None:
        """``PUT /config/{subject}``: set the subject's compatibility level.

        Raises:
            RegistryHttpError: an error answer (Apicurio: 404 while the subject has no version).
            httpx.TransportError: no answer.
        """
        self._call("PUT", f"config/{_quote(subject)}", {"compatibility": level})

    def get_compatibility(self, subject: str) -> str | None:
        """``GET /config/{subject}``: the subject's own level, None when it has none.

        Raises:
            RegistryHttpError: an error answer other than 404.
            httpx.TransportError: no answer.
        """
        try:
            found = self._call("GET", f"config/{_quote(subject)}")
        except RegistryHttpError as exc:
            if exc.status == 404:
                return None
            raise
        # Confluent answers ``compatibilityLevel``; some versions and clones ``compatibility``
        level = found.get("compatibilityLevel", found.get("compatibility"))
        return level.upper() if isinstance(level, str) else None

    def get_schema(self, schema_id: int) -> SchemaVersion:
        """``GET /schemas/ids/{id}``.

        Raises:
            RegistryHttpError: an error answer (404: no such id).
            httpx.TransportError: no answer.
        """
        found = self._call("GET", f"schemas/ids/{int(schema_id)}")
        return SchemaVersion(schema_id, None, _str_field(found, "schema"), _schema_type(found))

    def get_latest_version(self, subject: str) -> SchemaVersion:
        """``GET /subjects/{subject}/versions/latest``.

        Raises:
            RegistryHttpError: an error answer (404: no such subject).
            httpx.TransportError: no answer.
        """
        found = self._call("GET", f"subjects/{_quote(subject)}/versions/latest")
        return SchemaVersion(
            _int_field(found, "id"),
            _int_field(found, "version"),
            _str_field(found, "schema"),
            _schema_type(found),
        )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request (retrying as the module says) and return the JSON object answered."""
        content = None if body is None else json.dumps(body).encode()
        headers = None if body is None else {"Content-Type": CONTENT_TYPE}
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                response = self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError:
                if last:
                    raise
            else:
                if response.is_success:
                    return _json_object(response)
                if last or response.status_code not in _RETRIED_STATUS:
                    raise _error_of(response)
            ceiling = min(self._max_backoff_s, self._backoff_s * 2**attempt)
            time.sleep(random.uniform(0.0, ceiling))  # noqa: S311 - jitter, not secrecy
        raise AssertionError("unreachable: the last attempt returns or raises")


def _quote(subject: str) -> str:
    return quote(subject, safe="")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        found = response.json()
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise RegistryHttpError(
            response.status_code, _UNKNOWN_CODE, "the registry answered with no JSON object"
        )
    return found


def _error_of(response: httpx.Response) -> RegistryHttpError:
    try:
        found = response.json()
    except ValueError:
        found = None
    if isinstance(found, dict) and "message" in found:
        code = found.get("error_code")
        return RegistryHttpError(
            response.status_code,
            code if isinstance(code, int) else _UNKNOWN_CODE,
            str(found["message"]),
        )
    text = response.text[:200] or response.reason_phrase
    return RegistryHttpError(response.status_code, _UNKNOWN_CODE, f"registry error: {text}")


def _int_field(found: dict[str, Any], name: str) -> int:
    value = found.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RegistryHttpError(200, _UNKNOWN_CODE, f"the answer has no integer {name!r}")
    return value


def _str_field(found: dict[str, Any], name: str) -> str:
    value = found.get(name)
    if not isinstance(value, str):
        raise RegistryHttpError(200, _UNKNOWN_CODE, f"the answer has no text {name!r}")
    return value


def _schema_type(found: dict[str, Any]) -> str:
    """Confluent omits ``schemaType`` for Avro; Apicurio may send it."""
    value = found.get("schemaType")
    return value if isinstance(value, str) and value else "AVRO"
