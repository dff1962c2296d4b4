"""The Kubernetes deployment (``deploy/``) against Kubernetes' schemas and against the code.

The manifests run the project's commands with flags, ports and files that must agree with
each other and with the code; every such agreement is asserted here, computed from the code
wherever the code states it:

- every kustomization renders (``kubectl kustomize``) and every object it makes validates
  against Kubernetes 1.32's schemas (``kubernetes-validate``, strict); no YAML file under
  ``deploy/`` escapes that;
- the overlays differ in what is the cluster's (its name, its etcd endpoints) and nothing else;
- RBAC is least privilege per component (``ACCESS``): the watcher may list and watch exactly
  the collections of ``navigator.watcher.informer.RESOURCES``, the front-end only create
  TokenReviews, the translator and the balancer get no token; no wildcard, no secrets, no
  role but the component's own, bound to its own ServiceAccount only;
- each component reaches etcd with its own client certificate (its Secret, whose CN is its
  user of ``coordinator.auth``), and the TLS of both hops to the front-ends is wired: the
  front-ends' certificate and client CA, the balancer's node and client certificates, the
  sidecar's projected token (audience = the front-ends' ``--token-audience``) and mesh CA;
- the CRDs accept the examples and what the code accepts, and reject only what the code
  rejects too (converter, local API server, translation or key schema), with the local API
  server's own schemas for the same fields;
- the front-ends, the headless Service, the balancer and the sidecar template agree on ports
  and names, and their shell commands actually run: the balancer's and the sidecar's Envoy
  configs are rendered by the manifests' own scripts and validated by the real Envoy
  (``envoy --mode validate``, with real PEM files and a token at the mounted paths), the
  iptables redirect is run against a recording ``iptables``;
- the Grafana dashboard queries only metrics the code defines.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from coordinator import auth
from navigator import balancer, bootstrap, keys, model, pki
from navigator.kubeapi import resources as kube_resources
from navigator.kubeapi import store as kube_store
from navigator.kubeapi import validation as kube_validation
from navigator.lab import procs
from navigator.watcher import convert, informer
from shards import canary, gateway, translate

Doc = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE_TOOLS = DEPLOY / "image"
KUBERNETES_VERSION = "1.32"
NAMESPACE = "navigator-system"
CLUSTERS = ("east", "west")
EXAMPLE_APP = DEPLOY / "examples" / "web"
HOST_IP = "10.0.0.5"

# --- rendering ------------------------------------------------------------------------------


def _kustomization(directory: Path) -> Doc:
    doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(doc, dict), directory
    return doc


def _kustomize_dirs(kind: str) -> list[Path]:
    return sorted(
        p.parent
        for p in DEPLOY.rglob("kustomization.yaml")
        if _kustomization(p.parent)["kind"] == kind
    )


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@functools.cache
def _kustomize_output(directory: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed: cannot render the kustomizations (kubectl kustomize)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", directory], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return done.stdout


def render(directory: Path) -> list[Doc]:
    """The objects ``kubectl kustomize DIRECTORY`` makes (skips the test without kubectl)."""
    return [d for d in yaml.safe_load_all(_kustomize_output(str(directory))) if d is not None]


def render_app(cluster: str, tmp_path: Path) -> list[Doc]:
    """The example app with the sidecar component of ``cluster``, rendered from a scratch dir."""
    work = tmp_path / f"app-{cluster}"
    work.mkdir()
    resources = _kustomization(EXAMPLE_APP)["resources"]
    for name in resources:
        shutil.copy(EXAMPLE_APP / name, work / name)
    component = os.path.relpath(DEPLOY / "overlays" / cluster / "sidecar", work)
    (work / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": resources,
                "components": [component],
            }
        )
    )
    return render(work)


@pytest.fixture(scope="session")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """The example app rendered with each cluster's sidecar component (once per session)."""
    scratch = tmp_path_factory.mktemp("apps")
    return {cluster: render_app(cluster, scratch) for cluster in CLUSTERS}


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"want one {kind} {name}, found {len(found)}"
    return found[0]


def find_generated(docs: list[Doc], kind: str, name: str) -> Doc:
    """A generated object, whatever its hash suffix."""
    found = [d for d in docs if d["kind"] == kind and _unhashed(d["metadata"]["name"]) == name]
    assert len(found) == 1, f"want one {kind} {name}-<hash>, found {len(found)}"
    return found[0]


def _unhashed(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) of every Deployment, DaemonSet and StatefulSet."""
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            yield d, d["spec"]["template"]


def container(template: Doc, name: str, *, init: bool = False) -> Doc:
    field = "initContainers" if init else "containers"
    found = [c for c in template["spec"].get(field, []) if c["name"] == name]
    assert len(found) == 1, f"want one {field[:-1]} {name}"
    return found[0]


# --- what kubelet does with a container's env and command ----------------------------------

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _expand(value: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def container_env(
    c: Doc, docs: list[Doc], template: Doc, *, pod_name: str = "pod-0", namespace: str = NAMESPACE
) -> dict[str, str]:
    """The environment kubelet gives ``c``; every ConfigMap reference must resolve in ``docs``."""
    meta = template.get("metadata", {})
    fields = {
        "metadata.name": pod_name,
        "metadata.namespace": namespace,
        "status.hostIP": HOST_IP,
        "status.podIP": "10.1.0.9",
        "spec.nodeName": "node-1",
        # NOTE: the ServiceAccount admission plugin sets it when the pod does not.
        "spec.serviceAccountName": template["spec"].get("serviceAccountName", "default"),
    }
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(e["value"], env)
            continue
        ref = e["valueFrom"]
        if "configMapKeyRef" in ref:
            cm = find(docs, "ConfigMap", ref["configMapKeyRef"]["name"])
            env[e["name"]] = cm["data"][ref["configMapKeyRef"]["key"]]
        elif "fieldRef" in ref:
            path = ref["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
            if label:
                env[e["name"]] = meta.get(label.group(1), {}).get(label.group(2), "")
            else:
                env[e["name"]] = fields[path]
        else:
            raise AssertionError(f"unexpected env source {ref}")
    return env


def command_line(c: Doc, env: dict[str, str]) -> list[str]:
    return [_expand(a, env) for a in [*c.get("command", []), *c.get("args", [])]]


def flag(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name}= given {len(values)} times in {argv}"
    return values[0]


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def container_port(c: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p.get("name") == port)


# --- running the manifests' own scripts -----------------------------------------------------


@pytest.fixture
def toolbox(tmp_path: Path) -> tuple[Path, Path]:
    """A bin directory standing for the image: ``navigator`` and the deploy/image helpers
    from this checkout, ``envoy`` that validates instead of running, and an ``iptables`` that
    records its calls. Returns (bin directory, the iptables log)."""
    try:
        envoy = procs.envoy_binary()
    except procs.ProcError as exc:
        pytest.skip(f"no Envoy to validate the configs with: {exc}")
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed: cannot run the manifests' scripts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "iptables.log"
    state = tmp_path / "iptables-state"
    state.mkdir()
    tools = {
        "navigator": f'exec "{sys.executable}" -m navigator "$@"',
        "navigator-iptables": f'exec sh "{IMAGE_TOOLS / "navigator-iptables"}" "$@"',
        "envoy": f'exec "{envoy}" --mode validate "$@"',
        # NOTE: remembers the chain and the OUTPUT jump, as the kernel would.
        "iptables": f"""echo "$*" >> "{log}"
case " $* " in
*" -N "*) touch "{state}/chain" ;;
*" -L "*) [ -e "{state}/chain" ] || exit 1 ;;
*" -A OUTPUT "*) touch "{state}/jump" ;;
*" -C OUTPUT "*) [ -e "{state}/jump" ] || exit 1 ;;
esac""",
    }
    for name, body in tools.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return bin_dir, log


TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsibmF2aWdhdG9yIl19.c2lnbmF0dXJl"
"""A projected token's shape; only the front-ends read it (with the TokenReview API)."""


@functools.cache
def _pem() -> dict[str, bytes]:
    """Real PEM files, as Envoy loads them even with ``--mode validate``: a CA, and one
    certificate (for the node's address and the front-ends' name) with its key."""
    ca = pki.new_ca("navigator-deploy-test")
    cert = pki.issue_server(
        ca, name="navigator-deploy-test", hosts=[HOST_IP, balancer.DEFAULT_FRONTEND_SAN]
    )
    return {"ca.crt": ca.cert_pem(), "tls.crt": cert.cert_pem(), "tls.key": cert.key_pem()}


def _volume_files(volume: Doc) -> dict[str, bytes]:
    """What the kubelet puts in ``volume``, with test material: a certificate Secret's three
    files (as cert-manager writes them; the node's certificate directory too), the mesh CA
    ConfigMap's ``ca.crt``, a projected service-account token; an emptyDir is empty."""
    if "secret" in volume or "hostPath" in volume:
        return dict(_pem())
    if "configMap" in volume:
        return {"ca.crt": _pem()["ca.crt"]}
    if "projected" in volume:
        return {
            s["serviceAccountToken"]["path"]: TOKEN.encode()
            for s in volume["projected"]["sources"]
            if "serviceAccountToken" in s
        }
    assert "emptyDir" in volume, f"unexpected volume {volume}"
    return {}


def _remap(text: str, mounts: dict[str, Path]) -> str:
    """``text`` with every mount path (a whole path segment, longest first) made scratch."""
    for mount in sorted(mounts, key=len, reverse=True):
        where = str(mounts[mount]).replace("\\", "\\\\")
        text = re.sub(re.escape(mount) + r"(?![\w.-])", where, text)
    return text


