"""The real kubectl binary against the local API server, with no ``--validate=false``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from navigator.kubeapi.server import KubeApiServer

Kubectl = Callable[..., Awaitable[tuple[int, str, str]]]  # the ``kubectl`` fixture

MANIFESTS = {
    "svc.yaml": """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
""",
    "ep.yaml": """
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: apps}
subsets:
- addresses: [{ip: 10.1.0.5, nodeName: node-1}]
  ports: [{name: http, port: 8080, protocol: TCP}]
""",
    "canary.yaml": """
apiVersion: navigator.avito.ru/v1
kind: CanaryRelease
metadata: {name: web, namespace: apps}
spec:
  backends:
  - {namespace: apps, name: web, weight: 90}
  - {namespace: apps, name: web-canary, weight: 10}
""",
    "nexus.yaml": """
apiVersion: navigator.avito.ru/v1
kind: Nexus
metadata: {name: web, namespace: apps}
spec:
  appName: web
  services: [{namespace: apps, name: web}]
""",
    "gateway.yaml": """
apiVersion: navigator.avito.ru/v1
kind: Gateway
metadata: {name: edge, namespace: apps}
spec: {ingressClass: nginx, port: 8080}
""",
}


async def test_kubectl_lifecycle(kubectl: Kubectl, kube: KubeApiServer, tmp_path: Path) -> None:
    for name, text in MANIFESTS.items():
        (tmp_path / name).write_text(text)
    files = [str(tmp_path / n) for n in MANIFESTS]
    args = [a for f in files for a in ("-f", f)]

    rc, out, err = await kubectl("create", *args)
    assert rc == 0, err
    assert out.split("\n")[:5] == [
        "service/web created", "endpoints/web created",
        "canaryrelease.navigator.avito.ru/web created", "nexus.navigator.avito.ru/web created",
        "gateway.navigator.avito.ru/edge created"]

    rc, out, err = await kubectl("get", "svc", "-A")
    assert rc == 0, err
    assert out.split("\n")[1].split()[:2] == ["apps", "web"]
    rc, out, err = await kubectl("get", "nexus", "-n", "apps", "-o", "name")
    assert (rc, out) == (0, "nexus.navigator.avito.ru/web\n"), err
    rc, out, err = await kubectl("get", "ep,canaryreleases,gateways", "-n", "apps", "-o", "json")
    assert rc == 0, err
    kinds = [item["kind"] for item in json.loads(out)["items"]]
    assert kinds == ["Endpoints", "CanaryRelease", "Gateway"]

    rc, out, err = await kubectl("replace", *args)
    assert rc == 0, err
    assert out.count("replaced") == 5

    rc, out, err = await kubectl("patch", "svc", "web", "-n", "apps", "--type=merge",
                                 "-p", '{"spec":{"ports":[{"name":"http","port":81}]}}')
    assert (rc, out) == (0, "service/web patched\n"), err
    assert kube.store.get("v1", "Service", "web", "apps")["spec"]["ports"][0]["port"] == 81
    rc, out, err = await kubectl("patch", "nexus", "web", "-n", "apps", "--type=merge",
                                 "-p", '{"spec":{"appName":"web2"}}')
    assert rc == 0, err
    nexus = kube.store.get("navigator.avito.ru/v1", "Nexus", "web", "apps")
    assert nexus["spec"]["appName"] == "web2" and nexus["metadata"]["generation"] == 2
    rc, out, err = await kubectl("patch", "gateway", "edge", "-n", "apps", "--type=json",
                                 "-p", '[{"op":"replace","path":"/spec/port","value":9090}]')
    assert rc == 0, err

    rc, out, err = await kubectl("delete", *args)
    assert rc == 0, err
    assert out.count("deleted") == 5
    rc, out, err = await kubectl("get", "svc,ep,nexus", "-n", "apps")
    assert rc == 0 and "No resources found" in err


async def test_kubectl_rejects_unknown_and_mistyped_fields(
        kubectl: Kubectl, tmp_path: Path) -> None:
    cases = {
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {foo: 1}\n":
            'Error from server (BadRequest): error when creating "{f}": strict decoding '
            'error: unknown field "spec.foo"',
        "apiVersion: navigator.avito.ru/v1\nkind: Nexus\nmetadata: {name: bad}\n"
        "spec: {services: [{name: a, port: 1}]}\n":
            'Error from server (BadRequest): error when creating "{f}": strict decoding '
            'error: unknown field "spec.services[0].port"',
        "apiVersion: navigator.avito.ru/v1\nkind: Gateway\nmetadata: {name: bad}\n"
        "spec: {port: http}\n":
            'The Gateway "bad" is invalid: spec.port: Invalid value: "string": spec.port in '
            'body must be of type integer: "string"',
    }
    for i, (manifest, want) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(manifest)
        rc, _, err = await kubectl("create", "-f", str(path))
        assert rc == 1
        assert err.strip() == want.replace("{f}", str(path))
