"""What a chaos scenario records while it runs, for the invariants to judge afterwards.

Histories, each stamped with the machine's monotonic clock (shared by every process here):

- ``Truth``: every version of every Endpoints object the Kubernetes API held, per cluster, the
  ones read at the start and each one the scenario wrote (stamped when the write was sent);
- ``EtcdLog``: every event under Navigator's root in etcd, with its revision (the watch resumes
  where it broke, so the history has no gap; a compaction gap is recorded as such);
- ``EnvoyLog``: each sidecar's endpoints per Envoy cluster, sampled from its admin, kept on
  change;
- ``Probes``: every request of the steady traffic each sidecar's pod sends through its Envoy;
- ``Counters``: the fenced-write rejections every watcher and translator reports.

Recorders never fail the scenario: a read that fails is retried on the next sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from coordinator import etcd as etcd_mod
from navigator import keys

log = logging.getLogger(__name__)

IPs = frozenset[str]


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    t: float
    label: str
    kind: str
    """inject, heal or note."""


# -- the Kubernetes API's truth ----------------------------------------------------------------


@dataclasses.dataclass
class Truth:
    """Versions of Endpoints objects: (namespace/name, cluster) → [(written at, ready IPs)].

    The first version of each is stamped ``-inf``: it was there before anything was recorded.
    """

    versions: dict[tuple[str, str], list[tuple[float, IPs]]] = dataclasses.field(
        default_factory=dict
    )
    cidrs: dict[str, ipaddress.IPv4Network] = dataclasses.field(default_factory=dict)
    """Each cluster's pod range: an endpoint's IP says which cluster it is in."""

    def record(self, service: str, cluster: str, ips: Iterable[str], t: float) -> None:
        self.versions.setdefault((service, cluster), []).append((t, frozenset(ips)))

    def latest(self, service: str, cluster: str) -> IPs:
        got = self.versions.get((service, cluster))
        return got[-1][1] if got else frozenset()

    def services(self) -> list[str]:
        return sorted({s for s, _ in self.versions})

    def clusters(self) -> list[str]:
        return sorted(self.cidrs)

    def union(self, service: str) -> IPs:
        return frozenset().union(*(self.latest(service, c) for c in self.clusters()))

    def split(self, ips: Iterable[str]) -> dict[str, IPs]:
        """IPs by the cluster whose pod range holds them ("" for none)."""
        out: dict[str, set[str]] = {c: set() for c in self.cidrs}
        for ip in ips:
            addr = ipaddress.ip_address(ip)
            owner = next((c for c, net in self.cidrs.items() if addr in net), "")
            out.setdefault(owner, set()).add(ip)
        return {c: frozenset(v) for c, v in out.items()}

    def ever(self, service: str) -> IPs:
        return frozenset(
            ip
            for (name, _), versions in self.versions.items()
            if name == service
            for _, ips in versions
            for ip in ips
        )


def api_endpoints(core_api: Any) -> dict[str, IPs]:
    """Every Endpoints object a cluster's API holds: ``namespace/name`` → its ready IPs.

    ``core_api``: the official client's CoreV1Api. Synchronous (call it off the loop).
    """
    return {
        f"{e.metadata.namespace}/{e.metadata.name}": frozenset(
            a.ip for s in e.subsets or [] for a in s.addresses or []
        )
        for e in core_api.list_endpoints_for_all_namespaces().items
    }


# -- Envoy sidecars ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    t: float
    sidecar: str
    cluster: str
    """The Envoy cluster: ``<namespace>/<name>:<port>``."""
    ips: IPs


def service_of(envoy_cluster: str) -> str:
    """``shop/item:8890`` → ``shop/item``."""
    return envoy_cluster.rpartition(":")[0]


class EnvoyLog:
    """Samples every sidecar's endpoints (admin ``/clusters``), keeping each change."""

    def __init__(self, sidecars: Sequence[Mapping[str, Any]], services: Iterable[str]) -> None:
        self.sidecars = list(sidecars)
        self.services = set(services)
        self.seen: list[Seen] = []
        self.current: dict[tuple[str, str], IPs] = {}
        self.errors = 0

    async def sample(self, session: aiohttp.ClientSession) -> None:
        for sidecar in self.sidecars:
            try:
                async with session.get(f"{sidecar['admin']}/clusters?format=json") as resp:
                    doc = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                self.errors += 1
                continue
            t = time.monotonic()
            for c in doc.get("cluster_statuses", []):
                name = str(c.get("name", ""))
                if service_of(name) not in self.services:
                    continue
                ips = frozenset(
                    h["address"]["socket_address"]["address"] for h in c.get("host_statuses", [])
                )
                key = (sidecar["node_id"], name)
                if self.current.get(key) != ips:
                    self.current[key] = ips
                    self.seen.append(Seen(t, sidecar["node_id"], name, ips))

    async def run(self, every: float = 0.2) -> None:
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self.sample(session)
                await asyncio.sleep(every)