def unmapped(path: str, mounts: dict[str, Path]) -> str:
    """The path in the container of a scratch ``path``."""
    for mount, where in mounts.items():
        if path == str(where) or path.startswith(f"{where}/"):
            return mount + path[len(str(where)) :]
    raise AssertionError(f"{path} is under no mount of the container")


def run_container(
    c: Doc, env: dict[str, str], bin_dir: Path, tmp_path: Path, *, template: Doc | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
    """Runs a container's command with its env and its volume mounts as scratch directories,
    filled (``_volume_files``) from ``template``'s volumes.

    NOTE: the container sees only its own mounts: the paths in its command line, and in the
    files of its emptyDir mounts (a config an init container rendered), are made scratch
    for its mounts only, so a file it reads through a volume it does not mount stays missing.
    """
    volumes = {v["name"]: v for v in (template or {}).get("spec", {}).get("volumes", [])}
    mounts = {}
    for vm in c.get("volumeMounts", []):
        where = tmp_path / "volumes" / vm["name"]
        where.mkdir(parents=True, exist_ok=True)
        mounts[vm["mountPath"]] = where
        for name, data in _volume_files(volumes.get(vm["name"], {"emptyDir": {}})).items():
            file = where / name
            if not file.exists():
                file.write_bytes(data)
                file.chmod(0o600 if name.endswith(".key") else 0o644)
    for vm in c.get("volumeMounts", []):
        if "emptyDir" in volumes.get(vm["name"], {"emptyDir": {}}):
            for file in mounts[vm["mountPath"]].iterdir():
                file.write_text(_remap(file.read_text(), mounts))
    argv = [_remap(a, mounts) for a in command_line(c, env)]
    if argv[0].startswith("/bin/"):
        argv[0] = Path(argv[0]).name
    path = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    done = subprocess.run(
        argv,
        env={**env, "PATH": path, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        executable=shutil.which(argv[0], path=path),
    )
    return done, mounts


# --- 1. Kubernetes schemas ------------------------------------------------------------------


def test_the_expected_kustomizations_exist() -> None:
    found = {_rel(p) for p in _kustomize_dirs("Kustomization")}
    assert found >= {
        "deploy/crds",
        "deploy/base",
        "deploy/overlays/east",
        "deploy/overlays/west",
        "deploy/examples/web",
    }
    components = {_rel(p) for p in _kustomize_dirs("Component")}
    assert components == {"deploy/sidecar", *(f"deploy/overlays/{c}/sidecar" for c in CLUSTERS)}


_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
_KEY_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
]  # fmt: skip


def _closed(properties: Doc, *required: str) -> Doc:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


CERTIFICATE_SCHEMA = _closed(
    {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": _closed({"name": {"type": "string"}, "namespace": {"type": "string"}}, "name"),
        "spec": _closed(
            {
                "secretName": {"type": "string"},
                "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": _STRINGS,
                "ipAddresses": _STRINGS,
                "duration": _GO_DURATION,
                "renewBefore": _GO_DURATION,
                "usages": {"type": "array", "items": {"enum": _KEY_USAGES}},
                "privateKey": _closed(
                    {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                    }
                ),
                "issuerRef": _closed(
                    {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "group": {"type": "string"},
                    },
                    "name",
                ),
            },
            "secretName",
            "issuerRef",
        ),
    },
    "apiVersion",
    "kind",
    "metadata",
    "spec",
)
"""cert-manager's ``Certificate`` (``cert-manager.io/v1``, cert-manager 1.x), the fields
``deploy/examples/certificates`` uses, typed as in its CRD: kubernetes-validate has no schema
for it. Closed objects, so a misspelt or unknown field is refused as the API server would."""


def validate(doc: Doc) -> None:
    """Against Kubernetes 1.32's schemas (strict), or ``CERTIFICATE_SCHEMA``."""
    if doc["apiVersion"].startswith("cert-manager.io/"):
        jsonschema.Draft7Validator(CERTIFICATE_SCHEMA).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("directory", _kustomize_dirs("Kustomization"), ids=_rel)
def test_every_kustomization_renders_valid_kubernetes_objects(directory: Path) -> None:
    docs = render(directory)
    assert docs, f"{_rel(directory)} renders nothing"
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_each_clusters_sidecar_renders_onto_an_app(
    cluster: str, apps: dict[str, list[Doc]]
) -> None:
    docs = apps[cluster]
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Deployment"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_malformed_object() -> None:
    """The check above can fail: strict validation refuses a field Kubernetes lacks."""
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPrt": 8080}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_the_certificate_schema_refuses_a_misspelt_field() -> None:
    (good, *_) = render(DEPLOY / "examples" / "certificates")
    validate(good)
    for path, value in (
        (("spec", "dnsName"), ["x"]),
        (("spec", "privateKey", "encoding"), "pkcs8"),
        (("spec", "usages"), ["client-auth"]),
        (("spec", "duration"), "90d"),
    ):
        bad = copy.deepcopy(good)
        functools.reduce(lambda d, k: d[k], path[:-1], bad)[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)


def _reachable(directory: Path, seen: set[Path]) -> None:
    kustomization = _kustomization(directory)
    seen.add(directory / "kustomization.yaml")
    for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        target = (directory / entry).resolve()
        if target.is_dir():
            _reachable(target, seen)
        else:
            seen.add(target)
    for patch in kustomization.get("patches", []):
        if "path" in patch:
            seen.add((directory / patch["path"]).resolve())


def test_no_manifest_escapes_validation() -> None:
    """Every YAML file under deploy/ is part of something the tests above render."""
    seen: set[Path] = set()
    roots = [
        *_kustomize_dirs("Kustomization"),
        *(DEPLOY / "overlays" / c / "sidecar" for c in CLUSTERS),
    ]
    for root in roots:
        _reachable(root.resolve(), seen)
    # NOTE: deploy/chaos/ holds faults applied one at a time, checked by test_chaos_manifests.
    files = {p.resolve() for p in DEPLOY.rglob("*.y*ml") if DEPLOY / "chaos" not in p.parents}
    assert files - seen == set(), "not rendered by any kustomization"
    assert seen - files == set(), "referenced but missing"


# --- 2. overlays ----------------------------------------------------------------------------


def _normalized(docs: list[Doc]) -> list[Doc]:
    """The objects with hash suffixes and the per-cluster ConfigMaps' values taken out."""
    text = json.dumps(docs, sort_keys=True)
    text = re.sub(r'"(navigator-(?:cluster|etcd))-[a-z0-9]{10}"', r'"\1"', text)
    out = json.loads(text)
    for d in out:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "navigator-cluster":
            d["data"].pop("NAVIGATOR_CLUSTER")
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "navigator-etcd":
            d["data"].pop("NAVIGATOR_ETCD")
    return out


def test_overlays_differ_in_the_cluster_name_and_etcd_endpoints_only() -> None:
    east, west = (render(DEPLOY / "overlays" / c) for c in CLUSTERS)
    assert _normalized(east) == _normalized(west)
    etcd = {}
    for cluster, docs in zip(CLUSTERS, (east, west), strict=True):
        _, template = next(
            (w, t) for w, t in pod_templates(docs) if w["metadata"]["name"] == "navigator-watcher"
        )
        c = container(template, "watcher")
        argv = command_line(c, container_env(c, docs, template))
        assert argv[:2] == ["navigator", "watcher"]
        assert flag(argv, "cluster") == cluster
        endpoints = find_generated(docs, "ConfigMap", "navigator-etcd")["data"]["NAVIGATOR_ETCD"]
        etcd[cluster] = endpoints.split(",")
        assert all(e.startswith("https://") for e in etcd[cluster]), "etcd takes client TLS"
    # NOTE: one etcd for the mesh, each cluster listing its nearest member first.
    assert sorted(etcd["east"]) == sorted(etcd["west"])
    assert etcd["east"][0] != etcd["west"][0]


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_every_member_id_names_its_cluster(cluster: str) -> None:
    docs = render(DEPLOY / "overlays" / cluster)
    ids = []
    for _, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            argv = command_line(c, container_env(c, docs, template))
            if argv[0] == "navigator":
                ids.append(flag(argv, "id"))
    assert ids == [f"pod-0.{cluster}"] * 3, (
        "watcher, translator and xds register as <pod>.<cluster>"
    )


# --- 3. RBAC: least privilege per component ------------------------------------------------

Grant = tuple[str, str, str]
"""(API group, resource, verb)."""

# NOTE: the informer lists (GET on the collection) and watches, never GETs one object.
WATCHER_GRANTS = frozenset(
    (r.group, r.plural, verb) for r in informer.RESOURCES for verb in ("list", "watch")
)
ACCESS: dict[str, frozenset[Grant] | None] = {
    "navigator-watcher": WATCHER_GRANTS,
    # NOTE: navigator.tokenreview's one call, create_token_review (--authn token).
    "navigator-xds": frozenset({("authentication.k8s.io", "tokenreviews", "create")}),
    "navigator-translator": None,
    "navigator-balancer": None,
}
"""What each component's ServiceAccount (named after its workload) may do with the
Kubernetes API; None: it gets no token at all."""

ETCD_USERS = {
    "navigator-watcher": auth.WATCHER,
    "navigator-translator": auth.TRANSLATOR,
    "navigator-xds": auth.XDS,
}
"""The etcd user (its client certificate's CN) of each component that talks to etcd."""


def etcd_secret(component: str) -> str:
    """The Secret of a component's etcd client certificate: ``navigator-etcd-watcher``..."""
    return f"navigator-etcd-{component.removeprefix('navigator-')}"


@pytest.fixture(scope="module", params=CLUSTERS)
def control_plane(request: pytest.FixtureRequest) -> list[Doc]:
    return render(DEPLOY / "overlays" / request.param)


def _roles(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("ClusterRole", "Role")]


def _bindings(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]


def grants(docs: list[Doc], account: str) -> set[Grant]:
    """Everything the bindings of ``docs`` give the ServiceAccount ``account``; a role they
    refer to that ``docs`` do not define (a built-in one: cluster-admin, edit...) counts as
    every verb on everything."""
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    out: set[Grant] = set()
    for binding in _bindings(docs):
        if subject not in binding.get("subjects", []):
            continue
        ref = binding["roleRef"]
        roles = [
            r
            for r in _roles(docs)
            if (r["kind"], r["metadata"]["name"]) == (ref["kind"], ref["name"])
        ]
        if not roles:
            out.add(("*", "*", f"* (the role {ref['kind']} {ref['name']})"))
        for role in roles:
            for rule in role.get("rules", []):
                for group in rule.get("apiGroups", ["*"]):
                    for resource in rule.get("resources", ["*"]):
                        out |= {(group, resource, verb) for verb in rule["verbs"]}
    return out


@pytest.mark.parametrize("account", sorted(ACCESS))
def test_each_component_may_do_exactly_what_its_code_needs(
    control_plane: list[Doc], account: str
) -> None:
    assert grants(control_plane, account) == (ACCESS[account] or set())


@pytest.mark.parametrize("account", sorted(ACCESS))
def test_only_the_components_that_call_the_api_get_a_token(
    control_plane: list[Doc], account: str
) -> None:
    wants_token = ACCESS[account] is not None
    service_account = find(control_plane, "ServiceAccount", account)
    assert service_account.get("automountServiceAccountToken") is wants_token
    (template,) = [t for w, t in pod_templates(control_plane) if w["metadata"]["name"] == account]
    spec = template["spec"]
    assert spec["serviceAccountName"] == account
    # NOTE: said in the pod too: a pod's own setting wins over its ServiceAccount's.
    assert spec.get("automountServiceAccountToken") is wants_token
    projected = [v for v in spec.get("volumes", []) if "projected" in v]
    assert projected == [], "no token by another way either"


def test_every_workload_runs_as_its_own_service_account(control_plane: list[Doc]) -> None:
    accounts = {d["metadata"]["name"] for d in control_plane if d["kind"] == "ServiceAccount"}
    assert accounts == set(ACCESS)
    running = [t["spec"]["serviceAccountName"] for _, t in pod_templates(control_plane)]
    assert sorted(running) == sorted(ACCESS), "one workload per ServiceAccount"
    for workload, template in pod_templates(control_plane):
        assert template["spec"]["serviceAccountName"] == workload["metadata"]["name"]


def test_no_rule_has_a_wildcard_secrets_or_a_way_to_escalate(control_plane: list[Doc]) -> None:
    roles = _roles(control_plane)
    assert {r["metadata"]["name"] for r in roles} == {a for a, g in ACCESS.items() if g}
    for role in roles:
        name = role["metadata"]["name"]
        assert "aggregationRule" not in role, name
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, (
                f"{name}: no resourceNames, no nonResourceURLs"
            )
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in v for v in rule[field]), f"{name}: wildcard in {field}"
            assert not {"secrets", "serviceaccounts/token"} & set(rule["resources"]), name
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), name


