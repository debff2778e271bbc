"""Making topics: the one place that asks the broker to create them.

Each stage makes the topics it owns when it starts, and again when it reconnects. A
topic that exists already is left as it is. A broker that refuses one for any other
reason, or does not answer in time (it is away, or still starting), raises
:class:`~schemas.errors.RetriableError`: the stage waits and tries again, as it does
for every other outage, and never exits for it. (The admin client's futures time out
with the built-in ``TimeoutError``, which no caller retried: a capture reconnecting
to its database while the broker was away stopped with it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.errors import RetriableError

__all__ = ["TOPIC_TIMEOUT_SECONDS", "create_topics"]

TOPIC_TIMEOUT_SECONDS: Final = 30.0
"""How long the broker has to answer a creation (then: retriable)."""


def create_topics(
    admin: AdminClient, topics: Sequence[NewTopic], timeout: float = TOPIC_TIMEOUT_SECONDS
) -> set[str]:
    """Create ``topics``; returns the names created now (the others existed already).

    Raises:
        RetriableError: the broker refused a topic for another reason than its
            existence, or gave no answer within ``timeout`` seconds.
    """
    if not topics:
        return set()
    created: set[str] = set()
    futures = admin.create_topics(list(topics), request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout + 5)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise RetriableError(f"cannot create topic {name}: {exc}") from exc
        except TimeoutError as exc:
            raise RetriableError(
                f"cannot create topic {name}: Kafka did not answer within {timeout:.0f}s"
            ) from exc
        created.add(name)
    return created
