"""Property: how events are delivered does not change what a sink leaves in its target.

(Compared as the records a user sees: a soft-deleted row and a row never created are
the same deleted record; which of the two remains depends on whether a create was
applied before the delete, i.e. on batching.)

Against the real CRM database, with :class:`~sinks.postgres.PostgresUpsertSink` applying
synthetic canonical customer and product events directly (no Kafka: the property is
about the apply step). For any per-key sequence of versions (upserts and deletes), the
target tables are the same whether the events are

- delivered once, keys interleaved at random, in batches of random sizes;
- delivered twice (a full replay);
- delivered with redeliveries: after any batch, an earlier stretch is delivered again,
  as a consumer does after a crash (per-key order within a delivery is kept, as Kafka
  keeps it within a partition);

and they equal the latest version of each key.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row

from schemas.canonical import METADATA_FIELDS, canonical_schema
from schemas.payload import payload_hash, payload_hash_header
from schemas.serde import AvroSerde, LocalSchemaRegistry
from sinks.batch import DECIDING_FIELDS, SinkBatch, SinkEvent
from sinks.postgres import PostgresUpsertSink, _Clocks
from sinks.state import LETTERED
from sinks.targets import KEY, deterministic_id
from tests.integration.cdc_fixtures import execute
from tests.integration.sink_fixtures import direct_sink, disown

pytestmark = pytest.mark.integration

_BASE = 900_000_000 + uuid.uuid4().int % 90_000_000  # fresh ids every session
KEYS = tuple(f"erp:{_BASE + i}" for i in range(4))
SKUS = {key: f"PROP-{uuid.uuid4().hex[:6].upper()}-{i}" for i, key in enumerate(KEYS)}
NUMBERS = {key: f"P{uuid.uuid4().hex[:7].upper()}" for key in KEYS}


@pytest.fixture(scope="module")
def sink(stack_env: dict[str, str]) -> Iterator[PostgresUpsertSink]:
    entities = ("customer", "product")
    with direct_sink(stack_env, "crm", entities, announce=False, prefix="prop") as applying:
        try:
            yield applying
        finally:
            _reset(stack_env, applying._schema)


def _reset(env: dict[str, str], schema: str) -> None:
    admin = env["CRM_ADMIN_DSN"]
    ids = [deterministic_id(e, k) for e in ("customer", "product") for k in KEYS]
    execute(admin, "DELETE FROM public.accounts WHERE id = ANY(%s::uuid[])", (ids,))
    execute(admin, "DELETE FROM public.aos_products WHERE id = ANY(%s::uuid[])", (ids,))
    for table in ("applied", "offsets"):
        execute(admin, sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, table)))


def _state(env: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """The live rows of the keys (a soft-deleted row is a deleted record, as no row is)."""
    admin = env["CRM_ADMIN_DSN"]
    customers = [deterministic_id("customer", k) for k in KEYS]
    products = [deterministic_id("product", k) for k in KEYS]
    return {
        "accounts": execute(
            admin,
            "SELECT id::text, name, account_number, email, billing_address_city "
            "FROM public.accounts WHERE id = ANY(%s::uuid[]) AND NOT deleted ORDER BY id",
            (customers,),
        ),
        "aos_products": execute(
            admin,
            "SELECT id::text, part_number, name, price FROM public.aos_products "
            "WHERE id = ANY(%s::uuid[]) AND NOT deleted ORDER BY id",
            (products,),
        ),
    }


# -- the events -------------------------------------------------------------------------

_change = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["upsert", "upsert", "upsert", "delete"]),
        "name": st.sampled_from(["Alpha", "Beta", "Gamma", "Delta"]),
        "city": st.sampled_from(["Berlin", "Köln", None]),
        "price": st.integers(min_value=0, max_value=500),
    }
)
_history = st.dictionaries(
    st.tuples(st.sampled_from(["customer", "product"]), st.sampled_from(KEYS)),
    st.lists(_change, min_size=1, max_size=4),
    min_size=1,
    max_size=6,
)


def _record(entity: str, key: str, version: int, change: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": f"{entity}|{key}|{version}",
        "source_system": "erp",
        "source_lsn": version,
        "source_tx_id": version,
        "source_ts_ms": 1_700_000_000_000 + version,
        "op": change["op"],
        "version": version,
        "erp_id": key.split(":")[1],
        "crm_id": None,
        "name": change["name"],
        "active": True,
    }
    if entity == "customer":
        base.update(customer_number=NUMBERS[key], email=f"{change['name'].lower()}@example.com")
        base.update(city=change["city"], is_company=True)
    else:
        base.update(sku=SKUS[key], list_price=change["price"], standard_price=0, currency="EUR")
    return base


def _events(history: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[Any, list[Any]]:
    """Per key, its events in version order (versions strictly increasing)."""
    return {
        (entity, key): [
            _record(entity, key, 10 * (i + 1), change) for i, change in enumerate(changes)
        ]
        for (entity, key), changes in history.items()
    }


def _interleave(per_key: dict[Any, list[Any]], picks: Sequence[int]) -> list[tuple[Any, Any]]:
    """One delivery: keys interleaved by ``picks``, each key's order kept."""
    queues = {k: list(v) for k, v in per_key.items()}
    order: list[tuple[Any, Any]] = []
    for pick in itertools.chain(picks, itertools.repeat(0)):
        live = [k for k, q in queues.items() if q]
        if not live:
            return order
        key = live[pick % len(live)]
        order.append((key, queues[key].pop(0)))
    return order


