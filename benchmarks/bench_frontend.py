"""What one xDS front-end process costs at 1,000s of streams, and how fast it pushes a change.

Why it exists: ``bench_endpoint_change.py`` follows one change through the whole control plane
with one stream per app; this benchmark loads ONE front-end process (``navigator xds``) with
many streams of a few apps, as a real mesh does (many replicas per app), and answers:

- streams connected: the front-end's own ``navigator_xds_streams`` gauge once every stream
  has its endpoints;
- memory per idle stream: the front-end's ``VmRSS`` (``/proc/PID/status``) once all N streams
  are connected, hold the endpoints (so have ACKed everything, the clients ACK on receipt),
  the system was quiet for ``--quiet`` s and idle for ``--idle`` s more, minus its ``VmRSS``
  before the first stream connected (snapshots loaded), divided by N;
- CPU per push: the front-end's ``utime + stime`` (``/proc/PID/stat``) over the changes
  phase, divided by the responses it sent meanwhile (``navigator_xds_responses_total``
  summed over types, from its ``/metrics``), and by the number of changes;
- push latency of one endpoint change: from just before the Kubernetes API write of the
  Endpoints object to the moment the LAST subscribed stream holds the new endpoints; p50, p99
  and max over the changes, for the simulated streams and the real Envoys apart, and for all;
- the CPU of the simulated clients over the same phase, next to the front-end's, to show
  whether they are the bottleneck: per change (all client processes summed, comparable with
  the front-end's), and in % of one core over the phase, summed and for the busiest process;
- also counted: the front-end's own etcd writes per change (its sidecars' status records under
  ``sidecars/``), and stream failures, apart while connecting (each followed by a retry after
  0.5 s) and during the changes.

How: everything is reused from ``bench_endpoint_change.py`` in its ``single`` shape (one etcd,
the local Kubernetes API server, one watcher, one translator and one front-end, each its own
process on loopback): the same manifests (the Endpoints ``bench/target`` alternating between 10
and 11 addresses, one Nexus per app naming the service, so every stream sees every change), the
same Observer, change driver and quiet period between changes. The quiet period (0.6 s here)
also waits for the front-end's status records of the change (``sidecars/``, written in 0.5 s
cycles of at most 1,000 records, so about 2.5 s after a change at 5,000 streams): each change
is measured alone, with all the etcd writes it causes (``--no-status-wait`` skips that wait,
which is faster but lets records coalesce across changes). The N streams of a column are spread
evenly over ``--apps`` apps (stream ``j`` belongs to app ``j % apps``), so the streams of an
app share the front-end's encoded responses. The first ``--envoys`` of them are real Envoys
(``navigator.bootstrap`` pointed at the front-end's port, admin ``/clusters`` polled every 5 ms
while a change is pending), one each for apps 0, 1...; the rest are ``ads_client.py`` sidecars,
split over ``--client-procs`` processes, ``--streams-per-channel`` streams on each gRPC
channel; all N streams are opened at once, as after a front-end restart. Variants
(``--variant``): ``sotw`` (State of the World), ``delta`` (incremental xDS: the simulated
sidecars use ``DeltaAggregatedResources``, the real Envoys ``DELTA_GRPC``), ``both``, or by
default ``auto``: both if the front-end implements Delta (one probe stream before the
measurements says so), else ``sotw`` alone. Every (variant, stream count) gets a fresh system.

Run::

    .venv/bin/python benchmarks/bench_frontend.py [--streams 1000,5000] [--changes 30]
        [--apps 100] [--envoys 3] [--client-procs 4] [--variant auto|sotw|delta|both]
        [--no-status-wait] [--out results.json] [--log-dir DIR]

Prints one table (one column per variant and stream count) and, with ``--out``, the figures as
JSON (per-change records included, their etcd keys counted by prefix). The default run (1,000
and 5,000 streams, both variants, 30 changes) takes about 6 minutes on a 2-core machine (4 with
``--no-status-wait``). Exits 1 if a change did not converge. Every process's log goes to a
temporary directory (removed at the end; ``--log-dir`` keeps them); warnings and errors in the
front-end's log are counted under the table. Every process started is stopped at the end, on
errors and on Ctrl-C too, by its PID.

Reading the figures: p99 is nearest-rank, so over 30 changes it is the max. The machine's cores
are shared by every process: the front-end, its clients, the Envoys, the control plane and this
driver, so latency under load includes waiting for a core (the CPU rows say who used them): if
the clients' CPU per change approaches the front-end's on a 2-core machine, the two compete
during a push and the latency is an upper bound. Simulated streams time a change on receipt,
after their own process's queueing; the real Envoys' times are the admin answers' (up to 5 ms
late). Memory per stream includes what the front-end allocates once for its first stream
(amortized over N) and is an RSS difference, so the Python allocator's arenas make it coarse at
small N.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ads_client
import aiohttp
import bench_endpoint_change as bec
import grpc
import grpc.aio
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from prometheus_client import parser as prom_parser

from coordinator import etcd as etcd_mod
from navigator import bootstrap, keys, model
from navigator.lab import procs

VARIANTS = ("sotw", "delta")
FRONTEND = "xds"
"""The front-end's process name in the single shape."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
METRICS_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
PROBE_TIMEOUT = 5.0


