"""A PostgreSQL cluster of the local stack (one for the ERP, one for the CRM).

Each cluster has its own data directory under ``.local/pg-<system>``, listens on loopback
TCP only, runs with ``wal_level=logical`` and is created on first start with:

* the application role ``<system>_app`` owning database ``<system>`` and its demo schema
  (``deploy/sql/<system>.sql``, run after ``deploy/sql/seed_vat.sql`` in one session);
* ``erpcrm_capture``: LOGIN REPLICATION, read-only on the application tables; it may
  insert into the signal table (``deploy/sql/signal.sql``, re-applied on every start,
  in the publication) and write nothing else;
* ``erpcrm_sink``: LOGIN, owner of the ``erpcrm_sync`` schema and of the
  ``erpcrm_decisions`` schema (what it holds as suspected duplicates, kept beyond the sync
  state; made on every start if missing), allowed to use replication origins, and granted
  exactly what the sink mappings need on the demo tables
  (:mod:`sinks.grants`, re-applied on every start).

A database made before a change of its demo schema gets the change on the next start:
``deploy/sql/<system>-upgrade.sql``, idempotent, is applied on every start.

All roles authenticate with SCRAM passwords generated into ``.local/secrets``.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql

from erpcrm.stack.process import (
    as_unprivileged,
    chown_to_unprivileged,
    running_pid,
    tail,
    tree_memory_bytes,
    unprivileged_dir,
)
from erpcrm.stack.secrets import StackSecrets
from schemas.errors import StackError

log = logging.getLogger(__name__)

ShutdownMode = Literal["smart", "fast", "immediate"]
"""``pg_ctl stop -m``: wait for clients, roll them back, or crash-stop."""

SUPERUSER = "postgres"
CAPTURE_ROLE = "erpcrm_capture"
SINK_ROLE = "erpcrm_sink"
SYNC_SCHEMA = "erpcrm_sync"
DECISIONS_SCHEMA = "erpcrm_decisions"
MIN_MAJOR = 15
SEED_VAT_SQL = "seed_vat.sql"
"""Beside the schema files: the demo customers' VAT ids, read by both seeds."""

SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "16",
    "max_wal_senders": "16",
    "max_slot_wal_keep_size": "2GB",
    "track_commit_timestamp": "on",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "wal_sender_timeout": "60s",
    "log_line_prefix": "'%m [%p] %u@%d '",
    "log_min_messages": "warning",
}

ORIGIN_FUNCTIONS = (
    "pg_replication_origin_create(text)",
    "pg_replication_origin_oid(text)",
    "pg_replication_origin_session_setup(text)",
    "pg_replication_origin_session_reset()",
    "pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
    "pg_replication_origin_xact_reset()",
)


