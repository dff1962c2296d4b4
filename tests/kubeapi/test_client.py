"""The local API server against the official ``kubernetes`` client (run in threads)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import kubernetes
import pytest
import urllib3
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.rest import ApiException

from navigator.kubeapi.server import KubeApiServer

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
GROUP, VERSION = "navigator.avito.ru", "v1"


def service(name: str, labels: dict[str, str] | None = None, port: int = 80) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]}}


def status_of(e: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(e.body)
    return body


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_service_crud(api: ApiClient) -> None:
    core = CoreV1Api(api)
    created = await call(core.create_namespaced_service, "apps", service("web"))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.generation == 1 and created.spec.cluster_ip.startswith("10.96.")
    assert created.spec.ports[0].target_port == 80 and created.spec.ports[0].protocol == "TCP"

    got = await call(core.read_namespaced_service, "web", "apps")
    assert got.metadata.uid == created.metadata.uid
    everything = await call(core.list_service_for_all_namespaces)
    assert [s.metadata.name for s in everything.items] == ["web"]
    assert int(everything.metadata.resource_version) >= int(created.metadata.resource_version)

    got.spec.ports[0].port = 81
    replaced = await call(core.replace_namespaced_service, "web", "apps", got)
    assert replaced.spec.ports[0].port == 81 and replaced.metadata.generation == 2
    assert replaced.spec.cluster_ip == created.spec.cluster_ip

    merged = await call(core.patch_namespaced_service, "web", "apps",
                        {"metadata": {"labels": {"tier": "front"}}}, _content_type=MERGE)
    assert merged.metadata.labels == {"tier": "front"}
    patched = await call(core.patch_namespaced_service, "web", "apps",
                         [{"op": "replace", "path": "/spec/ports/0/port", "value": 82}])
    assert patched.spec.ports[0].port == 82

    deleted = await call(core.delete_namespaced_service, "web", "apps")
    assert deleted.metadata.name == "web"
    with pytest.raises(ApiException) as e:
        await call(core.read_namespaced_service, "web", "apps")
    assert e.value.status == 404
    assert status_of(e.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'services "web" not found', "reason": "NotFound", "code": 404,
        "details": {"name": "web", "kind": "services"}}


async def test_endpoints_crud(api: ApiClient) -> None:
    core = CoreV1Api(api)
    body = {"metadata": {"name": "web"}, "subsets": [{
        "addresses": [{"ip": "10.0.0.1", "nodeName": "n1",
                       "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "apps"}}],
        "notReadyAddresses": [{"ip": "10.0.0.2"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}
    created = await call(core.create_namespaced_endpoints, "apps", body)
    assert created.subsets[0].addresses[0].target_ref.name == "web-1"
    listed = await call(core.list_namespaced_endpoints, "apps")
    assert [e.metadata.name for e in listed.items] == ["web"]
    patched = await call(core.patch_namespaced_endpoints, "web", "apps",
                         [{"op": "remove", "path": "/subsets/0/notReadyAddresses"}])
    assert patched.subsets[0].not_ready_addresses is None
    patched.subsets[0].addresses[0].ip = "10.0.0.3"
    replaced = await call(core.replace_namespaced_endpoints, "web", "apps", patched)
    assert replaced.subsets[0].addresses[0].ip == "10.0.0.3"
    status = await call(core.delete_namespaced_endpoints, "web", "apps")
    assert status["status"] == "Success"
    assert (await call(core.list_namespaced_endpoints, "apps")).items == []


async def test_nexus_crud(api: ApiClient) -> None:
    crd = CustomObjectsApi(api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Nexus", "metadata": {"name": "nx"},
            "spec": {"appName": "web", "services": [{"namespace": "apps", "name": "web"}]}}
    created = await call(crd.create_namespaced_custom_object, GROUP, VERSION, "apps",
                         "nexuses", body)
    assert created["metadata"]["namespace"] == "apps"
    got = await call(crd.get_namespaced_custom_object, GROUP, VERSION, "apps", "nexuses", "nx")
    assert got["spec"]["appName"] == "web"
    listed = await call(crd.list_cluster_custom_object, GROUP, VERSION, "nexuses")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["nx"]
    got["spec"]["appName"] = "web2"
    replaced = await call(crd.replace_namespaced_custom_object, GROUP, VERSION, "apps",
                          "nexuses", "nx", got)
    assert replaced["spec"]["appName"] == "web2"
    merged = await call(crd.patch_namespaced_custom_object, GROUP, VERSION, "apps", "nexuses",
                        "nx", {"spec": {"services": None}})
    assert "services" not in merged["spec"]
    patched = await call(crd.patch_namespaced_custom_object, GROUP, VERSION, "apps", "nexuses",
                         "nx", [{"op": "add", "path": "/spec/services",
                                 "value": [{"namespace": "b", "name": "c"}]}],
                         _content_type=JSON_PATCH)
    assert patched["spec"]["services"] == [{"namespace": "b", "name": "c"}]
    deleted = await call(crd.delete_namespaced_custom_object, GROUP, VERSION, "apps",
                         "nexuses", "nx")
    assert deleted["metadata"]["name"] == "nx"
    with pytest.raises(ApiException) as e:
        await call(crd.get_namespaced_custom_object, GROUP, VERSION, "apps", "nexuses", "nx")
    assert status_of(e.value)["message"] == 'nexuses.navigator.avito.ru "nx" not found'


async def test_conflicts(api: ApiClient) -> None:
    core = CoreV1Api(api)
    first = await call(core.create_namespaced_service, "apps", service("web"))
    with pytest.raises(ApiException) as e:
        await call(core.create_namespaced_service, "apps", service("web"))
    assert (e.value.status, status_of(e.value)["reason"]) == (409, "AlreadyExists")

    await call(core.patch_namespaced_service, "web", "apps", {"metadata": {"labels": {"a": "b"}}})
    stale = service("web")
    stale["metadata"]["resourceVersion"] = first.metadata.resource_version
    with pytest.raises(ApiException) as e:
        await call(core.replace_namespaced_service, "web", "apps", stale)
    assert (e.value.status, status_of(e.value)["reason"]) == (409, "Conflict")
    assert status_of(e.value)["message"].startswith(
        'Operation cannot be fulfilled on services "web": the object has been modified')
    # Without a resourceVersion a PUT is unconditional.
    replaced = await call(core.replace_namespaced_service, "web", "apps", service("web", port=90))
    assert replaced.spec.ports[0].port == 90


async def test_list_pagination_and_selectors(api: ApiClient) -> None:
    core = CoreV1Api(api)
    for i in range(5):
        await call(core.create_namespaced_service, f"ns{i % 2}",
                   service(f"s{i}", {"app": "a" if i < 3 else "b", "idx": str(i)}))
    names: list[str] = []
    token, pages = None, 0
    while True:
        page = await call(core.list_service_for_all_namespaces, limit=2, _continue=token)
        names += [s.metadata.name for s in page.items]
        pages += 1
        token = page.metadata._continue
        if not token:
            break
    assert pages == 3 and sorted(names) == ["s0", "s1", "s2", "s3", "s4"]
    first = await call(core.list_service_for_all_namespaces, limit=2)
    assert first.metadata.remaining_item_count == 3

    cases = {
        "app=a": ["s0", "s1", "s2"],
        "app!=a": ["s3", "s4"],
        "app in (b),idx": ["s3", "s4"],
        "idx notin (0,1,2,3)": ["s4"],
        "!nothing,app=b": ["s3", "s4"],
        "nothing": [],
    }
    for selector, want in cases.items():
        got = await call(core.list_service_for_all_namespaces, label_selector=selector)
        assert sorted(s.metadata.name for s in got.items) == want, selector
    by_field = await call(core.list_service_for_all_namespaces,
                          field_selector="metadata.namespace=ns1,metadata.name!=s1")
    assert [s.metadata.name for s in by_field.items] == ["s3"]


def _consume(stream: Any, events: list[dict[str, Any]], until: Callable[[], bool],
             deadline: float) -> None:
    """Collect watch events in a thread until ``until()`` or the deadline."""
    try:
        for ev in stream:
            events.append(ev)
            if until() or time.monotonic() > deadline:
                break
    finally:
        stream.close()  # closes the HTTP response, which ends the watch on the server


async def _wait_for(cond: Callable[[], bool], seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


def _names(events: list[dict[str, Any]], type_: str = "") -> list[str]:
    return [e["object"].metadata.name for e in events
            if e["type"] != "BOOKMARK" and (not type_ or e["type"] == type_)]


async def test_watch_replay_live_and_bookmarks(api: ApiClient, kube: KubeApiServer) -> None:
    core = CoreV1Api(api)
    await call(core.create_namespaced_service, "apps", service("before"))
    rv = (await call(core.list_namespaced_service, "apps")).metadata.resource_version
    await call(core.create_namespaced_service, "apps", service("replayed"))
    await call(core.create_namespaced_service, "other", service("elsewhere"))

    events: list[dict[str, Any]] = []
    w = kubernetes.watch.Watch()
    stream = w.stream(core.list_namespaced_service, "apps", resource_version=rv,
                      allow_watch_bookmarks=True)
    done = lambda: "live" in _names(events, "DELETED")  # noqa: E731
    task = asyncio.create_task(call(_consume, stream, events, done, time.monotonic() + 10))
    await _wait_for(lambda: "replayed" in _names(events))
    await call(core.create_namespaced_service, "apps", service("live"))
    await call(core.delete_namespaced_service, "live", "apps")
    await task
    assert _names(events) == ["replayed", "live", "live"]
    assert [e["type"] for e in events if e["type"] != "BOOKMARK"] == [
        "ADDED", "ADDED", "DELETED"]
    assert any(e["type"] == "BOOKMARK" for e in events)
    assert int(w.resource_version) == kube.store.rv


async def test_watch_without_rv_sends_current_state(api: ApiClient) -> None:
    core = CoreV1Api(api)
    for name in ("a", "b"):
        await call(core.create_namespaced_service, "apps", service(name))
    stream = kubernetes.watch.Watch().stream(core.list_namespaced_service, "apps",
                                             timeout_seconds=1)
    events = await call(list, stream)
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "a"), ("ADDED", "b")]


async def test_watch_expired_after_compact(api: ApiClient, kube: KubeApiServer) -> None:
    core = CoreV1Api(api)
    rv = (await call(core.list_namespaced_service, "apps")).metadata.resource_version
    await call(core.create_namespaced_service, "apps", service("a"))
    kube.compact()
    stream = kubernetes.watch.Watch().stream(core.list_namespaced_service, "apps",
                                             resource_version=rv)
    with pytest.raises(ApiException) as e:
        await call(list, stream)
    assert e.value.status == 410
    assert e.value.reason == f"Expired: too old resource version: {rv} ({kube.store.rv})"
    # From the current resourceVersion a watch works again.
    current = str(kube.store.rv)
    events = await call(list, kubernetes.watch.Watch().stream(
        core.list_namespaced_service, "apps", resource_version=current, timeout_seconds=1))
    assert events == []


async def test_drop_watches_resumes_without_loss(api: ApiClient, kube: KubeApiServer) -> None:
    core = CoreV1Api(api)
    rv = (await call(core.list_namespaced_service, "apps")).metadata.resource_version
    events: list[dict[str, Any]] = []
    stream = kubernetes.watch.Watch().stream(core.list_namespaced_service, "apps",
                                             resource_version=rv)
    task = asyncio.create_task(call(_consume, stream, events, lambda: len(_names(events)) >= 6,
                                    time.monotonic() + 10))
    for i in range(3):
        await call(core.create_namespaced_service, "apps", service(f"s{i}"))
    await _wait_for(lambda: len(_names(events)) == 3)
    assert kube.drop_watches() == 1
    for i in range(3, 6):  # written while the client reconnects
        await call(core.create_namespaced_service, "apps", service(f"s{i}"))
    await task
    assert _names(events) == [f"s{i}" for i in range(6)]
    await _wait_for(lambda: kube.store.open_watches() == 0)
    metrics = (await _get(kube, "/metrics", control=True)).decode()
    assert 'kubeapi_requests_total{code="200",resource="services",verb="watch"} 2.0' in metrics


async def test_timeout_seconds_ends_stream(api: ApiClient, kube: KubeApiServer) -> None:
    core = CoreV1Api(api)
    started = time.monotonic()
    stream = kubernetes.watch.Watch().stream(core.list_namespaced_service, "apps",
                                             resource_version=str(kube.store.rv),
                                             timeout_seconds=1, allow_watch_bookmarks=True)
    events = await call(list, stream)
    assert 0.9 < time.monotonic() - started < 3
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    assert kube.store.open_watches() == 0


async def _get(kube: KubeApiServer, path: str, *, control: bool = False,
               method: str = "GET") -> bytes:
    base = f"http://127.0.0.1:{kube.control_port}" if control else kube.url
    async with aiohttp.ClientSession() as s, s.request(method, base + path) as r:
        return await r.read()


async def test_unreachable_and_back(api: ApiClient, kube: KubeApiServer) -> None:
    core = CoreV1Api(api)
    await call(core.create_namespaced_service, "apps", service("a"))
    port = kube.port
    await kube.set_unreachable(True)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        await call(core.list_namespaced_service, "apps", _request_timeout=2)
    # The control port stays up and can make the API reachable again.
    assert await _get(kube, "/_navigator/unreachable?value=false", control=True,
                      method="POST") == b'{"unreachable":false}'
    await _wait_for(lambda: not kube.unreachable)
    assert kube.port == port
    listed = await call(core.list_namespaced_service, "apps")
    assert [s.metadata.name for s in listed.items] == ["a"]


async def test_hooks_over_http(kube: KubeApiServer) -> None:
    kube.store.create(service("a"))
    body = json.loads(await _get(kube, "/_navigator/compact", method="POST"))
    assert body == {"resourceVersion": str(kube.store.rv)}
    assert json.loads(await _get(kube, "/_navigator/drop-watches", method="POST")) == {
        "dropped": 0}
    assert await _get(kube, "/healthz") == b"ok"
    assert await _get(kube, "/readyz", control=True) == b"ok"
    metrics = (await _get(kube, "/metrics")).decode()
    assert "kubeapi_open_watches 0.0" in metrics