class Unsupported(bec.BenchError):
    """The front-end does not implement the variant asked for."""


# --- who connects where ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    """N streams over the apps: stream ``j`` is of app ``j % apps``, the first ``envoys`` are
    real Envoys, the others simulated (``ads_client.py``'s layout with ``--sidecars-per-app``
    = ``per_app`` and ``--slice envoys:streams``)."""

    streams: int
    apps: int
    envoys: int

    @property
    def per_app(self) -> int:
        return math.ceil(self.streams / self.apps)

    @property
    def simulated(self) -> range:
        return range(self.envoys, self.streams)

    def simulated_names(self) -> list[str]:
        slots = ads_client.layout(range(self.apps), self.per_app)
        return [
            ads_client.sidecar_name(app, copy) for app, copy in slots[self.envoys : self.streams]
        ]

    def envoy_names(self) -> list[str]:
        return [f"envoy-{e}" for e in range(self.envoys)]

    def slices(self, parts: int) -> list[range]:
        """The simulated slots, split into at most ``parts`` contiguous ranges."""
        slots = self.simulated
        if not slots:
            return []
        size = math.ceil(len(slots) / max(1, parts))
        return [range(a, min(slots.stop, a + size)) for a in range(slots.start, slots.stop, size)]


# --- what the driver reads from the processes -----------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """``utime + stime`` of a process (``/proc/PID/stat``), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def cpu_of(system: bec.System) -> dict[str, float | None]:
    return {p.name: cpu_seconds(p.popen.pid) for p in system.procs}


def delta_of(after: dict[str, float | None], before: dict[str, float | None]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in after.items():
        start = before.get(name)
        if value is not None and start is not None:
            out[name] = round(value - start, 3)
    return out


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, float]]:
    """Samples of a Prometheus ``/metrics``: sample name -> labels (``k=v,...``) -> value."""
    try:
        async with session.get(url, timeout=METRICS_TIMEOUT) as resp:
            if resp.status != 200:
                raise bec.BenchError(f"{url}: HTTP {resp.status}")
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise bec.BenchError(f"{url}: {exc or type(exc).__name__}") from exc
    out: dict[str, dict[str, float]] = {}
    for family in prom_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[labels] = float(sample.value)
    return out


def metric(samples: dict[str, dict[str, float]], name: str) -> float:
    """A sample summed over its labels (0 if absent)."""
    return sum(samples.get(name, {}).values())


async def wait_streams(
    system: bec.System, session: aiohttp.ClientSession, url: str, want: int, limit: float
) -> int:
    """Waits until the front-end's ``navigator_xds_streams`` is ``want``; returns the last
    value read (which is not ``want`` if ``limit`` passed first)."""
    deadline = time.monotonic() + limit
    while True:
        system.check_alive()
        have = int(metric(await scrape(session, url), "navigator_xds_streams"))
        if have == want or time.monotonic() > deadline:
            return have
        await asyncio.sleep(0.1)


