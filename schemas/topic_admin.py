"""Creating topics in one place, and waiting for a broker that is away.

Each stage makes the topics it owns when it starts, and again when it reconnects. A
topic that exists already is left as it is. A broker that refuses one for any other
reason, or does not answer in time (it is away, or still starting), raises
:class:`~schemas.errors.RetriableError`: the stage waits and tries again, as it does
for every other outage, and never exits for it. (The admin client's futures time out
with the built-in ``TimeoutError``, which no caller retried: a capture reconnecting
to its database while the broker was away stopped with it.)

A stage whose client library cannot start without a broker (the streams worker: Faust's
consumer gives up on its first bootstrap) calls :func:`wait_for_broker` first, so that
started while Kafka is away it waits, as the other stages do, instead of exiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.errors import RetriableError

__all__ = ["TOPIC_TIMEOUT_SECONDS", "create_topics", "wait_for_broker"]

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
    try:
        return _create(admin, topics, timeout)
    finally:
        # A client configured with a logger keeps its log lines and errors queued until
        # polled: hand them over before the (short-lived) admin client goes.
        admin.poll(0)


def _create(admin: AdminClient, topics: Sequence[NewTopic], timeout: float) -> set[str]:
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


BROKER_ATTEMPT_SECONDS: Final = 5.0
"""How long one metadata request of :func:`wait_for_broker` waits for an answer."""
BROKER_WARN_SECONDS: Final = 30.0
"""While the broker stays away, :func:`wait_for_broker` warns again this often."""


class MetadataClient(Protocol):
    """The part of a librdkafka client :func:`wait_for_broker` uses."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        """Cluster metadata; raises ``KafkaException`` when no broker answers in ``timeout``."""
        ...


def wait_for_broker(
    client: MetadataClient,
    what: str,
    log: logging.Logger,
    *,
    attempt_s: float = BROKER_ATTEMPT_SECONDS,
    warn_every_s: float = BROKER_WARN_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Block until a broker answers a metadata request; return the seconds waited.

    Never gives up (the process is stopped to give up): ``what`` (the stage) logs a
    warning when the broker first does not answer and every ``warn_every_s`` seconds
    after, with how long it has waited and the client's error, and an info line once it
    answers after a wait. Each attempt waits ``attempt_s`` seconds at most.
    """
    started = clock()
    warned_at: float | None = None
    while True:
        try:
            client.list_topics(timeout=attempt_s)
        except KafkaException as exc:
            now = clock()
            if warned_at is None or now - warned_at >= warn_every_s:
                warned_at = now
                log.warning(
                    "%s: Kafka does not answer (%s); waiting for it before starting (%.0fs so far)",
                    what,
                    exc,
                    now - started,
                )
            continue
        waited = clock() - started
        if warned_at is not None:
            log.info("%s: Kafka answers after %.0fs; starting", what, waited)
        return waited
