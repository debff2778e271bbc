"""``BEGIN`` records of the transaction topics, recognised from their bytes.

The capture writes a ``BEGIN`` and an ``END`` record per transaction to
``<system>.transaction`` (Debezium's transaction metadata). Only the ``END`` drives
anything (source order, order assembly, the decided horizon: it counts the
transaction's events); of a ``BEGIN`` the worker uses nothing but its ``ts_ms`` (the
transaction's commit time, the same as its ``END``'s), as every record read feeds the
read horizon (:mod:`streams.horizon`). ``BEGIN`` s are over a quarter of the messages
read, so they are not decoded: :class:`BeginRecords` reads the ``ts_ms`` off the bytes.

A ``BEGIN`` written with Debezium's value schema
(``status, id, event_count, data_collections, ts_ms``; the capture's own, see
:func:`cdc.envelope.transaction_value_schema`) is, after the 5 bytes of the Confluent
frame: the string ``BEGIN`` (``0x0a`` and its 5 bytes), the id (a length and its
bytes), two null union branches (``0x00 0x00``) and ``ts_ms`` (a long), then nothing.
The layout is trusted only for a writer schema id that has shown it: the first ``BEGIN``
of each schema id is decoded whole, and its id is taken on once the decoded record
names exactly those fields and holds what the bytes read as (:meth:`BeginRecords.learn`).
A record of any other shape, or of a schema id not seen yet, is decoded as before.

The bytes of the id are skipped, not read: a ``BEGIN`` whose id is not valid UTF-8 is
ignored as every ``BEGIN`` is, where a full decoding would have dead-lettered it.

Pure: no I/O; the set of schema ids shown is the only state (schema ids never change
meaning in a registry, so it survives rollbacks and reloads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from schemas.avro_reader import read_long

__all__ = ["BeginRecords", "begin_ts_ms"]

_FIELDS: Final = ("status", "id", "event_count", "data_collections", "ts_ms")
"""The fields of Debezium's transaction metadata value, in its order."""
_MAGIC: Final = 0
_STATUS_AT: Final = 5
_BEGIN: Final = b"\x0aBEGIN"
"""The Avro string ``BEGIN``: its length (5, zig-zag: 10), then its bytes."""
_ID_AT: Final = _STATUS_AT + len(_BEGIN)


def begin_ts_ms(value: bytes) -> int | None:
    """The ``ts_ms`` of a ``BEGIN`` laid out as the module doc says; None: another record.

    Reads the layout only: the caller knows the writer schema has it.
    """
    if len(value) <= _ID_AT + 3 or value[0] != _MAGIC or value[_STATUS_AT:_ID_AT] != _BEGIN:
        return None
    try:
        length, at = read_long(value, _ID_AT)
        at += length
        if length < 0 or value[at] != 0 or value[at + 1] != 0:
            return None
        ts_ms, at = read_long(value, at + 2)
    except IndexError:
        return None
    return ts_ms if at == len(value) else None


class BeginRecords:
    """Recognises ``BEGIN`` records of writer schemas known to lay them out as expected."""

    def __init__(self) -> None:
        self._shown: set[int] = set()
        """Writer schema ids whose ``BEGIN`` s have the layout :func:`begin_ts_ms` reads."""

    def ts_ms(self, value: bytes) -> int | None:
        """The ``ts_ms`` of a ``BEGIN`` record of a schema id shown; None: decode it.

        None for every other record: an ``END``, a ``BEGIN`` of a schema id not shown
        yet (see :meth:`learn`) or of another shape, bytes that are no wire-format message.
        """
        if type(value) is not bytes or int.from_bytes(value[1:5]) not in self._shown:
            return None
        return begin_ts_ms(value)

    def learn(self, value: bytes, record: Mapping[str, Any]) -> None:
        """A transaction record decoded whole: take on its schema id if it shows the layout.

        ``record`` is ``value`` decoded. A ``BEGIN`` shows the layout when the record has
        exactly Debezium's fields, in order, both optional ones null, and its bytes read
        (:func:`begin_ts_ms`) as the ``ts_ms`` it holds.
        """
        if (
            type(value) is bytes
            and tuple(record) == _FIELDS
            and record["status"] == "BEGIN"
            and isinstance(record["id"], str)
            and record["event_count"] is None
            and record["data_collections"] is None
            and type(record["ts_ms"]) is int
            and begin_ts_ms(value) == record["ts_ms"]
        ):
            self._shown.add(int.from_bytes(value[1:5]))
