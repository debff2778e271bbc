"""Lsn: parsing, printing, ordering and arithmetic."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.lsn import InvalidLsnError, Lsn
from schemas.errors import DecodeError, SyncError

lsn_values = st.integers(min_value=0, max_value=2**64 - 1)


def test_parse_and_print_postgresql_form() -> None:
    lsn = Lsn.parse("16/B374D848")
    assert int(lsn) == 0x16_B374D848
    assert str(lsn) == "16/B374D848"
    assert repr(lsn) == "Lsn('16/B374D848')"


def test_parse_is_case_insensitive_and_prints_upper_case() -> None:
    assert str(Lsn.parse("0/1a2b3c")) == "0/1A2B3C"
    assert Lsn.parse("00000000/00000001") == Lsn(1)


def test_zero_is_the_invalid_position() -> None:
    assert Lsn.ZERO == Lsn.INVALID == Lsn(0) == Lsn.parse("0/0")
    assert str(Lsn.ZERO) == "0/0"
    assert not Lsn.ZERO.is_valid
    assert Lsn(1).is_valid
    assert str(Lsn.MAX) == "FFFFFFFF/FFFFFFFF"


@given(lsn_values)
def test_text_round_trip(value: int) -> None:
    lsn = Lsn(value)
    assert Lsn.parse(str(lsn)) == lsn
    assert int(lsn) == value


@given(lsn_values, lsn_values)
def test_order_and_distance_follow_the_byte_position(a: int, b: int) -> None:
    assert (Lsn(a) < Lsn(b)) == (a < b)
    assert (Lsn(a) == Lsn(b)) == (a == b)
    assert Lsn(a) - Lsn(b) == a - b
    assert max(Lsn(a), Lsn(b)) == Lsn(max(a, b))


def test_add_bytes() -> None:
    assert Lsn.parse("0/FFFFFFFF") + 1 == Lsn.parse("1/0")
    with pytest.raises(InvalidLsnError):
        Lsn.MAX + 1


def test_hashable_and_frozen() -> None:
    assert {Lsn(5), Lsn(5)} == {Lsn(5)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        Lsn(5).value = 6  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "/0",
        "0/",
        "1/2/3",
        " 0/1",
        "0/1 ",
        "123456789/0",
        "0/123456789",
        "-1/0",
        "g/0",
        "+1/0",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidLsnError) as info:
        Lsn.parse(text)
    assert isinstance(info.value, DecodeError)
    assert isinstance(info.value, SyncError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [-1, 2**64, True, 1.0, "0/1"])
def test_constructor_rejects(value: object) -> None:
    with pytest.raises(InvalidLsnError):
        Lsn(value)  # type: ignore[arg-type]


def test_subtracting_a_non_lsn_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Lsn(5) - 3  # type: ignore[operator]
