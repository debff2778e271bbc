"""PgOutputDecoder: round trips, byte vectors from the protocol description, bad input."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.decoding import (
    NULL,
    UNCHANGED_TOAST,
    Begin,
    BinaryValue,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    MessageType,
    Origin,
    PgOutputDecoder,
    Relation,
    ReplicaIdentity,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TruncateOptions,
    TupleData,
    TupleValue,
    Type,
    Update,
    tuple_to_dict,
)
from cdc.lsn import Lsn
from cdc.values import TypeOid
from schemas.errors import DecodeError
from tests.unit.pgoutput_encoder import encode

# ---------------------------------------------------------------------------- strategies

uint32 = st.integers(min_value=0, max_value=2**32 - 1)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
uint8 = st.integers(min_value=0, max_value=255)
lsns = st.integers(min_value=0, max_value=2**64 - 1).map(Lsn)
timestamps = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
).map(lambda ts: ts.replace(tzinfo=UTC))
# Names are NUL-terminated on the wire; anything else UTF-8 can carry is fair game.
names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=16)
column_names = st.one_of(
    names.filter(bool),
    st.sampled_from(["id", "Ünïcödé", "名前", "select", "with space", "a\"b'c", "😀", "é" * 63]),
)
xids = st.none() | uint32

tuple_values: st.SearchStrategy[TupleValue] = st.one_of(
    st.just(NULL),
    st.just(UNCHANGED_TOAST),
    st.binary(max_size=32),
    names.map(lambda text: text.encode("utf-8")),
    st.binary(max_size=8).map(BinaryValue),
)


@st.composite
def relations(draw: st.DrawFn, xid: int | None = None) -> Relation:
    columns = draw(
        st.lists(
            st.builds(
                Column,
                flags=st.sampled_from([0, 1]) | uint8,
                name=column_names,
                type_oid=st.sampled_from(list(TypeOid)).map(int) | uint32,
                type_modifier=int32,
            ),
            max_size=12,
        )
    )
    return Relation(
        oid=draw(uint32),
        namespace=draw(names),
        name=draw(names),
        replica_identity=draw(st.sampled_from(ReplicaIdentity)),
        columns=tuple(columns),
        xid=xid,
    )


def rows(relation: Relation) -> st.SearchStrategy[TupleData]:
    size = len(relation.columns)
    return st.lists(tuple_values, min_size=size, max_size=size).map(tuple)


def dml(relation: Relation, xid: int | None) -> st.SearchStrategy[Message]:
    oid = relation.oid
    row = rows(relation)
    inserts = st.builds(Insert, st.just(oid), row, st.just(xid))
    updates = st.one_of(
        st.builds(Update, st.just(oid), st.none(), st.none(), row, st.just(xid)),
        st.builds(Update, st.just(oid), row, st.none(), row, st.just(xid)),
        st.builds(Update, st.just(oid), st.none(), row, row, st.just(xid)),
    )
    deletes = st.one_of(
        st.builds(Delete, st.just(oid), row, st.none(), st.just(xid)),
        st.builds(Delete, st.just(oid), st.none(), row, st.just(xid)),
    )
    return st.one_of(inserts, updates, deletes)


def standalone(xid: int | None) -> st.SearchStrategy[Message]:
    """Messages that do not need a known relation, as they appear in or out of a stream."""
    carried_xid = st.just(xid)
    in_either: list[st.SearchStrategy[Message]] = [
        st.builds(Type, uint32, names, names, carried_xid),
        st.builds(
            Truncate,
            st.builds(TruncateOptions, st.integers(0, 3)),
            st.lists(uint32, max_size=6).map(tuple),
            carried_xid,
        ),
        st.builds(LogicalMessage, st.booleans(), lsns, names, st.binary(max_size=64), carried_xid),
    ]
    if xid is not None:
        return st.one_of(in_either)
    return st.one_of(
        *in_either,
        st.builds(Begin, lsns, timestamps, uint32),
        st.builds(Commit, uint8, lsns, lsns, timestamps),
        st.builds(Origin, lsns, names),
        st.builds(StreamCommit, uint32, uint8, lsns, lsns, timestamps),
        st.builds(StreamAbort, uint32, uint32),
        st.builds(StreamAbort, uint32, uint32, lsns, timestamps),
    )


# ---------------------------------------------------------------------------- round trips


@given(standalone(None))
def test_round_trip_outside_streams(message: Message) -> None:
    assert PgOutputDecoder().decode(encode(message)) == message


@given(st.data())
def test_round_trip_relation_then_changes(data: st.DataObject) -> None:
    decoder = PgOutputDecoder()
    relation = data.draw(relations())
    assert decoder.decode(encode(relation)) == relation
    assert decoder.relation(relation.oid) == relation
    for _ in range(3):
        change = data.draw(dml(relation, None))
        assert decoder.decode(encode(change)) == change


@given(st.data(), uint32, st.booleans())
def test_round_trip_inside_a_stream(data: st.DataObject, xid: int, first: bool) -> None:
    decoder = PgOutputDecoder()
    assert decoder.decode(encode(StreamStart(xid, first))) == StreamStart(xid, first)
    assert decoder.in_stream
    relation = data.draw(relations(xid))
    assert decoder.decode(encode(relation)) == relation
    for message in (data.draw(dml(relation, xid)), data.draw(standalone(xid))):
        assert decoder.decode(encode(message)) == message
    assert decoder.decode(b"E") == StreamStop()
    assert not decoder.in_stream
    # Outside the block the same kinds carry no xid again.
    plain = Insert(relation.oid, (NULL,) * len(relation.columns))
    assert decoder.decode(encode(plain)) == plain


@given(st.data())
def test_every_proper_prefix_is_a_decode_error(data: st.DataObject) -> None:
    relation = data.draw(relations())
    message = data.draw(st.one_of(standalone(None), dml(relation, None), st.just(relation)))
    wire = encode(message)
    for size in range(len(wire)):
        if isinstance(message, StreamAbort) and size == 9:
            continue  # a protocol-4 abort cut after the subxid is a complete protocol-2 abort
        decoder = PgOutputDecoder()
        if relation.oid != getattr(message, "oid", None):
            decoder.decode(encode(relation))
        before = dict(decoder.relations)
        with pytest.raises(DecodeError):
            decoder.decode(wire[:size])
        assert dict(decoder.relations) == before


@given(st.data(), st.binary(min_size=1, max_size=4))
def test_trailing_bytes_are_a_decode_error(data: st.DataObject, extra: bytes) -> None:
    relation = data.draw(relations())
    message = data.draw(st.one_of(standalone(None), dml(relation, None), st.just(relation)))
    decoder = PgOutputDecoder()
    decoder.decode(encode(relation))
    wire = encode(message) + extra
    if isinstance(message, StreamAbort) and message.abort_lsn is None and len(extra) == 16:
        return  # that is a well-formed protocol-4 abort
    with pytest.raises(DecodeError, match=r"trailing|malformed"):
        decoder.decode(wire)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(list(MessageType)), st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_decode_error(kind: MessageType, body: bytes) -> None:
    decoder = PgOutputDecoder()
    decoder.decode(encode(Relation(1, "s", "t", ReplicaIdentity.DEFAULT, ())))
    with contextlib.suppress(DecodeError):
        decoder.decode(kind.value + body)


def test_accepts_any_buffer() -> None:
    wire = encode(Origin(Lsn(7), "sink"))
    decoder = PgOutputDecoder()
    assert (
        decoder.decode(memoryview(wire))
        == decoder.decode(bytearray(wire))
        == Origin(Lsn(7), "sink")
    )


# ---------------------------------------------------------------------------- byte vectors

COMMIT_TS = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
TS_BYTES = bytes.fromhex("0002ba60517a0800")  # 767872800000000 us after 2000-01-01

RELATION_BYTES = (
    b"R"
    + bytes.fromhex("00004000")  # oid 16384
    + b"public\0res_partner\0"
    + b"d"
    + bytes.fromhex("0002")
    + b"\x01id\0"
    + bytes.fromhex("00000017 ffffffff")  # int4, no modifier
    + b"\x00name\0"
    + bytes.fromhex("00000413 00000044")  # varchar(64): modifier 64 + 4
)
RES_PARTNER = Relation(
    oid=16384,
    namespace="public",
    name="res_partner",
    replica_identity=ReplicaIdentity.DEFAULT,
    columns=(Column(1, "id", 23, -1), Column(0, "name", 1043, 68)),
)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        pytest.param(
            b"B" + bytes.fromhex("00000000016b3748") + TS_BYTES + bytes.fromhex("000002e6"),
            Begin(Lsn.parse("0/16B3748"), COMMIT_TS, 742),
            id="begin",
        ),
        pytest.param(
            b"C\x00" + bytes.fromhex("00000000016b3748 00000000016b3778") + TS_BYTES,
            Commit(0, Lsn.parse("0/16B3748"), Lsn.parse("0/16B3778"), COMMIT_TS),
            id="commit",
        ),
        pytest.param(
            b"O" + bytes.fromhex("0000000100000010") + b"crm_sink\0",
            Origin(Lsn.parse("1/10"), "crm_sink"),
            id="origin",
        ),
        pytest.param(RELATION_BYTES, RES_PARTNER, id="relation"),
        pytest.param(
            b"Y" + bytes.fromhex("00004001") + b"public\0mood\0",
            Type(16385, "public", "mood"),
            id="type",
        ),
        pytest.param(
            b"I"
            + bytes.fromhex("00004000")
            + b"N"
            + bytes.fromhex("0002")
            + b"t"
            + bytes.fromhex("00000001")
            + b"1"
            + b"t"
            + bytes.fromhex("00000003")
            + b"Ada",
            Insert(16384, (b"1", b"Ada")),
            id="insert",
        ),
        pytest.param(
            b"U"
            + bytes.fromhex("00004000")
            + b"K"
            + bytes.fromhex("0002")
            + b"t"
            + bytes.fromhex("00000001")
            + b"1"
            + b"n"
            + b"N"
            + bytes.fromhex("0002")
            + b"t"
            + bytes.fromhex("00000001")
            + b"2"
            + b"u",
            Update(16384, (b"1", NULL), None, (b"2", UNCHANGED_TOAST)),
            id="update-key-changed",
        ),
        pytest.param(
            b"U" + bytes.fromhex("00004000") + b"N" + bytes.fromhex("0002") + b"n" + b"n",
            Update(16384, None, None, (NULL, NULL)),
            id="update",
        ),
        pytest.param(
            b"D"
            + bytes.fromhex("00004000")
            + b"O"
            + bytes.fromhex("0002")
            + b"t"
            + bytes.fromhex("00000001")
            + b"1"
            + b"t"
            + bytes.fromhex("00000000"),
            Delete(16384, None, (b"1", b"")),
            id="delete-full",
        ),
        pytest.param(
            b"T" + bytes.fromhex("00000002") + b"\x03" + bytes.fromhex("00004000 00004001"),
            Truncate(TruncateOptions.CASCADE | TruncateOptions.RESTART_IDENTITY, (16384, 16385)),
            id="truncate",
        ),
        pytest.param(
            b"M\x01"
            + bytes.fromhex("0000000000000100")
            + b"erpcrm.heartbeat\0"
            + b"\x00\x00\x00\x02hi",
            LogicalMessage(True, Lsn(256), "erpcrm.heartbeat", b"hi"),
            id="message",
        ),
        pytest.param(
            b"c"
            + bytes.fromhex("000002e6")
            + b"\x00"
            + bytes.fromhex("00000000016b3748")
            + bytes.fromhex("00000000016b3778")
            + TS_BYTES,
            StreamCommit(742, 0, Lsn.parse("0/16B3748"), Lsn.parse("0/16B3778"), COMMIT_TS),
            id="stream-commit",
        ),
        pytest.param(
            b"A" + bytes.fromhex("000002e6 000002e7"), StreamAbort(742, 743), id="stream-abort"
        ),
    ],
)
def test_byte_vectors(wire: bytes, expected: Message) -> None:
    decoder = PgOutputDecoder()
    decoder.decode(RELATION_BYTES)
    assert decoder.decode(wire) == expected
    assert encode(expected) == wire


def test_streamed_insert_vector() -> None:
    decoder = PgOutputDecoder()
    decoder.decode(RELATION_BYTES)
    assert decoder.decode(b"S" + bytes.fromhex("000002e6") + b"\x01") == StreamStart(742, True)
    wire = b"I" + bytes.fromhex("000002e6 00004000") + b"N" + bytes.fromhex("0002") + b"nu"
    assert decoder.decode(wire) == Insert(16384, (NULL, UNCHANGED_TOAST), xid=742)


def test_message_accessors() -> None:
    assert RES_PARTNER.key_columns == (Column(1, "id", 23, -1),)
    assert RES_PARTNER.columns[0].is_key
    assert not RES_PARTNER.columns[1].is_key
    truncate = Truncate(TruncateOptions.RESTART_IDENTITY, (1,))
    assert truncate.restart_identity
    assert not truncate.cascade
    assert Begin.TYPE is MessageType.BEGIN
    assert len({NULL, UNCHANGED_TOAST, None}) == 3
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"


def test_relation_is_replaced_by_a_later_one() -> None:
    decoder = PgOutputDecoder()
    decoder.decode(RELATION_BYTES)
    altered = Relation(
        16384, "public", "res_partner", ReplicaIdentity.FULL, (Column(1, "id", 23, -1),)
    )
    decoder.decode(encode(altered))
    assert decoder.relations[16384] == altered
    assert decoder.decode(encode(Insert(16384, (b"7",)))) == Insert(16384, (b"7",))


def test_type_message_is_remembered() -> None:
    decoder = PgOutputDecoder()
    decoder.decode(encode(Type(16385, "public", "mood")))
    assert decoder.types[16385].name == "mood"


# ---------------------------------------------------------------------------- bad input


def decode_error(wire: bytes, *, known: bool = True) -> str:
    decoder = PgOutputDecoder()
    if known:
        decoder.decode(RELATION_BYTES)
    with pytest.raises(DecodeError) as info:
        decoder.decode(wire)
    return str(info.value)


def test_empty_message() -> None:
    assert "offset 0" in decode_error(b"")


@pytest.mark.parametrize("first", [b"Z", b"b", b"P", b"K", b"\x00"])
def test_unknown_message_type(first: bytes) -> None:
    assert "unknown pgoutput message type" in decode_error(first + b"\x00" * 20)


def test_unknown_relation_oid() -> None:
    wire = encode(Insert(16384, (b"1", b"Ada")))
    message = decode_error(wire, known=False)
    assert "INSERT" in message
    assert "unknown relation oid 16384" in message
    with pytest.raises(DecodeError):
        PgOutputDecoder().relation(16384)
    for change in (Update(16384, None, None, (NULL, NULL)), Delete(16384, (NULL, NULL), None)):
        assert "unknown relation" in decode_error(encode(change), known=False)


def test_tuple_column_count_must_match_relation() -> None:
    message = decode_error(encode(Insert(16384, (b"1",))))
    assert "INSERT message malformed at offset 6" in message
    assert "1 columns, relation has 2" in message


def test_truncated_value_names_type_and_offset() -> None:
    wire = encode(Insert(16384, (b"1", b"Ada")))
    assert decode_error(wire[:-1]) == (
        "INSERT message truncated at offset 19: need 3 bytes, 2 left"
    )


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        (b"I\x00\x00\x40\x00N\x00\x02x\x00", "unknown column kind b'x'"),
        (b"I\x00\x00\x40\x00K\x00\x02nn", "expected 'N', got b'K'"),
        (b"D\x00\x00\x40\x00N\x00\x02nn", "expected 'K' or 'O', got b'N'"),
        (b"U\x00\x00\x40\x00X\x00\x02nn", "expected 'K', 'O' or 'N', got b'X'"),
        (b"I\x00\x00\x40\x00N\x00\x02t\xff\xff\xff\xffn", "negative value length -1"),
        (b"M\x00" + b"\x00" * 8 + b"p\0\xff\xff\xff\xff", "negative content length"),
        (b"O" + b"\x00" * 8 + b"no-nul", "string without terminating NUL"),
        (b"O" + b"\x00" * 8 + b"\xff\xfe\0", "not UTF-8"),
        (b"R\x00\x00\x00\x01s\0t\0x\x00\x00", "unknown replica identity b'x'"),
        (b"E", "stream stop without an open stream"),
    ],
)
def test_malformed_messages(wire: bytes, fragment: str) -> None:
    assert fragment in decode_error(wire)


def test_stream_start_inside_a_stream() -> None:
    decoder = PgOutputDecoder()
    decoder.decode(encode(StreamStart(1, True)))
    with pytest.raises(DecodeError, match="inside an open stream"):
        decoder.decode(encode(StreamStart(2, False)))
    assert decoder.in_stream


def test_commit_timestamp_out_of_python_range() -> None:
    wire = b"B" + b"\x00" * 8 + b"\x7f" + b"\xff" * 7 + b"\x00" * 4
    assert "timestamp" in decode_error(wire)


# ---------------------------------------------------------------------------- tuple_to_dict


def test_tuple_to_dict_converts_by_column_type() -> None:
    relation = Relation(
        1,
        "public",
        "product_product",
        ReplicaIdentity.DEFAULT,
        (
            Column(1, "id", TypeOid.INT4, -1),
            Column(0, "名前", TypeOid.TEXT, -1),
            Column(0, "list_price", TypeOid.NUMERIC, -1),
            Column(0, "write_date", TypeOid.TIMESTAMPTZ, -1),
            Column(0, "active", TypeOid.BOOL, -1),
            Column(0, "notes", TypeOid.TEXT, -1),
            Column(0, "blob", TypeOid.BYTEA, -1),
            Column(0, "raw", TypeOid.INT8, -1),
        ),
    )
    row = tuple_to_dict(
        relation,
        (
            b"42",
            "Schraube ø4".encode(),
            b"12.50",
            b"2024-05-01 10:00:00.123+02",
            b"t",
            NULL,
            UNCHANGED_TOAST,
            BinaryValue(b"\x00\x00\x00\x00\x00\x00\x00\x07"),
        ),
    )
    assert row == {
        "id": 42,
        "名前": "Schraube ø4",
        "list_price": Decimal("12.50"),
        "write_date": datetime(2024, 5, 1, 8, 0, 0, 123000, tzinfo=UTC),
        "active": True,
        "notes": None,
        "blob": UNCHANGED_TOAST,
        "raw": b"\x00\x00\x00\x00\x00\x00\x00\x07",
    }


def test_tuple_to_dict_names_the_bad_column() -> None:
    with pytest.raises(DecodeError, match="res_partner column id"):
        tuple_to_dict(RES_PARTNER, (b"one", b"Ada"))
    with pytest.raises(DecodeError, match="tuple has 1 columns"):
        tuple_to_dict(RES_PARTNER, (b"1",))
    with pytest.raises(DecodeError, match="column name"):
        tuple_to_dict(RES_PARTNER, (b"1", b"\xff"))
