"""``navigator lab``: the whole mesh on this machine, each part a real process.

It starts a real 3-member etcd, one local Kubernetes API server per cluster (loaded with the
Kubernetes objects of ``examples/<cluster>/``), the pods' applications bound to their pod IPs,
the control plane in its distributed shape (two watcher replicas per cluster, two translators
sharing the shards, two xDS front-ends, by default), one node-local balancer per cluster (an
Envoy from ``navigator balancer-config`` at the node address, balancing xDS over the healthy
front-ends) and one real Envoy sidecar per entry of ``examples/lab.yaml`` (SotW or Delta, its
``xds`` field). Once everything is ready it writes ``lab.json`` in its state directory
(the lab's contract with tests, tools and chaos scenarios) and prints what to try. SIGTERM or
Ctrl-C stops every process it started, by PID; a child also dies with the lab if the lab is
killed (see ``procs.start``).

Two networks (``--network``):

- ``netns`` (default where it works: root and iproute2): every pod is a network namespace
  plugged into its cluster's bridge, with the addresses of ``lab.yaml`` (``navigator.lab.
  netns``). A sidecar's pod makes its cluster's ClusterIP range local, so its Envoy binds
  ClusterIP:port listeners and a client in the pod (``lab.json``'s ``exec`` prefix) reaches
  services by their unchanged ClusterIPs; several sidecars of one cluster coexist. Sidecars
  reach their node's balancer at the node address (``HOST_IP``), as through the downward
  API; the balancers, like the front-ends, run in the host's namespace.
- ``host`` (no root needed): everything on the loopback range. The manifests' pod and
  ClusterIP addresses are moved to each cluster's ``host_*`` ranges (same host part), Envoys
  bind ClusterIP listeners on the host itself, so only the first sidecar of each cluster runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
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

from chaos import faultproxy
from coordinator import auth
from coordinator import etcd as etcd_mod
from navigator import balancer, bootstrap, pki, runtime
from navigator.lab import netns, procs

log = logging.getLogger(__name__)

REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PROCESSES = prometheus_client.Gauge("navigator_lab_processes", "Processes started", ["role"])

ENVOY_FLAGS = ("--concurrency", "1", "--disable-hot-restart", "-l", "warning")
"""Many sidecars on two cores: one worker each, no shared-memory hot restart."""

ENVOY_ADMIN_PORT = 19000
"""A sidecar's admin port in its own pod (host mode picks a free port instead)."""


class LabError(RuntimeError):
    """The lab cannot start: a one-line reason for the user."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    region: str
    zone: str
    node_ip: str
    pod_cidr: str
    service_cidr: str
    host_pod_cidr: str
    """Where ``pod_cidr``'s addresses move in host mode (on the loopback range)."""
    host_service_cidr: str


@dataclasses.dataclass(frozen=True, slots=True)
class SidecarSpec:
    app: str
    cluster: str
    xds: str = ""
    """``sotw`` or ``delta`` (the variant of its ADS stream); empty: the lab's default."""


@dataclasses.dataclass(frozen=True, slots=True)
class GatewaySpec:
    namespace: str
    name: str
    cluster: str

    @property
    def app(self) -> str:
        """The app of a gateway's Envoy, as the translator publishes it (``shards.gateway``)."""
        return f"gateway:{self.namespace}:{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Topology:
    clusters: tuple[ClusterSpec, ...]
    sidecars: tuple[SidecarSpec, ...]
    manifests: dict[str, list[dict[str, Any]]]
    """Kubernetes objects per cluster, as loaded from ``examples/<cluster>/``."""
    gateways: tuple[GatewaySpec, ...] = ()


def load_topology(examples: Path) -> Topology:
    path = examples / "lab.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
        clusters = tuple(ClusterSpec(**c) for c in raw["clusters"])
        sidecars = tuple(SidecarSpec(**s) for s in raw.get("sidecars", []))
        gateways = tuple(GatewaySpec(**g) for g in raw.get("gateways", []))
        specs: list[ClusterSpec | SidecarSpec | GatewaySpec] = [*clusters, *sidecars, *gateways]
        for spec in specs:
            for field in dataclasses.fields(spec):
                if not isinstance(getattr(spec, field.name), str):
                    raise TypeError(f"{type(spec).__name__}.{field.name} must be a string")
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        # NOTE: ValueError: not UTF-8; AttributeError: a list or entry that is not a mapping.
        raise LabError(f"cannot read lab topology {path}: {exc}") from exc
    manifests: dict[str, list[dict[str, Any]]] = {}
    for c in clusters:
        docs: list[dict[str, Any]] = []
        for file in sorted((examples / c.name).glob("*.yaml")):
            try:
                docs += [d for d in yaml.safe_load_all(file.read_text()) if d]
            except (yaml.YAMLError, ValueError) as exc:
                raise LabError(f"cannot parse {file}: {exc}") from exc
        manifests[c.name] = docs
    names = {c.name for c in clusters}
    for s in sidecars:
        if s.cluster not in names:
            raise LabError(f"sidecar {s.app} is in unknown cluster {s.cluster}")
        if s.xds not in ("", "sotw", "delta"):
            raise LabError(
                f"sidecar {s.app} in {s.cluster}: xds must be sotw or delta, not {s.xds!r}"
            )
    for g in gateways:
        if g.cluster not in names:
            raise LabError(f"gateway {g.namespace}/{g.name} is in unknown cluster {g.cluster}")
    return Topology(clusters=clusters, sidecars=sidecars, manifests=manifests, gateways=gateways)


