"""On a quiet pipeline a row changed locally is merged after its clock wait, not ten minutes.

On the real stack with both captures, the streams worker and both sinks running, the
sinks waiting ``CLOCK_WAIT`` for a row's own event and held back for at most the
product's ten minutes (``ERPCRM_SINK_CLOCK_BEHIND_MAX_SECONDS``):

- A linked customer's ERP row is changed under an origin the ERP capture drops (no own
  event of it will ever come), then its account is changed in the CRM, and nothing else
  is written anywhere. No later ERP change tells the ERP sink that the ERP's own events
  up to the local change are out; the streams stage's decided horizon of the ERP (moved
  on by the ERP capture's heartbeats) does: the CRM's change is merged after the clock
  wait, not after ten minutes.
- With the ERP capture stopped, no horizon of the ERP moves: a CRM change of a row with
  an ERP change still in the stopped capture waits beyond its clock wait, and once the
  capture is back the ERP's own event tells the fields it changed, so both changes
  survive.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.cdc_fixtures import execute, wait_for
from tests.integration.operator_fixtures import (
    new_customer,
    operator_pipeline,  # noqa: F401 - fixture pipeline
    parked_briefly,
    under_sink_origin,
)
from tests.integration.sink_fixtures import Pipeline

pytestmark = pytest.mark.integration

CLOCK_WAIT = 20.0
WITHIN = CLOCK_WAIT + 40.0
"""The next heartbeat (5 s), decided and published (a second or two), read, then the wait."""


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str]) -> dict[str, str]:
    """The stack's settings; the sinks with a short clock wait, the product's ten minutes."""
    return dict(parked_briefly(stack_env), ERPCRM_SINK_CLOCK_WAIT_SECONDS=str(CLOCK_WAIT))


def _partner(env: dict[str, str], partner: str) -> tuple[str | None, str | None]:
    """The ERP partner's ``(email, phone)``."""
    [(email, phone)] = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT email, phone FROM public.res_partner WHERE id = %s",
        (int(partner),),
    )
    return email, phone


def _account(env: dict[str, str], account: str) -> tuple[str | None, str | None]:
    """The CRM account's ``(email, phone_office)``."""
    [(email, phone)] = execute(
        env["CRM_ADMIN_DSN"],
        "SELECT email, phone_office FROM public.accounts WHERE id = %s",
        (account,),
    )
    return email, phone


def _quiet(pipeline: Pipeline) -> None:
    """Let the linking's own traffic pass: nothing held, a few seconds of nothing."""
    wait_for(lambda: pipeline.erp_sink.held() == 0, 60, "the ERP sink holding nothing")
    time.sleep(5)


def _change_email(env: dict[str, str], account: str) -> str:
    email = f"moved-{uuid.uuid4().hex[:8]}@example.com"
    execute(env["CRM_DSN"], "UPDATE public.accounts SET email = %s WHERE id = %s", (email, account))
    return email


def test_a_row_changed_locally_on_a_quiet_pipeline_is_merged_after_the_clock_wait(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    partner, account = new_customer(env)
    _quiet(pipeline)
    # The ERP row changed by something the ERP capture drops: no own event will come.
    under_sink_origin(
        env["ERP_ADMIN_DSN"],
        "UPDATE public.res_partner SET phone = '+49 30 7654321' WHERE id = %s",
        (int(partner),),
    )
    changed = time.monotonic()
    email = _change_email(env, account)  # the last write for a while
    wait_for(lambda: pipeline.erp_sink.held() >= 1, 60, "the change held by the ERP sink")
    wait_for(lambda: _partner(env, partner)[0] == email, WITHIN, "the CRM's e-mail in the ERP")
    after = time.monotonic() - changed
    print(f"\nCRM change -> merged into a row changed locally: {after:.1f} s")
    # Counted in full once the ERP's horizon had passed the local change; not held back
    # for ten minutes.
    assert CLOCK_WAIT <= after <= WITHIN
    assert _partner(env, partner)[1] == "+49 30 7654321"


def test_a_stopped_capture_moves_no_horizon_and_the_change_waits_for_its_own_event(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    partner, account = new_customer(env)
    _quiet(pipeline)
    pipeline.erp.stop()
    try:
        # An ERP user's change, still in the stopped capture; then the CRM's.
        execute(
            env["ERP_DSN"],
            "UPDATE public.res_partner SET phone = '+49 30 1112223' WHERE id = %s",
            (int(partner),),
        )
        email = _change_email(env, account)
        wait_for(lambda: pipeline.erp_sink.held() >= 1, 60, "the change held by the ERP sink")
        time.sleep(CLOCK_WAIT + 15)
        # No horizon of the ERP passed the local change: the wait has not counted.
        assert pipeline.erp_sink.held() >= 1
        assert _partner(env, partner)[0] != email
    finally:
        pipeline.erp.start()
    pipeline.erp.wait_streaming()
    # The own event tells the ERP changed the phone only: the CRM's e-mail is merged,
    # and the ERP's phone reaches the CRM.
    wait_for(lambda: _partner(env, partner)[0] == email, 90, "the CRM's e-mail in the ERP")
    wait_for(lambda: _account(env, account)[1] == "+49301112223", 90, "the ERP's phone in the CRM")
    assert _account(env, account)[0] == email