async def delta_supported(address: str) -> bool:
    """One Delta stream to the front-end: does it answer, or say UNIMPLEMENTED?"""
    node = ads_client.make_node(
        node_id="bench-probe",
        app="app-0",
        k8s_cluster=bec.CLUSTER,
        region=bec.REGION,
        zone=bec.ZONE,
    )
    async with grpc.aio.insecure_channel(address) as channel:
        call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        try:
            await call.write(
                discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=ads_client.CDS)
            )
            async with asyncio.timeout(PROBE_TIMEOUT):
                resp = await call.read()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return False
            raise bec.BenchError(f"delta probe: {exc.code().name}: {exc.details()}") from exc
        except TimeoutError as exc:
            raise bec.BenchError(f"delta probe: no response within {PROBE_TIMEOUT}s") from exc
        finally:
            call.cancel()
    return resp is not grpc.aio.EOF


def log_problems(path: Path) -> dict[str, int]:
    """Warnings and errors in a JSON-lines log, counted by ``level: msg``; lines that are not
    JSON (a traceback) count as ``unstructured``."""
    out: dict[str, int] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"log unreadable": 1}
    for line in lines:
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            key = "unstructured"
        else:
            level = str(doc.get("level", "")) if isinstance(doc, dict) else ""
            if level not in ("warning", "error", "critical"):
                continue
            key = f"{level}: {doc.get('msg', '')}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


# --- one run: a variant at N streams --------------------------------------------------------


@dataclasses.dataclass
class Run:
    variant: str
    streams: int
    apps: int
    envoys: int
    simulated: int
    client_procs: int
    delta_supported: bool
    connected: int
    """``navigator_xds_streams`` once every stream held the endpoints."""
    connect_s: float
    """From starting the clients to every stream holding the endpoints."""
    connect_fe_cpu_s: float
    connect_responses: int
    rss_before_kib: int
    rss_idle_kib: int
    rss_end_kib: int
    hwm_end_kib: int
    changes: list[bec.Change]
    changes_wall_s: float
    cpu_s: dict[str, float]
    """By process name, over the changes phase."""
    driver_cpu_s: float
    responses: int
    """Responses the front-end sent over the changes phase."""
    responses_by_labels: dict[str, int]
    status_writes: int
    """etcd events under ``sidecars/`` over the changes phase: the front-end's status records."""
    connect_errors: list[str]
    """Stream failures (each followed by a retry) while the streams connected."""
    stream_errors: list[str]
    """Stream failures during the changes."""
    quiet_timeouts: int
    frontend_log: dict[str, int]


async def run_one(streams: int, variant: str, args: argparse.Namespace) -> Run:
    label = f"{variant} {streams} streams"
    with tempfile.TemporaryDirectory(prefix=f"nv-bench-fe-{variant}-{streams}-") as tmp:
        work = Path(tmp)
        if args.log_dir is not None:
            work = args.log_dir / f"{variant}-streams-{streams}"
            work.mkdir(parents=True, exist_ok=True)
        system = bec.System(work)
        try:
            return await _run_system(
                system, streams=streams, variant=variant, args=args, tmp=Path(tmp), label=label
            )
        finally:
            system.stop()


