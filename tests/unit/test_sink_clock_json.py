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


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)


def _typed(value: object) -> object:
    """A form comparing types too (``1 == 1.0`` and ``True == 1`` in Python)."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, value)


@given(_JSON, st.sampled_from([(",", ":"), (", ", ": "), (",", ": ")]))
def test_load_reads_what_the_standard_library_reads(
    value: object, separators: tuple[str, str]
) -> None:
    # PostgreSQL's jsonb output puts a space after each separator: read by the fast path.
    text = json.dumps(value, separators=separators)
    assert _typed(json_text.load(text)) == _typed(json.loads(text))
    assert _typed(json_text.load(text.encode("utf-8"))) == _typed(json.loads(text))


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False),
        max_size=20,
    )
)
def test_a_row_clock_read_from_jsonb_text_is_exact(times: dict[str, float]) -> None:
    """The sink reads a clock's ``jsonb`` text (spaced, unlike orjson's) exactly, types too."""
    from sinks.postgres import _times

    text = json.dumps(times)  # PostgreSQL's jsonb text is spaced as the standard library's
    expected = json.loads(text)
    read = _times(text)
    assert read == expected
    assert [type(v) for v in read.values()] == [type(v) for v in expected.values()]
