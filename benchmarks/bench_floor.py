"""How far the xDS front-end is from the floor: ``navigator xds`` against a replay server, same
machine, same run, same simulated sidecars (a piece of issue 7).

Run: ``.venv/bin/python benchmarks/bench_floor.py [--streams 1000,5000] [--apps 100]
[--changes 20] [--out FILE] [--profile DIR]`` (a few minutes on a 2-core machine).

What runs (each its own process on loopback, every one stopped by its PID at the end, on
errors and on Ctrl-C too):

- one etcd (``navigator.lab.procs.start_etcd``), seeded once with a mesh in which every app
  sees one target service: ``--apps`` apps in cluster ``east`` (one zone, ``r1-a``), each
  with a Nexus naming ``bench/target`` (10 endpoints, port 8080) and 3 of 5 other services
  (3 endpoints each). The normalized state is written as a watcher writes it (``state/``
  keys, ``model.encode``, the cluster's synced marker); the snapshots are written by the real
  translator in this process (``shards.runner.Translator``, standalone: ``load``,
  ``state_seen``, ``flush``), so they are the product's real output;
- (a) etcd watch latency: ``--probes`` sequential puts of a key outside ``/navigator/``, each
  timed from just before the put to the event's arrival on a watch held IN THIS DRIVER on a
  second client (its own gRPC channel): the etcd part of any change, measured once before
  the phases;
- (b) ours, per N: ``navigator xds`` (one process) on the seeded etcd, then N simulated
  sidecars (``ads_client.py``, SotW ADS, real gRPC, in ``--client-procs`` processes, as
  ``bench_frontend.py`` spawns them; stream ``j`` is of app ``j % apps``) opened at once.
  Start-up: from spawning the client processes (their interpreter start included, the same
  for both servers) until every stream holds the target's endpoints. Then ``--changes``
  changes: the target's Endpoints alternate between 10 and 11 addresses; each is written to
  etcd's ``state/`` (the watcher's write, not timed), applied to the in-process translator
  and published by its ``flush()`` (exactly what a translator does after its debounce, which
  is skipped here); latency is timed from just before the translator's etcd write of the EDS
  keys (a thin client subclass notes the time) to the moment the LAST stream reports the new
  endpoint set (``addrs`` of ``ads_client``'s reports; times are the clients' receipt time,
  same clock). Also shown: from the flush's start, and to the first stream;
- (c) floor, per N: ``navigator.bench.replay`` (``--watch`` the target) loaded once from the
  same etcd (then no etcd), the same N sidecars in fresh client processes; start-up the same
  way; ``--changes`` flips (``POST /flip`` with no body: the target's assignment without its
  last endpoint, then back), timed from just before the flip request to the last stream
  holding the new set.

Per phase also: the server's RSS (``/proc/PID/status``) before the first stream and with all N
idle (after a quiet period), per stream the difference / N; its CPU (``/proc/PID/stat`` utime +
stime) over the changes, divided by the responses it sent meanwhile (ours:
``navigator_xds_responses_total`` from ``/metrics``; floor: its ``/stats`` counter) and by the
changes; the client processes' CPU over the same changes, to show whether they are the
bottleneck. Between changes the driver waits for ``--quiet`` s without etcd events or reports
(ours writes its sidecars' status records after each push: they are part of its cost).

``--profile DIR``: py-spy (``.venv/bin/py-spy record -f raw``) on each server during its
changes phase, one file per phase in DIR; sampling perturbs the figures of that run.

Reading the figures: p99 is nearest-rank, so with 20 changes it is the max. Both servers share
the 2 cores with the clients, etcd and this driver. The floor is a Python ``grpc.aio`` floor:
what one Python process must spend to write N responses of bytes already encoded and read N
ACKs; a C++ or Go server would be lower still.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import bench_endpoint_change as bec
import bench_frontend as bfe

from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.lab import procs
from shards import runner, translate

HERE = Path(__file__).resolve().parent
REPLAY = "navigator.bench.replay"
"""The floor server's module (``python -m``)."""
PY_SPY = Path(sys.executable).with_name("py-spy")
OTHERS = 5
"""Other services in the mesh; each app's Nexus names 3 of them besides the target."""
OTHERS_PER_APP = 3
OTHER_ENDPOINTS = 3
PROBE_PREFIX = "/bench-floor/probe/"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
PHASES = ("ours", "floor")