class AddressMap:
    """Moves addresses from the netns ranges to the host ranges, keeping the host part."""

    def __init__(self, clusters: Sequence[ClusterSpec]) -> None:
        self._pairs: list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]] = []
        for c in clusters:
            for src, dst in ((c.pod_cidr, c.host_pod_cidr), (c.service_cidr, c.host_service_cidr)):
                a, b = ipaddress.IPv4Network(src), ipaddress.IPv4Network(dst)
                if a.prefixlen != b.prefixlen:
                    raise LabError(f"{src} and {dst} must have the same size")
                self._pairs.append((a, b))

    def ip(self, value: str) -> str:
        try:
            addr = ipaddress.IPv4Address(value)
        except ValueError:
            return value
        for src, dst in self._pairs:
            if addr in src:
                return str(dst.network_address + (int(addr) - int(src.network_address)))
        return value

    def doc(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.doc(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.doc(v) for v in value]
        if isinstance(value, str):
            return self.ip(value)
        return value


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
    args: list[str] = dataclasses.field(default_factory=list)
    """What it was started with (``Lab.restart`` starts it so again)."""

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "name": self.name, "pid": self.popen.pid}
        if self.cluster:
            out["cluster"] = self.cluster
        return out | self.extra


def choose_network(wanted: str) -> tuple[str, str]:
    """(mode, why) for ``--network auto|netns|host``."""
    if wanted == "host":
        return "host", "asked for"
    ok, why = netns.available()
    if ok:
        return "netns", "root and iproute2 are here"
    if wanted == "netns":
        raise LabError(f"network namespaces are not available: {why}")
    return "host", f"network namespaces are not available ({why})"


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """How many of each control-plane process the lab runs."""

    etcd_members: int = 3
    watchers_per_cluster: int = 2
    translators: int = 2
    frontends: int = 2
    shards: int = 8
    lease_ttl: int = 5
    """Of watchers and translators: how long a dead leader holds on."""
    translator_debounce: float = 0.01
    sidecar_xds: str = "sotw"
    """The xDS variant of sidecars whose lab.yaml entry does not say (``sotw``/``delta``)."""
    frontend_proxies: bool = False
    """Put a fault proxy (``chaos.faultproxy``) between the balancers and each front-end, so
    a test can black-hole or reset a front-end's ports (``Lab.proxies``)."""
    balancer_keepalive: float = 1.0
    """The balancers' HTTP/2 keepalive interval and timeout towards front-ends, s."""
    etcd_client_proxies: tuple[str, ...] = ()
    """Roles (``watcher``, ``translator``, ``xds``) whose processes reach etcd through fault
    proxies (``Lab.etcd_client_proxies``, one per member), so a scenario can cut one process
    off from etcd (``only_from`` its PID)."""
    etcd_peer_proxies: bool = False
    """Put a fault proxy in front of each etcd member's peer port (``Lab.etcd_peer_proxies``),
    so a scenario can cut one member off from its peers while clients still reach it."""
    secure: bool = True
    """Everything on, as a deployment should run (``Lab.start``'s docstring): etcd over TLS
    with a role per component, sidecars' tokens reviewed by their cluster's API, TLS from
    sidecar to balancer and mutual TLS from balancer to front-end. ``--insecure`` turns it
    off."""


TOKEN_SECONDS = 7 * 24 * 3600
"""How long the lab's service-account tokens last (nothing rotates them as a kubelet would)."""


