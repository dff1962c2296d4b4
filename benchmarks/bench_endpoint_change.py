"""End-to-end cost of ONE endpoint change: etcd writes, and time until every sidecar has it.

Why it exists: ``bench_translate.py`` measures translation alone, in memory. This benchmark
runs the real system as users run it (etcd, the local Kubernetes API server, watchers,
translators and xDS front-ends, each its own process, on loopback), changes the Endpoints of
one service through the API server with the official ``kubernetes`` client, and measures:

- the convergence time: from just before the API call to the moment the LAST subscribed
  sidecar holds the new endpoints. Sidecars are ``ads_client.py`` (one simulated sidecar per
  app, real gRPC ADS, in separate processes) plus one real Envoy (app ``app-0``), whose admin
  ``/clusters`` is polled every 5 ms; the Envoy's figure is also reported on its own, and the
  last subscriber of each front-end too;
- the etcd writes the change caused: every key put or deleted under ``/navigator/v1/``,
  seen by a watch of that prefix, split into state keys, EDS snapshot keys, app snapshot keys
  and other keys (named under the table). Writes the change did not cause, the control
  plane's own bookkeeping (lease-bound member records under ``members/``, the leadership keys
  ``watchers/<cluster>/leader`` and ``shards/<n>/leader``, ``stale/`` markers, the shard
  count), are counted apart and left out of "etcd writes per change"; in steady state there
  are none, and the table says so when there were. The front-ends' sidecar status records
  (``sidecars/``, rewritten after the ACKs) are counted on a row of their own. The next change
  starts only after convergence plus a quiet period with no etcd event (status records
  aside) and no sidecar report, so each write belongs to one change;
- the peak RSS (``VmHWM``) of every process, the control plane's summed.

Shapes (``--shape``):

- ``distributed`` (default): a 3-member etcd cluster, 2 watcher replicas for the cluster
  (one elected leader writes), 2 translator replicas sharing 8 shards (one elected leader per
  shard), 2 xDS front-ends. The simulated sidecars are split evenly over the front-ends,
  each sidecar connected to one (app indexes ``0..N/2`` to the first, the rest to the
  second); the real Envoy connects to the first. Measuring starts only once every process
  answers ``/readyz``, every member is registered, the 8 shards and the cluster have a
  leader, and the shards are spread as the translators' assignment says.
- ``single``: one of each (one etcd member, watcher, translator, front-end), started with
  the components' default flags, as before the control plane was distributed.

Each app count gets a fresh system (new etcd data directories). The Endpoints object
``bench/target`` alternates between 10 and 11 addresses; every app has a Nexus naming the
service, so every sidecar sees every change.

Run::

    .venv/bin/python benchmarks/bench_endpoint_change.py [--shape distributed|single]
        [--apps 1,100,1000] [--changes 30] [--out results.json] [--log-dir DIR]

The figures in the README come from ``--changes 100`` (both shapes, apps 1, 100, 1,000); the
default of 30 is for a quick look. Prints one table (app counts as columns, the shape in its
header, notes under it) and, with ``--out``, writes the figures as JSON (shape, leaders,
per-change records included: times, keys written). On a 2-core machine a full
``--changes 100`` run takes about 2 min 20 s (distributed) or 2 min 10 s (single), the default
30 changes about a minute. Exits 1 if a change did not converge within ``--change-timeout``.
Every process's log goes to a temporary directory (removed at the end; ``--log-dir`` keeps
them), and its tail is shown if the process dies. Every process started is stopped at the
end, on errors and on Ctrl-C too, by its PID.

Reading the figures: p50 is the median; p99 is nearest-rank, so over 100 changes it is the
second largest sample (rank ceil(0.99 * 100) = 99), and over 30 it is the largest, the same as
max. The real Envoy's time is when the admin answer showing the new hosts arrived, so it may be
late by up to one polling interval (5 ms). Sidecar times are taken by ``ads_client.py`` on
receipt, so its own queueing under load is included, as an Envoy's would be. Write times
are when the driver's own etcd watch delivered them; that watch may lag the front-ends' (it
may be served by another etcd member), so a write "after convergence" can be a late watch.
With two front-ends the simulated sidecars run in at least two client processes (one per
front-end), with one front-end in a single one (``--client-procs``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from coordinator import etcd as etcd_mod
from coordinator import shards as shards_mod
from navigator import bootstrap, keys, model
from navigator import state as nv_state
from navigator.kubeapi import server as kubeapi_server
from navigator.lab import procs

HERE = Path(__file__).resolve().parent
ADS_CLIENT = HERE / "ads_client.py"

CLUSTER = "east"
REGION = "r1"
ZONE = "r1-a"
NODE_NAME = "east-node-1"
NAMESPACE = "bench"
SERVICE = "target"
CLUSTER_IP = "127.31.0.10"
PORT = 8080
EDS_NAME = f"{NAMESPACE}/{SERVICE}:{PORT}"
BASE_ADDRESSES = tuple(f"127.21.0.{i}" for i in range(1, 11))
EXTRA_ADDRESS = "127.21.0.11"

ROOT = keys.ROOT
KINDS: tuple[tuple[str, str], ...] = (
    ("state", keys.STATE),
    ("eds", keys.EDS_SNAPSHOTS),
    ("apps", keys.APP_SNAPSHOTS),
)
KIND_NAMES = (*(name for name, _ in KINDS), "other")
"""Keys an endpoint change causes; ``other`` is any key of no other kind (named in notes)."""
NOT_CAUSED: tuple[tuple[str, str], ...] = (
    ("members", keys.MEMBERS),
    ("leaders", keys.WATCHERS),
    ("leaders", keys.SHARDS),
    ("stale", keys.STALE),
    ("shard-count", keys.SHARD_COUNT),
)
"""The control plane's own bookkeeping: lease-bound member records, leadership keys, the
stale markers and the shard count. An endpoint change causes none of them."""
NOT_CAUSED_NAMES = tuple(dict.fromkeys(name for name, _ in NOT_CAUSED))
STATUS_PREFIX = keys.SIDECARS
"""The front-ends' sidecar status records (written after the ACKs, rate-capped): caused by
a change but not configuration; counted apart (``status_writes``), never as writes per
change, and they do not break a quiet period (``bench_frontend.py`` measures them)."""

ENVOY = "envoy"
ENVOY_FLAGS = ("--concurrency", "1", "--disable-hot-restart", "-l", "warning")
ENVOY_POLL = 0.005
ENVOY_IDLE_POLL = 0.05

MAX_FAILURES = 3
"""Changes in a row that may fail to converge before the app count is given up."""

TIER_SERVER, TIER_CONTROL_PLANE, TIER_CLIENT = 0, 1, 2

ROLES = ("watcher", "translator", "xds")
"""The control plane's processes, by their role in ``members/``."""
BALANCE_LIMIT = 15.0
"""Seconds to wait, once every shard has a leader, for the shards to sit where the
translators' assignment puts them (a moment of rebalancing at startup is normal)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """How many of each process one run starts."""

    name: str
    etcd_members: int
    watchers: int
    translators: int
    frontends: int
    shards: int | None
    """Passed as ``--shards``; None: the translator's default (read back from etcd)."""

    def counts(self) -> dict[str, int]:
        return {
            "etcd": self.etcd_members,
            "watcher": self.watchers,
            "translator": self.translators,
            "xds": self.frontends,
        }

    def describe(self, shards: int | None = None) -> str:
        count = shards if shards is not None else self.shards
        return (
            f"shape {self.name}: etcd x{self.etcd_members}, watcher x{self.watchers} "
            f"(1 leader), translator x{self.translators} ({count or '?'} shards), "
            f"xDS front-end x{self.frontends}"
            + (
                "; simulated sidecars split evenly over the front-ends, real Envoy on the first"
                if self.frontends > 1
                else ""
            )
        )


