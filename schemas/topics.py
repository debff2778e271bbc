"""Topic and subject names on the bus (DESIGN.md §4).

Pure functions and constants, no I/O. Every name a function returns is a legal Kafka
topic name; an argument that would make an illegal one raises
:class:`~schemas.errors.ConfigError`, because names come from settings and table
metadata and are resolved once at start-up.

- raw change topics: ``<system>.<schema>.<table>``, e.g. ``erp.public.res_partner``
- transaction metadata: ``<system>.transaction``
- canonical topics: ``canonical.<entity>``
- dead letters: ``dlq.<stage>``; what was replayed from them: ``dlq.replayed``
  (compacted, keyed by the dead letter's position)
- replayed dead letters of a stage that reads no raw topic (the sinks):
  ``replay.<stage>``
- the data-quality log: ``quality.defects`` (JSON, see :mod:`streams.quality`)
- how far a stage has decided each source system: ``horizon.<stage>``, e.g.
  ``horizon.streams`` (see :mod:`schemas.horizon`)
- schema registry subjects (TopicNameStrategy): ``<topic>-key`` and ``<topic>-value``
"""

from __future__ import annotations

import re
from typing import Final

from schemas.errors import ConfigError

__all__ = [
    "CANONICAL_CONTACT",
    "CANONICAL_CUSTOMER",
    "CANONICAL_ENTITIES",
    "CANONICAL_INVENTORY",
    "CANONICAL_INVOICE",
    "CANONICAL_PREFIX",
    "CANONICAL_PRODUCT",
    "CANONICAL_SALES_ORDER",
    "CANONICAL_TOPICS",
    "DLQ_PREFIX",
    "DLQ_REPLAYED",
    "HORIZON_PREFIX",
    "MAX_TOPIC_LENGTH",
    "QUALITY_TOPIC",
    "REPLAY_PREFIX",
    "TRANSACTION_SUFFIX",
    "canonical_topic",
    "dlq_topic",
    "horizon_topic",
    "key_subject",
    "parse_raw_topic",
    "raw_topic",
    "replay_topic",
    "subject",
    "transaction_topic",
    "validate_topic",
    "value_subject",
]

MAX_TOPIC_LENGTH: Final = 249
"""Kafka's limit on the length of a topic name."""

_LEGAL: Final = re.compile(r"[A-Za-z0-9._-]+")

CANONICAL_PREFIX: Final = "canonical"
DLQ_PREFIX: Final = "dlq"
REPLAY_PREFIX: Final = "replay"
HORIZON_PREFIX: Final = "horizon"
TRANSACTION_SUFFIX: Final = "transaction"

CANONICAL_ENTITIES: Final = (
    "customer",
    "contact",
    "product",
    "inventory",
    "sales_order",
    "invoice",
)
"""The canonical business entities, in dependency order (a contact needs its customer)."""

DLQ_REPLAYED: Final = "dlq.replayed"
"""The record of replayed dead letters: key ``<dlq topic>:<partition>:<offset>``."""

CANONICAL_CUSTOMER: Final = "canonical.customer"
CANONICAL_CONTACT: Final = "canonical.contact"
CANONICAL_PRODUCT: Final = "canonical.product"
CANONICAL_INVENTORY: Final = "canonical.inventory"
CANONICAL_SALES_ORDER: Final = "canonical.sales_order"
CANONICAL_INVOICE: Final = "canonical.invoice"

CANONICAL_TOPICS: Final = (
    CANONICAL_CUSTOMER,
    CANONICAL_CONTACT,
    CANONICAL_PRODUCT,
    CANONICAL_INVENTORY,
    CANONICAL_SALES_ORDER,
    CANONICAL_INVOICE,
)

QUALITY_TOPIC: Final = "quality.defects"
"""The data-quality log: per record, the defects the streams stage fixed, quarantined,
kept or dead-lettered (keyed by entity key, JSON values)."""


