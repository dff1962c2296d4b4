"""The core loop end to end through ``navigator lab``: Kubernetes → etcd → translator → xDS →
Envoy, on both lab networks.

The lab runs as the user runs it (a subprocess with a state directory); the tests read
``lab.json``, change objects through the API servers with the official client, and send real
requests from inside the sidecars' pods (``exec`` prefix) through the real Envoy sidecars to
the real backends, counting where they went.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest

from navigator import proxy
from navigator.lab import netns

T = TypeVar("T")

STARTUP_TIMEOUT = 90.0


def _modes() -> list[Any]:
    ok, why = netns.available()
    return [
        pytest.param("netns", marks=[] if ok else [pytest.mark.skip(reason=why)]),
        pytest.param("host"),
    ]


@pytest.fixture(scope="module", params=_modes())
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp(f"lab-{request.param}")
    out = open(state / "lab.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "navigator",
            "lab",
            "--state-dir",
            str(state),
            "--network",
            request.param,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    doc: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        lab_json = state / "lab.json"
        while not lab_json.exists():
            if proc.poll() is not None:
                pytest.fail(f"lab exited with {proc.returncode}:\n{_tail(state / 'lab.out')}")
            if time.monotonic() > deadline:
                pytest.fail(f"lab not up in {STARTUP_TIMEOUT}s:\n{_tail(state / 'lab.out')}")
            time.sleep(0.1)
        doc = json.loads(lab_json.read_text())
        yield doc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
    assert proc.returncode == 0, _tail(state / "lab.out")
    # Nothing the lab started may survive it: no process, no network namespace.
    for p in doc.get("processes", []):
        assert not _alive(p["pid"]), f"{p['name']} (pid {p['pid']}) survived the lab"
    prefix = doc.get("network", {}).get("prefix")
    if prefix:
        listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True)
        left = listed.stdout
        assert prefix not in left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    # A zombie holds no socket: gone for our purpose.
    return status.exists() and "zombie" not in status.read_text()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _api(lab: dict[str, Any], cluster: str) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=lab["kubeconfig"], context=cluster)


def _sidecar(lab: dict[str, Any], app: str, cluster: str) -> dict[str, Any]:
    return next(s for s in lab["sidecars"] if s["app"] == app and s["cluster"] == cluster)


def _client(sidecar: dict[str, Any], *args: str) -> dict[str, Any]:
    """Runs the lab client in the sidecar's pod, as the application there would."""
    done = subprocess.run(
        [*sidecar["exec"], sys.executable, "-m", "navigator.lab.client", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _pods_hit(sidecar: dict[str, Any], url: str, n: int) -> dict[str, int]:
    result = _client(sidecar, "http", url, "--count", str(n))
    hits: dict[str, int] = result["pods"]
    if result["failed"]:
        hits["<failed>"] = result["failed"]
    return hits


def _eventually(fn: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _ip(lab: dict[str, Any], name: str, cluster: str) -> str:
    service = next(s for s in lab["services"] if s["name"] == name)
    ip: str = service["cluster_ips"][cluster]
    return ip


def test_lab_reports_ready_and_lists_every_role(lab: dict[str, Any]) -> None:
    with urllib.request.urlopen(f"http://{lab['http']}/readyz", timeout=2) as resp:
        assert resp.status == 200
    roles = {p["role"] for p in lab["processes"]}
    assert roles == {
        *("etcd", "kube-api", "watcher", "translator", "xds", "balancer", "envoy", "backend")
    }
    assert {b["cluster"] for b in lab["balancers"]} == {"east", "west"}
    assert {c["name"] for c in lab["clusters"]} == {"east", "west"}


def test_traffic_stays_in_the_zone_then_spills_to_the_other_cluster(
    lab: dict[str, Any],
) -> None:
    """One service across clusters, with locality: the east sidecar's zone is priority 0.

    Deleting an endpoint moves traffic off that pod; with no endpoint left in east, the
    sidecar reaches the pods of west by the same ClusterIP.
    """
    web = _sidecar(lab, "web", "east")
    url = f"http://{_ip(lab, 'item', 'east')}:8890/"
    _eventually(lambda: _pods_hit(web, url, 1).keys() - {"<failed>"}, "shop/item from web")
    hits = _pods_hit(web, url, 60)
    # Priority 0 is fully healthy: west (priority 1) gets nothing, east pods share evenly.
    assert set(hits) == {"item-east-0", "item-east-1"}, hits
    assert min(hits.values()) >= 20, hits

    core = kubernetes.client.CoreV1Api(_api(lab, "east"))
    eps = core.read_namespaced_endpoints("item", "shop")
    addresses = eps.subsets[0].addresses
    eps.subsets[0].addresses = [a for a in addresses if a.target_ref.name != "item-east-1"]
    core.replace_namespaced_endpoints("item", "shop", eps)
    _eventually(lambda: "item-east-1" not in _pods_hit(web, url, 20), "traffic to leave")
    # A removed endpoint is not an unhealthy one: priority 0 is still fully healthy.
    assert set(_pods_hit(web, url, 40)) == {"item-east-0"}

    core.delete_namespaced_endpoints("item", "shop")
    _eventually(
        lambda: set(_pods_hit(web, url, 20)) == {"item-west-0", "item-west-1"},
        "traffic to reach the pods of west",
    )
    hits = _pods_hit(web, url, 40)
    assert set(hits) == {"item-west-0", "item-west-1"}, hits


def test_two_sidecars_of_one_cluster_serve_the_same_cluster_ip(lab: dict[str, Any]) -> None:
    if lab["network"]["mode"] != "netns":
        pytest.skip("the host network runs one sidecar per cluster")
    url = f"http://{_ip(lab, 'item', 'west')}:8890/"
    for app in ("web", "checkout"):
        hits = _pods_hit(_sidecar(lab, app, "west"), url, 8)
        assert "<failed>" not in hits, (app, hits)


def test_l4_port_carries_raw_tcp(lab: dict[str, Any]) -> None:
    checkout = _sidecar(lab, "checkout", "west")
    payload = "binary\x01payload\n" * 100
    address = f"{_ip(lab, 'echo', 'west')}:7000"
    result = _eventually(
        lambda: (r := _client(checkout, "tcp", address, "--send", payload))["echo"] and r,
        "echo from the checkout pod",
    )
    assert result["echo"] == payload


def test_new_service_becomes_reachable_and_deleted_one_disappears(lab: dict[str, Any]) -> None:
    west = next(c for c in lab["clusters"] if c["name"] == "west")
    checkout = _sidecar(lab, "checkout", "west")
    item_pod = next(
        p for p in lab["processes"] if p["role"] == "backend" and p.get("pod") == "item-west-0"
    )
    fresh_ip = _ip(lab, "item", "west").rsplit(".", 1)[0] + ".30"
    assert fresh_ip.startswith(west["service_cidr"].split(".0/")[0].rsplit(".", 1)[0])
    core = kubernetes.client.CoreV1Api(_api(lab, "west"))
    core.create_namespaced_service(
        "shop",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "fresh", "namespace": "shop"},
            "spec": {
                "clusterIP": fresh_ip,
                "ports": [{"name": "http", "port": 8891, "targetPort": 8080}],
            },
        },
    )
    core.create_namespaced_endpoints(
        "shop",
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "fresh", "namespace": "shop"},
            "subsets": [
                {
                    "addresses": [{"ip": item_pod["ip"], "targetRef": {"name": "item-west-0"}}],
                    "ports": [{"name": "http", "port": 8080}],
                }
            ],
        },
    )
    url = f"http://{fresh_ip}:8891/"
    # The checkout sidecar's Nexus selects the whole shop namespace.
    hits = _eventually(
        lambda: (h := _pods_hit(checkout, url, 1)).get("item-west-0") and h,
        "the new service from the checkout pod",
    )
    assert hits == {"item-west-0": 1}

    core.delete_namespaced_service("fresh", "shop")
    core.delete_namespaced_endpoints("fresh", "shop")
    _eventually(
        lambda: _client(checkout, "tcp", f"{fresh_ip}:8891", "--timeout", "1")["failed"],
        "the deleted service's listener to go",
    )