SHAPES: dict[str, Shape] = {
    "distributed": Shape("distributed", 3, 2, 2, 2, 8),
    "single": Shape("single", 1, 1, 1, 1, None),
}


class BenchError(RuntimeError):
    """The system under test did not start or did not converge."""


# --- the system under test ---------------------------------------------------------------


def manifests(apps: int) -> list[dict[str, Any]]:
    """Node, Service, Endpoints and one Nexus per app, as the converters accept them."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    "topology.kubernetes.io/region": REGION,
                    "topology.kubernetes.io/zone": ZONE,
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": CLUSTER_IP,
                "ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}],
            },
        },
        endpoints_body(BASE_ADDRESSES),
    ]
    docs.extend(
        {
            "apiVersion": "navigator.avito.ru/v1",
            "kind": "Nexus",
            "metadata": {"name": f"app-{i}", "namespace": NAMESPACE},
            "spec": {
                "appName": f"app-{i}",
                "services": [{"namespace": NAMESPACE, "name": SERVICE}],
            },
        }
        for i in range(apps)
    )
    return docs


def endpoints_body(addresses: Sequence[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "subsets": [
            {
                "addresses": [{"ip": ip, "nodeName": NODE_NAME} for ip in addresses],
                "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
            }
        ],
    }


def expected_set(addresses: Iterable[str]) -> frozenset[str]:
    return frozenset(f"{ip}:{PORT}" for ip in addresses)


@dataclasses.dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_file: Path
    tier: int
    """Stop order: higher tiers first (clients, then the control plane, then the servers)."""
    role: str
    """``etcd``, ``kube-api``, ``watcher``, ``translator``, ``xds``, ``envoy``, ``ads-client``."""


class System:
    """Every process of one run; ``stop()`` ends them all (only those, by their PID)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[Proc] = []

    def spawn(self, name: str, args: Sequence[str], *, tier: int, role: str) -> Proc:
        log_file = self.work / f"{name}.log"
        proc = Proc(name, procs.start(args, log_file=log_file), log_file, tier, role)
        self.procs.append(proc)
        return proc

    def navigator(self, name: str, *args: str, tier: int, role: str) -> Proc:
        return self.spawn(name, [sys.executable, "-m", "navigator", *args], tier=tier, role=role)

    def start_etcd(self, shape: Shape, data: Path) -> list[str]:
        """The shape's etcd (one member, or a cluster); returns the client URLs."""
        if shape.etcd_members == 1:
            log_file = self.work / "etcd.log"
            popen, url = procs.start_etcd(data, log_file=log_file)
            self.procs.append(Proc("etcd", popen, log_file, TIER_SERVER, "etcd"))
            return [url]
        # NOTE: start_etcd_cluster stops the members it started if one fails to come up.
        members = procs.start_etcd_cluster(data, members=shape.etcd_members, logs=self.work)
        for m in members:
            log_file = m.log_file or self.work / f"{m.name}.log"
            self.procs.append(Proc(m.name, m.popen, log_file, TIER_SERVER, "etcd"))
        return [m.client_url for m in members]

    def names(self, role: str) -> list[str]:
        return [p.name for p in self.procs if p.role == role]

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise BenchError(f"{p.name} exited with {p.popen.returncode}:\n{tail(p.log_file)}")

    def stop(self) -> None:
        """SIGTERM tier by tier (all of a tier at once, etcd members one after the other),
        SIGKILL after a timeout."""
        for tier in sorted({p.tier for p in self.procs}, reverse=True):
            group = [p for p in self.procs if p.tier == tier and p.role != "etcd"]
            for p in group:
                if p.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.popen.send_signal(signal.SIGTERM)
            for p in group:
                stop_signalled(p.popen)
            # NOTE: an etcd leader told to stop hands its leadership to a peer first; with
            # every member stopping at once that hand-over waits for its timeout (seconds).
            for p in self.procs:
                if p.tier == tier and p.role == "etcd":
                    procs.stop(p.popen)
        self.procs.clear()


