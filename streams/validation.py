"""Results of cleansing and validation, and the business rules a canonical record must pass.

Failures are data (bytewax's ``oks``/``errs`` split): a step returns :class:`Ok` with the
value and the :class:`Fix` es it made along the way, or :class:`Failed` with a typed
:class:`Reason`, the field and a human-readable detail. Nothing here raises for bad data;
the stream turns a :class:`Failed` into a dead letter (:meth:`Failed.to_error` gives the
typed exception for its headers) and counts :class:`Fix` es by rule. A record that flows
although one of its optional fields failed carries a :class:`Quarantine` per such field
(:attr:`Ok.quarantined`): the field is left out of the record, or kept as typed.

The rules are plain functions returning ``Failed | None`` (None: the rule holds), so a
caller chains them with :func:`first_failure`. Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Generic, TypeAlias, TypeVar

from schemas.errors import ValidationError

__all__ = [
    "Failed",
    "Fix",
    "Ok",
    "Quarantine",
    "Reason",
    "Result",
    "check_known_sku",
    "check_range",
    "check_required",
    "check_stock",
    "first_failure",
    "identifier_key",
    "is_blank",
]

T = TypeVar("T")


class Reason(StrEnum):
    """Why a record was rejected; a fixed set, so dead letters can be counted by it."""

    MALFORMED_EVENT = "malformed_event"
    """The raw change event lacks what every event has (source position, row, key)."""
    MISSING_REQUIRED = "missing_required"
    INVALID_VALUE = "invalid_value"
    """The value cannot be converted to the field's type."""
    INVALID_EMAIL = "invalid_email"
    INVALID_PHONE = "invalid_phone"
    INVALID_VAT = "invalid_vat"
    """A VAT or tax id that breaks its country's standard (length, format, checksum)."""
    UNKNOWN_COUNTRY = "unknown_country"
    NEGATIVE_VALUE = "negative_value"
    """A quantity, price or stock level below zero where the business forbids it."""
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_SKU = "unknown_sku"
    UNMAPPED_VALUE = "unmapped_value"
    """A state or stage the mapping has no canonical value for."""
    UNRESOLVED_REFERENCE = "unresolved_reference"
    """A reference (product id -> SKU, ...) not known yet; replaying later may succeed."""
    SCHEMA_MISMATCH = "schema_mismatch"
    """The canonical record does not fit its Avro schema (a mapping bug, not bad data)."""
    LATE_LINE = "late_line"
    """An order line read after its transaction's order was published without it."""


@dataclass(frozen=True, slots=True)
class Fix:
    """One change cleansing made to a value, kept so fixes are visible and countable.

    Attributes:
        rule: the cleansing rule that made it (``trim``, ``email``, ``phone``,
            ``country``, ``default``, ``round``, ...).
        before: the value as it came.
        after: the value as it left.
        field: the field it was made on (``lines[2].quantity`` inside nested records);
            empty until the caller names it with :meth:`at`.
        note: what was done, for people (``collapsed whitespace``).
    """

    rule: str
    before: Any
    after: Any
    field: str = ""
    note: str = ""

    def at(self, field: str) -> Fix:
        """Return the fix placed under ``field`` (prefixing an existing nested field name)."""
        return dataclasses.replace(self, field=_join(field, self.field))


def _join(outer: str, inner: str) -> str:
    if not inner:
        return outer
    if not outer:
        return inner
    return f"{outer}{inner}" if inner.startswith("[") else f"{outer}.{inner}"


@dataclass(frozen=True, slots=True)
class Quarantine:
    """An optional field whose value failed, while the rest of its record flows.

    Attributes:
        reason: why the value failed.
        field: the field (``phone``); empty until the caller names it with :meth:`at`.
        value: the value as it came from the source.
        detail: what is wrong with it, for people.
        kept: the value travels as typed (``on_invalid: keep``); otherwise the field is
            left out of the record, so the target keeps what it has.
    """

    reason: Reason
    field: str
    value: Any
    detail: str
    kept: bool = False

    def at(self, field: str) -> Quarantine:
        """Return the quarantine placed under ``field`` (prefixing a nested field name)."""
        return dataclasses.replace(self, field=_join(field, self.field))


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    """A successful step: its value, the fixes made to get it, the fields quarantined."""

    value: T
    fixes: tuple[Fix, ...] = ()
    quarantined: tuple[Quarantine, ...] = ()

    def at(self, field: str) -> Ok[T]:
        """Return the same result with every fix and quarantine placed under ``field``."""
        return Ok(
            self.value,
            tuple(f.at(field) for f in self.fixes),
            tuple(q.at(field) for q in self.quarantined),
        )