async def _run_system(
    system: bec.System,
    *,
    streams: int,
    variant: str,
    args: argparse.Namespace,
    tmp: Path,
    label: str,
) -> Run:
    shape = bec.SHAPES["single"]
    layout = Layout(streams=streams, apps=args.apps, envoys=args.envoys)
    ports = bec.Ports()
    etcd_arg = ",".join(system.start_etcd(shape, tmp / "etcd"))
    envoys = layout.envoy_names()
    observer = bec.Observer(
        [*layout.simulated_names(), *envoys],
        quiet_ignores=(keys.SIDECARS,) if args.no_status_wait else (),
    )
    frontend_of = dict.fromkeys(observer.members, FRONTEND)
    async with (
        etcd_mod.Etcd(etcd_mod.parse_endpoints(etcd_arg)) as etcd,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session,
        bec.serve_reports(observer) as report_port,
    ):
        start_revision = await etcd.ping() + 1
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(bec.follow_etcd(etcd, start_revision, observer), name="etcd-watch")
        ]
        try:
            # NOTE: start_control_plane reads the shape and the lease TTL from its args; the
            # single shape passes no replica flags, so the TTL is unused.
            cp_args = argparse.Namespace(shape=shape.name, lease_ttl=5)
            cp = bec.start_control_plane(
                system, cp_args, apps=layout.apps, tmp=tmp, ports=ports, etcd_arg=etcd_arg
            )
            await bec.wait_ready(system, session, cp.ready, limit=args.ready_timeout)
            await bec.wait_control_plane(system, etcd, shape, args.ready_timeout, label)
            await wait_snapshots(system, etcd, layout.apps, args.ready_timeout)
            if not await observer.quiet(args.quiet, limit=10.0):
                print(f"  [{label}] no quiet period after startup", file=sys.stderr)
            fe = next(p for p in system.procs if p.name == FRONTEND)
            http_base = cp.ready[FRONTEND].removesuffix("/readyz")
            metrics_url = f"{http_base}/metrics"
            xds_port = cp.xds_ports[FRONTEND]
            supported = await delta_supported(f"127.0.0.1:{xds_port}")
            if variant == "delta" and not supported:
                raise Unsupported("the front-end does not implement DeltaAggregatedResources")
            await wait_streams(system, session, metrics_url, 0, limit=10.0)
            rss_before = _kib(fe, "VmRSS")

            connect_cpu0, connect_m0 = cpu_seconds(fe.popen.pid), await scrape(session, metrics_url)
            connect_started = time.monotonic()
            for e, name in enumerate(envoys):
                proc, admin = spawn_envoy(
                    system,
                    name=name,
                    app=f"app-{e}",
                    variant=variant,
                    xds_port=xds_port,
                    health_port=int(http_base.rpartition(":")[2]),
                    ports=ports,
                    tmp=tmp,
                )
                tasks.append(
                    asyncio.create_task(
                        bec.poll_envoy(session, admin, observer, proc, who=name), name=name
                    )
                )
            spawn_clients(
                system,
                args,
                layout=layout,
                variant=variant,
                xds_port=xds_port,
                report_port=report_port,
            )
            observer.begin(bec.expected_set(bec.BASE_ADDRESSES), guard=0.0, fresh=False)
            await bec.wait_converged(system, observer, tasks, args.ready_timeout, "initial sync")
            connect_s = time.monotonic() - connect_started
            connected = await wait_streams(system, session, metrics_url, streams, limit=10.0)
            if connected != streams:
                print(f"  [{label}] {connected} of {streams} streams connected", file=sys.stderr)
            if not await observer.quiet(args.quiet, limit=10.0):
                print(f"  [{label}] no quiet period after the initial sync", file=sys.stderr)
            await asyncio.sleep(args.idle)
            rss_idle = _kib(fe, "VmRSS")
            connect_errors = len(observer.errors)
            connect_cpu1, connect_m1 = cpu_seconds(fe.popen.pid), await scrape(session, metrics_url)

            cpu0, m0, driver0 = cpu_of(system), connect_m1, _own_cpu()
            writes0 = len(observer.writes)
            wall0 = time.monotonic()
            api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(cp.kubeconfig), context=bec.CLUSTER
            )
            try:
                changes, quiet_timeouts = await bec.drive_changes(
                    system,
                    observer,
                    tasks=tasks,
                    core=k8s_client.CoreV1Api(api),
                    label=label,
                    frontend_of=frontend_of,
                    args=args,
                    envoys=envoys,
                )
            finally:
                api.close()
            wall1, cpu1, driver1 = time.monotonic(), cpu_of(system), _own_cpu()
            change_errors = observer.errors[connect_errors:]
            status_writes = sum(
                1 for w in observer.writes[writes0:] if w.key.startswith(keys.SIDECARS)
            )
            m1 = await scrape(session, metrics_url)
            rss_end, hwm_end = _kib(fe, "VmRSS"), _kib(fe, "VmHWM")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    responses = "navigator_xds_responses_total"
    by_labels = {
        labels: int(value - m0.get(responses, {}).get(labels, 0.0))
        for labels, value in m1.get(responses, {}).items()
    }
    return Run(
        variant=variant,
        streams=streams,
        apps=layout.apps,
        envoys=layout.envoys,
        simulated=len(layout.simulated),
        client_procs=len(system.names("ads-client")),
        delta_supported=supported,
        connected=connected,
        connect_s=round(connect_s, 2),
        connect_fe_cpu_s=round((connect_cpu1 or 0.0) - (connect_cpu0 or 0.0), 3),
        connect_responses=int(metric(connect_m1, responses) - metric(connect_m0, responses)),
        rss_before_kib=rss_before,
        rss_idle_kib=rss_idle,
        rss_end_kib=rss_end,
        hwm_end_kib=hwm_end,
        changes=changes,
        changes_wall_s=round(wall1 - wall0, 3),
        cpu_s=delta_of(cpu1, cpu0),
        driver_cpu_s=round(driver1 - driver0, 3),
        responses=int(metric(m1, responses) - metric(m0, responses)),
        responses_by_labels=dict(sorted(by_labels.items())),
        status_writes=status_writes,
        connect_errors=observer.errors[:connect_errors],
        stream_errors=change_errors,
        quiet_timeouts=quiet_timeouts,
        frontend_log=log_problems(system.work / f"{FRONTEND}.log"),
    )