def find_bindir() -> Path:
    """Return the newest PostgreSQL (>= 15) server binary directory on this machine."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    for initdb in reversed(candidates):
        major = Path(initdb).parts[-3]
        if major.isdigit() and int(major) >= MIN_MAJOR:
            return Path(initdb).parent
    raise StackError(
        f"no PostgreSQL {MIN_MAJOR}+ server found under /usr/lib/postgresql; "
        "run `make setup` (installs the postgresql package) or `apt-get install postgresql`"
    )


class PostgresCluster:
    """One demo database cluster: create, start, bootstrap, check, stop."""

    def __init__(
        self,
        *,
        system: str,
        port: int,
        state_dir: Path,
        schema_sql: Path,
        secrets: StackSecrets,
        passfile: Path,
        publication_tables: tuple[str, ...] = (),
    ) -> None:
        self.system = system
        self.name = f"postgres-{system}"
        self.port = port
        self._preferred_dir = state_dir
        self.schema_sql = schema_sql
        self.database = system
        self.app_role = f"{system}_app"
        self._secrets = secrets
        self._passfile = passfile
        self.publication = f"erpcrm_{system}"
        self.publication_tables = publication_tables

    @functools.cached_property
    def dir(self) -> Path:
        """The cluster's directory: under ``.local/`` when the service user can reach it."""
        return unprivileged_dir(self._preferred_dir)

    @property
    def data(self) -> Path:
        """The data directory (``PGDATA``)."""
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        """The server log."""
        return self.dir / "postgres.log"

    # -- addresses --------------------------------------------------------------------

    def dsn(self, role: str | None = None, database: str | None = None) -> str:
        """DSN for ``role`` (the application role by default); the password comes from the passfile.

        The superuser defaults to the ``postgres`` maintenance database, every other role to
        the application database.
        """
        user = role or self.app_role
        if database is None:
            database = "postgres" if user == SUPERUSER else self.database
        return (
            f"postgresql://{user}@127.0.0.1:{self.port}/{database}"
            f"?passfile={self._passfile}&connect_timeout=5&application_name=erpcrm"
        )

    @property
    def endpoint(self) -> str:
        """Where clients connect."""
        return f"127.0.0.1:{self.port}/{self.database}"

    def pgpass_entries(self) -> list[tuple[int, str, str]]:
        """Password-file entries for every role of this cluster."""
        roles = (SUPERUSER, self.app_role, CAPTURE_ROLE, SINK_ROLE)
        return [(self.port, role, self.system) for role in roles]

    # -- lifecycle --------------------------------------------------------------------

    def pid(self) -> int | None:
        """The postmaster's pid while it runs from our data directory."""
        return running_pid(self.data / "postmaster.pid", str(self.data))

    def launch(self) -> None:
        """Create the cluster on first use, then start it (no-op when already running)."""
        if self.pid() is not None:
            return
        bindir = find_bindir()
        created = False
        if not (self.data / "PG_VERSION").exists():
            self._initdb(bindir)
            created = True
        self._write_settings()
        argv = as_unprivileged(
            [str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-W", "start"]
        )
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"{self.name}: pg_ctl start failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{tail(self.log_path)}"
            )
        if created:
            log.info("%s: new cluster started; it is bootstrapped once it answers", self.name)

    def ready(self) -> bool:
        """True when the application database answers ``select 1``."""
        try:
            with psycopg.connect(self.dsn(SUPERUSER), connect_timeout=2) as conn:
                conn.execute("select 1")
        except psycopg.Error:
            return False
        return True

    def after_ready(self) -> None:
        """New cluster: roles, database, demo schema; always: upgrades, grants, schemas, signals.

        Idempotent. The demo schema's later changes (``deploy/sql/<system>-upgrade.sql``),
        the sink's grants and the capture's signal table (``deploy/sql/signal.sql``) are
        re-applied on every start, so a change of the demo schema, a mapping that adds a
        table, or a change of the signal table takes effect with the next ``stack up``
        without re-creating the databases.
        """
        if not self._bootstrapped():
            self._bootstrap()
        self.upgrade_schema()
        self._grant_sink()
        self._make_decisions_schema()
        self._install_signal_table()

    def upgrade_schema(self) -> None:
        """Apply the demo schema's later changes (``deploy/sql/<system>-upgrade.sql``).

        The file (none: nothing to do) holds what the schema file gained after databases
        were made from it, each change written to do nothing where it is already made.
        """
        upgrade_sql = self.schema_sql.with_name(f"{self.schema_sql.stem}-upgrade.sql")
        if not upgrade_sql.exists():
            return
        with psycopg.connect(self.dsn(), autocommit=True) as conn, conn.transaction():
            conn.execute(upgrade_sql.read_text())  # trusted file shipped in deploy/sql

    def _install_signal_table(self) -> None:
        """The capture's signal table, its grants, and its place in the publication."""
        from cdc.catalog import ensure_publication
        from cdc.signals import SIGNAL_SCHEMA, SIGNAL_TABLE

        signal_sql = self.schema_sql.parent / "signal.sql"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            with conn.transaction():
                conn.execute(signal_sql.read_text())  # trusted file shipped in deploy/sql
            if self.publication_tables:
                ensure_publication(conn, self.publication, SIGNAL_SCHEMA, (SIGNAL_TABLE,))

    def _make_decisions_schema(self) -> None:
        """The sink's decisions schema, if missing (a cluster made before it had none)."""
        with psycopg.connect(self.dsn(SUPERUSER, self.database), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                    sql.Identifier(DECISIONS_SCHEMA), sql.Identifier(SINK_ROLE)
                )
            )

    def _grant_sink(self) -> None:
        """Least privilege for ``erpcrm_sink`` on the tables its mappings write here."""
        from schemas.mapping import load_mappings
        from sinks.grants import grant_statements, inserted_tables, privileges
        from sinks.sql import default_sequences, grant_sequence, revoke_table
        from sinks.targets import build_tables

        tables = [
            t for t in build_tables(load_mappings()).values() if t.direction.target == self.system
        ]
        with psycopg.connect(self.dsn(), autocommit=True) as conn, conn.transaction():
            # Exactly the privileges the mappings need now: revoke, then grant.
            for table in privileges(tables):
                conn.execute(revoke_table(table, SINK_ROLE))
            for statement in grant_statements(tables, SINK_ROLE):
                conn.execute(statement)
            for table in inserted_tables(tables):
                rows = conn.execute(default_sequences(), (f"{table.schema}.{table.name}",))
                for schema, sequence in rows.fetchall():
                    conn.execute(grant_sequence(schema, sequence, SINK_ROLE))

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Shut the server down in ``mode`` and wait for it.

        ``fast`` (the default) rolls back open transactions, ends every session and
        writes a checkpoint. ``immediate`` ends every process at once, as a crash or a
        power loss would: the next start replays the WAL from the last checkpoint, and
        what was only in memory (a replication slot's position confirmed since that
        checkpoint) goes back to the checkpoint's.
        """
        if self.pid() is None:
            return
        argv = as_unprivileged(
            [str(find_bindir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]
        )
        subprocess.run(argv, capture_output=True, text=True, check=False)

    def memory_bytes(self) -> int:
        """PSS of the postmaster and its backends."""
        pid = self.pid()
        return tree_memory_bytes(pid) if pid else 0

    def log_tail(self) -> str:
        """Last lines of the server log."""
        return tail(self.log_path)

    # -- internals --------------------------------------------------------------------

    def _initdb(self, bindir: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.dir / ".initdb-pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self._secrets.password(self.system, SUPERUSER) + "\n")
        chown_to_unprivileged(self.dir)
        try:
            argv = as_unprivileged(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"{self.name}: initdb failed: {result.stderr.strip()}")
        log.info("%s: cluster created in %s", self.name, self.data)

    def _write_settings(self) -> None:
        settings = dict(SERVER_SETTINGS, port=str(self.port), listen_addresses="'127.0.0.1'")
        lines = [f"{key} = {value}" for key, value in settings.items()]
        conf = self.data / "erpcrm.conf"
        conf.write_text("# written by erpcrm stack\n" + "\n".join(lines) + "\n")
        chown_to_unprivileged(conf)
        main_conf = self.data / "postgresql.conf"
        include = "include_if_exists = 'erpcrm.conf'"
        if include not in main_conf.read_text():
            with main_conf.open("a") as handle:
                handle.write(f"\n{include}\n")

    def _bootstrapped(self) -> bool:
        with psycopg.connect(self.dsn(SUPERUSER), autocommit=True) as conn:
            row = conn.execute(
                "select 1 from pg_database where datname = %s", (self.database,)
            ).fetchone()
        return row is not None

    def _bootstrap(self) -> None:
        started = time.monotonic()
        with psycopg.connect(self.dsn(SUPERUSER), autocommit=True) as conn:
            for role, extra in (
                (self.app_role, sql.SQL("LOGIN")),
                (CAPTURE_ROLE, sql.SQL("LOGIN REPLICATION")),
                (SINK_ROLE, sql.SQL("LOGIN")),
            ):
                exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,))
                verb = sql.SQL("ALTER") if exists.fetchone() else sql.SQL("CREATE")
                conn.execute(
                    sql.SQL("{} ROLE {} {} PASSWORD {}").format(
                        verb,
                        sql.Identifier(role),
                        extra,
                        sql.Literal(self._secrets.password(self.system, role)),
                    )
                )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.app_role)
                )
            )
        with psycopg.connect(self.dsn(SUPERUSER, self.database), autocommit=True) as conn:
            conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            conn.execute(
                sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(self.app_role))
            )
            conn.execute(
                sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    sql.Identifier(SYNC_SCHEMA), sql.Identifier(SINK_ROLE)
                )
            )
            for function in ORIGIN_FUNCTIONS:
                conn.execute(
                    sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                        sql.SQL(function), sql.Identifier(SINK_ROLE)
                    )
                )
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            # The seed's VAT ids, shared by both systems, as a temporary table the
            # schema file reads: same session, before it (trusted files in deploy/sql).
            conn.execute((self.schema_sql.parent / SEED_VAT_SQL).read_text())
            conn.execute(self.schema_sql.read_text())
            for role in (CAPTURE_ROLE, SINK_ROLE):
                conn.execute(
                    sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role))
                )
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
                    sql.Identifier(CAPTURE_ROLE)
                )
            )
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}"
                ).format(sql.Identifier(CAPTURE_ROLE))
            )
            if self.publication_tables:
                # Made by the tables' owner, so the capture role needs no ownership.
                conn.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                        sql.Identifier(self.publication),
                        sql.SQL(", ").join(
                            sql.Identifier("public", t) for t in self.publication_tables
                        ),
                    )
                )
        log.info(
            "%s: roles, database and demo schema ready in %.1fs",
            self.name,
            time.monotonic() - started,
        )