@dataclass(frozen=True, slots=True)
class Failed:
    """A rejected record: a typed reason, the offending field (if any) and a detail."""

    reason: Reason
    field: str | None
    detail: str

    def at(self, field: str) -> Failed:
        """Return the failure placed under ``field`` (prefixing a nested field name)."""
        return dataclasses.replace(self, field=_join(field, self.field or ""))

    @property
    def message(self) -> str:
        """One line for logs and dead-letter headers: ``reason [field]: detail``."""
        where = f" [{self.field}]" if self.field else ""
        return f"{self.reason.value}{where}: {self.detail}"

    def to_error(self) -> ValidationError:
        """Return the typed exception describing this failure (for dead-letter headers)."""
        return ValidationError(self.message)


Result: TypeAlias = Ok[T] | Failed
"""What a cleansing or validation step returns."""


def first_failure(*checks: Failed | None) -> Failed | None:
    """Return the first failure among ``checks``, or None when every rule held."""
    return next((c for c in checks if c is not None), None)


def identifier_key(value: str) -> str:
    """The form identifiers (SKUs, customer numbers) are matched in: no white space, upper case.

    Identifiers travel as entered (trimmed); two that differ only in case or spacing
    (``ab-12``, ``AB 12``... ``AB-12``) are the same identifier when compared.
    """
    return "".join(value.split()).upper()


def is_blank(value: object) -> bool:
    """Whether ``value`` is missing: None, or a string of whitespace only."""
    return value is None or (isinstance(value, str) and not value.strip())


# --------------------------------------------------------------------------- rules


def check_required(value: object, field: str) -> Failed | None:
    """Fail when a required ``field`` is missing or blank."""
    if is_blank(value):
        return Failed(Reason.MISSING_REQUIRED, field, "a value is required")
    return None


def check_range(
    value: int | Decimal | None,
    field: str,
    *,
    minimum: Decimal | None = None,
    maximum: Decimal | None = None,
) -> Failed | None:
    """Fail when ``value`` lies outside ``[minimum, maximum]`` (None: no bound; null passes).

    A value below zero that breaks a non-negative minimum is :attr:`Reason.NEGATIVE_VALUE`
    (negative stock, prices, quantities); other misses are :attr:`Reason.OUT_OF_RANGE`.
    """
    if value is None:
        return None
    if minimum is not None and value < minimum:
        reason = Reason.NEGATIVE_VALUE if value < 0 <= minimum else Reason.OUT_OF_RANGE
        return Failed(reason, field, f"{value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        return Failed(Reason.OUT_OF_RANGE, field, f"{value} is above the maximum {maximum}")
    return None


def check_known_sku(
    sku: str | None, known_skus: Container[str] | None, field: str = "sku"
) -> Failed | None:
    """Fail when ``sku`` is not in ``known_skus`` (the ERP catalogue).

    ``known_skus`` holds the catalogue's SKUs by :func:`identifier_key`, so case and
    spacing do not matter; None means the catalogue is not known to the caller: the rule
    is not applied. A missing SKU is left to :func:`check_required`.
    """
    if sku is None or known_skus is None or identifier_key(sku) in known_skus:
        return None
    return Failed(Reason.UNKNOWN_SKU, field, f"SKU {sku!r} is not in the ERP catalogue")


def check_stock(reserved: Decimal, field: str = "") -> Failed | None:
    """Fail on impossible stock: a negative reservation.

    Any on-hand figure is possible: negative stock (sold before it was received) and more
    reserved than on hand are real states of a warehouse, not errors. They make the
    available stock negative (oversold), which is reported, never hidden.
    """
    prefix = f"{field}." if field else ""
    return check_range(reserved, f"{prefix}reserved", minimum=Decimal(0))
