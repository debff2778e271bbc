"""The schema-registry HTTP client (schemas/registry_http.py) against httpx's mock transport.

Its answers against a real registry are covered by tests/integration/test_serde_registry.py.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from schemas.errors import ConfigError, RetriableError
from schemas.registry_http import CONTENT_TYPE, RegistryHttpClient, RegistryHttpError
from schemas.serde import RegistryClient

BASE = "http://us%40er:s3cr%3At@registry.test:8081/apis/ccompat/v7"
SCHEMA = {"type": "record", "name": "T", "fields": [{"name": "a", "type": "long"}]}

Handler = Callable[[httpx.Request], httpx.Response]


def client_of(handler: Handler, seen: list[httpx.Request]) -> RegistryHttpClient:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return RegistryHttpClient(BASE, backoff_s=0.0, transport=httpx.MockTransport(record))


def test_the_four_calls_use_confluent_paths_bodies_and_basic_auth() -> None:
    answers = {
        ("POST", "/apis/ccompat/v7/subjects/a%2Fb%20c-value/versions"): {"id": 7},
        ("PUT", "/apis/ccompat/v7/config/a%2Fb%20c-value"): {"compatibility": "BACKWARD"},
        ("GET", "/apis/ccompat/v7/schemas/ids/7"): {"schema": json.dumps(SCHEMA)},
        ("GET", "/apis/ccompat/v7/subjects/a%2Fb%20c-value/versions/latest"): {
            "subject": "a/b c-value",
            "id": 7,
            "version": 2,
            "schema": json.dumps(SCHEMA),
            "schemaType": "AVRO",
        },
    }
    seen: list[httpx.Request] = []
    with client_of(
        lambda r: httpx.Response(200, json=answers[(r.method, r.url.raw_path.decode())]), seen
    ) as client:
        assert client.register_schema("a/b c-value", json.dumps(SCHEMA)) == 7
        client.set_compatibility("a/b c-value", "BACKWARD")
        found = client.get_schema(7)
        latest = client.get_latest_version("a/b c-value")
    assert (found.schema_id, found.version, found.schema_type) == (7, None, "AVRO")
    assert json.loads(found.schema_text) == SCHEMA
    assert (latest.schema_id, latest.version, latest.schema_text) == (7, 2, json.dumps(SCHEMA))
    post, put = seen[0], seen[1]
    assert json.loads(post.content) == {"schema": json.dumps(SCHEMA), "schemaType": "AVRO"}
    assert json.loads(put.content) == {"compatibility": "BACKWARD"}
    assert post.headers["content-type"] == CONTENT_TYPE
    expected_auth = "Basic " + base64.b64encode(b"us@er:s3cr:t").decode()
    assert {r.headers["authorization"] for r in seen} == {expected_auth}
    assert all(r.url.userinfo == b"" and r.url.host == "registry.test" for r in seen)


def test_error_answers_carry_status_code_and_message() -> None:
    seen: list[httpx.Request] = []
    body = {"error_code": 40401, "message": "Subject 'x' not found."}
    client = client_of(lambda r: httpx.Response(404, json=body), seen)
    with pytest.raises(RegistryHttpError) as caught:
        client.get_latest_version("x")
    assert (caught.value.status, caught.value.error_code) == (404, 40401)
    assert caught.value.message == "Subject 'x' not found."
    assert len(seen) == 1  # 404 is not retried

    client = client_of(lambda r: httpx.Response(502, text="<html>bad gateway</html>"), seen)
    with pytest.raises(RegistryHttpError) as caught:
        client.get_schema(1)
    assert (caught.value.status, caught.value.error_code) == (502, -1)
    assert "bad gateway" in caught.value.message


@pytest.mark.parametrize(
    ("status", "body", "level"),
    [
        (200, {"compatibilityLevel": "BACKWARD"}, "BACKWARD"),  # Confluent, Apicurio
        (200, {"compatibility": "full"}, "FULL"),
        (404, {"error_code": 40401, "message": "Subject 'x' not found."}, None),
    ],
)
def test_a_subjects_own_level_is_read(status: int, body: dict[str, object], level: str) -> None:
    seen: list[httpx.Request] = []
    client = client_of(lambda r: httpx.Response(status, json=body), seen)
    assert client.get_compatibility("a/b") == level
    assert [(r.method, r.url.raw_path.decode()) for r in seen] == [
        ("GET", "/apis/ccompat/v7/config/a%2Fb")
    ]


def test_retried_statuses_are_retried_then_succeed() -> None:
    seen: list[httpx.Request] = []
    answers = iter([httpx.Response(503, json={"error_code": 50003, "message": "busy"})] * 2)
    client = client_of(lambda r: next(answers, httpx.Response(200, json={"id": 3})), seen)
    assert client.register_schema("s", json.dumps(SCHEMA)) == 3
    assert len(seen) == 3


def test_unreachable_registry_is_retriable_and_keeps_credentials_out() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"connection refused to {request.url}")

    seen: list[httpx.Request] = []
    registry = RegistryClient(BASE, client=client_of(refuse, seen), compatibility=None)
    with pytest.raises(RetriableError) as caught:
        registry.register("s", SCHEMA)
    assert len(seen) == 4  # the first attempt and three retries
    assert "s3cr" not in str(caught.value)
    assert "us%40er" not in str(caught.value)
    assert "us@er" not in str(caught.value)
    registry.close()


@pytest.mark.parametrize("url", ["not-a-url", "mock://registry", "http://", "ftp://host/x"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        RegistryHttpClient(url)


@pytest.mark.parametrize(
    "module", ["schemas.serde", "streams.app", "sinks.runner", "cdc.streaming"]
)
def test_workers_do_not_import_confluents_registry_client(module: str) -> None:
    """Confluent's client loads authlib and cryptography: about 14 MiB per worker."""
    probe = (
        f"import sys, {module}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'authlib', 'cryptography', "
        "'joserfc'}), 'confluent_kafka.schema_registry' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["[]", "False"]
