"""Result values and business rules (streams/validation.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from schemas.errors import ValidationError
from streams.validation import (
    Failed,
    Fix,
    Ok,
    Reason,
    check_known_sku,
    check_range,
    check_required,
    check_stock,
    first_failure,
    identifier_key,
    is_blank,
)


def test_fixes_and_failures_are_placed_under_their_field() -> None:
    fix = Fix("trim", " a", "a", note="trimmed whitespace")
    assert fix.at("name").field == "name"
    assert fix.at("quantity").at("lines[2]").field == "lines[2].quantity"
    assert Ok("a", (fix,)).at("name").fixes[0].field == "name"
    failed = Failed(Reason.NEGATIVE_VALUE, None, "-1 is below the minimum 0")
    assert failed.at("quantity").at("lines[0]").field == "lines[0].quantity"
    assert Failed(Reason.MISSING_REQUIRED, "sku", "x").at("lines[1]").field == "lines[1].sku"


def test_a_failure_becomes_a_typed_error_for_the_dead_letter_headers() -> None:
    failed = Failed(Reason.INVALID_EMAIL, "email", "'x at y': no @")
    assert failed.message == "invalid_email [email]: 'x at y': no @"
    error = failed.to_error()
    assert isinstance(error, ValidationError)
    assert str(error) == failed.message
    assert Failed(Reason.MALFORMED_EVENT, None, "no source").message == "malformed_event: no source"


def test_is_blank() -> None:
    assert is_blank(None)
    assert is_blank(" \t")
    assert not is_blank("x")
    assert not is_blank(0)


def test_check_required() -> None:
    assert check_required("C00001", "customer_number") is None
    assert check_required(False, "active") is None
    failed = check_required("  ", "customer_number")
    assert failed == Failed(Reason.MISSING_REQUIRED, "customer_number", "a value is required")


@pytest.mark.parametrize(
    ("value", "minimum", "maximum", "reason"),
    [
        (Decimal(5), Decimal(0), None, None),
        (Decimal(0), Decimal(0), None, None),
        (None, Decimal(0), None, None),
        (Decimal("-0.001"), Decimal(0), None, Reason.NEGATIVE_VALUE),
        (-3, Decimal(0), None, Reason.NEGATIVE_VALUE),
        (Decimal(0), Decimal(1), None, Reason.OUT_OF_RANGE),
        (Decimal(101), Decimal(0), Decimal(100), Reason.OUT_OF_RANGE),
        (Decimal(100), Decimal(0), Decimal(100), None),
        (Decimal(-5), Decimal(-10), None, None),
    ],
)
def test_check_range(
    value: Decimal | int | None,
    minimum: Decimal | None,
    maximum: Decimal | None,
    reason: Reason | None,
) -> None:
    failed = check_range(value, "price", minimum=minimum, maximum=maximum)
    assert (failed.reason if failed else None) is reason
    if failed:
        assert failed.field == "price"


def test_check_known_sku() -> None:
    catalogue = {"SKU-00001", "SKU-00002"}
    assert check_known_sku("SKU-00001", catalogue) is None
    assert check_known_sku(None, catalogue) is None
    assert check_known_sku("OLD-1234", None) is None  # no catalogue: not checked
    failed = check_known_sku("OLD-1234", catalogue, "lines[0].sku")
    assert failed is not None
    assert (failed.reason, failed.field) == (Reason.UNKNOWN_SKU, "lines[0].sku")


@pytest.mark.parametrize(
    ("reserved", "field", "reason"),
    [
        ("4", None, None),
        ("0", None, None),
        ("-1", "reserved", Reason.NEGATIVE_VALUE),
    ],
)
def test_check_stock_refuses_only_a_negative_reservation(
    reserved: str, field: str | None, reason: Reason | None
) -> None:
    # Negative on hand and more reserved than on hand are oversold stock, not errors.
    failed = check_stock(Decimal(reserved))
    found = (failed.field, failed.reason) if failed is not None else (None, None)
    assert found == (field, reason)


@pytest.mark.parametrize(
    ("typed", "key"),
    [("ab-12", "AB-12"), (" AB 12 ", "AB12"), ("c00042", "C00042"), ("Sku\t7", "SKU7")],
)
def test_identifier_key_ignores_case_and_spacing(typed: str, key: str) -> None:
    assert identifier_key(typed) == key


def test_first_failure() -> None:
    one = Failed(Reason.OUT_OF_RANGE, "a", "x")
    two = Failed(Reason.UNKNOWN_SKU, "b", "y")
    assert first_failure(None, one, two) is one
    assert first_failure(None, None) is None
    assert first_failure() is None
