"""Log sequence numbers: positions in a PostgreSQL write-ahead log.

An :class:`Lsn` is an unsigned 64-bit byte position. PostgreSQL prints it as two
upper-case hexadecimal halves separated by a slash (``16/B374D848``); the same text is
what ``pg_lsn`` accepts, what replication commands take and what Debezium stores as a
64-bit integer in ``source.lsn``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from schemas.errors import DecodeError

__all__ = ["InvalidLsnError", "Lsn"]

_MAX = (1 << 64) - 1
_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class InvalidLsnError(DecodeError, ValueError):
    """Text or an integer does not denote an LSN.

    A :class:`~schemas.errors.DecodeError` for the project's handlers and a
    :class:`ValueError` for validators (pydantic) that expect one.
    """


@dataclass(frozen=True, order=True, slots=True)
class Lsn:
    """A position in the write-ahead log, ordered by byte offset.

    Immutable and hashable; instances compare by their integer value. ``Lsn(0)``
    (``0/0``) is PostgreSQL's ``InvalidXLogRecPtr``, available as both
    :attr:`ZERO` and :attr:`INVALID`.
    """

    value: int

    ZERO: ClassVar[Lsn]
    INVALID: ClassVar[Lsn]
    MAX: ClassVar[Lsn]

    def __post_init__(self) -> None:
        value = self.value
        # bool is an int subclass, but an LSN built from True is always a mistake.
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidLsnError(f"LSN must be an int, got {type(value).__name__}")
        if type(value) is not int:
            object.__setattr__(self, "value", int(value))
        if not 0 <= self.value <= _MAX:
            raise InvalidLsnError(f"LSN {self.value} is outside 0..2**64-1")

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse PostgreSQL's ``X/X`` form (case-insensitive, 1-8 hex digits per half).

        Raises :class:`InvalidLsnError` for anything else, including surrounding
        whitespace.
        """
        match = _TEXT.fullmatch(text)
        if match is None:
            raise InvalidLsnError(f"not an LSN: {text!r}")
        return cls((int(match.group(1), 16) << 32) | int(match.group(2), 16))

    @property
    def is_valid(self) -> bool:
        """Whether this is a real position, i.e. not ``0/0``."""
        return self.value != 0

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __int__(self) -> int:
        return self.value

    def __sub__(self, other: Lsn) -> int:
        """Return the distance in bytes from ``other`` to ``self`` (negative if behind)."""
        if not isinstance(other, Lsn):
            return NotImplemented
        return self.value - other.value

    def __add__(self, delta: int) -> Lsn:
        """Return the position ``delta`` bytes further on; the result must stay in range."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            return NotImplemented
        return Lsn(self.value + delta)


Lsn.ZERO = Lsn(0)
Lsn.INVALID = Lsn.ZERO
Lsn.MAX = Lsn(_MAX)
