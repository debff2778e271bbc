"""Folding repeated log lines, and a broker outage told in a few lines (pure).

librdkafka reports every failed connection attempt of every client, and a worker has
several clients: a broker away for 90 s made about 1,700 lines. Two rules bring that down
to what an operator needs, with the time passed in (no clock here):

- :class:`RepeatFolder`: a message passes the first time; its repeats within the window
  (30 s) are counted, and one summary line says how many there were when the window
  ends; a window without repeats ends silently, and the message passes again next time.
  Messages are compared without their digits (:func:`fold_key`), so the same failure of
  another partition, or after another number of milliseconds, is a repeat.
- :class:`OutageTracker`: per broker address, the first failure to connect says it is
  unreachable (since when, and why); while it stays so, one line per window says it
  still is down, with the latest reason; when a client sees it up again, one line says it
  is back and after how long. Its further connection failures meanwhile are counted, not
  shown; any other failure about it (an authentication or TLS error of a broker that
  answers again) is shown, folded as any other line.

:func:`broker_failure` reads librdkafka's message text for the address and kind of a
transport failure; :func:`redact` takes secrets out of any text before it is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Final

__all__ = [
    "FOLD_WINDOW_SECONDS",
    "BrokerFailure",
    "FailureKind",
    "Line",
    "OutageTracker",
    "RepeatFolder",
    "broker_failure",
    "fold_key",
    "redact",
]

FOLD_WINDOW_SECONDS: Final = 30.0
"""How long repeats are counted before one summary line says how many there were."""

WARNING: Final = 30
INFO: Final = 20
"""Levels as :mod:`logging` numbers them (this module imports no I/O)."""


@dataclass(frozen=True, slots=True)
class Line:
    """A line to log: a :mod:`logging` level and its text."""

    level: int
    text: str


def fold_key(text: str) -> str:
    """What makes two messages repeats of each other: the text without its digits."""
    return _DIGITS.sub("#", text)


_DIGITS: Final = re.compile(r"\d+")


@dataclass(slots=True)
class _Window:
    started: float
    text: str
    first_level: int
    level: int
    """The highest level among the repeats (the summary's)."""
    repeats: int = 0


class RepeatFolder:
    """Passes a message once per window and counts its repeats (see the module docstring).

    Not thread-safe: its owner serialises calls.
    """

    def __init__(self, window_s: float = FOLD_WINDOW_SECONDS) -> None:
        self._window_s = window_s
        self._open: dict[str, _Window] = {}

    def offer(self, level: int, text: str, now: float, key: str | None = None) -> list[Line]:
        """Lines to log for ``text`` arriving at ``now``.

        The summaries due, then ``text`` itself if it is not a repeat within an open
        window. ``key`` is the part of ``text`` that says what it is about (default: all of it,
        less its digits, :func:`fold_key`): say, the message without the client's name.
        """
        lines = self.due(now)
        key = fold_key(text if key is None else key)
        window = self._open.get(key)
        if window is None:
            self._open[key] = _Window(now, text, level, level)
            lines.append(Line(level, text))
        else:
            window.repeats += 1
            window.level = max(window.level, level)
        return lines

    def due(self, now: float) -> list[Line]:
        """Summaries of the windows ended by ``now``; a window with repeats starts again."""
        lines: list[Line] = []
        for key, window in list(self._open.items()):
            if now - window.started < self._window_s:
                continue
            if window.repeats == 0:
                del self._open[key]
                continue
            lines.append(
                Line(
                    window.level,
                    f"{window.text} (repeated {window.repeats} times in the last "
                    f"{self._window_s:.0f} s)",
                )
            )
            self._open[key] = _Window(now, window.text, window.first_level, window.first_level)
        return lines


class FailureKind(Enum):
    """What a transport failure says about a broker."""

    CONNECT = "connect"
    """A connection could not be made (refused, unresolvable, timed out): it is away."""
    DISCONNECT = "disconnect"
    """A connection was lost: it may be away, or the connection was idle (shown as
    :attr:`OTHER` is)."""
    ALL_DOWN = "all_down"
    """The client has no broker left to talk to (no address in the message)."""
    OTHER = "other"
    """Anything else about a broker's connection (a request timed out, authentication or
    TLS refused): a line of its own, folded as any other; while an outage of its broker
    is open, also that outage's latest reason."""


@dataclass(frozen=True, slots=True)
class BrokerFailure:
    """A transport failure read from librdkafka's text."""

    kind: FailureKind
    address: str | None
    """``host:port`` of the broker, or None for :attr:`FailureKind.ALL_DOWN`."""
    reason: str
    """The message without librdkafka's thread and timing decorations."""


_THREAD: Final = re.compile(r"^\[thrd:[^\]]*\]: ")
_TIMING: Final = re.compile(
    r" \(after \d+ms in state \w+(?:, \d+ identical error\(s\) suppressed)?\)"
)
_BROKER: Final = re.compile(
    r"^(?:(?:GroupCoordinator|TxnCoordinator)(?:/\d+)?: )?"
    r"(?:\w+://)?(?P<address>\[[0-9A-Fa-f:.]+\]:\d+|[A-Za-z0-9._-]+:\d+)(?:/(?:\d+|bootstrap))?: "
    r"(?P<rest>.*)$"
)
_CONNECT: Final = ("Connect to ", "Failed to resolve", "Connection refused", "Connection timed out")
_DISCONNECT: Final = ("Disconnected", "Receive failed", "Send failed", "Connection reset")
_ALL_DOWN: Final = re.compile(r"^\d+/\d+ brokers are down$")


def broker_failure(text: str) -> BrokerFailure | None:
    """The transport failure ``text`` (a librdkafka log or error message) reports, if any.

    A message naming a broker (``host:port/id: …``, with the protocol in front for a
    broker reached other than in plaintext: ``sasl_ssl://host:port/id: …``) is about that
    broker's connection; its address is ``host:port`` either way (the ``nodename`` of the
    client's statistics).
    """
    plain = _TIMING.sub("", _THREAD.sub("", text)).strip()
    if _ALL_DOWN.match(plain):
        return BrokerFailure(FailureKind.ALL_DOWN, None, plain)
    found = _BROKER.match(plain)
    if found is None:
        return None
    rest = found.group("rest")
    if rest.startswith(_CONNECT) or "failed: Connection refused" in rest:
        return BrokerFailure(FailureKind.CONNECT, found.group("address"), rest)
    if rest.startswith(_DISCONNECT):
        return BrokerFailure(FailureKind.DISCONNECT, found.group("address"), rest)
    return BrokerFailure(FailureKind.OTHER, found.group("address"), rest)


@dataclass(slots=True)
class _Outage:
    since: float
    last_told: float
    reason: str
    """The latest failure about the broker (what the line every window repeats)."""
    folded: int = 0


def _clock(at: float) -> str:
    """``at`` (seconds since the epoch) as an ISO UTC time to the second."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OutageTracker:
    """One broker outage in three kinds of line (see the module docstring).

    Not thread-safe: its owner serialises calls. Times are seconds since the epoch.
    """

    def __init__(self, window_s: float = FOLD_WINDOW_SECONDS) -> None:
        self._window_s = window_s
        self._down: dict[str, _Outage] = {}

    @property
    def down(self) -> frozenset[str]:
        """The addresses unreachable now."""
        return frozenset(self._down)

    def failed(self, failure: BrokerFailure, now: float) -> list[Line] | None:
        """Lines for ``failure``; None when the caller shows it as any other line.

        A connection failure opens an outage of its address (one line); while it is
        open, connection failures of that address and "all brokers are down" are counted
        in it (no line). Any other failure about the address (a lost connection, an
        authentication or TLS error, a timed-out request) is still shown: it may say why
        the broker is not back although it answers (rotated credentials). It becomes the
        outage's latest reason, repeated by the line every window (:meth:`due`), as every
        failure of the address does. A lost connection alone opens no outage: an idle
        connection closed by the broker is not one.
        """
        if failure.kind is FailureKind.ALL_DOWN:
            if not self._down:
                return None
            for each in self._down.values():
                each.folded += 1
            return []
        assert failure.address is not None
        outage = self._down.get(failure.address)
        if outage is not None:
            outage.reason = failure.reason
            if failure.kind is not FailureKind.CONNECT:
                return None
            outage.folded += 1
            return []
        if failure.kind is not FailureKind.CONNECT:
            return None
        self._down[failure.address] = _Outage(since=now, last_told=now, reason=failure.reason)
        return [
            Line(
                WARNING,
                f"Kafka broker {failure.address} unreachable since {_clock(now)}: "
                f"{failure.reason}; retrying (further connection failures folded, a line "
                f"every {self._window_s:.0f} s while it lasts)",
            )
        ]

    def up(self, address: str, since: float, now: float) -> list[Line]:
        """A client sees ``address`` up again, since ``since``: the line saying it is back."""
        outage = self._down.pop(address, None)
        if outage is None:
            return []
        back = max(since, outage.since)
        return [
            Line(
                INFO,
                f"Kafka broker {address} reachable again after {back - outage.since:.0f} s "
                f"(down since {_clock(outage.since)}, {outage.folded} client "
                f"messages about it folded)",
            )
        ]

    def due(self, now: float) -> list[Line]:
        """One line per open outage whose last line is a window old, with its latest reason."""
        lines: list[Line] = []
        for address, outage in self._down.items():
            if now - outage.last_told < self._window_s:
                continue
            outage.last_told = now
            lines.append(
                Line(
                    WARNING,
                    f"Kafka broker {address} still down, for {now - outage.since:.0f} s "
                    f"(since {_clock(outage.since)}, {outage.folded} client messages about "
                    f"it folded; latest: {outage.reason})",
                )
            )
        return lines


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``.

    The longest secret first: a shorter one inside it must not leave the rest in clear.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
