"""Pods with network stacks of their own for the lab: one network namespace per pod.

On the host network every sidecar of a cluster would bind the same ClusterIP:port listeners,
so the lab could run only one sidecar per cluster. Here each pod is a network namespace with a
veth plugged into its cluster's bridge ("the node"); inside it, ``intercept`` makes the
ClusterIP range local (Linux "AnyIP"), so an Envoy binds ClusterIP:port directly and an
application connects to the unchanged ClusterIP, and two pods can bind the same ClusterIP:port.

Layout (defaults in ``DEFAULT_CLUSTERS``, all inside 198.18.0.0/15, the RFC 2544
benchmarking range, which no real network routes, so it cannot shadow anything on the machine;
``Network.setup`` still refuses ranges that the host already routes):

- per cluster a bridge ``<prefix>b<i>`` in the host namespace holding the node address
  (``status.hostIP``), with a host route to the cluster's pod range through it; the host
  forwards between bridges (per-bridge ``forwarding``, so ``net.ipv4.ip_forward`` is left
  alone and the setting dies with the bridge);
- per pod a namespace ``<prefix>-<cluster>-<pod>`` whose ``eth0`` (veth, host end
  ``<prefix>v<n>``) has the pod IP, and routes to the pod ranges and node addresses of every
  cluster, all through its node. A pod has no default route: nothing a pod sends can be
  forwarded out of the machine.

Control-plane processes stay in the host namespace; a pod reaches them at a node address.
Everything is named with a per-lab prefix (``<root><4 hex>``) so that ``sweep`` can remove
what a crashed lab left behind.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

ROOT = "nv"
"""Default root of lab prefixes: ``nv`` + 4 hex digits, e.g. ``nv3f2a``."""

_ROOT_RE = re.compile(r"[g-z]{2,4}")
# NOTE: roots use no hex letters, so the objects of one root never match another root's
# pattern (``nv`` + 4 hex cannot be read as ``nvt`` + 4 hex).
_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_MAX_CLUSTERS = 100
_MAX_PODS = 100_000
# NOTE: <root:4><hex:4><b|v><digits:5> is at most 14 characters: Linux allows 15.


class NetnsError(RuntimeError):
    """A namespace, link or route could not be made or removed: a one-line reason."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterNet:
    """The addresses of one cluster: its pods, its ClusterIPs and its node."""

    name: str
    pod_cidr: str
    service_cidr: str
    node_ip: str
    """On the cluster's bridge in the host namespace: what pods get as ``status.hostIP``."""


DEFAULT_CLUSTERS = (
    ClusterNet(
        "east", pod_cidr="198.18.1.0/24", service_cidr="198.19.1.0/24", node_ip="198.18.0.1"
    ),
    ClusterNet(
        "west", pod_cidr="198.18.2.0/24", service_cidr="198.19.2.0/24", node_ip="198.18.0.2"
    ),
)