def stop_signalled(popen: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Waits for a process already sent SIGTERM (once: Envoy logs every one), SIGKILL after
    ``timeout``."""
    try:
        popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait(timeout=5)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_ready(
    system: System, session: aiohttp.ClientSession, urls: dict[str, str], limit: float
) -> None:
    """Polls each ``/readyz`` until it answers 200; fails if a process exits or at ``limit``."""
    deadline = time.monotonic() + limit
    pending = dict(urls)
    while pending:
        system.check_alive()
        for name, url in list(pending.items()):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"not ready after {limit:.0f}s: {', '.join(pending)}")
        await asyncio.sleep(0.05)


def status_kib(pid: int, field: str) -> int | None:
    """A kB field of ``/proc/PID/status`` (``VmHWM``, ``VmRSS``...); None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set size of a process (``VmHWM``), in MiB."""
    kib = status_kib(pid, "VmHWM")
    return None if kib is None else kib / 1024


# --- what the driver observes -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    at: float
    revision: int
    key: str
    deleted: bool


PER_OBJECT = frozenset({"diagnostics", "shards"})
"""Top segments whose second one names an app or a shard: counted as one prefix."""


def prefix_of(key: str) -> str:
    """The first two segments under ``ROOT`` (``state/east``, ``snapshots/apps``...), only the
    first for the per-app and per-shard ones (``diagnostics``, ``shards``)."""
    parts = key.removeprefix(ROOT).split("/")
    return parts[0] if parts[0] in PER_OBJECT else "/".join(parts[:2])


def kind_of(key: str) -> str:
    """The kind of a key: one of ``KIND_NAMES`` or, for bookkeeping, ``NOT_CAUSED_NAMES``."""
    for name, prefix in (*KINDS, *NOT_CAUSED):
        if key.startswith(prefix):
            return name
    return "other"


def caused(kind: str) -> bool:
    """Whether a key of ``kind`` is written because of a change (else: bookkeeping)."""
    return kind not in NOT_CAUSED_NAMES


def short(key: str) -> str:
    return key.removeprefix(ROOT)


class Observer:
    """Sidecar reports, Envoy polls and etcd events, and when a change has converged."""

    def __init__(self, members: Iterable[str], *, quiet_ignores: tuple[str, ...] = ()) -> None:
        self.members = frozenset(members)
        self.quiet_ignores = quiet_ignores
        """Key prefixes whose writes are recorded but do not break a quiet period."""
        self.held: dict[str, frozenset[str]] = {}
        self.writes: list[Write] = []
        self.last_revision = 0
        self.activity = asyncio.Event()
        self.expected: frozenset[str] | None = None
        self.guard = 0.0
        self.pending: set[str] = set()
        self.reached: dict[str, float] = {}
        self.converged = asyncio.Event()
        self.stray = 0
        self.errors: list[str] = []

    def begin(self, expected: frozenset[str], *, guard: float, fresh: bool) -> None:
        """Starts waiting for ``expected`` everywhere; ``fresh``: holding it already is not
        enough, a report at or after ``guard`` is needed."""
        self.expected = expected
        self.guard = guard
        self.reached = {}
        self.stray = 0
        self.pending = {m for m in self.members if fresh or self.held.get(m) != expected}
        self.converged.clear()
        if not self.pending:
            self.converged.set()

    def report(self, who: str, at: float, addrs: frozenset[str]) -> None:
        self.held[who] = addrs
        self.activity.set()
        if self.expected is None or who not in self.members:
            return
        if addrs != self.expected:
            self.stray += 1
            return
        if who in self.pending and at >= self.guard:
            self.pending.discard(who)
            self.reached[who] = at
            if not self.pending:
                self.converged.set()

    def etcd_event(self, ev: etcd_mod.Event) -> None:
        self.writes.append(Write(time.time(), ev.revision, ev.key, ev.value is None))
        self.last_revision = max(self.last_revision, ev.revision)
        if not ev.key.startswith(self.quiet_ignores):
            self.activity.set()

    async def quiet(self, period: float, limit: float) -> bool:
        """Waits for ``period`` seconds without any event; False if ``limit`` passed first."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.activity.clear()
            # NOTE: asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
            # cancellation (Ctrl-C, SIGTERM) that lands as the event is set.
            try:
                async with asyncio.timeout(period):
                    await self.activity.wait()
            except TimeoutError:
                return True
        return False


async def follow_etcd(etcd: etcd_mod.Etcd, start: int, observer: Observer) -> None:
    async for ev in etcd.watch_prefix(ROOT, start_revision=start):
        observer.etcd_event(ev)


@contextlib.asynccontextmanager
async def serve_reports(observer: Observer) -> AsyncIterator[int]:
    """The loopback server ``ads_client.py`` processes send their JSON lines to; yields its
    port. On exit every connection is closed, which ends the client processes."""
    handlers: set[asyncio.Task[Any]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        writers.add(writer)
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                kind = msg.get("kind")
                if kind == "eds":
                    observer.report(msg["sidecar"], float(msg["t"]), frozenset(msg["addrs"]))
                elif kind == "error":
                    observer.errors.append(f"{msg['sidecar']}: {msg['error']}")
        except ConnectionError:
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=16 * 1024 * 1024)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.close()
        # NOTE: closing a connection ends its handler (EOF); cancelling a handler would make
        # Python 3.11's StreamReaderProtocol log the CancelledError.
        for writer in list(writers):
            writer.close()
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=2.0)
            for task in stuck:
                task.cancel()
        await server.wait_closed()


def envoy_hosts(body: Any) -> frozenset[str] | None:
    """The ``ip:port`` of ``EDS_NAME`` in admin ``/clusters?format=json``; None if absent."""
    for cluster in body.get("cluster_statuses", ()):
        if cluster.get("name") != EDS_NAME:
            continue
        out = set()
        for host in cluster.get("host_statuses", ()):
            sock = host.get("address", {}).get("socket_address", {})
            out.add(f"{sock.get('address')}:{sock.get('port_value')}")
        return frozenset(out)
    return None


async def poll_envoy(
    session: aiohttp.ClientSession,
    admin: str,
    observer: Observer,
    proc: Proc,
    *,
    who: str = ENVOY,
) -> None:
    """Every 5 ms while the Envoy has not converged (50 ms otherwise): its hosts of EDS_NAME,
    reported to ``observer`` as member ``who``.

    The time recorded is when the admin's answer arrived (an upper bound of when Envoy had
    the hosts; the previous poll, at most ~5 ms earlier, is the lower bound).
    """
    url = f"{admin}/clusters?format=json"
    while True:
        if proc.popen.poll() is not None:
            raise BenchError(f"envoy exited with {proc.popen.returncode}:\n{tail(proc.log_file)}")
        hosts: frozenset[str] | None = None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(url) as resp:
                if resp.status == 200:
                    hosts = envoy_hosts(await resp.json(content_type=None))
        at = time.time()
        if hosts is not None and hosts != observer.held.get(who):
            observer.report(who, at, hosts)
        busy = who in observer.pending
        await asyncio.sleep(ENVOY_POLL if busy else ENVOY_IDLE_POLL)


# --- one run at N apps ------------------------------------------------------------------


@dataclasses.dataclass
class Change:
    index: int
    added: bool
    api_ms: float
    converged: bool
    convergence_ms: float
    envoy_ms: float
    """The last real Envoy to hold the new endpoints."""
    first_sidecar_ms: float
    state_write_ms: float
    """When the driver's etcd watch saw the first state/ write (the watcher's part)."""
    eds_write_ms: float
    """When it saw the last snapshots/eds/ write before convergence (the translator's part)."""
    last_sidecar_ms: float
    last_by_frontend_ms: dict[str, float]
    """The last subscriber of each front-end to hold the new endpoints (Envoy included)."""
    writes: int
    """Keys written because of the change; bookkeeping (``not_caused``) left out."""
    revisions: int
    by_kind: dict[str, int]
    not_caused: dict[str, int]
    """Bookkeeping writes seen during the change (members/, leadership keys...): 0 normally."""
    late_writes: int
    stray_reports: int
    keys: list[str]
    not_caused_keys: list[str]
    status_writes: int = 0
    """Sidecar status records (``sidecars/``) seen during the change; not in ``writes``."""


@dataclasses.dataclass
class Run:
    apps: int
    shape: str
    processes: dict[str, list[str]]
    """Process names by role."""
    sidecars: int
    sidecars_by_frontend: dict[str, int]
    startup_s: float
    control_plane_s: float
    """From the start to every member registered and every shard and the cluster led."""
    initial_sync_s: float
    startup_writes: int
    startup_writes_by_prefix: dict[str, int]
    control_plane: dict[str, Any]
    """Members and leaders once settled, before the first change (``read_control_plane``)."""
    control_plane_after: dict[str, Any]
    """The same after the last change."""
    changes: list[Change]
    rss_mib: dict[str, float | None]
    stream_errors: list[str]
    quiet_timeouts: int


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def proc_names(role: str, count: int) -> list[str]:
    """``role`` alone for one process (the names of the single shape), else ``role-<i>``."""
    return [role] if count == 1 else [f"{role}-{i}" for i in range(count)]


