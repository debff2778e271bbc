"""A record that loses a target row to another in a batch leaves nothing but its letter.

Against the real ERP and CRM databases, with :class:`~sinks.postgres.PostgresUpsertSink`
applying synthetic canonical events directly (no Kafka: the point is the apply step).
Two different source records that resolve to one target row in a batch: the later
commit is written and the other is a ``target_row_contended`` dead letter. Before the
winner is chosen the loser must not have left anything of its own in the batch's
transaction, so that its letter tells the whole story and a replay of it applies it
as if it had never been read (once no live record owns the row: the winner owns it
after the batch, and a replay while it does is a ``target_row_taken`` letter):

- no conflict of the loser in the audit table or in the write's result (the metric);
- no announcement of the row for the loser (the id sent back to the source system);
- for an order, the lines its source last stated are not moved to the loser's, and
  the loser's change of the lines is no ``order_lines_locked`` letter: replayed
  alone, the letter makes that letter then.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from psycopg import sql

from schemas.canonical import canonical_schema
from sinks.batch import SinkBatch, SinkEvent
from sinks.postgres import PostgresUpsertSink
from sinks.targets import deterministic_id
from tests.integration.cdc_fixtures import execute
from tests.integration.sink_fixtures import direct_sink, disown

pytestmark = pytest.mark.integration

_TS = 1_700_000_000_000


@pytest.fixture(scope="module")
def crm_sink(stack_env: dict[str, str]) -> Iterator[PostgresUpsertSink]:
    with direct_sink(stack_env, "crm", ("customer",), announce=True, prefix="contend") as sink:
        yield sink


@pytest.fixture(scope="module")
def erp_sink(stack_env: dict[str, str]) -> Iterator[PostgresUpsertSink]:
    with direct_sink(stack_env, "erp", ("sales_order",), announce=True, prefix="contend") as sink:
        yield sink


def _event(entity: str, key: str, version: int, offset: int, **fields: Any) -> SinkEvent:
    """A canonical event of ``key`` committed at ``_TS + version``."""
    system, _, source_id = key.partition(":")
    record: dict[str, Any] = {f["name"]: None for f in canonical_schema(entity)["fields"]}
    record.update(
        event_id=f"{entity}|{key}|{version}",
        source_system=system,
        source_lsn=version,
        source_tx_id=version,
        source_ts_ms=_TS + version,
        op="upsert",
        version=version,
    )
    record[f"{system}_id"] = source_id
    record.update(fields)
    return SinkEvent(f"canonical.{entity}", 0, offset, entity, key, record)


def _rows(dsn: str, schema: str, table: str, key: str, columns: str = "1") -> list[Any]:
    query = sql.SQL("SELECT {} FROM {} WHERE entity_key = %s").format(
        sql.SQL(columns), sql.Identifier(schema, table)
    )
    return execute(dsn, query, (key,))


def _queued(sink: PostgresUpsertSink) -> list[tuple[str, str]]:
    """The dead letters the sink's outbox holds (key, reason); then taken out of it."""
    letters = sink.queued_dead_letters()
    sink.dead_letters_published([q.id for q in letters])
    return [(q.headers["erpcrm.entity_key"], q.headers["erpcrm.error.reason"]) for q in letters]


def _traces(
    result: Any, dsn: str, schema: str, key: str, lines: list[Any] | None = None
) -> dict[str, Any]:
    """What a batch left of ``key`` besides its dead letter (empty: nothing)."""
    found = {
        "conflicts counted": [c for c in result.conflicts if c.entity_key == key],
        "conflicts audited": _rows(dsn, schema, "conflicts", key, "field"),
        "announced": _rows(dsn, schema, "announce", key, "pk"),
        "other letters": [(e.key, err) for e, err in result.letters if not _contended(err)],
    }
    if lines is not None:
        stored = _rows(dsn, schema, "source_lines", key, "lines")
        found["source lines moved"] = [] if stored == lines else stored
    return {name: value for name, value in found.items() if value}


def _contended(error: Exception) -> bool:
    return getattr(error, "reason", None) == "target_row_contended"


def _reasons(result: Any) -> list[tuple[str, str]]:
    return [(e.key, type(error).__name__) for e, error in result.letters]