class TimedEtcd(etcd_mod.Etcd):
    """The project's client, noting when a write of an EDS key (``snapshots/eds/``) starts."""

    def __init__(self, endpoints: str, **kwargs: Any) -> None:
        super().__init__(endpoints, **kwargs)
        self.eds_write_at: float | None = None

    async def apply(
        self,
        *,
        puts: Mapping[str, bytes],
        deletes: Any = (),
        fence: etcd_mod.Fence | None = None,
        lease: int = 0,
    ) -> int:
        if self.eds_write_at is None and any(k.startswith(keys.EDS_SNAPSHOTS) for k in puts):
            self.eds_write_at = time.time()
        return await super().apply(puts=puts, deletes=deletes, fence=fence, lease=lease)


# --- the mesh -------------------------------------------------------------------------------


def cluster() -> model.ClusterName:
    return model.ClusterName(bec.CLUSTER)


def http_port(port: int = bec.PORT) -> model.ServicePort:
    return model.ServicePort("http", port, model.Protocol.HTTP, port)


def endpoints_of(name: str, ips: Sequence[str]) -> model.Endpoints:
    return model.Endpoints(
        cluster(),
        bec.NAMESPACE,
        name,
        tuple(
            model.Endpoint(ip, True, (model.EndpointPort("http", bec.PORT),), node=bec.NODE_NAME)
            for ip in ips
        ),
    )


def target_endpoints(extra: bool) -> model.Endpoints:
    ips = (*bec.BASE_ADDRESSES, bec.EXTRA_ADDRESS) if extra else bec.BASE_ADDRESSES
    return endpoints_of(bec.SERVICE, ips)


def mesh(apps: int) -> list[model.Object]:
    objs: list[model.Object] = [
        model.Node(cluster(), bec.NODE_NAME, bec.REGION, bec.ZONE),
        model.Service(
            cluster(),
            bec.NAMESPACE,
            bec.SERVICE,
            model.ServiceType.CLUSTER_IP,
            bec.CLUSTER_IP,
            (http_port(),),
        ),
        target_endpoints(extra=False),
    ]
    for k in range(OTHERS):
        name = f"other{k}"
        objs.append(
            model.Service(
                cluster(),
                bec.NAMESPACE,
                name,
                model.ServiceType.CLUSTER_IP,
                f"127.31.1.{k + 1}",
                (http_port(),),
            )
        )
        objs.append(endpoints_of(name, [f"127.22.{k}.{e + 1}" for e in range(OTHER_ENDPOINTS)]))
    for i in range(apps):
        others = [f"other{(i + j) % OTHERS}" for j in range(OTHERS_PER_APP)]
        objs.append(
            model.Nexus(
                cluster(),
                bec.NAMESPACE,
                f"app-{i}",
                model.AppName(f"app-{i}"),
                tuple(model.ServiceRef(bec.NAMESPACE, n) for n in (bec.SERVICE, *others)),
            )
        )
    return objs


