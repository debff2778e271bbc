"""Text-format column values to Python values, by PostgreSQL type OID.

pgoutput with ``binary = false`` sends every column in the type's text output form.
This module turns that text into Python values. It assumes the replication session runs
with PostgreSQL's defaults for the settings that shape the text: ``DateStyle = ISO``,
``IntervalStyle = postgres``, ``bytea_output`` either ``hex`` or ``escape``.

- int2, int4, int8, oid, xid, xid8, cid: :class:`int`
- numeric: :class:`~decimal.Decimal` (``NaN``, ``Infinity``, ``-Infinity`` included)
- float4, float8: :class:`float` (``nan``, ``inf``, ``-inf`` included)
- bool: :class:`bool`
- text, varchar, bpchar, name, "char": :class:`str` (bpchar keeps its blank padding)
- date: :class:`~datetime.date`
- timestamp: naive :class:`~datetime.datetime`
- timestamptz: :class:`~datetime.datetime` converted to UTC
- time: naive :class:`~datetime.time`; timetz: :class:`~datetime.time` with its offset
- uuid: :class:`uuid.UUID`
- bytea: :class:`bytes`
- pg_lsn: :class:`~cdc.lsn.Lsn`
- json, jsonb, xml, interval, money, inet, cidr, macaddr, bit, varbit, tid: :class:`str`,
  exactly as sent
- arrays of the types above: :class:`list` (nested for more dimensions) of the element
  values, ``None`` for NULL elements
- anything else (enums, domains, extension types): :class:`str`, logged once per type OID

Values PostgreSQL accepts but Python cannot hold are mapped as follows: ``infinity`` and
``-infinity`` become the ``max`` and ``min`` of :class:`~datetime.date` or
:class:`~datetime.datetime` (UTC-aware for timestamptz); ``24:00:00`` becomes
:attr:`datetime.time.max`. Dates before year 1 or after year 9999 cannot be converted.

Contract: a converter takes the text of one non-NULL value and returns its Python value,
or raises one of :data:`CONVERSION_ERRORS` when the text is not what the type's output
function produces. :func:`convert_text` wraps those failures in
:class:`~schemas.errors.DecodeError`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import IntEnum
from functools import partial
from types import MappingProxyType
from typing import Final

from cdc.lsn import Lsn
from schemas.errors import DecodeError

__all__ = [
    "CONVERSION_ERRORS",
    "CONVERTERS",
    "Converter",
    "TypeOid",
    "convert_text",
    "converter_for",
    "parse_array",
]

logger = logging.getLogger(__name__)

Converter = Callable[[str], object]
"""Turns the text form of one non-NULL value into its Python value."""

CONVERSION_ERRORS: tuple[type[Exception], ...] = (ValueError, ArithmeticError)
"""What a converter raises on text its type cannot have (``decimal`` raises an
``ArithmeticError`` subclass, everything else a ``ValueError``)."""


class TypeOid(IntEnum):
    """OIDs of the built-in PostgreSQL types this module knows (fixed in ``pg_type.dat``)."""

    BOOL = 16
    BYTEA = 17
    CHAR = 18
    NAME = 19
    INT8 = 20
    INT2 = 21
    INT4 = 23
    TEXT = 25
    OID = 26
    TID = 27
    XID = 28
    CID = 29
    JSON = 114
    XML = 142
    CIDR = 650
    FLOAT4 = 700
    FLOAT8 = 701
    MACADDR8 = 774
    MONEY = 790
    MACADDR = 829
    INET = 869
    BPCHAR = 1042
    VARCHAR = 1043
    DATE = 1082
    TIME = 1083
    TIMESTAMP = 1114
    TIMESTAMPTZ = 1184
    INTERVAL = 1186
    TIMETZ = 1266
    BIT = 1560
    VARBIT = 1562
    NUMERIC = 1700
    UUID = 2950
    PG_LSN = 3220
    JSONB = 3802
    XID8 = 5069

    XID8_ARRAY = 271
    JSON_ARRAY = 199
    XML_ARRAY = 143
    CIDR_ARRAY = 651
    MACADDR8_ARRAY = 775
    MONEY_ARRAY = 791
    BOOL_ARRAY = 1000
    BYTEA_ARRAY = 1001
    CHAR_ARRAY = 1002
    NAME_ARRAY = 1003
    INT2_ARRAY = 1005
    INT4_ARRAY = 1007
    TEXT_ARRAY = 1009
    TID_ARRAY = 1010
    XID_ARRAY = 1011
    CID_ARRAY = 1012
    BPCHAR_ARRAY = 1014
    VARCHAR_ARRAY = 1015
    INT8_ARRAY = 1016
    FLOAT4_ARRAY = 1021
    FLOAT8_ARRAY = 1022
    OID_ARRAY = 1028
    MACADDR_ARRAY = 1040
    INET_ARRAY = 1041
    TIMESTAMP_ARRAY = 1115
    DATE_ARRAY = 1182
    TIME_ARRAY = 1183
    TIMESTAMPTZ_ARRAY = 1185
    INTERVAL_ARRAY = 1187
    NUMERIC_ARRAY = 1231
    TIMETZ_ARRAY = 1270
    BIT_ARRAY = 1561
    VARBIT_ARRAY = 1563
    UUID_ARRAY = 2951
    PG_LSN_ARRAY = 3221
    JSONB_ARRAY = 3807


# ---------------------------------------------------------------------------- scalars


def _text(value: str) -> str:
    return value


def _bool(value: str) -> bool:
    if value == "t":
        return True
    if value == "f":
        return False
    raise ValueError(f"not a boolean: {value!r}")


_DATE_MAX_UTC = datetime.max.replace(tzinfo=UTC)
_DATE_MIN_UTC = datetime.min.replace(tzinfo=UTC)


def _date(value: str) -> date:
    if value == "infinity":
        return date.max
    if value == "-infinity":
        return date.min
    return date.fromisoformat(value)


def _timestamp(value: str) -> datetime:
    if value == "infinity":
        return datetime.max
    if value == "-infinity":
        return datetime.min
    result = datetime.fromisoformat(value)
    if result.tzinfo is not None:
        raise ValueError(f"timestamp without time zone has an offset: {value!r}")
    return result


def _timestamptz(value: str) -> datetime:
    if value == "infinity":
        return _DATE_MAX_UTC
    if value == "-infinity":
        return _DATE_MIN_UTC
    result = datetime.fromisoformat(value)
    if result.tzinfo is None:
        raise ValueError(f"timestamp with time zone lacks an offset: {value!r}")
    return result.astimezone(UTC)


def _time(value: str) -> time:
    # PostgreSQL allows 24:00:00 (end of day); Python's time stops one microsecond short.
    if value.startswith("24:00:00"):
        return time.max.replace(tzinfo=time.fromisoformat("00" + value[2:]).tzinfo)
    return time.fromisoformat(value)


def _timetz(value: str) -> time:
    result = _time(value)
    if result.tzinfo is None:
        raise ValueError(f"time with time zone lacks an offset: {value!r}")
    return result


_BYTEA_ESCAPE = re.compile(r"\\(\\|[0-3][0-7]{2})?")


def _bytea_unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code is None:
        raise ValueError("invalid escape in bytea")
    return "\\" if code == "\\" else chr(int(code, 8))


def _bytea(value: str) -> bytes:
    if value.startswith("\\x"):
        return bytes.fromhex(value[2:])
    # The 'escape' output format: printable ASCII as is, backslash doubled, the rest octal.
    return _BYTEA_ESCAPE.sub(_bytea_unescape, value).encode("latin-1")


# ---------------------------------------------------------------------------- arrays

_ARRAY_TOKEN = re.compile(r'[{},]|"(?:[^"\\]|\\.)*"|[^{},"\\]+', re.DOTALL)
_ARRAY_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_array(text: str, element: Converter) -> list[object]:
    """Parse an array's text output (``{1,2,NULL}``, ``{{"a b",c},{d,e}}``) into lists.

    ``element`` converts each non-NULL element; an unquoted ``NULL`` becomes ``None``.
    A leading dimension decoration (``[0:2]={...}``) is accepted and dropped: the result
    is indexed from zero whatever the array's lower bounds. Raises ``ValueError`` on
    text that ``array_out`` cannot produce.
    """
    body = text
    if body.startswith("["):
        _, sep, body = body.partition("=")
        if not sep:
            raise ValueError(f"malformed array dimensions: {text!r}")
    stack: list[list[object]] = []
    root: list[object] | None = None
    expect_value = False
    allow_close = False
    pos = 0
    for match in _ARRAY_TOKEN.finditer(body):
        if match.start() != pos or root is not None:
            raise ValueError(f"malformed array: {text!r}")
        pos = match.end()
        part = match.group()
        if part == "{":
            if stack and not expect_value:
                raise ValueError(f"malformed array: {text!r}")
            nested: list[object] = []
            if stack:
                stack[-1].append(nested)
            stack.append(nested)
            expect_value = allow_close = True
        elif part == "}":
            if not stack or not allow_close:
                raise ValueError(f"malformed array: {text!r}")
            closed = stack.pop()
            if not stack:
                root = closed
            expect_value, allow_close = False, True
        elif part == ",":
            if not stack or expect_value:
                raise ValueError(f"malformed array: {text!r}")
            expect_value, allow_close = True, False
        else:
            if not stack or not expect_value:
                raise ValueError(f"malformed array: {text!r}")
            if part[0] == '"':
                item: object = element(_ARRAY_UNESCAPE.sub(r"\1", part[1:-1]))
            elif part.upper() == "NULL":
                item = None
            else:
                item = element(part)
            stack[-1].append(item)
            expect_value, allow_close = False, True
    if root is None or pos != len(body):
        raise ValueError(f"malformed array: {text!r}")
    return root


# ---------------------------------------------------------------------------- lookup

_SCALARS: dict[int, Converter] = {
    TypeOid.BOOL: _bool,
    TypeOid.BYTEA: _bytea,
    TypeOid.CHAR: _text,
    TypeOid.NAME: _text,
    TypeOid.INT8: int,
    TypeOid.INT2: int,
    TypeOid.INT4: int,
    TypeOid.TEXT: _text,
    TypeOid.OID: int,
    TypeOid.TID: _text,
    TypeOid.XID: int,
    TypeOid.CID: int,
    TypeOid.JSON: _text,
    TypeOid.XML: _text,
    TypeOid.CIDR: _text,
    TypeOid.FLOAT4: float,
    TypeOid.FLOAT8: float,
    TypeOid.MACADDR8: _text,
    TypeOid.MONEY: _text,
    TypeOid.MACADDR: _text,
    TypeOid.INET: _text,
    TypeOid.BPCHAR: _text,
    TypeOid.VARCHAR: _text,
    TypeOid.DATE: _date,
    TypeOid.TIME: _time,
    TypeOid.TIMESTAMP: _timestamp,
    TypeOid.TIMESTAMPTZ: _timestamptz,
    TypeOid.INTERVAL: _text,
    TypeOid.TIMETZ: _timetz,
    TypeOid.BIT: _text,
    TypeOid.VARBIT: _text,
    TypeOid.NUMERIC: Decimal,
    TypeOid.UUID: uuid.UUID,
    TypeOid.PG_LSN: Lsn.parse,
    TypeOid.JSONB: _text,
    TypeOid.XID8: int,
}

_ARRAYS: dict[int, int] = {
    TypeOid.XID8_ARRAY: TypeOid.XID8,
    TypeOid.JSON_ARRAY: TypeOid.JSON,
    TypeOid.XML_ARRAY: TypeOid.XML,
    TypeOid.CIDR_ARRAY: TypeOid.CIDR,
    TypeOid.MACADDR8_ARRAY: TypeOid.MACADDR8,
    TypeOid.MONEY_ARRAY: TypeOid.MONEY,
    TypeOid.BOOL_ARRAY: TypeOid.BOOL,
    TypeOid.BYTEA_ARRAY: TypeOid.BYTEA,
    TypeOid.CHAR_ARRAY: TypeOid.CHAR,
    TypeOid.NAME_ARRAY: TypeOid.NAME,
    TypeOid.INT2_ARRAY: TypeOid.INT2,
    TypeOid.INT4_ARRAY: TypeOid.INT4,
    TypeOid.TEXT_ARRAY: TypeOid.TEXT,
    TypeOid.TID_ARRAY: TypeOid.TID,
    TypeOid.XID_ARRAY: TypeOid.XID,
    TypeOid.CID_ARRAY: TypeOid.CID,
    TypeOid.BPCHAR_ARRAY: TypeOid.BPCHAR,
    TypeOid.VARCHAR_ARRAY: TypeOid.VARCHAR,
    TypeOid.INT8_ARRAY: TypeOid.INT8,
    TypeOid.FLOAT4_ARRAY: TypeOid.FLOAT4,
    TypeOid.FLOAT8_ARRAY: TypeOid.FLOAT8,
    TypeOid.OID_ARRAY: TypeOid.OID,
    TypeOid.MACADDR_ARRAY: TypeOid.MACADDR,
    TypeOid.INET_ARRAY: TypeOid.INET,
    TypeOid.TIMESTAMP_ARRAY: TypeOid.TIMESTAMP,
    TypeOid.DATE_ARRAY: TypeOid.DATE,
    TypeOid.TIME_ARRAY: TypeOid.TIME,
    TypeOid.TIMESTAMPTZ_ARRAY: TypeOid.TIMESTAMPTZ,
    TypeOid.INTERVAL_ARRAY: TypeOid.INTERVAL,
    TypeOid.NUMERIC_ARRAY: TypeOid.NUMERIC,
    TypeOid.TIMETZ_ARRAY: TypeOid.TIMETZ,
    TypeOid.BIT_ARRAY: TypeOid.BIT,
    TypeOid.VARBIT_ARRAY: TypeOid.VARBIT,
    TypeOid.UUID_ARRAY: TypeOid.UUID,
    TypeOid.PG_LSN_ARRAY: TypeOid.PG_LSN,
    TypeOid.JSONB_ARRAY: TypeOid.JSONB,
}


def _build() -> dict[int, Converter]:
    table: dict[int, Converter] = {int(oid): conv for oid, conv in _SCALARS.items()}
    for array_oid, element_oid in _ARRAYS.items():
        table[int(array_oid)] = partial(parse_array, element=_SCALARS[element_oid])
    return table


_TABLE: Final = _build()

CONVERTERS: Final[Mapping[int, Converter]] = MappingProxyType(_TABLE)
"""Every known type OID (plain ``int`` keys) to its converter; built once at import."""

_reported_unknown: set[int] = set()


def converter_for(type_oid: int) -> Converter:
    """Return the converter for ``type_oid``; unknown OIDs get one that keeps the text.

    The first lookup of each unknown OID is logged at WARNING, later ones are silent.
    """
    converter = _TABLE.get(type_oid)
    if converter is not None:
        return converter
    if type_oid not in _reported_unknown:
        _reported_unknown.add(type_oid)
        logger.warning("no converter for type oid %d; its values are kept as text", type_oid)
    return _text


def convert_text(type_oid: int, text: str) -> object:
    """Convert the text of one non-NULL value of type ``type_oid`` to its Python value.

    Raises :class:`~schemas.errors.DecodeError` when the text is not a valid output of
    that type (or names a value Python cannot represent, such as a BC date).
    """
    try:
        return converter_for(type_oid)(text)
    except CONVERSION_ERRORS as exc:
        raise DecodeError(f"cannot convert {text!r} as type oid {type_oid}: {exc}") from exc
