"""Compact JSON text, written and read fast and exactly (orjson, the standard library behind it).

One home for the JSON the stages keep as state (the streams tables' values, the sinks'
row clocks):

- :func:`dump` writes compact text (no spaces, UTF-8); orjson writes it, the standard
  library whatever orjson refuses (integers beyond 64 bits, keys that are not text).
  Floats that are not finite have no JSON form (orjson would write null): callers that
  may hold them tag them first.
- :func:`load` reads text (or its UTF-8 bytes) exactly, integers of any size included:
  orjson's value is kept when orjson writes it back as the same text, as it does for
  what :func:`dump` wrote with orjson; any other text goes to the standard library
  (orjson's reader turns integers beyond 64 bits into floats, and refuses what the
  standard library writes for a lone surrogate or a float that is not finite).
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

__all__ = ["dump", "load"]

_STDLIB_DUMP: Final = json.JSONEncoder(separators=(",", ":")).encode
_STDLIB_DUMP_SORTED: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def dump(value: Any, *, sort_keys: bool = False) -> str:
    """``value`` as compact JSON text; object keys in insertion order, or sorted."""
    try:
        if sort_keys:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        return (_STDLIB_DUMP_SORTED if sort_keys else _STDLIB_DUMP)(value)


def load(text: str | bytes) -> Any:
    """The value of JSON ``text`` (or its UTF-8 bytes); exact for integers of any size."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    data = text.encode("utf-8") if isinstance(text, str) else text
    return value if orjson.dumps(value) == data else json.loads(text)
