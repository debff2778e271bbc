"""StdlibText writes the standard library encoder's text, whichever writer writes it.

Checked for the two texts that are contracts: the payload hash's (sorted, decimals and
times through ``default``) and the data-quality log's (plain JSON, in insertion order).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.json_text import StdlibText
from schemas.payload import _plain_leaf, payload_hash, payload_json


class _Colour(Enum):
    RED = "red"


class _Level(IntEnum):
    HIGH = 3


class _Stage(StrEnum):
    WON = "won"


_PAYLOAD_DEFINITION = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain_leaf
).encode
_PLAIN_DEFINITION = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_PLAIN = StdlibText()
_PAYLOAD = StdlibText(
    sort_keys=True, default=_plain_leaf, default_types=frozenset({Decimal, datetime, date})
)


def _same(payload: Any, definition: Any = _PAYLOAD_DEFINITION, writer: Any = payload_json) -> None:
    """``writer`` gives the definition's bytes, or raises the same kind of error."""
    try:
        expected = definition(payload).encode("utf-8")
    except (TypeError, ValueError, ArithmeticError) as exc:  # no text: the same error
        with pytest.raises(type(exc)):
            writer(payload)
        return
    assert writer(payload) == expected


_zones = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))])
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(),
    st.text(alphabet=st.characters(max_codepoint=0x3F)),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.dates(),
    st.datetimes(timezones=st.one_of(st.none(), _zones)),
    st.floats(),
    st.uuids(),
    st.sampled_from([_Colour.RED, _Level.HIGH, _Stage.WON]),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), inner, max_size=5),
    ),
    max_leaves=20,
)
_payloads = st.dictionaries(st.text(max_size=12), _values, max_size=12)


@given(_payloads)
def test_payload_json_is_the_standard_librarys_text(payload: dict[str, Any]) -> None:
    _same(payload)


@given(_values)
def test_plain_json_is_the_standard_librarys_text(value: Any) -> None:
    _same(value, _PLAIN_DEFINITION, _PLAIN)


@given(st.dictionaries(st.one_of(st.integers(), st.booleans(), st.none()), st.integers()))
def test_non_text_keys_are_written_as_the_standard_library_writes_them(
    payload: dict[Any, Any],
) -> None:
    try:
        expected = _PAYLOAD_DEFINITION(payload).encode("utf-8")
    except TypeError:  # keys of several types do not sort
        return
    assert payload_json(payload) == expected
    _same(payload, _PLAIN_DEFINITION, _PLAIN)


def test_a_canonical_record_is_written_by_orjson() -> None:
    record = {
        "erp_id": "42",
        "name": "Müller GmbH\t\u2028",
        "price": Decimal("1.20"),
        "active": True,
        "day": date(2024, 1, 1),
        "when": datetime(2024, 1, 1, 12, 30, tzinfo=UTC),
        "lines": [{"sku": "A-1", "quantity": Decimal("-3.000"), "position": 0}],
        "changed_fields": ["name", "price"],
        "crm_id": None,
    }
    assert _PAYLOAD.written_by_orjson(record)
    _same(record)
    _same(record, _PAYLOAD_DEFINITION, _PAYLOAD)


@pytest.mark.parametrize(
    "value", [1.5, uuid.UUID(int=7), _Colour.RED, _Level.HIGH, _Stage.WON, {1: "a"}]
)
def test_values_orjson_writes_otherwise_are_left_to_the_standard_library(value: Any) -> None:
    payload = {"field": [value]}
    assert not _PAYLOAD.written_by_orjson(payload)
    assert not _PLAIN.written_by_orjson(payload)
    _same(payload)
    _same(payload, _PLAIN_DEFINITION, _PLAIN)


def test_the_hash_is_of_the_standard_librarys_text() -> None:
    record = {"op": "upsert", "name": "Acme", "price": Decimal("2.50"), "version": 9}
    text = _PAYLOAD_DEFINITION({"op": "upsert", "name": "Acme", "price": Decimal("2.50")})
    assert payload_hash(record) == hashlib.sha256(text.encode("utf-8")).hexdigest()
