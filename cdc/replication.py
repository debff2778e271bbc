"""The streaming replication protocol: the only module that talks to a walsender.

psycopg 3 has no high-level replication API, so this module drives libpq directly through
``conn.pgconn``: replication commands go over the simple-query protocol (walsenders accept
nothing else), ``START_REPLICATION`` turns the connection into a COPY BOTH stream, and the
CopyData frames are parsed here:

* ``w`` XLogData: ``wal_start``, ``wal_end``, ``send_time`` then one pgoutput message;
* ``k`` primary keepalive: ``wal_end``, ``send_time``, ``reply_requested``;
* ``r`` standby status update (sent by us): written, flushed, applied LSNs and our clock.

The flushed LSN we report is the one PostgreSQL may recycle WAL up to, so callers pass the
position that Kafka has acknowledged (see ``cdc.offsets``), never simply what was received.
"""

from __future__ import annotations

import logging
import re
import select
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import pq, sql

from cdc.lsn import Lsn
from schemas.errors import ConfigError, DecodeError, RetriableError

log = logging.getLogger(__name__)

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_XLOGDATA = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!cQQQqB")
_OBJECT_IN_USE = b"55006"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def pg_now_us() -> int:
    """Current time in microseconds since the PostgreSQL epoch (2000-01-01 UTC)."""
    return time.time_ns() // 1000 - _PG_EPOCH_US