def split_apps(apps: int, parts: int) -> list[range]:
    """Contiguous app indexes per front-end, sizes within one; the first front-ends get the
    smaller shares, since the first one also serves the real Envoy."""
    base, extra = divmod(apps, parts)
    out: list[range] = []
    first = 0
    for i in range(parts):
        size = base + (1 if i >= parts - extra else 0)
        out.append(range(first, first + size))
        first += size
    return out


class Ports:
    """Free loopback ports, never the same one twice within a run."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def take(self) -> int:
        while True:
            port = procs.free_port()
            if port not in self.used:
                self.used.add(port)
                return port


async def read_control_plane(etcd: etcd_mod.Etcd, names_by_pid: dict[int, str]) -> dict[str, Any]:
    """Members and leaders as ``navigator state members|shards|clusters`` reads them.

    Ids are the members' own (``--id``, or ``<hostname>-<pid>`` by default); ``names`` maps
    them to this run's process names (through the PID in the member record).
    """
    members = await nv_state.members(etcd)
    shard_rows = await nv_state.shards(etcd)
    cluster_rows = {r["cluster"]: r for r in await nv_state.clusters(etcd)}
    leader_keys = await etcd.get_prefix(keys.SHARDS)
    watcher_key = await etcd.get(keys.watcher_leader_key(model.ClusterName(CLUSTER)))
    by_role: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for m in members:
        by_role.setdefault(str(m["role"]), []).append(str(m["id"]))
        names[str(m["id"])] = names_by_pid.get(int(m["pid"] or 0), str(m["id"]))
    shard_leaders = {str(r["shard"]): str(r["leader"]) for r in shard_rows}
    count = len(shard_rows)
    wanted = shards_mod.assign(count, by_role.get("translator", [])) if count else {}
    expected = {str(n): member for member, owned in wanted.items() for n in owned}
    cluster = cluster_rows.get(CLUSTER, {})
    tokens = {short(k): kv.create_revision for k, kv in leader_keys.items.items()}
    if watcher_key is not None:
        tokens[short(watcher_key.key)] = watcher_key.create_revision
    return {
        "shards": count,
        "shard_leaders": shard_leaders,
        "expected_shard_leaders": expected,
        "balanced": bool(count) and shard_leaders == expected,
        "watcher_leader": str(cluster.get("leader", "")),
        "synced": bool(cluster.get("synced", False)),
        "members": {role: sorted(ids) for role, ids in sorted(by_role.items())},
        "names": names,
        "leader_tokens": dict(sorted(tokens.items())),
    }


def control_plane_missing(cp: dict[str, Any], shape: Shape) -> list[str]:
    """What keeps the control plane from being settled for ``shape`` (empty: settled)."""
    missing: list[str] = []
    for role in ROLES:
        have, want = len(cp["members"].get(role, [])), shape.counts()[role]
        if have != want:
            missing.append(f"{have}/{want} {role} members registered")
    if not cp["shards"]:
        missing.append(f"no shard count in {keys.SHARD_COUNT}")
    elif shape.shards is not None and cp["shards"] != shape.shards:
        missing.append(f"{cp['shards']} shards in etcd, {shape.shards} wanted")
    unled = [n for n, leader in cp["shard_leaders"].items() if not leader]
    if unled:
        missing.append(f"shards without a leader: {', '.join(unled)}")
    if not cp["watcher_leader"]:
        missing.append(f"no watcher leader for {CLUSTER}")
    if not cp["synced"]:
        missing.append(f"{CLUSTER} not synced")
    return missing


async def wait_control_plane(
    system: System, etcd: etcd_mod.Etcd, shape: Shape, limit: float, label: str
) -> dict[str, Any]:
    """Waits until every member is registered, every shard and the cluster have a leader,
    then (at most ``BALANCE_LIMIT`` s more) until the shards sit where the assignment puts
    them. Raises if a process exits or the first part is not reached within ``limit``."""
    deadline = time.monotonic() + limit
    balance_deadline: float | None = None
    names_by_pid = {p.popen.pid: p.name for p in system.procs}
    missing = ["nothing read from etcd yet"]
    while True:
        system.check_alive()
        try:
            cp = await read_control_plane(etcd, names_by_pid)
        except etcd_mod.EtcdError as exc:
            missing = [f"etcd: {exc}"]
        else:
            missing = control_plane_missing(cp, shape)
            if not missing:
                if cp["balanced"]:
                    return cp
                now = time.monotonic()
                balance_deadline = balance_deadline or now + BALANCE_LIMIT
                if now > balance_deadline:
                    print(
                        f"  [{label}] shards not where the assignment puts them after "
                        f"{BALANCE_LIMIT:.0f}s: leaders {cp['shard_leaders']}, "
                        f"expected {cp['expected_shard_leaders']}; measuring anyway",
                        file=sys.stderr,
                    )
                    return cp
        if time.monotonic() > deadline:
            raise BenchError(f"control plane not settled after {limit:.0f}s: {'; '.join(missing)}")
        await asyncio.sleep(0.1)


async def run_one(apps: int, args: argparse.Namespace, log_root: Path | None) -> Run:
    with tempfile.TemporaryDirectory(prefix=f"nv-bench-{apps}-") as tmp:
        work = Path(tmp)
        if log_root is not None:
            work = log_root / f"{args.shape}-apps-{apps}"
            work.mkdir(parents=True, exist_ok=True)
        system = System(work)
        try:
            return await _run_system(system, apps, args, Path(tmp))
        finally:
            system.stop()


@dataclasses.dataclass(frozen=True, slots=True)
class ControlPlane:
    """Where the processes ``start_control_plane`` started answer."""

    kubeconfig: Path
    ready: dict[str, str]
    """``/readyz`` URL by process name."""
    xds_ports: dict[str, int]
    """gRPC port by front-end name, in order (the real Envoy uses the first)."""


def start_control_plane(
    system: System,
    args: argparse.Namespace,
    *,
    apps: int,
    tmp: Path,
    ports: Ports,
    etcd_arg: str,
) -> ControlPlane:
    """The API server, the watchers, the translators and the front-ends of the shape."""
    shape = SHAPES[args.shape]
    manifest = tmp / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(manifests(apps), sort_keys=False))
    api_port = ports.take()
    api_url = f"http://127.0.0.1:{api_port}"
    kubeconfig = tmp / "kubeconfig"
    kubeapi_server.write_kubeconfig(kubeconfig, {CLUSTER: api_url})
    system.navigator(
        "kube-api",
        "kube-api",
        "--host",
        "127.0.0.1",
        "--port",
        str(api_port),
        "--name",
        CLUSTER,
        "--load",
        str(manifest),
        tier=TIER_SERVER,
        role="kube-api",
    )
    # NOTE: the single shape passes no replica flags, as the components ran before they
    # had any: default ids, lease TTL and shard count.
    replica = shape.name != "single"
    http: dict[str, str] = {}
    for name in proc_names("watcher", shape.watchers):
        http[name] = f"127.0.0.1:{ports.take()}"
        system.navigator(
            name,
            "watcher",
            "--cluster",
            CLUSTER,
            "--kubeconfig",
            str(kubeconfig),
            "--context",
            CLUSTER,
            "--etcd",
            etcd_arg,
            "--http",
            http[name],
            *(["--id", name, "--lease-ttl", str(args.lease_ttl)] if replica else []),
            tier=TIER_CONTROL_PLANE,
            role="watcher",
        )
    for name in proc_names("translator", shape.translators):
        http[name] = f"127.0.0.1:{ports.take()}"
        system.navigator(
            name,
            "translator",
            "--etcd",
            etcd_arg,
            "--http",
            http[name],
            *(
                ["--id", name, "--shards", str(shape.shards), "--lease-ttl", str(args.lease_ttl)]
                if replica
                else []
            ),
            tier=TIER_CONTROL_PLANE,
            role="translator",
        )
    xds_ports: dict[str, int] = {}
    for name in proc_names("xds", shape.frontends):
        http[name] = f"127.0.0.1:{ports.take()}"
        xds_ports[name] = ports.take()
        system.navigator(
            name,
            "xds",
            "--listen",
            f"127.0.0.1:{xds_ports[name]}",
            "--etcd",
            etcd_arg,
            "--http",
            http[name],
            *(["--id", name] if replica else []),
            tier=TIER_CONTROL_PLANE,
            role="xds",
        )
    ready = {"kube-api": f"{api_url}/readyz"}
    ready.update({name: f"http://{addr}/readyz" for name, addr in http.items()})
    return ControlPlane(kubeconfig=kubeconfig, ready=ready, xds_ports=xds_ports)


async def _run_system(system: System, apps: int, args: argparse.Namespace, tmp: Path) -> Run:
    shape = SHAPES[args.shape]
    label = f"{apps} apps"
    started = time.monotonic()
    ports = Ports()
    etcd_urls = system.start_etcd(shape, tmp / "etcd")
    etcd_arg = ",".join(etcd_urls)

    frontends = proc_names("xds", shape.frontends)
    ranges = split_apps(apps, len(frontends))
    frontend_of = {f"sidecar-{i}": fe for fe, r in zip(frontends, ranges, strict=True) for i in r}
    frontend_of[ENVOY] = frontends[0]

    members = [f"sidecar-{i}" for i in range(apps)] + [ENVOY]
    observer = Observer(members, quiet_ignores=(STATUS_PREFIX,))
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with (
        etcd_mod.Etcd(etcd_mod.parse_endpoints(etcd_arg)) as etcd,
        aiohttp.ClientSession(timeout=timeout) as session,
        serve_reports(observer) as report_port,
    ):
        # NOTE: watching from before the control plane starts, so startup writes are seen too;
        # the ping also waits for an etcd cluster's first leader.
        start_revision = await etcd.ping() + 1
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(follow_etcd(etcd, start_revision, observer), name="etcd-watch")
        ]
        try:
            cp = start_control_plane(
                system, args, apps=apps, tmp=tmp, ports=ports, etcd_arg=etcd_arg
            )
            xds_ports, kubeconfig = cp.xds_ports, cp.kubeconfig
            await wait_ready(system, session, cp.ready, limit=args.ready_timeout)
            control_plane = await wait_control_plane(system, etcd, shape, args.ready_timeout, label)
            control_plane_s = time.monotonic() - started

            admin_port = ports.take()
            config = bootstrap.render(
                node_id="envoy-app-0",
                app="app-0",
                cluster=CLUSTER,
                region=REGION,
                zone=ZONE,
                xds_host="127.0.0.1",
                xds_port=xds_ports[frontends[0]],
                admin_port=admin_port,
            )
            envoy_config = tmp / "envoy.json"
            envoy_config.write_text(json.dumps(config))
            envoy = system.spawn(
                ENVOY,
                [str(procs.envoy_binary()), "-c", str(envoy_config), *ENVOY_FLAGS],
                tier=TIER_CLIENT,
                role="envoy",
            )
            spawn_clients(
                system,
                args,
                frontends=frontends,
                ranges=ranges,
                xds_ports=xds_ports,
                report_port=report_port,
            )
            tasks.append(
                asyncio.create_task(
                    poll_envoy(session, f"http://127.0.0.1:{admin_port}", observer, envoy),
                    name="envoy-poll",
                )
            )
            sync_started = time.monotonic()
            observer.begin(expected_set(BASE_ADDRESSES), guard=0.0, fresh=False)
            await wait_converged(system, observer, tasks, args.ready_timeout, "initial sync")
            initial_sync_s = time.monotonic() - sync_started
            startup_s = time.monotonic() - started
            if not await observer.quiet(args.quiet, limit=10.0):
                print(f"  [{label}] no quiet period after startup", file=sys.stderr)
            startup_writes = len(observer.writes)
            startup_by_prefix = collections.Counter(prefix_of(w.key) for w in observer.writes)

            api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), context=CLUSTER
            )
            try:
                changes, quiet_timeouts = await drive_changes(
                    system,
                    observer,
                    tasks=tasks,
                    core=k8s_client.CoreV1Api(api),
                    label=label,
                    frontend_of=frontend_of,
                    args=args,
                )
            finally:
                api.close()
            names_by_pid = {p.popen.pid: p.name for p in system.procs}
            try:
                control_plane_after = await read_control_plane(etcd, names_by_pid)
            except etcd_mod.EtcdError as exc:
                print(f"  [{label}] cannot read the control plane: {exc}", file=sys.stderr)
                control_plane_after = {}
            rss = {p.name: vm_hwm_mib(p.popen.pid) for p in system.procs}
            processes: dict[str, list[str]] = {}
            for p in system.procs:
                processes.setdefault(p.role, []).append(p.name)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return Run(
        apps=apps,
        shape=shape.name,
        processes=processes,
        sidecars=len(members),
        sidecars_by_frontend=dict(collections.Counter(frontend_of[m] for m in members)),
        startup_s=round(startup_s, 2),
        control_plane_s=round(control_plane_s, 2),
        initial_sync_s=round(initial_sync_s, 2),
        startup_writes=startup_writes,
        startup_writes_by_prefix=dict(sorted(startup_by_prefix.items())),
        control_plane=control_plane,
        control_plane_after=control_plane_after,
        changes=changes,
        rss_mib=rss,
        stream_errors=observer.errors,
        quiet_timeouts=quiet_timeouts,
    )


def spawn_clients(
    system: System,
    args: argparse.Namespace,
    *,
    frontends: Sequence[str],
    ranges: Sequence[range],
    xds_ports: dict[str, int],
    report_port: int,
) -> None:
    """The ``ads_client.py`` processes: each front-end's sidecars in their own processes."""
    per_frontend = max(1, math.ceil(args.client_procs / len(frontends)))
    n = 0
    for fe, apps in zip(frontends, ranges, strict=True):
        if not apps:
            continue
        per_proc = math.ceil(len(apps) / per_frontend)
        for first in range(apps.start, apps.stop, per_proc):
            system.spawn(
                f"ads-client-{n}",
                [
                    sys.executable,
                    str(ADS_CLIENT),
                    "--xds",
                    f"127.0.0.1:{xds_ports[fe]}",
                    "--report",
                    f"127.0.0.1:{report_port}",
                    "--apps",
                    f"{first}:{min(apps.stop, first + per_proc)}",
                    "--cluster",
                    CLUSTER,
                    "--region",
                    REGION,
                    "--zone",
                    ZONE,
                    "--watch",
                    EDS_NAME,
                    "--streams-per-channel",
                    str(args.streams_per_channel),
                ],
                tier=TIER_CLIENT,
                role="ads-client",
            )
            n += 1