def _kib(proc: bec.Proc, field: str) -> int:
    value = bec.status_kib(proc.popen.pid, field)
    if value is None:
        raise bec.BenchError(f"cannot read {field} of {proc.name} (PID {proc.popen.pid})")
    return value


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def wait_snapshots(system: bec.System, etcd: etcd_mod.Etcd, apps: int, limit: float) -> None:
    """Waits until etcd holds every app's snapshot, so the front-end's memory "before" is
    that of a loaded cache."""
    wanted = {
        keys.app_snapshot_key(model.AppName(f"app-{i}"), model.ClusterName(bec.CLUSTER))
        for i in range(apps)
    }
    deadline = time.monotonic() + limit
    while True:
        system.check_alive()
        listing = await etcd.get_prefix(keys.APP_SNAPSHOTS, keys_only=True)
        missing = wanted - set(listing.items)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise bec.BenchError(f"{len(missing)} app snapshots missing after {limit:.0f}s")
        await asyncio.sleep(0.1)


def spawn_envoy(
    system: bec.System,
    *,
    name: str,
    app: str,
    variant: str,
    xds_port: int,
    health_port: int,
    ports: bec.Ports,
    tmp: Path,
) -> tuple[bec.Proc, str]:
    """A real Envoy of ``app`` on the front-end; returns it and its admin URL."""
    admin_port = ports.take()
    config = bootstrap.render(
        node_id=name,
        app=app,
        cluster=bec.CLUSTER,
        region=bec.REGION,
        zone=bec.ZONE,
        xds_host="127.0.0.1",
        xds_port=xds_port,
        admin_port=admin_port,
        control_plane_health_port=health_port,
    )
    if variant == "delta":
        config["dynamic_resources"]["ads_config"]["api_type"] = "DELTA_GRPC"
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    proc = system.spawn(
        name,
        [str(procs.envoy_binary()), "-c", str(path), *bec.ENVOY_FLAGS],
        tier=bec.TIER_CLIENT,
        role="envoy",
    )
    return proc, f"http://127.0.0.1:{admin_port}"


def spawn_clients(
    system: bec.System,
    args: argparse.Namespace,
    *,
    layout: Layout,
    variant: str,
    xds_port: int,
    report_port: int,
) -> None:
    """The ``ads_client.py`` processes, each a contiguous slice of the simulated slots."""
    for n, part in enumerate(layout.slices(args.client_procs)):
        system.spawn(
            f"ads-client-{n}",
            [
                sys.executable,
                str(bec.ADS_CLIENT),
                "--xds",
                f"127.0.0.1:{xds_port}",
                "--report",
                f"127.0.0.1:{report_port}",
                "--apps",
                f"0:{layout.apps}",
                "--sidecars-per-app",
                str(layout.per_app),
                "--slice",
                f"{part.start}:{part.stop}",
                "--cluster",
                bec.CLUSTER,
                "--region",
                bec.REGION,
                "--zone",
                bec.ZONE,
                "--watch",
                bec.EDS_NAME,
                "--streams-per-channel",
                str(args.streams_per_channel),
                *(["--delta"] if variant == "delta" else []),
            ],
            tier=bec.TIER_CLIENT,
            role="ads-client",
        )