def test_a_customer_that_loses_its_row_leaves_no_conflict_and_no_announcement(
    crm_sink: PostgresUpsertSink, stack_env: dict[str, str]
) -> None:
    """ERP customers linked to one CRM account: the loser's refused field (the CRM owns
    ``industry``) is neither audited as a conflict nor re-announced."""
    admin, schema = stack_env["CRM_ADMIN_DSN"], crm_sink._schema
    base = 900_000_000 + uuid.uuid4().int % 90_000_000
    first, loser, winner = (f"erp:{base + i}" for i in range(3))
    number = f"C{uuid.uuid4().hex[:7].upper()}"
    created = crm_sink.write(
        SinkBatch([_event("customer", first, 10, 0, name="Linked", customer_number=number)])
    )
    assert [e.key for e in created.applied] == [first]
    account = deterministic_id("customer", first)
    try:
        # A row no live record owns (else both would be target_row_taken letters).
        disown(admin, crm_sink, "customer", account)
        linked = {"crm_id": account, "customer_number": number}
        result = crm_sink.write(
            SinkBatch(
                [
                    _event(
                        "customer",
                        loser,
                        20,
                        1,
                        name="Older",
                        industry="Mining",
                        changed_fields=["name", "industry"],
                        **linked,
                    ),
                    _event(
                        "customer",
                        winner,
                        30,
                        2,
                        name="Newer",
                        changed_fields=["name"],
                        **linked,
                    ),
                ]
            )
        )
        assert [e.key for e in result.applied] == [winner]
        # Nothing of the loser's but its letter: its conflict neither counted nor
        # audited, its row not announced for it.
        assert _traces(result, admin, schema, loser) == {}
        assert _reasons(result) == [(loser, "TargetRowContendedError")]
        assert _queued(crm_sink) == [(loser, "target_row_contended")]
        [(name, industry)] = execute(
            admin, "SELECT name, industry FROM public.accounts WHERE id = %s", (account,)
        )
        assert (name, industry) == ("Newer", None)
        # Replayed while the winner owns the row: a target_row_taken letter, nothing else.
        refused = crm_sink.write(SinkBatch([replace(result.dead[0][0], replays=1)]))
        assert _reasons(refused) == [(loser, "TargetRowTakenError")]
        assert set(_traces(refused, admin, schema, loser)) == {"other letters"}  # that one
        crm_sink.dead_letters_published([q.id for q in crm_sink.queued_dead_letters()])
        # Replayed alone once no live record owns the row, it is applied as if it had
        # never been read: its refused field is a conflict, the row announced for it.
        disown(admin, crm_sink, "customer", account)
        replayed = crm_sink.write(SinkBatch([replace(result.dead[0][0], replays=2)]))
        assert [e.key for e in replayed.applied] == [loser]
        assert [(c.entity_key, c.field) for c in replayed.conflicts] == [(loser, "industry")]
        assert len(_rows(admin, schema, "conflicts", loser)) == 1
        assert len(_rows(admin, schema, "announce", loser)) == 1
    finally:
        execute(admin, "DELETE FROM public.accounts WHERE id = %s", (account,))


def _line(line_id: str, sku: str, quantity: str) -> dict[str, Any]:
    qty = Decimal(quantity)
    return {
        "erp_id": None,
        "crm_id": line_id,
        "sku": sku,
        "product_erp_id": None,
        "product_crm_id": None,
        "description": f"Line {line_id[:8]}",
        "quantity": qty,
        "unit_price": Decimal("10.00"),
        "discount": Decimal("0.00"),
        "subtotal": qty * 10,
    }