async def wait_converged(
    system: System,
    observer: Observer,
    tasks: Sequence[asyncio.Task[None]],
    limit: float,
    what: str,
) -> bool:
    """Waits for ``observer.converged``; raises if a process or a helper task died."""
    deadline = time.monotonic() + limit
    while not observer.converged.is_set():
        system.check_alive()
        for task in tasks:
            if task.done():
                task.result()
                raise BenchError(f"{task.get_name()} ended")
        left = deadline - time.monotonic()
        if left <= 0:
            if what == "initial sync":
                missing = sorted(observer.pending)
                raise BenchError(
                    f"{what}: {len(missing)} sidecars without the endpoints after {limit:.0f}s "
                    f"(e.g. {missing[:5]}); stream errors: {observer.errors[:3]}"
                )
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, 0.5)):
                await observer.converged.wait()
    return True


async def drive_changes(
    system: System,
    observer: Observer,
    *,
    tasks: Sequence[asyncio.Task[None]],
    core: Any,
    label: str,
    frontend_of: dict[str, str],
    args: argparse.Namespace,
    envoys: Collection[str] = (ENVOY,),
) -> tuple[list[Change], int]:
    """Runs ``args.changes`` changes; ``envoys``: the members that are real Envoys (their
    last one is ``envoy_ms``; every other member is a simulated sidecar)."""
    out: list[Change] = []
    quiet_timeouts = 0
    failures = 0
    frontends = sorted(set(frontend_of.values()))
    for k in range(args.changes):
        added = k % 2 == 0
        addresses = (*BASE_ADDRESSES, EXTRA_ADDRESS) if added else BASE_ADDRESSES
        body = endpoints_body(addresses)
        revision_before = observer.last_revision
        first_write = len(observer.writes)
        observer.begin(expected_set(addresses), guard=time.time(), fresh=True)

        def call(body: dict[str, Any] = body) -> tuple[float, float]:
            at = time.time()
            core.replace_namespaced_endpoints(SERVICE, NAMESPACE, body)
            return at, time.time()

        t0, api_done = await asyncio.to_thread(call)
        ok = await wait_converged(system, observer, tasks, args.change_timeout, f"change {k}")
        reached = dict(observer.reached)
        missing = len(observer.pending)
        converged_at = max(reached.values()) if ok else time.time()
        if not await observer.quiet(args.quiet, limit=10.0):
            quiet_timeouts += 1
        seen = [w for w in observer.writes[first_write:] if w.revision > revision_before]
        status_writes = sum(1 for w in seen if w.key.startswith(STATUS_PREFIX))
        seen = [w for w in seen if not w.key.startswith(STATUS_PREFIX)]
        writes = [w for w in seen if caused(kind_of(w.key))]
        bookkeeping = [w for w in seen if not caused(kind_of(w.key))]
        by_kind = dict.fromkeys(KIND_NAMES, 0)
        for w in writes:
            by_kind[kind_of(w.key)] += 1
        not_caused = dict.fromkeys(NOT_CAUSED_NAMES, 0)
        for w in bookkeeping:
            not_caused[kind_of(w.key)] += 1
        if bookkeeping:
            print(
                f"  [{label}] change {k}: {len(bookkeeping)} etcd writes not caused by it: "
                + ", ".join(("-" if w.deleted else "+") + short(w.key) for w in bookkeeping),
                file=sys.stderr,
            )
        sidecar_times = [t for who, t in reached.items() if who not in envoys]
        envoy_times = [t for who, t in reached.items() if who in envoys]
        last_by_frontend = {
            fe: max((t for who, t in reached.items() if frontend_of.get(who) == fe), default=0.0)
            for fe in frontends
        }
        state_seen = [w.at for w in writes if kind_of(w.key) == "state"]
        eds_seen = [w.at for w in writes if kind_of(w.key) == "eds" and w.at <= converged_at]
        nan = float("nan")
        out.append(
            Change(
                index=k,
                added=added,
                api_ms=ms(api_done - t0),
                converged=ok,
                convergence_ms=ms(converged_at - t0) if ok else nan,
                envoy_ms=ms(max(envoy_times) - t0) if envoy_times else nan,
                first_sidecar_ms=ms(min(sidecar_times) - t0) if sidecar_times else nan,
                state_write_ms=ms(min(state_seen) - t0) if state_seen else nan,
                eds_write_ms=ms(max(eds_seen) - t0) if eds_seen else nan,
                last_sidecar_ms=ms(max(sidecar_times) - t0) if sidecar_times else nan,
                last_by_frontend_ms={
                    fe: ms(t - t0) if ok and t else nan for fe, t in last_by_frontend.items()
                },
                writes=len(writes),
                revisions=len({w.revision for w in writes}),
                by_kind=by_kind,
                not_caused=not_caused,
                late_writes=sum(1 for w in writes if w.at > converged_at),
                stray_reports=observer.stray,
                keys=sorted({("-" if w.deleted else "+") + w.key for w in writes}),
                not_caused_keys=sorted({("-" if w.deleted else "+") + w.key for w in bookkeeping}),
                status_writes=status_writes,
            )
        )
        failures = 0 if ok else failures + 1
        if not ok:
            print(
                f"  [{label}] change {k} did not converge within {args.change_timeout}s: "
                f"{missing} of {len(observer.members)} sidecars without the new endpoints",
                file=sys.stderr,
            )
            if failures >= MAX_FAILURES:
                print(
                    f"  [{label}] {failures} changes in a row did not converge; "
                    "stopping this app count",
                    file=sys.stderr,
                )
                break
    return out, quiet_timeouts


