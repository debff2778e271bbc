"""``erpcrm suspects link`` without services: the holder of a candidate of the held
record's own system, the ERP DSN the link's check reads with, and the refusal's text."""

from __future__ import annotations

import pytest

from erpcrm import cli
from erpcrm.cli import SUSPECTS_ERP_DSN, SystemName, _suspects_erp_dsn
from erpcrm.suspects import CandidateLinkedError, CandidateTakenError, link_holder


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
