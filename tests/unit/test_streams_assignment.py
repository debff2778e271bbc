"""The single-owner assignment (streams/assignment.py): one member gets every partition."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.coordinator.protocol import (  # type: ignore[import-untyped]
    ConsumerProtocolMemberMetadata,
)
from faust.assignor import PartitionAssignor
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

from streams.assignment import SingleOwnerAssignor, pick_owner

TOPICS = ["erp.public.res_partner", "erp.transaction", "app-control", "app-dedupe-changelog"]


def member(actives: dict[str, list[int]]) -> ConsumerProtocolMemberMetadata:
    """A member's join metadata as Faust sends it: subscription, previous assignment."""
    client = ClientMetadata(
        assignment=ClientAssignment(actives=actives, standbys={}),
        url="http://127.0.0.1:1",
        changelog_distribution={},
    )
    return ConsumerProtocolMemberMetadata(4, list(TOPICS), client.dumps())


def test_the_previous_owner_keeps_everything_else_the_smallest_member_id() -> None:
    assert pick_owner({"b": False, "a": False}) == "a"
    assert pick_owner({"a": False, "b": True, "c": False}) == "b"
    assert pick_owner({"c": True, "b": True}) == "b"  # after a split: one of them


def test_only_the_owner_subscribes_so_it_is_assigned_every_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def faust_assignment(self: Any, cluster: Any, member_metadata: Any) -> str:
        seen.update(member_metadata)
        return "assigned"

    monkeypatch.setattr(PartitionAssignor, "_perform_assignment", faust_assignment)
    assignor = object.__new__(SingleOwnerAssignor)
    members = {
        "joiner": member({}),
        "owner": member({"erp.public.res_partner": [0, 1, 2], "app-control": [0]}),
    }
    assert assignor._perform_assignment(None, members) == "assigned"
    assert seen["owner"] is members["owner"]
    standby = seen["joiner"]
    assert (standby.version, standby.subscription, standby.user_data) == (
        4,
        [],
        members["joiner"].user_data,
    )
