"""What a record held or decided as a suspect before goes by (pure), and the statements
that keep the decisions beyond the sync state."""

from __future__ import annotations

import pytest
from psycopg import sql as psql

from sinks import sql
from sinks.decisions import carried_over, finds_own_row


def text(q: psql.Composable) -> str:
    return q.as_string(None)


@pytest.mark.parametrize("own", [True, False])
def test_a_held_record_stays_held_and_a_linked_one_goes_into_its_candidate(own: bool) -> None:
    assert carried_over("held", own=own) == "held"
    assert carried_over("linked", own=own) == "linked"


@pytest.mark.parametrize("own", [True, False])
def test_a_released_record_flows_as_the_streams_decide_it_now(own: bool) -> None:
    assert carried_over("released", own=own) is None


def test_a_decision_of_this_sync_state_not_carried_out_yet_is_carried_out() -> None:
    assert carried_over("release", own=True) == "release"
    assert carried_over("link", own=True) == "link"


def test_an_earlier_sync_states_decision_not_carried_out_is_held_again() -> None:
    # The events it was to carry out went with that sync state: an operator decides again.
    assert carried_over("release", own=False) == "held"
    assert carried_over("link", own=False) == "held"


@pytest.mark.parametrize("decided", ["held", "link", "linked"])
def test_a_record_held_or_linked_by_a_decision_finds_no_row_of_its_own(decided: str) -> None:
    # Held: written nowhere; linked: into its candidate only, never a row its customer
    # number or its would-be id finds (it would be written there, or contend for it).
    assert finds_own_row(decided) is False


@pytest.mark.parametrize("decided", [None, "release"])
def test_a_record_with_no_decision_or_released_is_located_as_any(decided: str | None) -> None:
    assert finds_own_row(decided) is True


@pytest.mark.parametrize(
    ("status", "own"),
    [(s, o) for s in ("held", "release", "released", "link", "linked") for o in (True, False)],
)
def test_what_an_earlier_decision_carries_over_to_is_located_consistently(
    status: str, own: bool
) -> None:
    decided = carried_over(status, own=own)
    # Only a record going by a creation (or by the streams now) finds a row of its own.
    assert finds_own_row(decided) is (decided in (None, "release"))


def test_every_change_of_a_suspect_is_kept_in_the_decisions_schema_by_the_same_statement() -> None:
    for q in (
        sql.suspects_hold("s1", "d1"),
        sql.suspects_decide("s1", "d1"),
        sql.suspects_carried_out("s1", "d1"),
    ):
        found = text(q)
        assert found.startswith("WITH s AS (")
        assert 'INSERT INTO "d1"."suspects"' in found
        assert '"s1"."suspects"' in found
        # The first sync state to hold a key stays its holder.
        update = found.rpartition("DO UPDATE SET")[2]
        assert "held_by" not in update
        assert "decided_by = EXCLUDED.decided_by" in update


def test_the_operators_decision_returns_the_suspects_id_when_it_was_held() -> None:
    assert text(sql.suspects_decide()).endswith("SELECT id FROM s")


def test_decisions_of_prefers_the_sync_states_own_suspect() -> None:
    found = text(sql.decisions_of("s1", "d1"))
    assert "coalesce(s.status, d.status)" in found
    assert 'LEFT JOIN "s1"."suspects" AS s' in found
    assert 'LEFT JOIN "d1"."suspects" AS d' in found
    assert found.count("%s") == 3


def test_the_decisions_table_is_made_idempotently_in_its_own_schema() -> None:
    schema, table = (text(q) for q in sql.create_decisions("d1"))
    assert schema == 'CREATE SCHEMA IF NOT EXISTS "d1"'
    assert table.startswith('CREATE TABLE IF NOT EXISTS "d1"."suspects"')
    assert "PRIMARY KEY (entity, entity_key)" in table
