"""Fuzz the JSON API (etcd's grpc-gateway paths, /health, /version, /metrics) from docs/openapi.yaml.

schemathesis turns every operation of the OpenAPI document into hypothesis strategies: valid
requests (positive mode) and requests that break the schema (negative mode: wrong types, bad base64,
out-of-range numbers, ...); on top of that every POST path gets arbitrary raw bodies. Against one
fresh cairn node the test checks that

- no request gets a 5xx answer (``/health`` included: a single healthy node must answer 200),
- no request hangs (each has a timeout),
- a request the node rejects (non-200), or any request to a read-only path, leaves the keys under a
  reserved prefix exactly as they were (values and mod_revisions),
- afterwards the node still serves: ``/health``, a put/get round trip, and a full range whose
  ``count`` equals the number of keys it returns.

Every failing request is collected (as a curl command) and the test fails listing them all.
The streams ``/v3/watch`` and ``/v3/lease/keepalive`` are not in the document, so not fuzzed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from servers import Server

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
EXAMPLES = 20  # per operation and generation mode
RAW_EXAMPLES = 10  # raw bodies per POST path
REQUEST_TIMEOUT = 10.0
RESERVED = b"\x00fuzz-reserved/"  # the keys whose value a rejected request must not change
READ_ONLY = {
    "/v3/kv/range",
    "/v3/lease/timetolive",
    "/v3/kv/lease/timetolive",
    "/v3/lease/leases",
    "/v3/kv/lease/leases",
    "/v3/cluster/member/list",
    "/v3/maintenance/status",
    "/health",
    "/version",
    "/metrics",
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Server]:
    server = Server("cairn", tmp_path / "cairn", env={"ETCD_PLUGINS": json.dumps({"grpc": {}, "rest": {}})})
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.session.post(self.url + path, json=body, timeout=REQUEST_TIMEOUT)
        assert response.status_code == 200, (path, body, response.status_code, response.text)
        return response.json()

    def reserved(self) -> list[tuple[str, str, str]]:
        """(key, value, mod_revision) of every key under RESERVED."""
        answer = self.post("/v3/kv/range", {"key": b64(RESERVED), "range_end": b64(prefix_end(RESERVED))})
        return [(kv["key"], kv.get("value", ""), kv["mod_revision"]) for kv in answer.get("kvs", [])]


def describe(response: requests.Response) -> str:
    request = response.request
    body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
    answer = f"{response.status_code} {response.text[:500]!r}"
    return f"{request.method} {request.url} body={body[:2000]!r} -> {answer}"


@pytest.mark.timeout(240)
def test_fuzz_json_api(node: Server) -> None:
    url = node.client_url.rstrip("/")
    api = Api(url)
    for i in range(5):
        api.post("/v3/kv/put", {"key": b64(RESERVED + b"k%d" % i), "value": b64(b"v%d" % i)})
    state = {"reserved": api.reserved()}
    assert len(state["reserved"]) == 5
    failures: list[str] = []

    def check(path: str, response: requests.Response | None, shown: str) -> None:
        if response is None:
            failures.append(f"no answer within {REQUEST_TIMEOUT}s: {shown}")
            return
        if response.status_code >= 500:
            failures.append(f"5xx: {describe(response)}")
        try:
            now = api.reserved()
        except AssertionError as e:
            failures.append(f"the node stopped serving ({e}) right after: {describe(response)}")
            raise AssertionError("\n".join(failures)) from None
        if (response.status_code != 200 or path in READ_ONLY) and now != state["reserved"]:
            failures.append(f"reserved keys changed by a rejected or read-only request: {describe(response)}")
        state["reserved"] = now

    def send_case(path: str) -> Any:
        def run(case: Any) -> None:
            try:
                response = case.call(base_url=url, session=api.session, timeout=REQUEST_TIMEOUT)
            except requests.Timeout:
                check(path, None, case.as_curl_command(base_url=url))
                return
            check(path, response, "")

        return run

    def send_raw(path: str) -> Any:
        def run(body: bytes) -> None:
            try:
                response = api.session.post(url + path, data=body, timeout=REQUEST_TIMEOUT)
            except requests.Timeout:
                check(path, None, f"POST {path} body={body!r}")
                return
            check(path, response, "")

        return run

    raw_bodies = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode))
    fuzz_settings = settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every failure is recorded as it came
        suppress_health_check=list(HealthCheck),
    )
    schema = schemathesis.openapi.from_path(SCHEMA_PATH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 17
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
                continue  # GET paths take no input to break

            fuzz_settings(
                given(case=operation.as_strategy(generation_mode=mode))(send_case(operation.path))
            )()

    raw_settings = settings(fuzz_settings, max_examples=RAW_EXAMPLES)
    for operation in operations:
        if operation.method.upper() != "POST":
            continue
        raw_settings(given(body=raw_bodies)(send_raw(operation.path)))()

    assert not failures, "\n".join(failures[:30])

    # the node still serves, and its keyspace is consistent
    health = api.session.get(url + "/health", timeout=REQUEST_TIMEOUT)
    assert (health.status_code, health.json()) == (200, {"health": "true"})
    api.post("/v3/kv/put", {"key": b64(b"after-fuzz"), "value": b64(b"ok")})
    got = api.post("/v3/kv/range", {"key": b64(b"after-fuzz")})
    assert [(kv["key"], kv["value"]) for kv in got["kvs"]] == [(b64(b"after-fuzz"), b64(b"ok"))]
    everything = api.post("/v3/kv/range", {"key": b64(b"\x00"), "range_end": b64(b"\x00")})
    assert int(everything.get("count", "0")) == len(everything.get("kvs", [])) >= 1
