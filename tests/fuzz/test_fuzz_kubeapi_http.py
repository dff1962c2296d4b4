"""HTTP requests against the local API server on 127.0.0.1: every answer is a Kubernetes
answer (never a 500, errors with a Status body), the regressions fuzzing found, and a bounded
run of ``fuzz/fuzz_kubeapi_http.py``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fuzz_kubeapi_http
import fuzz_props
import harness
import pytest
from fuzz_props import TEXT, json_values
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[asyncio.Runner, fuzz_kubeapi_http.Api]]:
    """One server and client (a fresh store per example), on one event loop."""
    with asyncio.Runner() as runner:
        server = fuzz_kubeapi_http.Api()
        runner.run(server.start())
        try:
            yield runner, server
        finally:
            runner.run(server.stop())


def _send(api: tuple[asyncio.Runner, fuzz_kubeapi_http.Api], frames: list[harness.Frame]) -> Any:
    runner, server = api
    return runner.run(fuzz_kubeapi_http.drive(server, frames))


SEGMENTS = st.sampled_from(
    [
        "api",
        "apis",
        "v1",
        "namespaces",
        "shop",
        "web",
        "default",
        "services",
        "endpoints",
        "nodes",
        "pods",
        "item",
        "echo",
        "status",
        "navigator.avito.ru",
        "nexuses",
        "gateways",
        "canaryreleases",
        "discovery.k8s.io",
        "endpointslices",
        "networking.k8s.io",
        "ingresses",
        "openapi",
        "v3",
        "version",
        "_navigator",
        "compact",
        "drop-watches",
        "healthz",
        "metrics",
        "east-node-1",
        "x",
        "",
        "..",
        "%2F",
        "%ff",
    ]
)
PARAMS = st.dictionaries(
    st.sampled_from(
        [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "watch",
            "resourceVersion",
            "resourceVersionMatch",
            "timeoutSeconds",
            "allowWatchBookmarks",
            "fieldValidation",
            "dryRun",
            "x",
        ]
    ),
    st.one_of(
        TEXT,
        st.sampled_from(
            [
                "true",
                "1",
                "0",
                "-1",
                "Exact",
                "Strict",
                "Warn",
                "app=web",
                "metadata.name=item",
                "a in (b",
                "eyJydiI6MX0",
                "99999999999999999999",
            ]
        ),
    ),
    max_size=3,
)
BODIES = st.one_of(
    st.just(b""),
    json_values().map(lambda v: json.dumps(v).encode()),
    st.sampled_from(fuzz_kubeapi_http.fuzz_kubeapi.manifests()).map(
        lambda d: json.dumps(d).encode()
    ),
    st.binary(max_size=40),
)


@st.composite
def requests(draw: st.DrawFn) -> harness.Frame:
    path = "/" + "/".join(draw(st.lists(SEGMENTS, min_size=1, max_size=7)))
    params = draw(PARAMS)
    if params.get("watch") in ("true", "1"):
        params["timeoutSeconds"] = "1"  # NOTE: bounded even if the harness did not drop it.
    query = "&".join(f"{k}={v}" for k, v in params.items())
    target = (path + ("?" + query if query else "")).encode("utf-8", "surrogatepass")
    control = draw(st.integers(0, 7)) | draw(st.integers(0, 7)) << 3
    return control, target + b"\n" + draw(BODIES)


@fuzz_props.bounded(150)
@given(st.lists(requests(), min_size=1, max_size=4))
def test_every_request_gets_a_kubernetes_answer(
    api: tuple[asyncio.Runner, fuzz_kubeapi_http.Api], frames: list[harness.Frame]
) -> None:
    answers = _send(api, frames)
    # NOTE: Api.check asserted each answer (no 500, a Status for each error, nothing logged).
    assert len(answers) <= len(frames)


def test_a_real_client_session_is_answered(
    api: tuple[asyncio.Runner, fuzz_kubeapi_http.Api],
) -> None:
    body = json.dumps({"metadata": {"labels": {"a": "b"}}}).encode()
    frames = [
        (0, b"/api/v1/namespaces/shop/services"),
        (3 | 1 << 3, b"/api/v1/namespaces/shop/services/item\n" + body),
        (0, b"/api/v1/namespaces/shop/services?labelSelector=a%3Db"),
        (0, b"/api/v1/services?watch=true"),
        (6, b"/api/v1/nodes"),
    ]
    answers = _send(api, frames)
    assert [a.status for a in answers] == [200, 200, 200, 200, 405]
    assert [i["metadata"]["name"] for i in answers[2].body["items"]] == ["item"]


# --- regressions -----------------------------------------------------------------------------

POST = 1
PATCH = 3
DELETE = 4
JSON_PATCH = 2 << 3
YAML = 5 << 3


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            (
                PATCH | JSON_PATCH,
                b'/api/v1/namespaces/shop/services/item\n[{"op": "add", "path": 5, "value": 1}]',
            ),
            id="json-patch-path-not-a-string",
        ),
        pytest.param(
            (
                PATCH | JSON_PATCH,
                b'/api/v1/namespaces/shop/services/item\n[{"op": "remove", "path": ""}]',
            ),
            id="json-patch-remove-the-document",
        ),
        pytest.param(
            (POST, b'/api/v1/namespaces/shop/services\n{"metadata": "x"}'),
            id="metadata-not-an-object",
        ),
        pytest.param(
            (
                DELETE,
                b"/api/v1/namespaces/shop/endpoints/item\n"
                b'{"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": "apiVersion"}',
            ),
            id="delete-preconditions-not-an-object",
        ),
    ],
)
def test_a_malformed_body_is_a_400(
    api: tuple[asyncio.Runner, fuzz_kubeapi_http.Api], frame: harness.Frame
) -> None:
    # NOTE: found by fuzz_kubeapi and fuzz_kubeapi_http: each was a 500 InternalError with a
    # traceback logged.
    [answer] = _send(api, [frame])
    assert answer.status == 400 and answer.body["kind"] == "Status"


def test_a_null_spec_is_defaulted(api: tuple[asyncio.Runner, fuzz_kubeapi_http.Api]) -> None:
    # NOTE: found by fuzz_kubeapi: a 500 (None.setdefault in the Service defaulter).
    body = b'{"metadata": {"name": "new"}, "spec": null}'
    [answer] = _send(api, [(POST, b"/api/v1/namespaces/shop/services\n" + body)])
    assert answer.status == 201 and answer.body["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param((POST, b"/api/v1/namespaces/shop/pods\n" + b"[" * 100_000), id="json"),
        pytest.param((POST | YAML, b"/api/v1/namespaces/shop/pods\n" + b"[" * 100_000), id="yaml"),
    ],
)
def test_a_deeply_nested_body_is_a_400(
    api: tuple[asyncio.Runner, fuzz_kubeapi_http.Api], frame: harness.Frame
) -> None:
    # NOTE: found by fuzz_kubeapi_http: a 500 InternalError (RecursionError).
    runner, server = api
    runner.run(_without_tolerance(server, frame))


async def _without_tolerance(server: fuzz_kubeapi_http.Api, frame: harness.Frame) -> None:
    server.reset(fuzz_kubeapi_http.fuzz_kubeapi.loaded_store())
    method, path, content_type, body = fuzz_kubeapi_http.request_of(*frame)
    answer = await server.send(method, path, content_type, body)
    server.errors.records.clear()
    assert answer.status == 400, answer


PROTOBUF = 6 << 3


def test_a_huge_protobuf_varint_is_refused_at_once(
    api: tuple[asyncio.Runner, fuzz_kubeapi_http.Api],
) -> None:
    # NOTE: found while writing the harness for the protobuf bodies (TokenReview, ...): an
    # unauthenticated request keeps the server from answering anyone else.
    body = b"k8s\x00\x08" + b"\xff" * 150_000 + b"\x01"
    frame = (POST | PROTOBUF, b"/apis/authentication.k8s.io/v1/tokenreviews\n" + body)
    started = time.monotonic()
    [answer] = _send(api, [frame])
    elapsed = time.monotonic() - started
    assert answer.status == 400
    assert elapsed < 0.25, f"{elapsed:.1f}s to refuse one request"


def test_fuzzer_runs_clean(tmp_path: Path) -> None:
    fuzz_props.assert_clean(fuzz_props.fuzz("kubeapi_http", tmp_path), "kubeapi_http")