def pg_time(us: int) -> datetime:
    """A PostgreSQL-epoch microsecond timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp((us + _PG_EPOCH_US) / 1_000_000, tz=UTC)


def check_name(kind: str, name: str) -> str:
    """Validate a slot/publication name (PostgreSQL's own rules for slots: ``[a-z0-9_]``)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{kind} name {name!r} must match {_NAME.pattern}")
    return name


@dataclass(frozen=True, slots=True)
class XLogData:
    """One WAL payload: a pgoutput message starting at ``wal_start``."""

    wal_start: Lsn
    wal_end: Lsn
    send_time_us: int
    payload: memoryview


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The server's position; ``reply_requested`` asks for an immediate status update."""

    wal_end: Lsn
    send_time_us: int
    reply_requested: bool


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """What ``CREATE_REPLICATION_SLOT`` returns.

    ``snapshot_name`` names a snapshot exported by the slot's creation; it stays valid
    until the next command on the replication connection, and it shows the database
    exactly as of ``consistent_point``: rows read in it plus changes streamed from
    ``consistent_point`` are the whole history, with no gap and no overlap.
    """

    name: str
    consistent_point: Lsn
    snapshot_name: str | None


@dataclass(frozen=True, slots=True)
class SystemInfo:
    """``IDENTIFY_SYSTEM``: cluster id, timeline, current WAL flush position, database."""

    system_id: str
    timeline: int
    xlogpos: Lsn
    dbname: str


class ReplicationStream:
    """A logical replication connection streaming pgoutput from one slot.

    Not thread-safe. Call :meth:`close` (or use it as a context manager) to release the
    walsender; a connection lost mid-stream raises :class:`RetriableError`, and the caller
    reconnects and restarts from its last confirmed LSN.
    """

    def __init__(self, dsn: str, *, status_interval: float = 1.0) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._status_interval = status_interval
        self._last_status = 0.0
        self._received = Lsn.ZERO
        self._flushed = Lsn.ZERO
        self._streaming = False

    # -- connection -------------------------------------------------------------------

    def connect(self) -> None:
        """Open the replication connection (``replication=database``)."""
        try:
            self._conn = psycopg.connect(self._dsn, replication="database", autocommit=True)
        except psycopg.OperationalError as exc:
            raise RetriableError(f"replication connection failed: {exc}") from exc

    @property
    def pgconn(self) -> pq.abc.PGconn:
        """The libpq connection (raises if not connected)."""
        if self._conn is None:
            raise RetriableError("replication connection is not open")
        return self._conn.pgconn

    def close(self) -> None:
        """Close the connection; the walsender ends and the slot becomes inactive."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._streaming = False

    def __enter__(self) -> ReplicationStream:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- replication commands ---------------------------------------------------------

    def _command(self, command: sql.Composable) -> pq.abc.PGresult:
        if self._conn is None:
            raise RetriableError("replication connection is not open")
        query = command.as_bytes(self._conn)
        result = self.pgconn.exec_(query)
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            message = (result.error_message or b"").decode(errors="replace").strip()
            if self.pgconn.status != pq.ConnStatus.OK:
                raise RetriableError(f"replication connection lost: {message}")
            raise ConfigError(f"replication command failed: {message}")
        return result

    @staticmethod
    def _text(result: pq.abc.PGresult, row: int, col: int) -> str | None:
        value = result.get_value(row, col)
        return None if value is None else bytes(value).decode()

    def identify_system(self) -> SystemInfo:
        """Run ``IDENTIFY_SYSTEM``."""
        result = self._command(sql.SQL("IDENTIFY_SYSTEM"))
        return SystemInfo(
            system_id=self._text(result, 0, 0) or "",
            timeline=int(self._text(result, 0, 1) or 0),
            xlogpos=Lsn.parse(self._text(result, 0, 2) or "0/0"),
            dbname=self._text(result, 0, 3) or "",
        )

    def create_slot(self, slot: str, *, export_snapshot: bool) -> SlotInfo:
        """Create a logical ``pgoutput`` slot, exporting a snapshot when asked."""
        snapshot = sql.SQL("EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT")
        result = self._command(
            sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}").format(
                sql.Identifier(check_name("slot", slot)), snapshot
            )
        )
        return SlotInfo(
            name=self._text(result, 0, 0) or slot,
            consistent_point=Lsn.parse(self._text(result, 0, 1) or "0/0"),
            snapshot_name=self._text(result, 0, 2),
        )

    def drop_slot(self, slot: str) -> None:
        """Drop a slot, waiting for it to become inactive."""
        self._command(
            sql.SQL("DROP_REPLICATION_SLOT {} WAIT").format(
                sql.Identifier(check_name("slot", slot))
            )
        )

    def start(self, slot: str, publication: str, start_lsn: Lsn) -> None:
        """``START_REPLICATION`` from ``start_lsn`` with pgoutput v1, logical messages on.

        PostgreSQL resumes from the slot's confirmed position when ``start_lsn`` is older,
        so a restart never skips what was not confirmed.
        """
        command = sql.SQL(
            "START_REPLICATION SLOT {} LOGICAL {} "
            "(proto_version '1', publication_names {}, messages 'true')"
        ).format(
            sql.Identifier(check_name("slot", slot)),
            sql.SQL(str(start_lsn)),
            sql.Literal(sql.Identifier(check_name("publication", publication)).as_string()),
        )
        if self._conn is None:
            raise RetriableError("replication connection is not open")
        pgconn = self.pgconn
        pgconn.send_query(command.as_bytes(self._conn))
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = b"" if result is None else (result.error_message or b"")
            text = message.decode(errors="replace").strip()
            state = None if result is None else result.error_field(pq.DiagnosticField.SQLSTATE)
            if state == _OBJECT_IN_USE:
                # The slot is still held, e.g. by the walsender of a killed predecessor
                # that the server has not noticed yet: wait for it, do not give up.
                raise RetriableError(f"START_REPLICATION: {text}")
            raise ConfigError(f"START_REPLICATION failed: {text}")
        pgconn.nonblocking = 1
        self._streaming = True
        self._flushed = start_lsn
        self._received = start_lsn
        log.info("replication started: slot=%s publication=%s lsn=%s", slot, publication, start_lsn)

    # -- the stream -------------------------------------------------------------------

    def read(self, timeout: float) -> XLogData | Keepalive | None:
        """Return the next frame, or None when nothing arrived within ``timeout`` seconds.

        Sends a status update whenever ``status_interval`` has passed, so the server never
        times us out while we wait.
        """
        pgconn = self.pgconn
        deadline = time.monotonic() + timeout
        while True:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                return self._parse(memoryview(data))
            if nbytes < 0:
                message = (pgconn.error_message or b"").decode(errors="replace").strip()
                self._streaming = False
                raise RetriableError(f"replication stream ended: {message or 'copy done'}")
            self._maybe_send_status()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([pgconn.socket], [], [], min(remaining, 0.5))
            if ready:
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError as exc:
                    self._streaming = False
                    raise RetriableError(f"replication connection lost: {exc}") from exc

    def _parse(self, frame: memoryview) -> XLogData | Keepalive:
        kind = frame[0:1].tobytes()
        if kind == b"w":
            start, end, sent = _XLOGDATA.unpack_from(frame, 1)
            self._received = max(self._received, Lsn(end))
            return XLogData(Lsn(start), Lsn(end), sent, frame[1 + _XLOGDATA.size :])
        if kind == b"k":
            end, sent, reply = _KEEPALIVE.unpack_from(frame, 1)
            if reply:
                self.send_status(self._flushed, force=True)
            return Keepalive(Lsn(end), sent, bool(reply))
        raise DecodeError(f"unknown replication frame type {kind!r}")

    def send_status(self, flushed: Lsn, *, force: bool = False) -> None:
        """Report ``flushed`` as written, flushed and applied.

        ``flushed`` must be a position up to which every change is durably in Kafka: the
        server may discard WAL before it. The reported position never moves backwards.
        """
        if flushed > self._flushed:
            self._flushed = flushed
        if not self._streaming:
            return
        now = time.monotonic()
        if not force and now - self._last_status < self._status_interval:
            return
        position = int(self._flushed)
        frame = _STATUS.pack(b"r", position, position, position, pg_now_us(), 0)
        pgconn = self.pgconn
        if pgconn.put_copy_data(frame) < 0 or pgconn.flush() < 0:
            self._streaming = False
            raise RetriableError("could not send standby status update")
        self._last_status = now

    def _maybe_send_status(self) -> None:
        self.send_status(self._flushed)

    @property
    def received(self) -> Lsn:
        """Highest WAL end position received so far."""
        return self._received

    @property
    def flushed(self) -> Lsn:
        """Highest position reported to the server as flushed."""
        return self._flushed
