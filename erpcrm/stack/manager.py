"""The local stack as a whole: ``up``, ``down``, ``status`` and ``env``.

``up`` is idempotent: running components are left alone, stopped ones are started, and it
returns only when every component answers (Kafka metadata, registry HTTP, ``select 1``,
Prometheus ready). A component that does not come up is reported with the tail of its log.
``down`` stops exactly the processes recorded by ``up`` and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Protocol

from cdc.settings import DEFAULT_TABLES
from erpcrm.stack.kafka import KafkaBroker
from erpcrm.stack.layout import StackLayout
from erpcrm.stack.postgres import CAPTURE_ROLE, SINK_ROLE, SUPERUSER, PostgresCluster
from erpcrm.stack.secrets import StackSecrets
from erpcrm.stack.services import Prometheus, SchemaRegistry
from schemas.errors import StackError


class Component(Protocol):
    """What the stack needs from each of its components."""

    name: str

    @property
    def endpoint(self) -> str:
        """Where clients connect."""

    def pid(self) -> int | None:
        """The component's pid while it runs, else None."""

    def launch(self) -> None:
        """Start without waiting (no-op when running)."""

    def ready(self) -> bool:
        """One quick health probe."""

    def after_ready(self) -> None:
        """Idempotent first-start bootstrap, run once the component answers."""

    def stop(self) -> None:
        """Stop and wait."""

    def memory_bytes(self) -> int:
        """Current memory (PSS) of the component's processes."""

    def log_tail(self) -> str:
        """Last lines of the component's log."""


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """One line of ``erpcrm stack status``."""

    name: str
    state: str  # running | unhealthy | stopped
    pid: int | None
    endpoint: str
    memory_bytes: int

    @property
    def healthy(self) -> bool:
        """True when running and answering."""
        return self.state == "running"


Progress = Callable[[str], None]

READY_TIMEOUT_SECONDS = {"kafka": 120.0, "schema-registry": 240.0}
DEFAULT_READY_TIMEOUT = 90.0


