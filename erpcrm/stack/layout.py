"""Where the local stack lives on disk and on which loopback ports it listens.

Everything the stack writes stays under ``<repo>/.local/`` (git-ignored). Ports are chosen
away from the usual defaults (5432, 9092, 8080, 9090) so the stack can run beside other
installations on the same machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from schemas.settings import port_offset

KAFKA_VERSION = "4.1.1"
APICURIO_VERSION = "3.3.3"
LOOPBACK = "127.0.0.1"


def repo_root() -> Path:
    """Return the checkout this package was installed from (editable install)."""
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Ports:
    """Loopback ports of the stack's components."""

    erp_postgres: int = 21432
    crm_postgres: int = 21433
    kafka: int = 21092
    kafka_controller: int = 21093
    registry: int = 21081
    prometheus: int = 21090
    offset: int = 0
    """How far these ports are from the defaults (the workers' metrics ports move too)."""

    def shifted(self, offset: int) -> Ports:
        """Every port moved by ``offset`` (a second stack beside the first)."""
        return Ports(
            offset=self.offset + offset,
            erp_postgres=self.erp_postgres + offset,
            crm_postgres=self.crm_postgres + offset,
            kafka=self.kafka + offset,
            kafka_controller=self.kafka_controller + offset,
            registry=self.registry + offset,
            prometheus=self.prometheus + offset,
        )


@dataclass(frozen=True, slots=True)
class StackLayout:
    """Paths of one local stack: configuration shipped in ``deploy/``, state in ``.local/``."""

    root: Path
    ports: Ports

    @classmethod
    def default(cls) -> StackLayout:
        """Layout rooted at the checkout.

        ``ERPCRM_STACK_DIR`` moves the state elsewhere and ``ERPCRM_STACK_PORT_OFFSET``
        moves every port: together they run a second stack beside the first.
        """
        root = repo_root()
        return cls(root=root, ports=Ports().shifted(port_offset()))

    @property
    def deploy(self) -> Path:
        """Shipped configuration: pom, SQL, Kafka and Prometheus config."""
        return self.root / "deploy"

    @property
    def state(self) -> Path:
        """Everything the stack writes (data, logs, pids, secrets)."""
        override = os.environ.get("ERPCRM_STACK_DIR")
        return Path(override).resolve() if override else self.root / ".local"

    @property
    def jars(self) -> Path:
        """Maven-resolved JVM components (Kafka classpath, Apicurio fast-jar)."""
        return self.state / "cache" / "jars"

    @property
    def kafka_classpath_dir(self) -> Path:
        """Directory whose jars form the Kafka broker's classpath."""
        return self.jars / f"kafka-{KAFKA_VERSION}"

    @property
    def registry_dir(self) -> Path:
        """Unpacked Apicurio Registry fast-jar distribution."""
        return self.jars / f"apicurio-registry-{APICURIO_VERSION}"

    @property
    def secrets(self) -> Path:
        """Generated credentials (mode 0600); never printed, never committed."""
        return self.state / "secrets"

    @property
    def pgpass(self) -> Path:
        """Libpq password file used through ``PGPASSFILE``."""
        return self.secrets / "pgpass"

    def component_dir(self, name: str) -> Path:
        """Working directory of one component (data, logs, pid file)."""
        return self.state / name
