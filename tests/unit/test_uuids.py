"""UUIDv5 text is the standard library's, for any namespace and name; who uses it."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from schemas.uuids import uuid5_text
from sinks.targets import ID_NAMESPACE, deterministic_id
from streams.transform import EVENT_NAMESPACE, event_id


@given(st.uuids(), st.text())
def test_uuid5_text_is_the_standard_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_deterministic_id_is_the_uuid5_of_entity_and_key() -> None:
    expected = str(uuid.uuid5(ID_NAMESPACE, "customer|erp:5"))
    assert deterministic_id("customer", "erp:5") == expected
    parsed = uuid.UUID(expected)
    assert parsed.version == 5
    assert parsed.variant == uuid.RFC_4122


def test_event_id_is_the_uuid5_of_the_change() -> None:
    expected = uuid.uuid5(EVENT_NAMESPACE, "erp|42|public.res_partner|7")
    assert event_id("erp", 42, "public", "res_partner", "7") == str(expected)
