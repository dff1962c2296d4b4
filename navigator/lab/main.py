"""``navigator lab``: the whole mesh on this machine, each part a real process.

It starts a real etcd, one local Kubernetes API server per cluster (loaded with the Kubernetes
objects of ``examples/<cluster>/``), the pods' applications bound to their pod IPs, a watcher
per cluster, the translator, the xDS front-end and one real Envoy sidecar per app of
``examples/lab.yaml``. Once everything is ready it writes ``lab.json`` in its state directory
(the lab's contract with tests, tools and chaos scenarios) and prints what to try. SIGTERM or
Ctrl-C stops every process it started, by PID; a child also dies with the lab if the lab is
killed (see ``procs.start``).

Network: every address is on the loopback range 127.0.0.0/8, each cluster with its own pod and
ClusterIP ranges, so the lab needs no root. A sidecar's Envoy binds the ClusterIP:port
listeners of its own cluster directly, so a client on this host reaches a service by its
unchanged ClusterIP:port. Two sidecars of one cluster would need the same addresses: the lab
refuses such a topology (one sidecar per cluster) until pods get network namespaces of their
own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import yaml

from navigator import bootstrap, runtime
from navigator.lab import procs

log = logging.getLogger(__name__)

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PROCESSES = prometheus_client.Gauge("navigator_lab_processes", "Processes started", ["role"])


class LabError(RuntimeError):
    """The lab cannot start: a one-line reason for the user."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    region: str
    zone: str
    pod_cidr: str
    service_cidr: str


@dataclasses.dataclass(frozen=True, slots=True)
class SidecarSpec:
    app: str
    cluster: str


@dataclasses.dataclass(frozen=True, slots=True)
class Topology:
    clusters: tuple[ClusterSpec, ...]
    sidecars: tuple[SidecarSpec, ...]
    manifests: dict[str, list[dict[str, Any]]]
    """Kubernetes objects per cluster, as loaded from ``examples/<cluster>/``."""


def load_topology(examples: Path) -> Topology:
    path = examples / "lab.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
        clusters = tuple(ClusterSpec(**c) for c in raw["clusters"])
        sidecars = tuple(SidecarSpec(**s) for s in raw.get("sidecars", []))
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise LabError(f"cannot read lab topology {path}: {exc}") from exc
    manifests: dict[str, list[dict[str, Any]]] = {}
    for c in clusters:
        docs: list[dict[str, Any]] = []
        for file in sorted((examples / c.name).glob("*.yaml")):
            try:
                docs += [d for d in yaml.safe_load_all(file.read_text()) if d]
            except yaml.YAMLError as exc:
                raise LabError(f"cannot parse {file}: {exc}") from exc
        manifests[c.name] = docs
    names = {c.name for c in clusters}
    per_cluster: dict[str, int] = {}
    for s in sidecars:
        if s.cluster not in names:
            raise LabError(f"sidecar {s.app} is in unknown cluster {s.cluster}")
        per_cluster[s.cluster] = per_cluster.get(s.cluster, 0) + 1
        if per_cluster[s.cluster] > 1:
            raise LabError(
                f"two sidecars in cluster {s.cluster}: on the host network they would bind the "
                "same ClusterIP:port listeners; run one sidecar per cluster"
            )
    return Topology(clusters=clusters, sidecars=sidecars, manifests=manifests)


def _in(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


@dataclasses.dataclass
class Proc:
    role: str
    name: str
    popen: subprocess.Popen[bytes]
    cluster: str = ""
    ready_url: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "name": self.name, "pid": self.popen.pid}
        if self.cluster:
            out["cluster"] = self.cluster
        return out | self.extra


