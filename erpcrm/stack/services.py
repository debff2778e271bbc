"""The HTTP services of the local stack: Apicurio Registry and Prometheus."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx

from erpcrm.stack.java import find_java
from erpcrm.stack.process import launch, running_pid, stop, tail, tree_memory_bytes
from schemas.errors import StackError


def _http_ok(url: str) -> bool:
    try:
        response = httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


_JOURNAL_START = "Starting KSQL consumer thread"
_JOURNAL_READY = "KafkaSQL storage bootstrapped"


class SchemaRegistry:
    """Apicurio Registry 3.x (Quarkus fast-jar) with its Confluent-compatible API.

    Storage is ``kafkasql``: the registry's journal is a Kafka topic, so schemas survive
    a restart of the registry (and of the whole stack) exactly as long as Kafka's data does.
    """

    name = "schema-registry"

    def __init__(self, *, port: int, state_dir: Path, dist_dir: Path, kafka_bootstrap: str) -> None:
        self.port = port
        self.dir = state_dir
        self.dist = dist_dir
        self.kafka_bootstrap = kafka_bootstrap
        self.log_path = state_dir / "registry.log"
        self.pid_file = state_dir / "registry.pid"

    @property
    def base_url(self) -> str:
        """Root of the registry's HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Confluent-compatible endpoint, as Confluent clients expect ``schema.registry.url``."""
        return f"{self.base_url}/apis/ccompat/v7"

    @property
    def endpoint(self) -> str:
        """Where clients connect."""
        return self.url

    @property
    def _marker(self) -> str:
        return f"-Derpcrm.stack={self.dir}"

    def pid(self) -> int | None:
        """Registry pid while it runs from our state directory."""
        return running_pid(self.pid_file, self._marker)

    def launch(self) -> None:
        """Start the registry (no-op when running). Kafka must already be ready."""
        if self.pid() is not None:
            return
        runner = self.dist / "quarkus-run.jar"
        if not runner.exists():
            raise StackError(
                f"Apicurio Registry missing ({runner}); run `make setup` "
                "(resolves it from Maven Central with deploy/pom.xml)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_java(21, "Apicurio Registry 3"),
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            self._marker,
            f"-Dquarkus.http.port={self.port}",
            "-Dquarkus.http.host=127.0.0.1",
            # Quarkus' management interface (health, metrics) would listen on every
            # interface at 9000: loopback, five above the API's port. Not one above:
            # that is the Kafka port of a stack whose port offset is ten lower.
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={self.port + 5}",
            "-Dquarkus.log.level=WARN",
            '-Dquarkus.log.category."io.apicurio".level=INFO',
            # Request and audit lines would drown the start-up messages ready() looks for.
            '-Dquarkus.log.category."io.apicurio.registry.logging.audit".level=WARN',
            '-Dquarkus.log.category."io.quarkus.vertx.http.runtime.filters.accesslog".level=WARN',
            "-Dapicurio.ccompat.max-subjects=1000000",
            '-Dquarkus.log.category."org.apache.kafka".level=ERROR',
            "-Dapicurio.storage.kind=kafkasql",
            f"-Dapicurio.kafkasql.bootstrap.servers={self.kafka_bootstrap}",
            "-Dapicurio.kafkasql.topic=_apicurio-journal",
            "-Dapicurio.kafkasql.snapshots.topic=_apicurio-snapshots",
            "-Dapicurio.rest.artifact.deletion.enabled=true",
            "-jar",
            str(runner),
        ]
        launch(argv, cwd=self.dir, log_file=self.log_path, pid_file=self.pid_file)

    def ready(self) -> bool:
        """True once the journal is replayed and the Confluent-compatible API answers.

        The registry answers HTTP while it still replays its Kafka journal, with part of
        its schemas; it is ready once the log says the storage is bootstrapped. That is
        remembered per process (``ready.pid``): later log lines (e.g. a Kafka outage)
        cannot push it out of view.
        """
        pid = self.pid()
        if pid is None:
            return False
        if self._ready_pid() != pid:
            log = tail(self.log_path, 5000)
            started = log.rfind(_JOURNAL_START)
            if started < 0 or log.find(_JOURNAL_READY, started) < 0:
                return False
            (self.dir / "ready.pid").write_text(f"{pid}\n")
        return _http_ok(f"{self.url}/subjects")

    def _ready_pid(self) -> int | None:
        try:
            return int((self.dir / "ready.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def after_ready(self) -> None:
        """Nothing to bootstrap: subjects are registered by the stages."""

    def stop(self) -> None:
        """SIGTERM (Quarkus shuts down gracefully), SIGKILL after 30 s."""
        pid = self.pid()
        if pid is not None:
            stop(pid, marker=self._marker)

    def memory_bytes(self) -> int:
        """PSS of the registry JVM."""
        pid = self.pid()
        return tree_memory_bytes(pid) if pid else 0

    def log_tail(self) -> str:
        """Last lines of the registry's log."""
        return tail(self.log_path)


_LOOPBACK_PORT = re.compile(r"(?<=127\.0\.0\.1:)(\d{1,5})\b")


def shift_loopback_ports(text: str, offset: int) -> str:
    """``text`` with every ``127.0.0.1:<port>`` moved by ``offset`` (a second stack's config)."""
    return _LOOPBACK_PORT.sub(lambda port: str(int(port.group(1)) + offset), text)


class Prometheus:
    """Debian's Prometheus with the project's scrape config and alert rules."""

    name = "prometheus"

    def __init__(self, *, port: int, state_dir: Path, config: Path, port_offset: int = 0) -> None:
        self.port = port
        self.dir = state_dir
        self.shipped_config = config
        self.port_offset = port_offset
        self.log_path = state_dir / "prometheus.log"
        self.pid_file = state_dir / "prometheus.pid"

    @property
    def url(self) -> str:
        """Prometheus' HTTP API and UI."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """Where clients connect."""
        return self.url

    @property
    def config(self) -> Path:
        """The scrape config it runs with: the shipped one, or its copy with every port shifted."""
        if not self.port_offset:
            return self.shipped_config
        return self.dir / "config" / self.shipped_config.name

    def pid(self) -> int | None:
        """Prometheus pid while it runs with our storage directory."""
        return running_pid(self.pid_file, str(self.dir / "data"))

    def _write_shifted_config(self) -> None:
        """Copy the shipped config and its rules, every loopback port moved by the offset."""
        target = self.config.parent
        target.mkdir(parents=True, exist_ok=True)
        for shipped in self.shipped_config.parent.glob("*.yml"):
            text = shipped.read_text(encoding="utf-8")
            (target / shipped.name).write_text(
                shift_loopback_ports(text, self.port_offset), encoding="utf-8"
            )

    def launch(self) -> None:
        """Start Prometheus (no-op when running)."""
        if self.pid() is not None:
            return
        binary = shutil.which("prometheus")
        if binary is None:
            raise StackError(
                "prometheus not found; run `make setup` or `apt-get install prometheus`"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.port_offset:
            self._write_shifted_config()
        argv = [
            binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=7d",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        launch(argv, cwd=self.dir, log_file=self.log_path, pid_file=self.pid_file)

    def ready(self) -> bool:
        """True when Prometheus reports itself ready."""
        return _http_ok(f"{self.url}/-/ready")

    def after_ready(self) -> None:
        """Nothing to bootstrap."""

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 30 s."""
        pid = self.pid()
        if pid is not None:
            stop(pid, marker=str(self.dir / "data"))

    def memory_bytes(self) -> int:
        """PSS of Prometheus."""
        pid = self.pid()
        return tree_memory_bytes(pid) if pid else 0

    def log_tail(self) -> str:
        """Last lines of Prometheus' log."""
        return tail(self.log_path)