# --- figures --------------------------------------------------------------------------------


def summary(run: Run) -> dict[str, Any]:
    ch = run.changes
    n = len(ch)
    clients = [v for name, v in run.cpu_s.items() if name.startswith("ads-client-")]
    envoy_cpu = [v for name, v in run.cpu_s.items() if name.startswith("envoy-")]
    fe_cpu = run.cpu_s.get(FRONTEND, float("nan"))
    wall = run.changes_wall_s or float("nan")
    nan = float("nan")
    return {
        "variant": run.variant,
        "streams": run.streams,
        "simulated": run.simulated,
        "envoys": run.envoys,
        "apps": run.apps,
        "client_procs": run.client_procs,
        "connected": run.connected,
        "connect_s": run.connect_s,
        "connect_fe_cpu_s": run.connect_fe_cpu_s,
        "connect_fe_cpu_us_per_push": (
            round(run.connect_fe_cpu_s * 1e6 / run.connect_responses, 1)
            if run.connect_responses
            else nan
        ),
        "rss_before_mib": round(run.rss_before_kib / 1024, 1),
        "rss_idle_mib": round(run.rss_idle_kib / 1024, 1),
        "rss_end_mib": round(run.rss_end_kib / 1024, 1),
        "hwm_end_mib": round(run.hwm_end_kib / 1024, 1),
        "kib_per_idle_stream": (
            round((run.rss_idle_kib - run.rss_before_kib) / run.connected, 2)
            if run.connected
            else nan
        ),
        "changes": n,
        "not_converged": sum(1 for c in ch if not c.converged),
        "pushes_per_change": round(run.responses / n, 1) if n else nan,
        "responses_by_labels": run.responses_by_labels,
        "status_writes_per_change": round(run.status_writes / n, 1) if n else nan,
        "fe_cpu_ms_per_change": round(fe_cpu * 1000 / n, 2) if n else nan,
        "fe_cpu_us_per_push": round(fe_cpu * 1e6 / run.responses, 1) if run.responses else nan,
        "fe_cpu_pct": round(fe_cpu / wall * 100, 1),
        "client_cpu_pct": round(sum(clients) / wall * 100, 1) if clients else nan,
        "client_cpu_pct_busiest": round(max(clients) / wall * 100, 1) if clients else nan,
        "client_cpu_ms_per_change": round(sum(clients) * 1000 / n, 2) if clients and n else nan,
        "envoy_cpu_pct": round(sum(envoy_cpu) / wall * 100, 1) if envoy_cpu else nan,
        "driver_cpu_pct": round(run.driver_cpu_s / wall * 100, 1),
        "cpu_s": run.cpu_s,
        "latency_ms": {
            "all": bec.spread([c.convergence_ms for c in ch]),
            "simulated": bec.spread([c.last_sidecar_ms for c in ch]),
            "envoys": bec.spread([c.envoy_ms for c in ch]),
            "first_simulated": bec.spread([c.first_sidecar_ms for c in ch]),
            "eds_write": bec.spread([c.eds_write_ms for c in ch]),
        },
        "connect_errors": len(run.connect_errors),
        "connect_errors_by_status": _by_status(run.connect_errors),
        "stream_errors": len(run.stream_errors),
        "stream_errors_by_status": _by_status(run.stream_errors),
        "frontend_log": run.frontend_log,
    }


def _by_status(errors: Sequence[str]) -> dict[str, int]:
    """Stream failures (``sidecar: CODE: details``) counted by ``CODE: details``."""
    return dict(collections.Counter(e.partition(": ")[2] for e in errors).most_common())


def run_json(run: Run) -> dict[str, Any]:
    """A run as JSON, each change's written keys counted by prefix (thousands of status
    records per change otherwise)."""
    doc = dataclasses.asdict(run)
    for change in doc["changes"]:
        written = change.pop("keys")
        change["keys_by_prefix"] = dict(collections.Counter(bec.prefix_of(k[1:]) for k in written))
    return doc