class Lab:
    """Starts, describes and stops the lab's processes (and its pods' network)."""

    def __init__(
        self, *, state_dir: Path, examples: Path, network: str = "auto", shape: Shape = Shape()
    ) -> None:
        self.shape = shape
        self.state_dir = state_dir.resolve()
        self.examples = examples.resolve()
        self.logs = self.state_dir / "logs"
        self.procs: list[Proc] = []
        self.topology = load_topology(self.examples)
        self.mode, why = choose_network(network)
        log.info("lab network", extra={"mode": self.mode, "why": why})
        self.manifests = self.topology.manifests
        self.sidecar_specs = list(self.topology.sidecars)
        if self.mode == "host":
            amap = AddressMap(self.topology.clusters)
            self.manifests = {c: amap.doc(docs) for c, docs in self.manifests.items()}
            seen: set[str] = set()
            self.sidecar_specs = []
            for s in self.topology.sidecars:
                if s.cluster in seen:
                    log.warning(
                        "host network: skipping a second sidecar of a cluster (it would bind "
                        "the same ClusterIP:port listeners); use --network netns",
                        extra={"app": s.app, "cluster": s.cluster},
                    )
                    continue
                seen.add(s.cluster)
                self.sidecar_specs.append(s)
        self.net: netns.Network | None = None
        self.etcd_urls: list[str] = []
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.sidecars: list[dict[str, Any]] = []
        self.gateways: list[dict[str, Any]] = []
        self.frontends: list[dict[str, Any]] = []
        self.balancers: list[dict[str, Any]] = []
        self.etcd_members: list[procs.EtcdMember] = []
        self.etcd_client_proxies: dict[str, list[faultproxy.FaultProxy]] = {}
        """Role → the fault proxies (one per member) its processes reach etcd through."""
        self.etcd_peer_proxies: dict[str, faultproxy.FaultProxy] = {}
        """etcd member name → the fault proxy its peers reach it through (``etcd_peer_proxies``);
        its ``sources`` are the members' processes, for ``only_from``."""
        self.proxies: dict[str, tuple[faultproxy.FaultProxy, faultproxy.FaultProxy]] = {}
        """Front-end name → fault proxies of its (gRPC, HTTP) ports, with ``frontend_proxies``."""
        self.http = ""
        """The lab's own /healthz, /readyz and /metrics address."""
        self.pki = self.state_dir / "pki"
        """The mesh CA and the certificates of front-ends and balancers (``secure``)."""
        self.etcd_credentials: procs.EtcdCredentials | None = None
        """etcd's CA and one client certificate per role (``secure``); the lab's own is root."""
        self.tokens = self.state_dir / "tokens"
        """Each Envoy's service-account token (``secure``), as the kubelet projects it."""

    @property
    def etcd_url(self) -> str:
        """Every member's client URL, comma-separated (what ``--etcd`` takes)."""
        return ",".join(self.etcd_urls)

    @property
    def etcd_tls(self) -> etcd_mod.Tls | None:
        """The lab's own (root) client TLS for etcd; None when the lab is not secure."""
        return None if self.etcd_credentials is None else self.etcd_credentials.root.tls()

    def etcd_client(self, **options: Any) -> etcd_mod.Etcd:
        """A client of the lab's etcd with root's credentials (tests, chaos, tools)."""
        return etcd_mod.Etcd(etcd_mod.parse_endpoints(self.etcd_url), tls=self.etcd_tls, **options)

    def etcd_args(self, role: str = "") -> list[str]:
        """``--etcd URL`` and the TLS options of ``role``'s user (root by default): what a
        ``navigator`` command is given to reach the lab's etcd."""
        out = ["--etcd", self.etcd_url_for(role) if role else self.etcd_url]
        if self.etcd_credentials is not None:
            creds = self.etcd_credentials
            out += (creds.client(role_user(role)) if role else creds.root).flags()
        return out

    def etcd_env(self) -> dict[str, str]:
        """The same for root as environment variables (``NAVIGATOR_ETCD``...)."""
        env = {"NAVIGATOR_ETCD": self.etcd_url}
        if self.etcd_credentials is not None:
            env |= self.etcd_credentials.root.env()
        return env

    def pod_cidr(self, c: ClusterSpec) -> str:
        return c.pod_cidr if self.mode == "netns" else c.host_pod_cidr

    def service_cidr(self, c: ClusterSpec) -> str:
        return c.service_cidr if self.mode == "netns" else c.host_service_cidr

    def node_ip(self, c: ClusterSpec) -> str:
        return c.node_ip if self.mode == "netns" else "127.0.0.1"

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", *args]

    def spawn(self, role: str, name: str, args: list[str], **kw: Any) -> Proc:
        popen = procs.start(args, log_file=self.logs / f"{name}.log")
        proc = Proc(role=role, name=name, popen=popen, args=list(args), **kw)
        self.procs.append(proc)
        PROCESSES.labels(role=role).inc()
        log.info("started", extra={"role": role, "proc": name, "pid": popen.pid})
        return proc

    def _setup_network(self) -> None:
        record = self.state_dir / "network.json"
        if record.exists():
            # NOTE: only what this state directory's previous (crashed) lab made is swept;
            # another lab's network is never touched.
            with contextlib.suppress(ValueError, KeyError, netns.NetnsError):
                netns.sweep_prefix(json.loads(record.read_text())["prefix"])
            record.unlink()
        if self.mode != "netns":
            return
        self.net = netns.Network(
            netns.new_prefix(),
            [
                netns.ClusterNet(c.name, c.pod_cidr, c.service_cidr, c.node_ip)
                for c in self.topology.clusters
            ],
        )
        record.write_text(json.dumps({"prefix": self.net.prefix}))
        try:
            self.net.setup()
        except netns.NetnsError as exc:
            raise LabError(str(exc)) from exc

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "lab.json").unlink(missing_ok=True)
        host = "127.0.0.1"
        self._setup_network()

        etcd_dir = self.state_dir / "etcd"
        if etcd_dir.exists():
            shutil.rmtree(etcd_dir)
        # NOTE: started from the loop's own thread: a child dies with the thread that
        # started it (PR_SET_PDEATHSIG), so never start servers from a worker thread.
        listen: dict[str, int] = {}
        advertise: dict[str, str] = {}
        if self.shape.etcd_peer_proxies:
            for i in range(self.shape.etcd_members):
                name = f"etcd{i}"
                listen[name] = procs.free_port(host)
                proxy = faultproxy.FaultProxy(upstream=(host, listen[name]))
                proxy.sources = self._etcd_pids
                await proxy.start()
                self.etcd_peer_proxies[name] = proxy
                advertise[name] = proxy.address
        server_tls = None
        if self.shape.secure:
            self.etcd_credentials = procs.make_etcd_credentials(
                self.state_dir / "etcd-pki", hosts=[host]
            )
            server_tls = self.etcd_credentials.server
        members = procs.start_etcd_cluster(
            etcd_dir,
            members=self.shape.etcd_members,
            logs=self.logs,
            peer_listen=listen or None,
            peer_advertise=advertise or None,
            tls=server_tls,
        )
        self.etcd_members = members
        self.etcd_urls = [m.client_url for m in members]
        for role in self.shape.etcd_client_proxies:
            for m in members:
                proxy = faultproxy.FaultProxy(upstream=(host, m.client_port))
                proxy.sources = functools.partial(self._pids_of, role)
                await proxy.start()
                self.etcd_client_proxies.setdefault(role, []).append(proxy)
        for m in members:
            self.procs.append(
                Proc(role="etcd", name=m.name, popen=m.popen, extra={"url": m.client_url})
            )
        if self.etcd_credentials is not None:
            async with self.etcd_client(retry_for=30.0) as root:
                await auth.enable(root)
            log.info("etcd: client TLS and a role per component", extra={"users": auth.USERS})
        if self.shape.secure:
            self._make_pki()

        manifests_dir = self.state_dir / "manifests"
        manifests_dir.mkdir(exist_ok=True)
        api_urls: dict[str, str] = {}
        self.control_urls: dict[str, str] = {}
        if self.shape.secure:
            self.tokens.mkdir(parents=True, exist_ok=True)
        for c in self.topology.clusters:
            port, control = procs.free_port(), procs.free_port()
            api_urls[c.name] = f"http://{host}:{port}"
            self.control_urls[c.name] = f"http://{host}:{control}"
            manifest = manifests_dir / f"{c.name}.yaml"
            docs = self.manifests[c.name]
            if self.shape.secure:
                docs = [*docs, *self._service_accounts(c.name)]
            manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            secure_api = (
                ["--token-key-file", str(self.tokens / f"kube-api-{c.name}.key")]
                if self.shape.secure
                else []
            )
            self.spawn(
                "kube-api",
                f"kube-api-{c.name}",
                self._python(
                    "navigator",
                    "kube-api",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--name",
                    c.name,
                    "--load",
                    str(manifest),
                    "--service-cidr",
                    self.service_cidr(c),
                    "--control-port",
                    str(control),
                    *secure_api,
                ),
                cluster=c.name,
                ready_url=f"http://{host}:{port}/readyz",
                extra={"url": api_urls[c.name], "control": self.control_urls[c.name]},
            )
        from navigator.kubeapi import server as kubeapi_server

        kubeapi_server.write_kubeconfig(self.kubeconfig, api_urls)

        self._start_backends()

        for c in self.topology.clusters:
            for r in range(self.shape.watchers_per_cluster):
                name = f"watcher-{c.name}-{r}"
                http = f"{host}:{procs.free_port()}"
                self.spawn(
                    "watcher",
                    name,
                    self._python(
                        "navigator",
                        "watcher",
                        "--cluster",
                        c.name,
                        "--kubeconfig",
                        str(self.kubeconfig),
                        "--context",
                        c.name,
                        *self.etcd_args("watcher"),
                        "--http",
                        http,
                        "--id",
                        name,
                        "--lease-ttl",
                        str(self.shape.lease_ttl),
                    ),
                    cluster=c.name,
                    ready_url=f"http://{http}/readyz",
                    extra={"http": http, "id": name},
                )
        for i in range(self.shape.translators):
            self.start_translator(i)
        for i in range(self.shape.frontends):
            self.start_frontend(i)
        await self.wait_ready([p for p in self.procs if p.ready_url])
        # NOTE: after every process has bound the port it was given: the fault proxies
        # listen on port 0 in this process and could otherwise take one of those.
        await self._start_balancers()
        await self.wait_ready([p for p in self.procs if p.role == "balancer"])
        self._start_sidecars()
        self._start_gateways()
        await self._wait_sidecars()
        self._write_lab_json(api_urls)

    def start_frontend(self, i: int) -> Proc:
        """Starts front-end ``i`` on loopback; the balancers reach it there (or via a proxy)."""
        name = f"xds-{i}"
        xds_port, http_port = procs.free_port(), procs.free_port()
        address, http = f"127.0.0.1:{xds_port}", f"127.0.0.1:{http_port}"
        proc = self.spawn(
            "xds",
            name,
            self._python(
                "navigator",
                "xds",
                "--listen",
                address,
                *self.etcd_args("xds"),
                "--http",
                http,
                "--id",
                name,
                *self._frontend_security(),
            ),
            ready_url=f"http://{http}/readyz",
            extra={"address": address, "http": http, "id": name},
        )
        self.frontends.append({"name": name, **proc.extra})
        return proc

    async def _start_balancers(self) -> None:
        """One node-local balancer per cluster (its node), at the node address (HOST_IP)."""
        targets: list[balancer.Frontend] = []
        for fe in self.frontends:
            grpc_port, http_port = (
                int(fe["address"].rpartition(":")[2]),
                int(fe["http"].rpartition(":")[2]),
            )
            if self.shape.frontend_proxies:
                pair = (
                    faultproxy.FaultProxy(upstream=("127.0.0.1", grpc_port)),
                    faultproxy.FaultProxy(upstream=("127.0.0.1", http_port)),
                )
                for proxy in pair:
                    await proxy.start()
                self.proxies[fe["name"]] = pair
                grpc_port, http_port = (int(p.address.rpartition(":")[2]) for p in pair)
                fe["via"] = [p.address for p in pair]
            targets.append(balancer.Frontend("127.0.0.1", grpc_port, http_port))
        for c in self.topology.clusters:
            node_ip = self.node_ip(c)
            xds_port, health_port, admin_port = (
                procs.free_port(node_ip),
                procs.free_port(node_ip),
                procs.free_port(),
            )
            config = balancer.render(
                targets,
                listen=node_ip,
                listen_port=xds_port,
                health_port=health_port,
                admin_port=admin_port,
                keepalive_interval=self.shape.balancer_keepalive,
                keepalive_timeout=self.shape.balancer_keepalive,
                tls=self._balancer_tls(c.name),
            )
            name = f"balancer-{c.name}"
            path = self.state_dir / f"{name}.json"
            path.write_text(json.dumps(config, indent=2))
            admin = f"http://127.0.0.1:{admin_port}"
            self.spawn(
                "balancer",
                name,
                [str(procs.envoy_binary()), "-c", str(path), *ENVOY_FLAGS],
                cluster=c.name,
                ready_url=f"{admin}/ready",
                extra={
                    "address": f"{node_ip}:{xds_port}",
                    "health": f"{node_ip}:{health_port}",
                    "admin": admin,
                },
            )
            self.balancers.append(
                {
                    "name": name,
                    "cluster": c.name,
                    "address": f"{node_ip}:{xds_port}",
                    "health": f"{node_ip}:{health_port}",
                    "admin": admin,
                }
            )

    def balancer_of(self, cluster: str) -> dict[str, Any]:
        return next(b for b in self.balancers if b["cluster"] == cluster)

    def start_translator(self, i: int) -> Proc:
        """Starts translator replica ``i`` (tests add replicas to a running lab this way)."""
        name = f"translator-{i}"
        http = f"127.0.0.1:{procs.free_port()}"
        return self.spawn(
            "translator",
            name,
            self._python(
                "navigator",
                "translator",
                *self.etcd_args("translator"),
                "--http",
                http,
                "--id",
                name,
                "--shards",
                str(self.shape.shards),
                "--lease-ttl",
                str(self.shape.lease_ttl),
                "--debounce",
                str(self.shape.translator_debounce),
            ),
            ready_url=f"http://{http}/readyz",
            extra={"http": http, "id": name},
        )

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def etcd_url_for(self, role: str) -> str:
        """What ``--etcd`` a process of ``role`` is given: the members, or their proxies."""
        proxies = self.etcd_client_proxies.get(role)
        if not proxies:
            return self.etcd_url
        scheme = "https" if self.etcd_credentials is not None else "http"
        return ",".join(f"{scheme}://{p.address}" for p in proxies)

    def _service_accounts(self, cluster: str) -> list[dict[str, Any]]:
        """The ServiceAccount of every Envoy the lab runs in ``cluster``: a sidecar's is named
        after its app (in ``default``), a gateway's after its Gateway (in its namespace)."""
        wanted = {("default", s.app) for s in self.sidecar_specs if s.cluster == cluster}
        wanted |= {(g.namespace, g.name) for g in self.topology.gateways if g.cluster == cluster}
        return [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"namespace": ns, "name": n}}
            for ns, n in sorted(wanted)
        ]

    def _token(self, node_id: str, cluster: str, account: tuple[str, str]) -> Path:
        """A token of ``account`` for the front-ends (audience ``navigator``), from the cluster's
        TokenRequest API, in the file the Envoy reads (as the kubelet projects one)."""
        import kubernetes

        namespace, name = account
        api = kubernetes.client.CoreV1Api(
            kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig), context=cluster
            )
        )
        request = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(
                audiences=["navigator"], expiration_seconds=TOKEN_SECONDS
            )
        )
        answer = api.create_namespaced_service_account_token(name, namespace, request)
        api.api_client.close()
        token = answer.status.token if answer.status is not None else None
        if not token:
            raise LabError(f"no token for {namespace}/{name} from {cluster}'s API")
        self.tokens.mkdir(parents=True, exist_ok=True)
        path = self.tokens / node_id
        # NOTE: created 0600, never readable by others in between (as the kubelet's files).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return path

    def _frontend_security(self) -> list[str]:
        if not self.shape.secure:
            return []
        return [
            "--authn", "token",
            "--review-kubeconfig", str(self.kubeconfig),
            "--tls-cert", str(self.pki / "xds.pem"),
            "--tls-key", str(self.pki / "xds.key"),
            "--tls-client-ca", str(self.pki / "ca.pem"),
        ]  # fmt: skip

    def _balancer_tls(self, cluster: str) -> balancer.Tls | None:
        if not self.shape.secure:
            return None
        return balancer.Tls(
            cert=str(self.pki / f"balancer-{cluster}.pem"),
            key=str(self.pki / f"balancer-{cluster}.key"),
            frontend_ca=str(self.pki / "ca.pem"),
            client_cert=str(self.pki / "balancer.pem"),
            client_key=str(self.pki / "balancer.key"),
        )

    def _make_pki(self) -> None:
        """The mesh CA; the front-ends' certificate (``navigator-xds``, loopback), each node's
        balancer certificate (its address) and the balancers' client certificate."""
        self.pki.mkdir(parents=True, exist_ok=True)
        ca = pki.new_ca("navigator-lab-mesh-ca")
        pki.write_cert(ca, self.pki / "ca.pem")
        server = pki.issue_server(
            ca, name="navigator-xds", hosts=[balancer.DEFAULT_FRONTEND_SAN, "127.0.0.1"]
        )
        pki.write_pair(server, self.pki, "xds")
        for c in self.topology.clusters:
            node = pki.issue_server(ca, name=f"balancer-{c.name}", hosts=[self.node_ip(c)])
            pki.write_pair(node, self.pki, f"balancer-{c.name}")
        pki.write_pair(pki.issue_client(ca, user="navigator-balancer"), self.pki, "balancer")

    def _pids_of(self, role: str) -> list[int]:
        return [p.popen.pid for p in self.procs if p.role == role]

    def _etcd_pids(self) -> list[int]:
        return [m.popen.pid for m in self.etcd_members]

    def restart(self, name: str) -> Proc:
        """Starts a stopped or killed process again, as it was started (same arguments, ports
        and data: an etcd member rejoins on its data directory)."""
        proc = self.proc(name)
        if proc.popen.poll() is None:
            raise LabError(f"{name} is still running (pid {proc.popen.pid})")
        if proc.role == "etcd":
            member = next(m for m in self.etcd_members if m.name == name)
            procs.restart_etcd_member(member)
            proc.popen = member.popen
        else:
            proc.popen = procs.start(proc.args, log_file=self.logs / f"{name}.log")
        log.info("restarted", extra={"role": proc.role, "proc": name, "pid": proc.popen.pid})
        return proc

    def add_backend(self, cluster: str, pod: str, ip: str, http_ports: Sequence[int]) -> Proc:
        """Starts one more pod's application (HTTP on ``http_ports``) at ``ip`` in ``cluster``,
        in a pod of its own on the netns network: a pod a roll-out creates."""
        c = next(c for c in self.topology.clusters if c.name == cluster)
        if not _in(ip, self.pod_cidr(c)):
            raise LabError(f"pod IP {ip} is outside {cluster}'s {self.pod_cidr(c)}")
        prefix: list[str] = []
        if self.net is not None:
            prefix = self.net.add_pod(cluster, pod, ip).exec_prefix
        args = ["navigator.lab.backend", "--pod", pod, "--cluster", cluster, "--ip", ip]
        args += [a for port in http_ports for a in ("--http", str(port))]
        return self.spawn(
            "backend",
            f"backend-{cluster}-{pod}",
            prefix + self._python(*args),
            cluster=cluster,
            extra={"pod": pod, "ip": ip, "exec": prefix},
        )

    def wait_serving(self, backends: Sequence[Proc], timeout: float = 20.0) -> None:
        """Returns once every one of ``backends`` says it serves (its log's "pod serving"
        line: its sockets are bound); raises LabError if one exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        waiting = list(backends)
        while waiting:
            for proc in list(waiting):
                if proc.popen.poll() is not None:
                    raise LabError(f"{proc.name} exited with {proc.popen.returncode}")
                log_file = self.logs / f"{proc.name}.log"
                if log_file.exists() and "pod serving" in log_file.read_text(errors="replace"):
                    waiting.remove(proc)
            if waiting and time.monotonic() > deadline:
                raise LabError(f"not serving within {timeout:g} s: {[p.name for p in waiting]}")
            if waiting:
                time.sleep(0.05)

    def _start_backends(self) -> None:
        """One process per pod address of the example Endpoints, bound to the pod IP."""
        for c in self.topology.clusters:
            protocols: dict[tuple[str, str], dict[str, str]] = {}
            for doc in self.manifests[c.name]:
                if doc.get("kind") == "Service":
                    meta = doc["metadata"]
                    protocols[(meta.get("namespace", "default"), meta["name"])] = {
                        p.get("name", ""): _port_kind(p) for p in doc["spec"].get("ports", [])
                    }
            pods: dict[str, dict[str, Any]] = {}
            for doc in self.manifests[c.name]:
                if doc.get("kind") != "Endpoints":
                    continue
                meta = doc["metadata"]
                kinds = protocols.get((meta.get("namespace", "default"), meta["name"]), {})
                for subset in doc.get("subsets", []):
                    for addr in subset.get("addresses", []) + subset.get("notReadyAddresses", []):
                        ip = addr["ip"]
                        if not _in(ip, self.pod_cidr(c)):
                            raise LabError(f"pod IP {ip} is outside {c.name}'s {self.pod_cidr(c)}")
                        name = addr.get("targetRef", {}).get("name") or "pod-" + ip.replace(
                            ".", "-"
                        )
                        pod = pods.setdefault(ip, {"name": name, "http": set(), "tcp": set()})
                        for port in subset.get("ports", []):
                            kind = kinds.get(port.get("name", ""), "tcp")
                            pod[kind].add(int(port["port"]))
            for ip, pod in sorted(pods.items()):
                args = [
                    "navigator.lab.backend",
                    "--pod",
                    pod["name"],
                    "--cluster",
                    c.name,
                    "--ip",
                    ip,
                ]
                args += [a for p in sorted(pod["http"]) for a in ("--http", str(p))]
                args += [a for p in sorted(pod["tcp"]) for a in ("--tcp", str(p))]
                prefix: list[str] = []
                if self.net is not None:
                    prefix = self.net.add_pod(c.name, pod["name"], ip).exec_prefix
                self.spawn(
                    "backend",
                    f"backend-{c.name}-{pod['name']}",
                    prefix + self._python(*args),
                    cluster=c.name,
                    extra={"pod": pod["name"], "ip": ip, "exec": prefix},
                )

    def _start_envoy(
        self,
        *,
        node_id: str,
        app: str,
        cluster: ClusterSpec,
        prefix: list[str],
        admin: tuple[str, int],
        xds: str = "",
        node_name: str = "",
        account: tuple[str, str] | None = None,
    ) -> None:
        """An Envoy (sidecar or gateway) from ``navigator bootstrap``'s config, in its pod.

        With ``account`` (namespace, name; ``secure``) it sends that service account's token.

        It reaches the control plane through its node's balancer, as through ``HOST_IP``. With
        ``node_name`` its bootstrap names its node and no zone, as ``deploy/`` sidecars do: the
        front-end places it in that node's zone.
        """
        node = self.balancer_of(cluster.name)
        host, _, xds_port = node["address"].rpartition(":")
        config = bootstrap.render(
            node_id=node_id,
            app=app,
            cluster=cluster.name,
            region="" if node_name else cluster.region,
            zone="" if node_name else cluster.zone,
            node_name=node_name,
            xds_host=host,
            xds_port=int(xds_port),
            admin_address=admin[0],
            admin_port=admin[1],
            control_plane_health_port=int(node["health"].rpartition(":")[2]),
            delta=(xds or self.shape.sidecar_xds) == "delta",
            xds_ca=str(self.pki / "ca.pem") if self.shape.secure else "",
            token_file=str(self._token(node_id, cluster.name, account)) if account else "",
        )
        path = self.state_dir / f"envoy-{node_id}.json"
        path.write_text(json.dumps(config, indent=2))
        self.spawn(
            "envoy",
            f"envoy-{node_id}",
            [*prefix, str(procs.envoy_binary()), "-c", str(path), *ENVOY_FLAGS],
            cluster=cluster.name,
            extra={"app": app, "node_id": node_id},
        )

    def _start_sidecars(self) -> None:
        clusters = {c.name: c for c in self.topology.clusters}
        for i, s in enumerate(self.sidecar_specs):
            c = clusters[s.cluster]
            node_id = f"{s.cluster}-{s.app}-{i}"
            prefix: list[str] = []
            admin_address, admin_port, pod_ip = "127.0.0.1", procs.free_port(), ""
            if self.net is not None:
                pod = self.net.add_pod(c.name, f"{s.app}-{i}")
                pod.intercept()
                prefix = pod.exec_prefix
                admin_address, admin_port, pod_ip = pod.ip, ENVOY_ADMIN_PORT, pod.ip
            delta = (s.xds or self.shape.sidecar_xds) == "delta"
            # NOTE: Delta sidecars name their node instead of their zone (as deploy/'s do), so
            # the lab's SotW/Delta pairs also check that the front-end places them alike.
            node_name = self._node_of(c.name) if delta else ""
            self._start_envoy(
                node_id=node_id,
                app=s.app,
                cluster=c,
                prefix=prefix,
                admin=(admin_address, admin_port),
                xds=s.xds,
                node_name=node_name,
                account=("default", s.app) if self.shape.secure else None,
            )
            self.sidecars.append(
                {
                    "xds": s.xds or self.shape.sidecar_xds,
                    "app": s.app,
                    "cluster": s.cluster,
                    "zone": c.zone,
                    "region": c.region,
                    "node_id": node_id,
                    "admin": f"http://{admin_address}:{admin_port}",
                    "exec": prefix,
                    "pod_ip": pod_ip,
                    "host_ip": self.node_ip(c),
                    "node_name": node_name,
                }
            )

    def _node_of(self, cluster: str) -> str:
        """The first Node of ``cluster``'s manifests (the node its pods run on)."""
        for doc in self.manifests.get(cluster, []):
            if isinstance(doc, dict) and doc.get("kind") == "Node":
                return str(doc["metadata"]["name"])
        return ""

    def _start_gateways(self) -> None:
        """One gateway Envoy per ``gateways`` entry, in a pod of its own (netns only)."""
        if self.net is None:
            for g in self.topology.gateways:
                log.warning(
                    "host network: not starting gateway (it would bind a port of the host); "
                    "use --network netns",
                    extra={"gateway": f"{g.namespace}/{g.name}"},
                )
            return
        clusters = {c.name: c for c in self.topology.clusters}
        for i, g in enumerate(self.topology.gateways):
            c = clusters[g.cluster]
            spec = next(
                (
                    d.get("spec", {})
                    for d in self.manifests[g.cluster]
                    if d.get("kind") == "Gateway"
                    and d["metadata"]["name"] == g.name
                    and d["metadata"].get("namespace") == g.namespace
                ),
                None,
            )
            if spec is None:
                raise LabError(f"no Gateway {g.namespace}/{g.name} in examples/{g.cluster}")
            pod = self.net.add_pod(c.name, f"gw-{g.name}-{i}")
            node_id = f"{g.cluster}-gw-{g.name}-{i}"
            self._start_envoy(
                node_id=node_id,
                app=g.app,
                cluster=c,
                prefix=pod.exec_prefix,
                admin=(pod.ip, ENVOY_ADMIN_PORT),
                account=(g.namespace, g.name) if self.shape.secure else None,
            )
            self.gateways.append(
                {
                    "namespace": g.namespace,
                    "name": g.name,
                    "app": g.app,
                    "cluster": g.cluster,
                    "node_id": node_id,
                    "address": f"{pod.ip}:{spec.get('port')}",
                    "admin": f"http://{pod.ip}:{ENVOY_ADMIN_PORT}",
                    "exec": pod.exec_prefix,
                }
            )

    async def wait_ready(self, waiting: list[Proc], limit: float = 60.0) -> None:
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
            for sidecar in self.sidecars + self.gateways:
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
            for doc in self.manifests[c.name]:
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
                    port = {
                        "name": p.get("name", ""),
                        "port": p["port"],
                        "protocol": _port_kind(p),
                    }
                    if port not in entry["ports"]:
                        entry["ports"].append(port)
        creds = self.etcd_credentials
        doc = {
            "etcd": self.etcd_urls,
            # NOTE: root's client TLS, for tools run against the lab (``etcd_env``).
            "etcd_tls": (
                {"ca": str(creds.root.ca), "cert": str(creds.root.cert), "key": str(creds.root.key)}
                if creds is not None
                else None
            ),
            "secure": self.shape.secure,
            "kubeconfig": str(self.kubeconfig),
            "network": {
                "mode": self.mode,
                "prefix": self.net.prefix if self.net is not None else "",
            },
            "clusters": [
                {
                    "name": c.name,
                    "context": c.name,
                    "region": c.region,
                    "zone": c.zone,
                    "pod_cidr": self.pod_cidr(c),
                    "service_cidr": self.service_cidr(c),
                    "node_ip": self.node_ip(c),
                    "api": api_urls[c.name],
                    "control": self.control_urls[c.name],
                }
                for c in self.topology.clusters
            ],
            "services": [services[k] for k in sorted(services)],
            "sidecars": self.sidecars,
            "gateways": self.gateways,
            "xds": self.frontends,
            "balancers": self.balancers,
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
        """Stops every process, sidecars and control plane first, etcd last; the network goes
        last of all, whatever failed before it."""
        try:
            await self._stop_processes()
        finally:
            if self.net is not None:
                # NOTE: after every process in a pod has stopped, so no socket outlives its pod.
                self.net.teardown()
                (self.state_dir / "network.json").unlink(missing_ok=True)
            (self.state_dir / "lab.json").unlink(missing_ok=True)

    async def _stop_processes(self) -> None:
        order = ["envoy", "balancer", "backend", "xds", "translator", "watcher", "kube-api", "etcd"]
        for role in order:
            group = [p for p in self.procs if p.role == role]
            if role == "etcd":
                # NOTE: one member at a time: members stopped together each try to hand
                # their leadership to peers that are stopping too (about 7 s lost).
                for p in group:
                    await asyncio.to_thread(procs.stop, p.popen)
                continue
            await asyncio.gather(*(asyncio.to_thread(procs.stop, p.popen) for p in group))
        for pair in self.proxies.values():
            for proxy in pair:
                await proxy.close()
        for proxy in self.etcd_peer_proxies.values():
            await proxy.close()
        for proxies in self.etcd_client_proxies.values():
            for proxy in proxies:
                await proxy.close()


def _port_kind(port: dict[str, Any]) -> str:
    """http or tcp, decided as the watcher decides it (appProtocol, then the name prefix)."""
    proto = str(port.get("appProtocol") or "").lower()
    name = str(port.get("name") or "").lower()
    if proto:
        return "http" if proto in ("http", "http2", "grpc", "h2c", "kubernetes.io/h2c") else "tcp"
    prefix = name.split("-", 1)[0]
    return "http" if prefix in ("http", "http2", "grpc") else "tcp"


def role_user(role: str) -> str:
    """The etcd user (``coordinator.auth``) of a lab process role."""
    return {"watcher": auth.WATCHER, "translator": auth.TRANSLATOR, "xds": auth.XDS}[role]


def instructions(lab: Lab) -> str:
    lines = [
        "",
        f"Navigator lab is up ({lab.mode} network). State and logs: {lab.state_dir}",
        "",
        *(f"  export {k}={v}" for k, v in lab.etcd_env().items()),
        f"  export KUBECONFIG={lab.kubeconfig}",
        "",
        "Try:",
    ]
    specs: dict[str, list[dict[str, Any]]] = {}
    for c in lab.topology.clusters:
        for doc in lab.manifests[c.name]:
            if doc.get("kind") == "Service" and doc["spec"].get("clusterIP"):
                specs.setdefault(c.name, []).append(doc)
    shown: set[str] = set()
    for sidecar in lab.sidecars:
        if sidecar["cluster"] in shown:
            continue
        shown.add(sidecar["cluster"])
        run = " ".join(sidecar["exec"]) + " " if sidecar["exec"] else ""
        for doc in specs.get(sidecar["cluster"], []):
            ip = doc["spec"]["clusterIP"]
            for p in doc["spec"].get("ports", []):
                target = f"{ip}:{p['port']}"
                name = doc["metadata"]["name"]
                what = f"{name} from the {sidecar['app']} pod in {sidecar['cluster']}"
                if _port_kind(p) == "http":
                    lines.append(f"  {run}curl -s http://{target}/    # {what}")
                else:
                    lines.append(
                        f"  echo hello | {run}curl -s --max-time 1 telnet://{target}    # {what}"
                    )
    for gw in lab.gateways:
        run = " ".join(lab.sidecars[0]["exec"]) + " " if lab.sidecars else ""
        lines.append(
            f"  {run}curl -s -H 'Host: shop.example.com' http://{gw['address']}/    "
            f"# through the gateway {gw['namespace']}/{gw['name']}"
        )
    first = lab.topology.clusters[0].name
    lines += [
        f"  kubectl --context {first} get svc,ep,nexus -A",
        f"  kubectl --context {first} -n shop delete endpoints echo",
    ]
    if lab.sidecars:
        lines.append(f"  curl -s {lab.sidecars[0]['admin']}/config_dump | less")
    lines += [
        "  navigator state members    # every process, what it leads (from etcd alone)",
        "  navigator state clusters   # synced, stale, which watcher replica writes each",
        "  navigator state services   # per cluster: ClusterIP, endpoints by zone",
        "  navigator proxy-status     # is every sidecar on the latest config?",
    ]
    if lab.sidecars:
        lines.append(
            f"  navigator proxy-diff {lab.sidecars[0]['node_id']}   # its live config against etcd"
        )
    lines += [
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
        "--network",
        choices=["auto", "netns", "host"],
        default="auto",
        help="pods in network namespaces (needs root) or all on loopback (default: netns "
        "where it works)",
    )
    parser.add_argument(
        "--http",
        default="127.0.0.1:0",
        help="address of the lab's /healthz, /readyz (all processes up) and /metrics",
    )
    default = Shape()
    for flag, value, what in (
        ("--watchers", default.watchers_per_cluster, "watcher replicas per cluster"),
        ("--translators", default.translators, "translator replicas"),
        ("--frontends", default.frontends, "xDS front-ends"),
        ("--etcd-members", default.etcd_members, "etcd members"),
    ):
        parser.add_argument(flag, type=int, default=value, help=f"{what} (default %(default)s)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no etcd TLS or roles, no sidecar tokens, no TLS to the front-ends (default: all "
        "on, as a deployment runs)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    runtime.setup_logging(args.log_level, component="lab")
    shape = Shape(
        etcd_members=args.etcd_members,
        watchers_per_cluster=args.watchers,
        translators=args.translators,
        frontends=args.frontends,
        secure=not args.insecure,
    )
    counts = (shape.etcd_members, shape.watchers_per_cluster, shape.translators, shape.frontends)
    if min(counts) < 1:
        print("navigator lab: every process count must be at least 1", file=sys.stderr)
        return 2

    async def amain(stop: asyncio.Event) -> int:
        try:
            lab = Lab(
                state_dir=args.state_dir,
                examples=args.examples,
                network=args.network,
                shape=shape,
            )
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
                async with asyncio.timeout(1.0):
                    await stop.wait()
        return 0
    except (LabError, procs.ProcError) as exc:
        print(f"navigator lab: {exc}", file=sys.stderr)
        return 1
    finally:
        health.set_ready(False, "stopping")
        await lab.stop()
        log.info("lab stopped")
