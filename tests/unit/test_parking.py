"""Unit tests for :mod:`sinks.parking`: what suspects tell about missing references."""

from __future__ import annotations

from sinks.batch import SinkEvent
from sinks.parking import Lookup, SuspectState, resolve, waited_for
from sinks.postgres import PostgresUpsertSink, Unparked, _Outcome

TWIN = "crm:twin"


def _suspects(status: str) -> dict[str, SuspectState]:
    return {TWIN: SuspectState("customer", TWIN, status, "42")}


def test_a_reference_to_an_undecided_suspect_waits_for_it() -> None:
    lookups = [Lookup("customer_erp_id", False, [TWIN])]
    for status in ("held", "release", "link"):
        resolution = resolve(lookups, _suspects(status))
        assert resolution.park_on == ("customer", TWIN)
        assert resolution.fill == {}


def test_a_reference_to_a_linked_suspect_is_its_candidate() -> None:
    resolution = resolve([Lookup("customer_erp_id", False, [TWIN])], _suspects("linked"))
    assert resolution.fill == {"customer_erp_id": "42"}
    assert resolution.park_on is None


def test_a_released_or_unknown_suspect_neither_fills_nor_waits() -> None:
    """Released: the created row is found as usual; a reference still missing is deferred."""
    lookups = [Lookup("customer_erp_id", False, [TWIN, "crm:other"])]
    for suspects in (_suspects("released"), {}):
        resolution = resolve(lookups, suspects)
        assert (resolution.fill, resolution.park_on) == ({}, None)


def test_a_reference_in_the_lines_is_never_filled_with_a_candidate() -> None:
    resolution = resolve([Lookup("product_erp_id", True, [TWIN])], _suspects("linked"))
    assert (resolution.fill, resolution.park_on) == ({}, None)


def test_the_first_undecided_suspect_is_waited_for_and_linked_ones_still_fill() -> None:
    suspects = {
        "crm:a": SuspectState("customer", "crm:a", "held", "1"),
        "crm:b": SuspectState("customer", "crm:b", "held", "2"),
        "crm:c": SuspectState("customer", "crm:c", "linked", "3"),
    }
    lookups = [
        Lookup("customer_erp_id", False, ["crm:a"]),
        Lookup("invoice_customer_erp_id", False, ["crm:b"]),
        Lookup("shipping_customer_erp_id", False, ["crm:c"]),
    ]
    resolution = resolve(lookups, suspects)
    assert resolution.park_on == ("customer", "crm:a")
    assert resolution.fill == {"shipping_customer_erp_id": "3"}


def test_the_dead_letter_of_a_parked_event_says_what_became_of_its_suspect() -> None:
    message = waited_for(
        "contact", "crm:c1", ("customer", TWIN), "released", "customer_erp_id (crm_account_id=x)"
    )
    assert message.startswith("unresolved_reference: contact crm:c1 was parked until ")
    assert f"customer {TWIN} was decided; that suspect was released" in message
    assert message.endswith("still refers to customer_erp_id (crm_account_id=x)")
    gone = waited_for("contact", "crm:c1", ("customer", TWIN), None, "x")
    assert "that suspect is no longer held" in gone


def _event(key: str, version: int) -> SinkEvent:
    return SinkEvent("canonical.contact", 0, version, "contact", key, {"version": version})


def test_unparked_events_that_must_wait_again_are_parked_again_not_held_in_memory() -> None:
    """Their rows were deleted with the batch: waiting in memory would not survive a crash."""
    parked, other = _event("crm:c1", 1), _event("crm:c2", 2)
    later = _event("crm:c1", 3)
    out = _Outcome(waiting=[parked, later, other], deferred=[])
    suspect = ("customer", TWIN, "released")
    unparked = Unparked((7, 8), {id(parked): suspect, id(later): suspect})
    PostgresUpsertSink._park_again(out, unparked)
    assert out.waiting == [other]
    assert out.parked == [(parked, ("customer", TWIN)), (later, ("customer", TWIN))]


def test_a_released_suspects_event_that_must_wait_is_parked_on_itself_not_held_in_memory() -> None:
    """Its position was stored long ago: in memory only, a restart would lose it for good."""
    suspect = SinkEvent("canonical.customer", 0, 5, "customer", TWIN, {"version": 1})
    other = SinkEvent("canonical.customer", 0, 6, "customer", "crm:other", {"version": 2})
    out = _Outcome(waiting=[suspect], deferred=[other])
    PostgresUpsertSink._park_carried_out(out)
    assert (out.waiting, out.deferred) == ([], [])
    assert out.parked == [(suspect, ("customer", TWIN)), (other, ("customer", "crm:other"))]