def test_draining_a_cluster_moves_its_traffic_to_the_other(lab: dict[str, Any]) -> None:
    """``navigator weight west 0`` (a cluster upgrade): west sidecars reach east's pods."""
    pods = {p["pod"]: p["ip"] for p in lab["processes"] if p["role"] == "backend"}
    core = kubernetes.client.CoreV1Api(_api(lab, "east"))
    east_item = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "item", "namespace": "shop"},
        "subsets": [
            {
                "addresses": [
                    {
                        "ip": pods["item-east-0"],
                        "nodeName": "east-node-1",
                        "targetRef": {"name": "item-east-0"},
                    }
                ],
                "ports": [{"name": "http", "port": 8080}],
            }
        ],
    }
    try:
        core.replace_namespaced_endpoints("item", "shop", east_item)
    except kubernetes.client.ApiException:
        core.create_namespaced_endpoints("shop", east_item)
    checkout = _sidecar(lab, "checkout", "west")
    url = f"http://{_ip(lab, 'item', 'west')}:8890/"
    west_pods = {"item-west-0", "item-west-1"}
    _eventually(lambda: set(_pods_hit(checkout, url, 10)) <= west_pods, "west pods first")

    def weight(*args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "navigator", "weight", *_etcd_args(lab), *args],
            check=True,
            capture_output=True,
            timeout=30,
        )

    weight("west", "0")
    try:
        _eventually(
            lambda: set(_pods_hit(checkout, url, 20)) == {"item-east-0"}, "traffic to leave west"
        )
    finally:
        weight("west", "--reset")
    _eventually(lambda: set(_pods_hit(checkout, url, 20)) == west_pods, "traffic back to west")
    assert set(_pods_hit(checkout, url, 20)) == west_pods


