"""librdkafka's logs, errors and statistics of one worker, through Python logging, folded.

confluent-kafka clients log through librdkafka, which writes to stderr on its own unless
given a ``logger``. :class:`KafkaClientLog` is that logger for every client of one worker
(its producers, consumers and admin clients share it), and their ``error_cb`` and
``stats_cb`` too: what they report goes to the logger ``erpcrm.kafka.<worker>``, folded
by :mod:`schemas.log_folding` — a broker outage is a line when it starts, one every 30 s
while it lasts, and one when a client sees the broker up again (its statistics, every
:data:`STATISTICS_INTERVAL_MS`, say so); any other message is shown once per 30 s with a
count of its repeats. Secrets of the client configuration never appear: every text is
redacted before it is logged.

librdkafka hands these callbacks to the thread that polls the client (``poll``,
``flush``, ``consume``); a client never polled keeps them queued. Calls are serialised
by a lock: clients polled on several threads share one log.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import orjson

from schemas.log_folding import (
    FOLD_WINDOW_SECONDS,
    Line,
    OutageTracker,
    RepeatFolder,
    broker_failure,
    redact,
)

__all__ = [
    "LOGGER_PREFIX",
    "MASK",
    "STATISTICS_INTERVAL_MS",
    "KafkaClientLog",
    "masked",
    "secret_values",
]

LOGGER_PREFIX: Final = "erpcrm.kafka"
"""Each worker's Kafka clients log as ``erpcrm.kafka.<worker>`` (``erpcrm.kafka.cdc-erp``)."""

STATISTICS_INTERVAL_MS: Final = 5000
"""How often each client reports its brokers' states (read only during an outage)."""

_SECRET_KEY: Final = re.compile(r"password|secret|token|oauthbearer\.config|key\.pem", re.I)


MASK: Final = "**********"
"""What a secret reads as when a configuration is dumped (pydantic's ``SecretStr`` text)."""


def secret_values(config: Mapping[str, Any]) -> list[str]:
    """The values of ``config`` whose property names say they are secrets."""
    return [str(v) for k, v in config.items() if _SECRET_KEY.search(k) and v]


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the values :func:`secret_values` finds replaced by :data:`MASK`."""
    return {k: MASK if _SECRET_KEY.search(k) and v else v for k, v in config.items()}


class KafkaClientLog:
    """The ``logger``, ``error_cb`` and ``stats_cb`` of every Kafka client of one worker.

    Args:
        worker: names the logger, ``erpcrm.kafka.<worker>``.
        secrets: values that must never be logged (SASL passwords and the like).
        window_s: how long repeats are folded before a summary.
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        worker: str,
        *,
        secrets: Iterable[str] = (),
        window_s: float = FOLD_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.logger = logging.getLogger(f"{LOGGER_PREFIX}.{worker}")
        self._secrets = tuple(s for s in secrets if s)
        self._folder = RepeatFolder(window_s)
        self._outages = OutageTracker(window_s)
        self._clock = clock
        self._lock = threading.Lock()

    def hooks(self) -> dict[str, Any]:
        """The client configuration entries that route a client's reports here."""
        return {
            "logger": self,
            "error_cb": self.error,
            "stats_cb": self.stats,
            "statistics.interval.ms": STATISTICS_INTERVAL_MS,
        }

    # -- what confluent-kafka calls ---------------------------------------------------

    def log(self, level: int, msg: str, *args: Any) -> None:
        """Take one librdkafka log line (``logging.Logger.log``'s signature).

        confluent-kafka passes ``"%s [%s] %s"`` with librdkafka's facility, the client's
        name and the message.
        """
        if len(args) == 3:
            facility, client, text = args
            self._report(level, str(text), f"{client} {facility}")
        else:
            self._report(level, msg % args if args else msg, "")

    def error(self, error: Any) -> None:
        """``error_cb``: librdkafka's errors (most are informational; fatal ones are not)."""
        fatal = bool(error.fatal())
        level = logging.ERROR if fatal else logging.WARNING
        self._report(level, str(error.str()), f"{error.name()}{' (fatal)' if fatal else ''}")

    def stats(self, text: str) -> None:
        """``stats_cb``: while an outage is open, brokers seen up end it; always a tick."""
        now = self._clock()
        with self._lock:
            lines = self._folder.due(now)
            if self._outages.down:
                lines += self._brokers_up(text, now)
            lines += self._outages.due(now)
            self._emit(lines)

    # -- inside -------------------------------------------------------------------------

    def _report(self, level: int, text: str, origin: str) -> None:
        now = self._clock()
        with self._lock:
            lines = self._folder.due(now) + self._outages.due(now)
            failure = broker_failure(text)
            told = None if failure is None else self._outages.failed(failure, now)
            if told is None:
                shown = f"{origin}: {text}" if origin else text
                told = self._folder.offer(level, shown, now, key=text)
            self._emit(lines + told)

    def _brokers_up(self, text: str, now: float) -> list[Line]:
        try:
            brokers = orjson.loads(text).get("brokers", {})
        except (orjson.JSONDecodeError, AttributeError):
            return []
        lines: list[Line] = []
        for broker in brokers.values():
            address = broker.get("nodename")
            if broker.get("state") == "UP" and address in self._outages.down:
                since = now - float(broker.get("stateage", 0)) / 1e6
                lines += self._outages.up(address, since, now)
        return lines

    def _emit(self, lines: list[Line]) -> None:
        for line in lines:
            self.logger.log(line.level, "%s", redact(line.text, self._secrets))
