"""``navigator bench --size S|L [--out DIR]``: the mesh-scale benchmark, in one command.

What runs, each its own process on loopback, every one stopped by its PID at the end (and on
errors and Ctrl-C; they also die with the driver, see ``navigator.lab.procs.start``):

1. two local Kubernetes API servers (``east``, ``west``) loaded with the generated mesh
   (``navigator.bench.mesh``: Services, Endpoints, Nodes, Nexus objects);
2. **ours**: a 3-member etcd, 2 watcher replicas per cluster, 2 translators sharing 8
   shards, 2 xDS front-ends; then the sidecars: simulated ADS clients
   (``navigator.bench.sidecars``, real gRPC, half State of the World and half Delta, spread
   over processes, each sidecar on one front-end) and real Envoys (scoped ones, and one of app
   ``full`` whose Nexus names every service). Phases:

   - start-up: from spawning the control plane (the API servers already hold the mesh, etcd
     is empty) to every sidecar holding its complete config (every EDS resource its CDS
     names) and every Envoy holding all its clusters. The sidecars are spawned once the
     front-ends have loaded what the translators wrote, so that the front-ends' memory
     before any stream is known; the time from their spawn is shown apart;
   - serial: one endpoint change at a time through the Kubernetes API (a pod of a service
     replaced: its oldest address goes, a new one comes), each timed from just before the
     API call to the moment the LAST sidecar whose app's Nexus names the service holds the
     new address in both of the service's EDS resources; after each, a quiet period so that
     every etcd write, byte sent and CPU second of the phase belongs to its changes;
   - churn: changes at a steady rate (``rates`` of the size), then a roll-out burst (pods of
     ``rollout_services`` services replaced one after the other per service, all services
     at once);
   - staleness: after a quiet period every simulated sidecar's held config (cluster names
     and every assignment's addresses, as digests) is compared with what etcd says it should
     hold (the front-end's own ``SnapshotCache`` and ``resources.expected``), and every
     Envoy's ``/config_dump`` with ``navigator proxy-diff``'s comparison.
3. **the floor**, in the same run on the same machine: the control plane stopped (etcd
   kept), two replay servers (``navigator.bench.replay``: the final snapshots read once from
   etcd, pre-encoded responses replayed; no etcd after that, no translation) serve the same
   sidecars in fresh processes, and the same phases are replayed as EDS flips (an extra
   address added to the same services' resources, at the same rates); etcd's own watch
   latency is measured on the same etcd.

Figures go to stdout (a table, ours beside the floor and the ratio), ``DIR/bench.json`` and
``DIR/convergence.svg`` (the distribution of convergence times per phase).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from navigator import bootstrap, keys

log = logging.getLogger("navigator.bench")

SHARDS = 8
WATCHERS_PER_CLUSTER = 2
TRANSLATORS = 2
FRONTENDS = 2
STREAMS_PER_CHANNEL = 100
API_THREADS = 8
CHANGE_LIMIT = 15.0
"""Seconds a change may take before it counts as not converged."""
QUIET = 0.4
"""Seconds without an etcd write that end a serial change."""


@dataclasses.dataclass
class Phase:
    """One measured phase: its changes and what the processes spent meanwhile."""

    name: str
    changes: list[Any] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)
    writes: dict[str, int] = dataclasses.field(default_factory=dict)
    write_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    issued_s: float = 0.0
    """From the first change's write to the last's (the rate achieved)."""

    def convergence(self) -> dict[str, Any]:
        from navigator.bench.track import spread

        done = [c.convergence_ms() for c in self.changes]
        out = spread([d for d in done if d is not None])
        out["not_converged"] = sum(1 for d in done if d is None)
        return out


class Etcdwatch:
    """Every write under ``/navigator/v1/``, counted by kind, as a watch of the driver's sees
    it."""

    KINDS = (
        ("state", keys.STATE),
        ("eds", keys.EDS_SNAPSHOTS),
        ("apps", keys.APP_SNAPSHOTS),
        ("apps", keys.CHUNKS),
        ("status", keys.SIDECARS),
        ("coordination", keys.MEMBERS),
        ("coordination", keys.SHARDS),
        ("coordination", keys.WATCHERS),
        ("coordination", keys.STALE),
    )

    def __init__(self) -> None:
        self.writes: collections.Counter[str] = collections.Counter()
        self.bytes: collections.Counter[str] = collections.Counter()
        self.last: dict[str, float] = {}
        self.first_wall: dict[str, float] = {}
        self.last_wall: dict[str, float] = {}

    def kind(self, key: str) -> str:
        for name, prefix in self.KINDS:
            if key.startswith(prefix):
                return name
        return "other"

    async def follow(self, etcd: Any, start: int) -> None:
        async for ev in etcd.watch_prefix(keys.ROOT, start_revision=start):
            kind = self.kind(ev.key)
            self.writes[kind] += 1
            self.bytes[kind] += len(ev.value or b"")
            self.last[kind] = time.monotonic()
            self.last_wall[kind] = time.time()
            self.first_wall.setdefault(kind, self.last_wall[kind])

    def quiet_for(self, seconds: float, kinds: Sequence[str] | None = None) -> bool:
        now = time.monotonic()
        return all(now - t >= seconds for k, t in self.last.items() if kinds is None or k in kinds)


# -- the run ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from navigator.bench import mesh as mesh_mod
        from navigator.bench import system as system_mod
        from navigator.bench import track

        self.args = args
        self.size = mesh_mod.SIZES[args.size]
        self.mesh = mesh_mod.Mesh(self.size)
        self.work = work
        self.system = system_mod.System(work)
        # NOTE: changes are made only to services some sidecar sees (by its Nexus): a change
        # nobody receives has no convergence to measure.
        self.seen = sorted(
            s for s, apps in self.mesh.apps_of.items() if any(a != mesh_mod.FULL_APP for a in apps)
        )
        self.by_app: dict[str, list[int]] = collections.defaultdict(list)
        for g, sc in enumerate(self.mesh.sidecars):
            self.by_app[sc.app].append(g)
        self.tracker = track.Tracker(
            self.mesh.sidecars, [self.mesh.expected_eds(sc.app) for sc in self.mesh.sidecars]
        )
        self.watch = Etcdwatch()
        self.rnd = random.Random(11)
        self.result: dict[str, Any] = {}
        self.ours: dict[str, Phase] = {}
        self.floor: dict[str, Phase] = {}
        self.services_changed: list[list[int]] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(API_THREADS, "api-write")
        self.etcd: Any = None
        self.etcd_urls = ""
        self.kubeconfig = work / "kubeconfig"
        self.http: dict[str, str] = {}
        self.xds_ports: list[int] = []
        self.envoys: list[dict[str, Any]] = []
        self.core: dict[str, Any] = {}
        self.replay_http: list[str] = []
        self.session: Any = None
        """The driver's aiohttp session, made in ``run`` (on the loop)."""

    # -- helpers ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def wait(
        self, predicate: Callable[[], bool | Awaitable[bool]], what: str, limit: float
    ) -> None:
        from navigator.bench import system as system_mod

        await system_mod.wait_for(predicate, what, limit, self.system)

    async def http_ok(self, url: str) -> bool:
        import aiohttp

        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                return bool(r.status == 200)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def get_text(self, url: str, limit: float = 10.0) -> str:
        import aiohttp

        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=limit)) as r:
            r.raise_for_status()
            text: str = await r.text()
            return text

    async def metrics(self, names: Sequence[str]) -> dict[str, float]:
        """The front-ends' counters ``names`` (every label summed, both front-ends)."""
        from prometheus_client.parser import text_string_to_metric_families

        out = dict.fromkeys(names, 0.0)
        for i in range(FRONTENDS):
            text = await self.get_text(f"http://{self.http[f'xds-{i}']}/metrics")
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in out:
                        out[sample.name] += sample.value
        return out

    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = collections.defaultdict(float)
        for p in self.system.procs:
            out[p.role] += p.cpu_s()
        out["driver"] = time.process_time()
        return dict(out)

    # -- ours ------------------------------------------------------------------------------

    async def start_apis(self) -> None:
        from navigator.bench import mesh as mesh_mod
        from navigator.kubeapi import server as kubeapi_server
        from navigator.lab import procs

        started = time.monotonic()
        urls: dict[str, str] = {}
        for cluster in mesh_mod.CLUSTERS:
            manifest = self.work / f"mesh-{cluster}.json"
            manifest.write_text(json.dumps(self.mesh.manifests(cluster)))
            port = procs.free_port()
            urls[cluster] = f"http://127.0.0.1:{port}"
            self.system.navigator(
                f"kube-api-{cluster}",
                "kube-api",
                "kube-api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--name",
                cluster,
                "--load",
                str(manifest),
                "--log-level",
                "WARNING",
            )
        kubeapi_server.write_kubeconfig(self.kubeconfig, urls)
        for url in urls.values():
            await self.wait(_probe(self.http_ok, f"{url}/readyz"), "API server ready", 300)
        self.result["api_load_s"] = round(time.monotonic() - started, 2)
        self.say(f"API servers hold the mesh ({self.result['api_load_s']} s)")
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        for cluster in mesh_mod.CLUSTERS:
            cfg = k8s_client.Configuration()
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig), context=cluster, client_configuration=cfg
            )
            cfg.connection_pool_maxsize = API_THREADS * 2
            self.core[cluster] = k8s_client.CoreV1Api(k8s_client.ApiClient(cfg))

    async def start_etcd(self) -> None:
        from coordinator import etcd as etcd_mod
        from navigator.lab import procs

        members = procs.start_etcd_cluster(self.work / "etcd", members=3, logs=self.work)
        for m in members:
            self.system.adopt(m.name, "etcd", m.popen, m.log_file or self.work / m.name)
        self.etcd_urls = ",".join(m.client_url for m in members)
        self.etcd = etcd_mod.Etcd(etcd_mod.parse_endpoints(self.etcd_urls))
        start = await self.etcd.ping() + 1
        self._tasks.append(asyncio.create_task(self.watch.follow(self.etcd, start)))

    def start_control_plane(self) -> None:
        from navigator.bench import mesh as mesh_mod
        from navigator.lab import procs

        def http(name: str) -> str:
            self.http[name] = f"127.0.0.1:{procs.free_port()}"
            return self.http[name]

        common = ("--etcd", self.etcd_urls, "--log-level", "warning")
        for cluster in mesh_mod.CLUSTERS:
            for i in range(WATCHERS_PER_CLUSTER):
                name = f"watcher-{cluster}-{i}"
                self.system.navigator(
                    name,
                    "watcher",
                    "watcher",
                    "--cluster",
                    cluster,
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--context",
                    cluster,
                    "--http",
                    http(name),
                    "--id",
                    name,
                    *common,
                )
        for i in range(TRANSLATORS):
            name = f"translator-{i}"
            # NOTE: no listener binds (sidecars behind an iptables redirect, as in a real
            # cluster) and no health listener: many Envoys share this machine's addresses.
            self.system.navigator(
                name,
                "translator",
                "translator",
                "--http",
                http(name),
                "--id",
                name,
                "--shards",
                str(SHARDS),
                "--no-bind-to-port",
                "--health-port",
                "0",
                *common,
            )
        for i in range(FRONTENDS):
            name = f"xds-{i}"
            port = procs.free_port()
            self.xds_ports.append(port)
            self.system.navigator(
                name,
                "xds",
                "xds",
                "--listen",
                f"127.0.0.1:{port}",
                "--http",
                http(name),
                "--id",
                name,
                *common,
            )

    def spawn_sidecars(self, ports: Sequence[int], tag: str) -> None:
        """The simulated sidecars in ``client_procs`` processes: one per (front-end, variant)
        group at least, each group's sidecars split evenly."""
        groups: dict[tuple[int, bool], list[int]] = collections.defaultdict(list)
        for g, sc in enumerate(self.mesh.sidecars):
            groups[(sc.frontend, sc.delta)].append(g)
        per_group = max(1, self.size.client_procs // len(groups))
        n = 0
        for (fe, delta), members in sorted(groups.items()):
            for part in range(per_group):
                chosen = members[part::per_group]
                token = f"{tag}-{n}"
                spec = {
                    "xds": f"127.0.0.1:{ports[fe]}",
                    "delta": delta,
                    "streams_per_channel": STREAMS_PER_CHANNEL,
                    "token": token,
                    "sidecars": [self.mesh.sidecars[g].spec() for g in chosen],
                }
                path = self.work / f"{token}.json"
                path.write_text(json.dumps(spec))
                self.tracker.expect_process(token, chosen)
                self.system.spawn(
                    token,
                    "sidecars",
                    [
                        sys.executable,
                        "-m",
                        "navigator.bench.sidecars",
                        "--spec",
                        str(path),
                        "--report",
                        f"127.0.0.1:{self.tracker.port}",
                    ],
                )
                n += 1

    def spawn_envoys(self) -> None:
        from navigator.bench import mesh as mesh_mod
        from navigator.bench import system as system_mod
        from navigator.lab import procs

        apps = [mesh_mod.app_name(k) for k in range(self.size.envoys - 1)] + [mesh_mod.FULL_APP]
        for k, app in enumerate(apps):
            cluster = self.mesh.home[app]
            admin = procs.free_port()
            config = bootstrap.render(
                node_id=f"envoy-{app}",
                app=app,
                cluster=cluster,
                region=mesh_mod.REGIONS[cluster],
                zone=mesh_mod.ZONES[cluster][k % 2],
                xds_host="127.0.0.1",
                xds_port=self.xds_ports[k % FRONTENDS],
                admin_port=admin,
                delta=k % 2 == 1,
            )
            path = self.work / f"envoy-{app}.json"
            path.write_text(json.dumps(config))
            proc = self.system.spawn(
                f"envoy-{app}",
                "envoy",
                [str(procs.envoy_binary()), "-c", str(path), *system_mod.ENVOY_FLAGS],
            )
            self.envoys.append(
                {
                    "node": f"envoy-{app}",
                    "app": app,
                    "admin": f"127.0.0.1:{admin}",
                    "proc": proc,
                    "clusters": self.mesh.expected_eds(app)
                    + len(config["static_resources"]["clusters"]),
                    "ready_at": None,
                    "full": app == mesh_mod.FULL_APP,
                }
            )

    async def envoy_clusters(self, envoy: dict[str, Any]) -> int:
        try:
            text = await self.get_text(
                f"http://{envoy['admin']}/stats?filter=^cluster_manager.active_clusters$"
            )
        except Exception:
            return 0
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "cluster_manager.active_clusters":
                return int(value)
        return 0

    async def envoys_ready(self) -> bool:
        for envoy in self.envoys:
            if envoy["ready_at"] is None and await self.envoy_clusters(envoy) >= envoy["clusters"]:
                envoy["ready_at"] = time.time()
        return all(e["ready_at"] is not None for e in self.envoys)

    async def run_ours(self) -> None:
        from navigator.bench import track

        started = time.time()
        cpu0 = self.cpu()
        self.start_control_plane()
        # NOTE: the sidecars start with the control plane, as after a restart of the whole
        # mesh's control plane: they retry (0.5 s) until a front-end answers, and hold the
        # default snapshot until their app's is written.
        self.spawn_sidecars(self.xds_ports, "ours")
        self.spawn_envoys()
        profilers = self.profile("ours-startup")
        for name, addr in self.http.items():
            await self.wait(_probe(self.http_ok, f"http://{addr}/readyz"), f"{name} ready", 120)
        await self.wait(
            lambda: self.tracker.ready_count == len(self.mesh.sidecars),
            f"every simulated sidecar complete ({len(self.mesh.sidecars)})",
            300,
        )
        await self.wait(self.envoys_ready, "every Envoy holding its clusters", 300)
        last = max(
            *(t for t in self.tracker.ready_at if t is not None),
            *(e["ready_at"] for e in self.envoys),
        )
        ready = [t - started for t in self.tracker.ready_at if t is not None]
        self.result["startup"] = {
            "startup_s": round(last - started, 2),
            "sidecars_complete_s": track.spread(ready),
            "first_sidecar_complete_s": round(min(ready), 2),
            "first_state_write_s": round(self.watch.first_wall.get("state", started) - started, 2),
            "first_snapshot_write_s": round(
                self.watch.first_wall.get("apps", started) - started, 2
            ),
            "last_snapshot_write_s": round(self.watch.last_wall.get("apps", started) - started, 2),
            "stream_errors": self.tracker.errors,
            "stream_error_samples": self.tracker.error_samples,
        }
        self.stop_profilers(profilers)
        cpu1 = self.cpu()
        # NOTE: on a small machine start-up is CPU-bound: where the CPU went says why.
        self.result["startup"]["cpu_s_by_role"] = {
            k: round(v - cpu0.get(k, 0.0), 1) for k, v in sorted(cpu1.items())
        }
        self.say(f"every sidecar ACKed its config: start-up {last - started:.1f} s")
        await self.wait(lambda: self.watch.quiet_for(2.0, ["apps", "eds", "state"]), "quiet", 60)
        await self.frontend_memory()
        await self.envoy_memory()
        await self.phase_serial(self.ours, self.api_change)
        for rate in self.size.rates:
            await self.phase_churn(self.ours, f"churn {rate}/s", rate, self.api_change)
        await self.phase_rollout(self.ours, self.api_change)
        await self.check_stale()
        self.result["memory"] = self.memory()

    async def frontend_memory(self) -> None:
        """Memory per idle stream: the front-ends' RSS against a reference front-end that
        loads the same snapshots and serves no stream, started for the measurement only."""
        from navigator.lab import procs

        http = f"127.0.0.1:{procs.free_port()}"
        ref = self.system.navigator(
            "xds-reference",
            "xds-reference",
            "xds",
            "--listen",
            f"127.0.0.1:{procs.free_port()}",
            "--http",
            http,
            "--id",
            "xds-reference",
            "--etcd",
            self.etcd_urls,
            "--log-level",
            "warning",
        )
        await self.wait(_probe(self.http_ok, f"http://{http}/readyz"), "reference ready", 120)
        # NOTE: ready means loaded; the RSS still settles for a moment after.
        samples = [ref.rss_mib()]
        while len(samples) < 3 or abs(samples[-1] - samples[-3]) > 1.0:
            await asyncio.sleep(0.5)
            samples.append(ref.rss_mib())
        baseline = samples[-1]
        self.system.stop("xds-reference")
        fe = self.system.of("xds")
        streams = await self.metrics(["navigator_xds_streams"])
        per_fe = [
            len([sc for sc in self.mesh.sidecars if sc.frontend == i])
            + len([e for k, e in enumerate(self.envoys) if k % FRONTENDS == i])
            for i in range(FRONTENDS)
        ]
        rss = [p.rss_mib() for p in fe]
        self.result["frontend"] = {
            "streams": int(streams["navigator_xds_streams"]),
            "streams_per_process": per_fe,
            "rss_reference_mib": round(baseline, 1),
            "rss_idle_mib": [round(r, 1) for r in rss],
            "kib_per_idle_stream": round(sum((r - baseline) * 1024 for r in rss) / sum(per_fe), 1),
        }

    async def envoy_memory(self) -> None:
        out = []
        for envoy in self.envoys:
            doc = json.loads(await self.get_text(f"http://{envoy['admin']}/memory"))
            out.append(
                {
                    "node": envoy["node"],
                    "full_mesh": envoy["full"],
                    "clusters": envoy["clusters"],
                    "heap_mb": round(int(doc["heap_size"]) / 1e6, 1),
                    "allocated_mb": round(int(doc["allocated"]) / 1e6, 1),
                    "anon_rss_mb": round(envoy["proc"].rss_mib("RssAnon") * 1.048576, 1),
                }
            )
        self.result["envoy_memory"] = out

    def memory(self) -> dict[str, Any]:
        by_role: dict[str, float] = collections.defaultdict(float)
        for p in self.system.procs:
            by_role[p.role] += p.rss_mib() * 1.048576
        cp = sum(by_role[r] for r in ("watcher", "translator", "xds"))
        return {
            "cp_rss_mb": round(cp, 1),
            "cp_with_etcd_rss_mb": round(cp + by_role["etcd"], 1),
            "by_role_mb": {k: round(v, 1) for k, v in sorted(by_role.items())},
        }

    # -- changes ---------------------------------------------------------------------------

    def receivers(self, s: int) -> list[int]:
        return [g for app in self.mesh.apps_of.get(s, ()) for g in self.by_app.get(app, ())]

    async def api_change(self, cluster: str, s: int) -> Any:
        """A pod of service ``s`` in ``cluster`` replaced through the API server."""
        from navigator.bench import mesh as mesh_mod

        ip = self.mesh.replace_oldest(cluster, s)
        body = self.mesh.endpoints_body(cluster, s)
        pairs = [
            (r, f"{ip}:{p}")
            for r, (_, p) in zip(mesh_mod.eds_names(s), mesh_mod.PORTS, strict=True)
        ]
        change = self.tracker.register(f"{cluster}/svc{s}", pairs, self.receivers(s))
        ns, name = mesh_mod.service_ref(s)
        core = self.core[cluster]
        # NOTE: timed from the request's start in its thread, not from the queue before the
        # driver's threads: the driver's own backlog is not the system's latency.
        change.t0, change.written = await asyncio.get_running_loop().run_in_executor(
            self.pool, _replace_endpoints, core, ns, name, body
        )
        return change

    async def wait_changes(self, changes: Sequence[Any], limit: float) -> None:
        pending = [asyncio.create_task(c.done.wait()) for c in changes if not c.done.is_set()]
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=limit)
            for task in not_done:
                task.cancel()
        self.tracker.forget(changes)

    def begin(self, book: dict[str, Phase], name: str) -> tuple[Phase, dict[str, float], float]:
        phase = Phase(name)
        book[name] = phase
        return phase, self.cpu(), time.monotonic()

    async def end(
        self,
        phase: Phase,
        cpu0: dict[str, float],
        t0: float,
        m0: dict[str, float],
        w0: tuple[dict[str, int], dict[str, int]],
    ) -> None:
        phase.wall_s = time.monotonic() - t0
        cpu1 = self.cpu()
        phase.cpu_s = {k: round(cpu1.get(k, 0) - cpu0.get(k, 0), 3) for k in cpu1}
        if m0:
            m1 = await self.counters()
            phase.metrics = {k: m1[k] - m0[k] for k in m0}
        phase.writes = {k: v - w0[0].get(k, 0) for k, v in self.watch.writes.items()}
        phase.write_bytes = {k: v - w0[1].get(k, 0) for k, v in self.watch.bytes.items()}

    async def counters(self) -> dict[str, float]:
        if not self.system.of("xds"):
            # NOTE: the replay servers count the same two things in their /stats.
            out = {"navigator_xds_responses_total": 0.0, "navigator_xds_sent_bytes_total": 0.0}
            for addr in self.replay_http:
                doc = json.loads(await self.get_text(f"http://{addr}/stats"))
                out["navigator_xds_responses_total"] += doc["responses"]
                out["navigator_xds_sent_bytes_total"] += doc["sent_bytes"]
            return out
        return await self.metrics(
            ["navigator_xds_responses_total", "navigator_xds_sent_bytes_total"]
        )

    async def phase_serial(
        self, book: dict[str, Phase], change: Callable[[str, int], Awaitable[Any]]
    ) -> None:
        from navigator.bench import mesh as mesh_mod

        floor = book is self.floor
        m0 = await self.counters()
        w0 = (dict(self.watch.writes), dict(self.watch.bytes))
        phase, cpu0, t0 = self.begin(book, "serial")
        profilers = self.profile(f"{'floor' if floor else 'ours'}-serial")
        for i in range(self.size.serial):
            if floor:
                cluster, s = self.services_changed[i]
                cluster_name = mesh_mod.CLUSTERS[cluster]
            else:
                cluster_name = mesh_mod.CLUSTERS[i % 2]
                s = self.rnd.choice(self.seen)
                self.services_changed.append([i % 2, s])
            c = await change(cluster_name, s)
            phase.changes.append(c)
            await self.wait_changes([c], CHANGE_LIMIT)
            if not floor:
                with contextlib.suppress(Exception):
                    await self.wait(lambda: self.watch.quiet_for(QUIET), "quiet", 5)
        self.stop_profilers(profilers)
        await self.end(phase, cpu0, t0, m0, w0)
        self.say(f"{'floor' if floor else 'ours'} serial: {phase.convergence()}")

    async def phase_churn(
        self,
        book: dict[str, Phase],
        name: str,
        rate: int,
        change: Callable[[str, int], Awaitable[Any]],
    ) -> None:
        from navigator.bench import mesh as mesh_mod

        m0 = await self.counters()
        w0 = (dict(self.watch.writes), dict(self.watch.bytes))
        phase, cpu0, t0 = self.begin(book, name)
        profilers = self.profile(f"{'floor' if book is self.floor else 'ours'}-{rate}")
        count = int(rate * self.size.churn_s)
        rnd = random.Random(rate)
        busy: set[tuple[str, int]] = set()
        tasks: list[asyncio.Task[Any]] = []
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(cluster: str, s: int) -> Any:
            try:
                return await change(cluster, s)
            finally:
                busy.discard((cluster, s))

        issued = []
        for k in range(count):
            delay = start + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            while True:
                key = (mesh_mod.CLUSTERS[rnd.randrange(2)], rnd.choice(self.seen))
                if key not in busy:
                    break
            # NOTE: one write in flight per Endpoints object: two replaces of one object racing
            # in the API server could lose one change, and it would never converge.
            busy.add(key)
            issued.append(time.time())
            tasks.append(asyncio.create_task(one(*key)))
        phase.changes = list(await asyncio.gather(*tasks))
        self.stop_profilers(profilers)
        phase.issued_s = issued[-1] - issued[0] if len(issued) > 1 else 0.0
        await self.wait_changes(phase.changes, CHANGE_LIMIT * 2)
        await self.end(phase, cpu0, t0, m0, w0)
        self.say(f"{name}: {phase.convergence()}")

    async def phase_rollout(
        self, book: dict[str, Phase], change: Callable[[str, int], Awaitable[Any]]
    ) -> None:
        m0 = await self.counters()
        w0 = (dict(self.watch.writes), dict(self.watch.bytes))
        phase, cpu0, t0 = self.begin(book, "roll-out")
        rnd = random.Random(5)
        services = rnd.sample(self.seen, self.size.rollout_services)
        per = self.size.rollout // len(services)

        async def roll(s: int) -> list[Any]:
            # NOTE: a Deployment's pods of one service are replaced one after the other.
            return [await change("east", s) for _ in range(per)]

        start = time.time()
        done = await asyncio.gather(*(roll(s) for s in services))
        phase.changes = [c for group in done for c in group]
        phase.issued_s = time.time() - start
        await self.wait_changes(phase.changes, CHANGE_LIMIT * 2)
        await self.end(phase, cpu0, t0, m0, w0)
        lasts = [c.last for c in phase.changes if c.last is not None]
        phase.metrics["rollout_complete_s"] = round(max(lasts) - start, 3) if lasts else -1
        self.say(f"roll-out of {len(phase.changes)} pods: {phase.convergence()}")

    def profile(self, label: str) -> list[subprocess.Popen[bytes]]:
        """py-spy on the first front-end (or replay server) and translator, with ``--profile``."""
        if self.args.profile is None:
            return []
        py_spy = Path(sys.executable).with_name("py-spy")
        self.args.profile.mkdir(parents=True, exist_ok=True)
        out = []
        for p in self.system.of("xds", "replay", "translator"):
            if p.name not in ("xds-0", "replay-0", "translator-0"):
                continue
            path = self.args.profile / f"{label}-{p.name}.txt"
            out.append(
                subprocess.Popen(
                    [
                        str(py_spy),
                        "record",
                        "--pid",
                        str(p.pid),
                        "--format",
                        "raw",
                        "-o",
                        str(path),
                        "--rate",
                        "200",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return out

    def stop_profilers(self, profilers: Sequence[subprocess.Popen[bytes]]) -> None:
        for profiler in profilers:
            with contextlib.suppress(ProcessLookupError):
                profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)

    # -- staleness -------------------------------------------------------------------------

    async def check_stale(self) -> None:
        from envoy.config.endpoint.v3 import endpoint_pb2

        from navigator import proxy, snapshot, state
        from navigator.bench import sidecars as sidecars_mod
        from navigator.xds import resources

        await self.wait(lambda: self.watch.quiet_for(2.0), "quiet before the check", 60)
        answers = await self.tracker.ask("dump")
        held: dict[str, Any] = {}
        for answer in answers:
            for node_id, cds, eds in answer["dump"]:
                held[node_id] = (cds, eds)
        cache = await state.load_snapshots(self.etcd)
        digests: dict[tuple[str, str], str] = {}

        def eds_digest(name: str, enc: Any) -> str:
            key = (name, enc.hash)
            if key not in digests:
                cla = endpoint_pb2.ClusterLoadAssignment.FromString(resources.body_of(enc))
                digests[key] = sidecars_mod.digest(
                    f"{lb.endpoint.address.socket_address.address}:"
                    f"{lb.endpoint.address.socket_address.port_value}"
                    for loc in cla.endpoints
                    for lb in loc.lb_endpoints
                )
            return digests[key]

        stale: list[str] = []
        for sc in self.mesh.sidecars:
            node = resources.NodeInfo(sc.id, sc.app, sc.cluster, sc.region, sc.zone)
            cds_found = resources.expected(cache, node, snapshot.CLUSTER)
            eds_found = resources.expected(cache, node, snapshot.ENDPOINT)
            want_cds = sidecars_mod.digest(cds_found[1] if cds_found else ())
            want_eds = {n: eds_digest(n, e) for n, e in (eds_found[1] if eds_found else {}).items()}
            got = held.get(sc.id)
            if got is None or got[0] != want_cds or got[1] != want_eds:
                stale.append(sc.id)
        envoys_stale = []
        for envoy in self.envoys:
            row = await proxy.diff(self.etcd, envoy["node"], admin=envoy["admin"], within=60)
            if not row["same"]:
                envoys_stale.append(envoy["node"])
        self.result["stale"] = {
            "stale_sidecars": len(stale) + len(envoys_stale),
            "simulated_checked": len(self.mesh.sidecars),
            "envoys_checked": len(self.envoys),
            "samples": (stale + envoys_stale)[:10],
        }
        self.say(f"staleness: {len(stale)} simulated and {len(envoys_stale)} Envoys stale")

    # -- the floor -------------------------------------------------------------------------

    async def watch_latency(self, probes: int = 200) -> dict[str, Any]:
        from coordinator import etcd as etcd_mod
        from navigator.bench.track import spread

        key = "/bench/watch-probe"
        async with etcd_mod.Etcd(etcd_mod.parse_endpoints(self.etcd_urls)) as writer:
            start = await self.etcd.ping() + 1
            arrived: asyncio.Queue[float] = asyncio.Queue()

            async def follow() -> None:
                async for _ in self.etcd.watch_key(key, start_revision=start):
                    arrived.put_nowait(time.perf_counter())

            task = asyncio.create_task(follow())
            out = []
            try:
                for i in range(probes):
                    t0 = time.perf_counter()
                    await writer.put(key, str(i).encode())
                    out.append((await asyncio.wait_for(arrived.get(), 5) - t0) * 1000)
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        return spread(out) | {"p50": round(sorted(out)[len(out) // 2], 2)}

    async def run_floor(self) -> None:
        from navigator.lab import procs

        self.system.stop("sidecars", "envoy", "xds", "translator", "watcher")
        await self.tracker.close()
        self.tracker.reset()
        await self.tracker.start()
        self.result["etcd_watch_latency_ms"] = await self.watch_latency()
        started = time.time()
        ports = []
        for i in range(FRONTENDS):
            port, http = procs.free_port(), procs.free_port()
            ports.append(port)
            self.replay_http.append(f"127.0.0.1:{http}")
            self.system.spawn(
                f"replay-{i}",
                "replay",
                [
                    sys.executable,
                    "-m",
                    "navigator.bench.replay",
                    "--etcd",
                    self.etcd_urls,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--http",
                    f"127.0.0.1:{http}",
                ],
            )
        for addr in self.replay_http:
            await self.wait(_probe(self.http_ok, f"http://{addr}/stats"), "replay ready", 300)
        loaded = time.time()
        rss_before = [p.rss_mib() for p in self.system.of("replay")]
        self.spawn_sidecars(ports, "floor")
        await self.wait(
            lambda: self.tracker.ready_count == len(self.mesh.sidecars),
            "every simulated sidecar complete on the replay servers",
            300,
        )
        last = max(t for t in self.tracker.ready_at if t is not None)
        self.result["floor_startup"] = {
            "startup_s": round(last - started, 2),
            "load_s": round(loaded - started, 2),
            "sidecars_spawned_to_acked_s": round(last - loaded, 2),
        }
        await asyncio.sleep(3.0)
        replay = self.system.of("replay")
        per_fe = [
            len([sc for sc in self.mesh.sidecars if sc.frontend == i]) for i in range(FRONTENDS)
        ]
        self.result["floor_frontend"] = {
            "kib_per_idle_stream": round(
                sum((p.rss_mib() - b) * 1024 for p, b in zip(replay, rss_before, strict=True))
                / sum(per_fe),
                1,
            )
        }
        self._floor_seq = 0
        await self.phase_serial(self.floor, self.flip_change)
        for rate in self.size.rates:
            await self.phase_churn(self.floor, f"churn {rate}/s", rate, self.flip_change)
        await self.phase_rollout(self.floor, self.flip_change)
        stats = [json.loads(await self.get_text(f"http://{a}/stats")) for a in self.replay_http]
        self.result["floor_stats"] = stats

    async def flip_change(self, cluster: str, s: int) -> Any:
        """The floor's change: an extra address in both EDS resources of service ``s``, pushed
        by the replay servers."""
        import aiohttp

        from navigator.bench import mesh as mesh_mod

        self._floor_seq += 1
        n = self._floor_seq
        ip = f"127.25.{n // 250 % 250}.{n % 250 + 1}"
        pairs = [
            (r, f"{ip}:{p}")
            for r, (_, p) in zip(mesh_mod.eds_names(s), mesh_mod.PORTS, strict=True)
        ]
        change = self.tracker.register(f"flip/svc{s}", pairs, self.receivers(s))
        names = list(mesh_mod.eds_names(s))

        async def post(addr: str) -> None:
            async with self.session.post(
                f"http://{addr}/flip",
                json={"names": names, "address": ip},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                r.raise_for_status()

        await asyncio.gather(*(post(a) for a in self.replay_http))
        return change

    # -- the whole run ---------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        import aiohttp

        self._tasks: list[asyncio.Task[Any]] = []
        # NOTE: one session (one connection pool) for every request of the driver: a session
        # per flip cost the driver a connection per change, counted against the floor.
        self.session = aiohttp.ClientSession()
        await self.tracker.start()
        try:
            await self.start_apis()
            await self.start_etcd()
            await self.run_ours()
            if not self.args.no_floor:
                await self.run_floor()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.tracker.close()
            self.system.stop()
            if self.etcd is not None:
                await self.etcd.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            await self.session.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        from navigator.bench import report

        return report.summary(self)


def _probe(check: Callable[[str], Awaitable[bool]], url: str) -> Callable[[], Awaitable[bool]]:
    return lambda: check(url)


def _replace_endpoints(
    core: Any, namespace: str, name: str, body: dict[str, Any]
) -> tuple[float, float]:
    """The write through the API server; returns when it started and when it was answered."""
    started = time.time()
    import tenacity
    from kubernetes.client.exceptions import ApiException

    for attempt in tenacity.Retrying(
        stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
        retry=tenacity.retry_if_exception(
            lambda e: not isinstance(e, ApiException) or (e.status or 0) >= 500
        ),
        reraise=True,
    ):
        with attempt:
            core.replace_namespaced_endpoints(name, namespace, body, _request_timeout=10)
    return started, time.time()


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024**2, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="navigator bench",
        description="The mesh-scale benchmark: the control plane on loopback (3-member etcd, "
        "two local clusters, watchers, 2 translators, 2 front-ends), thousands of simulated "
        "sidecars and real Envoys, churn through the Kubernetes API, and the floor (a "
        "replay server) measured in the same run. Prints a table; writes DIR/bench.json "
        "and DIR/convergence.svg.",
    )
    parser.add_argument(
        "--size",
        choices=("S", "L"),
        default="S",
        help="S: 200 services x 10 endpoints, 100 apps, 500 sidecars (CI); L: 2,000 "
        "services x 20 endpoints, 1,000 apps, 5,000 sidecars (default %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="output directory")
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the floor (replay server) phases"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record py-spy profiles (raw stacks) of a front-end and a translator during churn",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep every process's log in DIR/work"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from navigator.bench import report
    from navigator.bench import system as system_mod

    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bench = Bench(args, work)
    try:
        result = asyncio.run(bench.run())
    except system_mod.BenchError as exc:
        print(f"navigator bench: {exc}", file=sys.stderr)
        print(f"navigator bench: logs in {work}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "convergence.svg").write_text(report.svg(result))
    print(report.table(result))
    print(f"\nwrote {out / 'bench.json'} and {out / 'convergence.svg'}")
    if not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