@dataclasses.dataclass(slots=True)
class Pod:
    """A network namespace plugged into its cluster's bridge."""

    name: str
    cluster: ClusterNet
    ip: str
    netns: str
    veth: str
    """The host end of the pod's veth, a port of the cluster's bridge."""
    intercepted: list[str] = dataclasses.field(default_factory=list)
    _lab_ranges: tuple[ipaddress.IPv4Network, ...] = dataclasses.field(default=(), repr=False)

    @property
    def node_ip(self) -> str:
        return self.cluster.node_ip

    @property
    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it in this pod; ``ip netns exec`` execs it (same PID)."""
        return ["ip", "netns", "exec", self.netns]

    def intercept(self, service_cidr: str | None = None) -> None:
        """Makes every address of ``service_cidr`` (default: the cluster's) local in this pod."""
        cidr = _network(service_cidr or self.cluster.service_cidr, "service CIDR")
        clash = next((r for r in self._lab_ranges if r.overlaps(cidr)), None)
        if clash is not None:
            raise NetnsError(f"cannot intercept {cidr}: it overlaps the lab's {clash}")
        if str(cidr) in self.intercepted:
            return
        _ip("-n", self.netns, "route", "add", "local", str(cidr), "dev", "lo")
        self.intercepted.append(str(cidr))


class Network:
    """The lab's bridges and pods; use as a context manager, or ``setup``/``teardown``."""

    def __init__(self, prefix: str, clusters: Sequence[ClusterNet] = DEFAULT_CLUSTERS) -> None:
        if not re.fullmatch(_ROOT_RE.pattern + r"[0-9a-f]{4}", prefix):
            raise NetnsError(f"bad prefix {prefix!r}: want 2-4 letters g-z and 4 hex digits")
        if not clusters or len(clusters) > _MAX_CLUSTERS:
            raise NetnsError(f"want 1 to {_MAX_CLUSTERS} clusters, got {len(clusters)}")
        self.prefix = prefix
        self.clusters: dict[str, ClusterNet] = {}
        ranges: list[tuple[str, ipaddress.IPv4Network]] = []
        for c in clusters:
            _label(c.name, "cluster name")
            if c.name in self.clusters:
                raise NetnsError(f"cluster {c.name} is given twice")
            self.clusters[c.name] = c
            ranges += [
                (f"pod range of {c.name}", _network(c.pod_cidr, "pod CIDR")),
                (f"service range of {c.name}", _network(c.service_cidr, "service CIDR")),
                (f"node address of {c.name}", _network(c.node_ip + "/32", "node address")),
            ]
        for i, (what, net) in enumerate(ranges):
            for other, net2 in ranges[:i]:
                if net.overlaps(net2):
                    raise NetnsError(f"{what} {net} overlaps {other} {net2}")
        self.ranges = tuple(ranges)
        self._routed = tuple(
            _network(r, "") for c in clusters for r in (c.pod_cidr, c.node_ip + "/32")
        )
        self.pods: list[Pod] = []
        self._bridges: dict[str, str] = {}
        # A name is recorded once its object exists (never before: an object of that name
        # that we failed to make is not ours) and teardown removes exactly these.
        self._netns: list[str] = []
        self._links: list[str] = []
        self._veths = 0

    def bridge(self, cluster: str) -> str:
        return f"{self.prefix}b{list(self.clusters).index(cluster)}"

    def setup(self) -> None:
        """Makes one bridge per cluster; refuses ranges that this host already routes."""
        if self._bridges:
            raise NetnsError(f"network {self.prefix} is already set up")
        check_unrouted(self.ranges)
        for c in self.clusters.values():
            br = self.bridge(c.name)
            _ip("link", "add", br, "type", "bridge")
            self._links.append(br)
            _ip("addr", "add", f"{c.node_ip}/32", "dev", br)
            _ip("link", "set", br, "up")
            _ip("route", "add", c.pod_cidr, "dev", br, "src", c.node_ip)
            # Packets received on this bridge may be forwarded (to another cluster's bridge);
            # pods have routes to lab ranges only, so nothing else is ever forwarded.
            _write_sysctl(f"net/ipv4/conf/{br}/forwarding", "1")
            self._bridges[c.name] = br
        log.info("lab network up", extra={"prefix": self.prefix, "bridges": len(self._bridges)})

    def add_pod(self, cluster: str, name: str, ip: str | None = None) -> Pod:
        """A namespace on ``cluster``'s bridge with ``ip`` (default: the highest free one)."""
        c = self.clusters.get(cluster)
        if c is None:
            raise NetnsError(f"unknown cluster {cluster}; have {', '.join(self.clusters)}")
        if cluster not in self._bridges:
            raise NetnsError(f"network {self.prefix} is not set up")
        _label(name, "pod name")
        netns = f"{self.prefix}-{cluster}-{name}"
        if any(p.netns == netns for p in self.pods):
            raise NetnsError(f"pod {name} already exists in {cluster}")
        if self._veths >= _MAX_PODS:
            raise NetnsError(f"at most {_MAX_PODS} pods per lab")
        pod_net = _network(c.pod_cidr, "pod CIDR")
        used = {p.ip for p in self.pods}
        if ip is None:
            ip = next((str(a) for a in reversed(list(pod_net.hosts())) if str(a) not in used), "")
            if not ip:
                raise NetnsError(f"no free address left in {cluster}'s {pod_net}")
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError as exc:
            raise NetnsError(f"bad pod IP {ip!r}: {exc}") from exc
        if addr not in pod_net or addr in (pod_net.network_address, pod_net.broadcast_address):
            raise NetnsError(f"pod IP {ip} is not a host address of {cluster}'s {pod_net}")
        if ip in used:
            raise NetnsError(f"pod IP {ip} is already taken")

        veth = f"{self.prefix}v{self._veths}"
        self._veths += 1
        _ip("netns", "add", netns)
        self._netns.append(netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self._links.append(veth)
        _ip("link", "set", veth, "master", self._bridges[cluster], "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{ip}/{pod_net.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "route", "add", c.node_ip, "dev", "eth0", "scope", "link")
        for other in self.clusters.values():
            if other is not c:
                for dst in (other.pod_cidr, other.node_ip):
                    _ip("-n", netns, "route", "add", dst, "via", c.node_ip, "dev", "eth0")
        pod = Pod(name=name, cluster=c, ip=ip, netns=netns, veth=veth, _lab_ranges=self._routed)
        self.pods.append(pod)
        return pod

    def teardown(self) -> None:
        """Removes every namespace and link made so far (their routes go with them).

        Idempotent. Processes still running in a pod are not killed (stop them by PID first):
        their namespace outlives its name but is cut off from the bridge.
        """
        for link in reversed(self._links):
            _ip("link", "delete", link, check=False)
        for netns in reversed(self._netns):
            pids = _ip("netns", "pids", netns, check=False).split()
            if pids:
                log.warning("processes left in a lab pod", extra={"netns": netns, "pids": pids})
            _ip("netns", "delete", netns, check=False)
        left = [n for n in _netns_names() + _link_names() if n in self._netns + self._links]
        self._netns.clear()
        self._links.clear()
        self._bridges.clear()
        self.pods.clear()
        if left:
            raise NetnsError(f"could not remove {', '.join(left)}")

    def __enter__(self) -> Self:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()


def new_prefix(root: str = ROOT) -> str:
    """A fresh prefix for one lab: ``root`` and 4 random hex digits."""
    _check_root(root)
    return f"{root}{secrets.token_hex(2)}"


def available(root: str = ROOT) -> tuple[bool, str]:
    """Whether namespaces and bridges can be made here, and why not."""
    if os.geteuid() != 0:
        return False, f"network namespaces need root; running as uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return False, "`ip` (iproute2) is not on PATH"
    prefix = new_prefix(root)
    probe_ns, probe_br = f"{prefix}-probe", f"{prefix}b0"
    try:
        _ip("netns", "add", probe_ns)
        _ip("link", "add", probe_br, "type", "bridge")
    except NetnsError as exc:
        return False, str(exc)
    finally:
        _ip("netns", "delete", probe_ns, check=False)
        _ip("link", "delete", probe_br, check=False)
    return True, "root, iproute2, network namespaces and bridges work"


def sweep(root: str = ROOT) -> list[str]:
    """Deletes the namespaces, bridges and veths of any lab with this root; returns their names.

    Only names of exactly our patterns are touched: ``<root><4 hex>-<cluster>-<pod>``
    (namespaces), ``<root><4 hex>b<n>`` (bridges) and ``<root><4 hex>v<n>`` (veths).
    WARNING: this also removes the network of a lab that is still running; a lab sweeps only
    its own previous prefix (``sweep_prefix``).
    """
    _check_root(root)
    return _sweep(rf"{root}[0-9a-f]{{4}}")


def sweep_prefix(prefix: str) -> list[str]:
    """Deletes what a ``Network(prefix)`` created and left behind (a crashed lab)."""
    if not re.fullmatch(r"[g-z]{2,4}[0-9a-f]{4}", prefix):
        raise NetnsError(f"not a lab network prefix: {prefix!r}")
    return _sweep(re.escape(prefix))


def _sweep(prefix_re: str) -> list[str]:
    ns_re = re.compile(rf"{prefix_re}-[a-z0-9]([-a-z0-9]*[a-z0-9])?")
    link_re = re.compile(rf"{prefix_re}[bv][0-9]{{1,5}}")
    # Links before namespaces: a veth then goes with its own delete, not later and
    # asynchronously with its namespace, so the list of what was removed is exact.
    links = [n for n in _link_names() if link_re.fullmatch(n)]
    for link in links:
        _ip("link", "delete", link, check=False)
    namespaces = [n for n in _netns_names() if ns_re.fullmatch(n)]
    for netns in namespaces:
        _ip("netns", "delete", netns, check=False)
    gone = links + namespaces
    left = [n for n in _netns_names() + _link_names() if n in gone]
    if left:
        raise NetnsError(f"sweep could not remove {', '.join(left)}")
    if gone:
        log.info("swept leftovers of a previous lab", extra={"names": gone})
    return gone


def check_unrouted(ranges: Iterable[tuple[str, ipaddress.IPv4Network]]) -> None:
    """Raises if a host route (any table, default routes aside) overlaps a (what, range)."""
    routes: list[dict[str, Any]] = json.loads(
        _ip("-j", "-4", "route", "show", "table", "all") or "[]"
    )
    for what, net in ranges:
        for route in routes:
            dst = str(route.get("dst", "default"))
            if dst != "default" and ipaddress.ip_network(dst, strict=False).overlaps(net):
                raise NetnsError(
                    f"{what} {net} overlaps the host route {dst} dev {route.get('dev', '?')} "
                    f"(table {route.get('table', 'main')}): choose other ranges, or sweep a "
                    "lab left behind"
                )


def _ip(*args: str, check: bool = True) -> str:
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError as exc:
        raise NetnsError("`ip` (iproute2) is not installed") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _netns_names() -> list[str]:
    listed: list[dict[str, Any]] = json.loads(_ip("-j", "netns", "list") or "[]")
    return [str(n["name"]) for n in listed]


def _link_names() -> list[str]:
    listed: list[dict[str, Any]] = json.loads(_ip("-j", "link", "show") or "[]")
    return [str(n["ifname"]) for n in listed]


def _write_sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as exc:
        raise NetnsError(f"cannot set {key.replace('/', '.')}={value}: {exc}") from exc


def _network(cidr: str, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(cidr)
    except ValueError as exc:
        raise NetnsError(f"bad {what} {cidr!r}: {exc}") from exc


def _label(name: str, what: str) -> None:
    if not _LABEL_RE.fullmatch(name):
        raise NetnsError(f"bad {what} {name!r}: want a DNS label (a-z, 0-9, '-')")


def _check_root(root: str) -> None:
    if not _ROOT_RE.fullmatch(root):
        raise NetnsError(f"bad prefix root {root!r}: want 2-4 letters g-z")