# --- figures --------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50 (the median), nearest-rank p99 and max."""
    return {
        "median": median(values),
        "p99": percentile(values, 99),
        "max": percentile(values, 100),
    }


def leaders_of(cp: dict[str, Any]) -> dict[str, Any]:
    """Who leads what, by process name: shards per translator and the watcher leader."""
    if not cp:
        return {}
    names: dict[str, str] = cp["names"]
    per_translator = collections.Counter(
        names.get(leader, leader) for leader in cp["shard_leaders"].values() if leader
    )
    return {
        "shards": cp["shards"],
        "shards_by_translator": dict(sorted(per_translator.items())),
        "watcher_leader": names.get(cp["watcher_leader"], cp["watcher_leader"]),
        "balanced": cp["balanced"],
    }


def summary(run: Run) -> dict[str, Any]:
    ch = run.changes
    conv = [c.convergence_ms for c in ch]
    writes = [float(c.writes) for c in ch]
    control_plane = [
        run.rss_mib.get(name) for role in ROLES for name in run.processes.get(role, [])
    ]
    before, after = run.control_plane, run.control_plane_after
    unchanged: bool | None = None
    if after:
        unchanged = all(
            before[k] == after[k] for k in ("shard_leaders", "watcher_leader", "leader_tokens")
        )
    other_keys = collections.Counter(
        short(key[1:]) for c in ch for key in c.keys if kind_of(key[1:]) == "other"
    )
    not_caused_keys = collections.Counter(short(key[1:]) for c in ch for key in c.not_caused_keys)
    frontends = sorted(run.sidecars_by_frontend)
    return {
        "apps": run.apps,
        "shape": run.shape,
        "processes": {role: len(names) for role, names in run.processes.items()},
        "sidecars": run.sidecars,
        "sidecars_by_frontend": run.sidecars_by_frontend,
        "changes": len(ch),
        "not_converged": sum(1 for c in ch if not c.converged),
        "convergence_ms": spread(conv),
        "envoy_ms": spread([c.envoy_ms for c in ch]),
        "last_by_frontend_ms": {
            fe: spread([c.last_by_frontend_ms.get(fe, float("nan")) for c in ch])
            for fe in frontends
        },
        "first_sidecar_ms": {"median": median([c.first_sidecar_ms for c in ch])},
        "state_write_ms": {"median": median([c.state_write_ms for c in ch])},
        "eds_write_ms": {"median": median([c.eds_write_ms for c in ch])},
        "last_sidecar_ms": {"median": median([c.last_sidecar_ms for c in ch])},
        "api_call_ms": spread([c.api_ms for c in ch]),
        "etcd_writes": {
            "median": median(writes),
            "max": percentile(writes, 100),
            "revisions_median": median([float(c.revisions) for c in ch]),
            "by_kind": {
                kind: {
                    "median": median([float(c.by_kind[kind]) for c in ch]),
                    "max": percentile([float(c.by_kind[kind]) for c in ch], 100),
                }
                for kind in KIND_NAMES
            },
            "other_keys": dict(sorted(other_keys.items())),
            "after_convergence_total": sum(c.late_writes for c in ch),
            "status_records_median": median([float(c.status_writes) for c in ch]),
        },
        "not_caused_writes": {
            "total": sum(sum(c.not_caused.values()) for c in ch),
            "changes_with_any": sum(1 for c in ch if any(c.not_caused.values())),
            "by_kind": {kind: sum(c.not_caused[kind] for c in ch) for kind in NOT_CAUSED_NAMES},
            "keys": dict(sorted(not_caused_keys.items())),
        },
        "leaders": leaders_of(before),
        "leaders_unchanged": unchanged,
        "stray_reports_total": sum(c.stray_reports for c in ch),
        "rss_mib": run.rss_mib,
        "rss_mib_by_role": {
            role: [run.rss_mib.get(name) for name in names] for role, names in run.processes.items()
        },
        "control_plane_rss_mib": (
            round(sum(v for v in control_plane if v is not None), 1)
            if control_plane and all(v is not None for v in control_plane)
            else None
        ),
        "startup_s": run.startup_s,
        "control_plane_s": run.control_plane_s,
        "initial_sync_s": run.initial_sync_s,
        "startup_writes": run.startup_writes,
        "startup_writes_by_prefix": run.startup_writes_by_prefix,
        "stream_errors": len(run.stream_errors),
        "quiet_timeouts": run.quiet_timeouts,
    }


