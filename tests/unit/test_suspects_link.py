"""``erpcrm suspects`` without services: the holder of a candidate of the held record's
own system, the DSNs the link's checks read with, the refusal's text, records not known
to be gone, and a database failure told in one line."""

from __future__ import annotations

import psycopg
import pytest
from typer.testing import CliRunner

from erpcrm import cli
from erpcrm.cli import (
    SUSPECTS_CRM_DSN,
    SUSPECTS_ERP_DSN,
    SystemName,
    _suspects_erp_dsn,
    _suspects_source_dsn,
)
from erpcrm.failures import database_failure
from erpcrm.suspects import CandidateLinkedError, CandidateTakenError, link_holder, live_records


def test_a_candidate_of_the_held_records_own_system_is_held_by_that_record() -> None:
    # No database read: the candidate names the record whose copy is not made yet.
    assert link_holder("postgresql://unused", "erp:812", "erp:805") == "erp:805"


def test_the_configured_erp_dsn_wins_over_the_sink_and_the_local_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SUSPECTS_ERP_DSN, "postgresql://reader@erp.example/erp")
    monkeypatch.setattr(cli, "_stack_env", lambda: pytest.fail("the local stack was read"))
    for target in (SystemName.crm, SystemName.erp):
        assert _suspects_erp_dsn(target, "postgresql://sink") == (
            "postgresql://reader@erp.example/erp"
        )


def test_without_a_setting_erp_reads_with_its_sink_and_crm_with_the_local_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SUSPECTS_ERP_DSN, raising=False)
    monkeypatch.setattr(cli, "_stack_env", lambda: {"ERP_SINK_DSN": "postgresql://stack"})
    assert _suspects_erp_dsn(SystemName.erp, "postgresql://sink") == "postgresql://sink"
    assert _suspects_erp_dsn(SystemName.crm, "postgresql://sink") == "postgresql://stack"


def test_a_candidate_another_suspect_is_linked_to_is_refused_as_taken() -> None:
    error = CandidateLinkedError(9, "erp:813", "3f2c", "erp:812 (suspect 8)", "link")
    assert isinstance(error, CandidateTakenError)
    assert "erp:812 (suspect 8) was asked to be linked to it" in str(error)
    assert "is linked to it" in str(CandidateLinkedError(9, "erp:813", "3f2c", "erp:812", "linked"))


def test_without_a_setting_crm_reads_with_its_sink_and_erp_with_the_local_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SUSPECTS_CRM_DSN, raising=False)
    monkeypatch.setattr(cli, "_stack_env", lambda: {"CRM_SINK_DSN": "postgresql://stack"})
    crm = SystemName.crm
    assert _suspects_source_dsn(crm, SystemName.crm, "postgresql://sink") == "postgresql://sink"
    assert _suspects_source_dsn(crm, SystemName.erp, "postgresql://sink") == "postgresql://stack"
    monkeypatch.setenv(SUSPECTS_CRM_DSN, "postgresql://reader@crm.example/crm")
    assert _suspects_source_dsn(crm, SystemName.erp, "postgresql://sink") == (
        "postgresql://reader@crm.example/crm"
    )


def test_a_record_of_a_system_without_a_dsn_or_with_a_foreign_id_counts_as_live() -> None:
    # No database read: nothing says these records are gone.
    keys = ["crm:3f2c0000-0000-4000-8000-000000000001", "erp:not-a-number"]
    assert live_records({"erp": "postgresql://unused:1/x"}, "customer", keys) == set(keys)


def test_a_database_failure_is_named_by_class_and_sqlstate_only() -> None:
    secret = "postgresql://erp:s3cret@db.example:5432/erp"
    assert database_failure(psycopg.OperationalError(f"connection to {secret} failed")) == (
        "OperationalError"
    )
    assert database_failure(psycopg.errors.UndefinedTable(secret)) == (
        "UndefinedTable, SQLSTATE 42P01"
    )


@pytest.mark.parametrize(
    ("args", "patched"),
    [
        (["suspects", "list", "--target", "crm"], "erpcrm.suspects.list_suspects"),
        (["suspects", "release", "7", "--target", "erp"], "erpcrm.suspects.decide"),
        (["suspects", "link", "7", "--target", "crm"], "erpcrm.suspects.decide"),
    ],
)
def test_a_suspects_command_fails_on_a_database_error_in_one_line_without_the_dsn(
    monkeypatch: pytest.MonkeyPatch, args: list[str], patched: str
) -> None:
    secret = "postgresql://erp:s3cret@db.example:5432/erp"

    def failing(*_args: object, **_kwargs: object) -> None:
        raise psycopg.OperationalError(f"connection to {secret} failed")

    monkeypatch.setattr(cli, "_suspects_target", lambda _target: (secret, "s", "d"))
    monkeypatch.setattr(cli, "_suspects_source_dsn", lambda *_: secret)
    monkeypatch.setattr(patched, failing)
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 1
    assert result.exc_info is not None
    assert result.exc_info[0] is SystemExit, "a traceback"
    assert "s3cret" not in result.output
    assert "db.example" not in result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: "), line
    hint = "check the sink's DSN"
    if "link" in args:
        hint += " and ERPCRM_SUSPECTS_ERP_DSN / --erp-dsn, ERPCRM_SUSPECTS_CRM_DSN / --crm-dsn"
    assert line.endswith(f"a database call failed (OperationalError); {hint}"), line
