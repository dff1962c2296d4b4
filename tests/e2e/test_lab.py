"""The core loop end to end through ``navigator lab``: Kubernetes → etcd → translator → xDS → Envoy.

The lab runs as the user runs it (a subprocess with a state directory); the tests read
``lab.json``, change objects through the API servers with the official client, and send real
requests through the real Envoy sidecars to the real backends, counting where they went.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest

T = TypeVar("T")

STARTUP_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("lab")
    log = open(state / "lab.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "navigator", "lab", "--state-dir", str(state)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        lab_json = state / "lab.json"
        while not lab_json.exists():
            if proc.poll() is not None:
                pytest.fail(f"lab exited with {proc.returncode}:\n{_tail(state / 'lab.out')}")
            if time.monotonic() > deadline:
                pytest.fail(f"lab not up in {STARTUP_TIMEOUT}s:\n{_tail(state / 'lab.out')}")
            time.sleep(0.1)
        doc: dict[str, Any] = json.loads(lab_json.read_text())
        doc["_state"] = state
        yield doc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    # Nothing the lab started may survive it.
    for p in doc["processes"]:
        assert not _alive(p["pid"]), f"{p['name']} (pid {p['pid']}) survived the lab"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose: it holds no socket.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _api(lab: dict[str, Any], cluster: str) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(
        config_file=lab["kubeconfig"], context=cluster
    )


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None


def _eventually(fn: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _pods_hit(url: str, n: int) -> collections.Counter[str]:
    hits: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        body = _get(url)
        hits[body["pod"] if body else "<failed>"] += 1
    return hits


def test_lab_reports_ready_and_lists_every_role(lab: dict[str, Any]) -> None:
    with urllib.request.urlopen(f"http://{lab['http']}/readyz", timeout=2) as resp:
        assert resp.status == 200
    roles = {p["role"] for p in lab["processes"]}
    assert roles == {"etcd", "kube-api", "watcher", "translator", "xds", "envoy", "backend"}
    assert {c["name"] for c in lab["clusters"]} == {"east", "west"}


def test_traffic_by_cluster_ip_reaches_pods_of_both_clusters(lab: dict[str, Any]) -> None:
    item = next(s for s in lab["services"] if s["name"] == "item")
    url = f"http://{item['cluster_ips']['east']}:8890/"
    _eventually(lambda: _get(url), "shop/item through the east sidecar")
    hits = _pods_hit(url, 60)
    assert set(hits) == {"item-east-0", "item-east-1", "item-west-0", "item-west-1"}, hits
    # Round robin over four pods: each gets a fair share.
    assert min(hits.values()) >= 10, hits


def test_l4_port_carries_raw_tcp(lab: dict[str, Any]) -> None:
    echo = next(s for s in lab["services"] if s["name"] == "echo")
    payload = b"\x00binary\xffpayload\n" * 100

    def roundtrip() -> bytes | None:
        try:
            with socket.create_connection((echo["cluster_ips"]["west"], 7000), timeout=2) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data or None
        except OSError:
            return None

    assert _eventually(roundtrip, "echo through the west sidecar") == payload


def test_deleting_an_endpoint_moves_traffic_away(lab: dict[str, Any]) -> None:
    item = next(s for s in lab["services"] if s["name"] == "item")
    url = f"http://{item['cluster_ips']['east']}:8890/"
    core = kubernetes.client.CoreV1Api(_api(lab, "east"))
    eps = core.read_namespaced_endpoints("item", "shop")
    eps.subsets[0].addresses = [a for a in eps.subsets[0].addresses if a.ip != "127.21.0.11"]
    core.replace_namespaced_endpoints("item", "shop", eps)

    def moved() -> bool:
        return "item-east-1" not in _pods_hit(url, 20)

    _eventually(moved, "traffic to leave item-east-1")
    hits = _pods_hit(url, 40)
    assert set(hits) == {"item-east-0", "item-west-0", "item-west-1"}, hits


def test_new_service_becomes_reachable_and_deleted_one_disappears(lab: dict[str, Any]) -> None:
    core = kubernetes.client.CoreV1Api(_api(lab, "west"))
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fresh", "namespace": "shop"},
        "spec": {
            "clusterIP": "127.32.0.30",
            "ports": [{"name": "http", "port": 8891, "targetPort": 8080}],
        },
    }
    eps = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "fresh", "namespace": "shop"},
        "subsets": [
            {
                "addresses": [{"ip": "127.22.0.10", "targetRef": {"name": "item-west-0"}}],
                "ports": [{"name": "http", "port": 8080}],
            }
        ],
    }
    core.create_namespaced_service("shop", svc)
    core.create_namespaced_endpoints("shop", eps)
    url = "http://127.32.0.30:8891/"
    # The checkout sidecar's Nexus selects the whole shop namespace.
    body = _eventually(lambda: _get(url), "the new service through the checkout sidecar")
    assert body["pod"] == "item-west-0"

    core.delete_namespaced_service("fresh", "shop")
    core.delete_namespaced_endpoints("fresh", "shop")

    def refused() -> bool:
        try:
            with socket.create_connection(("127.32.0.30", 8891), timeout=1):
                return False
        except OSError:
            return True

    _eventually(refused, "the deleted service's listener to go")