def table(summaries: Sequence[dict[str, Any]]) -> str:
    def num(v: Any, digits: int = 1) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if digits == 0:
            return f"{round(v):,}"
        return f"{v:,.{digits}f}"

    def lat(group: str, stat: str) -> Callable[[dict[str, Any]], str]:
        return lambda s: num(s["latency_ms"][group][stat])

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("streams connected to the front-end", lambda s: num(s["connected"], 0)),
        (
            "  simulated + real Envoys",
            lambda s: f"{s['simulated']:,} + {s['envoys']}",
        ),
        ("  client processes", lambda s: num(s["client_procs"], 0)),
        ("  connect to all synced s", lambda s: num(s["connect_s"], 2)),
        ("  FE CPU while connecting s", lambda s: num(s["connect_fe_cpu_s"], 2)),
        ("FE RSS before streams MiB", lambda s: num(s["rss_before_mib"])),
        ("FE RSS all streams idle MiB", lambda s: num(s["rss_idle_mib"])),
        ("  KiB per idle stream", lambda s: num(s["kib_per_idle_stream"])),
        (
            "FE RSS after changes (peak) MiB",
            lambda s: f"{num(s['rss_end_mib'])} ({num(s['hwm_end_mib'])})",
        ),
        ("changes run (not converged)", lambda s: f"{s['changes']} ({s['not_converged']})"),
        ("  pushes per change", lambda s: num(s["pushes_per_change"])),
        ("FE CPU ms per change", lambda s: num(s["fe_cpu_ms_per_change"])),
        ("FE CPU us per push", lambda s: num(s["fe_cpu_us_per_push"])),
        ("FE CPU % of a core (changes phase)", lambda s: num(s["fe_cpu_pct"])),
        ("client CPU ms per change (all procs)", lambda s: num(s["client_cpu_ms_per_change"])),
        (
            "client CPU %: all procs (busiest)",
            lambda s: f"{num(s['client_cpu_pct'])} ({num(s['client_cpu_pct_busiest'])})",
        ),
        (
            "real Envoys CPU %, driver CPU %",
            lambda s: f"{num(s['envoy_cpu_pct'])}, {num(s['driver_cpu_pct'])}",
        ),
        ("push latency, simulated: p50 ms", lat("simulated", "median")),
        ("                         p99 ms", lat("simulated", "p99")),
        ("                         max ms", lat("simulated", "max")),
        ("push latency, real Envoys: p50 ms", lat("envoys", "median")),
        ("                           p99 ms", lat("envoys", "p99")),
        ("                           max ms", lat("envoys", "max")),
        ("push latency, all streams: p50 ms", lat("all", "median")),
        ("  first simulated stream: p50 ms", lat("first_simulated", "median")),
        ("  EDS snapshot seen in etcd: p50 ms", lat("eds_write", "median")),
        ("  FE status writes in etcd per change", lambda s: num(s["status_writes_per_change"])),
        ("stream failures while connecting", lambda s: num(s["connect_errors"], 0)),
        ("stream failures during changes", lambda s: num(s["stream_errors"], 0)),
        ("FE log warnings + errors", lambda s: num(sum(s["frontend_log"].values()), 0)),
    ]
    heads = [f"{s['variant']} {s['streams']:,}" for s in summaries]
    cells = [[fn(s) for s in summaries] for _, fn in rows]
    label_width = max(len(label) for label, _ in rows)
    width = max(10, *(len(h) for h in heads), *(len(c) for row in cells for c in row))
    lines = [" " * label_width + "".join(h.rjust(width + 2) for h in heads)]
    lines.append("-" * len(lines[0]))
    for (label, _), row in zip(rows, cells, strict=True):
        lines.append(label.ljust(label_width) + "".join(c.rjust(width + 2) for c in row))
    for s in summaries:
        head = f"[{s['variant']} {s['streams']:,}]"
        for problem, count in s["frontend_log"].items():
            lines.append(f"{head} FE log: {problem} x{count}")
        for phase in ("connect", "stream"):
            failures = s[f"{phase}_errors_by_status"]
            if failures:
                what = "while connecting (retried)" if phase == "connect" else "during changes"
                named = ", ".join(f"{status} x{count}" for status, count in failures.items())
                lines.append(f"{head} stream failures {what}: {named}")
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One xDS front-end at many streams: memory, CPU per push, push latency."
    )
    parser.add_argument(
        "--streams", type=bec.parse_apps, default=[1000, 5000], help="default 1000,5000"
    )
    parser.add_argument(
        "--apps", type=int, default=100, help="apps the streams share (default 100)"
    )
    parser.add_argument(
        "--envoys", type=int, default=3, help="real Envoys among the streams (default 3)"
    )
    parser.add_argument(
        "--variant",
        choices=("auto", "sotw", "delta", "both"),
        default="auto",
        help="auto (default): both if the front-end implements Delta, else sotw",
    )
    parser.add_argument("--changes", type=int, default=30, help="changes per column (default 30)")
    parser.add_argument(
        "--client-procs", type=int, default=4, help="simulated-client processes (default 4)"
    )
    parser.add_argument(
        "--streams-per-channel", type=int, default=100, help="ADS streams per gRPC channel"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.6,
        help="quiet period between changes, s (default %(default)s: longer than the "
        "front-end's 0.5 s status-write cycle)",
    )
    parser.add_argument(
        "--idle", type=float, default=1.0, help="idle time before reading idle RSS, s"
    )
    parser.add_argument(
        "--no-status-wait",
        action="store_true",
        help="do not wait for the front-end's status records (sidecars/) between changes: "
        "faster, but they then coalesce across changes and the CPU per push is lower",
    )
    parser.add_argument("--change-timeout", type=float, default=20.0, help="per change, s")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="startup and sync, s")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="keep every process's log here (default: none)"
    )
    args = parser.parse_args(argv)
    if args.apps < 1 or args.client_procs < 1 or args.changes < 1:
        parser.error("--apps, --client-procs and --changes must be >= 1")
    if not 0 <= args.envoys <= min(args.apps, *args.streams):
        parser.error("--envoys must be between 0 and both --apps and every --streams")
    return args