def test_a_sidecar_holds_only_its_nexus_services(lab: dict[str, Any]) -> None:
    """web's Nexus names shop/item and shop/echo; checkout's selects all of shop."""
    core = kubernetes.client.CoreV1Api(_api(lab, "west"))
    core.create_namespaced_service(
        "shop",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 8892, "targetPort": 8080}]},
        },
    )

    def clusters_of(sidecar: dict[str, Any]) -> set[str]:
        with urllib.request.urlopen(sidecar["admin"] + "/config_dump", timeout=5) as resp:
            dump = json.loads(resp.read())
        names: set[str] = set()
        for config in dump["configs"]:
            for key in ("dynamic_active_clusters", "dynamic_warming_clusters"):
                names |= {c["cluster"]["name"] for c in config.get(key, [])}
        return names - {"navigator-xds"}

    checkout = _sidecar(lab, "checkout", "west")
    _eventually(lambda: "shop/cart:8892" in clusters_of(checkout), "cart in checkout's config")
    try:
        for web in [s for s in lab["sidecars"] if s["app"] == "web"]:
            assert clusters_of(web) == {"shop/item:8890", "shop/echo:7000"}, web["node_id"]
    finally:
        core.delete_namespaced_service("cart", "shop")


def test_every_sidecar_answers_healthz_once_it_has_its_config(lab: dict[str, Any]) -> None:
    """The health listener comes from the control plane, with the rest of the config."""
    for sidecar in lab["sidecars"]:
        got = _eventually(
            lambda s=sidecar: (
                (r := _client(s, "get", "http://127.0.0.1:15021/healthz"))["status"] == 200 and r
            ),
            f"{sidecar['node_id']} /healthz",
        )
        assert got["body"] == "ok\n"
        # The whole path: the control plane's readiness, reached from the sidecar's pod.
        whole = _client(sidecar, "get", "http://127.0.0.1:15021/healthz/control-plane")
        assert whole["status"] == 200, whole


def test_an_ingress_routes_through_the_gateway_envoy(lab: dict[str, Any]) -> None:
    if not lab["gateways"]:
        pytest.skip("the host network runs no gateway")
    gw = lab["gateways"][0]
    web = _sidecar(lab, "web", "east")
    url = f"http://{gw['address']}/"
    hits = _eventually(
        lambda: (
            (h := _client(web, "http", url, "--count", "10", "--host", "shop.example.com"))["pods"]
            and not h["failed"]
            and h
        ),
        "shop.example.com through the gateway",
    )
    assert set(hits["pods"]) <= {"item-east-0", "item-east-1", "item-west-0", "item-west-1"}
    # A host no Ingress names gets Envoy's 404, not a backend.
    other = _client(web, "get", url)
    assert other["status"] == 404, other