def table(summaries: Sequence[dict[str, Any]], shape: Shape) -> str:
    def num(v: Any, digits: int = 1) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float) and v.is_integer() and digits == 0:
            return f"{int(v):,}"
        return f"{v:,.{digits}f}"

    def by_kind(kind: str) -> Callable[[dict[str, Any]], str]:
        def cell(s: dict[str, Any]) -> str:
            figures = s["etcd_writes"]["by_kind"][kind]
            return f"{num(figures['median'], 0)} ({num(figures['max'], 0)})"

        return cell

    def frontends(fn: Callable[[dict[str, Any], str], Any]) -> Callable[[dict[str, Any]], str]:
        """One figure per front-end, ``/``-separated, in front-end order."""

        def cell(s: dict[str, Any]) -> str:
            return "/".join(str(fn(s, fe)) for fe in sorted(s["sidecars_by_frontend"]))

        return cell

    def rss(role: str) -> Callable[[dict[str, Any]], str]:
        def cell(s: dict[str, Any]) -> str:
            values = s["rss_mib_by_role"].get(role, [])
            return "/".join(num(v, 1 if len(values) == 1 else 0) for v in values) or "-"

        return cell

    def shards(s: dict[str, Any]) -> str:
        counts = s["leaders"].get("shards_by_translator", {})
        text = "+".join(str(n) for n in counts.values()) or "-"
        return text if s["leaders"].get("balanced") else f"{text} (!)"

    def unchanged(s: dict[str, Any]) -> str:
        value = s["leaders_unchanged"]
        return "-" if value is None else "yes" if value else "NO"

    def per(role: str) -> str:
        return "" if shape.counts()[role] == 1 else "s, each"

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("sidecars (simulated + 1 Envoy)", lambda s: num(s["sidecars"], 0)),
        ("  per front-end", frontends(lambda s, fe: num(s["sidecars_by_frontend"][fe], 0))),
        ("changes run (not converged)", lambda s: f"{s['changes']} ({s['not_converged']})"),
        ("convergence, all sidecars: p50 ms", lambda s: num(s["convergence_ms"]["median"])),
        ("                           p99 ms", lambda s: num(s["convergence_ms"]["p99"])),
        ("                           max ms", lambda s: num(s["convergence_ms"]["max"])),
        (
            "  last of each front-end: p50 ms",
            frontends(lambda s, fe: num(s["last_by_frontend_ms"][fe]["median"])),
        ),
        ("  state/ write seen in etcd: p50 ms", lambda s: num(s["state_write_ms"]["median"])),
        ("  EDS write seen in etcd: p50 ms", lambda s: num(s["eds_write_ms"]["median"])),
        ("  first simulated sidecar: p50 ms", lambda s: num(s["first_sidecar_ms"]["median"])),
        ("  real Envoy: p50 ms", lambda s: num(s["envoy_ms"]["median"])),
        ("              p99 ms", lambda s: num(s["envoy_ms"]["p99"])),
        ("              max ms", lambda s: num(s["envoy_ms"]["max"])),
        ("  API call itself: p50 ms", lambda s: num(s["api_call_ms"]["median"])),
        ("                   max ms", lambda s: num(s["api_call_ms"]["max"])),
        ("etcd writes per change: p50", lambda s: num(s["etcd_writes"]["median"], 0)),
        ("                        max", lambda s: num(s["etcd_writes"]["max"], 0)),
    ]
    for kind, label in (
        ("state", "state/"),
        ("eds", "snapshots/eds/"),
        ("apps", "snapshots/apps/"),
        ("other", "other (named below)"),
    ):
        rows.append((f"  {label}: p50 (max)", by_kind(kind)))
    rows += [
        (
            "  front-end status records (not counted): p50",
            lambda s: num(s["etcd_writes"]["status_records_median"], 0),
        ),
        (
            "  etcd revisions per change: p50",
            lambda s: num(s["etcd_writes"]["revisions_median"], 0),
        ),
        (
            "  writes after convergence (total)",
            lambda s: num(s["etcd_writes"]["after_convergence_total"], 0),
        ),
        (
            "not caused by a change: total (see below)",
            lambda s: num(s["not_caused_writes"]["total"], 0),
        ),
        ("stray sidecar updates (total)", lambda s: num(s["stray_reports_total"], 0)),
        ("shards led per translator", shards),
        ("watcher leader", lambda s: s["leaders"].get("watcher_leader") or "-"),
        ("leaders unchanged during changes", unchanged),
        (f"peak RSS watcher{per('watcher')} MiB", rss("watcher")),
        (f"peak RSS translator{per('translator')} MiB", rss("translator")),
        (f"peak RSS xds front-end{per('xds')} MiB", rss("xds")),
        ("peak RSS control plane (sum) MiB", lambda s: num(s["control_plane_rss_mib"])),
        (f"peak RSS etcd{' members, each' if shape.etcd_members > 1 else ''} MiB", rss("etcd")),
        ("startup to initial sync s", lambda s: num(s["startup_s"], 2)),
        ("  to members registered, leaders set s", lambda s: num(s["control_plane_s"], 2)),
        ("etcd writes during startup", lambda s: num(s["startup_writes"], 0)),
        ("ADS stream errors", lambda s: num(s["stream_errors"], 0)),
    ]
    label_width = max(len(label) for label, _ in rows)
    heads = [f"{s['apps']:,} app{'s' if s['apps'] != 1 else ''}" for s in summaries]
    cells = [[fn(s) for s in summaries] for _, fn in rows]
    width = max(12, *(len(h) for h in heads), *(len(c) for row in cells for c in row))
    counts = {role: sorted(set(s["processes"].get(role, 0) for s in summaries)) for role in ROLES}
    lines = [shape.describe(_one(s["leaders"].get("shards") for s in summaries))]
    if any(counts[role] != [shape.counts()[role]] for role in ROLES):
        lines.append(f"  (processes actually run: {counts})")
    lines.append(" " * label_width + "".join(h.rjust(width + 2) for h in heads))
    lines.append("-" * len(lines[-1]))
    for (label, _), row in zip(rows, cells, strict=True):
        lines.append(label.ljust(label_width) + "".join(c.rjust(width + 2) for c in row))
    lines += notes(summaries)
    return "\n".join(lines)


