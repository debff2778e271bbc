"""Partition assignment: every partition the workers read goes to one of them, the owner.

The worker reads the raw topics of both systems directly (see :mod:`streams.app`), and
its state is one whole: source order needs every table's changes of a transaction and
the transaction's ``END`` in one place, and the crosswalk, SKU index and customer index
are needed by every record. Faust's own assignor groups topics by partition count and
spreads partition ``N`` of each group over the workers, so with two workers one would
read raw partitions 1 and 2 without the tables (one partition each) that their records
need, and a transaction's changes would be decided in two places.

:class:`SingleOwnerAssignor` keeps Faust's assignment but hands it all to one member:
the one that owned it before (sticky; a member reports its previous assignment in its
metadata), else the first by member id. The other members subscribe to nothing for this
round and stand by; when the owner leaves or dies, the next rebalance makes one of them
the owner, which restores the tables from their changelogs and resumes from the
committed offsets. Correct with 1..N workers and across rebalances; a second worker adds
availability, not throughput.
"""

from __future__ import annotations

from typing import Any

from aiokafka.coordinator.protocol import (  # type: ignore[import-untyped]
    ConsumerProtocolMemberMetadata,
)
from faust.assignor import PartitionAssignor
from faust.assignor.client_assignment import ClientMetadata

__all__ = ["SingleOwnerAssignor", "pick_owner"]


def pick_owner(previous: dict[str, bool]) -> str:
    """The member to own every partition, from each member's "owned something before".

    Sticky: a member that owned partitions keeps them (the smallest id if, after a
    split, several claim to); else the smallest member id.
    """
    owners = sorted(member for member, owned in previous.items() if owned)
    return owners[0] if owners else min(previous)


class SingleOwnerAssignor(PartitionAssignor):
    """Faust's assignor with every subscription but the owner's left out (module doc)."""

    def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:
        owned = {member: bool(_previous_actives(meta)) for member, meta in member_metadata.items()}
        owner = pick_owner(owned)
        only_owner = {
            member: metadata
            if member == owner
            else ConsumerProtocolMemberMetadata(metadata.version, [], metadata.user_data)
            for member, metadata in member_metadata.items()
        }
        return super()._perform_assignment(cluster, only_owner)


def _previous_actives(metadata: Any) -> dict[str, list[int]]:
    """The active partitions a member held before this rebalance (from its user data)."""
    client = ClientMetadata.loads(metadata.user_data)
    return {topic: parts for topic, parts in client.assignment.actives.items() if parts}