class Lab:
    """Starts, describes and stops the lab's processes."""

    def __init__(self, *, state_dir: Path, examples: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.examples = examples.resolve()
        self.logs = self.state_dir / "logs"
        self.procs: list[Proc] = []
        self.topology = load_topology(self.examples)
        self.etcd_url = ""
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.sidecars: list[dict[str, Any]] = []
        self.xds_address = ""
        self.http = ""
        """The lab's own /healthz, /readyz and /metrics address."""

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", *args]

    def _spawn(self, role: str, name: str, args: list[str], **kw: Any) -> Proc:
        popen = procs.start(args, log_file=self.logs / f"{name}.log")
        proc = Proc(role=role, name=name, popen=popen, **kw)
        self.procs.append(proc)
        PROCESSES.labels(role=role).inc()
        log.info("started", extra={"role": role, "proc": name, "pid": popen.pid})
        return proc

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "lab.json").unlink(missing_ok=True)
        host = "127.0.0.1"

        etcd_dir = self.state_dir / "etcd"
        if etcd_dir.exists():
            shutil.rmtree(etcd_dir)
        # NOTE: started from the loop's own thread: a child dies with the thread that forked
        # it (PR_SET_PDEATHSIG), so never start servers from a worker thread.
        etcd_proc, self.etcd_url = procs.start_etcd(etcd_dir, log_file=self.logs / "etcd.log")
        self.procs.append(Proc(role="etcd", name="etcd", popen=etcd_proc))

        api_urls: dict[str, str] = {}
        for c in self.topology.clusters:
            port = procs.free_port()
            api_urls[c.name] = f"http://{host}:{port}"
            self._spawn(
                "kube-api",
                f"kube-api-{c.name}",
                self._python(
                    "navigator", "kube-api", "--host", host, "--port", str(port),
                    "--name", c.name, "--load", str(self.examples / c.name),
                    "--service-cidr", c.service_cidr,
                ),
                cluster=c.name,
                ready_url=f"http://{host}:{port}/readyz",
                extra={"url": api_urls[c.name]},
            )
        from navigator.kubeapi import server as kubeapi_server

        kubeapi_server.write_kubeconfig(self.kubeconfig, api_urls)

        self._start_backends()

        for c in self.topology.clusters:
            http = f"{host}:{procs.free_port()}"
            self._spawn(
                "watcher",
                f"watcher-{c.name}",
                self._python(
                    "navigator", "watcher", "--cluster", c.name, "--kubeconfig",
                    str(self.kubeconfig), "--context", c.name, "--etcd", self.etcd_url,
                    "--http", http,
                ),
                cluster=c.name,
                ready_url=f"http://{http}/readyz",
                extra={"http": http},
            )
        http = f"{host}:{procs.free_port()}"
        self._spawn(
            "translator",
            "translator",
            self._python("navigator", "translator", "--etcd", self.etcd_url, "--http", http),
            ready_url=f"http://{http}/readyz",
            extra={"http": http},
        )
        xds_port = procs.free_port()
        self.xds_address = f"{host}:{xds_port}"
        http = f"{host}:{procs.free_port()}"
        self._spawn(
            "xds",
            "xds-0",
            self._python(
                "navigator", "xds", "--listen", self.xds_address, "--etcd", self.etcd_url,
                "--http", http,
            ),
            ready_url=f"http://{http}/readyz",
            extra={"address": self.xds_address, "http": http},
        )
        await self._wait_ready([p for p in self.procs if p.ready_url])
        self._start_sidecars(host, xds_port)
        await self._wait_sidecars()
        self._write_lab_json(api_urls)

    def _start_backends(self) -> None:
        """One process per pod address of the example Endpoints, bound to the pod IP."""
        for c in self.topology.clusters:
            protocols: dict[tuple[str, str], dict[str, str]] = {}
            for doc in self.topology.manifests[c.name]:
                if doc.get("kind") == "Service":
                    meta = doc["metadata"]
                    protocols[(meta.get("namespace", "default"), meta["name"])] = {
                        p.get("name", ""): _port_kind(p) for p in doc["spec"].get("ports", [])
                    }
            pods: dict[str, dict[str, Any]] = {}
            for doc in self.topology.manifests[c.name]:
                if doc.get("kind") != "Endpoints":
                    continue
                meta = doc["metadata"]
                kinds = protocols.get((meta.get("namespace", "default"), meta["name"]), {})
                for subset in doc.get("subsets", []):
                    for addr in subset.get("addresses", []) + subset.get("notReadyAddresses", []):
                        ip = addr["ip"]
                        if not _in(ip, c.pod_cidr):
                            raise LabError(f"pod IP {ip} is outside {c.name}'s {c.pod_cidr}")
                        name = addr.get("targetRef", {}).get("name") or f"pod-{ip}"
                        pod = pods.setdefault(ip, {"name": name, "http": set(), "tcp": set()})
                        for port in subset.get("ports", []):
                            kind = kinds.get(port.get("name", ""), "tcp")
                            pod[kind].add(int(port["port"]))
            for ip, pod in sorted(pods.items()):
                args = [
                    "navigator.lab.backend", "--pod", pod["name"], "--cluster", c.name,
                    "--ip", ip,
                ]
                args += [a for p in sorted(pod["http"]) for a in ("--http", str(p))]
                args += [a for p in sorted(pod["tcp"]) for a in ("--tcp", str(p))]
                self._spawn(
                    "backend",
                    f"backend-{c.name}-{pod['name']}",
                    self._python(*args),
                    cluster=c.name,
                    extra={"pod": pod["name"], "ip": ip},
                )

    def _start_sidecars(self, xds_host: str, xds_port: int) -> None:
        envoy = str(procs.envoy_binary())
        clusters = {c.name: c for c in self.topology.clusters}
        for i, s in enumerate(self.topology.sidecars):
            c = clusters[s.cluster]
            admin_port = procs.free_port()
            node_id = f"{s.cluster}-{s.app}-{i}"
            config = bootstrap.render(
                node_id=node_id,
                app=s.app,
                cluster=s.cluster,
                region=c.region,
                zone=c.zone,
                xds_host=xds_host,
                xds_port=xds_port,
                admin_address="127.0.0.1",
                admin_port=admin_port,
            )
            path = self.state_dir / f"envoy-{node_id}.json"
            path.write_text(json.dumps(config, indent=2))
            self._spawn(
                "envoy",
                f"envoy-{node_id}",
                [
                    envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                    "-l", "warning", "--service-node", node_id,
                ],
                cluster=s.cluster,
                extra={"app": s.app, "node_id": node_id},
            )
            self.sidecars.append(
                {
                    "app": s.app,
                    "cluster": s.cluster,
                    "zone": c.zone,
                    "region": c.region,
                    "node_id": node_id,
                    "admin": f"http://127.0.0.1:{admin_port}",
                    "exec": [],
                }
            )

    async def _wait_ready(self, waiting: list[Proc], limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            pending = list(waiting)
            while pending:
                for proc in list(pending):
                    if proc.popen.poll() is not None:
                        raise LabError(
                            f"{proc.name} exited with {proc.popen.returncode}: "
                            f"see {self.logs / (proc.name + '.log')}"
                        )
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(proc.ready_url) as resp:
                            if resp.status == 200:
                                pending.remove(proc)
                if time.monotonic() > deadline:
                    names = ", ".join(p.name for p in pending)
                    raise LabError(f"not ready after {limit:.0f}s: {names} (see {self.logs})")
                if pending:
                    await asyncio.sleep(0.1)

    async def _wait_sidecars(self, limit: float = 60.0) -> None:
        """Each sidecar is ready when its admin says LIVE and it has its listeners."""
        deadline = time.monotonic() + limit
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            for sidecar in self.sidecars:
                while True:
                    proc = next(
                        p for p in self.procs if p.extra.get("node_id") == sidecar["node_id"]
                    )
                    if proc.popen.poll() is not None:
                        log_file = self.logs / (proc.name + ".log")
                        raise LabError(f"{proc.name} exited: see {log_file}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        url = sidecar["admin"] + "/listeners?format=json"
                        async with session.get(url) as resp:
                            body = await resp.json(content_type=None)
                            if body.get("listener_statuses"):
                                break
                    if time.monotonic() > deadline:
                        raise LabError(f"sidecar {sidecar['node_id']} got no listeners")
                    await asyncio.sleep(0.1)

    def _write_lab_json(self, api_urls: dict[str, str]) -> None:
        services: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.topology.clusters:
            for doc in self.topology.manifests[c.name]:
                if doc.get("kind") != "Service":
                    continue
                meta, spec = doc["metadata"], doc["spec"]
                key = (meta.get("namespace", "default"), meta["name"])
                entry = services.setdefault(
                    key,
                    {"namespace": key[0], "name": key[1], "cluster_ips": {}, "ports": []},
                )
                if spec.get("clusterIP") and spec["clusterIP"] != "None":
                    entry["cluster_ips"][c.name] = spec["clusterIP"]
                for p in spec.get("ports", []):
                    port = {"name": p.get("name", ""), "port": p["port"], "protocol": _port_kind(p)}
                    if port not in entry["ports"]:
                        entry["ports"].append(port)
        doc = {
            "etcd": [self.etcd_url],
            "kubeconfig": str(self.kubeconfig),
            "clusters": [
                dataclasses.asdict(c) | {"context": c.name, "api": api_urls[c.name]}
                for c in self.topology.clusters
            ],
            "services": [services[k] for k in sorted(services)],
            "sidecars": self.sidecars,
            "xds": [self.xds_address],
            "processes": [p.describe() for p in self.procs],
            "logs": str(self.logs),
            "http": self.http,
        }
        tmp = self.state_dir / "lab.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.state_dir / "lab.json")

    def check_alive(self) -> Proc | None:
        return next((p for p in self.procs if p.popen.poll() is not None), None)

    async def stop(self) -> None:
        """Stops every process, sidecars and control plane first, etcd last."""
        order = ["envoy", "backend", "xds", "translator", "watcher", "kube-api", "etcd"]
        for role in order:
            group = [p for p in self.procs if p.role == role]
            await asyncio.gather(*(asyncio.to_thread(procs.stop, p.popen) for p in group))
        (self.state_dir / "lab.json").unlink(missing_ok=True)


def _port_kind(port: dict[str, Any]) -> str:
    """http or tcp, decided as the watcher decides it (appProtocol, then the name prefix)."""
    proto = str(port.get("appProtocol") or "").lower()
    name = str(port.get("name") or "").lower()
    if proto:
        return "http" if proto in ("http", "http2", "grpc", "h2c", "kubernetes.io/h2c") else "tcp"
    prefix = name.split("-", 1)[0]
    return "http" if prefix in ("http", "http2", "grpc") else "tcp"


def instructions(lab: Lab) -> str:
    lines = [
        "",
        "Navigator lab is up. State and logs: " + str(lab.state_dir),
        "",
        f"  export NAVIGATOR_ETCD={lab.etcd_url}",
        f"  export KUBECONFIG={lab.kubeconfig}",
        "",
        "Try:",
    ]
    ips: dict[str, dict[str, Any]] = {}
    for c in lab.topology.clusters:
        for doc in lab.topology.manifests[c.name]:
            if doc.get("kind") == "Service" and doc["spec"].get("clusterIP"):
                ips.setdefault(c.name, {})[doc["metadata"]["name"]] = doc["spec"]
    for sidecar in lab.sidecars:
        for name, spec in sorted(ips.get(sidecar["cluster"], {}).items()):
            for p in spec.get("ports", []):
                target = f"{spec['clusterIP']}:{p['port']}"
                if _port_kind(p) == "http":
                    lines.append(
                        f"  curl -s http://{target}/   "
                        f"# {name} through the {sidecar['app']} sidecar in {sidecar['cluster']}"
                    )
                else:
                    lines.append(
                        f"  echo hello | curl -s --max-time 1 telnet://{target}   "
                        f"# {name} (raw TCP) through the {sidecar['app']} sidecar"
                    )
    first = lab.topology.clusters[0].name
    lines += [
        f"  kubectl --context {first} get svc,ep,nexus -A",
        f"  kubectl --context {first} -n shop delete endpoints echo",
        f"  curl -s {lab.sidecars[0]['admin']}/config_dump | less" if lab.sidecars else "",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="navigator lab",
        description="Run the mesh on this machine: etcd, Kubernetes API servers, control "
        "plane, Envoy sidecars and backends, each in its own process.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("NAVIGATOR_LAB_DIR", ".lab")),
        help="where lab.json, kubeconfig, data and logs go (default: %(default)s)",
    )
    parser.add_argument(
        "--examples", type=Path, default=REPO_EXAMPLES, help="topology and manifests"
    )
    parser.add_argument(
        "--http",
        default="127.0.0.1:0",
        help="address of the lab's /healthz, /readyz (all processes up) and /metrics",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    runtime.setup_logging(args.log_level, component="lab")

    async def amain(stop: asyncio.Event) -> int:
        try:
            lab = Lab(state_dir=args.state_dir, examples=args.examples)
        except LabError as exc:
            print(f"navigator lab: {exc}", file=sys.stderr)
            return 2
        health = runtime.Health()
        async with runtime.http_server(args.http, health) as http:
            lab.http = http
            return await _run(lab, stop, health)

    return runtime.run(amain)


async def _run(lab: Lab, stop: asyncio.Event, health: runtime.Health) -> int:
    try:
        starting = asyncio.create_task(lab.start())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 130
        stopper.cancel()
        starting.result()
        health.set_ready(True)
        print(instructions(lab), flush=True)
        while not stop.is_set():
            dead = lab.check_alive()
            if dead is not None:
                health.set_ready(False, f"{dead.name} exited")
                print(
                    f"navigator lab: {dead.name} exited with {dead.popen.returncode}; "
                    f"see {lab.logs / (dead.name + '.log')}",
                    file=sys.stderr,
                )
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return 0
    except (LabError, procs.ProcError) as exc:
        print(f"navigator lab: {exc}", file=sys.stderr)
        return 1
    finally:
        health.set_ready(False, "stopping")
        await lab.stop()
        log.info("lab stopped")