async def amain(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    variants = list(VARIANTS) if args.variant in ("auto", "both") else [args.variant]
    summaries: list[dict[str, Any]] = []
    runs: list[Run] = []
    notes: list[str] = []
    for streams in args.streams:
        for variant in list(variants):
            if variant not in variants:
                continue
            began = time.monotonic()
            try:
                run = await run_one(streams, variant, args)
            except Unsupported as exc:
                if args.variant != "auto":
                    raise
                notes.append(f"delta not run: {exc}")
                variants.remove(variant)
                continue
            runs.append(run)
            summaries.append(summary(run))
            if args.variant == "auto" and not run.delta_supported and "delta" in variants:
                variants.remove("delta")
                notes.append("delta not run: the front-end does not implement it (probe)")
            print(
                f"  [{variant} {streams} streams] done in {time.monotonic() - began:.1f}s",
                file=sys.stderr,
            )
    if args.out is not None:
        doc = {
            "benchmark": "frontend",
            "config": {
                "streams": args.streams,
                "apps": args.apps,
                "envoys": args.envoys,
                "variant": args.variant,
                "changes": args.changes,
                "client_procs": args.client_procs,
                "streams_per_channel": args.streams_per_channel,
                "quiet_s": args.quiet,
                "idle_s": args.idle,
                "cpus": os.cpu_count(),
            },
            "notes": notes,
            "summaries": summaries,
            "runs": [run_json(r) for r in runs],
        }
        args.out.write_text(json.dumps(bec.no_nan(doc), indent=2, allow_nan=False))
    return summaries, notes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    try:
        summaries, notes = asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every process stopped", file=sys.stderr)
        return 130
    except (bec.BenchError, procs.ProcError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"One xDS front-end process; {args.apps} apps share the streams, one endpoint change of "
        f"{bec.EDS_NAME} (10/11 addresses) seen by every stream, {args.changes} changes per "
        f"column; {os.cpu_count()} CPUs; wall time {time.monotonic() - began:.0f}s"
    )
    print(table(summaries))
    for note in notes:
        print(note)
    if any(s["not_converged"] or s["changes"] < args.changes for s in summaries):
        print("some changes did not converge: see the messages above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
