"""One scenario's run: a fresh lab, steady traffic, the recorders, the fault, the verdicts.

``Run`` is what a scenario's body gets: the lab, Kubernetes writes that are recorded as truth,
churn, leaders, waits with deadlines, and ``inject``/``heal`` marks for the timeline. The
sequence is always: start the lab → record → wait for a baseline where every sidecar holds the
API's endpoints → the body (inject, hold, heal) → wait for convergence (I2) → a little more
traffic → stop recording → judge (``chaos.invariants``) → stop the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kubernetes
import urllib3

from chaos import history, invariants
from coordinator import election
from coordinator import etcd as etcd_mod
from navigator import keys, model, proxy
from navigator.lab import main as lab_main

log = logging.getLogger(__name__)

T = TypeVar("T")

CHURN_SERVICE = ("shop", "item")
"""The service whose endpoints churn: it exists in both clusters and every app calls it."""
EXTRA_PODS = 3
"""Extra pods of the churned service per cluster, so churn moves between live pods only."""


class ScenarioError(Exception):
    """The scenario could not do what it needed (not an invariant: the run is in error)."""


@dataclasses.dataclass(frozen=True)
class Options:
    network: str = "auto"
    hold: float | None = None
    """Overrides every fault's duration, s."""
    probe_interval: float = 0.2
    keep: bool = False


async def write_recorded(
    truth: history.Truth, change: Callable[[], None], service: str, cluster: str, ips: list[str]
) -> None:
    """Runs ``change`` (a synchronous API write) in a thread and records ``ips`` as the truth
    of ``service`` in ``cluster`` once it has landed.

    NOTE: a cancelled caller cannot stop the thread, so a write under way when the churn stops
    still lands: it is awaited and recorded before the cancellation goes on. Unrecorded, the
    API's last state was missing from the truth, and the mesh, right to follow it, was judged
    stale (I2) and its endpoints ghosts (I4) or a step backwards (I5).
    """
    sent = time.monotonic()
    write = asyncio.ensure_future(asyncio.to_thread(change))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await write
            truth.record(service, cluster, ips, sent)
        raise
    truth.record(service, cluster, ips, sent)