def test_an_order_that_loses_its_row_leaves_its_lines_and_no_lines_letter(
    erp_sink: PostgresUpsertSink, stack_env: dict[str, str]
) -> None:
    """Two CRM quotes resolving to one ERP order: the loser's change of the lines is no
    ``order_lines_locked`` letter and does not move the lines its source last stated;
    its refused field (the ERP owns the total) is no conflict and no announcement."""
    admin, schema = stack_env["ERP_ADMIN_DSN"], erp_sink._schema
    account, sku = str(uuid.uuid4()), f"CONT-{uuid.uuid4().hex[:8].upper()}"
    ((partner,),) = execute(
        admin,
        "INSERT INTO public.res_partner (name, crm_account_id) VALUES ('Contended', %s)"
        " RETURNING id",
        (account,),
    )
    ((product,),) = execute(
        admin,
        "INSERT INTO public.product_product (default_code, name) VALUES (%s, 'Contended')"
        " RETURNING id",
        (sku,),
    )
    quote, other = str(uuid.uuid4()), str(uuid.uuid4())
    loser, winner = f"crm:{quote}", f"crm:{other}"
    line = str(uuid.uuid4())
    header = {"customer_crm_id": account, "state": "confirmed", "currency": "EUR"}
    total = {"amount_untaxed": Decimal("10.00"), "amount_total": Decimal("10.00")}
    try:
        created = erp_sink.write(
            SinkBatch(
                [
                    _event(
                        "sales_order",
                        loser,
                        10,
                        0,
                        **header,
                        **total,
                        quote_number="Q-1",
                        lines=[_line(line, sku, "1")],
                    )
                ]
            )
        )
        assert [e.key for e in created.applied] == [loser]
        ((order,),) = execute(
            admin, "SELECT id FROM public.sale_order WHERE crm_quote_id = %s", (quote,)
        )
        stated = _rows(admin, schema, "source_lines", loser, "lines")
        assert len(stated) == 1
        # The order's creation was queued for announcement: as if announced.
        execute(admin, sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "announce")))
        # A row no live record owns (else the other quote would be target_row_taken).
        disown(admin, erp_sink, "sales_order", order)

        result = erp_sink.write(
            SinkBatch(
                [
                    # Committed first: its lines changed, and its total (the ERP's).
                    _event(
                        "sales_order",
                        loser,
                        20,
                        1,
                        **header,
                        amount_untaxed=Decimal("50.00"),
                        amount_total=Decimal("50.00"),
                        quote_number="Q-1",
                        lines=[_line(line, sku, "5")],
                        changed_fields=["amount_untaxed", "amount_total"],
                    ),
                    # Committed later: another quote, with the ERP order's id.
                    _event(
                        "sales_order",
                        winner,
                        30,
                        2,
                        **header,
                        **total,
                        erp_id=str(order),
                        quote_number="Q-2",
                        lines=[_line(line, sku, "1")],
                        changed_fields=["currency"],
                    ),
                ]
            )
        )
        assert [e.key for e in result.applied] == [winner]
        # Nothing of the loser's but its letter; the lines its source last stated stay
        # as they were.
        assert _traces(result, admin, schema, loser, stated) == {}
        assert _reasons(result) == [(loser, "TargetRowContendedError")]
        assert _queued(erp_sink) == [(loser, "target_row_contended")]
        assert execute(
            admin,
            "SELECT product_id, product_uom_qty FROM public.sale_order_line WHERE order_id = %s",
            (order,),
        ) == [(product, Decimal("1.000"))]

        # Replayed alone (with the order's id, as the crosswalk now names the row), the
        # letter is applied as if it had never been read: its lines change is a letter
        # of its own, its refused total a conflict, and the row is announced for it.
        # (Replayed while the winner owns the row, it would be a target_row_taken letter:
        # the owner retired at its source, or, here, as if no record owned it yet.)
        disown(admin, erp_sink, "sales_order", order)
        replay = replace(result.dead[0][0], replays=1)  # an operator's replay of the letter
        replay.record["erp_id"] = str(order)
        replayed = erp_sink.write(SinkBatch([replay]))
        assert [e.key for e in replayed.applied] == [loser]
        assert _reasons(replayed) == [(loser, "LinesLockedError")]
        assert {(c.entity_key, c.field) for c in replayed.conflicts} == {
            (loser, "amount_untaxed"),
            (loser, "amount_total"),
        }
        assert len(_rows(admin, schema, "announce", loser)) == 1
        [(lines,)] = _rows(admin, schema, "source_lines", loser, "lines")
        assert lines != stated[0][0]
    finally:
        execute(
            admin,
            "DELETE FROM public.sale_order_line WHERE order_id IN"
            " (SELECT id FROM public.sale_order WHERE partner_id = %s)",
            (partner,),
        )
        execute(admin, "DELETE FROM public.sale_order WHERE partner_id = %s", (partner,))
        execute(admin, "DELETE FROM public.product_product WHERE id = %s", (product,))
        execute(admin, "DELETE FROM public.res_partner WHERE id = %s", (partner,))