class LocalStack:
    """Kafka, schema registry, the ERP and CRM PostgreSQL clusters and Prometheus."""

    def __init__(self, layout: StackLayout | None = None) -> None:
        self.layout = layout or StackLayout.default()
        state, ports = self.layout.state, self.layout.ports
        self.secrets = StackSecrets(self.layout.secrets)
        sql_dir = self.layout.deploy / "sql"
        self.erp, self.crm = (
            PostgresCluster(
                system=system,
                port=port,
                state_dir=state / f"pg-{system}",
                schema_sql=sql_dir / f"{system}.sql",
                secrets=self.secrets,
                passfile=self.layout.pgpass,
                publication_tables=DEFAULT_TABLES[system],
            )
            for system, port in (("erp", ports.erp_postgres), ("crm", ports.crm_postgres))
        )
        self.kafka = KafkaBroker(
            port=ports.kafka,
            controller_port=ports.kafka_controller,
            state_dir=state / "kafka",
            classpath_dir=self.layout.kafka_classpath_dir,
            log4j_config=self.layout.deploy / "kafka" / "log4j2.properties",
        )
        self.registry = SchemaRegistry(
            port=ports.registry,
            state_dir=state / "registry",
            dist_dir=self.layout.registry_dir,
            kafka_bootstrap=self.kafka.bootstrap,
        )
        self.prometheus = Prometheus(
            port=ports.prometheus,
            state_dir=state / "prometheus",
            config=self.layout.deploy / "prometheus" / "prometheus.yml",
            port_offset=ports.offset,
        )

    @property
    def components(self) -> list[Component]:
        """All components in start order."""
        return [self.erp, self.crm, self.kafka, self.prometheus, self.registry]

    # -- up / down --------------------------------------------------------------------

    def up(self, progress: Progress = lambda _msg: None) -> list[ComponentStatus]:
        """Start what is not running and wait until everything answers."""
        self.layout.state.mkdir(parents=True, exist_ok=True)
        self.secrets.write_pgpass(self.erp.pgpass_entries() + self.crm.pgpass_entries())
        # The registry keeps its journal in Kafka: it starts once the broker answers.
        first_wave: list[Component] = [self.erp, self.crm, self.kafka, self.prometheus]
        self._start(first_wave, progress)
        self._start([self.registry], progress)
        return self.status()

    def start(
        self, components: Iterable[Component], progress: Progress = lambda _msg: None
    ) -> None:
        """Start ``components`` and wait until each answers; leave the rest alone.

        What ``up`` does (running ones are left alone, each one's bootstrap runs once it
        answers) for a part of the stack: a database brought back after an outage while
        Kafka is still away. The registry needs Kafka to answer.
        """
        self.layout.state.mkdir(parents=True, exist_ok=True)
        self._start(components, progress)

    def _start(self, components: Iterable[Component], progress: Progress) -> None:
        pending = list(components)
        for component in pending:
            state = "already running" if component.pid() is not None else "starting"
            progress(f"{component.name}: {state}")
            component.launch()
        for component in pending:
            if not self._wait_ready(component, progress):
                # Once more: a port another process held for a moment (a client's
                # ephemeral port) is the usual cause; a second exit is the error.
                progress(f"{component.name}: exited during start-up; starting it again")
                progress(component.log_tail())
                component.launch()
                if not self._wait_ready(component, progress):
                    raise StackError(
                        f"{component.name} exited during start-up; last log lines:\n"
                        f"{component.log_tail()}"
                    )
            component.after_ready()
            progress(f"{component.name}: ready at {component.endpoint}")

    def _wait_ready(self, component: Component, progress: Progress) -> bool:
        """Wait until ``component`` answers (True); False: its process exited.

        Raises:
            StackError: it did not answer within its time.
        """
        timeout = READY_TIMEOUT_SECONDS.get(component.name, DEFAULT_READY_TIMEOUT)
        started = time.monotonic()
        next_note = started + 15
        while not component.ready():
            now = time.monotonic()
            if component.pid() is None and now - started > 3:
                return False
            if now - started > timeout:
                raise StackError(
                    f"{component.name} did not answer within {timeout:.0f}s; last log lines:\n"
                    f"{component.log_tail()}"
                )
            if now >= next_note:
                progress(f"{component.name}: waiting ({now - started:.0f}s)")
                next_note = now + 15
            time.sleep(0.25)
        return True

    def down(self, progress: Progress = lambda _msg: None) -> None:
        """Stop every component this stack started, in reverse order."""
        for component in reversed(self.components):
            if component.pid() is None:
                continue
            progress(f"{component.name}: stopping")
            component.stop()
            progress(f"{component.name}: stopped")

    # -- status / env -----------------------------------------------------------------

    def status(self) -> list[ComponentStatus]:
        """State, pid, endpoint and memory of each component."""
        result = []
        for component in self.components:
            pid = component.pid()
            if pid is None:
                state = "stopped"
            else:
                state = "running" if component.ready() else "unhealthy"
            result.append(
                ComponentStatus(
                    name=component.name,
                    state=state,
                    pid=pid,
                    endpoint=component.endpoint,
                    memory_bytes=component.memory_bytes() if pid else 0,
                )
            )
        return result

    def env(self) -> dict[str, str]:
        """Connection settings for shells and tests (no passwords: they stay in the passfile)."""
        return {
            "KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "SCHEMA_REGISTRY_URL": self.registry.url,
            "ERP_DSN": self.erp.dsn(),
            "CRM_DSN": self.crm.dsn(),
            "PROMETHEUS_URL": self.prometheus.url,
            "ERP_CAPTURE_DSN": self.erp.dsn(CAPTURE_ROLE),
            "CRM_CAPTURE_DSN": self.crm.dsn(CAPTURE_ROLE),
            "ERP_SINK_DSN": self.erp.dsn(SINK_ROLE),
            "CRM_SINK_DSN": self.crm.dsn(SINK_ROLE),
            "ERP_ADMIN_DSN": self.erp.dsn(SUPERUSER, self.erp.database),
            "CRM_ADMIN_DSN": self.crm.dsn(SUPERUSER, self.crm.database),
            "PGPASSFILE": str(self.layout.pgpass),
        }


def status_as_dicts(statuses: Iterable[ComponentStatus]) -> list[dict[str, object]]:
    """JSON-ready form of ``status()``."""
    return [dict(asdict(s), healthy=s.healthy) for s in statuses]