def test_a_canary_release_splits_traffic_30_70_across_clusters(lab: dict[str, Any]) -> None:
    """CanaryRelease shop/item: 30 to shop/item, 70 to shop/item-canary (whose only pod is in
    west), counted from the east web sidecar; removing it restores the plain route."""
    pods = {p["pod"]: p["ip"] for p in lab["processes"] if p["role"] == "backend"}
    west = kubernetes.client.CoreV1Api(_api(lab, "west"))
    west.create_namespaced_service(
        "shop",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "item-canary", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 8890, "targetPort": 8080}]},
        },
    )
    west.create_namespaced_endpoints(
        "shop",
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "item-canary", "namespace": "shop"},
            "subsets": [
                {
                    "addresses": [
                        {"ip": pods["item-west-1"], "targetRef": {"name": "item-west-1"}}
                    ],
                    "ports": [{"name": "http", "port": 8080}],
                }
            ],
        },
    )
    crd = kubernetes.client.CustomObjectsApi(_api(lab, "east"))
    release = {
        "apiVersion": "navigator.avito.ru/v1",
        "kind": "CanaryRelease",
        "metadata": {"name": "item", "namespace": "shop"},
        "spec": {
            "backends": [
                {"namespace": "shop", "name": "item", "weight": 30},
                {"namespace": "shop", "name": "item-canary", "weight": 70},
            ]
        },
    }
    crd.create_namespaced_custom_object(
        "navigator.avito.ru", "v1", "shop", "canaryreleases", release
    )
    web = _sidecar(lab, "web", "east")
    url = f"http://{_ip(lab, 'item', 'east')}:8890/"
    try:
        _eventually(lambda: "item-west-1" in _pods_hit(web, url, 20), "the canary to take traffic")
        hits = _pods_hit(web, url, 1000)
        assert "<failed>" not in hits, hits
        canary_share = 100 * hits.get("item-west-1", 0) / 1000
        assert 65 <= canary_share <= 75, hits
    finally:
        crd.delete_namespaced_custom_object(
            "navigator.avito.ru", "v1", "shop", "canaryreleases", "item"
        )
    _eventually(lambda: "item-west-1" not in _pods_hit(web, url, 20), "the plain route back")
    west.delete_namespaced_service("item-canary", "shop")
    west.delete_namespaced_endpoints("item-canary", "shop")


def _dynamic_config(admin: str) -> dict[str, Any]:
    """What a sidecar got over xDS, from its admin: resources by type and name, no versions."""
    with urllib.request.urlopen(f"{admin}/config_dump?include_eds", timeout=5) as resp:
        return proxy.live_config(json.loads(resp.read()))[1]


def test_sotw_and_delta_sidecars_of_one_app_hold_identical_config(lab: dict[str, Any]) -> None:
    if lab["network"]["mode"] != "netns":
        pytest.skip("the host network runs one sidecar per cluster")
    pair = [s for s in lab["sidecars"] if s["app"] == "web" and s["cluster"] == "east"]
    assert sorted(s["xds"] for s in pair) == ["delta", "sotw"]
    sotw, delta = sorted(pair, key=lambda s: s["xds"], reverse=True)

    def same() -> dict[str, Any] | None:
        a, b = _dynamic_config(sotw["admin"]), _dynamic_config(delta["admin"])
        return a if a == b and a["cds"] and a["eds"] else None

    config = _eventually(same, "the SotW and the Delta sidecar to converge")
    assert {"lds", "rds"} <= {k for k, v in config.items() if v}


def _etcd_args(lab: dict[str, Any]) -> list[str]:
    """``--etcd`` and, when the lab runs etcd with TLS, root's client certificate."""
    tls = lab.get("etcd_tls")
    out = ["--etcd", lab["etcd"][0]]
    if tls:
        out += ["--etcd-ca", tls["ca"], "--etcd-cert", tls["cert"], "--etcd-key", tls["key"]]
    return out