async def seed(etcd: TimedEtcd, apps: int) -> tuple[runner.Translator, dict[str, Any]]:
    """The state (as a watcher writes it), then the translator's first flush."""
    started = time.perf_counter()
    objs = mesh(apps)
    revision = await etcd.apply(puts={keys.state_key(o): model.encode(o) for o in objs})
    marker = json.dumps(
        {"cluster": bec.CLUSTER, "time": int(time.time()), "revision": revision, "leader": "w0"},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    await etcd.put(keys.synced_key(cluster()), marker)
    tr = runner.Translator(etcd, options=translate.Options(), shards=1)
    listed = await etcd.get_prefix(keys.STATE)
    tr.load(listed)
    tr.load(await etcd.get_prefix(keys.SYNCED))
    tr.state_seen(listed.revision)
    await tr.flush()
    snaps = await etcd.get_prefix(keys.SNAPSHOTS)
    eds = [k for k in snaps.items if k.startswith(keys.eds_key(bec.EDS_NAME, ""))]
    apps_written = sum(1 for k in snaps.items if k.startswith(keys.APP_SNAPSHOTS))
    if apps_written < apps or not eds:
        raise bec.BenchError(
            f"the translator wrote {apps_written} app snapshots of {apps} and "
            f"{len(eds)} assignments of {bec.EDS_NAME}"
        )
    info = {
        "objects": len(objs),
        "snapshot_keys": len(snaps.items),
        "snapshot_bytes": sum(len(k) + len(kv.value) for k, kv in snaps.items.items()),
        "target_variants": sorted(keys.parse_eds_key(k)[1] for k in eds),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return tr, info


# --- (a) etcd watch latency -------------------------------------------------------------------


async def watch_latency(url: str, probes: int) -> list[float]:
    """Seconds from just before each put to its event on a watch (both in this process)."""
    async with (
        etcd_mod.Etcd(url, timeout=10.0) as writer,
        etcd_mod.Etcd(url, timeout=10.0) as watcher,
    ):
        start = await writer.ping() + 1
        arrived: dict[str, asyncio.Future[float]] = {}
        loop = asyncio.get_running_loop()

        async def follow() -> None:
            async for ev in watcher.watch_prefix(PROBE_PREFIX, start_revision=start):
                fut = arrived.get(ev.key)
                if fut is not None and not fut.done():
                    fut.set_result(time.time())

        task = asyncio.create_task(follow(), name="probe-watch")
        try:
            out: list[float] = []
            for i in range(-5, probes):  # NOTE: 5 warm-up puts, not counted.
                key = f"{PROBE_PREFIX}{i}"
                arrived[key] = loop.create_future()
                t0 = time.time()
                await writer.put(key, str(t0).encode())
                async with asyncio.timeout(10.0):
                    t1 = await arrived[key]
                if i >= 0:
                    out.append(t1 - t0)
            return out
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, etcd_mod.EtcdError):
                await task


# --- the two servers ----------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """A server under test: its process and how to ask it streams and responses sent."""

    kind: str
    proc: bec.Proc
    xds_port: int
    http: str
    session: aiohttp.ClientSession

    async def ready(self) -> bool:
        url = f"{self.http}/readyz" if self.kind == "ours" else f"{self.http}/stats"
        try:
            async with self.session.get(url, timeout=HTTP_TIMEOUT) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.http}/stats", timeout=HTTP_TIMEOUT) as resp:
            doc: dict[str, Any] = await resp.json()
            return doc

    async def counters(self) -> tuple[int, int]:
        """(streams connected, responses sent so far)."""
        if self.kind == "ours":
            samples = await bfe.scrape(self.session, f"{self.http}/metrics")
            return (
                int(bfe.metric(samples, "navigator_xds_streams")),
                int(bfe.metric(samples, "navigator_xds_responses_total")),
            )
        doc = await self.stats()
        return int(doc["streams"]), int(doc["responses"])


def start_server(system: bec.System, kind: str, url: str, session: aiohttp.ClientSession) -> Server:
    xds_port, http = procs.free_port(), f"127.0.0.1:{procs.free_port()}"
    listen = f"127.0.0.1:{xds_port}"
    if kind == "ours":
        proc = system.navigator(
            "xds",
            "xds",
            "--listen",
            listen,
            "--etcd",
            url,
            "--http",
            http,
            "--id",
            "xds-bench",
            tier=bec.TIER_CONTROL_PLANE,
            role="xds",
        )
    else:
        proc = system.spawn(
            "replay",
            [
                sys.executable,
                "-m",
                REPLAY,
                "--etcd",
                url,
                "--listen",
                listen,
                "--http",
                http,
                "--watch",
                bec.EDS_NAME,
            ],
            tier=bec.TIER_CONTROL_PLANE,
            role="replay",
        )
    return Server(kind, proc, xds_port, f"http://{http}", session)


def stop_procs(system: bec.System, stopping: Sequence[bec.Proc]) -> None:
    """SIGTERM to each (by PID), wait, SIGKILL after a timeout; forgets them."""
    for p in stopping:
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
    for p in stopping:
        bec.stop_signalled(p.popen)
        if p in system.procs:
            system.procs.remove(p)


def kib(proc: bec.Proc, field: str) -> int:
    value = bec.status_kib(proc.popen.pid, field)
    if value is None:
        raise bec.BenchError(f"cannot read {field} of {proc.name} (PID {proc.popen.pid})")
    return value


