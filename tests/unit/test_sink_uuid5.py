"""The sink's UUIDv5 text is the standard library's, for any namespace and name."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from sinks.targets import ID_NAMESPACE, deterministic_id, uuid5_text


@given(st.uuids(), st.text())
def test_uuid5_text_is_the_standard_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_deterministic_id_is_the_uuid5_of_entity_and_key() -> None:
    expected = str(uuid.uuid5(ID_NAMESPACE, "customer|erp:5"))
    assert deterministic_id("customer", "erp:5") == expected
    parsed = uuid.UUID(expected)
    assert parsed.version == 5
    assert parsed.variant == uuid.RFC_4122
