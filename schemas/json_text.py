"""Compact JSON text, written and read fast and exactly (orjson, the standard library behind it).

One home for the JSON the stages keep as state (the streams tables' values, the sinks'
row clocks):

- :func:`dump` writes compact text (no spaces, UTF-8); orjson writes it, the standard
  library whatever orjson refuses (integers beyond 64 bits, keys that are not text).
  Floats that are not finite have no JSON form (orjson would write null): callers that
  may hold them tag them first.
- :func:`load` reads text (or its UTF-8 bytes) exactly, integers of any size included,
  as the standard library reads it: orjson's value is kept when it holds no float (orjson
  reads every integer up to 64 bits exactly and only larger ones as floats, so such a
  value is the standard library's), or when orjson writes it back as the same text, as
  it does for what :func:`dump` wrote with orjson; any other text goes to the standard
  library (orjson refuses what the standard library writes for a lone surrogate or a
  float that is not finite). Text in another layout (PostgreSQL's ``jsonb`` output, with
  a space after each separator) holding no float is read by orjson alone.
- :class:`StdlibText` writes exactly the standard library encoder's text (where that
  text is a contract: the payload hash, the data-quality log), by orjson whenever
  orjson writes the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import orjson

__all__ = ["StdlibText", "dump", "load"]

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
    # What dump wrote, orjson writes back byte for byte: that C comparison settles most
    # texts for less than the Python walk looking for floats, which decides the rest.
    data = text.encode("utf-8") if type(text) is str else text
    try:
        if orjson.dumps(value) == data:
            return value
    except TypeError:  # nested deeper than orjson writes
        pass
    return value if _without_float(value) else json.loads(text)


def _without_float(value: Any) -> bool:
    """Whether ``value`` (as orjson read it) holds no float, at any depth."""
    kind = type(value)
    if kind is dict:
        items = list(value.values())
    elif kind is list:
        items = value
    else:
        return kind is not float
    kinds = set(map(type, items))
    if float in kinds:
        return False
    if dict in kinds or list in kinds:
        return all(_without_float(item) for item in items if type(item) in (dict, list))
    return True


_ALIKE_LEAVES: Final = frozenset({str, int, bool, type(None)})
"""Leaf types orjson writes as the standard library does. Not floats (another notation
for exponents and non-finite values), nor subclasses, UUIDs, enums or dataclasses, which
orjson writes natively where the standard library calls ``default`` or writes them
otherwise."""


class StdlibText:
    """The standard library's compact JSON of a value, as UTF-8, written fast when it can be.

    ``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=...,
    default=...)`` defines the text. orjson writes the same bytes several times faster
    for a value whose containers are plain dicts (text keys), lists and tuples and whose
    leaves are text, integers, booleans, None or of ``default_types`` (which
    ``default`` turns into such values; dates and times among them reach ``default``
    too); it writes those, and the standard library everything else.

    Args:
        sort_keys: object keys sorted, as ``json.JSONEncoder`` sorts them.
        default: called for a value neither writer has a form for (as ``json``'s).
        default_types: leaf types ``default`` handles, for orjson to hand to it: types
            orjson has no form of its own for (decimals), or dates and times.
    """

    def __init__(
        self,
        *,
        sort_keys: bool = False,
        default: Callable[[Any], Any] | None = None,
        default_types: frozenset[type] = frozenset(),
    ) -> None:
        self._stdlib = json.JSONEncoder(
            sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, default=default
        ).encode
        self._default = default
        self._option = orjson.OPT_PASSTHROUGH_DATETIME | (orjson.OPT_SORT_KEYS if sort_keys else 0)
        self._leaves = _ALIKE_LEAVES | default_types

    def __call__(self, value: Any) -> bytes:
        """``value``'s JSON text as UTF-8; raises what the standard library raises."""
        if self.written_by_orjson(value):
            try:
                return orjson.dumps(value, default=self._default, option=self._option)
            except TypeError:  # an integer beyond 64 bits, a lone surrogate, deep nesting
                pass
        return self._stdlib(value).encode("utf-8")

    def written_by_orjson(self, value: Any) -> bool:
        """Whether orjson writes ``value`` as the standard library does (class docstring)."""
        leaves = self._leaves
        kind = type(value)
        # Loops rather than all(...): this walk runs for every value written, and a
        # generator per container cost as much as orjson's writing.
        if kind is dict:
            for k, v in value.items():
                if type(k) is not str or (type(v) not in leaves and not self.written_by_orjson(v)):
                    return False
            return True
        if kind is list or kind is tuple:
            for v in value:  # noqa: SIM110 - a loop, as above
                if type(v) not in leaves and not self.written_by_orjson(v):
                    return False
            return True
        return kind in leaves