def _deliver(
    sink: PostgresUpsertSink, delivery: list[tuple[Any, Any]], sizes: Sequence[int]
) -> None:
    offset = 0
    index = 0
    for size in itertools.chain(sizes, itertools.repeat(3)):
        if index >= len(delivery):
            return
        chunk = delivery[index : index + size]
        index += size
        batch = SinkBatch()
        for (entity, key), record in chunk:
            batch.add(SinkEvent(f"canonical.{entity}", 0, offset, entity, key, record))
            offset += 1
        result = sink.write(batch)
        assert not result.dead, result.dead
        assert not result.deferred


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # an upsert after a delete revives the soft-deleted row
    history={
        ("customer", KEYS[1]): [
            {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 0},
            {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 0},
            {"op": "delete", "name": "Alpha", "city": "Berlin", "price": 0},
            {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 0},
        ],
        ("customer", KEYS[0]): [{"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 0}],
    },
    picks=[1],
    sizes=[1],
    rewinds=[],
)
@example(
    history={
        ("customer", KEYS[1]): [
            {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": p} for p in (1, 2, 3, 4)
        ],
        ("customer", KEYS[3]): [
            {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 500},
            {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 29},
            {"op": "delete", "name": "Alpha", "city": "Berlin", "price": 381},
            {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 363},
        ],
        ("product", KEYS[0]): [
            {"op": "delete", "name": "Delta", "city": None, "price": 269},
            {"op": "delete", "name": "Beta", "city": "Köln", "price": 218},
            {"op": "upsert", "name": "Alpha", "city": "Köln", "price": 298},
            {"op": "upsert", "name": "Alpha", "city": None, "price": 27},
        ],
    },
    picks=[8, 2, 2, 0],
    sizes=[4, 5, 3, 1, 1, 2, 2, 4, 1, 1],
    rewinds=[(19, 1)],
)
@given(
    history=_history,
    picks=st.lists(st.integers(min_value=0, max_value=10), max_size=30),
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=10),
    rewinds=st.lists(st.tuples(st.integers(0, 30), st.integers(1, 8)), max_size=4),
)
def test_any_delivery_leaves_the_same_tables(
    sink: PostgresUpsertSink,
    stack_env: dict[str, str],
    history: dict[tuple[str, str], list[dict[str, Any]]],
    picks: list[int],
    sizes: list[int],
    rewinds: list[tuple[int, int]],
) -> None:
    schema = sink._schema
    per_key = _events(history)
    once = _interleave(per_key, picks)

    _reset(stack_env, schema)
    _deliver(sink, once, sizes)
    reference = _state(stack_env)

    _deliver(sink, once, sizes)  # a full replay
    assert _state(stack_env) == reference

    _reset(stack_env, schema)
    redelivered = list(once)
    for at, length in rewinds:  # after position `at`, deliver an earlier stretch again
        at = min(at, len(redelivered))
        start = max(0, at - length)
        redelivered[at:at] = redelivered[start:at]
    _deliver(sink, redelivered, list(reversed(sizes)))
    assert _state(stack_env) == reference

    # ... and the tables hold each key's latest version: live with its last upsert's
    # values, or no live row when the latest version is a delete.
    accounts = {row[0]: row for row in reference["accounts"]}
    products = {row[0]: row for row in reference["aos_products"]}
    for (entity, key), events in per_key.items():
        latest = events[-1]
        row = (accounts if entity == "customer" else products).get(deterministic_id(entity, key))
        if latest["op"] == "delete":
            assert row is None
        else:
            assert row is not None
            assert row[2 if entity == "product" else 1] == latest["name"]


def _whole(record: dict[str, Any]) -> dict[str, Any]:
    """A customer record with every field of its schema (the missing ones at their default)."""
    fields = canonical_schema("customer")["fields"]
    return {f["name"]: record.get(f["name"], f.get("default")) for f in fields}


def _encoded(serde: AvroSerde, record: dict[str, Any]) -> bytes:
    """A customer record as a canonical message's value."""
    schema = canonical_schema("customer")
    return serde.encode(f"canonical.customer-value-{_BASE}", schema, _whole(record))


def _lazily(
    serde: AvroSerde, record: dict[str, Any], key: str, offset: int, *, tail: bytes = b""
) -> SinkEvent:
    """A customer event as the runner makes it: leading fields decoded, the rest later."""
    message = _encoded(serde, record) + tail
    head, rest = serde.decode_lazily(message, DECIDING_FIELDS)
    return SinkEvent(
        "canonical.customer", 0, offset, "customer", key, head, None, message, rest=rest
    )


def test_lazily_decoded_events_apply_whole_and_a_replay_never_reads_their_rest(
    sink: PostgresUpsertSink, stack_env: dict[str, str]
) -> None:
    _reset(stack_env, sink._schema)
    serde = AvroSerde(LocalSchemaRegistry())
    change = {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 0}
    records = [_record("customer", key, 10, change) for key in KEYS[:3]]

    def delivery(start: int) -> list[SinkEvent]:
        # The third event's rest does not decode (a byte after the datum).
        return [
            _lazily(serde, records[0], KEYS[0], start),
            _lazily(serde, records[1], KEYS[1], start + 1),
            _lazily(serde, records[2], KEYS[2], start + 2, tail=b"\x00"),
        ]

    first = delivery(0)
    result = sink.write(SinkBatch(first))
    assert [e.key for e in result.applied] == list(KEYS[:2])
    assert [(e.key, type(error).__name__) for e, error in result.dead] == [(KEYS[2], "DecodeError")]
    assert result.offsets == {("canonical.customer", 0): 3}  # the dead letter is passed
    queued = sink.queued_dead_letters()
    assert [(q.offset, q.value) for q in queued] == [(2, first[2].raw_value)]
    sink.dead_letters_published([q.id for q in queued])
    rows = execute(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT id::text, name, billing_address_city FROM public.accounts "
        "WHERE id = ANY(%s::uuid[]) ORDER BY id",
        ([deterministic_id("customer", k) for k in KEYS[:3]],),
    )
    assert sorted(rows) == sorted(
        (deterministic_id("customer", k), "Alpha", "Berlin") for k in KEYS[:2]
    )

    again = delivery(3)
    replayed = sink.write(SinkBatch(again))
    assert [e.key for e in replayed.stale] == list(KEYS[:2])
    assert [e.key for e, _ in replayed.dead] == [KEYS[2]]
    for event in again[:2]:
        assert set(event.record) <= set(METADATA_FIELDS)  # decided without the rest
    sink.dead_letters_published([q.id for q in sink.queued_dead_letters()])


def test_two_records_of_one_target_row_in_a_batch_dead_letter_the_older(
    sink: PostgresUpsertSink, stack_env: dict[str, str]
) -> None:
    """Two ERP customers linked to one CRM account in a batch: the later commit is
    written, the other is a ``target_row_contended`` dead letter in the same transaction;
    read again, the loser is stale (no second letter), and only its letter's replay
    applies it (through the field merge).
    """
    _reset(stack_env, sink._schema)
    sink.dead_letters_published([q.id for q in sink.queued_dead_letters()])
    change = {"op": "upsert", "name": "Linked", "city": "Berlin", "price": 0}
    created = sink.write(
        SinkBatch(
            [
                SinkEvent(
                    "canonical.customer",
                    0,
                    0,
                    "customer",
                    KEYS[0],
                    _record("customer", KEYS[0], 10, change),
                )
            ]
        )
    )
    assert [e.key for e in created.applied] == [KEYS[0]]
    account = deterministic_id("customer", KEYS[0])
    # A row no live record owns (else both would be target_row_taken letters).
    disown(stack_env["CRM_ADMIN_DSN"], sink, "customer", account)
    older = {**_record("customer", KEYS[1], 20, {**change, "name": "Older"}), "crm_id": account}
    newer = {**_record("customer", KEYS[2], 30, {**change, "name": "Newer"}), "crm_id": account}
    # The later commit arrives first: the winner is decided by commit time, not arrival.
    result = sink.write(
        SinkBatch(
            [
                SinkEvent("canonical.customer", 0, 1, "customer", KEYS[2], newer),
                SinkEvent("canonical.customer", 0, 2, "customer", KEYS[1], older),
            ]
        )
    )
    assert [e.key for e in result.applied] == [KEYS[2]]
    assert [(e.key, type(error).__name__) for e, error in result.dead] == [
        (KEYS[1], "TargetRowContendedError")
    ]
    assert result.offsets == {("canonical.customer", 0): 3}
    [letter] = sink.queued_dead_letters()
    assert letter.offset == 2
    assert letter.headers["erpcrm.error.reason"] == "target_row_contended"
    assert letter.headers["erpcrm.entity_key"] == KEYS[1]
    assert letter.headers["erpcrm.context.target_row"] == f"public.accounts id={account}"
    assert letter.headers["erpcrm.context.winner_key"] == KEYS[2]
    sink.dead_letters_published([letter.id])
    [(name,)] = execute(
        stack_env["CRM_ADMIN_DSN"], "SELECT name FROM public.accounts WHERE id = %s", (account,)
    )
    assert name == "Newer"
    # The loser is not applied; its version is recorded as dead-lettered ...
    applied = sql.SQL("SELECT version, payload_hash FROM {} WHERE entity_key = %s").format(
        sql.Identifier(sink._schema, "applied")
    )
    assert execute(stack_env["CRM_ADMIN_DSN"], applied, (KEYS[1],)) == [(20, LETTERED)]

    def name_now() -> str:
        [(now,)] = execute(
            stack_env["CRM_ADMIN_DSN"], "SELECT name FROM public.accounts WHERE id = %s", (account,)
        )
        return str(now)

    # ... so the topics read again (its event alone in a batch) leave it out of the row,
    again = sink.write(
        SinkBatch([SinkEvent("canonical.customer", 0, 3, "customer", KEYS[1], older)])
    )
    assert [e.key for e in again.stale] == [KEYS[1]]
    assert not again.applied
    assert not again.dead
    assert not sink.queued_dead_letters()
    assert name_now() == "Newer"
    # ... an operator's replay of its letter while the winner owns the row is refused
    # (target_row_taken), and once no live record owns it, applies it, once.
    taken = sink.write(
        SinkBatch([SinkEvent("canonical.customer", 0, 4, "customer", KEYS[1], older, replays=1)])
    )
    assert [(e.key, type(error).__name__) for e, error in taken.dead] == [
        (KEYS[1], "TargetRowTakenError")
    ]
    sink.dead_letters_published([q.id for q in sink.queued_dead_letters()])
    assert name_now() == "Newer"
    disown(stack_env["CRM_ADMIN_DSN"], sink, "customer", account)
    for offset, replays in ((5, 2), (6, 3)):
        replayed = sink.write(
            SinkBatch(
                [
                    SinkEvent(
                        "canonical.customer", 0, offset, "customer", KEYS[1], older, replays=replays
                    )
                ]
            )
        )
        assert [e.key for e in (replayed.applied if replays == 2 else replayed.stale)] == [KEYS[1]]
    # Applied through the field merge: the row's name came from the later commit.
    assert name_now() == "Newer"
    [(version, digest)] = execute(stack_env["CRM_ADMIN_DSN"], applied, (KEYS[1],))
    assert (version, digest != LETTERED) == (20, True)


# -- locating rows ----------------------------------------------------------------------

_LOCATE = uuid.uuid4().hex[:8]
_LOCATE_KEYS = tuple(f"erp:{_BASE + 100 + i}" for i in range(4))
_LOCATE_IDS = tuple(str(uuid.uuid4()) for _ in range(4))
_LOCATE_NUMBERS = tuple(f"L{_LOCATE}{i}" for i in range(4))


@pytest.fixture(scope="module")
def located_rows(stack_env: dict[str, str]) -> Iterator[list[tuple[str, str, bool]]]:
    """Accounts ``(id, account_number, deleted)`` some of which two locators find.

    The first key's account carries its created id and a number; the second an id of
    its own and a number; the third key's account is deleted, and a live account of
    its own id carries the same number; a deleted account of its own id has the last.
    """
    key_id = [deterministic_id("customer", k) for k in _LOCATE_KEYS]
    rows = [
        (key_id[0], _LOCATE_NUMBERS[0], False),
        (_LOCATE_IDS[1], _LOCATE_NUMBERS[1], False),
        (key_id[2], _LOCATE_NUMBERS[2], True),
        (_LOCATE_IDS[3], _LOCATE_NUMBERS[2], False),
        (_LOCATE_IDS[0], _LOCATE_NUMBERS[3], True),
    ]
    admin = stack_env["CRM_ADMIN_DSN"]
    for row_id, number, deleted in rows:
        execute(
            admin,
            "INSERT INTO public.accounts (id, name, account_number, deleted) "
            "VALUES (%s, 'Located', %s, %s)",
            (row_id, number, deleted),
        )
    try:
        yield rows
    finally:
        execute(
            admin,
            "DELETE FROM public.accounts WHERE id = ANY(%s::uuid[])",
            ([r[0] for r in rows],),
        )


_lookup = st.fixed_dictionaries(
    {
        KEY: st.sampled_from(_LOCATE_KEYS),
        "crm_id": st.sampled_from(
            [None, *_LOCATE_IDS, deterministic_id("customer", "erp:0"), str(uuid.uuid4())]
        ),
        "customer_number": st.sampled_from([None, *_LOCATE_NUMBERS, "L-unknown"]),
    }
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(records=st.lists(_lookup, min_size=1, max_size=12))
def test_each_record_finds_the_row_of_its_strongest_locator_and_each_row_comes_once(
    sink: PostgresUpsertSink,
    located_rows: list[tuple[str, str, bool]],
    records: list[dict[str, Any]],
) -> None:
    """The crosswalk id, then the id the sink gives rows it creates, then the customer
    number among live accounts: each record gets the row of the first that finds one,
    and the statement sends each lookup's row once, however many locators would find it.
    """
    table = sink._tables["customer"]
    by_id = {row_id: row_id for row_id, _, _ in located_rows}
    live_numbers = {number: row_id for row_id, number, deleted in located_rows if not deleted}

    def expected(record: dict[str, Any]) -> str | None:
        for found in (
            by_id.get(record["crm_id"]),
            by_id.get(deterministic_id("customer", record[KEY])),
            live_numbers.get(record["customer_number"]),
        ):
            if found is not None:
                return found
        return None

    conn = sink._session()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        clocks = _Clocks(sink._schema, sink._sql)
        found = sink._find(
            cur,
            table.ref,
            [table.pk, "name"],
            table.locators,
            records,
            lock=True,
            clock=("customer", clocks),
        )
        sent = cur.rowcount
    assert [None if r is None else r["id"] for r in found] == [expected(r) for r in records]
    lookups = {
        (r["crm_id"], deterministic_id("customer", r[KEY]), r["customer_number"])
        for r in records
        if expected(r) is not None
    }
    assert sent == len(lookups)


def _carrying(
    serde: AvroSerde,
    record: dict[str, Any],
    key: str,
    offset: int,
    digest: str | None,
    *,
    made_for: dict[str, Any] | None = None,
) -> SinkEvent:
    """A customer event as the runner reads it: whole, with the hash its header carries.

    ``made_for``: the record whose message the header was made for (default ``record``).
    """
    message = _encoded(serde, record)
    bound = message if made_for is None else _encoded(serde, made_for)
    return SinkEvent(
        "canonical.customer",
        0,
        offset,
        "customer",
        key,
        serde.decode(message),
        None,
        message,
        headers=lambda: None if digest is None else [payload_hash_header(digest, bound)],
    )


def test_a_carried_payload_hash_is_taken_as_is_and_one_computed_without_it_agrees(
    sink: PostgresUpsertSink, stack_env: dict[str, str]
) -> None:
    _reset(stack_env, sink._schema)
    serde = AvroSerde(LocalSchemaRegistry())
    change = {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 0}
    first = {key: _record("customer", key, 10, change) for key in KEYS[:2]}
    own = payload_hash(_whole(first[KEYS[0]]))  # as the streams stage hashes what it encodes
    foreign = "f" * 64  # a digest, though not of this payload: the sink does not check it
    result = sink.write(
        SinkBatch(
            [
                _carrying(serde, first[KEYS[0]], KEYS[0], 0, own),
                _carrying(serde, first[KEYS[1]], KEYS[1], 1, foreign),
            ]
        )
    )
    assert [e.key for e in result.applied] == list(KEYS[:2])
    applied = sql.SQL("SELECT entity_key, payload_hash FROM {} ORDER BY entity_key").format(
        sql.Identifier(sink._schema, "applied")
    )
    admin = stack_env["CRM_ADMIN_DSN"]
    assert execute(admin, applied) == sorted([(KEYS[0], own), (KEYS[1], foreign)])

    # The same payloads again, from a publisher that sends no hash (a replay, an older
    # streams worker): the sink hashes the decoded record, as the streams stage hashed it.
    again = [
        _carrying(serde, _record("customer", k, 20, change), k, 2 + i, None)
        for i, k in enumerate(KEYS[:2])
    ]
    result = sink.write(SinkBatch(again))
    assert [e.key for e in result.noop] == [KEYS[0]]
    assert [e.key for e in result.applied] == [KEYS[1]]
    assert execute(admin, applied) == [
        (KEYS[0], own),
        (KEYS[1], own.__class__(payload_hash(again[1].record))),
    ]


def test_an_edited_event_produced_again_with_its_old_hash_header_is_applied(
    sink: PostgresUpsertSink, stack_env: dict[str, str]
) -> None:
    _reset(stack_env, sink._schema)
    serde = AvroSerde(LocalSchemaRegistry())
    key = KEYS[0]
    alpha = {"op": "upsert", "name": "Alpha", "city": "Berlin", "price": 0}
    first = _record("customer", key, 10, alpha)
    digest = payload_hash(_whole(first))
    assert [e.key for e in sink.write(SinkBatch([_carrying(serde, first, key, 0, digest)])).applied]
    # The next version, a no-op of the first as published; a tool edits its name and
    # produces it again, the headers kept: the hash they carry is not for this value.
    published = _record("customer", key, 20, alpha)
    edited = _record("customer", key, 20, {**alpha, "name": "Beta"})
    event = _carrying(serde, edited, key, 1, digest, made_for=published)
    assert event.digest() is None
    result = sink.write(SinkBatch([event]))
    assert [e.key for e in result.applied] == [key]
    assert not result.noop
