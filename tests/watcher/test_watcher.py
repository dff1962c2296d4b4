"""The watcher end to end: the local Kubernetes API server → informers → real etcd.

Every wait has a deadline and ends on an observable condition (a key in etcd, a metric, the
reachability flag), never on a bare sleep.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.kubeapi import server as kubeapi_server
from navigator.watcher import informer, metrics, runner

C = model.ClusterName("east")
MESH = "navigator.avito.ru/v1"


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def counter(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


def service(name: str, port: int = 80, ns: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }


def nexus(name: str, spec: dict[str, Any], ns: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": MESH,
        "kind": "Nexus",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }


DISCOVERY = "discovery.k8s.io/v1"


def endpoint_slice(
    name: str, service: str | None, endpoints: list[dict[str, Any]], ns: str = "ns"
) -> dict[str, Any]:
    labels = {} if service is None else {"kubernetes.io/service-name": service}
    return {
        "apiVersion": DISCOVERY,
        "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def skey(kind: model.Kind, ns: str, name: str) -> str:
    """The state key of an object, built by the schema module from a stand-in object."""
    probes: dict[model.Kind, model.Object] = {
        model.Kind.SERVICE: model.Service(C, ns, name, model.ServiceType.CLUSTER_IP, "", ()),
        model.Kind.NEXUS: model.Nexus(C, ns, name, model.AppName("x"), ()),
        model.Kind.ENDPOINTS: model.Endpoints(C, ns, name, ()),
        model.Kind.ENDPOINT_SLICE: model.EndpointSlice(C, ns, name, "x", ()),
    }
    return keys.state_key(probes[kind])


async def _decoded(etcd: etcd_mod.Etcd, key: str) -> model.Object | None:
    kv = await etcd.get(key)
    return None if kv is None else model.decode(keys.parse_state_key(key).kind, kv.value)


def _tasks() -> set[asyncio.Task[Any]]:
    """The watcher's own tasks (it names them); the API server's handlers are not ours."""
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("watcher-")}


async def test_objects_converge_and_survive_drops_410_and_outages(
    kube: tuple[kubeapi_server.KubeApiServer, Path],
    etcd: etcd_mod.Etcd,
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, kubeconfig = kube
    caplog.set_level(logging.INFO, logger="navigator.watcher")
    srv.store.create(service("item"))
    srv.store.create(service("gone-while-dropped"))
    srv.store.create(service("gone-while-compacted"))
    srv.store.create(service("gone-while-unreachable"))
    srv.store.create(
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"namespace": "ns", "name": "item"},
            "subsets": [
                {"addresses": [{"ip": "10.1.0.5"}], "ports": [{"name": "http", "port": 8080}]}
            ],
        }
    )
    srv.store.create(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
        }
    )
    srv.store.create(nexus("app", {"appName": "app", "services": [{"name": "item"}]}))
    srv.store.create(
        {
            "apiVersion": MESH,
            "kind": "Gateway",
            "metadata": {"namespace": "ns", "name": "gw"},
            "spec": {"ingressClass": "public", "port": 8080},
        }
    )
    srv.store.create(
        {
            "apiVersion": MESH,
            "kind": "CanaryRelease",
            "metadata": {"namespace": "ns", "name": "c"},
            "spec": {"backends": [{"name": "item", "weight": 100}]},
        }
    )
    # A stale key from an earlier run, for an object the API no longer has: reconciled away.
    stale = skey(model.Kind.SERVICE, "ns", "deleted-long-ago")
    await etcd.put(stale, b"{}")

    async with runner.run_watcher(
        cluster="east", kube_config=kubeconfig, etcd=etcd, watch_timeout=5, max_backoff=0.2
    ) as w:
        await asyncio.wait_for(w.synced.wait(), 10)
        # After the initial lists: everything normalized, the stale key gone, the marker there.
        listing = await etcd.get_prefix(keys.state_prefix(C))
        assert sorted(listing.items) == sorted(
            [
                skey(model.Kind.SERVICE, "ns", n)
                for n in (
                    "item",
                    "gone-while-dropped",
                    "gone-while-compacted",
                    "gone-while-unreachable",
                )
            ]
            + [
                skey(model.Kind.ENDPOINTS, "ns", "item"),
                keys.state_key(model.Node(C, "n1", "", "z1")),
                skey(model.Kind.NEXUS, "ns", "app"),
                keys.state_key(model.Gateway(C, "ns", "gw", "public", 8080)),
                keys.state_key(model.CanaryRelease(C, "ns", "c", ())),
            ]
        )
        marker = await etcd.get(keys.synced_key(C))
        assert marker is not None
        eps = await _decoded(etcd, skey(model.Kind.ENDPOINTS, "ns", "item"))
        assert isinstance(eps, model.Endpoints)
        assert [e.ip for e in eps.endpoints] == ["10.1.0.5"]
        nx = await _decoded(etcd, skey(model.Kind.NEXUS, "ns", "app"))
        assert nx == model.Nexus(
            C, "ns", "app", model.AppName("app"), (model.ServiceRef("ns", "item"),)
        )

        # An update and a delete propagate.
        srv.store.update(
            {
                **service("item", port=81),
                "spec": {
                    **service("item", 81)["spec"],
                    "clusterIP": srv.store.get("v1", "Service", "item", "ns")["spec"]["clusterIP"],
                },
            }
        )
        srv.store.create(service("new"))

        async def updated() -> bool:
            svc = await _decoded(etcd, skey(model.Kind.SERVICE, "ns", "item"))
            new = await etcd.get(skey(model.Kind.SERVICE, "ns", "new"))
            return isinstance(svc, model.Service) and svc.ports[0].port == 81 and new is not None

        await eventually(updated)
        srv.store.delete("v1", "Service", "new", "ns")

        async def gone(name: str) -> bool:
            return await etcd.get(skey(model.Kind.SERVICE, "ns", name)) is None

        await eventually(lambda: gone("new"))

        # A dropped watch: the deletion made before it resumes is replayed from its rv.
        relists = counter(metrics.RELISTS, C, "services")
        srv.drop_watches()
        srv.store.delete("v1", "Service", "gone-while-dropped", "ns")
        await eventually(lambda: gone("gone-while-dropped"))
        assert counter(metrics.RELISTS, C, "services") == relists

        # A 410: the deletion happens with the watch down and the history compacted past it,
        # so only the relist and its diff can see it.
        srv.drop_watches()
        srv.store.delete("v1", "Service", "gone-while-compacted", "ns")
        srv.compact()
        await eventually(lambda: gone("gone-while-compacted"))
        assert counter(metrics.RELISTS, C, "services") >= relists + 1

        # A malformed object: one clear line, nothing written, the others keep flowing; a
        # good object turned malformed keeps its last good value.
        caplog.clear()
        srv.store.create(nexus("broken", {"services": [{"name": "item"}]}))
        srv.store.update(nexus("app", {"services": []}))
        srv.store.create(nexus("after", {"appName": "after"}))

        async def after_written() -> bool:
            return await etcd.get(skey(model.Kind.NEXUS, "ns", "after")) is not None

        await eventually(after_written)
        bad = [r for r in caplog.records if "malformed" in r.getMessage()]
        # Each once; the order is the informer's (a relist after the 410 lists by name).
        assert sorted(r.getMessage() for r in bad) == [
            f"skipping malformed nexuses ns/{name} in cluster east: "
            "spec.appName: expected a string, got null"
            for name in ("app", "broken")
        ]
        assert await etcd.get(skey(model.Kind.NEXUS, "ns", "broken")) is None
        assert await _decoded(etcd, skey(model.Kind.NEXUS, "ns", "app")) == nx

        # The API server unreachable: the state is kept; it converges once it is back.
        caplog.clear()
        state_before = (await etcd.get_prefix(keys.state_prefix(C))).items
        await srv.set_unreachable(True)

        async def down() -> bool:
            return not w.reachability.reachable

        await eventually(down)
        srv.store.delete("v1", "Service", "gone-while-unreachable", "ns")
        # Several informers retry meanwhile; wait for a few failed attempts of each kind.
        await eventually(lambda: _after_failures(caplog), within=5)
        assert (await etcd.get_prefix(keys.state_prefix(C))).items == state_before
        await srv.set_unreachable(False)
        await eventually(lambda: gone("gone-while-unreachable"), within=15)
        outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage) == 1, [r.getMessage() for r in outage]
        assert w.reachability.reachable

    # Clean stop: every task the watcher started has ended.
    assert not _tasks()


async def _after_failures(caplog: pytest.LogCaptureFixture) -> bool:
    # NOTE: a condition, not a sleep: the outage line is logged once the first retry failed.
    return any("unreachable" in r.getMessage() for r in caplog.records)


async def test_endpoint_slices_converge_and_updates_label_moves_and_deletes_propagate(
    kube: tuple[kubeapi_server.KubeApiServer, Path],
    etcd: etcd_mod.Etcd,
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, kubeconfig = kube
    caplog.set_level(logging.INFO, logger="navigator.watcher")
    pod_a = {"kind": "Pod", "namespace": "ns", "name": "item-1"}
    srv.store.create(
        endpoint_slice(
            "item-a",
            "item",
            [
                {
                    "addresses": ["10.1.0.5"],
                    "conditions": {"ready": True},
                    "nodeName": "n1",
                    "zone": "z1",
                    "targetRef": pod_a,
                }
            ],
        )
    )
    srv.store.create(endpoint_slice("item-b", "item", [{"addresses": ["10.1.0.6"]}]))
    srv.store.create(endpoint_slice("orphan", None, [{"addresses": ["10.1.0.7"]}]))
    http = (model.EndpointPort("http", 8080),)

    async with runner.run_watcher(
        cluster="east", kube_config=kubeconfig, etcd=etcd, watch_timeout=5, max_backoff=0.2
    ) as w:
        await asyncio.wait_for(w.synced.wait(), 10)
        listing = await etcd.get_prefix(keys.state_prefix(C))
        assert sorted(listing.items) == sorted(
            skey(model.Kind.ENDPOINT_SLICE, "ns", n) for n in ("item-a", "item-b")
        )
        assert await _decoded(etcd, skey(model.Kind.ENDPOINT_SLICE, "ns", "item-a")) == (
            model.EndpointSlice(
                C,
                "ns",
                "item-a",
                "item",
                (model.Endpoint("10.1.0.5", True, http, node="n1", zone="z1", pod="item-1"),),
            )
        )
        bad = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
        assert bad == [
            "skipping malformed endpointslices ns/orphan in cluster east: "
            "metadata.labels[kubernetes.io/service-name]: missing; the slice belongs to no Service"
        ]

        # An update (an address added, one not ready) and a move to another Service.
        srv.store.update(
            endpoint_slice(
                "item-a",
                "item",
                [
                    {"addresses": ["10.1.0.5"], "conditions": {"ready": False}},
                    {"addresses": ["10.1.0.8"]},
                ],
            )
        )
        srv.store.update(endpoint_slice("item-b", "other", [{"addresses": ["10.1.0.6"]}]))
        want_a = model.EndpointSlice(
            C,
            "ns",
            "item-a",
            "item",
            (
                model.Endpoint("10.1.0.5", False, http),
                model.Endpoint("10.1.0.8", True, http),
            ),
        )
        want_b = model.EndpointSlice(
            C, "ns", "item-b", "other", (model.Endpoint("10.1.0.6", True, http),)
        )

        async def updated() -> bool:
            a = await _decoded(etcd, skey(model.Kind.ENDPOINT_SLICE, "ns", "item-a"))
            b = await _decoded(etcd, skey(model.Kind.ENDPOINT_SLICE, "ns", "item-b"))
            return a == want_a and b == want_b

        await eventually(updated)

        # A deletion propagates; the fixed orphan appears.
        srv.store.delete(DISCOVERY, "EndpointSlice", "item-a", "ns")
        srv.store.update(endpoint_slice("orphan", "item", [{"addresses": ["10.1.0.7"]}]))

        async def deleted() -> bool:
            gone = await etcd.get(skey(model.Kind.ENDPOINT_SLICE, "ns", "item-a")) is None
            orphan = await etcd.get(skey(model.Kind.ENDPOINT_SLICE, "ns", "orphan"))
            return gone and orphan is not None

        await eventually(deleted)
    assert not _tasks()


@pytest.mark.parametrize(
    "resource",
    [
        # Versions this server does not serve: as if the CRD were not installed, or the
        # server predated discovery.k8s.io/v1 (Kubernetes < 1.21).
        pytest.param(
            informer.Resource(model.Kind.GATEWAY, informer.MESH_GROUP, "v1alpha9", "gateways"),
            id="crd",
        ),
        pytest.param(
            informer.Resource(
                model.Kind.ENDPOINT_SLICE, informer.DISCOVERY_GROUP, "v1beta9", "endpointslices"
            ),
            id="endpoint-slices",
        ),
    ],
)
async def test_an_unserved_optional_resource_keeps_its_keys_and_does_not_block_sync(
    kube: tuple[kubeapi_server.KubeApiServer, Path],
    etcd: etcd_mod.Etcd,
    resource: informer.Resource,
) -> None:
    _, kubeconfig = kube
    assert resource.optional
    kept = {
        model.Kind.GATEWAY: keys.state_key(model.Gateway(C, "ns", "gw", "public", 80)),
        model.Kind.ENDPOINT_SLICE: skey(model.Kind.ENDPOINT_SLICE, "ns", "s"),
    }[resource.kind]
    await etcd.put(kept, b"{}")
    resources = (informer.Resource(model.Kind.SERVICE, "", "v1", "services"), resource)
    async with runner.run_watcher(
        cluster="east", kube_config=kubeconfig, etcd=etcd, resources=resources, max_backoff=0.2
    ) as w:
        await asyncio.wait_for(w.synced.wait(), 10)
        assert _tasks()
        assert await etcd.get(kept) is not None
    assert not _tasks()


def test_endpoint_slices_are_watched_and_optional() -> None:
    by_kind = {r.kind: r for r in informer.RESOURCES}
    slices = by_kind[model.Kind.ENDPOINT_SLICE]
    assert slices.path == "/apis/discovery.k8s.io/v1/endpointslices"
    assert slices.optional
    assert not by_kind[model.Kind.ENDPOINTS].optional


@pytest.mark.parametrize(
    ("content", "extra", "reason"),
    [
        pytest.param("{not: [yaml", [], "kubeconfig", id="not-yaml"),
        pytest.param(None, ["--context", "nope"], "nope", id="no-such-context"),
    ],
)
def test_a_broken_kubeconfig_exits_2_with_one_line(
    tmp_path: Path, content: str | None, extra: list[str], reason: str
) -> None:
    path = tmp_path / "kubeconfig"
    if content is None:
        kubeapi_server.write_kubeconfig(path, {"east": "http://127.0.0.1:1"})
    else:
        path.write_text(content)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "navigator.watcher.main",
            "--cluster",
            "east",
            "--kubeconfig",
            str(path),
            "--etcd",
            "127.0.0.1:1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"navigator watcher: kubeconfig {path}: ")
    assert reason in lines[0]