def cpu(proc: bec.Proc) -> float:
    value = bfe.cpu_seconds(proc.popen.pid)
    if value is None:
        raise bec.BenchError(f"cannot read the CPU of {proc.name} (PID {proc.popen.pid})")
    return value


async def wait_until(
    system: bec.System, what: str, check: Callable[[], Awaitable[bool]], limit: float
) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        system.check_alive()
        if time.monotonic() > deadline:
            raise bec.BenchError(f"{what}: not within {limit:.0f}s")
        await asyncio.sleep(0.1)


# --- one phase: a server at N streams -------------------------------------------------------


@dataclasses.dataclass
class Change:
    index: int
    converged: bool
    last_ms: float
    """From the timed start (ours: the EDS write; floor: the flip request) to the last stream."""
    first_ms: float
    from_flush_ms: float
    """Ours: from the flush's start to the last stream (floor: the same as ``last_ms``)."""
    write_ms: float
    """Ours: the flush (compute + etcd write); floor: the flip request's round trip."""
    pushed: int
    """Floor: streams the flip queued a response on (ours: -1, not known)."""


@dataclasses.dataclass
class Phase:
    kind: str
    streams: int
    client_procs: int
    connected: int
    startup_s: float
    startup_server_cpu_s: float
    startup_responses: int
    connect_errors: list[str]
    rss_before_kib: int
    rss_idle_kib: int
    rss_end_kib: int
    hwm_end_kib: int
    changes: list[Change]
    changes_wall_s: float
    server_cpu_s: float
    clients_cpu_s: list[float]
    driver_cpu_s: float
    responses: int
    stream_errors: list[str]
    quiet_timeouts: int
    profile: str | None


class Mesh:
    """The driver's side of the mesh: etcd client, translator and the target's current set."""

    def __init__(self, etcd: TimedEtcd, tr: runner.Translator) -> None:
        self.etcd = etcd
        self.tr = tr
        self.extra = False

    def held(self) -> frozenset[str]:
        return bec.expected_set(e.ip for e in target_endpoints(self.extra).endpoints)

    async def change(self) -> tuple[float, float, float]:
        """One endpoint change through the translator; (EDS write start, flush start, flush
        end), wall-clock."""
        self.extra = not self.extra
        obj = target_endpoints(self.extra)
        key, value = keys.state_key(obj), model.encode(obj)
        revision = await self.etcd.put(key, value)
        self.tr.apply(key, value)
        self.tr.state_seen(revision)
        self.etcd.eds_write_at = None
        flush_at = time.time()
        await self.tr.flush()
        done = time.time()
        if self.etcd.eds_write_at is None:
            raise bec.BenchError("the translator's flush wrote no endpoint assignment")
        return self.etcd.eds_write_at, flush_at, done


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def start_profiler(pid: int, path: Path) -> subprocess.Popen[bytes]:
    return procs.start(
        [str(PY_SPY), "record", "-p", str(pid), "-f", "raw", "-o", str(path)],
        log_file=path.with_suffix(".log"),
    )