class Run:
    def __init__(self, lab: lab_main.Lab, options: Options) -> None:
        self.lab = lab
        self.options = options
        self.t0 = time.monotonic()
        self.marks: list[history.Mark] = []
        self.figures: dict[str, Any] = {}
        self.truth = history.Truth(
            cidrs={c.name: ipaddress.IPv4Network(lab.pod_cidr(c)) for c in lab.topology.clusters}
        )
        self.probes = history.Probes()
        self.etcd = lab.etcd_client(timeout=2.0, retry_for=600.0
        )
        self.etcd_log = history.EtcdLog(self.etcd)
        self.envoys: history.EnvoyLog | None = None
        self.rejected = history.Counters("navigator_etcd_fenced_txns_total", {"result": "rejected"})
        self.exempt: list[int] = []
        """Revisions the scenario wrote into etcd itself (its fault), outside any term."""
        self.healed_at: float | None = None
        self.baseline_at = float("inf")
        self.pools: dict[str, list[str]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._churn: asyncio.Task[None] | None = None
        self._churn_stop = asyncio.Event()
        self._apis: dict[str, Any] = {}

    # -- marks -------------------------------------------------------------------------------

    def mark(self, label: str, kind: str = "note") -> float:
        now = time.monotonic()
        self.marks.append(history.Mark(now, label, kind))
        log.info("scenario step", extra={"step": label, "kind": kind, "t": round(now - self.t0, 2)})
        return now

    def inject(self, label: str) -> float:
        return self.mark(label, "inject")

    def heal(self, label: str) -> float:
        self.healed_at = self.mark(label, "heal")
        return self.healed_at

    def hold(self, default: float) -> float:
        return self.options.hold if self.options.hold is not None else default

    # -- Kubernetes ----------------------------------------------------------------------------

    def api(self, cluster: str) -> Any:
        """The cluster's core API (the official client; typed loosely, as its models are)."""
        if cluster not in self._apis:
            client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.lab.kubeconfig), context=cluster
            )
            self._apis[cluster] = kubernetes.client.CoreV1Api(client)
        return self._apis[cluster]

    async def read_truth(self) -> None:
        for c in self.lab.topology.clusters:
            found = await asyncio.to_thread(history.api_endpoints, self.api(c.name))
            for service, ips in found.items():
                self.truth.record(service, c.name, ips, -float("inf"))

    async def set_endpoints(self, cluster: str, namespace: str, name: str, ips: list[str]) -> None:
        """Replaces an Endpoints object's addresses through the API (recorded as truth)."""

        def change() -> None:
            api = self.api(cluster)
            eps = api.read_namespaced_endpoints(name, namespace)
            template = eps.subsets[0].addresses[0]
            eps.subsets[0].addresses = [
                kubernetes.client.V1EndpointAddress(
                    ip=ip, node_name=template.node_name, target_ref=None
                )
                for ip in ips
            ]
            api.replace_namespaced_endpoints(name, namespace, eps)

        await write_recorded(self.truth, change, f"{namespace}/{name}", cluster, ips)

    async def reread(self, cluster: str, namespace: str, name: str, sent: float) -> None:
        """Records the API's endpoints of one object when they differ from the truth's latest:
        a write sent at ``sent`` that failed on its answer may still have landed."""
        eps = await asyncio.to_thread(self.api(cluster).read_namespaced_endpoints, name, namespace)
        ips = sorted(a.ip for s in eps.subsets or [] for a in s.addresses or [])
        if frozenset(ips) != self.truth.latest(f"{namespace}/{name}", cluster):
            self.truth.record(f"{namespace}/{name}", cluster, ips, sent)

    async def _prepare_pool(self, cluster: str) -> None:
        """The churned service's pods in ``cluster`` plus EXTRA_PODS new ones, all serving."""
        namespace, name = CHURN_SERVICE
        eps = await asyncio.to_thread(self.api(cluster).read_namespaced_endpoints, name, namespace)
        ports = [int(p.port) for p in eps.subsets[0].ports or []]
        current = [a.ip for a in eps.subsets[0].addresses or []]
        net = self.truth.cidrs[cluster]
        taken = {p.extra.get("ip") for p in self.lab.procs}
        pool = list(current)
        added = []
        for host in range(200, 255):
            if len(pool) >= len(current) + EXTRA_PODS:
                break
            ip = str(net.network_address + host)
            if ip in taken:
                continue
            added.append(self.lab.add_backend(cluster, f"{name}-{cluster}-x{host}", ip, ports))
            pool.append(ip)
        # NOTE: a pod in the churn's pool must be serving before the churn can name it: one
        # named while its process was still starting failed a probe (connection refused).
        await asyncio.to_thread(self.lab.wait_serving, added)
        self.pools[cluster] = pool

    async def churn_once(self, cluster: str) -> list[str]:
        namespace, name = CHURN_SERVICE
        pool = self.pools[cluster]
        now = self.truth.latest(f"{namespace}/{name}", cluster)
        while True:
            ips = sorted(random.sample(pool, random.randint(1, len(pool))))
            if frozenset(ips) != now:
                break
        await self.set_endpoints(cluster, namespace, name, ips)
        return ips

    def churn(self, cluster: str = "east", rate: float = 2.0) -> None:
        """Changes the churned service's endpoints in ``cluster`` ``rate`` times a second until
        ``stop_churn``; a failed write (the API unreachable) is retried at the next tick."""
        self.stop_churn_now()
        stop = self._churn_stop = asyncio.Event()

        async def loop() -> None:
            namespace, name = CHURN_SERVICE
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    await self.churn_once(cluster)
                except (
                    kubernetes.client.ApiException,
                    urllib3.exceptions.HTTPError,
                    OSError,
                ) as exc:
                    log.info("churn write failed", extra={"error": str(exc)[:120]})
                    with contextlib.suppress(
                        kubernetes.client.ApiException, urllib3.exceptions.HTTPError, OSError
                    ):
                        await self.reread(cluster, namespace, name, sent)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1 / rate)

        self._churn = asyncio.create_task(loop())

    def stop_churn_now(self) -> None:
        """Ends the churn at once (a write under way is still recorded: ``set_endpoints``)."""
        if self._churn is not None:
            self._churn.cancel()

    async def stop_churn(self) -> None:
        """Ends the churn after the write under way, if any, has landed and been recorded."""
        if self._churn is not None:
            self._churn_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._churn
            self._churn = None

    # -- leaders -------------------------------------------------------------------------------

    async def etcd_leader(self) -> lab_main.Proc:
        """The etcd member that says it leads (asks each member itself)."""
        for proc in self.lab.procs:
            if proc.role == "etcd" and proc.popen.poll() is None:
                with contextlib.suppress(etcd_mod.EtcdError):
                    status = await etcd_mod.member_status(
                        proc.extra["url"], within=1.0, tls=self.lab.etcd_tls
                    )
                    if status.is_leader:
                        return proc
        raise ScenarioError("no etcd member says it leads")

    async def new_etcd_leader(self, but: lab_main.Proc) -> lab_main.Proc | None:
        with contextlib.suppress(ScenarioError):
            leader = await self.etcd_leader()
            if leader is not but:
                return leader
        return None

    async def holder(self, key: str) -> str:
        kv = await self.etcd.get(key)
        return election.leader_id(kv.value) if kv is not None else ""

    async def until(
        self, check: Callable[[], Awaitable[T | None]], *, within: float, what: str
    ) -> T:
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(OSError, aiohttp.ClientError, etcd_mod.EtcdError):
                got = await check()
                if got:
                    return got
            if time.monotonic() > deadline:
                raise ScenarioError(f"timed out after {within:.0f} s waiting for {what}")
            await asyncio.sleep(0.05)

    # -- the run -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.read_truth()
        for c in self.lab.topology.clusters:
            await self._prepare_pool(c.name)
        self.envoys = history.EnvoyLog(self.lab.sidecars, self.truth.services())
        self._tasks.append(asyncio.create_task(self.etcd_log.run()))
        self._tasks.append(asyncio.create_task(self.envoys.run()))
        self._tasks.append(asyncio.create_task(self._count()))
        await asyncio.wait_for(self.etcd_log.listed.wait(), 30)
        for sidecar in self.lab.sidecars:
            http_urls, tcp = self._targets(sidecar)
            await self.probes.start(sidecar, http_urls, tcp, interval=self.options.probe_interval)
        seconds = await self.converge(60.0)
        if seconds is None:
            raise ScenarioError(f"no baseline: {self._unconverged}")
        since = time.monotonic()
        targets = {(s["node_id"], t) for s in self.lab.sidecars for t in self._all_targets(s)}

        async def answered() -> bool:
            ok = {(p.sidecar, p.target) for p in self.probes.results if p.ok and p.t >= since}
            return targets <= ok

        await self.until(answered, within=20, what="every sidecar's probes answered")
        # NOTE: I1 judges from here on: what a sidecar did before it was healthy is the lab's
        # start, not the fault's (reported apart as warm-up failures).
        self.baseline_at = self.mark("baseline: every sidecar holds the API's endpoints")

    async def _count(self) -> None:
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                processes = {
                    p.name: p.extra["http"]
                    for p in self.lab.procs
                    if p.role in ("watcher", "translator") and p.popen.poll() is None
                }
                await self.rejected.sample(session, processes)
                await asyncio.sleep(1.0)

    def _all_targets(self, sidecar: Mapping[str, Any]) -> list[str]:
        http_urls, tcp = self._targets(sidecar)
        return http_urls + tcp

    def _targets(self, sidecar: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """What the sidecar's app calls (its Nexus), by ClusterIP in the sidecar's cluster."""
        docs = self.lab.manifests[sidecar["cluster"]]
        wanted: list[tuple[str, str]] = []
        for d in docs:
            if d.get("kind") == "Nexus" and d.get("spec", {}).get("appName") == sidecar["app"]:
                wanted += [(s["namespace"], s.get("name", "")) for s in d["spec"]["services"]]
        http_urls: list[str] = []
        tcp: list[str] = []
        for d in docs:
            if d.get("kind") != "Service":
                continue
            meta, spec = d["metadata"], d["spec"]
            ns = meta.get("namespace", "default")
            if not any(ns == w_ns and w_name in ("", meta["name"]) for w_ns, w_name in wanted):
                continue
            ip = spec.get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in spec.get("ports", []):
                if lab_main._port_kind(port) == "http":
                    http_urls.append(f"http://{ip}:{port['port']}/")
                else:
                    tcp.append(f"{ip}:{port['port']}")
        return http_urls, tcp

    _unconverged = ""

    async def converged(self) -> bool:
        """Every sidecar holds the API's endpoints for every service it has, and its whole
        config is what etcd says it should be (``proxy.diff``)."""
        assert self.envoys is not None
        for (node, envoy_cluster), ips in sorted(self.envoys.current.items()):
            want = self.truth.union(history.service_of(envoy_cluster))
            if ips != want:
                self._unconverged = f"{node} {envoy_cluster}: {sorted(ips)} ≠ {sorted(want)}"
                return False
        held = {s for s, _ in self.envoys.current}
        for sidecar in self.lab.sidecars:
            if sidecar["node_id"] not in held:
                self._unconverged = f"{sidecar['node_id']}: no endpoints seen"
                return False
            try:
                doc = await proxy.diff(self.etcd, sidecar["node_id"], admin=sidecar["admin"])
            except (proxy.ProxyError, OSError, aiohttp.ClientError, etcd_mod.EtcdError) as exc:
                self._unconverged = f"{sidecar['node_id']}: {exc}"
                return False
            if not doc["same"]:
                differ = [t for t, e in doc["types"].items() if not e["same"]]
                self._unconverged = f"{sidecar['node_id']}: {', '.join(differ)} differ from etcd"
                return False
        return True

    async def converge(self, within: float) -> float | None:
        """Seconds from now (or from healing) until ``converged``; None past ``within``."""
        start = time.monotonic()
        deadline = start + within
        while time.monotonic() < deadline:
            with contextlib.suppress(etcd_mod.EtcdError):
                # NOTE: a diff's etcd reads get a short deadline: a sample, not a wait.
                if await asyncio.wait_for(self.converged(), 5.0):
                    return time.monotonic() - (self.healed_at or start)
            await asyncio.sleep(0.2)
        return None

    async def diagnose(self) -> str:
        """Where the churned service's truth stopped, when the mesh did not converge: etcd's
        state against the API, and how many of its changes each watcher received."""
        namespace, name = CHURN_SERVICE
        parts: list[str] = []
        for c in self.lab.topology.clusters:
            key = keys.state_key(
                model.Endpoints(
                    cluster=model.ClusterName(c.name),
                    namespace=namespace,
                    name=name,
                    endpoints=(),
                )
            )
            with contextlib.suppress(etcd_mod.EtcdError, ValueError, KeyError):
                kv = await self.etcd.get(key)
                held = sorted(e["ip"] for e in json.loads(kv.value)["endpoints"]) if kv else []
                want = sorted(self.truth.latest(f"{namespace}/{name}", c.name))
                parts.append(f"{c.name}: etcd {held} {'=' if held == want else '≠'} API {want}")
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for proc in self.lab.procs:
                if proc.role != "watcher" or proc.popen.poll() is not None:
                    continue
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"http://{proc.extra['http']}/metrics") as resp:
                        text = await resp.text()
                    got = history.metric_value(
                        text,
                        "navigator_watcher_events_total",
                        {"kind": "endpoints", "type": "MODIFIED"},
                    )
                    parts.append(f"{proc.name} got {got:.0f} endpoints changes")
        writes = sum(
            1
            for (service, _), vs in self.truth.versions.items()
            if service == f"{namespace}/{name}"
            for t, _ in vs
            if t > -float("inf")
        )
        parts.append(f"the API took {writes} changes of {namespace}/{name}")
        return "; ".join(parts)

    async def stop(self) -> None:
        await self.stop_churn()
        await self.probes.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.etcd.close()

    # -- the verdicts ------------------------------------------------------------------------

    def judge(self, *, converged_s: float | None, bound: float, allowed: int) -> dict[str, Any]:
        assert self.envoys is not None
        judged = [p for p in self.probes.results if p.t >= self.baseline_at]
        verdicts = {
            "I1": invariants.probes(judged, allowed=allowed),
            "I2": invariants.convergence(converged_s, bound, self._unconverged),
            "I3": invariants.fencing(self.etcd_log, exempt=self.exempt),
            "I4": invariants.endpoints(self.envoys.seen, self.truth, dict(self.envoys.current)),
            "I5": invariants.monotonic(self.envoys.seen, self.truth),
        }
        failed = [p for p in judged if not p.ok]
        figures = {
            **self.figures,
            "convergence_s": invariants.finite(converged_s),
            "failed_probes": len(failed),
            "probes": len(judged),
            "warmup_failed_probes": sum(
                1 for p in self.probes.results if p.t < self.baseline_at and not p.ok
            ),
            "stale_writes_rejected": int(self.rejected.total()),
            "api_writes": sum(
                1 for vs in self.truth.versions.values() for t, _ in vs if t > -float("inf")
            ),
            "etcd_revisions": len({c.revision for c in self.etcd_log.changes}),
        }
        return {
            "invariants": {k: v.passed for k, v in verdicts.items()},
            "evidence": {k: v.evidence for k, v in verdicts.items()},
            "figures": figures,
            "timeline": {
                "events": [
                    {"t": round(m.t - self.t0, 3), "label": m.label, "kind": m.kind}
                    for m in self.marks
                ],
                "probes": [
                    {"sidecar": p.sidecar, "t": round(p.t - self.t0, 3), "ok": p.ok}
                    for p in self.probes.results
                ],
                "versions": invariants.version_timeline(self.envoys.seen, self.truth, self.t0),
            },
        }