def test_every_binding_binds_a_components_own_role_to_its_own_account(
    control_plane: list[Doc],
) -> None:
    bindings = _bindings(control_plane)
    assert {b["metadata"]["name"] for b in bindings} == {a for a, g in ACCESS.items() if g}
    defined = {(r["kind"], r["metadata"]["name"]) for r in _roles(control_plane)}
    for binding in bindings:
        name = binding["metadata"]["name"]
        assert binding["kind"] == "ClusterRoleBinding", name
        # NOTE: the role of the same name, defined here: never cluster-admin or another
        # built-in role, never another component's.
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": name,
        }
        assert ("ClusterRole", name) in defined
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}
        ]


def _rule(docs: list[Doc], role: str, index: int = 0) -> Doc:
    rule: Doc = find(docs, "ClusterRole", role)["rules"][index]
    return rule


def _subjects(docs: list[Doc], binding: str) -> list[Doc]:
    subjects: list[Doc] = find(docs, "ClusterRoleBinding", binding)["subjects"]
    return subjects


def _bind_translator(docs: list[Doc]) -> None:
    _subjects(docs, "navigator-xds").append(
        {"kind": "ServiceAccount", "name": "navigator-translator", "namespace": NAMESPACE}
    )


# NOTE: kustomize's namespace transformer already puts every ServiceAccount subject in
# navigator-system, so some of these cannot come out of deploy/ as it is written; the
# checks hold for what is applied, whatever the kustomization.
BREAKAGES = [
    pytest.param(
        lambda d: _rule(d, "navigator-watcher")["verbs"].append("get"),
        lambda d: test_each_component_may_do_exactly_what_its_code_needs(d, "navigator-watcher"),
        id="watcher-may-get",
    ),
    pytest.param(
        lambda d: _rule(d, "navigator-watcher")["resources"].append("pods"),
        lambda d: test_each_component_may_do_exactly_what_its_code_needs(d, "navigator-watcher"),
        id="watcher-reads-more",
    ),
    pytest.param(
        lambda d: _rule(d, "navigator-xds")["verbs"].append("list"),
        lambda d: test_each_component_may_do_exactly_what_its_code_needs(d, "navigator-xds"),
        id="front-end-lists-reviews",
    ),
    pytest.param(
        _bind_translator,
        lambda d: test_each_component_may_do_exactly_what_its_code_needs(d, "navigator-translator"),
        id="translator-bound",
    ),
    pytest.param(
        lambda d: find(d, "ServiceAccount", "navigator-balancer").update(
            automountServiceAccountToken=True
        ),
        lambda d: test_only_the_components_that_call_the_api_get_a_token(d, "navigator-balancer"),
        id="balancer-token",
    ),
    pytest.param(
        lambda d: _rule(d, "navigator-xds")["resources"].append("*"),
        test_no_rule_has_a_wildcard_secrets_or_a_way_to_escalate,
        id="wildcard-resource",
    ),
    pytest.param(
        lambda d: _rule(d, "navigator-watcher")["resources"].append("secrets"),
        test_no_rule_has_a_wildcard_secrets_or_a_way_to_escalate,
        id="secrets",
    ),
    pytest.param(
        lambda d: find(d, "ClusterRoleBinding", "navigator-xds")["roleRef"].update(
            name="cluster-admin"
        ),
        test_every_binding_binds_a_components_own_role_to_its_own_account,
        id="cluster-admin",
    ),
    pytest.param(
        lambda d: _subjects(d, "navigator-watcher")[0].update(namespace="default"),
        test_every_binding_binds_a_components_own_role_to_its_own_account,
        id="subject-in-another-namespace",
    ),
    pytest.param(
        _bind_translator,
        test_every_binding_binds_a_components_own_role_to_its_own_account,
        id="subject-of-another-component",
    ),
]


@pytest.mark.parametrize(("breakage", "check"), BREAKAGES)
def test_the_rbac_checks_can_fail(
    control_plane: list[Doc],
    breakage: Callable[[list[Doc]], None],
    check: Callable[[list[Doc]], None],
) -> None:
    """Each way a manifest could grant too much is seen by the checks above."""
    broken = copy.deepcopy(control_plane)
    breakage(broken)
    with pytest.raises(AssertionError):
        check(broken)


def test_the_watcher_uses_its_in_cluster_service_account(control_plane: list[Doc]) -> None:
    watcher = find(control_plane, "Deployment", "navigator-watcher")
    template = watcher["spec"]["template"]
    c = container(template, "watcher")
    argv = command_line(c, container_env(c, control_plane, template))
    assert not any(a.startswith("--kubeconfig") for a in argv)
    assert template["spec"]["serviceAccountName"] == "navigator-watcher"


# --- 3b. certificates: etcd per component, TLS to and from the front-ends --------------------


def mounted(template: Doc, c: Doc, path: str) -> Doc:
    """The volume that ``path`` is read from in container ``c`` (its longest mount prefix)."""
    found = [
        vm for vm in c.get("volumeMounts", []) if path.startswith(vm["mountPath"].rstrip("/") + "/")
    ]
    assert found, f"{path} is on no volume of {c['name']}"
    vm = max(found, key=lambda m: len(m["mountPath"]))
    assert vm.get("readOnly") is True, f"{vm['name']} is mounted read-write"
    assert "subPath" not in vm, "a subPath mount is not updated on renewal"
    volumes: list[Doc] = [v for v in template["spec"]["volumes"] if v["name"] == vm["name"]]
    (volume,) = volumes
    return volume


