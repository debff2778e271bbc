"""Orders released incomplete, and the lines of their transaction that come after.

An order is created in the ERP with the lines its first event carries; from then on the
ERP owns its lines. A transaction still incomplete after the assembly timeout is released
with what it has, so a line of it read later can no longer reach the ERP: it is
dead-lettered (``late_line``), never dropped unseen, and the release itself is counted and
logged.
"""

from __future__ import annotations

import dataclasses

from cdc.envelope import transaction_id
from streams.outcome import Count, Outcome
from tests.unit.test_processor import Harness, catch_up, decoded, quote_line, with_catalogue
from tests.unit.test_transform import AOS_PRODUCTS_QUOTES, AOS_QUOTES, QUOTE, QUOTE_ID

TX = (77, 9000)
TIMEOUT_MS = 30_000
COUNTS = {"public.aos_quotes": 1, "public.aos_products_quotes": 2}


def released_without_its_second_line(h: Harness) -> list[Outcome]:
    """A won quote whose transaction counts two lines; the second is not read in time."""
    with_catalogue(h, (7, "SKU-00007"), (8, "SKU-00008"))
    h.run(h.change(AOS_QUOTES, "c", after=QUOTE, lsn=8001, tx=TX))
    h.run(h.change(AOS_PRODUCTS_QUOTES, "c", after=quote_line(1, "SKU-00007"), lsn=8002, tx=TX))
    assert h.run(h.end("crm", TX, COUNTS)).outbound == []
    catch_up(h)
    return [h.run(h.tick(5_000)) for _ in range(2 * TIMEOUT_MS // 5_000 + 2)]


def test_an_order_released_incomplete_is_counted_and_logged() -> None:
    h = Harness(assembly_timeout_ms=TIMEOUT_MS)
    outcomes = released_without_its_second_line(h)
    (record,) = [record for outcome in outcomes for record in decoded(outcome)]
    assert [line["sku"] for line in record["lines"]] == ["SKU-00007"]
    assert sum(o.tally.of(Count.ORDER_TIMEOUTS, "crm") for o in outcomes) == 1
    assert sum(o.tally.of(Count.ORDERS, "timeout") for o in outcomes) == 1
    warnings = [warning for outcome in outcomes for warning in outcome.warnings]
    tid = transaction_id(*TX)
    assert any(tid in w and "2 of 3" in w for w in warnings), warnings
    assert any(QUOTE_ID in w and tid in w for w in warnings), warnings
    assert not h.processor.has_pending


def test_a_line_read_after_its_order_was_released_is_dead_lettered_not_dropped() -> None:
    h = Harness(assembly_timeout_ms=TIMEOUT_MS)
    released_without_its_second_line(h)
    late = h.change(AOS_PRODUCTS_QUOTES, "c", after=quote_line(2, "SKU-00008"), lsn=8003, tx=TX)
    outcome = h.run(late)
    (letter,) = outcome.dead_letters
    assert letter.reason == "late_line"
    assert dict(letter.context) == {
        "order": QUOTE_ID,
        "transaction": transaction_id(*TX),
        "lsn": "8003",
    }
    assert (letter.key, letter.value) == (late.key, late.value)
    assert letter.origin == late.origin
    assert outcome.tally.of(Count.DEAD_LETTERS, "late_line") == 1
    # Nothing else waits for it: no order event, now or after another timeout.
    later = [h.run(h.tick(5_000)) for _ in range(2 * TIMEOUT_MS // 5_000 + 2)]
    assert [decoded(o) for o in [outcome, *later]] == [[]] * (len(later) + 1)
    assert not h.processor.has_pending
    # The same change sent again by a restarted capture is no second letter.
    again = h.run(
        h.change(AOS_PRODUCTS_QUOTES, "c", after=quote_line(2, "SKU-00008"), lsn=8003, tx=TX)
    )
    assert again.outbound == []
    # An operator's replay of the letter is late again: a letter of its own.
    replayed = h.run(dataclasses.replace(late, timestamp_ms=h.now, replays=1))
    (second,) = replayed.dead_letters
    assert (second.reason, second.replays) == ("late_line", 1)
    assert second.output_id != letter.output_id
    assert decoded(replayed) == []


def test_a_line_read_while_its_released_transaction_is_still_assembled_joins_its_order() -> None:
    """Source order released the transaction incomplete; the order waits its own timeout
    for the rest, so a line read meanwhile is in the order, not late."""
    h = Harness(assembly_timeout_ms=TIMEOUT_MS)
    with_catalogue(h, (7, "SKU-00007"), (8, "SKU-00008"))
    h.run(h.change(AOS_QUOTES, "c", after=QUOTE, lsn=8001, tx=TX))
    h.run(h.change(AOS_PRODUCTS_QUOTES, "c", after=quote_line(1, "SKU-00007"), lsn=8002, tx=TX))
    h.run(h.end("crm", TX, COUNTS))
    catch_up(h)
    first = [h.run(h.tick(5_000)) for _ in range(TIMEOUT_MS // 5_000 + 1)]
    assert sum(o.tally.of(Count.ORDER_TIMEOUTS, "crm") for o in first) == 1
    assert [decoded(o) for o in first] == [[]] * len(first)
    late = h.change(AOS_PRODUCTS_QUOTES, "c", after=quote_line(2, "SKU-00008"), lsn=8003, tx=TX)
    (record,) = decoded(h.run(late))
    assert [line["sku"] for line in record["lines"]] == ["SKU-00007", "SKU-00008"]


def test_a_line_of_a_later_transaction_is_not_late() -> None:
    h = Harness(assembly_timeout_ms=TIMEOUT_MS)
    released_without_its_second_line(h)
    tx = (78, 9100)
    h.run(h.change(AOS_PRODUCTS_QUOTES, "c", after=quote_line(3, "SKU-00008"), lsn=9001, tx=tx))
    outcome = h.run(h.end("crm", tx, {"public.aos_products_quotes": 1}))
    assert outcome.dead_letters == []
    (record,) = decoded(outcome)
    assert [line["sku"] for line in record["lines"]] == ["SKU-00007", "SKU-00008"]