def validate_topic(name: str) -> str:
    """Return ``name`` unchanged if it is a legal Kafka topic name.

    Legal means 1 to 249 characters from ``[A-Za-z0-9._-]`` and neither ``.`` nor ``..``
    (the rules the broker enforces).

    Raises:
        ConfigError: the name is not legal.
    """
    if not name or len(name) > MAX_TOPIC_LENGTH:
        raise ConfigError(
            f"topic name must have 1 to {MAX_TOPIC_LENGTH} characters, got {len(name)}: {name!r}"
        )
    if name in {".", ".."}:
        raise ConfigError(f"topic name cannot be {name!r}")
    if _LEGAL.fullmatch(name) is None:
        raise ConfigError(f"topic name {name!r} has characters outside [A-Za-z0-9._-]")
    return name


def _part(what: str, value: str, *, dots: bool = False) -> str:
    """Check one dot-separated component of a topic name."""
    if not value:
        raise ConfigError(f"{what} must not be empty")
    if _LEGAL.fullmatch(value) is None:
        raise ConfigError(f"{what} {value!r} has characters outside [A-Za-z0-9._-]")
    if not dots and "." in value:
        raise ConfigError(f"{what} {value!r} must not contain '.'")
    return value


def raw_topic(system: str, schema: str, table: str) -> str:
    """Return the raw change topic of one captured table: ``<system>.<schema>.<table>``.

    The same naming as Debezium's default topic naming strategy with ``topic.prefix``
    set to the system name.

    Raises:
        ConfigError: a component is empty, contains a ``.``, or has characters Kafka does
            not allow (PostgreSQL identifiers may; such tables need renaming or a view).
    """
    name = ".".join(
        (_part("system", system), _part("schema", schema), _part("table", table)),
    )
    return validate_topic(name)


def parse_raw_topic(topic: str) -> tuple[str, str, str]:
    """Split a raw change topic into ``(system, schema, table)``; inverse of :func:`raw_topic`.

    Raises:
        ConfigError: ``topic`` is not a raw change topic name.
    """
    parts = validate_topic(topic).split(".")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"{topic!r} is not a raw change topic <system>.<schema>.<table>")
    return parts[0], parts[1], parts[2]


def transaction_topic(system: str) -> str:
    """Return the transaction metadata topic of a system: ``<system>.transaction``.

    Raises:
        ConfigError: ``system`` is empty, contains a ``.`` or illegal characters.
    """
    return validate_topic(f"{_part('system', system)}.{TRANSACTION_SUFFIX}")


def canonical_topic(entity: str) -> str:
    """Return the canonical topic of a business entity: ``canonical.<entity>``.

    Raises:
        ConfigError: ``entity`` is not one of :data:`CANONICAL_ENTITIES`.
    """
    if entity not in CANONICAL_ENTITIES:
        raise ConfigError(
            f"unknown canonical entity {entity!r}; known: {', '.join(CANONICAL_ENTITIES)}"
        )
    return f"{CANONICAL_PREFIX}.{entity}"


def dlq_topic(stage: str) -> str:
    """Return the dead-letter topic of a processing stage: ``dlq.<stage>``.

    ``stage`` may itself be dotted (``streams.customer``).

    Raises:
        ConfigError: ``stage`` is empty or has characters Kafka does not allow.
    """
    return validate_topic(f"{DLQ_PREFIX}.{_part('stage', stage, dots=True)}")


def replay_topic(stage: str) -> str:
    """Return the topic a stage reads replayed dead letters from: ``replay.<stage>``.

    Raises:
        ConfigError: ``stage`` is empty or has characters Kafka does not allow.
    """
    return validate_topic(f"{REPLAY_PREFIX}.{_part('stage', stage, dots=True)}")


def horizon_topic(stage: str) -> str:
    """Return the topic a stage publishes its source horizons to: ``horizon.<stage>``.

    Raises:
        ConfigError: ``stage`` is empty or has characters Kafka does not allow.
    """
    return validate_topic(f"{HORIZON_PREFIX}.{_part('stage', stage, dots=True)}")


def subject(topic: str, *, is_key: bool) -> str:
    """Return the registry subject of a topic's keys or values (TopicNameStrategy).

    Raises:
        ConfigError: ``topic`` is not a legal topic name.
    """
    return f"{validate_topic(topic)}-{'key' if is_key else 'value'}"


def key_subject(topic: str) -> str:
    """Return ``<topic>-key``, the subject of the topic's key schema."""
    return subject(topic, is_key=True)


def value_subject(topic: str) -> str:
    """Return ``<topic>-value``, the subject of the topic's value schema."""
    return subject(topic, is_key=False)