async def execute(
    name: str,
    description: str,
    body: Callable[[Run], Awaitable[None]],
    *,
    shape: Mapping[str, Any],
    bound: float,
    allowed: int,
    work: Path,
    options: Options,
) -> dict[str, Any]:
    """Runs one scenario on a fresh lab; the result as ``chaos.report`` takes it."""
    started = time.monotonic()
    lab = lab_main.Lab(
        state_dir=work / name,
        examples=lab_main.REPO_EXAMPLES,
        network=options.network,
        shape=lab_main.Shape(**{"lease_ttl": 3, **shape}),
    )
    result: dict[str, Any] = {"name": name, "description": description, "error": None}
    run: Run | None = None
    try:
        await lab.start()
        run = Run(lab, options)
        await run.start()
        await body(run)
        if run.healed_at is None:
            run.heal("(nothing to heal)")
        await run.stop_churn()
        converged_s = await run.converge(bound + 10.0)
        if converged_s is not None:
            run.mark("converged")
        else:
            run.figures["diagnosis"] = await run.diagnose()
        await asyncio.sleep(1.0)  # NOTE: steady traffic after convergence, also judged by I1
        await run.stop()
        result.update(run.judge(converged_s=converged_s, bound=bound, allowed=allowed))
        result["passed"] = all(result["invariants"].values())
    except Exception as exc:  # NOTE: whatever broke the scenario, the others still run
        # NOTE: a crash of the scenario itself (not a failed invariant) is reported as its error.
        log.error("scenario failed to run", extra={"scenario": name, "error": str(exc)})
        result.update(passed=False, error=f"{type(exc).__name__}: {exc}")
        if run is not None:
            with contextlib.suppress(Exception):
                await run.stop()
                judged = run.judge(converged_s=None, bound=bound, allowed=allowed)
                result.update({k: judged[k] for k in ("invariants", "evidence", "figures")})
                result["timeline"] = judged["timeline"]
    finally:
        await lab.stop()
    result["duration_s"] = round(time.monotonic() - started, 1)
    return result
