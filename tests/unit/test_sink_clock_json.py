"""Row clock times travel as JSON text (schemas.json_text) read back as the same object."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from schemas import json_text


def _clock_json(times: dict[str, int]) -> str:
    return json_text.dump(times, sort_keys=True)


@given(st.dictionaries(st.text(max_size=12), st.integers(-(2**80), 2**80), max_size=20))
def test_clock_json_is_sorted_compact_json(times: dict[str, int]) -> None:
    text = _clock_json(times)
    assert json.loads(text) == times
    assert list(json.loads(text)) == sorted(times)
    assert json_text.load(text) == times


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.integers(), max_size=20))
def test_field_names_give_the_standard_librarys_text(times: dict[str, int]) -> None:
    assert _clock_json(times) == json.dumps(times, sort_keys=True, separators=(",", ":"))