# -- etcd ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    t: float
    revision: int
    key: str
    value: bytes | None


class EtcdLog:
    """Every change under the root from the start listing on, in revision order."""

    def __init__(self, etcd: etcd_mod.Etcd) -> None:
        self.etcd = etcd
        self.start: dict[str, etcd_mod.KeyValue] = {}
        self.start_revision = 0
        self.changes: list[Change] = []
        self.gaps: list[tuple[int, int]] = []
        """(last revision seen, revision relisted at) where compaction cut the history."""
        self.listed = asyncio.Event()

    async def run(self) -> None:
        listing = await self.etcd.get_prefix(keys.ROOT)
        self.start, self.start_revision = dict(listing.items), listing.revision
        self.listed.set()
        revision = listing.revision
        while True:
            try:
                async for ev in self.etcd.watch_prefix(keys.ROOT, start_revision=revision + 1):
                    self.changes.append(Change(time.monotonic(), ev.revision, ev.key, ev.value))
                    revision = ev.revision
            except etcd_mod.Compacted:
                again = await self.etcd.get_prefix(keys.ROOT)
                self.gaps.append((revision, again.revision))
                revision = again.revision


# -- probes ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    t: float
    sidecar: str
    target: str
    ok: bool
    error: str = ""


class Probes:
    """One probe process per sidecar, in the sidecar's pod, sending to what its app calls."""

    def __init__(self) -> None:
        self.results: list[Probe] = []
        self._procs: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(
        self,
        sidecar: Mapping[str, Any],
        http_urls: Sequence[str],
        tcp_addresses: Sequence[str],
        *,
        interval: float,
    ) -> None:
        setpriv = shutil.which("setpriv")
        args = [
            *sidecar["exec"],
            sys.executable,
            "-m",
            "navigator.lab.client",
            "probe",
            "--interval",
            str(interval),
            "--timeout",
            "1",
        ]
        args += [a for u in http_urls for a in ("--http", u)]
        args += [a for addr in tcp_addresses for a in ("--tcp", addr)]
        if setpriv:
            # NOTE: it dies with us even if we are killed (as the lab's processes do).
            args = [setpriv, "--pdeathsig", "KILL", "--", *args]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._procs.append(proc)
        self._readers.append(asyncio.create_task(self._read(proc, str(sidecar["node_id"]))))

    async def _read(self, proc: asyncio.subprocess.Process, sidecar: str) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            with contextlib.suppress(ValueError, KeyError):
                doc = json.loads(line)
                self.results.append(
                    Probe(
                        float(doc["t"]),
                        sidecar,
                        str(doc["target"]),
                        bool(doc["ok"]),
                        str(doc.get("error", "")),
                    )
                )

    async def stop(self) -> None:
        """Closes their stdin (they stop after the request in flight) and waits for them."""
        for proc in self._procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()  # NOTE: our own child, by its PID
                await proc.wait()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)


# -- counters ----------------------------------------------------------------------------------


def metric_value(text: str, name: str, labels: Mapping[str, str]) -> float:
    """One sample of a Prometheus text page (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


class Counters:
    """The highest value of a counter each process reported (a restart starts it at 0 again,
    so the figure is the sum over each life's last sample)."""

    def __init__(self, name: str, labels: Mapping[str, str]) -> None:
        self.name, self.labels = name, dict(labels)
        self.lives: dict[str, list[float]] = {}

    async def sample(self, session: aiohttp.ClientSession, processes: Mapping[str, str]) -> None:
        for proc, http in processes.items():
            try:
                async with session.get(f"http://{http}/metrics") as resp:
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                continue
            value = metric_value(text, self.name, self.labels)
            lives = self.lives.setdefault(proc, [0.0])
            if value < lives[-1]:
                lives.append(value)
            else:
                lives[-1] = value

    def total(self) -> float:
        return sum(sum(v) for v in self.lives.values())
