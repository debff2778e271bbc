"""On a quiet pipeline a reference that never comes is dead-lettered in about a minute.

On the real stack with both captures, the streams worker and both sinks running, the
sinks with the product's reference settings (a 30 s wait, held back for at most ten
minutes): a CRM contact of an account the ERP never hears of (written under an origin
the CRM capture drops), and nothing else written anywhere. No later CRM change comes to
tell the ERP sink that everything committed before the contact is out; the streams
stage's decided horizon of the CRM (moved on by the CRM capture's heartbeats) does, so
the contact is dead-lettered ``unresolved_reference`` after its 30 s wait, not after ten
minutes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from sinks.settings import SinkSettings
from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.operator_fixtures import (
    erpcrm_json,
    parked_briefly,
    streaming_pipeline,
    under_sink_origin,
)
from tests.integration.sink_fixtures import Pipeline

pytestmark = pytest.mark.integration

REFERENCE_WAIT = float(SinkSettings.model_fields["reference_wait_seconds"].default)
"""The product's reference wait (30 s); the pipeline's sinks run with it."""
WITHIN = 60.0


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str]) -> dict[str, str]:
    """The stack's settings; the sinks with the product's reference wait."""
    return dict(parked_briefly(stack_env), ERPCRM_SINK_REFERENCE_WAIT_SECONDS=str(REFERENCE_WAIT))


@pytest.fixture(scope="module")
def pipeline(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with streaming_pipeline(env, tmp_path_factory.mktemp("reference_horizon")) as running:
        yield running


def _letter(env: dict[str, str], key: str) -> dict[str, Any] | None:
    """The ERP sink's dead letter of ``key``, if there is one yet."""
    listed = erpcrm_json(env, "dlq", "list", "--stage", "sinks.erp", "--since", "10m", "--json")
    found = [line for line in listed if line["entity_key"] == key]
    return found[-1] if found else None


def test_a_contact_whose_account_never_comes_is_dead_lettered_within_a_minute(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    sink = pipeline.erp_sink
    # The account: written under an origin the CRM capture drops, so the ERP never has it.
    ((account,),) = under_sink_origin(
        env["CRM_ADMIN_DSN"],
        "INSERT INTO public.accounts (name, billing_address_country) VALUES (%s, 'DE')"
        " RETURNING id::text",
        (f"Quiet {uuid.uuid4().hex[:8]} AG",),
    )
    # Its contact: an ordinary CRM write, the last one for a while.
    ((contact, committed_ms),) = execute(
        env["CRM_DSN"],
        "INSERT INTO public.contacts (account_id, first_name, last_name, email)"
        " VALUES (%s, 'Ada', 'Quiet', %s)"
        " RETURNING id::text, (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
        (account, f"ada-{uuid.uuid4().hex[:8]}@example.com"),
    )
    wait_for(lambda: sink.held() >= 1, 60, "the contact held by the ERP sink", interval=0.5)
    letter = wait_for(
        lambda: _letter(env, f"crm:{contact}"),
        WITHIN + 30,
        "the ERP sink's dead letter of the contact",
        interval=2.0,
    )
    written_ms = datetime.fromisoformat(letter["written_at"]).timestamp() * 1000
    after = (written_ms - int(committed_ms)) / 1000
    print(f"\ncontact committed -> dead letter: {after:.1f} s")
    assert letter["reason"] == "unresolved_reference"
    assert letter["entity"] == "contact"
    # The wait was counted in full once the horizon had passed the contact, and not
    # held back for ten minutes.
    assert REFERENCE_WAIT <= after <= WITHIN
    assert execute(
        env["ERP_ADMIN_DSN"],
        "SELECT count(*) FROM public.res_partner WHERE crm_contact_id = %s",
        (contact,),
    ) == [(0,)]
    # The sink reads the CRM's horizon a few seconds old at most (a heartbeat every 5 s).
    time.sleep(6)  # the gauge is refreshed every 5 s
    age = sink.metric("erpcrm_sink_horizon_age_seconds", target="erp", system="crm")
    assert 0 < age < 20
