"""The wire format itself: discovery, OpenAPI, validation and Status errors over raw HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from navigator.kubeapi.server import KubeApiServer

SVC = "/api/v1/namespaces/apps/services"
NEXUS = "/apis/navigator.avito.ru/v1/namespaces/apps/nexuses"


@pytest.fixture
async def http(kube: KubeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=kube.url) as session:
        yield session


async def request(http: aiohttp.ClientSession, method: str, path: str, body: Any = None,
                  content_type: str = "application/json") -> tuple[int, Any, list[str]]:
    data = None if body is None else json.dumps(body)
    async with http.request(method, path, data=data,
                            headers={"Content-Type": content_type}) as r:
        return r.status, await r.json(), r.headers.getall("Warning", [])


async def test_discovery(http: aiohttp.ClientSession) -> None:
    _, core, _ = await request(http, "GET", "/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["services"]["shortNames"] == ["svc"]
    assert by_name["endpoints"]["shortNames"] == ["ep"]
    assert by_name["nodes"]["namespaced"] is False and by_name["nodes"]["shortNames"] == ["no"]
    assert by_name["namespaces"]["shortNames"] == ["ns"]
    assert "watch" in by_name["services"]["verbs"] and "services/status" in by_name
    _, groups, _ = await request(http, "GET", "/apis")
    assert {g["name"] for g in groups["groups"]} == {
        "discovery.k8s.io", "networking.k8s.io", "navigator.avito.ru", "authentication.k8s.io"}
    _, mesh, _ = await request(http, "GET", "/apis/navigator.avito.ru/v1")
    assert [(r["name"], r["kind"]) for r in mesh["resources"] if "/" not in r["name"]] == [
        ("canaryreleases", "CanaryRelease"), ("nexuses", "Nexus"), ("gateways", "Gateway")]
    _, versions, _ = await request(http, "GET", "/api")
    assert versions["versions"] == ["v1"]
    _, version, _ = await request(http, "GET", "/version")
    assert version["major"] == "1"
    status, body, _ = await request(http, "GET", "/apis/nope/v1")
    assert (status, body["reason"]) == (404, "NotFound")


async def test_openapi_declares_field_validation(http: aiohttp.ClientSession) -> None:
    _, root, _ = await request(http, "GET", "/openapi/v3")
    assert set(root["paths"]) == {"api/v1", "apis/discovery.k8s.io/v1",
                                  "apis/networking.k8s.io/v1", "apis/navigator.avito.ru/v1",
                                  "apis/authentication.k8s.io/v1"}
    _, doc, _ = await request(http, "GET", root["paths"]["apis/navigator.avito.ru/v1"][
        "serverRelativeURL"])
    op = doc["paths"]["/apis/navigator.avito.ru/v1/namespaces/{namespace}/nexuses/{name}"][
        "patch"]
    assert op["x-kubernetes-action"] == "patch"
    assert op["x-kubernetes-group-version-kind"] == {
        "group": "navigator.avito.ru", "version": "v1", "kind": "Nexus"}
    assert {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}} in op[
        "parameters"]


def svc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80}], **spec}}


def nexus(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "navigator.avito.ru/v1", "kind": "Nexus",
            "metadata": {"name": "nx"}, "spec": spec}


# (path, body, code, reason, message or None when only the reason matters)
STRICT_CASES: list[tuple[str, Any, int, str, str | None]] = [
    (SVC, svc(foo=1), 400, "BadRequest", 'strict decoding error: unknown field "spec.foo"'),
    (SVC, {**svc(), "extra": 1}, 400, "BadRequest",
     'strict decoding error: unknown field "extra"'),
    (SVC, svc(ports=[{"port": "80"}]), 400, "BadRequest",
     'Service in version "v1" cannot be handled as a Service: json: cannot unmarshal string '
     "into Go struct field Service.spec.ports[0].port of type int64"),
    (SVC, {**svc(), "metadata": {}}, 422, "Invalid",
     'Service "" is invalid: metadata.name: Required value: name or generateName is required'),
    (SVC, {**svc(), "metadata": {"name": "Web_1"}}, 422, "Invalid", None),
    (SVC, {**svc(), "metadata": {"name": "web", "namespace": "other"}}, 400, "BadRequest",
     "the namespace of the provided object does not match the namespace sent on the request"),
    (SVC, {**svc(), "apiVersion": "v2"}, 400, "BadRequest", None),
    (NEXUS, nexus(appName=1), 422, "Invalid",
     'Nexus.navigator.avito.ru "nx" is invalid: spec.appName: Invalid value: "number": '
     'spec.appName in body must be of type string: "number"'),
    (NEXUS, nexus(services=[{"name": "a", "weight": 1}]), 400, "BadRequest",
     'strict decoding error: unknown field "spec.services[0].weight"'),
    ("/apis/navigator.avito.ru/v1/namespaces/apps/canaryreleases",
     {"apiVersion": "navigator.avito.ru/v1", "kind": "CanaryRelease", "metadata": {"name": "c"},
      "spec": {"backends": [{"name": "a", "weight": "ten"}]}}, 422, "Invalid", None),
    ("/apis/navigator.avito.ru/v1/namespaces/apps/gateways",
     {"apiVersion": "navigator.avito.ru/v1", "kind": "Gateway", "metadata": {"name": "g"},
      "spec": {"ingressClass": "nginx", "port": 80, "tls": True}}, 400, "BadRequest",
     'strict decoding error: unknown field "spec.tls"'),
]


@pytest.mark.parametrize("case", STRICT_CASES)
async def test_strict_validation(http: aiohttp.ClientSession,
                                 case: tuple[str, Any, int, str, str | None]) -> None:
    path, body, code, reason, message = case
    status, got, _ = await request(http, "POST", path + "?fieldValidation=Strict", body)
    assert (status, got["kind"], got["status"], got["code"], got["reason"]) == (
        code, "Status", "Failure", code, reason)
    if message is not None:
        assert got["message"] == message


async def test_warn_mode_prunes_unknown_fields(http: aiohttp.ClientSession) -> None:
    status, got, warnings = await request(http, "POST", SVC, svc(foo=1))
    assert status == 201 and "foo" not in got["spec"]
    assert warnings == ['299 - "unknown field \\"spec.foo\\""']


async def test_patch_flavours_and_status(http: aiohttp.ClientSession) -> None:
    await request(http, "POST", NEXUS, nexus(appName="a"))
    item = NEXUS + "/nx"
    status, got, _ = await request(http, "PATCH", item, {"spec": {"appName": "b"}},
                                   "application/strategic-merge-patch+json")
    assert (status, got["reason"]) == (415, "UnsupportedMediaType")
    status, got, _ = await request(http, "PATCH", item + "?fieldValidation=Strict",
                                   {"spec": {"bogus": 1}}, "application/merge-patch+json")
    assert (status, got["message"]) == (400, 'strict decoding error: unknown field "spec.bogus"')
    # The main resource ignores status; the status subresource changes only status.
    status, got, _ = await request(http, "PATCH", item, {"status": {"ok": True}},
                                   "application/merge-patch+json")
    assert status == 200 and "status" not in got
    status, got, _ = await request(http, "PATCH", item + "/status",
                                   {"status": {"ok": True}, "spec": {"appName": "c"}},
                                   "application/merge-patch+json")
    assert status == 200 and got["status"] == {"ok": True} and got["spec"]["appName"] == "a"
    assert got["metadata"]["generation"] == 1
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"appName": "d"}}
    status, got, _ = await request(http, "PATCH", item, stale, "application/merge-patch+json")
    assert (status, got["reason"]) == (409, "Conflict")


async def test_delete_preconditions_and_collection(http: aiohttp.ClientSession) -> None:
    _, created, _ = await request(http, "POST", SVC, svc())
    status, got, _ = await request(http, "DELETE", SVC + "/web",
                                   {"preconditions": {"uid": "nope"}})
    assert (status, got["reason"]) == (409, "Conflict")
    assert got["message"].endswith(
        f"Precondition failed: UID in precondition: nope, UID in object meta: "
        f"{created['metadata']['uid']}")
    status, got, _ = await request(http, "DELETE", SVC)
    assert status == 200 and [o["metadata"]["name"] for o in got["items"]] == ["web"]
    status, got, _ = await request(http, "DELETE", SVC + "/web")
    assert (status, got["reason"], got["message"]) == (404, "NotFound", 'services "web" not found')


async def test_list_at_exact_resource_version(http: aiohttp.ClientSession) -> None:
    _, created, _ = await request(http, "POST", SVC, svc())
    rv = created["metadata"]["resourceVersion"]
    await request(http, "DELETE", SVC + "/web")
    _, now, _ = await request(http, "GET", SVC)
    assert now["items"] == [] and now["kind"] == "ServiceList"
    _, then, _ = await request(http, "GET", f"{SVC}?resourceVersion={rv}"
                                            "&resourceVersionMatch=Exact")
    assert [o["metadata"]["name"] for o in then["items"]] == ["web"]
    assert then["metadata"]["resourceVersion"] == rv