def _one(values: Iterable[Any]) -> int | None:
    """The value all of ``values`` share, else None."""
    distinct = set(values)
    return int(distinct.pop()) if len(distinct) == 1 and None not in distinct else None


def notes(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """What the table's rows cannot name: other keys, and writes no change caused."""

    def named(counts: dict[str, int]) -> str:
        return ", ".join(f"{key} x{n}" for key, n in counts.items())

    out: list[str] = []
    for s in summaries:
        head = f"[{s['apps']:,} apps]"
        if s["etcd_writes"]["other_keys"]:
            out.append(f"{head} other keys written: {named(s['etcd_writes']['other_keys'])}")
        nc = s["not_caused_writes"]
        if nc["total"]:
            out.append(
                f"{head} NOT ZERO: {nc['total']} writes not caused by a change, in "
                f"{nc['changes_with_any']} of {s['changes']} changes: {named(nc['keys'])}"
            )
        diagnostics = s["startup_writes_by_prefix"].get("diagnostics", 0)
        if diagnostics:
            out.append(
                f"{head} startup wrote diagnostics/ {diagnostics:,} times: translation "
                "reported problems before the state was complete (see the translator's log)"
            )
        if s["leaders_unchanged"] is False:
            out.append(f"{head} leadership changed during the changes (see the JSON)")
        if not s["leaders"].get("balanced", True):
            out.append(f"{head} shards were not where the assignment puts them")
    if all(s["not_caused_writes"]["total"] == 0 for s in summaries):
        out.append(
            "writes not caused by a change (members/, watchers/*/leader, shards/*/leader, "
            "stale/, config/shards): 0 in every change"
        )
    if all(not s["etcd_writes"]["other_keys"] for s in summaries):
        out.append("other keys written by changes: none")
    return out


# --- entry point ------------------------------------------------------------------------


def no_nan(value: Any) -> Any:
    """``value`` with every NaN float as None, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def parse_apps(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {value!r}") from exc
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("app counts must be >= 1")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="etcd writes and sidecar convergence time of one endpoint change."
    )
    parser.add_argument(
        "--apps", type=parse_apps, default=[1, 100, 1000], help="default 1,100,1000"
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="distributed",
        help="distributed: 3 etcd members, 2 watchers, 2 translators (8 shards), 2 xDS "
        "front-ends; single: one of each (default %(default)s)",
    )
    parser.add_argument(
        "--changes",
        type=int,
        default=30,
        help="changes per app count (default %(default)s; the README's figures use 100)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--quiet", type=float, default=0.3, help="quiet period between changes, s")
    parser.add_argument("--change-timeout", type=float, default=20.0, help="per change, s")
    parser.add_argument("--ready-timeout", type=float, default=90.0, help="startup and sync, s")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="processes the simulated sidecars share (at least one per front-end)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=int,
        default=5,
        help="--lease-ttl of watchers and translators (distributed shape only; default 5)",
    )
    parser.add_argument(
        "--streams-per-channel", type=int, default=100, help="ADS streams per channel"
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="keep every process's log here (default: none)"
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    summaries: list[dict[str, Any]] = []
    runs: list[Run] = []
    for apps in args.apps:
        began = time.monotonic()
        run = await run_one(apps, args, args.log_dir)
        runs.append(run)
        summaries.append(summary(run))
        print(f"  [{apps} apps] done in {time.monotonic() - began:.1f}s", file=sys.stderr)
    if args.out is not None:
        shape = SHAPES[args.shape]
        doc = {
            "benchmark": "endpoint_change",
            "config": {
                "shape": {
                    **dataclasses.asdict(shape),
                    "processes": shape.counts(),
                    "description": shape.describe(),
                },
                "lease_ttl_s": args.lease_ttl if shape.name != "single" else None,
                "apps": args.apps,
                "changes": args.changes,
                "quiet_s": args.quiet,
                "client_procs": args.client_procs,
                "streams_per_channel": args.streams_per_channel,
                "cpus": os.cpu_count(),
            },
            "summaries": summaries,
            "runs": [dataclasses.asdict(r) for r in runs],
        }
        args.out.write_text(json.dumps(no_nan(doc), indent=2, allow_nan=False))
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    try:
        summaries = asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every process stopped", file=sys.stderr)
        return 130
    except (BenchError, procs.ProcError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"One endpoint change of {EDS_NAME} (Endpoints alternating 10/11 addresses), "
        f"{args.changes} changes per column; wall time {time.monotonic() - began:.0f}s"
    )
    print(table(summaries, SHAPES[args.shape]))
    if any(s["not_converged"] or s["changes"] < args.changes for s in summaries):
        print("some changes did not converge: see the messages above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
