"""The chaos suite's Chaos Mesh manifests (``deploy/chaos/``) against ``deploy/`` itself.

Each scenario of the local chaos suite but ``bad-snapshot`` (local only) has one file,
``deploy/chaos/<scenario>.yaml``, applied alone by an operator. Asserted here, with what the
manifests must agree with read from ``deploy/base`` and ``deploy/overlays``:

- one file per scenario, no kustomization (the faults are never applied together);
- every document parses, is of an allowed kind (Chaos Mesh's ``chaos-mesh.org/v1alpha1``, or
  the compaction ``Job``), lives in the namespace of ``deploy/base`` and says in a comment
  header what the fault is, what the local suite does and how long it lasts;
- every pod selector names that namespace and labels that a pod template of ``deploy/base``
  has (so it selects the project's real pods, and only them), and its containers exist;
- every fault that lasts has a ``duration`` (Chaos Mesh kills have none), said in its header;
- the etcd machines and addresses are the mesh's etcd members of ``deploy/overlays``;
- the compaction Job is a valid Kubernetes 1.32 object whose script, run against a real etcd,
  compacts its history up to the current revision;
- the README has the runbook of every scenario, ``bad-snapshot`` included.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

Doc = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
CHAOS = DEPLOY / "chaos"
README = CHAOS / "README.md"
KUBERNETES_VERSION = "1.32"

SCENARIOS = (
    "etcd-leader-killed",
    "etcd-member-partitioned",
    "etcd-quorum-lost",
    "translator-paused",
    "translator-killed-mid-publish",
    "watcher-leader-killed",
    "api-unreachable",
    "api-watch-faults",
    "frontend-killed",
    "frontend-blackholed",
    "balancer-restarted",
    "etcd-compaction",
)
LOCAL_ONLY = ("bad-snapshot",)

CHAOS_MESH = "chaos-mesh.org/v1alpha1"
ALLOWED_KINDS = {
    CHAOS_MESH: {"PodChaos", "NetworkChaos", "PhysicalMachineChaos", "Workflow", "Schedule"},
    "batch/v1": {"Job"},
}
# The key of each kind's spec when it is embedded in a Schedule or a Workflow template.
EMBEDDED = {
    "PodChaos": "podChaos",
    "NetworkChaos": "networkChaos",
    "PhysicalMachineChaos": "physicalmachineChaos",
}
POD_SELECTING = {"PodChaos", "NetworkChaos"}
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet"}
MODES = {"one", "all", "fixed", "fixed-percent", "random-max-percent"}
INSTANT = {"pod-kill", "container-kill"}  # PodChaos actions that take no duration
GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")
PLACEHOLDER = re.compile(r"REPLACE-ME-[a-z0-9-]+")
SCENARIO_LABEL = "navigator.avito.ru/chaos-scenario"


# --- reading --------------------------------------------------------------------------------


def _yaml_docs(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in docs), path
    return docs


@functools.cache
def manifest(scenario: str) -> tuple[Doc, ...]:
    return tuple(_yaml_docs(CHAOS / f"{scenario}.yaml"))


def header(scenario: str) -> str:
    """The comment lines a manifest starts with, without their ``#``."""
    lines = []
    for line in (CHAOS / f"{scenario}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


@functools.cache
def base_kustomization() -> Doc:
    doc = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def namespace() -> str:
    ns = base_kustomization()["namespace"]
    assert isinstance(ns, str)
    return ns


@dataclasses.dataclass(frozen=True)
class PodTemplate:
    workload: str  # kind/name
    labels: dict[str, str]
    containers: frozenset[str]
    ports: frozenset[int]


@functools.cache
def pod_templates() -> tuple[PodTemplate, ...]:
    """The pod template of every workload of ``deploy/base``, with the labels kustomize adds
    to the templates (``labels`` with ``includeTemplates``)."""
    added: dict[str, str] = {}
    for entry in base_kustomization().get("labels", []):
        if entry.get("includeTemplates"):
            added |= entry["pairs"]
    out = []
    for name in base_kustomization()["resources"]:
        for doc in _yaml_docs(BASE / name):
            if doc["kind"] not in WORKLOADS:
                continue
            template = doc["spec"]["template"]
            containers = template["spec"]["containers"]
            out.append(
                PodTemplate(
                    workload=f"{doc['kind']}/{doc['metadata']['name']}",
                    labels={**template["metadata"]["labels"], **added},
                    containers=frozenset(c["name"] for c in containers),
                    ports=frozenset(
                        p["containerPort"] for c in containers for p in c.get("ports", [])
                    ),
                )
            )
    assert out
    return tuple(out)


@functools.cache
def etcd_endpoints() -> frozenset[str]:
    """``host:port`` of every etcd member that the overlays list (one etcd for the mesh)."""
    found: set[str] = set()
    for path in sorted((DEPLOY / "overlays").glob("*/kustomization.yaml")):
        doc = yaml.safe_load(path.read_text())
        for generator in doc.get("configMapGenerator", []):
            for literal in generator.get("literals", []):
                key, _, value = literal.partition("=")
                if key == "NAVIGATOR_ETCD":
                    found |= {urlsplit(url).netloc for url in value.split(",")}
    assert found
    return frozenset(found)


def etcd_hosts() -> frozenset[str]:
    return frozenset(e.rsplit(":", 1)[0] for e in etcd_endpoints())


def etcd_machines() -> frozenset[str]:
    """The PhysicalMachine names of the README: each member's first host name label."""
    return frozenset(h.split(".")[0] for h in etcd_hosts())


def chaos_specs(doc: Doc) -> Iterator[tuple[str, Doc, Doc]]:
    """(kind, spec, template) of every fault a document makes; the template is the Workflow
    template that embeds the fault (``{}`` when there is none)."""
    kind = doc["kind"]
    if kind in EMBEDDED:
        yield kind, doc["spec"], {}
    elif kind == "Schedule":
        yield from _scheduled(doc["spec"], {})
    elif kind == "Workflow":
        for template in doc["spec"]["templates"]:
            if template["templateType"] in EMBEDDED:
                yield (
                    template["templateType"],
                    template[EMBEDDED[template["templateType"]]],
                    template,
                )
            elif template["templateType"] == "Schedule":
                yield from _scheduled(template["schedule"], template)


def _scheduled(schedule: Doc, template: Doc) -> Iterator[tuple[str, Doc, Doc]]:
    assert schedule["type"] in EMBEDDED, schedule["type"]
    assert schedule.get("concurrencyPolicy", "Forbid") == "Forbid", "one fault at a time"
    yield schedule["type"], schedule[EMBEDDED[schedule["type"]]], template


def all_specs() -> Iterator[tuple[str, str, Doc, Doc]]:
    for scenario in SCENARIOS:
        for doc in manifest(scenario):
            for kind, spec, template in chaos_specs(doc):
                yield scenario, kind, spec, template


# --- 1. the files ---------------------------------------------------------------------------


def test_every_scenario_has_exactly_one_manifest_and_nothing_applies_them_together() -> None:
    files = sorted(p.name for p in CHAOS.iterdir() if p.suffix in (".yaml", ".yml"))
    assert files == sorted(f"{s}.yaml" for s in SCENARIOS)
    assert not (CHAOS / "kustomization.yaml").exists()
    for scenario in LOCAL_ONLY:
        assert not list(CHAOS.glob(f"{scenario}.*")), f"{scenario} is local only"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_document_is_an_allowed_kind_in_the_namespace_of_deploy_base(
    scenario: str,
) -> None:
    docs = manifest(scenario)
    assert docs
    for doc in docs:
        assert doc["kind"] in ALLOWED_KINDS.get(doc["apiVersion"], set()), (
            f"{doc['apiVersion']} {doc['kind']}"
        )
        metadata = doc["metadata"]
        assert metadata["namespace"] == namespace()
        assert metadata["labels"][SCENARIO_LABEL] == scenario
        assert metadata["name"].startswith(scenario)
    if any(d["apiVersion"] == "batch/v1" for d in docs):
        assert scenario == "etcd-compaction", "only the compaction is not a Chaos Mesh fault"


def test_names_are_unique() -> None:
    names = [(d["kind"], d["metadata"]["name"]) for s in SCENARIOS for d in manifest(s)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_says_what_it_is_what_the_local_suite_does_and_how_long(
    scenario: str,
) -> None:
    text = header(scenario)
    assert text.startswith(f"{scenario}:")
    for part in ("Fault:", "Local suite:", "Lasts:"):
        assert part in text, f"{scenario}: no {part!r} in its header"
    values = yaml.safe_dump(list(manifest(scenario)))
    for placeholder in set(PLACEHOLDER.findall(values)):
        assert placeholder in text, f"{scenario}: {placeholder} is not explained"


# --- 2. what they select --------------------------------------------------------------------


def _check_pod_selector(where: str, selector: Doc) -> list[PodTemplate]:
    """The pod templates whose pods a selector can select (asserting that it selects pods of
    deploy/base only, and some)."""
    assert selector.get("namespaces") == [namespace()], where
    assert "pods" not in selector, f"{where}: `pods` overrides the label selection"
    assert "expressionSelectors" not in selector, where
    labels = selector.get("labelSelectors")
    assert labels, f"{where}: no labelSelectors: it would select any pod of the namespace"
    matched = [t for t in pod_templates() if labels.items() <= t.labels.items()]
    assert matched, f"{where}: {labels} matches no pod template of deploy/base"
    for field, value in selector.get("fieldSelectors", {}).items():
        assert field == "metadata.name", where
        assert PLACEHOLDER.fullmatch(value), f"{where}: a pod name is the operator's to give"
    return matched


def _check_mode(where: str, spec: Doc, count: int | None = None) -> None:
    assert spec["mode"] in MODES, where
    if spec["mode"] == "fixed":
        assert 0 < int(spec["value"]) < (count or sys.maxsize), where
    elif spec["mode"] in ("fixed-percent", "random-max-percent"):
        assert 0 < float(spec["value"]) < 100, where


def test_every_pod_selector_selects_pods_of_deploy_base() -> None:
    seen = 0
    for scenario, kind, spec, _ in all_specs():
        if kind not in POD_SELECTING:
            continue
        where = f"{scenario} ({kind})"
        matched = _check_pod_selector(where, spec["selector"])
        _check_mode(where, spec)
        if "target" in spec:
            _check_pod_selector(f"{where} target", spec["target"]["selector"])
            _check_mode(f"{where} target", spec["target"])
        if kind == "PodChaos" and spec["action"] == "container-kill":
            assert spec["containerNames"], where
            for template in matched:
                assert set(spec["containerNames"]) <= template.containers, where
        seen += 1
    assert seen >= 8


def test_the_selector_check_refuses_a_label_no_pod_has() -> None:
    template, *_ = pod_templates()
    good = {"namespaces": [namespace()], "labelSelectors": dict(template.labels)}
    assert _check_pod_selector("good", good) == [template]
    for bad in (
        {**good, "labelSelectors": {"app": "navigator-watcher"}},
        {**good, "namespaces": ["navigator"]},
        {"namespaces": [namespace()]},
    ):
        with pytest.raises(AssertionError):
            _check_pod_selector("bad", bad)


def test_every_machine_fault_is_on_the_etcd_members_of_deploy_overlays() -> None:
    seen = 0
    for scenario, kind, spec, _ in all_specs():
        if kind != "PhysicalMachineChaos":
            continue
        where = f"{scenario} ({spec['action']})"
        assert "address" not in spec, f"{where}: address is deprecated; select PhysicalMachines"
        machines = spec["selector"]["physicalMachines"]
        assert set(machines) == {namespace()}, where
        (names,) = machines.values()
        for name in names:
            assert name in etcd_machines() or PLACEHOLDER.fullmatch(name), f"{where}: {name}"
        _check_mode(where, spec, len(names))
        partition = spec.get("network-partition")
        if partition:
            peers = set(partition["hostname"].split(","))
            assert peers <= etcd_hosts(), where
            assert not {h.split(".")[0] for h in peers} & set(names), "itself is not a peer"
        seen += 1
    assert seen >= 4
    directions = [
        spec["network-partition"]["direction"]
        for _, kind, spec, _ in all_specs()
        if kind == "PhysicalMachineChaos" and "network-partition" in spec
    ]
    assert sorted(directions) == ["from", "to"], "the member is cut off both ways"


def test_the_quorum_loss_takes_a_majority_of_the_members_but_not_all() -> None:
    ((_, spec, _),) = [s for d in manifest("etcd-quorum-lost") for s in chaos_specs(d)]
    (names,) = spec["selector"]["physicalMachines"].values()
    assert sorted(names) == sorted(etcd_machines())
    assert spec["mode"] == "fixed"
    assert len(names) // 2 < int(spec["value"]) < len(names)


def _targets(spec: Doc) -> list[tuple[str, int | None]]:
    out = []
    for target in spec.get("externalTargets", []):
        host, sep, port = target.rpartition(":")
        out.append((host, int(port)) if sep and port.isdigit() else (target, None))
    return out


def test_every_partition_from_etcd_drops_every_endpoint_of_the_mesh() -> None:
    seen = 0
    for scenario, kind, spec, _ in all_specs():
        hosts = {h for h, _ in _targets(spec)}
        if kind != "NetworkChaos" or not hosts & etcd_hosts():
            continue
        assert set(spec["externalTargets"]) == etcd_endpoints(), scenario
        seen += 1
    assert seen >= 1


def test_inbound_drops_by_port_name_ports_the_selected_pods_listen_on() -> None:
    """Chaos Mesh matches an external target's port as the destination port: inbound
    (``from``), that is a port of the selected pod; outbound (``to``), one of the target."""
    seen = 0
    for scenario, kind, spec, _ in all_specs():
        ports = {p for _, p in _targets(spec) if p is not None}
        if kind != "NetworkChaos" or not ports:
            continue
        if spec.get("direction", "to") == "from":
            for template in _check_pod_selector(scenario, spec["selector"]):
                assert ports <= template.ports, f"{scenario}: {template.workload}"
            seen += 1
        else:
            assert spec.get("direction", "to") == "to", f"{scenario}: ports match one way only"
    assert seen >= 1


def test_netem_faults_on_external_targets_go_outwards() -> None:
    """Chaos Mesh's webhook takes external targets of loss, delay... with ``to`` only."""
    for scenario, kind, spec, _ in all_specs():
        if kind == "NetworkChaos" and spec["action"] != "partition" and "externalTargets" in spec:
            assert spec.get("direction", "to") == "to", scenario


# --- 3. how long ----------------------------------------------------------------------------


def test_every_fault_that_lasts_has_a_duration_and_kills_have_none() -> None:
    for scenario, kind, spec, template in all_specs():
        where = f"{scenario} ({kind} {spec['action']})"
        if kind == "PodChaos" and spec["action"] in INSTANT:
            assert "duration" not in spec, f"{where}: a kill has no duration in Chaos Mesh"
            continue
        assert GO_DURATION.fullmatch(spec["duration"]), where
        assert spec["duration"] in header(scenario), f"{where}: its header says how long"
        if template:
            assert GO_DURATION.fullmatch(template["deadline"]), f"{where}: no deadline"


def test_every_workflow_ends_and_names_its_templates() -> None:
    for scenario in SCENARIOS:
        for doc in manifest(scenario):
            if doc["kind"] != "Workflow":
                continue
            templates = {t["name"]: t for t in doc["spec"]["templates"]}
            assert doc["spec"]["entry"] in templates, scenario
            for template in templates.values():
                assert GO_DURATION.fullmatch(template["deadline"]), template["name"]
                assert set(template.get("children", [])) <= set(templates), template["name"]


# --- 4. the compaction Job ------------------------------------------------------------------


def _job() -> Doc:
    (job,) = manifest("etcd-compaction")
    return job


def test_the_compaction_job_is_a_valid_job_with_the_etcd_client_of_deploy() -> None:
    job = _job()
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    assert job["spec"]["backoffLimit"] == 0, "one compaction, never retried"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    (image,) = base_kustomization()["images"]
    assert c["image"] == f"{image['newName']}:{image['newTag']}", "the mesh's image (etcdctl)"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert {urlsplit(u).netloc for u in env["ETCDCTL_ENDPOINTS"].split(",")} == etcd_endpoints()
    assert all(u.startswith("https://") for u in env["ETCDCTL_ENDPOINTS"].split(","))
    (mount,) = c["volumeMounts"]
    (volume,) = pod["volumes"]
    # NOTE: the front-ends' etcd user: it reads everything and may write only status records.
    assert volume["secret"]["secretName"] == "navigator-etcd-xds"
    for key, file in (("ETCDCTL_CACERT", "ca.crt"), ("ETCDCTL_CERT", "tls.crt")):
        assert env[key] == f"{mount['mountPath']}/{file}"
    assert env["ETCDCTL_KEY"] == f"{mount['mountPath']}/tls.key"
    assert "etcdctl compact" in c["args"][0]


def _etcdctl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    etcdctl = Path(sys.executable).parent / "etcdctl"
    return subprocess.run(
        [str(etcdctl), f"--endpoints={url}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_compaction_job_compacts_a_real_etcd_up_to_its_current_revision(
    etcd_url: str,
) -> None:
    for n in range(3):
        assert _etcdctl(etcd_url, "put", f"/navigator/v1/test/{n}", str(n)).returncode == 0
    (c,) = _job()["spec"]["template"]["spec"]["containers"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")},
        "ETCDCTL_ENDPOINTS": etcd_url,  # NOTE: the lab's member has no TLS
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        [*c["command"], c["args"][0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "compacted revision" in done.stdout
    old = _etcdctl(etcd_url, "get", "/navigator/v1/test/0", "--rev=2")
    assert old.returncode != 0
    assert "compacted" in old.stderr
    assert _etcdctl(etcd_url, "get", "/navigator/v1/test/2").stdout.splitlines()[-1] == "2"


# --- 5. the runbook -------------------------------------------------------------------------


def test_the_readme_has_the_runbook_of_every_scenario() -> None:
    text = README.read_text()
    for scenario in (*SCENARIOS, *LOCAL_ONLY):
        assert scenario in text, scenario
        assert f"\n### {scenario}\n" in text, f"no runbook section for {scenario}"
    for needed in (
        "Chaos Mesh 2.6",
        "navigator proxy-status --etcd",
        "navigator state services --etcd",
        "navigator chaos check --etcd",
        "--kubeconfig",
        "--duration",
        *(f"**I{n}**" for n in range(1, 6)),
    ):
        assert needed in text, needed
    local_only = text.split("\n### bad-snapshot\n", 1)[1]
    assert "Local only" in local_only.split("\n## ", 1)[0]