def etcd_flag(argv: list[str], env: dict[str, str], name: str) -> str:
    """``--etcd-NAME`` as the command takes it: the flag, else ``$NAVIGATOR_ETCD_NAME``."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith(f"--etcd-{name}=")]
    return given[-1] if given else env[f"NAVIGATOR_ETCD_{name.upper()}"]


def _certificates() -> dict[str, Doc]:
    """The example cert-manager Certificates, by the Secret each one writes."""
    docs = render(DEPLOY / "examples" / "certificates")
    return {d["spec"]["secretName"]: d for d in docs if d["kind"] == "Certificate"}


def test_each_component_mounts_only_its_own_etcd_certificate(control_plane: list[Doc]) -> None:
    clients = set()
    for workload, template in pod_templates(control_plane):
        name = workload["metadata"]["name"]
        etcd_secrets = {
            v["secret"]["secretName"]
            for v in template["spec"].get("volumes", [])
            if "secret" in v and v["secret"]["secretName"].startswith("navigator-etcd")
        }
        if name not in ETCD_USERS:
            assert etcd_secrets == set(), f"{name} does not talk to etcd"
            continue
        own = etcd_secret(name)
        assert etcd_secrets == {own}, name
        for c in template["spec"]["containers"]:
            env = container_env(c, control_plane, template)
            argv = command_line(c, env)
            if argv[0] != "navigator":
                continue
            clients.add(name)
            for part in ("ca", "cert", "key"):
                volume = mounted(template, c, etcd_flag(argv, env, part))
                assert volume.get("secret", {}).get("secretName") == own, (name, part)
    assert clients == set(ETCD_USERS)


def test_each_etcd_certificate_names_its_components_etcd_user() -> None:
    """The Secret a component mounts is issued with its etcd user as CN, for client auth."""
    certificates = _certificates()
    assert set(ETCD_USERS.values()) == {r.name for r in auth.ROLES}, "a user per role"
    issuers = set()
    for component, user in ETCD_USERS.items():
        cert = certificates[etcd_secret(component)]
        assert cert["spec"]["commonName"] == user
        assert "client auth" in cert["spec"]["usages"]
        assert "server auth" not in cert["spec"]["usages"]
        assert not {"dnsNames", "ipAddresses"} & set(cert["spec"])
        issuers.add(cert["spec"]["issuerRef"]["name"])
    (etcd_issuer,) = issuers
    mesh = {
        c["spec"]["issuerRef"]["name"]
        for s, c in certificates.items()
        if not s.startswith("navigator-etcd-")
    }
    assert etcd_issuer not in mesh, "no mesh certificate is an etcd identity"


def _config_map(volume: Doc) -> str:
    return str(volume.get("configMap", {}).get("name"))


def _secret(volume: Doc) -> str:
    return str(volume.get("secret", {}).get("secretName"))


MESH_CA = "navigator-mesh-ca"
"""The ConfigMap of the mesh CA (key ca.crt), in navigator-system and every app namespace."""


def _token_sources(template: Doc) -> list[Doc]:
    """The projected service-account tokens of a pod template's volumes."""
    return [
        s["serviceAccountToken"]
        for v in template["spec"].get("volumes", [])
        if "projected" in v
        for s in v["projected"]["sources"]
        if "serviceAccountToken" in s
    ]


def test_the_front_ends_take_only_balancers_and_authenticated_sidecars(
    control_plane: list[Doc], apps: dict[str, list[Doc]]
) -> None:
    _, template = _workload(control_plane, "DaemonSet", "navigator-xds")
    c = container(template, "xds")
    argv = _argv(control_plane, template, "xds")
    assert flag(argv, "authn") == "token"
    cluster = find_generated(control_plane, "ConfigMap", "navigator-cluster")["data"][
        "NAVIGATOR_CLUSTER"
    ]
    # NOTE: its own cluster's sidecars, through its own service account (the tokenreviews grant).
    assert flag(argv, "review-in-cluster") == cluster
    assert not any(a.startswith("--review-kubeconfig") for a in argv)
    for app_docs in apps.values():
        (token,) = _token_sources(app_deployment(app_docs)["spec"]["template"])
        assert flag(argv, "token-audience") == token["audience"]
    assert _secret(mounted(template, c, flag(argv, "tls-cert"))) == "navigator-xds-tls"
    assert _secret(mounted(template, c, flag(argv, "tls-key"))) == "navigator-xds-tls"
    assert _config_map(mounted(template, c, flag(argv, "tls-client-ca"))) == MESH_CA


def script_flags(c: Doc, command: str) -> dict[str, str]:
    """The ``--name=value`` options of ``navigator COMMAND`` in a container's shell script."""
    words = shlex.split(c["args"][0].replace("\\\n", " "))
    start = words.index(command)
    assert words[start - 1] == "navigator"
    args = words[start + 1 : words.index(">", start)]
    return dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--"))


def _balancer_flags(template: Doc) -> dict[str, str]:
    return script_flags(container(template, "config", init=True), "balancer-config")


def test_the_balancer_serves_its_nodes_certificate_and_shows_its_own_to_the_front_ends(
    control_plane: list[Doc],
) -> None:
    _, template = _workload(control_plane, "DaemonSet", "navigator-balancer")
    flags = _balancer_flags(template)
    envoy = container(template, "envoy")  # NOTE: Envoy reads the files, not the init container.
    for name in ("tls-cert", "tls-key"):
        volume = mounted(template, envoy, flags[name])
        assert volume["hostPath"] == {"path": "/etc/navigator/balancer-tls", "type": "Directory"}
    assert _config_map(mounted(template, envoy, flags["frontend-ca"])) == MESH_CA
    for name in ("client-cert", "client-key"):
        assert _secret(mounted(template, envoy, flags[name])) == "navigator-balancer-client"
    certificates = _certificates()
    frontend = certificates["navigator-xds-tls"]["spec"]
    assert flags["frontend-san"] == balancer.DEFAULT_FRONTEND_SAN
    assert flags["frontend-san"] in frontend["dnsNames"]
    assert "server auth" in frontend["usages"]
    host = balancer.Frontend.parse(flags["frontend"]).host
    assert host in frontend["dnsNames"], "the name the balancer dials"
    client = certificates["navigator-balancer-client"]["spec"]
    assert "client auth" in client["usages"]
    assert client["issuerRef"] == frontend["issuerRef"], "one mesh CA"


