"""The local stack: every component up, reachable through ``erpcrm stack env``, least privilege."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from erpcrm.stack import LocalStack

pytestmark = pytest.mark.integration

WATCHED_SETTINGS = ["wal_level", "max_replication_slots", "max_wal_senders", "listen_addresses"]
ERPCRM = str(Path(sys.executable).with_name("erpcrm"))


def test_status_json_reports_every_component_healthy(local_stack: LocalStack) -> None:
    result = subprocess.run(
        [ERPCRM, "stack", "status", "--json"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    components = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    assert set(components) == {
        "postgres-erp",
        "postgres-crm",
        "kafka",
        "schema-registry",
        "prometheus",
    }
    for name, component in components.items():
        assert component["healthy"], name
        assert component["pid"] > 0
        assert component["memory_bytes"] > 0


def test_env_exports_reach_each_component(local_stack: LocalStack) -> None:
    result = subprocess.run([ERPCRM, "stack", "env"], capture_output=True, text=True, check=True)
    exported = dict(
        line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines()
    )
    for key in ("KAFKA_BOOTSTRAP", "SCHEMA_REGISTRY_URL", "ERP_DSN", "CRM_DSN", "PROMETHEUS_URL"):
        assert key in exported
    assert "password" not in result.stdout.lower()
    shell = (
        f'eval "$({ERPCRM} stack env)" && psql "$ERP_DSN" -tAc "select current_database()" '
        '&& psql "$CRM_DSN" -tAc "select current_database()" '
        '&& curl -sf "$SCHEMA_REGISTRY_URL/subjects" >/dev/null && echo registry-ok'
    )
    assert shutil.which("psql")
    assert shutil.which("curl")
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["erp", "crm", "registry-ok"]


def test_postgres_is_ready_for_logical_replication(stack_env: dict[str, str]) -> None:
    for dsn in (stack_env["ERP_ADMIN_DSN"], stack_env["CRM_ADMIN_DSN"]):
        with psycopg.connect(dsn) as conn:
            settings = dict(
                conn.execute(
                    "select name, setting from pg_settings where name = any(%s)",
                    (
                        [
                            "wal_level",
                            "max_replication_slots",
                            "max_wal_senders",
                            "listen_addresses",
                        ],
                    ),
                ).fetchall()
            )
        assert settings["wal_level"] == "logical"
        assert int(settings["max_replication_slots"]) >= 10
        assert int(settings["max_wal_senders"]) >= 10
        assert settings["listen_addresses"] == "127.0.0.1"


def test_capture_and_sink_roles_are_least_privilege(stack_env: dict[str, str]) -> None:
    with psycopg.connect(stack_env["ERP_CAPTURE_DSN"]) as conn:
        row = conn.execute(
            "select rolreplication, rolsuper from pg_roles where rolname = current_user"
        ).fetchone()
        assert row == (True, False)
        assert conn.execute("select count(*) from res_partner").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update res_partner set name = name")
    with psycopg.connect(stack_env["CRM_SINK_DSN"]) as conn:
        row = conn.execute(
            "select rolreplication, rolsuper from pg_roles where rolname = current_user"
        ).fetchone()
        assert row == (False, False)
        conn.execute("create table erpcrm_sync.probe (id int primary key)")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create table public.probe (id int primary key)")


def test_kafka_transactions_work_on_the_single_node(stack_env: dict[str, str]) -> None:
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    topic = f"test.stack.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=3)]).values():
        future.result(timeout=30)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-tx", "acks": "all"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic, key=str(i).encode(), value=f"v{i}".encode())
    producer.commit_transaction(30)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-g",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    values: set[bytes] = set()
    try:
        for _ in range(300):
            message = consumer.poll(0.2)
            if message is None:
                if len(values) == 10:
                    break
                continue
            if message.error():
                raise KafkaException(message.error())
            values.add(message.value())
    finally:
        consumer.close()
    assert values == {f"v{i}".encode() for i in range(10)}


def test_registry_speaks_the_confluent_api(stack_env: dict[str, str]) -> None:
    url = stack_env["SCHEMA_REGISTRY_URL"]
    subject = f"test-stack-{uuid.uuid4().hex[:8]}-value"
    schema = {"type": "record", "name": "Probe", "fields": [{"name": "a", "type": "int"}]}
    response = httpx.post(
        f"{url}/subjects/{subject}/versions",
        json={"schema": json.dumps(schema)},
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    schema_id = response.json()["id"]
    fetched = httpx.get(f"{url}/schemas/ids/{schema_id}", timeout=30).json()
    assert json.loads(fetched["schema"])["name"] == "Probe"


def test_prometheus_loads_the_project_config(stack_env: dict[str, str]) -> None:
    base = stack_env["PROMETHEUS_URL"]
    jobs = {
        t["labels"]["job"]
        for t in httpx.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    }
    assert {"prometheus", "erpcrm-cdc", "erpcrm-streams", "erpcrm-sink"} <= jobs
    groups = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert any(g["name"] == "erpcrm" for g in groups)


def test_up_is_idempotent(local_stack: LocalStack) -> None:
    before = {s.name: s.pid for s in local_stack.status()}
    after = {s.name: s.pid for s in local_stack.up()}
    assert before == after


def test_registry_keeps_schemas_across_a_restart(
    local_stack: LocalStack, stack_env: dict[str, str]
) -> None:
    url = stack_env["SCHEMA_REGISTRY_URL"]
    subject = f"test-restart-{uuid.uuid4().hex[:8]}-value"
    schema = {"type": "record", "name": "Kept", "fields": [{"name": "b", "type": "string"}]}
    httpx.post(
        f"{url}/subjects/{subject}/versions",
        json={"schema": json.dumps(schema)},
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        timeout=30,
    ).raise_for_status()
    local_stack.registry.stop()
    assert local_stack.registry.pid() is None
    local_stack.up()
    deadline = time.monotonic() + 90  # the journal replay may still be catching up
    while True:
        versions = httpx.get(f"{url}/subjects/{subject}/versions", timeout=30)
        if versions.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert versions.status_code == 200, versions.text
    assert versions.json() == [1]
    latest = httpx.get(f"{url}/subjects/{subject}/versions/latest", timeout=30).json()
    assert json.loads(latest["schema"])["name"] == "Kept"
