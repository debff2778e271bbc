"""The Kafka broker of the local stack: Apache Kafka 4.x, KRaft combined mode, one node.

The broker runs from the Maven-resolved classpath with ``java``; its storage is formatted
on first start with a generated cluster id. Internal topics use replication factor 1 so
that transactions and consumer groups work on a single node.
"""

from __future__ import annotations

import base64
import logging
import socket
import subprocess
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from erpcrm.stack.java import find_java
from erpcrm.stack.process import launch, running_pid, stop, tail, tree_memory_bytes
from schemas.errors import StackError

log = logging.getLogger(__name__)

HEAP = ["-Xms256m", "-Xmx768m"]
JVM_FLAGS = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never one that starts with ``-`` (as Kafka's own ``Uuid.randomUuid``): the storage
    tool would read it as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker:
    """Single-node KRaft broker (broker and controller in one process)."""

    name = "kafka"

    def __init__(
        self,
        *,
        port: int,
        controller_port: int,
        state_dir: Path,
        classpath_dir: Path,
        log4j_config: Path,
    ) -> None:
        self.port = port
        self.controller_port = controller_port
        self.dir = state_dir
        self.data = state_dir / "data"
        self.logs = state_dir / "logs"
        self.config = state_dir / "server.properties"
        self.log_path = state_dir / "stdout.log"
        self.pid_file = state_dir / "kafka.pid"
        self.classpath_dir = classpath_dir
        self.log4j_config = log4j_config

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """Where clients connect."""
        return self.bootstrap

    def pid(self) -> int | None:
        """Broker pid while it runs with our configuration."""
        return running_pid(self.pid_file, str(self.config))

    def _java(self, main: str, *args: str) -> list[str]:
        if not any(self.classpath_dir.glob("kafka_2.13-*.jar")):
            raise StackError(
                f"Kafka jars missing in {self.classpath_dir}; run `make setup` "
                "(resolves them from Maven Central with deploy/pom.xml)"
            )
        return [
            find_java(17, "Kafka"),
            *HEAP,
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            f"-Dkafka.logs.dir={self.logs}",
            "-cp",
            f"{self.classpath_dir}/*",
            main,
            *args,
        ]

    def _write_config(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        self.config.write_text(
            "# written by erpcrm stack\n" + "".join(f"{k}={v}\n" for k, v in props.items())
        )

    def launch(self) -> None:
        """Format storage on first start, then start the broker (no-op when running)."""
        if self.pid() is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data / "meta.properties").exists():
            cluster_id_file = self.dir / "cluster.id"
            if not cluster_id_file.exists() or cluster_id_file.read_text().startswith("-"):
                cluster_id_file.write_text(_cluster_id())
            argv = self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id_file.read_text().strip(),
                "-c",
                str(self.config),
                "--ignore-formatted",
            )
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise StackError(
                    f"kafka: formatting storage failed: {result.stdout}{result.stderr}"
                )
            log.info("kafka: storage formatted in %s", self.data)
        launch(
            self._java("kafka.Kafka", str(self.config)),
            cwd=self.dir,
            log_file=self.log_path,
            pid_file=self.pid_file,
        )

    def ready(self) -> bool:
        """True when the broker answers a metadata request."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000, "log_level": 0}
        )
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)

    def after_ready(self) -> None:
        """Nothing to bootstrap: topics are created by the stages that own them."""

    def stop(self) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL after 60 s."""
        pid = self.pid()
        if pid is not None:
            stop(pid, marker=str(self.config), timeout=60)

    def memory_bytes(self) -> int:
        """PSS of the broker JVM."""
        pid = self.pid()
        return tree_memory_bytes(pid) if pid else 0

    def log_tail(self) -> str:
        """Last lines of the broker's logs, for error reports."""
        return tail(self.log_path) + "\n" + tail(self.logs / "server.log")
