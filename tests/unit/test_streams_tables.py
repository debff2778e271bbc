"""The tables' key encoding: the fast encoder gives the bytes Faust's store gives."""

from __future__ import annotations

import faust
from hypothesis import given
from hypothesis import strategies as st

from streams.tables import _key_encoder

_APP = faust.App("keys-test", broker="kafka://127.0.0.1:1", store="memory://")
_TABLE = _APP.Table("keys", key_type=str, partitions=1)
_STORE_ENCODING = _TABLE.data._encode_key  # type: ignore[attr-defined]


def test_a_faust_json_key_store_gets_a_fast_encoder() -> None:
    assert _key_encoder(_STORE_ENCODING) is not _STORE_ENCODING


@given(st.text())
def test_the_fast_key_encoder_gives_the_stores_bytes(key: str) -> None:
    try:
        expected = _STORE_ENCODING(key)
    except Exception:  # a key the store refuses (a lone surrogate) is never written
        return
    assert _key_encoder(_STORE_ENCODING)(key) == expected


def test_a_store_encoding_keys_otherwise_keeps_its_own() -> None:
    def reversed_utf8(key: str) -> bytes:
        return key[::-1].encode("utf-8")

    assert _key_encoder(reversed_utf8) is reversed_utf8
