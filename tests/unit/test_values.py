"""Text-format value conversion: round trips through PostgreSQL's output forms, edge cases."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.lsn import Lsn
from cdc.values import CONVERTERS, TypeOid, convert_text, converter_for, parse_array
from schemas.errors import DecodeError

# ---------------------------------------------------------------------------- PostgreSQL text forms


def pg_fraction(micro: int) -> str:
    return f".{micro:06d}".rstrip("0") if micro else ""


def pg_timestamp(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0") + pg_fraction(ts.microsecond)


def pg_offset(offset: timedelta) -> str:
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}"
    if minutes or secs:
        text += f":{minutes:02d}"
    if secs:
        text += f":{secs:02d}"
    return text


def pg_bytea_escape(data: bytes) -> str:
    out = []
    for byte in data:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def pg_array(value: object, element: Callable[[Any], str] = str) -> str:
    if isinstance(value, list):
        return "{" + ",".join(pg_array(item, element) for item in value) + "}"
    if value is None:
        return "NULL"
    text = element(value)
    needs_quotes = (
        text == "" or text.upper() == "NULL" or any(ch in text for ch in '{},"\\ \t\n\r\v\f')
    )
    if needs_quotes:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


# ---------------------------------------------------------------------------- round trips


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int8_round_trip(value: int) -> None:
    assert convert_text(TypeOid.INT8, str(value)) == value


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_int4_and_int2_round_trip(value: int) -> None:
    assert convert_text(TypeOid.INT4, str(value)) == value
    assert convert_text(TypeOid.INT2, str(value % 2**15)) == value % 2**15


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_numeric_round_trip(value: Decimal) -> None:
    converted = convert_text(TypeOid.NUMERIC, format(value, "f"))
    assert isinstance(converted, Decimal)
    assert converted == value


@given(st.floats(allow_nan=False))
def test_float8_round_trip(value: float) -> None:
    text = repr(value).replace("inf", "Infinity")
    assert convert_text(TypeOid.FLOAT8, text) == value


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999))
)
def test_timestamp_round_trip(value: datetime) -> None:
    converted = convert_text(TypeOid.TIMESTAMP, pg_timestamp(value))
    assert converted == value
    assert isinstance(converted, datetime)
    assert converted.tzinfo is None


offsets = st.integers(min_value=-15 * 3600 + 1, max_value=15 * 3600 - 1).map(
    lambda seconds: timedelta(seconds=seconds)
)


@given(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)), offsets)
def test_timestamptz_round_trip(local: datetime, offset: timedelta) -> None:
    text = pg_timestamp(local) + pg_offset(offset)
    converted = convert_text(TypeOid.TIMESTAMPTZ, text)
    assert isinstance(converted, datetime)
    assert converted.tzinfo is UTC
    assert converted == local.replace(tzinfo=timezone(offset))


@given(st.dates())
def test_date_round_trip(value: date) -> None:
    assert convert_text(TypeOid.DATE, value.isoformat()) == value


@given(st.times())
def test_time_round_trip(value: time) -> None:
    text = value.strftime("%H:%M:%S") + pg_fraction(value.microsecond)
    assert convert_text(TypeOid.TIME, text) == value


@given(st.uuids())
def test_uuid_round_trip(value: uuid.UUID) -> None:
    assert convert_text(TypeOid.UUID, str(value)) == value


@given(st.binary())
def test_bytea_round_trip_in_both_output_formats(value: bytes) -> None:
    assert convert_text(TypeOid.BYTEA, "\\x" + value.hex()) == value
    assert convert_text(TypeOid.BYTEA, pg_bytea_escape(value)) == value


@given(st.binary(min_size=1))
def test_bytea_escape_round_trips_only_valid_escapes(value: bytes) -> None:
    # A lone backslash is never produced by bytea's escape output.
    with pytest.raises(DecodeError):
        convert_text(TypeOid.BYTEA, pg_bytea_escape(value) + "\\")


@given(st.lists(st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1)))
def test_int4_array_round_trip(value: list[int | None]) -> None:
    assert convert_text(TypeOid.INT4_ARRAY, pg_array(value)) == value


texts = st.text(st.characters(codec="utf-8", exclude_characters="\0"))


@given(st.lists(st.none() | texts))
def test_text_array_round_trip(value: list[str | None]) -> None:
    assert convert_text(TypeOid.TEXT_ARRAY, pg_array(value)) == value


@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_two_dimensional_array_round_trip(rows: int, cols: int, data: st.DataObject) -> None:
    value = [
        data.draw(
            st.lists(
                st.none() | st.decimals(allow_nan=False, allow_infinity=False),
                min_size=cols,
                max_size=cols,
            )
        )
        for _ in range(rows)
    ]
    assert convert_text(TypeOid.NUMERIC_ARRAY, pg_array(value, lambda d: format(d, "f"))) == value


@given(st.lists(st.uuids()))
def test_uuid_array_round_trip(value: list[uuid.UUID]) -> None:
    assert convert_text(TypeOid.UUID_ARRAY, pg_array(value)) == value


# ---------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (TypeOid.BOOL, "t", True),
        (TypeOid.BOOL, "f", False),
        (TypeOid.OID, "4294967295", 4294967295),
        (TypeOid.XID8, "18446744073709551615", 18446744073709551615),
        (TypeOid.NUMERIC, "Infinity", Decimal("Infinity")),
        (TypeOid.NUMERIC, "-Infinity", Decimal("-Infinity")),
        (TypeOid.NUMERIC, "0.000000000000000000001", Decimal("1E-21")),
        (TypeOid.FLOAT8, "Infinity", math.inf),
        (TypeOid.FLOAT8, "-Infinity", -math.inf),
        (TypeOid.FLOAT4, "1e+30", 1e30),
        (TypeOid.FLOAT8, "-0", -0.0),
        (TypeOid.TEXT, "", ""),
        (TypeOid.BPCHAR, "ab   ", "ab   "),
        (TypeOid.VARCHAR, "Zürich", "Zürich"),
        (TypeOid.NAME, "res_partner", "res_partner"),
        (TypeOid.CHAR, "d", "d"),
        (TypeOid.JSONB, '{"a": [1, 2.5, null]}', '{"a": [1, 2.5, null]}'),
        (TypeOid.JSON, '{"a" :1}', '{"a" :1}'),
        (TypeOid.INTERVAL, "1 year 2 mons 3 days 04:05:06.7", "1 year 2 mons 3 days 04:05:06.7"),
        (TypeOid.MONEY, "$1,000.00", "$1,000.00"),
        (TypeOid.INET, "192.168.0.1/24", "192.168.0.1/24"),
        (TypeOid.DATE, "infinity", date.max),
        (TypeOid.DATE, "-infinity", date.min),
        (TypeOid.TIMESTAMP, "infinity", datetime.max),
        (TypeOid.TIMESTAMP, "-infinity", datetime.min),
        (
            TypeOid.TIMESTAMP,
            "2024-02-29 23:59:59.999999",
            datetime(2024, 2, 29, 23, 59, 59, 999999),
        ),
        (TypeOid.TIMESTAMPTZ, "infinity", datetime.max.replace(tzinfo=UTC)),
        (TypeOid.TIMESTAMPTZ, "-infinity", datetime.min.replace(tzinfo=UTC)),
        (
            TypeOid.TIMESTAMPTZ,
            "2024-05-01 10:00:00.123+02",
            datetime(2024, 5, 1, 8, 0, 0, 123000, tzinfo=UTC),
        ),
        (TypeOid.TIMESTAMPTZ, "2024-05-01 10:00:00+05:30", datetime(2024, 5, 1, 4, 30, tzinfo=UTC)),
        (
            TypeOid.TIMESTAMPTZ,
            "1883-11-18 12:00:00-04:56:02",
            datetime(1883, 11, 18, 16, 56, 2, tzinfo=UTC),
        ),
        (TypeOid.TIME, "24:00:00", time.max),
        (TypeOid.TIME, "13:45:00.5", time(13, 45, 0, 500000)),
        (TypeOid.TIMETZ, "13:45:00+02", time(13, 45, tzinfo=timezone(timedelta(hours=2)))),
        (
            TypeOid.TIMETZ,
            "24:00:00-03:30",
            time.max.replace(tzinfo=timezone(-timedelta(hours=3, minutes=30))),
        ),
        (TypeOid.PG_LSN, "16/B374D848", Lsn.parse("16/B374D848")),
        (TypeOid.BYTEA, "\\x", b""),
        (TypeOid.BYTEA, "\\xDEADbeef", b"\xde\xad\xbe\xef"),
        (TypeOid.BYTEA, "a\\\\b\\000\\377", b"a\\b\x00\xff"),
        (TypeOid.INT4_ARRAY, "{}", []),
        (TypeOid.INT4_ARRAY, "[0:2]={1,2,3}", [1, 2, 3]),
        (TypeOid.INT4_ARRAY, "{{1,2},{3,NULL}}", [[1, 2], [3, None]]),
        (
            TypeOid.TEXT_ARRAY,
            '{"NULL",null,"a\\"b","c\\\\d",""," "}',
            ["NULL", None, 'a"b', "c\\d", "", " "],
        ),
        (TypeOid.BOOL_ARRAY, "{t,f}", [True, False]),
        (TypeOid.BYTEA_ARRAY, '{"\\\\x0102"}', [b"\x01\x02"]),
        (TypeOid.JSONB_ARRAY, '{"{\\"a\\": 1}"}', ['{"a": 1}']),
        (
            TypeOid.TIMESTAMPTZ_ARRAY,
            '{"2024-05-01 10:00:00+00",infinity}',
            [datetime(2024, 5, 1, 10, tzinfo=UTC), datetime.max.replace(tzinfo=UTC)],
        ),
        (TypeOid.DATE_ARRAY, "{2024-05-01,NULL}", [date(2024, 5, 1), None]),
    ],
)
def test_conversions(oid: TypeOid, text: str, expected: object) -> None:
    converted = convert_text(oid, text)
    assert converted == expected
    assert type(converted) is type(expected)


@pytest.mark.parametrize("oid", [TypeOid.FLOAT4, TypeOid.FLOAT8])
def test_float_nan(oid: TypeOid) -> None:
    converted = convert_text(oid, "NaN")
    assert isinstance(converted, float)
    assert math.isnan(converted)


def test_numeric_nan() -> None:
    converted = convert_text(TypeOid.NUMERIC, "NaN")
    assert isinstance(converted, Decimal)
    assert converted.is_nan()


def test_timestamptz_is_converted_to_utc() -> None:
    converted = convert_text(TypeOid.TIMESTAMPTZ, "2024-01-01 00:30:00+01")
    assert converted == datetime(2023, 12, 31, 23, 30, tzinfo=UTC)
    assert isinstance(converted, datetime)
    assert converted.tzinfo is UTC


@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (TypeOid.INT4, "one"),
        (TypeOid.INT4, ""),
        (TypeOid.NUMERIC, "12,5"),
        (TypeOid.FLOAT8, "fast"),
        (TypeOid.BOOL, "true"),
        (TypeOid.BOOL, "T"),
        (TypeOid.DATE, "0044-03-15 BC"),
        (TypeOid.DATE, "10000-01-01"),
        (TypeOid.DATE, "05/01/2024"),
        (TypeOid.TIMESTAMP, "2024-05-01 10:00:00+02"),
        (TypeOid.TIMESTAMP, "Wed May 01 10:00:00 2024"),
        (TypeOid.TIMESTAMPTZ, "2024-05-01 10:00:00"),
        (TypeOid.TIMESTAMPTZ, "0001-01-01 00:30:00+01"),
        (TypeOid.TIMETZ, "10:00:00"),
        (TypeOid.TIME, "25:00:00"),
        (TypeOid.UUID, "not-a-uuid"),
        (TypeOid.BYTEA, "\\xABC"),
        (TypeOid.BYTEA, "\\q"),
        (TypeOid.PG_LSN, "16-B374D848"),
        (TypeOid.INT4_ARRAY, "1,2"),
        (TypeOid.INT4_ARRAY, "{1,2"),
        (TypeOid.INT4_ARRAY, "{1,,2}"),
        (TypeOid.INT4_ARRAY, "{1,2}}"),
        (TypeOid.INT4_ARRAY, "{1,2}{3}"),
        (TypeOid.INT4_ARRAY, "{,}"),
        (TypeOid.INT4_ARRAY, "{1 2}"),
        (TypeOid.INT4_ARRAY, '{"1"2}'),
        (TypeOid.INT4_ARRAY, "[1:2]{1,2}"),
        (TypeOid.INT4_ARRAY, "{x}"),
    ],
)
def test_invalid_text_is_a_decode_error(oid: TypeOid, text: str) -> None:
    with pytest.raises(DecodeError, match=f"type oid {int(oid)}"):
        convert_text(oid, text)


def test_unknown_type_is_kept_as_text_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    unknown = 987_654
    assert unknown not in CONVERTERS
    with caplog.at_level(logging.WARNING, logger="cdc.values"):
        assert convert_text(unknown, "happy") == "happy"
        assert convert_text(unknown, "sad") == "sad"
        assert converter_for(unknown)("ok") == "ok"
    records = [r for r in caplog.records if r.name == "cdc.values"]
    assert len(records) == 1
    assert "987654" in records[0].getMessage()


def test_every_array_oid_has_a_converter() -> None:
    for oid in TypeOid:
        assert int(oid) in CONVERTERS
        if oid.name.endswith("_ARRAY"):
            assert convert_text(oid, "{}") == []
            assert convert_text(oid, "{NULL}") == [None]


def test_parse_array_with_custom_element() -> None:
    assert parse_array('{a,"b c"}', str.upper) == ["A", "B C"]