def stop_profiler(popen: subprocess.Popen[bytes]) -> None:
    """SIGINT: py-spy writes its file and exits."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGINT)
    try:
        popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=5)


async def run_phase(
    kind: str,
    *,
    n: int,
    args: argparse.Namespace,
    system: bec.System,
    mesh_: Mesh,
    url: str,
    session: aiohttp.ClientSession,
) -> Phase:
    label = f"{kind} {n:,}"
    layout = bfe.Layout(streams=n, apps=args.apps, envoys=0)
    observer = bec.Observer(layout.simulated_names())
    server = start_server(system, kind, url, session)
    started_here = [server.proc]
    profiler: subprocess.Popen[bytes] | None = None
    profile_path: Path | None = None
    try:
        async with bec.serve_reports(observer) as report_port:
            follow = asyncio.create_task(
                bec.follow_etcd(mesh_.etcd, await mesh_.etcd.ping() + 1, observer),
                name="etcd-watch",
            )
            tasks = [follow]
            try:
                await wait_until(system, f"{label}: server ready", server.ready, args.ready_timeout)

                async def no_streams() -> bool:
                    return (await server.counters())[0] == 0

                await wait_until(system, f"{label}: no streams", no_streams, 10.0)
                variants: dict[str, Any] = {}
                if kind == "floor":
                    variants = (await server.stats())["variants"]
                    zone = bec.ZONE if bec.ZONE in variants else keys.DEFAULT_VARIANT
                    sets = variants[zone]
                    if frozenset(sets["original"]) != mesh_.held():
                        raise bec.BenchError(
                            f"{label}: the replay server holds {sets['original']}, etcd "
                            f"{sorted(mesh_.held())}"
                        )
                rss_before = kib(server.proc, "VmRSS")
                cpu0, (_, resp0) = cpu(server.proc), await server.counters()

                opened = time.monotonic()
                before = list(system.procs)
                bfe.spawn_clients(
                    system,
                    args,
                    layout=layout,
                    variant="sotw",
                    xds_port=server.xds_port,
                    report_port=report_port,
                )
                clients = [p for p in system.procs if p not in before]
                started_here[:0] = clients
                observer.begin(mesh_.held(), guard=0.0, fresh=False)
                await bec.wait_converged(
                    system, observer, tasks, args.ready_timeout, "initial sync"
                )
                startup_s = time.monotonic() - opened
                cpu1, (_, resp1) = cpu(server.proc), await server.counters()

                async def all_streams() -> bool:
                    return (await server.counters())[0] >= n

                with contextlib.suppress(bec.BenchError):
                    await wait_until(system, f"{label}: streams", all_streams, 10.0)
                connected = (await server.counters())[0]
                if connected != n:
                    print(f"  [{label}] {connected} of {n} streams connected", file=sys.stderr)
                if not await observer.quiet(args.quiet, limit=15.0):
                    print(f"  [{label}] no quiet period after start-up", file=sys.stderr)
                await asyncio.sleep(args.idle)
                rss_idle = kib(server.proc, "VmRSS")
                connect_errors = list(observer.errors)
                print(
                    f"  [{label}] {connected:,} streams synced in {startup_s:.2f}s; "
                    f"{len(connect_errors)} stream failures (retried)",
                    file=sys.stderr,
                )

                if args.profile is not None:
                    profile_path = args.profile / f"{kind}-{n}.txt"
                    profiler = start_profiler(server.proc.popen.pid, profile_path)
                    await asyncio.sleep(1.0)  # NOTE: py-spy attaches.
                s_cpu0, c_cpu0, d_cpu0 = cpu(server.proc), [cpu(c) for c in clients], _own_cpu()
                _, r0 = await server.counters()
                wall0 = time.monotonic()
                changes: list[Change] = []
                quiet_timeouts = 0
                for k in range(args.changes):
                    pushed = -1
                    if kind == "ours":
                        expected = bec.expected_set(
                            e.ip for e in target_endpoints(not mesh_.extra).endpoints
                        )
                        observer.begin(expected, guard=time.time(), fresh=True)
                        t0, flush_at, flush_done = await mesh_.change()
                        write_ms = (flush_done - flush_at) * 1e3
                    else:
                        flipped = k % 2 == 0
                        expected = frozenset(sets["flipped" if flipped else "original"])
                        observer.begin(expected, guard=time.time(), fresh=True)
                        t0 = flush_at = time.time()
                        async with session.post(
                            f"{server.http}/flip", timeout=HTTP_TIMEOUT
                        ) as resp:
                            answer = await resp.json()
                        write_ms = (time.time() - t0) * 1e3
                        pushed = int(answer["pushed"])
                        if bool(answer["flipped"]) != flipped:
                            raise bec.BenchError(f"{label}: flip state out of step: {answer}")
                    ok = await bec.wait_converged(
                        system, observer, tasks, args.change_timeout, f"change {k}"
                    )
                    reached = list(observer.reached.values())
                    last = max(reached) if ok else float("nan")
                    changes.append(
                        Change(
                            index=k,
                            converged=ok,
                            last_ms=(last - t0) * 1e3,
                            first_ms=(min(reached) - t0) * 1e3 if reached else float("nan"),
                            from_flush_ms=(last - flush_at) * 1e3,
                            write_ms=round(write_ms, 3),
                            pushed=pushed,
                        )
                    )
                    if not ok:
                        print(
                            f"  [{label}] change {k} did not converge: {len(observer.pending)} "
                            "streams without the new set",
                            file=sys.stderr,
                        )
                    if not await observer.quiet(args.quiet, limit=15.0):
                        quiet_timeouts += 1
                wall1 = time.monotonic()
                s_cpu1, c_cpu1, d_cpu1 = cpu(server.proc), [cpu(c) for c in clients], _own_cpu()
                _, r1 = await server.counters()
                if profiler is not None:
                    stop_profiler(profiler)
                    profiler = None
                rss_end, hwm_end = kib(server.proc, "VmRSS"), kib(server.proc, "VmHWM")
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        stop_procs(system, started_here)
    return Phase(
        kind=kind,
        streams=n,
        client_procs=len(clients),
        connected=connected,
        startup_s=round(startup_s, 3),
        startup_server_cpu_s=round(cpu1 - cpu0, 3),
        startup_responses=resp1 - resp0,
        connect_errors=connect_errors,
        rss_before_kib=rss_before,
        rss_idle_kib=rss_idle,
        rss_end_kib=rss_end,
        hwm_end_kib=hwm_end,
        changes=changes,
        changes_wall_s=round(wall1 - wall0, 3),
        server_cpu_s=round(s_cpu1 - s_cpu0, 3),
        clients_cpu_s=[round(b - a, 3) for a, b in zip(c_cpu0, c_cpu1, strict=True)],
        driver_cpu_s=round(d_cpu1 - d_cpu0, 3),
        responses=r1 - r0,
        stream_errors=observer.errors[len(connect_errors) :],
        quiet_timeouts=quiet_timeouts,
        profile=None if profile_path is None else str(profile_path),
    )


# --- figures --------------------------------------------------------------------------------


def summary(p: Phase) -> dict[str, Any]:
    nan = float("nan")
    n = len(p.changes)
    clients = sum(p.clients_cpu_s)
    return {
        "kind": p.kind,
        "streams": p.streams,
        "connected": p.connected,
        "client_procs": p.client_procs,
        "startup_s": p.startup_s,
        "startup_server_cpu_s": p.startup_server_cpu_s,
        "connect_errors": len(p.connect_errors),
        "rss_before_mib": round(p.rss_before_kib / 1024, 1),
        "rss_idle_mib": round(p.rss_idle_kib / 1024, 1),
        "hwm_end_mib": round(p.hwm_end_kib / 1024, 1),
        "kib_per_stream": round((p.rss_idle_kib - p.rss_before_kib) / p.connected, 2)
        if p.connected
        else nan,
        "changes": n,
        "not_converged": sum(1 for c in p.changes if not c.converged),
        "push_ms": bec.spread([c.last_ms for c in p.changes]),
        "first_ms": bec.spread([c.first_ms for c in p.changes]),
        "from_flush_ms": bec.spread([c.from_flush_ms for c in p.changes]),
        "write_ms": bec.spread([c.write_ms for c in p.changes]),
        "responses_per_change": round(p.responses / n, 1) if n else nan,
        "server_cpu_ms_per_change": round(p.server_cpu_s * 1e3 / n, 2) if n else nan,
        "server_cpu_us_per_push": round(p.server_cpu_s * 1e6 / p.responses, 1)
        if p.responses
        else nan,
        "server_cpu_pct": round(p.server_cpu_s / p.changes_wall_s * 100, 1)
        if p.changes_wall_s
        else nan,
        "clients_cpu_ms_per_change": round(clients * 1e3 / n, 2) if n else nan,
        "clients_cpu_pct": round(clients / p.changes_wall_s * 100, 1) if p.changes_wall_s else nan,
        "clients_cpu_pct_busiest": round(max(p.clients_cpu_s) / p.changes_wall_s * 100, 1)
        if p.changes_wall_s and p.clients_cpu_s
        else nan,
        "stream_errors": len(p.stream_errors),
        "quiet_timeouts": p.quiet_timeouts,
    }


def num(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{round(v):,}" if digits == 0 else f"{v:,.{digits}f}"


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    if math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:,.1f}x"


def table(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """One column group per N: ours, floor, ours/floor."""
    rows: list[tuple[str, Callable[[dict[str, Any]], Any], int, bool]] = [
        ("streams connected", lambda s: s["connected"], 0, False),
        ("start-up: open -> all hold endpoints s", lambda s: s["startup_s"], 2, True),
        ("  server CPU during start-up s", lambda s: s["startup_server_cpu_s"], 2, True),
        ("  stream failures while connecting", lambda s: s["connect_errors"], 0, False),
        ("push latency -> last stream: p50 ms", lambda s: s["push_ms"]["median"], 1, True),
        ("                             p99 ms", lambda s: s["push_ms"]["p99"], 1, True),
        ("                             max ms", lambda s: s["push_ms"]["max"], 1, True),
        ("  -> first stream: p50 ms", lambda s: s["first_ms"]["median"], 1, True),
        ("  ours from flush start: p50 ms", lambda s: s["from_flush_ms"]["median"], 1, False),
        ("  flush / flip request: p50 ms", lambda s: s["write_ms"]["median"], 1, False),
        ("changes (not converged)", lambda s: s["changes"], 0, False),
        ("  responses per change", lambda s: s["responses_per_change"], 0, False),
        ("server RSS before streams MiB", lambda s: s["rss_before_mib"], 1, False),
        ("server RSS, N idle streams MiB", lambda s: s["rss_idle_mib"], 1, False),
        ("  RSS per stream KiB", lambda s: s["kib_per_stream"], 1, True),
        ("server CPU per push us", lambda s: s["server_cpu_us_per_push"], 1, True),
        ("server CPU per change ms", lambda s: s["server_cpu_ms_per_change"], 1, True),
        ("server CPU % of a core (changes)", lambda s: s["server_cpu_pct"], 1, False),
        (
            "clients CPU per change ms (all procs)",
            lambda s: s["clients_cpu_ms_per_change"],
            1,
            False,
        ),
        ("clients CPU % all procs", lambda s: s["clients_cpu_pct"], 1, False),
        ("clients CPU % busiest proc", lambda s: s["clients_cpu_pct_busiest"], 1, False),
        ("stream failures during changes", lambda s: s["stream_errors"], 0, False),
    ]
    width = 10
    label_width = max(len(r[0]) for r in rows)
    head1 = " " * label_width
    head2 = " " * label_width
    for ours, _ in pairs:
        group = f"N = {ours['streams']:,}"
        head1 += " |" + group.center(3 * (width + 1))
        head2 += " |" + "".join(h.rjust(width + 1) for h in ("ours", "floor", "ours/floor"))
    lines = [head1, head2, "-" * len(head2)]
    for label, fn, digits, show_ratio in rows:
        line = label.ljust(label_width)
        for ours, floor in pairs:
            a, b = fn(ours), fn(floor)
            if label.startswith("changes"):
                cells = [f"{ours['changes']} ({ours['not_converged']})"]
                cells.append(f"{floor['changes']} ({floor['not_converged']})")
                cells.append("")
            else:
                cells = [num(a, digits), num(b, digits), ratio(a, b) if show_ratio else ""]
            line += " |" + "".join(c.rjust(width + 1) for c in cells)
        lines.append(line)
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--streams", type=bec.parse_apps, default=[1000, 5000], help="default 1000,5000"
    )
    parser.add_argument("--apps", type=int, default=100, help="apps (default 100)")
    parser.add_argument("--changes", type=int, default=20, help="changes per phase (default 20)")
    parser.add_argument("--probes", type=int, default=200, help="etcd watch probes (default 200)")
    parser.add_argument(
        "--client-procs", type=int, default=4, help="simulated-client processes (default 4)"
    )
    parser.add_argument(
        "--streams-per-channel", type=int, default=100, help="ADS streams per gRPC channel"
    )
    parser.add_argument(
        "--quiet", type=float, default=0.6, help="quiet period between changes, s (default 0.6)"
    )
    parser.add_argument("--idle", type=float, default=1.0, help="idle before idle RSS, s")
    parser.add_argument("--change-timeout", type=float, default=20.0, help="per change, s")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="start-up, s")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy each server's changes phase into DIR"
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="keep every process's log")
    args = parser.parse_args(argv)
    if args.apps < 1 or args.changes < 1 or args.client_procs < 1 or args.probes < 1:
        parser.error("--apps, --changes, --client-procs and --probes must be >= 1")
    if args.profile is not None:
        if not PY_SPY.exists():
            parser.error(f"--profile: no py-spy at {PY_SPY}")
        args.profile.mkdir(parents=True, exist_ok=True)
    return args


async def amain(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    system = bec.System(work)
    try:
        url = system.start_etcd(bec.SHAPES["single"], work / "etcd")[0]
        etcd = TimedEtcd(url, timeout=30.0, retry_for=30.0)
        async with etcd, aiohttp.ClientSession() as session:
            tr, seeded = await seed(etcd, args.apps)
            print(
                f"seeded: {seeded['objects']} state objects, {seeded['snapshot_keys']} snapshot "
                f"keys ({seeded['snapshot_bytes'] / 1024:,.0f} KiB) written by the translator, "
                f"{bec.EDS_NAME} variants {seeded['target_variants']} ({seeded['seconds']}s)",
                file=sys.stderr,
            )
            probes = await watch_latency(url, args.probes)
            watch = {k: round(v, 3) for k, v in bec.spread([p * 1e3 for p in probes]).items()}
            print(f"etcd watch latency (ms): {watch}", file=sys.stderr)
            mesh_ = Mesh(etcd, tr)
            phases: list[Phase] = []
            for n in args.streams:
                for kind in PHASES:
                    began = time.monotonic()
                    phases.append(
                        await run_phase(
                            kind,
                            n=n,
                            args=args,
                            system=system,
                            mesh_=mesh_,
                            url=url,
                            session=session,
                        )
                    )
                    print(
                        f"  [{kind} {n:,}] done in {time.monotonic() - began:.0f}s",
                        file=sys.stderr,
                    )
    finally:
        system.stop()
    return {
        "benchmark": "floor",
        "config": {
            "streams": args.streams,
            "apps": args.apps,
            "changes": args.changes,
            "probes": args.probes,
            "client_procs": args.client_procs,
            "streams_per_channel": args.streams_per_channel,
            "quiet_s": args.quiet,
            "cpus": os.cpu_count(),
            "profiled": args.profile is not None,
        },
        "seeded": seeded,
        "etcd_watch_ms": watch,
        "etcd_watch_s": probes,
        "summaries": [summary(p) for p in phases],
        "phases": [dataclasses.asdict(p) for p in phases],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nv-bench-floor-") as tmp:
        work = Path(tmp)
        if args.log_dir is not None:
            work = args.log_dir
            work.mkdir(parents=True, exist_ok=True)
        try:
            doc = asyncio.run(amain(args, work))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted; every process stopped", file=sys.stderr)
            return 130
        except (bec.BenchError, procs.ProcError) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    summaries = doc["summaries"]
    by = {(s["kind"], s["streams"]): s for s in summaries}
    pairs = [(by["ours", n], by["floor", n]) for n in args.streams]
    w = doc["etcd_watch_ms"]
    print(
        f"The xDS front-end against the floor: {args.apps} apps, one endpoint change of "
        f"{bec.EDS_NAME} seen by every stream, {args.changes} changes per phase, SotW ADS, "
        f"{args.client_procs} client processes; {os.cpu_count()} CPUs; wall time "
        f"{time.monotonic() - began:.0f}s"
        + (" (PROFILED: py-spy attached)" if args.profile else "")
    )
    print(
        f"etcd watch latency, put -> event on a watch (driver, 2nd client), n={args.probes}: "
        f"p50 {w['median']:.2f} / p99 {w['p99']:.2f} / max {w['max']:.2f} ms"
    )
    print(table(pairs))
    print(
        "ours: navigator xds; timed from just before the translator's etcd write of the EDS "
        "keys. floor: navigator.bench.replay (pre-encoded bytes, no etcd); timed from just "
        "before POST /flip. Latency to the clients' receipt (time.time(), same machine)."
    )
    if args.out is not None:
        args.out.write_text(json.dumps(bec.no_nan(doc), indent=2, allow_nan=False) + "\n")
        print(f"figures written to {args.out}")
    if any(s["not_converged"] for s in summaries):
        print("some changes did not converge", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