def test_every_secret_is_readable_by_the_containers_that_mount_it(
    control_plane: list[Doc],
) -> None:
    """Secret files are not world-readable (0440: root's and the pod's fsGroup's), so the
    non-root pods that mount one read it through their fsGroup."""
    checked = 0
    for workload, template in pod_templates(control_plane):
        spec = template["spec"]
        for volume in spec.get("volumes", []):
            if "secret" not in volume:
                continue
            checked += 1
            assert volume["secret"].get("defaultMode") == 0o440, volume["name"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert "fsGroup" in spec["securityContext"], workload["metadata"]["name"]
    assert checked == 5, "3 etcd Secrets, the front-ends' TLS, the balancers' client"


# --- 4. CRDs: schemas against the code ------------------------------------------------------


def _crds() -> dict[str, Doc]:
    out = {}
    for path in sorted((DEPLOY / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out[doc["spec"]["names"]["kind"]] = doc
    return out


CRDS = _crds()


# The CEL rules of the CRDs, each with a Python twin (jsonschema does not run CEL). A rule
# added to a CRD without a twin fails test_every_cel_rule_has_a_twin.
def _weights_sum_to_100(spec: Doc) -> bool:
    return sum(b["weight"] for b in spec["backends"]) == 100


def _no_backend_twice(spec: Doc) -> bool:
    seen = [(b.get("namespace", ""), b["name"]) for b in spec["backends"]]
    return len(seen) == len(set(seen))


CEL_TWINS: dict[str, Callable[[Doc], bool]] = {
    "self.backends.map(b, b.weight).sum() == 100": _weights_sum_to_100,
    "self.backends.all(b, self.backends.exists_one(c, c.name == b.name && "
    "(has(c.namespace) ? c.namespace : '') == (has(b.namespace) ? b.namespace : '')))": (
        _no_backend_twice
    ),
}


def _version(crd: Doc) -> Doc:
    (version,) = crd["spec"]["versions"]
    return version


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 structural schema as plain JSON Schema: objects with known properties
    refuse unknown fields, as the API server does with kubectl's fieldValidation=Strict."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _cel_errors(schema: Doc, value: Any) -> list[str]:
    errors = [
        rule["message"]
        for rule in schema.get("x-kubernetes-validations", [])
        if not CEL_TWINS[rule["rule"]](value)
    ]
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key])
    if isinstance(value, list) and "items" in schema:
        for item in value:
            errors += _cel_errors(schema["items"], item)
    return errors


def crd_errors(obj: Doc) -> list[str]:
    """Why the API server would refuse ``obj`` under its CRD (CEL runs on valid objects only)."""
    schema = _version(CRDS[obj["kind"]])["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(_strict(schema))
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    return errors or _cel_errors(schema, obj)


def local_api_problems(obj: Doc) -> list[str]:
    rt = kube_resources.by_kind(obj["apiVersion"], obj["kind"])
    assert rt is not None
    problems = kube_validation.Problems()
    rt.schema.check(obj, "", problems)
    return problems.unknown + [path for path, _, _ in problems.wrong_type]


def _examples() -> list[Doc]:
    out = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        out += [
            d
            for d in yaml.safe_load_all(path.read_text())
            if d and str(d.get("apiVersion", "")).startswith("navigator.avito.ru/")
        ]
    return out


def test_every_cel_rule_has_a_twin() -> None:
    rules = set()

    def walk(schema: Any) -> None:
        if isinstance(schema, dict):
            rules.update(r["rule"] for r in schema.get("x-kubernetes-validations", []))
            for v in schema.values():
                walk(v)
        elif isinstance(schema, list):
            for v in schema:
                walk(v)

    for crd in CRDS.values():
        walk(crd)
    assert rules == set(CEL_TWINS)


def test_the_crds_are_the_custom_kinds_the_watcher_reads() -> None:
    custom = {r.plural: r for r in informer.RESOURCES if r.custom}
    assert {crd["spec"]["names"]["plural"] for crd in CRDS.values()} == set(custom)
    for kind, crd in CRDS.items():
        resource = custom[crd["spec"]["names"]["plural"]]
        assert crd["metadata"]["name"] == f"{resource.plural}.{resource.group}"
        assert crd["spec"]["group"] == resource.group
        version = _version(crd)
        assert (version["name"], version["served"], version["storage"]) == (
            resource.version,
            True,
            True,
        )
        assert crd["spec"]["scope"] == "Namespaced"
        assert version["additionalPrinterColumns"], kind


def _shape(schema: Doc, path: str = "") -> dict[str, str]:
    """path -> type of every field, ``any`` where unknown fields are kept."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return {path: "any"}
    out = {path: schema["type"]}
    for key, sub in schema.get("properties", {}).items():
        out |= _shape(sub, f"{path}.{key}")
    if "items" in schema:
        out |= _shape(schema["items"], f"{path}[]")
    return out


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_the_crds_agree_with_the_local_api_server(kind: str) -> None:
    """The same fields with the same types, the same names, scope and status subresource."""
    crd = CRDS[kind]
    rt = kube_resources.by_kind(f"{crd['spec']['group']}/v1", kind)
    assert rt is not None and rt.crd
    ours = _version(crd)["schema"]["openAPIV3Schema"]["properties"]
    theirs = rt.schema.openapi()["properties"]
    for field in ("spec", "status"):
        assert _shape(ours[field]) == _shape(theirs[field]), field
    assert rt.plural == crd["spec"]["names"]["plural"]
    assert rt.namespaced == (crd["spec"]["scope"] == "Namespaced")
    assert rt.status_subresource == ("status" in _version(crd).get("subresources", {}))


def test_every_example_is_accepted_by_the_crds_and_the_local_api_server() -> None:
    examples = _examples()
    assert {d["kind"] for d in examples} >= {"Nexus", "Gateway"}
    for obj in examples:
        assert crd_errors(obj) == [], obj["metadata"]
        assert local_api_problems(obj) == [], obj["metadata"]
        convert.convert(model.ClusterName("east"), _kind(obj), obj)


def _kind(obj: Doc) -> model.Kind:
    return next(
        r.kind
        for r in informer.RESOURCES
        if r.custom and r.plural == CRDS[obj["kind"]]["spec"]["names"]["plural"]
    )


def _cr(kind: str, spec: Any, **top: Any) -> Doc:
    obj = {
        "apiVersion": "navigator.avito.ru/v1",
        "kind": kind,
        "metadata": {"name": "item", "namespace": "shop"},
        **top,
    }
    if spec is not None:
        obj["spec"] = spec
    return obj


def _canary(*backends: Doc) -> Doc:
    return _cr("CanaryRelease", {"backends": list(backends)})


VALID = [
    pytest.param(
        _canary({"name": "item", "weight": 90}, {"name": "item-canary", "weight": 10}),
        id="canary-90-10",
    ),
    pytest.param(
        _canary({"name": "item", "weight": 100}, {"name": "item-old", "weight": 0}),
        id="canary-drained-backend",
    ),
    pytest.param(
        _canary(
            {"name": "item", "weight": 50}, {"namespace": "shop-next", "name": "item", "weight": 50}
        ),
        id="canary-backend-in-another-namespace",
    ),
    pytest.param(
        _canary({"name": "item", "weight": 50}, {"namespace": "", "name": "item-b", "weight": 50}),
        id="canary-empty-namespace-is-own",
    ),
    pytest.param(_cr("Nexus", {"appName": "web"}), id="nexus-without-services"),
    pytest.param(
        _cr("Nexus", {"appName": "web", "services": [{"name": "item"}]}), id="nexus-own-namespace"
    ),
    pytest.param(
        _cr("Nexus", {"appName": "web", "services": [{"namespace": "shop"}]}),
        id="nexus-whole-namespace",
    ),
    pytest.param(_cr("Nexus", {"appName": "web", "services": [{}]}), id="nexus-empty-entry"),
    pytest.param(
        _cr("Nexus", {"appName": "web"}, status={"anything": [1]}), id="nexus-free-status"
    ),
    pytest.param(
        _cr("Gateway", {"ingressClass": "public", "port": 65535}), id="gateway-port-65535"
    ),
    pytest.param(
        _cr("Gateway", {"ingressClass": "Legacy_Class", "port": 1}), id="gateway-legacy-class-name"
    ),
]


@pytest.mark.parametrize("obj", VALID)
def test_what_the_code_accepts_the_crds_accept(obj: Doc) -> None:
    assert crd_errors(obj) == []
    assert local_api_problems(obj) == []
    converted = convert.convert(model.ClusterName("east"), _kind(obj), obj)
    if isinstance(converted, model.CanaryRelease):
        assert _canary_diagnostics(converted) == []


def _canary_diagnostics(release: model.CanaryRelease) -> list[translate.Diagnostic]:
    """Translation's verdict, with every service the release names present (port 8080)."""
    named = {(release.namespace, release.name)} | {(b.namespace, b.name) for b in release.backends}
    _, diags = canary.resolve([release], {key: {8080} for key in named})
    return [d for d in diags if d.severity is translate.Severity.ERROR]


def _rejected_by_the_code(obj: Doc, layer: str) -> bool:
    """Whether the part of the code that ``layer`` names refuses ``obj`` too."""
    if layer == "local-api":
        return bool(local_api_problems(obj))
    try:
        converted = convert.convert(model.ClusterName("east"), _kind(obj), obj)
    except convert.ConversionError:
        return layer == "convert"
    if layer == "translate":
        assert isinstance(converted, model.CanaryRelease)
        return bool(_canary_diagnostics(converted))
    if layer == "key-schema":
        assert isinstance(converted, model.Nexus)
        key = keys.app_snapshot_key(converted.app_name, model.ClusterName("east"))
        try:
            return keys.parse_app_snapshot_key(key) != (converted.app_name, "east")
        except keys.SchemaError:
            return True
    if layer == "gateway-app":
        assert isinstance(converted, model.Nexus)
        gw = model.Gateway(model.ClusterName("east"), "edge", "public", "public", 8080)
        return converted.app_name == gateway.app_name(gw)
    if layer == "object-name":
        # NOTE: the local API server refuses this as any object's name (RFC 1123), so no
        # Service by that name exists and translation reports the reference as unknown.
        names = [b.name for b in getattr(converted, "backends", ())]
        names += [s.name for s in getattr(converted, "services", ()) if s.name]
        names += [s.namespace for s in getattr(converted, "services", ())]
        names += [b.namespace for b in getattr(converted, "backends", ())]
        return any(not kube_store._NAME_RE.match(n) for n in names)
    raise AssertionError(f"unknown layer {layer}")


INVALID = [
    pytest.param(_cr("Nexus", None), "convert", id="nexus-without-spec"),
    pytest.param(_cr("Nexus", {"services": []}), "convert", id="nexus-without-appName"),
    pytest.param(_cr("Nexus", {"appName": ""}), "convert", id="nexus-empty-appName"),
    pytest.param(_cr("Nexus", {"appName": 7}), "local-api", id="nexus-appName-not-a-string"),
    pytest.param(_cr("Nexus", {"appName": "web/v2"}), "key-schema", id="nexus-appName-with-slash"),
    pytest.param(
        _cr("Nexus", {"appName": "gateway:edge:public"}),
        "gateway-app",
        id="nexus-appName-of-a-gateway",
    ),
    pytest.param(
        _cr("Nexus", {"appName": "web", "services": {"name": "item"}}),
        "convert",
        id="nexus-services-not-a-list",
    ),
    pytest.param(
        _cr("Nexus", {"appName": "web", "services": [{"name": 1}]}),
        "convert",
        id="nexus-service-name-not-a-string",
    ),
    pytest.param(
        _cr("Nexus", {"appName": "web", "service": []}), "local-api", id="nexus-unknown-field"
    ),
    pytest.param(
        _cr("Nexus", {"appName": "web", "services": [{"name": "Item_1"}]}),
        "object-name",
        id="nexus-service-name-not-dns",
    ),
    pytest.param(
        _cr("Nexus", {"appName": "web", "services": [{"namespace": "-shop"}]}),
        "object-name",
        id="nexus-namespace-not-dns",
    ),
    pytest.param(_cr("CanaryRelease", {}), "translate", id="canary-without-backends"),
    pytest.param(_canary(), "translate", id="canary-no-backends"),
    pytest.param(
        _canary({"name": "item", "weight": 90}, {"name": "item-canary", "weight": 20}),
        "translate",
        id="canary-weights-110",
    ),
    pytest.param(
        _canary({"name": "item", "weight": 101}), "translate", id="canary-weight-over-100"
    ),
    pytest.param(
        _canary({"name": "item", "weight": 110}, {"name": "b", "weight": -10}),
        "convert",
        id="canary-negative-weight",
    ),
    pytest.param(
        _canary({"name": "item", "weight": "100"}), "convert", id="canary-weight-a-string"
    ),
    pytest.param(
        _canary({"name": "item", "weight": 100.5}), "convert", id="canary-weight-not-integer"
    ),
    pytest.param(
        _canary({"name": "item", "weight": 50}, {"name": "item", "weight": 50}),
        "translate",
        id="canary-duplicate-backend",
    ),
    pytest.param(_canary({"weight": 100}), "convert", id="canary-backend-without-name"),
    pytest.param(_canary({"name": "item"}), "convert", id="canary-backend-without-weight"),
    pytest.param(
        _canary({"name": "item/x", "weight": 100}), "convert", id="canary-backend-name-with-slash"
    ),
    pytest.param(
        _canary({"name": "Item", "weight": 100}), "object-name", id="canary-backend-name-not-dns"
    ),
    pytest.param(
        _canary({"name": "item", "weight": 100, "port": 80}),
        "local-api",
        id="canary-backend-unknown-field",
    ),
    pytest.param(_cr("Gateway", {"port": 8080}), "convert", id="gateway-without-class"),
    pytest.param(
        _cr("Gateway", {"ingressClass": "", "port": 8080}), "convert", id="gateway-empty-class"
    ),
    pytest.param(_cr("Gateway", {"ingressClass": "public"}), "convert", id="gateway-without-port"),
    pytest.param(
        _cr("Gateway", {"ingressClass": "public", "port": 0}), "convert", id="gateway-port-0"
    ),
    pytest.param(
        _cr("Gateway", {"ingressClass": "public", "port": 65536}),
        "convert",
        id="gateway-port-65536",
    ),
    pytest.param(
        _cr("Gateway", {"ingressClass": "public", "port": "8080"}),
        "convert",
        id="gateway-port-a-string",
    ),
    pytest.param(
        _cr("Gateway", {"ingressClass": "public", "port": 8080, "tls": {}}),
        "local-api",
        id="gateway-unknown-field",
    ),
    pytest.param(
        _cr("Gateway", {"ingressClass": "public", "port": 8080}, extra=1),
        "local-api",
        id="unknown-top-level-field",
    ),
]


@pytest.mark.parametrize(("obj", "layer"), INVALID)
def test_the_crds_reject_only_what_the_code_rejects(obj: Doc, layer: str) -> None:
    assert crd_errors(obj), "the CRD accepts it"
    assert _rejected_by_the_code(obj, layer), f"the code ({layer}) accepts it"


def test_the_local_api_server_is_never_stricter_than_the_crds() -> None:
    for case in [*VALID, *INVALID]:
        obj = case.values[0]
        if local_api_problems(obj):
            assert crd_errors(obj), case.id


# --- 5. workloads: ports, names, probes, scripts --------------------------------------------


def _workload(docs: list[Doc], kind: str, name: str) -> tuple[Doc, Doc]:
    workload = find(docs, kind, name)
    return workload, workload["spec"]["template"]


def _argv(docs: list[Doc], template: Doc, name: str, *, init: bool = False) -> list[str]:
    c = container(template, name, init=init)
    return command_line(c, container_env(c, docs, template))


def test_the_front_ends_run_on_masters_on_the_host_network(control_plane: list[Doc]) -> None:
    _, template = _workload(control_plane, "DaemonSet", "navigator-xds")
    spec = template["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert {
        "key": "node-role.kubernetes.io/control-plane",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in spec["tolerations"]
    c = container(template, "xds")
    argv = _argv(control_plane, template, "xds")
    assert argv[:2] == ["navigator", "xds"]
    assert flag(argv, "listen") == "0.0.0.0:18010"
    http = port_of(flag(argv, "http"))
    assert (
        c["readinessProbe"]["httpGet"]["path"],
        container_port(c, c["readinessProbe"]["httpGet"]["port"]),
    ) == (
        "/readyz",
        http,
    )
    assert (
        c["livenessProbe"]["httpGet"]["path"],
        container_port(c, c["livenessProbe"]["httpGet"]["port"]),
    ) == (
        "/healthz",
        http,
    )


def test_the_balancer_finds_every_front_end_through_the_headless_service(
    control_plane: list[Doc],
) -> None:
    _, xds = _workload(control_plane, "DaemonSet", "navigator-xds")
    xds_argv = _argv(control_plane, xds, "xds")
    service = find(control_plane, "Service", "navigator-xds")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True, "the balancer checks /readyz itself"
    selector = service["spec"]["selector"]
    selected = [
        w["metadata"]["name"]
        for w, t in pod_templates(control_plane)
        if selector.items() <= t["metadata"]["labels"].items()
    ]
    assert selected == ["navigator-xds"]
    ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert ports == {
        "grpc": port_of(flag(xds_argv, "listen")),
        "http": port_of(flag(xds_argv, "http")),
    }

    _, balancer = _workload(control_plane, "DaemonSet", "navigator-balancer")
    spec = balancer["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet", "it resolves a cluster DNS name"
    assert spec["tolerations"] == [{"operator": "Exists"}], "it runs on every node"
    assert "nodeSelector" not in spec
    init = container(balancer, "config", init=True)
    host_ip = next(e for e in init["env"] if e["name"] == "HOST_IP")
    assert host_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    script = init["args"][0]
    frontends = re.findall(r"--frontend=(\S+)", script)
    dns = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert frontends == [f"{dns}:{ports['grpc']}:{ports['http']}"]
    assert '--listen="$HOST_IP"' in script
    # NOTE: what sidecars dial by default (navigator bootstrap) is what the balancer serves.
    assert f"--port={bootstrap.DEFAULT_XDS_PORT}" in script
    assert f"--health-port={bootstrap.DEFAULT_CONTROL_PLANE_HEALTH_PORT}" in script


def _metrics_port(docs: list[Doc], workload: Doc, template: Doc) -> int:
    """The port the pod's process serves Prometheus metrics on, from its command line."""
    for c in template["spec"]["containers"]:
        argv = command_line(c, container_env(c, docs, template))
        if argv[0] == "navigator":
            return port_of(flag(argv, "http"))
    (init,) = template["spec"]["initContainers"]
    (stats,) = re.findall(r'--stats="\$HOST_IP:(\d+)"', init["args"][0])
    return int(stats)


def test_every_pod_template_is_scraped_on_its_metrics_port(control_plane: list[Doc]) -> None:
    templates = list(pod_templates(control_plane))
    assert len(templates) == 4
    for workload, template in templates:
        annotations = template["metadata"]["annotations"]
        want = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(_metrics_port(control_plane, workload, template)),
            "prometheus.io/path": "/metrics",
        }
        assert {k: annotations.get(k) for k in want} == want, workload["metadata"]["name"]


def test_the_probes_of_every_navigator_process_hit_its_http_address(
    control_plane: list[Doc],
) -> None:
    checked = 0
    for _, template in pod_templates(control_plane):
        for c in template["spec"]["containers"]:
            argv = command_line(c, container_env(c, control_plane, template))
            if argv[0] != "navigator":
                continue
            http = port_of(flag(argv, "http"))
            assert flag(argv, "http").startswith("0.0.0.0:"), "the kubelet and Prometheus reach it"
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                got = c[probe]["httpGet"]
                assert (got["path"], container_port(c, got["port"])) == (path, http)
            checked += 1
    assert checked == 3


def test_the_watcher_and_translator_are_replicated_and_spread(control_plane: list[Doc]) -> None:
    for name in ("navigator-watcher", "navigator-translator"):
        deployment, template = _workload(control_plane, "Deployment", name)
        assert deployment["spec"]["replicas"] == 2
        labels = deployment["spec"]["selector"]["matchLabels"]
        (term,) = template["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term == {
            "labelSelector": {"matchLabels": labels},
            "topologyKey": "kubernetes.io/hostname",
        }
        pdb = find(control_plane, "PodDisruptionBudget", name)
        assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": labels}}


def test_every_etcd_client_gets_the_endpoints_and_the_client_tls(control_plane: list[Doc]) -> None:
    config = find_generated(control_plane, "ConfigMap", "navigator-etcd")["data"]
    mount = "/etc/navigator/etcd/"
    assert {k: v for k, v in config.items() if k != "NAVIGATOR_ETCD"} == {
        "NAVIGATOR_ETCD_CA": mount + "ca.crt",
        "NAVIGATOR_ETCD_CERT": mount + "tls.crt",
        "NAVIGATOR_ETCD_KEY": mount + "tls.key",
    }
    clients = 0
    for workload, template in pod_templates(control_plane):
        for c in template["spec"]["containers"]:
            env = container_env(c, control_plane, template)
            if command_line(c, env)[0] != "navigator":
                assert "NAVIGATOR_ETCD" not in env, workload["metadata"]["name"]
                continue
            clients += 1
            assert env["NAVIGATOR_ETCD"] == config["NAVIGATOR_ETCD"]
            (vm,) = [v for v in c["volumeMounts"] if v["mountPath"] == mount.rstrip("/")]
            assert vm["readOnly"] is True
            (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == vm["name"]]
            # NOTE: the same paths in every pod, each pod's own component's Secret there.
            assert _secret(volume) == etcd_secret(workload["metadata"]["name"])
    assert clients == 3


def test_one_image_runs_everything(control_plane: list[Doc], apps: dict[str, list[Doc]]) -> None:
    images = {
        c["image"]
        for _, t in [*pod_templates(control_plane), *pod_templates(apps["east"])]
        for c in [*t["spec"]["containers"], *t["spec"].get("initContainers", [])]
        if c["name"] not in ("web", "migrate")
    }
    assert images == {"registry.example.com/navigator:0.1.0"}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for tool in IMAGE_TOOLS.iterdir():
        assert f"deploy/image/{tool.name}" in dockerfile, f"{tool.name} is not in the image"


def test_the_balancer_config_renders_and_envoy_accepts_it(
    control_plane: list[Doc], toolbox: tuple[Path, Path], tmp_path: Path
) -> None:
    workload, template = _workload(control_plane, "DaemonSet", "navigator-balancer")
    init = container(template, "config", init=True)
    done, _ = run_container(
        init, container_env(init, control_plane, template), toolbox[0], tmp_path, template=template
    )
    assert done.returncode == 0, done.stderr
    envoy = container(template, "envoy")
    done, mounts = run_container(
        envoy,
        container_env(envoy, control_plane, template),
        toolbox[0],
        tmp_path,
        template=template,
    )
    # NOTE: envoy --mode validate, with the container's args, loads every certificate and key
    # from the envoy container's own mounts.
    assert done.returncode == 0, done.stderr
    config_path = envoy["args"][envoy["args"].index("--config-path") + 1]
    config = json.loads(Path(_remap(config_path, mounts)).read_text())

    flags = _balancer_flags(template)
    tls_files = {
        flags[f] for f in ("tls-cert", "tls-key", "frontend-ca", "client-cert", "client-key")
    }
    assert {unmapped(f, mounts) for f in _filenames(config)} == tls_files
    by_name = {ln["name"]: ln for ln in config["static_resources"]["listeners"]}
    (chain,) = by_name["xds"]["filter_chains"]
    downstream = chain["transport_socket"]["typed_config"]
    assert downstream["@type"].endswith(".DownstreamTlsContext"), "sidecars reach it over TLS"
    (frontends,) = [
        c for c in config["static_resources"]["clusters"] if c["name"] == balancer.XDS_CLUSTER
    ]
    upstream = frontends["transport_socket"]["typed_config"]
    assert upstream["sni"] == flags["frontend-san"]
    common = upstream["common_tls_context"]
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": flags["frontend-san"]}}
    ]
    assert common["tls_certificates"], "it shows its client certificate"
    listeners = {
        ln["name"]: (
            ln["address"]["socket_address"]["address"],
            ln["address"]["socket_address"]["port_value"],
        )
        for ln in config["static_resources"]["listeners"]
    }
    metrics = _metrics_port(control_plane, workload, template)
    assert listeners == {
        "xds": (HOST_IP, bootstrap.DEFAULT_XDS_PORT),
        "control-plane-health": (HOST_IP, bootstrap.DEFAULT_CONTROL_PLANE_HEALTH_PORT),
        "navigator-stats": (HOST_IP, metrics),
    }
    assert {p["containerPort"] for p in envoy["ports"]} == {port for _, port in listeners.values()}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    for probe in ("readinessProbe", "livenessProbe"):
        assert envoy[probe]["httpGet"] == {"path": "/ready", "port": metrics}


def _filenames(config: Any) -> set[str]:
    """Every file an Envoy config reads (its ``filename`` data sources)."""
    if isinstance(config, dict):
        found = {config["filename"]} if isinstance(config.get("filename"), str) else set()
        return found.union(*(_filenames(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(_filenames(v) for v in config))
    return set()


# --- 6. the sidecar template ----------------------------------------------------------------


@pytest.fixture(params=CLUSTERS)
def app(request: pytest.FixtureRequest, apps: dict[str, list[Doc]]) -> tuple[str, Doc]:
    return request.param, copy.deepcopy(app_deployment(apps[request.param]))


def app_deployment(docs: list[Doc]) -> Doc:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment


def _sidecar_env(deployment: Doc, name: str, **labels: str) -> dict[str, str]:
    template = copy.deepcopy(deployment["spec"]["template"])
    template["metadata"]["labels"].update(labels)
    return container_env(
        container(template, name, init=True),
        [],
        template,
        pod_name="web-7d9f-x2x4q",
        namespace=deployment["metadata"]["namespace"],
    )


def test_the_sidecar_runs_before_the_app_and_after_its_redirect(app: tuple[str, Doc]) -> None:
    _, deployment = app
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [
        "navigator-init",
        "navigator-proxy",
        "migrate",
    ]
    init, proxy = spec["initContainers"][:2]
    assert "restartPolicy" not in init
    assert proxy["restartPolicy"] == "Always", (
        "a native sidecar: started before the app's containers"
    )
    assert set(init["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert proxy["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    init_env, proxy_env = (
        _sidecar_env(deployment, n) for n in ("navigator-init", "navigator-proxy")
    )
    assert init_env["NAVIGATOR_ENVOY_UID"] == str(proxy["securityContext"]["runAsUser"])
    for key in ("NAVIGATOR_OUTBOUND_PORT", "NAVIGATOR_SERVICE_CIDRS"):
        assert init_env[key] == proxy_env[key], key
    assert [c["name"] for c in spec["containers"]] == ["web"], "the app's containers are untouched"


def test_the_sidecars_name_their_cluster_and_its_own_clusterip_ranges(
    apps: dict[str, list[Doc]],
) -> None:
    ranges = {}
    for cluster in CLUSTERS:
        deployment = app_deployment(apps[cluster])
        env = _sidecar_env(deployment, "navigator-proxy")
        control_plane = render(DEPLOY / "overlays" / cluster)
        name = find_generated(control_plane, "ConfigMap", "navigator-cluster")["data"][
            "NAVIGATOR_CLUSTER"
        ]
        assert env["NAVIGATOR_CLUSTER"] == name == cluster
        ranges[cluster] = [
            ipaddress.ip_network(c) for c in env["NAVIGATOR_SERVICE_CIDRS"].split(",")
        ]
    assert not any(a.overlaps(b) for a in ranges["east"] for b in ranges["west"])


def test_the_translator_serves_the_sidecars_probe_and_does_not_bind(
    control_plane: list[Doc], app: tuple[str, Doc]
) -> None:
    _, translator = _workload(control_plane, "Deployment", "navigator-translator")
    argv = _argv(control_plane, translator, "translator")
    assert "--no-bind-to-port" in argv, "the sidecar template redirects with iptables"
    proxy = container(app[1]["spec"]["template"], "navigator-proxy", init=True)
    probe = proxy["readinessProbe"]["httpGet"]
    health_port = int(flag(argv, "health-port"))
    assert probe["port"] == health_port
    listener = translate.health_listener(health_port)
    assert listener.address.socket_address.port_value == health_port
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    paths = [r.match.path for vh in hcm.route_config.virtual_hosts for r in vh.routes]
    assert probe["path"] in paths
    assert probe["path"] == "/healthz", "the probe that follows the sidecar's own config"


def test_the_sidecar_reads_the_zone_labels_the_watcher_reads(app: tuple[str, Doc]) -> None:
    proxy = container(app[1]["spec"]["template"], "navigator-proxy", init=True)
    refs = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in proxy["env"] if "valueFrom" in e
    }
    assert refs["POD_ZONE"] == f"metadata.labels['{convert.ZONE_LABELS[0]}']"
    assert refs["POD_REGION"] == f"metadata.labels['{convert.REGION_LABELS[0]}']"
    assert refs["HOST_IP"] == "status.hostIP"
    assert refs["POD_NAME"] == "metadata.name"
    # NOTE: without the labels, the front-end places the sidecar by its node.
    assert refs["NODE_NAME"] == "spec.nodeName"
    # NOTE: the app is the pod's service account, what the front-ends authorize.
    assert refs["NAVIGATOR_APP"] == "spec.serviceAccountName"


def test_the_example_app_runs_as_the_service_account_named_after_it(
    apps: dict[str, list[Doc]],
) -> None:
    docs = apps["east"]
    account = find(docs, "ServiceAccount", "web")
    deployment = app_deployment(docs)
    assert account["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "web"
    nexuses = [d for d in _examples() if d["kind"] == "Nexus"]
    assert "web" in {n["spec"]["appName"] for n in nexuses}, "the app of the example Nexus"


def test_the_sidecar_proves_its_service_account_with_a_projected_token_over_tls(
    app: tuple[str, Doc], control_plane: list[Doc]
) -> None:
    _, deployment = app
    template = deployment["spec"]["template"]
    (token,) = _token_sources(template)
    assert token["audience"] == "navigator"
    assert token["expirationSeconds"] == 3600
    proxy = container(template, "navigator-proxy", init=True)
    flags = script_flags(proxy, "bootstrap")
    (volume,) = [v for v in template["spec"]["volumes"] if "projected" in v]
    assert mounted(template, proxy, flags["token-file"]) == volume
    (vm,) = [m for m in proxy["volumeMounts"] if m["name"] == volume["name"]]
    assert flags["token-file"] == f"{vm['mountPath']}/{token['path']}"
    # NOTE: only the Envoy holds the token: not the redirect, not the app's containers.
    spec = template["spec"]
    others = [c for c in [*spec["containers"], *spec["initContainers"]] if c is not proxy]
    assert others, "the app's containers are there"
    for c in others:
        assert volume["name"] not in {m["name"] for m in c.get("volumeMounts", [])}, c["name"]
    # NOTE: the balancer's certificate is checked against the mesh CA, the same ConfigMap
    # (in the app's namespace) as the control plane's.
    assert _config_map(mounted(template, proxy, flags["xds-ca"])) == MESH_CA
    _, xds = _workload(control_plane, "DaemonSet", "navigator-xds")
    xds_argv = _argv(control_plane, xds, "xds")
    assert _config_map(mounted(xds, container(xds, "xds"), flag(xds_argv, "tls-client-ca"))) == (
        MESH_CA
    )


@pytest.mark.parametrize(
    ("labels", "zone"),
    [
        pytest.param({}, None, id="placed-by-its-node"),
        pytest.param(
            {convert.ZONE_LABELS[0]: "r1-c", convert.REGION_LABELS[0]: "r2"},
            "r1-c",
            id="pod-zone-label",
        ),
    ],
)
def test_the_sidecar_bootstrap_renders_and_envoy_accepts_it(
    app: tuple[str, Doc],
    labels: dict[str, str],
    zone: str | None,
    toolbox: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    cluster, deployment = app
    template = copy.deepcopy(deployment["spec"]["template"])
    template["metadata"]["labels"].update(labels)
    proxy = container(template, "navigator-proxy", init=True)
    env = container_env(proxy, [], template, pod_name="web-7d9f-x2x4q", namespace="web")
    done, mounts = run_container(proxy, env, toolbox[0], tmp_path, template=template)
    # NOTE: ends in envoy --mode validate, which loads the mesh CA and the token's file.
    assert done.returncode == 0, done.stderr
    flags = script_flags(proxy, "bootstrap")
    config_file = re.search(r"> (\S+)", proxy["args"][0])
    assert config_file
    config = json.loads(Path(_remap(config_file.group(1), mounts)).read_text())

    node = config["node"]
    assert node["id"] == "web-7d9f-x2x4q.web"
    # NOTE: the app is the pod's service account (the front-ends serve it that app only).
    assert node["cluster"] == template["spec"]["serviceAccountName"] == "web"
    # NOTE: what the front-end picks the app snapshot by (other metadata may be added).
    assert (node["metadata"]["app"], node["metadata"]["k8s_cluster"]) == ("web", cluster)
    assert node["locality"].get("zone", "") == (zone or "")
    # NOTE: the front-end places a sidecar without a zone by this node (resources.placed).
    assert node["metadata"]["node_name"] == env["NODE_NAME"] == "node-1"

    listeners = {ln["name"]: ln for ln in config["static_resources"]["listeners"]}
    outbound = listeners["navigator-outbound"]
    assert outbound["use_original_dst"] is True
    address = outbound["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == (
        "127.0.0.1",
        int(env["NAVIGATOR_OUTBOUND_PORT"]),
    )
    (chain,) = outbound["filter_chains"]
    assert [
        f"{r['address_prefix']}/{r['prefix_len']}"
        for r in chain["filter_chain_match"]["prefix_ranges"]
    ] == env["NAVIGATOR_SERVICE_CIDRS"].split(",")
    stats_port = listeners["navigator-stats"]["address"]["socket_address"]["port_value"]
    assert proxy["startupProbe"]["httpGet"] == {"path": "/ready", "port": stats_port}
    xds = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0][
        "lb_endpoints"
    ][0]
    assert xds["endpoint"]["address"]["socket_address"] == {
        "address": HOST_IP,
        "port_value": bootstrap.DEFAULT_XDS_PORT,
    }
    # NOTE: TLS to the node's address (what the balancer's node certificate must name),
    # checked against the mesh CA, with the token file on every stream.
    (service,) = config["dynamic_resources"]["ads_config"]["grpc_services"]
    google = service["google_grpc"]
    assert google["target_uri"] == f"{HOST_IP}:{bootstrap.DEFAULT_XDS_PORT}"
    root_certs = google["channel_credentials"]["ssl_credentials"]["root_certs"]["filename"]
    assert unmapped(root_certs, mounts) == flags["xds-ca"]
    (call,) = google["call_credentials"]
    token_file = call["from_plugin"]["typed_config"]["secret_data"]["filename"]
    assert unmapped(token_file, mounts) == flags["token-file"]
    assert Path(token_file).read_text() == TOKEN


def test_the_sidecar_refuses_to_start_as_the_default_service_account(
    app: tuple[str, Doc], toolbox: tuple[Path, Path], tmp_path: Path
) -> None:
    template = copy.deepcopy(app[1]["spec"]["template"])
    del template["spec"]["serviceAccountName"]
    proxy = container(template, "navigator-proxy", init=True)
    env = container_env(proxy, [], template)
    assert env["NAVIGATOR_APP"] == "default"
    done, _ = run_container(proxy, env, toolbox[0], tmp_path, template=template)
    assert done.returncode == 2
    assert "service account 'default'" in done.stderr
    assert not list((tmp_path / "volumes" / "navigator-envoy").iterdir()), "no bootstrap"


def test_the_redirect_sends_the_clusterip_ranges_to_the_outbound_listener(
    app: tuple[str, Doc], toolbox: tuple[Path, Path], tmp_path: Path
) -> None:
    _, deployment = app
    template = deployment["spec"]["template"]
    init = container(template, "navigator-init", init=True)
    env = container_env(init, [], template)
    bin_dir, log = toolbox
    chain = "NAVIGATOR_OUTPUT"
    uid = container(template, "navigator-proxy", init=True)["securityContext"]["runAsUser"]
    port = env["NAVIGATOR_OUTBOUND_PORT"]
    rules = [
        f"-t nat -A {chain} -m owner --uid-owner {uid} -j RETURN",
        *(
            f"-t nat -A {chain} -p tcp -d {cidr} -j REDIRECT --to-ports {port}"
            for cidr in env["NAVIGATOR_SERVICE_CIDRS"].split(",")
        ),
    ]
    # NOTE: a restarted init container flushes its chain and adds no second OUTPUT jump.
    for want in (
        [f"-t nat -N {chain}", *rules, f"-t nat -A OUTPUT -p tcp -j {chain}"],
        [f"-t nat -F {chain}", *rules],
    ):
        done, _ = run_container(init, env, bin_dir, tmp_path)
        assert done.returncode == 0, done.stderr
        calls = [c for c in log.read_text().splitlines() if not re.search(r" -[LC] ", f" {c} ")]
        log.unlink()
        assert calls == want


@pytest.mark.parametrize(
    ("env", "error"),
    [
        pytest.param({"NAVIGATOR_SERVICE_CIDRS": ""}, "is empty", id="no-cidrs"),
        pytest.param({"NAVIGATOR_SERVICE_CIDRS": "fd00::/108"}, "only IPv4", id="ipv6"),
        pytest.param({"NAVIGATOR_SERVICE_CIDRS": "10.96.0.1"}, "not a CIDR", id="not-a-cidr"),
        pytest.param(
            {"NAVIGATOR_SERVICE_CIDRS": "10.96.0.0/16", "NAVIGATOR_OUTBOUND_PORT": "x"},
            "not a number",
            id="bad-port",
        ),
    ],
)
def test_the_redirect_refuses_bad_parameters(
    env: dict[str, str], error: str, toolbox: tuple[Path, Path]
) -> None:
    bin_dir, log = toolbox
    done = subprocess.run(
        ["sh", str(IMAGE_TOOLS / "navigator-iptables")],
        env={**env, "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert error in done.stderr
    assert not log.exists(), "nothing installed"


_BOOTSTRAP = ["--app", "web", "--cluster", "east", "--zone", "z", "--xds", f"{HOST_IP}:18000"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        pytest.param(["--outbound-port=15001"], "no service CIDR", id="no-cidrs"),
        pytest.param(
            ["--outbound-port=15001", "--service-cidrs=fd00::/108"], "only IPv4", id="ipv6"
        ),
        pytest.param(["--service-cidrs=10.96.0.0/16"], "needs --outbound-port", id="no-port"),
        pytest.param(["--outbound-port=0", "--service-cidrs=10.96.0.0/16"], "1-65535", id="port"),
        pytest.param(["--stats=15090"], "expected HOST:PORT", id="stats-no-host"),
        pytest.param(
            ["--outbound-port=15001", "--service-cidrs=10.96.0.0/16", "--stats=0.0.0.0:15001"],
            "already has a listener on port 15001",
            id="port-clash",
        ),
    ],
)
def test_the_pod_options_of_the_bootstrap_refuse_what_they_cannot_do(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bootstrap.main([*_BOOTSTRAP, *args]) == 2
    captured = capsys.readouterr()
    assert error in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""


# --- 7. the Grafana dashboard ---------------------------------------------------------------

_METRIC_DEFINITION = re.compile(
    r'prometheus_client\.(Counter|Gauge|Histogram|Summary)\(\s*"([A-Za-z_:][A-Za-z0-9_:]*)"'
)
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
}


@functools.cache
def exported_metrics() -> frozenset[str]:
    """Every sample name the code's metrics export (``foo`` counter → ``foo_total`` ...)."""
    out: set[str] = set()
    for package in ("navigator", "shards", "coordinator"):
        for path in (ROOT / package).rglob("*.py"):
            for kind, name in _METRIC_DEFINITION.findall(path.read_text()):
                if kind == "Counter":
                    base = name.removesuffix("_total")
                    out |= {f"{base}_total", f"{base}_created"}
                elif kind == "Gauge":
                    out.add(name)
                elif kind == "Histogram":
                    out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
                else:
                    out |= {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    return frozenset(out)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "navigator-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # label_values(METRIC, LABEL): only its first argument is a metric.
            exprs += re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", query["query"])
    return exprs


def test_the_dashboard_queries_only_metrics_the_code_defines() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "navigator-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = _dashboard_queries()
    assert len(queries) > 30
    used: set[str] = set()
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported_metrics(), f"{expr!r} queries {names - exported_metrics()}"
        used |= names
    for wanted in (
        "navigator_xds_streams",
        "navigator_xds_sidecars",
        "navigator_xds_responses_total",
        "navigator_xds_nacks_total",
        "navigator_xds_sent_bytes_total",
        "navigator_translator_flush_seconds_bucket",
        "navigator_translator_keys_written_total",
        "navigator_watcher_events_total",
        "navigator_watcher_stale_seconds",
        "navigator_watcher_etcd_errors_total",
        "navigator_etcd_member_failures_total",
    ):
        assert wanted in used, f"no panel shows {wanted}"
    push = [q for q in queries if "navigator_xds_push_latency_seconds_bucket" in q]
    assert {q.split(",")[0] for q in push} >= {"histogram_quantile(0.5", "histogram_quantile(0.99"}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        pytest.param(
            "histogram_quantile(0.99, sum by (le) "
            '(rate(navigator_xds_push_latency_seconds_bucket{type="x"}[$__rate_interval])))',
            {"navigator_xds_push_latency_seconds_bucket"},
            id="histogram",
        ),
        pytest.param(
            "scalar(max(navigator_translator_state_revision))"
            " - navigator_translator_state_revision",
            {"navigator_translator_state_revision"},
            id="arithmetic",
        ),
        pytest.param(
            "sum(rate(navigator_xds_nackz_total[5m]))", {"navigator_xds_nackz_total"}, id="renamed"
        ),
    ],
)
def test_the_metric_extractor_finds_the_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_renamed_metric_is_not_exported() -> None:
    assert "navigator_xds_nacks_total" in exported_metrics()
    assert "navigator_xds_nackz_total" not in exported_metrics()
    assert "navigator_xds_push_latency_seconds_bucket" in exported_metrics()
    assert "navigator_xds_push_latency_seconds" not in exported_metrics()
